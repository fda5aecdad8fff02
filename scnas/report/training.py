"""Training curves from the folds' training_log.csv (nnU-Net's progress.png is the model): per fold the
training loss with the validation patch Dice where it was computed, the learning rate and the epoch time;
per task every fold of every model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from scnas.errors import ScnasError
from scnas.report import style
from scnas.report.readers import read_training_log, run_label

VAL = "val_patch_dice"
DICE_COLOUR = "#009E73"


def _val(log) -> tuple[np.ndarray, np.ndarray] | None:
    if VAL not in log.columns or log[VAL].notna().sum() == 0:
        return None
    rows = log[log[VAL].notna()]
    return rows["epoch"].to_numpy(), rows[VAL].to_numpy()


def plot_training_fold(folder: str | os.PathLike, out: str | os.PathLike, title: str = "") -> str:
    """One fold's training: loss (and validation patch Dice), learning rate and seconds per epoch."""
    log = read_training_log(folder)
    fig = style.figure(8, 7.5)
    top, mid, low = fig.subplots(3, 1, sharex=True, height_ratios=[2.2, 1, 1])
    top.plot(log["epoch"], log["train_loss"], color="#0072B2", lw=1.8, label="training loss (Jaccard)")
    top.set_ylabel("training loss")
    handles = [Line2D([], [], color="#0072B2", lw=1.8)]
    labels = ["training loss (Jaccard)"]
    val = _val(log)
    if val is not None:
        right = top.twinx()
        right.spines["right"].set_visible(True)
        right.plot(*val, color=DICE_COLOUR, marker="o", ms=4, lw=1.5)
        right.set_ylabel("validation patch Dice", color=DICE_COLOUR)
        right.set_ylim(0, 1)
        handles.append(Line2D([], [], color=DICE_COLOUR, marker="o", lw=1.5))
        labels.append("validation patch Dice (curves only, never used to select)")
    top.legend(handles, labels, loc="upper right")
    mid.plot(log["epoch"], log["lr"], color="#D55E00", lw=1.5)
    mid.set_yscale("log")
    mid.set_ylabel("learning rate")
    if len(log) > 60:
        low.plot(log["epoch"], log["seconds"], color="#777777", lw=1)
    else:
        low.bar(log["epoch"], log["seconds"], color="#999999", width=0.8)
    low.set_ylabel("seconds / epoch")
    low.set_xlabel("epoch")
    low.xaxis.set_major_locator(MaxNLocator(integer=True))
    total = float(log["seconds"].sum())
    top.set_title(f"{title}  ({len(log)} epochs, {duration(total)})" if title else f"{len(log)} epochs")
    return style.save_png(fig, out)


def plot_training_task(folds: Mapping[str, Mapping[int, Path]], out: str | os.PathLike, title: str = "") -> str:
    """Every fold's training loss per model folder (one panel each); dashed: validation patch Dice."""
    runs = [r for r, f in folds.items() if f]
    if not runs:
        raise ScnasError(f"{out}: no training logs to draw")
    rows, cols = style.grid_shape(len(runs), 3)
    fig = style.figure(5.2 * cols, 3.8 * rows + 0.8)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    all_folds: list[int] = sorted({k for r in runs for k in folds[r]})
    any_val = False
    for ax, run in zip(axes, runs):
        right = None
        for fold, folder in folds[run].items():
            log = read_training_log(folder)
            colour = style.fold_colour(all_folds.index(fold))
            ax.plot(log["epoch"], log["train_loss"], color=colour, lw=1.5)
            val = _val(log)
            if val is not None:
                any_val = True
                right = right or ax.twinx()
                right.plot(*val, color=colour, ls="--", marker=".", lw=1.2)
        if right is not None:
            right.spines["right"].set_visible(True)
            right.set_ylim(0, 1)
            right.set_ylabel("val. patch Dice (dashed)")
        ax.set_title(run_label(run))
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=style.fold_colour(i), lw=2) for i in range(len(all_folds))]
    labels = [f"fold {k}" for k in all_folds]
    if any_val:
        handles.append(Line2D([], [], color="#555555", ls="--"))
        labels.append("validation patch Dice")
    fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), frameon=False)
    if title:
        fig.suptitle(title, fontsize=13)
    return style.save_png(fig, out)


def duration(seconds: float) -> str:
    """ "42 s", "3.5 min", "2.1 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
