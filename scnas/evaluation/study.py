"""Collect a study's per-fold metrics (RESULTS/TASK/MODEL/fold_K/metrics.csv) into its CV tables."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import pandas as pd

from scnas.errors import ScnasError
from scnas.evaluation.compare import comparison_notes
from scnas.evaluation.costs import cost_table, model_info, write_cost_table
from scnas.evaluation.metrics import incomplete_reason
from scnas.evaluation.tables import DEFAULT_MODEL_NAMES, cv_table, write_tables
from scnas.io import read_json
from scnas.layout import FOLD_DIR, METRICS, MODEL_INFO, RANDOM, SEARCH, SEARCH_SUMMARY, model_of

log = logging.getLogger(__name__)
Found = dict[tuple[str, str], list[Path]]


def parse_metrics_paths(paths: Sequence[str | Path]) -> Found:
    """Group .../TASK/MODEL/fold_K/metrics.csv files by (task, model), in the order given.

    Each must be a finished evaluation (a matching summary.json beside it), else one line naming it.
    """
    found: Found = defaultdict(list)
    for item in paths:
        path = Path(item)
        if path.name != METRICS or not FOLD_DIR.match(path.parent.name):
            raise ScnasError(f"{path}: expected a path like RESULTS/TASK/MODEL/fold_K/metrics.csv")
        if not path.is_file():
            raise ScnasError(f"{path}: file not found")
        reason = incomplete_reason(path)
        if reason:
            raise ScnasError(f"{path}: incomplete evaluation: {reason}")
        found[(path.parent.parent.parent.name, path.parent.parent.name)].append(path)
    return dict(found)


def find_metrics(
    results: Path,
    tasks: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
) -> Found:
    """Every fold's finished metrics.csv under a results folder, optionally narrowed to tasks, models and
    folds; an unfinished one (no matching summary.json) is skipped with a warning."""
    if not results.is_dir():
        raise ScnasError(f"{results}: results folder not found")
    paths = sorted(results.glob(f"*/*/fold_*/{METRICS}"))
    keep = []
    for p in paths:
        fold = FOLD_DIR.match(p.parent.name)
        if (
            not fold
            or (tasks and p.parent.parent.parent.name not in tasks)
            or (models and p.parent.parent.name not in models)
            or (folds and int(fold.group(1)) not in folds)
        ):
            continue
        reason = incomplete_reason(p)
        if reason:
            log.warning("%s: skipped, incomplete evaluation: %s", p, reason)
            continue
        keep.append(p)
    if not keep:
        raise ScnasError(f"{results}: no finished RESULTS/TASK/MODEL/fold_K/metrics.csv found")
    return parse_metrics_paths(keep)


def _label_names(paths: Sequence[Path]) -> dict[int, str]:
    try:
        table = pd.read_csv(paths[0], usecols=["label", "label_name"]).drop_duplicates()
        return {int(r.label): str(r.label_name) for r in table.itertuples()}
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ScnasError(f"{paths[0]}: not a readable metrics CSV ({str(e).splitlines()[0]})") from None


def flops_notes(found: Found) -> list[str]:
    """One note per task: GFLOPs per forward pass of each model (the range over the random draws), from
    the folds' model.json."""
    notes = []
    for task in dict.fromkeys(t for t, _ in found):
        costs: dict[str, list[tuple[float, int]]] = defaultdict(list)
        patch = None
        for (t, run), paths in found.items():
            info = paths[0].parent / MODEL_INFO
            if t != task or not info.exists():
                continue
            _, gflops, width, patch = model_info(info)
            costs[model_of(run)].append((gflops, width))
        parts = []
        for model, values in costs.items():
            name = DEFAULT_MODEL_NAMES.get(model, model)
            flops, widths = [v[0] for v in values], sorted({v[1] for v in values})
            if len(values) == 1:
                parts.append(f"{name} {flops[0]:.2f} GFLOPs (width {widths[0]})")
            else:
                parts.append(
                    f"{name} {min(flops):.2f}-{max(flops):.2f} GFLOPs over {len(values)} draws "
                    f"(widths {', '.join(map(str, widths))})"
                )
        if parts:
            patch_text = "x".join(map(str, patch)) if patch else "?"
            notes.append(f"{task}: one forward pass at patch {patch_text}: " + ", ".join(parts) + ".")
    return notes


