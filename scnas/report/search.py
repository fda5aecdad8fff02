"""Search dynamics of one fold (from alpha_history.json and search_log.csv) and the agreement of a task's
folds (from their genotype.json): did the search leave the uniform distribution, settle, and agree with
itself?"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from scnas.errors import ScnasError
from scnas.nas.cells import cell_edges
from scnas.nas.genotype import Genotype
from scnas.report import style
from scnas.report.readers import read_alpha_history, read_search_log

# Paul Tol's "muted" colours: apart from the operation colours the other panels use.
CELL_COLOURS = ("#332288", "#AA4499", "#117733", "#DDAA33")
BARS_UP_TO = 30
"""Epochs up to which per-epoch counts are bars and points are marked; a longer search draws lines."""


def edge_names(num_nodes: int) -> list[str]:
    """Row labels of softmax(alpha): "k-2 → 0" (cell input k-2 to node 0), ..., "2 → 3"."""

    def node(i: int) -> str:
        return f"k-{2 - i}" if i < 2 else str(i - 2)

    return [f"{node(i)} → {node(j)}" for i, j in cell_edges(num_nodes)]


def _nodes_for(edges: int) -> int:
    """The node count whose cell has `edges` edges (14 -> 4)."""
    n = 1
    while len(cell_edges(n)) < edges:
        n += 1
    if len(cell_edges(n)) != edges:
        raise ScnasError(f"{edges} rows of softmax(alpha) match no cell (4 nodes have 14 edges)")
    return n


def plot_search(folder: str | os.PathLike, out: str | os.PathLike, operations: Sequence[str], title: str = "") -> str:
    """The dynamics of one search: softmax(alpha) at the end per cell type, each edge's winning operation's
    probability over the epochs, entropy and argmax changes per epoch, the temperature and both losses."""
    history = read_alpha_history(folder)
    log = read_search_log(folder)
    cells = list(history[0]["softmax_alpha"])
    final = {c: np.asarray(history[-1]["softmax_alpha"][c], dtype=float) for c in cells}
    n_ops = final[cells[0]].shape[1]
    if len(operations) != n_ops:
        raise ScnasError(f"{folder}: softmax(alpha) has {n_ops} operations, the genotype lists {len(operations)}")
    rows = edge_names(_nodes_for(final[cells[0]].shape[0]))
    epochs = [int(e["epoch"]) for e in history]
    fig = style.figure(4.2 * len(cells), 12.5)
    grid = fig.add_gridspec(3, len(cells), height_ratios=[1.25, 1, 1])
    # The colour scale spans the probabilities reached: early in a search they all lie near 1/8.
    low, high = min(p.min() for p in final.values()), max(p.max() for p in final.values())
    image = None
    for k, cell in enumerate(cells):
        ax = fig.add_subplot(grid[0, k])
        image = ax.imshow(final[cell], cmap="viridis", vmin=low, vmax=max(high, low + 1e-6), aspect="auto")
        for r, c in enumerate(final[cell].argmax(1)):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="#FF2A2A", linewidth=2))
        ax.set_xticks(range(n_ops), [style.operation_name(op) for op in operations], rotation=55, ha="right")
        ax.set_yticks(range(len(rows)), rows if k == 0 else [""] * len(rows))
        ax.set_title(f"{style.CELL_NAMES.get(cell, cell)}: softmax(α), epoch {epochs[-1]}")
    fig.colorbar(image, ax=fig.axes[: len(cells)], shrink=0.8, label="probability (box: argmax)")

    winners_used = set()
    for k, cell in enumerate(cells):
        ax = fig.add_subplot(grid[1, k])
        winners = final[cell].argmax(1)
        series = np.asarray([e["softmax_alpha"][cell] for e in history], dtype=float)
        for r, w in enumerate(winners):
            ax.plot(epochs, series[:, r, w], color=style.OPERATION_COLOURS.get(operations[w], "#333333"), lw=1.4)
            winners_used.add(operations[w])
        ax.axhline(1 / n_ops, color="#777777", ls=":", lw=1)
        ax.set_title(f"{style.CELL_NAMES.get(cell, cell)}: p(winning op) per edge")
        ax.set_xlabel("epoch")
        if k == 0:
            ax.set_ylabel("probability (dotted: uniform)")
        _integer_epochs(ax, epochs)
    used = [op for op in operations if op in winners_used]
    handles = [Line2D([], [], color=style.OPERATION_COLOURS.get(op, "#333333"), lw=2.5) for op in used]

    marker = "." if len(epochs) <= BARS_UP_TO else None
    ax = fig.add_subplot(grid[2, 0])
    for k, cell in enumerate(cells):
        ax.plot(epochs, [e["diagnostics"][cell]["entropy"] for e in history], color=CELL_COLOURS[k % 4], marker=marker)
    ax.axhline(math.log(n_ops), color="#777777", ls=":", lw=1)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.legend([f"{style.CELL_NAMES.get(c, c)} cell" for c in cells], loc="best")
    ax.set_title("mean entropy per edge (dotted: uniform)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats")
    _integer_epochs(ax, epochs)

    ax = fig.add_subplot(grid[2, 1])
    width = 0.8 / len(cells)
    window = max(1, len(epochs) // 40)
    for k, cell in enumerate(cells):
        changes = np.asarray([e["diagnostics"][cell]["argmax_changes"] for e in history], dtype=float)
        if len(epochs) > BARS_UP_TO:
            smooth = np.convolve(changes, np.ones(window) / window, mode="same")
            ax.plot(epochs, smooth, color=CELL_COLOURS[k % 4], lw=1.4)
        else:
            ax.bar(np.asarray(epochs) + (k - (len(cells) - 1) / 2) * width, changes, width, color=CELL_COLOURS[k % 4])
    average = f" (mean over {window} epochs)" if len(epochs) > BARS_UP_TO and window > 1 else ""
    ax.set_title(f"edges whose argmax changed{average}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("edges")
    _integer_epochs(ax, epochs)

    ax = fig.add_subplot(grid[2, 2])
    ax.plot(log["epoch"], log["tau"], color="#333333", marker=marker)
    ax.set_title("Gumbel-softmax temperature τ")
    ax.set_xlabel("epoch")
    _integer_epochs(ax, epochs)
    if "alpha_lr" in log and log["alpha_lr"].nunique() > 1:  # decayed over the extra epochs
        ax.set_ylabel("τ")
        lr_ax = ax.twinx()
        lr_ax.plot(log["epoch"], log["alpha_lr"], color="#009E73", marker=marker)
        lr_ax.set_ylabel("α's learning rate", color="#009E73")
        lr_ax.tick_params(axis="y", colors="#009E73")
        lr_ax.set_ylim(bottom=0)
        ax.set_title("temperature τ (black), α's lr (green)")

    ax = fig.add_subplot(grid[2, 3] if len(cells) > 3 else grid[2, -1])
    ax.plot(log["epoch"], log["weight_loss"], color="#0072B2", marker=marker, label="weight loss (weight set)")
    ax.plot(log["epoch"], log["arch_loss"], color="#D55E00", marker=marker, label="architecture loss (arch. set)")
    ax.set_title("Jaccard loss")
    ax.set_xlabel("epoch")
    ax.legend(loc="best")
    _integer_epochs(ax, epochs)

    fig.legend(
        handles,
        [style.operation_name(op) for op in used],
        loc="outside lower center",
        ncols=min(len(used), 8),
        frameon=False,
        title="middle row: each edge's line has the colour of the operation that wins it at the end",
    )
    if title:
        fig.suptitle(title, fontsize=14)
    return style.save_png(fig, out)


def _integer_epochs(ax, epochs: Sequence[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(10, max(1, len(epochs)))))


def win_counts(genotypes: Sequence[Genotype]) -> dict[str, np.ndarray]:
    """Per cell type, edges x operations: in how many of the genotypes each operation holds each edge."""
    if not genotypes:
        raise ScnasError("no genotypes to compare")
    first = genotypes[0]
    for g in genotypes[1:]:
        if g.operations != first.operations or g.num_nodes != first.num_nodes:
            raise ScnasError("the genotypes differ in their operations or node count; they cannot be compared")
    edges = cell_edges(first.num_nodes)
    counts = {}
    for cell in first.cells:
        table = np.zeros((len(edges), len(first.operations)), dtype=int)
        for g in genotypes:
            for r, (i, j) in enumerate(edges):
                table[r, first.operations.index(g.edge_ops[cell][i, j])] += 1
        counts[cell] = table
    return counts


def plot_agreement(genotypes: Sequence[Genotype], names: Sequence[str], out: str | os.PathLike, title: str = "") -> str:
    """How often each operation won each edge across the folds' genotypes, per cell type."""
    counts = win_counts(genotypes)
    ops = genotypes[0].operations
    rows = edge_names(genotypes[0].num_nodes)
    n = len(genotypes)
    fig = style.figure(4.2 * len(counts), 6.6)
    axes = fig.subplots(1, len(counts), sharey=True)
    image = None
    for ax, (cell, table) in zip(np.atleast_1d(axes), counts.items()):
        image = ax.imshow(table, cmap="Blues", vmin=0, vmax=n, aspect="auto")
        for r, c in zip(*table.nonzero()):
            ax.text(c, r, str(table[r, c]), ha="center", va="center", color="white" if table[r, c] > n / 2 else "black")
        agree = int((table.max(1) == n).sum())
        ax.set_title(f"{style.CELL_NAMES.get(cell, cell)}: {agree}/{len(rows)} edges agree")
        ax.set_xticks(range(len(ops)), [style.operation_name(op) for op in ops], rotation=55, ha="right")
        ax.set_yticks(range(len(rows)), rows)
    fig.colorbar(image, ax=axes, shrink=0.8, ticks=range(n + 1), label=f"folds choosing the operation (of {n})")
    heading = title or "operation chosen per edge across folds"
    fig.suptitle(f"{heading} ({', '.join(names)})", fontsize=13)
    return style.save_png(fig, out)
