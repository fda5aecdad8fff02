"""The stage outputs a figure is drawn from, read and checked: any problem is one ScnasError line naming
the file. Also which model folders and folds a task's results folder holds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from scnas.errors import ScnasError, os_error_cause
from scnas.evaluation.tables import DEFAULT_MODEL_NAMES
from scnas.layout import ALPHA_HISTORY, FOLD_DIR, RANDOM_RUN, SEARCH, SEARCH_LOG, TRAINING_LOG, model_of

RUN_ORDER = ("uresnet", "scnas", "scnas_transfer", "random")
CELL_KEYS = ("entropy", "max_prob", "argmax_changes")


def read_json_file(path: str | Path, what: str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ScnasError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as e:
        raise ScnasError(f"{path}: {what} is not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        cause = os_error_cause(e) if isinstance(e, OSError) else str(e)
        raise ScnasError(f"{path}: cannot read {what} ({cause})") from None


def read_table(path: str | Path, what: str, columns: Sequence[str], numeric: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV that must hold `columns`, those in `numeric` as numbers (NaN allowed for missing values)."""
    path = Path(path)
    if not path.is_file():
        raise ScnasError(f"{path}: {what} not found")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ScnasError(f"{path}: {what} is not a readable CSV ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise ScnasError(f"{path}: cannot read {what} ({os_error_cause(e)})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ScnasError(f"{path}: {what} lacks the column {missing[0]!r}")
    if table.empty:
        raise ScnasError(f"{path}: {what} has no rows")
    for col in numeric:
        if col in table.columns:
            values = pd.to_numeric(table[col], errors="coerce")
            bad = values.isna() & table[col].notna()
            if bad.any():
                row = int(bad.to_numpy().nonzero()[0][0])
                raise ScnasError(f"{path}: {what} row {row + 1}: {col} is {table[col].iloc[row]!r}, not a number")
            table[col] = values
    return table


def read_search_log(folder: str | Path) -> pd.DataFrame:
    """search_log.csv of a search folder: one row per epoch."""
    cols = ("epoch", "tau", "weight_loss", "arch_loss", "mean_entropy", "argmax_changes", "seconds")
    return read_table(Path(folder) / SEARCH_LOG, "search log", cols, numeric=(*cols, "alpha_lr"))


def read_training_log(folder: str | Path) -> pd.DataFrame:
    """training_log.csv of a fold folder: one row per epoch (val_patch_dice where computed)."""
    cols = ("epoch", "train_loss", "lr", "seconds")
    return read_table(Path(folder) / TRAINING_LOG, "training log", cols, numeric=(*cols, "val_patch_dice"))


def read_alpha_history(folder: str | Path) -> list[dict[str, Any]]:
    """alpha_history.json of a search folder, checked: per epoch softmax(alpha) (edges x operations, rows
    summing to 1) and the diagnostics of every cell type."""
    path = Path(folder) / ALPHA_HISTORY
    data = read_json_file(path, "alpha history")
    if not isinstance(data, list) or not data:
        raise ScnasError(f"{path}: alpha history must be a non-empty list of epochs")
    shape = None
    cells = None
    for n, entry in enumerate(data):
        where = f"{path}: epoch entry #{n}"
        if not isinstance(entry, dict) or not {"epoch", "tau", "softmax_alpha", "diagnostics"} <= set(entry):
            raise ScnasError(f"{where} lacks epoch, tau, softmax_alpha or diagnostics")
        probs = entry["softmax_alpha"]
        if not isinstance(probs, dict) or not probs:
            raise ScnasError(f"{where}: softmax_alpha must map cell types to edges x operations")
        if cells is None:
            cells = list(probs)
        if list(probs) != cells or set(entry["diagnostics"]) != set(cells):
            raise ScnasError(f"{where}: cell types differ from the first epoch's ({', '.join(cells)})")
        for cell, rows in probs.items():
            _check_probabilities(rows, f"{where}: softmax_alpha[{cell!r}]")
            here = (len(rows), len(rows[0]))
            if shape is None:
                shape = here
            if here != shape:
                raise ScnasError(f"{where}: softmax_alpha[{cell!r}] is {here[0]}x{here[1]}, expected {shape}")
            figures = entry["diagnostics"][cell]
            if not isinstance(figures, dict) or any(_number(figures.get(k)) is None for k in CELL_KEYS):
                raise ScnasError(f"{where}: diagnostics[{cell!r}] needs numbers {', '.join(CELL_KEYS)}")
    return data


def _check_probabilities(rows: Any, where: str) -> None:
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) and r for r in rows):
        raise ScnasError(f"{where} must be a list of rows of probabilities")
    width = len(rows[0])
    for i, row in enumerate(rows):
        values = [_number(v) for v in row]
        if len(row) != width or any(v is None or v < 0 for v in values):
            raise ScnasError(f"{where} row {i}: expected {width} non-negative numbers")
        if abs(sum(values) - 1) > 1e-3:
            raise ScnasError(f"{where} row {i} sums to {sum(values):.4f}, not 1")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_metrics(folder: str | Path) -> pd.DataFrame:
    """metrics.csv of an evaluated fold: per case and label the Dice (and HD)."""
    return read_table(
        Path(folder) / "metrics.csv", "metrics", ("case", "label", "label_name", "dice"), numeric=("label", "dice")
    )


def read_model_info(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "model.json"
    data = read_json_file(path, "model info")
    if not isinstance(data, dict) or _number(data.get("gflops")) is None:
        raise ScnasError(f"{path}: model info lacks a number 'gflops'")
    return data


def fold_folders(model_dir: str | Path) -> dict[int, Path]:
    """The fold_K folders of a model (or search) folder, by K."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return {}
    found = {int(m.group(1)): p for p in model_dir.iterdir() if p.is_dir() and (m := FOLD_DIR.match(p.name))}
    return dict(sorted(found.items()))


def task_runs(task_dir: str | Path) -> list[str]:
    """The model folders of a task's results folder that hold fold folders, in table order (U-ResNet,
    SCNAS, transfer, then the random draws by number)."""
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise ScnasError(f"{task_dir}: task results folder not found")
    runs = [p.name for p in task_dir.iterdir() if p.is_dir() and p.name != SEARCH and fold_folders(p)]
    return sorted(runs, key=run_key)


def run_key(run: str) -> tuple[int, int, str]:
    model = model_of(run)
    rank = RUN_ORDER.index(model) if model in RUN_ORDER else len(RUN_ORDER)
    m = RANDOM_RUN.match(run)
    return rank, int(m.group(1)) if m else 0, run


def run_label(run: str) -> str:
    """A model folder's name for a reader: "3D U-ResNet", "Random genotype 2"."""
    m = RANDOM_RUN.match(run)
    if m:
        return f"{DEFAULT_MODEL_NAMES['random']} {m.group(1)}"
    return DEFAULT_MODEL_NAMES.get(run, run)


def model_label(model: str) -> str:
    return DEFAULT_MODEL_NAMES.get(model, model)