def search_notes(found: Found) -> list[str]:
    """Per task, whether each fold's search converged (its search_summary.json), for the SCNAS rows."""
    notes = []
    for (task, run), paths in found.items():
        if run != "scnas":
            continue
        states = []
        for path in paths:
            summary = path.parent.parent.parent / SEARCH / path.parent.name / SEARCH_SUMMARY
            if not summary.is_file():
                continue
            try:
                data = read_json(summary)
                stable, epochs, done = int(data["genotype_stable_since_epoch"]), int(data["epochs"]), data["converged"]
                max_prob = float(data["mean_max_prob"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ScnasError(f"{summary}: not a readable search summary ({type(e).__name__})") from None
            what = "converged" if done else "NOT converged (genotype still changing in the last 10 % of epochs)"
            states.append(
                f"{path.parent.name} {what}, stable since epoch {stable} of {epochs}, mean largest softmax(alpha) "
                f"{max_prob:.3f}" + ("" if data.get("decisive") else " (near uniform: 0.125)")
            )
        if states:
            notes.append(f"{task}: SCNAS searches: " + "; ".join(states) + ".")
    return notes


HD95_SUFFIX = "_hd95"
COST_SUFFIX = "_cost"
TABLE_FILES = (
    *(f"{table}{ext}" for table in ("", HD95_SUFFIX) for ext in (".csv", ".md", ".tex")),
    f"{COST_SUFFIX}.csv",
    f"{COST_SUFFIX}.md",
)
"""What `write_study_tables` writes, as suffixes of its prefix."""


def draws_note(found: Found, draws: Sequence[str], labels: dict, metric: str) -> str:
    """Each random draw's own cross-validation mean (the Average column's, or the one label's) per task, and
    their standard deviation: how much the control varies with the draw, beside its spread over cases."""
    table = cv_table({k: v for k, v in found.items() if k[1] in draws}, labels, {d: d for d in draws}, metric)
    scale, parts = (100.0 if metric == "dice" else 1.0), []
    for task in dict.fromkeys(t for t, _, _ in table.columns):
        column = [lb for t, lb, _ in table.columns if t == task][-1]  # Average, or the one label
        means = table[(task, column, "mean")].dropna() * scale
        if len(means):
            spread = f" (standard deviation across draws {means.std(ddof=1):.2f})" if len(means) > 1 else ""
            parts.append(f"{task} {column}: " + ", ".join(f"{v:.2f}" for v in means) + spread)
    return (
        f"{DEFAULT_MODEL_NAMES[RANDOM]}: each case's value is its mean over the {len(draws)} random genotypes; "
        "the draws' own means, " + "; ".join(parts) + "."
    )


def write_study_tables(found: Found, out_prefix: Path) -> list[Path]:
    """The cross-validation tables of everything in `found`: Dice as out_prefix.csv, .md and .tex (with the
    paired comparisons in its notes), HD95 as out_prefix_hd95.*, and the models' costs as out_prefix_cost.csv
    and .md. The random draws (random_0, random_1, ...) make one "Random genotype" row, each case's value
    its mean over the draws (so that ± is, for every row, the spread over cases); each draw's own mean is
    in the notes."""
    order = list(DEFAULT_MODEL_NAMES)
    rank = lambda r: (order.index(model_of(r)) if model_of(r) in order else len(order), r)  # noqa: E731
    runs = sorted({r for _, r in found}, key=rank)
    tasks = list(dict.fromkeys(t for t, _ in found))
    found = {k: found[k] for k in sorted(found, key=lambda k: (tasks.index(k[0]), rank(k[1])))}  # notes in table order
    labels = {task: _label_names(paths) for (task, _), paths in found.items()}
    draws = [r for r in runs if model_of(r) == RANDOM]
    pooled: Found = defaultdict(list)
    for (task, run), paths in found.items():
        pooled[(task, RANDOM if run in draws else run)] += paths
    rows = list(dict.fromkeys(RANDOM if r in draws else r for r in runs))
    common = flops_notes(found) + search_notes(found)
    for metric, prefix, notes in (
        ("dice", out_prefix, common + comparison_notes(found)),
        ("hd95", out_prefix.with_name(out_prefix.name + HD95_SUFFIX), common),
    ):
        table = cv_table(pooled, labels, {r: DEFAULT_MODEL_NAMES.get(r, r) for r in rows}, metric=metric)
        if draws:
            notes = notes + [draws_note(found, draws, labels, metric)]
        write_tables(table, prefix, notes)
    write_cost_table(cost_table(found, runs), out_prefix.with_name(out_prefix.name + COST_SUFFIX))
    return [out_prefix.with_name(out_prefix.name + suffix) for suffix in TABLE_FILES]
