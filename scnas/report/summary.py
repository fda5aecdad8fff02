"""A task's summary figures: per-case Dice box plots per label and model, and each model's cost (FLOPs,
parameters, search and training wall-clock); and the CV tables as an HTML page for the report."""

from __future__ import annotations

import html
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scnas.errors import ScnasError
from scnas.io import write_text
from scnas.layout import CHECKPOINT, GENOTYPE, SEARCH, SUMMARY, model_of
from scnas.report import style
from scnas.report.readers import (
    fold_folders,
    model_label,
    read_json_file,
    read_metrics,
    read_model_info,
    read_search_log,
    read_training_log,
    task_runs,
)
from scnas.report.training import duration


def task_metrics(task_dir: str | os.PathLike) -> pd.DataFrame:
    """Every evaluated fold's metrics.csv of a task, with columns run, model and fold added."""
    frames = []
    for run in task_runs(task_dir):
        for fold, folder in fold_folders(Path(task_dir) / run).items():
            if (folder / "metrics.csv").is_file():
                frames.append(read_metrics(folder).assign(run=run, model=model_of(run), fold=fold))
    if not frames:
        raise ScnasError(f"{task_dir}: no evaluated fold (RUN/fold_K/metrics.csv) found")
    return pd.concat(frames, ignore_index=True)


def plot_dice_boxes(task_dir: str | os.PathLike, out: str | os.PathLike, title: str = "") -> str:
    """Per label (and their mean, for several labels) the per-case Dice of every model over all folds,
    the random draws pooled as in the tables (a case's Dice its mean over the draws); each case a dot."""
    table = task_metrics(task_dir)
    keys = ["model", "fold", "case", "label", "label_name"]
    table = table[table["label"] != 0].groupby(keys, as_index=False, sort=False)["dice"].mean()
    labels = list(dict.fromkeys(table.sort_values("label")["label_name"]))
    models = list(dict.fromkeys(table["model"]))
    panels = [(name, table[table["label_name"] == name]) for name in labels]
    if len(labels) > 1:
        mean = table.groupby(["model", "fold", "case"], as_index=False, sort=False)["dice"].mean()
        panels.append(("mean over labels", mean))
    lowest = np.nanmin(table["dice"].to_numpy()) if table["dice"].notna().any() else 0.0
    bottom = max(0.0, np.floor(10 * lowest - 0.5) / 10)  # the cases' range, not 0-1: close Dice stay apart
    fig = style.figure(max(3.2, 0.9 * len(models) + 1.4) * len(panels), 4.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, squeeze=False)).ravel()
    rng = np.random.default_rng(0)
    for ax, (name, rows) in zip(axes, panels):
        data = [rows.loc[rows["model"] == m, "dice"].dropna().to_numpy() for m in models]
        shown = [d if d.size else np.array([np.nan]) for d in data]
        box = ax.boxplot(shown, widths=0.6, patch_artist=True, showfliers=False, medianprops={"color": "black"})
        for patch, model in zip(box["boxes"], models):
            patch.set_facecolor(style.model_colour(model))
            patch.set_alpha(0.45)
        for k, (model, values) in enumerate(zip(models, data)):
            ax.scatter(
                k + 1 + rng.uniform(-0.18, 0.18, values.size),
                values,
                s=12,
                color=style.model_colour(model),
                edgecolor="black",
                linewidth=0.3,
                zorder=3,
            )
        ax.set_xticks(
            range(1, len(models) + 1),
            [f"{model_label(m)}\n(n={d.size})" for m, d in zip(models, data)],
            rotation=20,
            ha="right",
        )
        ax.set_title(name)
        ax.set_ylim(bottom - 0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Dice per validation case")
    fig.suptitle(title or "per-case Dice, all folds", fontsize=13)
    return style.save_png(fig, out)


@dataclass
class Cost:
    """What one model cost on a task, one value per fold (or per random draw)."""

    gflops: list[float] = field(default_factory=list)
    params: list[float] = field(default_factory=list)
    search_s: list[float] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)


def search_seconds(results: str | os.PathLike, task: str) -> dict[int, float]:
    """fold -> wall-clock seconds of the task's search of that fold (the sum of its epochs)."""
    folders = fold_folders(Path(results) / task / SEARCH)
    return {k: float(read_search_log(p)["seconds"].sum()) for k, p in folders.items() if (p / GENOTYPE).is_file()}


def source_search(results: Path, spec_genotype: dict) -> tuple[str, int] | None:
    """The (task, fold) whose search found `spec_genotype` (a transferred network's), if it is in `results`."""
    for path in sorted(results.glob(f"*/{SEARCH}/fold_*/{GENOTYPE}")):
        data = read_json_file(path, "genotype")
        if isinstance(data, dict) and data.get("cells") == spec_genotype.get("cells"):
            return path.parents[2].name, int(path.parent.name.split("_")[-1])
    return None


