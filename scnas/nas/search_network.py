"""The over-parameterised search network: every edge holds all 8 candidate operations.

Macro-structure, wiring and widths: scnas.nas.cells. One set of logits alpha (14 x 8) per cell type;
in each forward pass the weights are drawn once per cell type (scnas.nas.sampling) and shared by all
cells of that type, and an edge runs only the operations its weights select. The draws use a CPU
generator seeded by `seed`, so DDP ranks built with the same seed sample the same architecture.

Memory (`recompute`, on by default): each selected operation with its weight, and each cell input's
preprocessing, keeps for the backward pass only its input and the outputs of its convolutions; what
else it would keep (LeakyReLU outputs, the upsampled cell inputs, InstanceNorm outputs, pooling masks,
the operation outputs that the weight's gradient reads) is recomputed in the backward pass from those,
under torch.utils.checkpoint's selective policy. The function and its gradients are unchanged; the
convolutions are not run twice. A stem-48 step at 128^3 keeps a third of what it kept without.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from scnas.nas.cells import CELL_TYPES, NUM_NODES, CellNetwork, CellPlan, Preprocess, cell_edges
from scnas.nas.genotype import Genotype
from scnas.nas.operations import OPERATIONS, OPS
from scnas.nas.sampling import SAMPLINGS, EdgeSample, sample_edges

ZERO = OPERATIONS.index("zero")
KEPT_FOR_BACKWARD = frozenset({torch.ops.aten.convolution.default})
"""Operators whose outputs a recomputed region keeps; everything else in it is recomputed."""
RECOMPUTE_MIN_ELEMENTS = 2**20
"""Regions with a smaller input run as usual: below it the checkpoint's own cost (about a millisecond per
region on a CPU) outweighs the memory it saves."""


def _keep_convolutions(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in KEPT_FOR_BACKWARD else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts() -> tuple[Any, Any]:
    return create_selective_checkpoint_contexts(_keep_convolutions)


def recomputed(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """fn(*args), keeping for the backward pass only the tensor arguments and convolution outputs; what
    else fn's operations would keep is recomputed from them when the backward pass reaches fn (which
    must draw no random numbers: the random state is not replayed)."""
    if (
        not torch.is_grad_enabled()
        or max(a.numel() for a in args if isinstance(a, torch.Tensor)) < RECOMPUTE_MIN_ELEMENTS
    ):
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=_selective_contexts, preserve_rng_state=False)


def _weighted(op: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * op(x)


class MixedEdge(nn.Module):
    """All candidate operations of one edge; runs the selected ones and sums them, weighted.

    The zero operation is never evaluated: its weighted output is identically zero and carries no
    gradient. Returns None when nothing runs (the node then sums the other edges). With `recompute`
    every operation but identity runs as a recomputed region (module docstring).
    """

    def __init__(self, channels: int, stride: int, recompute: bool = True) -> None:
        super().__init__()
        self.ops = nn.ModuleList(OPS[name](channels, channels, stride) for name in OPERATIONS)
        self.recompute = recompute

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: tuple[int, ...]) -> torch.Tensor | None:
        out = None
        for k in active:
            if k == ZERO:
                continue
            op = self.ops[k]
            if self.recompute and not isinstance(op, nn.Identity):
                y = recomputed(_weighted, op, x, weights[k])
            else:
                y = _weighted(op, x, weights[k])
            out = y if out is None else out + y
        return out


class RecomputedPreprocess(Preprocess):
    """A cell input's preprocessing as a recomputed region: it keeps its input and its 1x1 convolutions'
    outputs, not the upsampled input or the LeakyReLU output (each the input's width at the cell's
    resolution)."""

    def forward(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        return recomputed(super().forward, x, size)


class SearchNetwork(CellNetwork):
    """SCNAS search network; `sampling` is "two" (Algorithm 1), "all" (DARTS) or "one" (hard Gumbel).

    `macro` replaces the paper's macro-structure (scnas.nas.cells.MACRO); every cell type keeps its
    alpha, and a type the macro-structure does not use keeps its initial alpha. `recompute=False` keeps
    every intermediate for the backward pass instead (module docstring): a step about 13 % faster on a CPU
    (stem 48, 48^3), with three times the memory.
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
        recompute: bool = True,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {sampling!r}; expected one of {', '.join(SAMPLINGS)}")
        super().__init__(
            in_channels,
            num_classes,
            stem_channels,
            num_nodes,
            lambda cell_type, index, channels, stride: MixedEdge(channels, stride, recompute),
            macro,
            preprocess=RecomputedPreprocess if recompute else Preprocess,
        )
        self.recompute = recompute
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
