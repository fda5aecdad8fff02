"""Collect a study's per-fold metrics (RESULTS/TASK/MODEL/fold_K/metrics.csv) into its CV tables."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import pandas as pd

from scnas.errors import ScnasError
from scnas.evaluation.metrics import incomplete_reason
from scnas.evaluation.tables import DEFAULT_MODEL_NAMES, cv_table, write_tables
from scnas.io import read_json
from scnas.layout import FOLD_DIR, METRICS

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
    """One note per task: GFLOPs per forward pass of each model, from the folds' model.json."""
    notes = []
    for task in dict.fromkeys(t for t, _ in found):
        parts = []
        patch = None
        for (t, model), paths in found.items():
            info = paths[0].parent / "model.json"
            if t != task or not info.exists():
                continue
            try:
                data = read_json(info)
                patch = data.get("patch_size", patch)
                stem = data["spec"].get("stem_channels") or data["spec"].get("base_channels")
                gflops = float(data["gflops"])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ScnasError(f"{info}: not a readable model.json ({type(e).__name__}: {e})") from None
            parts.append(f"{DEFAULT_MODEL_NAMES.get(model, model)} {gflops:.2f} GFLOPs (width {stem})")
        if parts:
            patch_text = "x".join(map(str, patch)) if patch else "?"
            notes.append(f"{task}: one forward pass at patch {patch_text}: " + ", ".join(parts) + ".")
    return notes


def write_study_tables(found: Found, out_prefix: Path) -> list[Path]:
    """The cross-validation table of everything in `found` as out_prefix.csv, .md and .tex."""
    models = sorted(
        {m for _, m in found},
        key=lambda m: list(DEFAULT_MODEL_NAMES).index(m) if m in DEFAULT_MODEL_NAMES else len(DEFAULT_MODEL_NAMES),
    )
    labels = {task: _label_names(paths) for (task, _), paths in found.items()}
    table = cv_table(found, labels, {m: DEFAULT_MODEL_NAMES.get(m, m) for m in models})
    notes = flops_notes(found)
    write_tables(table, out_prefix, notes)
    return [out_prefix.with_name(out_prefix.name + s) for s in (".csv", ".md", ".tex")]
