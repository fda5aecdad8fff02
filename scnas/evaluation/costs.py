"""What each model of a study cost: FLOPs and parameters of its network, its training and search time.

Read from the folds' outputs next to each metrics.csv: model.json (spec and GFLOPs at the training
patch), training_log.csv (seconds per epoch) and, for SCNAS, the fold's search_log.csv and
search_summary.json. Times are wall-clock seconds of the runs as they ran (resumed runs: the epochs
they recorded), so they say what the machine took, not a property of the network alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from scnas.errors import ScnasError
from scnas.evaluation.tables import DEFAULT_MODEL_NAMES
from scnas.io import read_json, write_text
from scnas.layout import MODEL_INFO, RANDOM_RUN, SEARCH, SEARCH_LOG, SEARCH_SUMMARY, TRAINING_LOG

COLUMNS = [
    "task",
    "model",
    "folds",
    "width",
    "gflops",
    "params_m",
    "train_epochs",
    "train_min_per_fold",
    "loss_change_last_quarter",
    "search_steps_per_fold",
    "search_min_per_fold",
]


def model_info(path: Path) -> tuple[dict, float, int, list[int] | None]:
    """Spec, GFLOPs, width (stem or first-block channels) and patch of one fold's model.json."""
    try:
        data = read_json(path)
        width = data["spec"].get("stem_channels") or data["spec"].get("base_channels")
        return data, float(data["gflops"]), int(width), data.get("patch_size")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ScnasError(f"{path}: not a readable model.json ({type(e).__name__}: {e})") from None


def parameter_count(spec: Mapping) -> int:
    """Trainable parameters of the network a model.json spec describes (built on the meta device)."""
    import torch

    from scnas.models.factory import build_model

    with torch.device("meta"):
        model = build_model(dict(spec))
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def model_parameters(info: Mapping) -> int:
    """Trainable parameters of a model.json: as recorded, else counted from its spec."""
    return int(info["parameters"]) if "parameters" in info else parameter_count(info["spec"])


def _read_log(path: Path) -> pd.DataFrame:
    try:
        log = pd.read_csv(path)
        log["seconds"] = pd.to_numeric(log["seconds"])
        return log
    except (OSError, KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ScnasError(f"{path}: not a readable epoch log ({type(e).__name__}: {e})") from None


def loss_change(losses: Sequence[float]) -> float:
    """Relative change of the mean training loss from the second-last to the last quarter of the epochs: near 0
    when the curve has flattened, clearly negative while it still falls (NaN with fewer than 2 epochs)."""
    values = np.asarray(losses, dtype=float)
    q = len(values) // 4 or 1
    if len(values) < 2 * q or len(values) < 2:
        return np.nan
    before, last = values[-2 * q : -q].mean(), values[-q:].mean()
    return float((last - before) / abs(before)) if before else np.nan


def run_costs(task: str, run: str, metrics: Sequence[Path]) -> dict:
    """One row of the cost table: a model (one run folder) over its folds."""
    widths, gflops, params, train_s, epochs, search_s, steps, changes = set(), [], [], [], [], [], [], []
    for path in metrics:
        fold_dir = Path(path).parent
        info_path = fold_dir / MODEL_INFO
        if info_path.is_file():
            info, fold_gflops, width, _ = model_info(info_path)
            widths.add(width)
            gflops.append(fold_gflops)
            params.append(model_parameters(info))
        if (fold_dir / TRAINING_LOG).is_file():
            log = _read_log(fold_dir / TRAINING_LOG)
            train_s.append(float(log["seconds"].sum()))
            epochs.append(len(log))
            if "train_loss" in log:
                changes.append(loss_change(pd.to_numeric(log["train_loss"], errors="coerce")))
        search_dir = fold_dir.parent.parent / SEARCH / fold_dir.name
        if run == "scnas" and (search_dir / SEARCH_LOG).is_file():
            search_s.append(float(_read_log(search_dir / SEARCH_LOG)["seconds"].sum()))
            if (search_dir / SEARCH_SUMMARY).is_file():
                steps.append(int(read_json(search_dir / SEARCH_SUMMARY)["weight_steps"]))
    mean = lambda values: float(np.mean(values)) if values else np.nan  # noqa: E731
    return {
        "task": task,
        "model": _display(run),
        "folds": len(metrics),
        "width": ", ".join(map(str, sorted(widths))),
        "gflops": mean(gflops),
        "params_m": mean(params) / 1e6 if params else np.nan,
        "train_epochs": mean(epochs),
        "train_min_per_fold": mean(train_s) / 60 if train_s else np.nan,
        "loss_change_last_quarter": mean(changes),
        "search_steps_per_fold": mean(steps),
        "search_min_per_fold": mean(search_s) / 60 if search_s else np.nan,
    }


def cost_table(found: Mapping[tuple[str, str], Sequence[Path]], runs: Sequence[str]) -> pd.DataFrame:
    """Rows per (task, run) in the order of `runs`."""
    tasks = dict.fromkeys(t for t, _ in found)
    rows = [run_costs(task, run, found[(task, run)]) for task in tasks for run in runs if (task, run) in found]
    return pd.DataFrame(rows, columns=COLUMNS)


def write_cost_table(table: pd.DataFrame, out_prefix: Path) -> list[Path]:
    """out_prefix.csv (raw values) and .md."""
    csv, md = out_prefix.with_name(out_prefix.name + ".csv"), out_prefix.with_name(out_prefix.name + ".md")
    write_text(csv, table.to_csv(index=False))
    header = [
        "Task",
        "Model",
        "Folds",
        "Width",
        "GFLOPs / forward",
        "Parameters (M)",
        "Training epochs",
        "Training min / fold",
        "Loss change, last quarter (%)",
        "Search steps / fold",
        "Search min / fold",
    ]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for row in table.itertuples(index=False):
        cells = [
            row.task,
            row.model,
            str(row.folds),
            row.width or "-",
            _num(row.gflops, 2),
            _num(row.params_m, 3),
            _num(row.train_epochs, 0),
            _num(row.train_min_per_fold, 1),
            _num(100 * row.loss_change_last_quarter, 1),
            _num(row.search_steps_per_fold, 0),
            _num(row.search_min_per_fold, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "GFLOPs of one forward pass at the training patch; times are wall-clock per fold as the runs ran "
        "(mean over folds); loss change: of the mean training loss from the second-last to the last quarter "
        "of the epochs, mean over folds (near 0: flattened; nnU-Net's loss is its own, Dice + cross-entropy); "
        "a search step is one weight and one alpha update."
    )
    write_text(md, "\n".join(lines) + "\n\n" + note + "\n")
    return [csv, md]


def _display(run: str) -> str:
    draw = RANDOM_RUN.match(run)
    return f"{DEFAULT_MODEL_NAMES['random']} {draw.group(1)}" if draw else DEFAULT_MODEL_NAMES.get(run, run)


def _num(value: float, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"
