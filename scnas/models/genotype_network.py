"""The network a genotype describes: the search network's macro-structure with one operation per edge.

Zero edges have no module; a node whose incoming edges are all zero outputs zeros. Any stem width of
at least the genotype's num_nodes (widths per level: scnas.nas.cells) and any input channel count
(transfer adapts the stem).
`macro` replaces the paper's macro-structure, as in the search network it was derived from.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from scnas.nas.cells import CellNetwork, CellPlan, cell_edges
from scnas.nas.genotype import Genotype
from scnas.nas.operations import OPS


class GenotypeNetwork(CellNetwork):
    """Fixed architecture from `genotype`; wiring and widths as in scnas.nas.cells."""

    def __init__(
        self,
        genotype: Genotype,
        in_channels: int,
        num_classes: int,
        stem_channels: int,
        macro: Sequence[CellPlan] | None = None,
        upsample_before_reduce: bool = True,
    ) -> None:
        edges = cell_edges(genotype.num_nodes)

        def make_edge(cell_type: str, index: int, channels: int, stride: int) -> nn.Module | None:
            op = genotype.edge_ops[cell_type][edges[index]]
            return None if op == "zero" else OPS[op](channels, channels, stride)

        super().__init__(
            in_channels, num_classes, stem_channels, genotype.num_nodes, make_edge, macro, upsample_before_reduce
        )
        self.genotype = genotype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_cells(x)
