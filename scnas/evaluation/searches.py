"""How a task's searches ended and how far their genotypes agree, as a Markdown report (searches.md).

Per fold, from search_summary.json: epochs and steps taken, whether the genotype was stable over the last
10 % of the epochs, and the last epoch's mean entropy and mean largest probability of softmax(alpha) per
cell type. Across folds, from genotype.json: the fraction of edges (4 cell types x 14) whose operation two
folds share, averaged over pairs of folds, and the fraction on which every fold agrees; the random
control's draws give the same figures for genotypes drawn by chance (expected pairwise 1/8). From the last
softmax(alpha) in alpha_history.json: how many edges the search decided (its two most likely operations
at least DECIDED_MARGIN apart); and how often each operation was chosen, against the random draws.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

from scnas.errors import ScnasError
from scnas.io import read_json
from scnas.layout import ALPHA_HISTORY, FOLD_DIR, GENOTYPE, RANDOM_RUN, SEARCH, SEARCH_SUMMARY
from scnas.nas.cells import CELL_TYPES
from scnas.nas.genotype import Genotype, load_genotype
from scnas.nas.operations import OPERATIONS

DECIDED_MARGIN = 0.1
"""An edge is decided when its two most likely operations are at least this far apart in probability."""


def agreement(genotypes: Sequence[Genotype]) -> tuple[float, float]:
    """(mean over pairs of the fraction of edges with the same operation, fraction of edges all share)."""
    if len(genotypes) < 2:
        return math.nan, math.nan
    edges = [(cell, edge) for cell in CELL_TYPES for edge in genotypes[0].edge_ops[cell]]
    ops = [[g.edge_ops[cell][edge] for cell, edge in edges] for g in genotypes]
    pairs = [sum(x == y for x, y in zip(a, b)) / len(edges) for a, b in itertools.combinations(ops, 2)]
    unanimous = sum(len({o[k] for o in ops}) == 1 for k in range(len(edges))) / len(edges)
    return sum(pairs) / len(pairs), unanimous


def decided_edges(softmax_alpha: dict[str, Sequence[Sequence[float]]], margin: float = DECIDED_MARGIN) -> int:
    """How many edges (all cell types) have their two most likely operations at least `margin` apart."""
    decided = 0
    for probs in softmax_alpha.values():
        for edge in probs:
            first, second = sorted(edge, reverse=True)[:2]
            decided += first - second >= margin - 1e-9  # 0.5 - 0.4 is 0.1 apart
    return decided


def operation_counts(genotypes: Sequence[Genotype]) -> dict[str, float]:
    """Per operation, on how many of the 56 edges it was chosen, averaged over `genotypes`."""
    counts = dict.fromkeys(OPERATIONS, 0)
    for genotype in genotypes:
        for cell in CELL_TYPES:
            for op in genotype.edge_ops[cell].values():
                counts[op] += 1
    return {op: n / max(1, len(genotypes)) for op, n in counts.items()}


def _decided(folder: Path) -> str:
    if not (folder / ALPHA_HISTORY).is_file():
        return "-"
    try:
        last = read_json(folder / ALPHA_HISTORY)[-1]["softmax_alpha"]
        total = sum(len(edges) for edges in last.values())
        return f"{decided_edges(last)} of {total}"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ScnasError(f"{folder / ALPHA_HISTORY}: not a readable alpha history ({type(e).__name__}: {e})") from None


def _fold_rows(task_dir: Path) -> tuple[list[str], list[Genotype], list[int]]:
    rows, genotypes, searched = [], [], []
    folds = sorted((int(m.group(1)), p) for p in (task_dir / SEARCH).glob("fold_*") if (m := FOLD_DIR.match(p.name)))
    for fold, folder in folds:
        if not (folder / SEARCH_SUMMARY).is_file() or not (folder / GENOTYPE).is_file():
            continue
        try:
            data = read_json(folder / SEARCH_SUMMARY)
            final = data["final"]
            entropy = sum(f["entropy"] for f in final.values()) / len(final)
            per_cell = ", ".join(f"{c.split('_')[0]} {final[c]['max_prob']:.3f}" for c in CELL_TYPES if c in final)
            rows.append(
                f"| {fold} | {data['epochs']} | {data['weight_steps']} / {data['alpha_steps']} | "
                f"{'yes' if data['converged'] else 'NO'} | {data['genotype_stable_since_epoch']} | {entropy:.3f} | "
                f"{data['mean_max_prob']:.3f} ({per_cell}) | {_decided(folder)} |"
            )
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as e:
            raise ScnasError(
                f"{folder / SEARCH_SUMMARY}: not a readable search summary ({type(e).__name__}: {e})"
            ) from None
        genotypes.append(load_genotype(folder / GENOTYPE))
        searched.append(fold)
    return rows, genotypes, searched


def search_report(task_dir: Path) -> str:
    """The Markdown report of `task_dir`'s searches; empty when it has none."""
    rows, genotypes, folds = _fold_rows(Path(task_dir))
    if not rows:
        return ""
    lines = [
        f"# Searches of {Path(task_dir).name}",
        "",
        "| Fold | Epochs | Weight / alpha steps | Genotype stable over the last 10 % | Stable since epoch "
        "| Mean entropy (uniform 2.079) | Mean largest probability (uniform 0.125; per cell type) "
        f"| Edges decided (top two >= {DECIDED_MARGIN:g} apart) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    pairwise, unanimous = agreement(genotypes)
    if len(genotypes) > 1:
        lines.append(
            f"Agreement of the {len(genotypes)} folds' genotypes: {100 * pairwise:.1f} % of the 56 edges share their "
            f"operation between two folds (mean over pairs), {100 * unanimous:.1f} % in every fold."
        )
    draws = [
        load_genotype(p) for p in sorted(Path(task_dir).glob("random_*/" + GENOTYPE)) if RANDOM_RUN.match(p.parent.name)
    ]
    if len(draws) > 1:
        pairwise, unanimous = agreement(draws)
        lines.append(
            f"For scale, the {len(draws)} random genotypes: {100 * pairwise:.1f} % between two draws "
            f"(expected 12.5 %), {100 * unanimous:.1f} % in every draw."
        )
    lines += ["", _operations_table(genotypes, folds, draws)]
    return "\n".join(lines) + "\n"


def _operations_table(genotypes: Sequence[Genotype], folds: Sequence[int], draws: Sequence[Genotype]) -> str:
    """How many of the 56 edges chose each operation, per searched fold and for the random draws (mean)."""
    columns = [operation_counts([g]) for g in genotypes]
    header = [f"fold {k}" for k in folds]
    if draws:
        columns.append(operation_counts(draws))
        header.append(f"random (mean of {len(draws)})")
    lines = [
        "Operations chosen, edges of 56 (a uniform draw expects 7 each):",
        "",
        "| Operation | " + " | ".join(header) + " |",
        "| --- |" + " --- |" * len(header),
    ]
    for op in OPERATIONS:
        lines.append(f"| {op} | " + " | ".join(f"{c[op]:.3g}" for c in columns) + " |")
    return "\n".join(lines)
