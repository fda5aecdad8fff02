"""The look shared by every figure: a non-interactive backend, one colour per operation, model and label,
and PNGs written atomically at a fixed resolution."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from scnas.io import atomic_path  # noqa: E402

DPI = 100

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies); zero is drawn grey.
OPERATION_COLOURS = {
    "conv3": "#0072B2",
    "sep_dil_conv3_r2": "#E69F00",
    "sep_dil_conv3_r3": "#D55E00",
    "sep_dil_conv3_r4": "#CC79A7",
    "max_pool3": "#009E73",
    "avg_pool3": "#56B4E9",
    "identity": "#000000",
    "zero": "#AAAAAA",
}
OPERATION_NAMES = {
    "conv3": "3x3x3 conv",
    "sep_dil_conv3_r2": "sep. dil. conv r2",
    "sep_dil_conv3_r3": "sep. dil. conv r3",
    "sep_dil_conv3_r4": "sep. dil. conv r4",
    "max_pool3": "max pool",
    "avg_pool3": "avg pool",
    "identity": "identity",
    "zero": "zero",
}
CELL_NAMES = {
    "encoder_normal": "encoder normal",
    "reduction": "reduction",
    "decoder_normal": "decoder normal",
    "expansion": "expansion",
}
MODEL_COLOURS = {
    "uresnet": "#4C72B0",
    "scnas": "#DD8452",
    "scnas_transfer": "#8172B3",
    "random": "#55A868",
}
FOLD_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442")
# Segmentation labels 1, 2, 3, ...: red, green, blue, orange, magenta, cyan.
LABEL_COLOURS = ("#E8291C", "#2CC12C", "#1F6FFF", "#FF9F1A", "#E040FB", "#00E5E5")

plt.rcParams.update(
    {
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


def operation_name(op: str) -> str:
    return OPERATION_NAMES.get(op, op)


def model_colour(model: str) -> str:
    return MODEL_COLOURS.get(model, "#777777")


def fold_colour(index: int) -> str:
    return FOLD_COLOURS[index % len(FOLD_COLOURS)]


def label_colour(label: int) -> str:
    return LABEL_COLOURS[(label - 1) % len(LABEL_COLOURS)]


def figure(width: float, height: float) -> Figure:
    """A new figure, `width` x `height` inches, with constrained layout (labels are never cut off)."""
    return plt.figure(figsize=(width, height), layout="constrained")


def save_png(fig: Figure, path: str | os.PathLike) -> str:
    """Write `fig` as a PNG atomically and release it; returns the path."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return os.fspath(path)


def grid_shape(n: int, columns: int) -> tuple[int, int]:
    """Rows and columns of a grid holding `n` panels, at most `columns` wide."""
    cols = max(1, min(n, columns))
    return (n + cols - 1) // cols, cols
