"""Cross-validation tables in the layout of the paper's Table 1 (rows: models; columns: task x label).

Each cell pools the validation cases of all folds: the mean and sample standard deviation (ddof=1) over
cases of the per-case metric, NaN (label in neither prediction nor reference) left out. A task with more
than one foreground label gets an Average column: the mean of its per-label means (as in the paper,
66.89 = mean of 70.74, 56.69, 73.23), with the standard deviation over cases of each case's mean over
labels. Label 0 (background) is never a column. A model without results for a task shows "-".
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from scnas.errors import ScnasError
from scnas.io import write_text
from scnas.layout import FOLD_DIR

DEFAULT_MODEL_NAMES = {
    "uresnet": "3D U-ResNet",
    "scnas": "SCNAS",
    "random": "Random genotype",
    "scnas_transfer": "SCNAS (transfer)",
    "nnunet": "nnU-Net v2 (reference)",
}
AVERAGE = "Average"
STATS = ("mean", "std", "n_cases", "n_folds")
MISSING = "-"


def cv_table(
    metrics: Mapping[tuple[str, str], Sequence[str | Path]],
    label_names: Mapping[str, Mapping[int, str]],
    model_names: Mapping[str, str] | None = None,
    metric: str = "dice",
) -> pd.DataFrame:
    """Table of per-label CV statistics: index = model display names, columns = (task, label, stat).

    `metrics` maps (task, model) to the metrics.csv of each fold. Rows follow `model_names` (then any
    other model, in first-seen order); stats are mean, std, n_cases (values pooled) and n_folds.
    """
    if not metrics:
        raise ScnasError("no metrics files given for the cross-validation table")
    tasks = _ordered_unique(task for task, _ in metrics)
    for task in tasks:
        if task not in label_names:
            raise ScnasError(f"task {task}: no label names given for the cross-validation table")
    tasks = [task for task in label_names if task in tasks]
    names = dict(model_names) if model_names is not None else {}
    models = list(names) + [m for m in _ordered_unique(model for _, model in metrics) if m not in names]

    data: dict[tuple[str, str, str], list] = {}
    for task in tasks:
        labels = [(int(label), name) for label, name in label_names[task].items() if int(label) != 0]
        headers = [name for _, name in labels] + ([AVERAGE] if len(labels) > 1 else [])
        if len(set(headers)) != len(headers):
            raise ScnasError(f"task {task}: label names {headers} are not unique")
        for header in headers:
            for stat in STATS:
                data[(task, header, stat)] = []
        for model in models:
            paths = list(metrics.get((task, model), ()))
            cells = _task_cells(paths, labels, metric) if paths else [(np.nan, np.nan, 0)] * len(headers)
            folds = len({fold_number(path, k) for k, path in enumerate(paths)})
            for header, (mean, std, n_cases) in zip(headers, cells):
                for stat, value in zip(STATS, (mean, std, n_cases, folds)):
                    data[(task, header, stat)].append(value)

    index = pd.Index([names.get(m, DEFAULT_MODEL_NAMES.get(m, m)) for m in models], name="model")
    if index.has_duplicates:
        raise ScnasError(f"model display names {list(index)} are not unique")
    table = pd.DataFrame(data, index=index)
    table.columns = pd.MultiIndex.from_tuples(list(data), names=["task", "label", "stat"])
    table.attrs["metric"] = metric
    return table


def task_table(table: pd.DataFrame, task: str) -> pd.DataFrame:
    """The all-tasks table restricted to one task, without models that have no results for it."""
    sub = table[[column for column in table.columns if column[0] == task]]
    has_results = sub[[column for column in sub.columns if column[2] == "n_folds"]].max(axis=1) > 0
    sub = sub[has_results]
    sub.attrs = dict(table.attrs)
    return sub


def write_tables(table: pd.DataFrame, out_prefix: Path, notes: Iterable[str] = ()) -> None:
    """Write out_prefix.csv (long format, raw values), .md and .tex (Table 1 layout), each atomically."""
    out_prefix = Path(out_prefix)
    metric = table.attrs.get("metric", "dice")
    notes = [_method_note(metric), _counts_note(table), *notes]
    write_text(out_prefix.with_name(out_prefix.name + ".csv"), _long_format(table, metric).to_csv(index=False))
    write_text(out_prefix.with_name(out_prefix.name + ".md"), _markdown(table, metric, notes))
    write_text(out_prefix.with_name(out_prefix.name + ".tex"), _latex(table, metric, notes))


def fold_number(path: str | Path, default: int) -> int:
    """The K of a .../fold_K/metrics.csv, else `default`."""
    m = FOLD_DIR.match(Path(path).parent.name)
    return int(m.group(1)) if m else default


def _task_cells(paths: list, labels: list[tuple[int, str]], metric: str) -> list[tuple[float, float, int]]:
    """Per label (and Average) the mean, std and count over cases; a case evaluated more than once (a fold
    of several random draws) counts once, with its mean over them."""
    frames = [_read_metrics(path, fold_number(path, k), metric) for k, path in enumerate(paths)]
    values = pd.concat(frames, ignore_index=True)
    values = values[np.isfinite(values[metric])]
    per_case = values.pivot_table(index=["fold", "case"], columns="label", values=metric, aggfunc="mean")
    cells, label_means = [], []
    for label, _ in labels:
        column = per_case[label].dropna().to_numpy() if label in per_case else np.empty(0)
        cells.append(_mean_std(column))
        label_means.append(cells[-1][0])
    if len(labels) > 1:
        present = [label for label, _ in labels if label in per_case]
        case_means = per_case[present].mean(axis=1).dropna().to_numpy() if present else np.empty(0)
        finite = [m for m in label_means if not np.isnan(m)]
        average = float(np.mean(finite)) if finite else np.nan
        cells.append((average, _mean_std(case_means)[1], int(case_means.size)))
    return cells


def _read_metrics(path, fold: int, metric: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise ScnasError(f"{path}: metrics file not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ScnasError(f"{path}: not a readable metrics CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in ("case", "label", metric) if c not in frame.columns]
    if missing:
        raise ScnasError(f"{path}: missing column(s) {', '.join(missing)}")
    frame = frame[["case", "label", metric]].copy()
    try:
        frame["label"] = pd.to_numeric(frame["label"], errors="raise").astype(int)
    except (ValueError, TypeError):
        raise ScnasError(f"{path}: column 'label' must hold whole numbers") from None
    frame[metric] = pd.to_numeric(frame[metric], errors="coerce").astype(float)
    frame["case"] = frame["case"].astype(str)
    frame["fold"] = fold
    return frame


def _mean_std(values: np.ndarray) -> tuple[float, float, int]:
    n = int(values.size)
    mean = float(values.mean()) if n else np.nan
    std = float(values.std(ddof=1)) if n > 1 else np.nan
    return mean, std, n


def _cells(table: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys((task, label) for task, label, _ in table.columns))


def _long_format(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = []
    for model in table.index:
        for task, label in _cells(table):
            cell = _cell(table, model, task, label)
            rows.append(
                {
                    "task": task,
                    "model": model,
                    "label": label,
                    "metric": metric,
                    "mean": cell["mean"],
                    "std": cell["std"],
                    "n_cases": int(cell["n_cases"]),
                    "n_folds": int(cell["n_folds"]),
                }
            )
    return pd.DataFrame(rows, columns=["task", "model", "label", "metric", "mean", "std", "n_cases", "n_folds"])


def _cell(table: pd.DataFrame, model: str, task: str, label: str) -> dict:
    return {stat: table.at[model, (task, label, stat)] for stat in STATS}


def _format_cell(cell: dict, metric: str, plus_minus: str) -> str:
    if cell["n_folds"] == 0:
        return MISSING
    if np.isnan(cell["mean"]):
        return "n/a"
    scale = 100.0 if metric == "dice" else 1.0
    text = f"{cell['mean'] * scale:.2f}"
    if not np.isnan(cell["std"]):
        text += f"{plus_minus}{cell['std'] * scale:.2f}"
    return text


def _method_note(metric: str) -> str:
    what = {"dice": "Dice (%)", "hd95": "HD95 (mm; a label in one of prediction and reference only is left out)"}.get(
        metric, metric
    )
    return (
        f"{what}: mean ± standard deviation over the validation cases of all folds; Average = mean of the "
        f"per-label means, ± the standard deviation over cases of each case's mean over labels."
    )


def _counts_note(table: pd.DataFrame) -> str:
    parts = []
    for model in table.index:
        per_task = []
        for task in dict.fromkeys(t for t, _, _ in table.columns):
            cells = [_cell(table, model, t, label) for t, label in _cells(table) if t == task]
            folds = max(int(cell["n_folds"]) for cell in cells)
            if folds:
                cases = max(int(cell["n_cases"]) for cell in cells)
                per_task.append(f"{task} {cases} cases / {folds} fold{'s' if folds > 1 else ''}")
        if per_task:
            parts.append(f"{model}: {', '.join(per_task)}")
    return "Cases and folds per model and task: " + "; ".join(parts) + "."


def _markdown(table: pd.DataFrame, metric: str, notes: list[str]) -> str:
    cells = _cells(table)
    task_row, previous = [""], None
    for task, _ in cells:
        task_row.append(task if task != previous else "")
        previous = task
    lines = [_md_row(task_row), _md_row(["---"] * len(task_row)), _md_row(["Label"] + [label for _, label in cells])]
    for model in table.index:
        lines.append(_md_row([model] + [_format_cell(_cell(table, model, *c), metric, " ± ") for c in cells]))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def _md_row(values: list[str]) -> str:
    return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"


def _latex(table: pd.DataFrame, metric: str, notes: list[str]) -> str:
    cells = _cells(table)
    tasks = list(dict.fromkeys(task for task, _ in cells))
    widths = [sum(1 for task, _ in cells if task == t) for t in tasks]
    spec = "l|" + "|".join("c" * w for w in widths)
    header = " & ".join(
        [""]
        + [
            rf"\multicolumn{{{w}}}{{c{'|' if i < len(tasks) - 1 else ''}}}{{{_tex(t)}}}"
            for i, (t, w) in enumerate(zip(tasks, widths))
        ]
    )
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\hline",
        header + r" \\",
        " & ".join(["Label"] + [_tex(label) for _, label in cells]) + r" \\",
        r"\hline",
    ]
    for model in table.index:
        row = [_tex(model)] + [_format_cell(_cell(table, model, *c), metric, r" $\pm$ ") for c in cells]
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    lines += ["% " + note for note in notes]
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def _ordered_unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
