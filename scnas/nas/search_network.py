"""The over-parameterised search network: every edge holds all 8 candidate operations.

Macro-structure, wiring and widths: scnas.nas.cells. One set of logits alpha (14 x 8) per cell type;
in each forward pass the weights are drawn once per cell type (scnas.nas.sampling) and shared by all
cells of that type, and an edge runs only the operations its weights select. The draws use a CPU
generator seeded by `seed`, so DDP ranks built with the same seed sample the same architecture.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from scnas.nas.cells import CELL_TYPES, NUM_NODES, CellNetwork, CellPlan, cell_edges
from scnas.nas.genotype import Genotype
from scnas.nas.operations import OPERATIONS, OPS
from scnas.nas.sampling import SAMPLINGS, EdgeSample, sample_edges

ZERO = OPERATIONS.index("zero")


class MixedEdge(nn.Module):
    """All candidate operations of one edge; runs the selected ones and sums them, weighted.

    The zero operation is never evaluated: its weighted output is identically zero and carries no
    gradient. Returns None when nothing runs (the node then sums the other edges).
    """

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(OPS[name](channels, channels, stride) for name in OPERATIONS)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: tuple[int, ...]) -> torch.Tensor | None:
        out = None
        for k in active:
            if k != ZERO:
                y = weights[k] * self.ops[k](x)
                out = y if out is None else out + y
        return out


class SearchNetwork(CellNetwork):
    """SCNAS search network; `sampling` is "two" (Algorithm 1), "all" (DARTS) or "one" (hard Gumbel).

    `macro` replaces the paper's macro-structure (scnas.nas.cells.MACRO); every cell type keeps its
    alpha, and a type the macro-structure does not use keeps its initial alpha.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stem_channels: int,
        sampling: str = "two",
        num_nodes: int = NUM_NODES,
        seed: int = 0,
        tau: float = 1.0,
        macro: Sequence[CellPlan] | None = None,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {sampling!r}; expected one of {', '.join(SAMPLINGS)}")
        super().__init__(
            in_channels,
            num_classes,
            stem_channels,
            num_nodes,
            lambda cell_type, index, channels, stride: MixedEdge(channels, stride),
            macro,
        )
        self.sampling = sampling
        self.cell_types = CELL_TYPES
        self.tau = float(tau)
        self.edges = cell_edges(num_nodes)
        self.alphas = nn.ParameterDict(
            {t: nn.Parameter(1e-3 * torch.randn(len(self.edges), len(OPERATIONS))) for t in CELL_TYPES}
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.last_sample: dict[str, EdgeSample] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        samples = {t: sample_edges(self.sampling, self.alphas[t], self.tau, self.generator) for t in CELL_TYPES}
        self.last_sample = samples
        return self.run_cells(x, samples)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The four alphas, in CELL_TYPES order."""
        return [self.alphas[t] for t in CELL_TYPES]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the alphas."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def genotype(self) -> Genotype:
        """The highest-alpha operation on every edge (zero allowed: a cut edge)."""
        cells = {}
        for t in CELL_TYPES:
            best = self.alphas[t].detach().argmax(-1).tolist()
            cells[t] = tuple((i, j, OPERATIONS[k]) for (i, j), k in zip(self.edges, best))
        return Genotype(cells=cells, num_nodes=self.num_nodes)

    def sampler_state(self) -> torch.Tensor:
        """State of the architecture sampler's generator, for checkpoints."""
        return self.generator.get_state()

    def load_sampler_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
