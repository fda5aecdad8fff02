"""Has a search left the uniform distribution, and has its genotype settled? Figures per cell type.

From softmax(alpha) (edges x operations) per cell type: the mean entropy over edges (log 8 = 2.08 nats
is uniform, 0 is one operation per edge), the mean over edges of the largest probability (1/8 uniform),
and how many edges' argmax changed since the previous epoch.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

STABLE_FRACTION = 0.1
"""A search has converged when its genotype did not change over at least this last fraction of epochs."""
DECISIVE_MAX_PROB = 0.25
"""Below this mean largest probability (2 / 8 operations) the argmax was taken from a near-uniform
distribution: stable, perhaps right (the planted-answer test finds the answer at 0.21), but not decided."""


def cell_figures(probs: Sequence[Sequence[float]], previous: Sequence[Sequence[float]] | None) -> dict[str, float]:
    """Entropy, largest probability and argmax changes of one cell type's softmax(alpha)."""
    p = np.asarray(probs, dtype=np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
    changed = 0 if previous is None else int((np.asarray(previous).argmax(1) != p.argmax(1)).sum())
    return {
        "entropy": round(float(entropy.mean()), 6),
        "max_prob": round(float(p.max(axis=1).mean()), 6),
        "argmax_changes": changed,
    }


def epoch_figures(
    softmax_alpha: Mapping[str, Sequence[Sequence[float]]], previous: Mapping[str, Sequence[Sequence[float]]] | None
) -> dict[str, dict[str, float]]:
    """`cell_figures` for every cell type."""
    return {cell: cell_figures(p, previous[cell] if previous else None) for cell, p in softmax_alpha.items()}


def stable_since(genotypes: Sequence[str]) -> int:
    """The first epoch (1-based) from which the genotype (one string per epoch) stayed the same."""
    if not genotypes:
        return 0
    since = len(genotypes)
    while since > 1 and genotypes[since - 2] == genotypes[-1]:
        since -= 1
    return since


def converged(genotypes: Sequence[str], fraction: float = STABLE_FRACTION) -> bool:
    """True when the genotype was unchanged over (at least) the last `fraction` of the epochs.

    With E epochs the last ceil(fraction * E) epochs, and at least 2, must agree: a 1-epoch search has
    shown nothing.
    """
    n = len(genotypes)
    need = max(2, math.ceil(fraction * n))
    return n >= need and len(set(genotypes[-need:])) == 1


def summary(
    history: Sequence[Mapping[str, Any]],
    alphas: Sequence[Mapping[str, Any]],
    weight_steps: int,
    alpha_steps: int,
) -> dict[str, Any]:
    """The search's end state: the last epoch's figures, the steps taken, stability of the genotype."""
    genotypes = [row["genotype"] for row in history]
    last = alphas[-1]["diagnostics"] if alphas else {}
    max_prob = sum(f["max_prob"] for f in last.values()) / len(last) if last else 0.0
    return {
        "epochs": len(history),
        "weight_steps": weight_steps,
        "alpha_steps": alpha_steps,
        "final": last,
        "genotype_stable_since_epoch": stable_since(genotypes),
        "converged": converged(genotypes),
        "stable_fraction_required": STABLE_FRACTION,
        "mean_max_prob": round(max_prob, 6),
        "decisive": max_prob >= DECISIVE_MAX_PROB,
    }
