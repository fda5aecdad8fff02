"""How a task's searches ended and how far their genotypes agree, as a Markdown report (searches.md).

Per fold, from search_summary.json: epochs and steps taken, whether the genotype was stable over the last
10 % of the epochs, and the last epoch's mean entropy and mean largest probability of softmax(alpha) per
cell type. Across folds, from genotype.json: the fraction of edges (4 cell types x 14) whose operation two
folds share, averaged over pairs of folds, and the fraction on which every fold agrees; the random
control's draws give the same figures for genotypes drawn by chance (expected pairwise 1/8).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

from scnas.errors import ScnasError
from scnas.io import read_json
from scnas.layout import FOLD_DIR, GENOTYPE, RANDOM_RUN, SEARCH
from scnas.nas.cells import CELL_TYPES
from scnas.nas.genotype import Genotype, load_genotype

SUMMARY = "search_summary.json"


def agreement(genotypes: Sequence[Genotype]) -> tuple[float, float]:
    """(mean over pairs of the fraction of edges with the same operation, fraction of edges all share)."""
    if len(genotypes) < 2:
        return math.nan, math.nan
    edges = [(cell, edge) for cell in CELL_TYPES for edge in genotypes[0].edge_ops[cell]]
    ops = [[g.edge_ops[cell][edge] for cell, edge in edges] for g in genotypes]
    pairs = [sum(x == y for x, y in zip(a, b)) / len(edges) for a, b in itertools.combinations(ops, 2)]
    unanimous = sum(len({o[k] for o in ops}) == 1 for k in range(len(edges))) / len(edges)
    return sum(pairs) / len(pairs), unanimous


def _fold_rows(task_dir: Path) -> tuple[list[str], list[Genotype]]:
    rows, genotypes = [], []
    folds = sorted((int(m.group(1)), p) for p in (task_dir / SEARCH).glob("fold_*") if (m := FOLD_DIR.match(p.name)))
    for fold, folder in folds:
        if not (folder / SUMMARY).is_file() or not (folder / GENOTYPE).is_file():
            continue
        try:
            data = read_json(folder / SUMMARY)
            final = data["final"]
            entropy = sum(f["entropy"] for f in final.values()) / len(final)
            per_cell = ", ".join(f"{c.split('_')[0]} {final[c]['max_prob']:.3f}" for c in CELL_TYPES if c in final)
            rows.append(
                f"| {fold} | {data['epochs']} | {data['weight_steps']} / {data['alpha_steps']} | "
                f"{'yes' if data['converged'] else 'NO'} | {data['genotype_stable_since_epoch']} | {entropy:.3f} | "
                f"{data['mean_max_prob']:.3f} ({per_cell}) |"
            )
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as e:
            raise ScnasError(f"{folder / SUMMARY}: not a readable search summary ({type(e).__name__}: {e})") from None
        genotypes.append(load_genotype(folder / GENOTYPE))
    return rows, genotypes


def search_report(task_dir: Path) -> str:
    """The Markdown report of `task_dir`'s searches; empty when it has none."""
    rows, genotypes = _fold_rows(Path(task_dir))
    if not rows:
        return ""
    lines = [
        f"# Searches of {Path(task_dir).name}",
        "",
        "| Fold | Epochs | Weight / alpha steps | Genotype stable over the last 10 % | Stable since epoch "
        "| Mean entropy (uniform 2.079) | Mean largest probability (uniform 0.125; per cell type) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    pairwise, unanimous = agreement(genotypes)
    if len(genotypes) > 1:
        lines.append(
            f"Agreement of the {len(genotypes)} folds' genotypes: {100 * pairwise:.1f} % of the 56 edges share their "
            f"operation between two folds (mean over pairs), {100 * unanimous:.1f} % in every fold."
        )
    draws = sorted(p for p in Path(task_dir).glob("random_*/" + GENOTYPE) if RANDOM_RUN.match(p.parent.name))
    if len(draws) > 1:
        pairwise, unanimous = agreement([load_genotype(p) for p in draws])
        lines.append(
            f"For scale, the {len(draws)} random genotypes: {100 * pairwise:.1f} % between two draws "
            f"(expected 12.5 %), {100 * unanimous:.1f} % in every draw."
        )
    return "\n".join(lines) + "\n"