def task_costs(task_dir: str | os.PathLike) -> dict[str, Cost]:
    """model -> its cost on the task, from model.json and the search and training logs of every trained fold
    (one with its final checkpoint, or evaluated: an export keeps no checkpoints)."""
    from scnas.evaluation.costs import model_parameters

    task_dir = Path(task_dir)
    results = task_dir.parent
    own_search = search_seconds(results, task_dir.name)
    costs: dict[str, Cost] = defaultdict(Cost)
    counted: dict[str, int] = {}  # one count per distinct network (folds of a model often share it)
    for run in task_runs(task_dir):
        model = model_of(run)
        cost = costs[model]
        folds = fold_folders(task_dir / run)
        first = True
        for fold, folder in folds.items():
            if not ((folder / CHECKPOINT).is_file() or (folder / SUMMARY).is_file()):
                continue
            info = read_model_info(folder)
            if first or model != "random":
                spec = json.dumps(info.get("spec"), sort_keys=True)
                if spec not in counted:
                    counted[spec] = model_parameters(info)
                cost.gflops.append(float(info["gflops"]))
                cost.params.append(counted[spec])
            first = False
            cost.train_s.append(float(read_training_log(folder)["seconds"].sum()))
            if model == "scnas" and fold in own_search:
                cost.search_s.append(own_search[fold])
            elif model == "scnas_transfer" and not cost.search_s:
                source = source_search(results, info.get("spec", {}).get("genotype") or {})
                if source is not None:
                    cost.search_s.append(search_seconds(results, source[0])[source[1]])
    return {m: c for m, c in costs.items() if c.gflops}


def plot_costs(task_dir: str | os.PathLike, out: str | os.PathLike, title: str = "") -> str:
    """GFLOPs per forward pass, parameters, search and training wall-clock per model (bars: the mean over
    folds or draws; whiskers: their range)."""
    costs = task_costs(task_dir)
    if not costs:
        raise ScnasError(f"{task_dir}: no trained fold (RUN/fold_K/ with {CHECKPOINT} or {SUMMARY}) found")
    models = list(costs)
    search = [c.search_s for c in costs.values()]
    train = [c.train_s for c in costs.values()]
    s_unit, t_unit = _time_unit(search), _time_unit(train)
    panels = [
        ("GFLOPs per forward pass", [c.gflops for c in costs.values()], lambda v: f"{v:.3g}"),
        ("parameters (millions)", [[p / 1e6 for p in c.params] for c in costs.values()], lambda v: f"{v:.3g}"),
        (
            f"search wall-clock per fold ({s_unit[0]})",
            [[s / s_unit[1] for s in v] for v in search],
            lambda v: duration(v * s_unit[1]),
        ),
        (
            f"training wall-clock per fold ({t_unit[0]})",
            [[s / t_unit[1] for s in v] for v in train],
            lambda v: duration(v * t_unit[1]),
        ),
    ]
    fig = style.figure(max(3.4, 0.85 * len(models) + 1.2) * len(panels), 4.4)
    axes = fig.subplots(1, len(panels))
    for ax, (name, values, fmt) in zip(axes, panels):
        means = [float(np.mean(v)) if v else 0.0 for v in values]
        low = [max(0.0, m - min(v)) if v else 0 for m, v in zip(means, values)]  # equal values: mean - min ~ -1e-17
        high = [max(0.0, max(v) - m) if v else 0 for m, v in zip(means, values)]
        ax.bar(range(len(models)), means, yerr=[low, high], capsize=4, color=[style.model_colour(m) for m in models])
        for k, (m, v) in enumerate(zip(means, values)):
            ax.annotate(
                fmt(m) if v else "none",
                (k, m + high[k]),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=9,
            )
        ax.set_xticks(range(len(models)), [model_label(m) for m in models], rotation=20, ha="right")
        ax.set_title(name)
        ax.margins(y=0.18)
    if "scnas_transfer" in costs:
        fig.supxlabel("SCNAS (transfer): the search of the fold it was transferred from, run once", fontsize=9)
    fig.suptitle(title or "cost per model", fontsize=13)
    return style.save_png(fig, out)


def _time_unit(values: list[list[float]]) -> tuple[str, float]:
    """The unit (name, seconds) that keeps the longest of `values` (seconds) between 1 and 120."""
    longest = max((max(v) for v in values if v), default=0.0)
    return ("s", 1.0) if longest < 120 else ("min", 60.0) if longest < 7200 else ("h", 3600.0)


def table_html(prefix: str | os.PathLike, out: str | os.PathLike, title: str = "") -> str:
    """The CV table (PREFIX.md: a pipe table and its notes) as a small standalone HTML page."""
    path = Path(f"{prefix}.md")
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ScnasError(f"{path}: CV table not found") from None
    except OSError as e:
        raise ScnasError(f"{path}: cannot read the CV table ({e.strerror})") from None
    rows = [line for line in lines if line.strip().startswith("|")]
    if len(rows) < 2:
        raise ScnasError(f"{path}: holds no Markdown table")
    cells = [[html.escape(c.strip()) for c in row.strip().strip("|").split("|")] for row in rows]
    body = [cells[0], *cells[2:]]
    parts = ["<table>", "<tr>" + "".join(_header(body[0])) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body[1:]]
    parts.append("</table>")
    notes = [html.escape(line.strip()) for line in lines if line.strip() and not line.strip().startswith("|")]
    page = _page(title or path.stem, "\n".join(parts) + "".join(f"\n<p>{n}</p>" for n in notes))
    write_text(out, page)
    return os.fspath(out)


def _header(cells: list[str]) -> list[str]:
    """The header row, each task's name spanning the empty cells after it (its labels' columns)."""
    spans: list[list] = []
    for n, cell in enumerate(cells):
        if n > 1 and not cell and spans:
            spans[-1][1] += 1
        else:
            spans.append([cell, 1])
    return [f"<th colspan='{width}'>{cell}</th>" if width > 1 else f"<th>{cell}</th>" for cell, width in spans]


def _page(title: str, body: str) -> str:
    css = (
        "body{font-family:Helvetica,Arial,sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "th,td{border:1px solid #bbb;padding:4px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}th[colspan]{text-align:center}"
        "th{background:#eee}p{max-width:60em;color:#333}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{css}</style></head><body>\n<h2>{html.escape(title)}</h2>\n{body}\n</body></html>\n"
    )
