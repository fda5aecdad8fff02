"""Cells and the U-Net-like macro-structure shared by the search network and the derived network.

A cell is a DAG over 2 inputs (nodes 0, 1) and `num_nodes` intermediate nodes (2 .. num_nodes + 1);
node j sums one operation on every edge (i, j), i < j (14 edges for 4 nodes, ordered by j then i);
the cell output is the channel concatenation of the intermediate nodes. Each input is first brought
to the cell's node width c at the resolution the operations start from (DARTS preprocessing):
a LeakyReLU-Conv1x1-IN block at the same resolution, a factorised reduction when the input has twice
the resolution, trilinear upsampling (to the exact target size, so odd sizes work) followed by the
1x1 block when it has half the resolution. In a reduction cell the operations on edges from the two
inputs have stride 2.

Levels: level 0 is the input size n, level k has ceil(n_(k-1) / 2) voxels per axis. With S the stem
width and N = num_nodes, every tensor passed between cells at level k has W_k = S * 2^k channels, and
the cells producing it have node width c_k = W_k / N. When S is not a multiple of N, each W_k is
S * 2^k rounded to the nearest multiple of N (S = 14: 16, 28, 56, 112): the paper's widths are the
multiples, and the others let a network's FLOPs be matched to another's in finer steps than 4 channels.

    cell   type            level in -> out   s0      s1 (+ skip summed in first)   node width
    stem   3x3x3 Conv-IN   0                 image                                 (S channels)
    red1   reduction       0 -> 1            stem    stem                          c_1
    enc1   encoder_normal  1                 stem    red1                          c_1
    red2   reduction       1 -> 2            red1    enc1                          c_2
    enc2   encoder_normal  2                 enc1    red2                          c_2
    red3   reduction       2 -> 3            red2    enc2                          c_3
    inter  encoder_normal  3                 enc2    red3                          c_3
    exp1   expansion       3 -> 2            red3    inter + red3                  c_2
    dec1   decoder_normal  2                 inter   exp1 + enc2                   c_2
    exp2   expansion       2 -> 1            exp1    dec1 + enc2                   c_1
    dec2   decoder_normal  1                 dec1    exp2 + enc1                   c_1
    exp3   expansion       1 -> 0            exp2    dec2 + enc1                   c_0
    dec3   decoder_normal  0                 dec2    exp3 + stem                   c_0
    out    1x1x1 Conv      0                 dec3                                  (num_classes)

So s0 of enc1/enc2/inter is reduced (factorised), s0 of dec1/dec2/dec3 and both inputs of an
expansion cell are upsampled; the skip is the last encoder output (or the stem) at s1's level
(`upsample_before_reduce=False` reduces such an input before upsampling it instead: see Preprocess).
A network may be built on another macro-structure (`macro=`, e.g. a single full-resolution cell for
the planted-answer test); MACRO, the paper's, is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from scnas.nas.conv import Conv3d
from scnas.nas.operations import ConvBlock, FactorizedReduce
from scnas.nas.separable import resize_trilinear

CELL_TYPES: tuple[str, ...] = ("encoder_normal", "reduction", "decoder_normal", "expansion")
NUM_NODES = 4
NUM_LEVELS = 4


def cell_edges(num_nodes: int = NUM_NODES) -> tuple[tuple[int, int], ...]:
    """Edges (i, j) of a cell, ordered by target node j, then source i (the row order of alpha)."""
    return tuple((i, j) for j in range(2, num_nodes + 2) for i in range(j))


@dataclass(frozen=True)
class CellPlan:
    """One cell of the macro-structure: its type, output level, inputs and decoder skip."""

    name: str
    cell_type: str
    level: int
    inputs: tuple[str, str]
    skip: str | None = None

    @property
    def input_level(self) -> int:
        """Level at which the cell's operations read their inputs."""
        return self.level - 1 if self.cell_type == "reduction" else self.level


MACRO: tuple[CellPlan, ...] = (
    CellPlan("red1", "reduction", 1, ("stem", "stem")),
    CellPlan("enc1", "encoder_normal", 1, ("stem", "red1")),
    CellPlan("red2", "reduction", 2, ("red1", "enc1")),
    CellPlan("enc2", "encoder_normal", 2, ("enc1", "red2")),
    CellPlan("red3", "reduction", 3, ("red2", "enc2")),
    CellPlan("inter", "encoder_normal", 3, ("enc2", "red3")),
    CellPlan("exp1", "expansion", 2, ("red3", "inter"), skip="red3"),
    CellPlan("dec1", "decoder_normal", 2, ("inter", "exp1"), skip="enc2"),
    CellPlan("exp2", "expansion", 1, ("exp1", "dec1"), skip="enc2"),
    CellPlan("dec2", "decoder_normal", 1, ("dec1", "exp2"), skip="enc1"),
    CellPlan("exp3", "expansion", 0, ("exp2", "dec2"), skip="enc1"),
    CellPlan("dec3", "decoder_normal", 0, ("dec2", "exp3"), skip="stem"),
)


def output_levels(macro: Sequence[CellPlan]) -> dict[str, int]:
    """Level of every tensor a macro-structure passes between cells: the stem's and each cell's output."""
    return {"stem": 0, **{plan.name: plan.level for plan in macro}}


def check_macro(macro: Sequence[CellPlan]) -> None:
    """Refuse a macro-structure the cells cannot run: unknown cell types or names, inputs read before they
    exist or more than one level away, levels outside 0..NUM_LEVELS-1, or a last cell off level 0."""
    if not macro:
        raise ValueError("a macro-structure needs at least one cell")
    levels = {"stem": 0}
    for plan in macro:
        if plan.cell_type not in CELL_TYPES:
            raise ValueError(f"cell {plan.name!r}: unknown cell type {plan.cell_type!r}")
        if plan.name in levels:
            raise ValueError(f"cell name {plan.name!r} is used twice")
        if not 0 <= plan.level < NUM_LEVELS or not 0 <= plan.input_level < NUM_LEVELS:
            raise ValueError(f"cell {plan.name!r}: level {plan.level} leaves 0..{NUM_LEVELS - 1}")
        sources = (*plan.inputs, *(() if plan.skip is None else (plan.skip,)))
        for src in sources:
            if src not in levels:
                raise ValueError(f"cell {plan.name!r} reads {src!r}, which is not the stem or an earlier cell")
        for src in plan.inputs:
            if abs(levels[src] - plan.input_level) > 1:
                raise ValueError(f"cell {plan.name!r}: input {src!r} is more than one level away")
        if plan.skip is not None and levels[plan.skip] != levels[plan.inputs[1]]:
            raise ValueError(f"cell {plan.name!r}: skip {plan.skip!r} is not at the level of {plan.inputs[1]!r}")
        levels[plan.name] = plan.level
    if macro[-1].level != 0:
        raise ValueError(f"the last cell ({macro[-1].name!r}) must output level 0, the output conv's input")


def level_sizes(spatial: Sequence[int]) -> list[tuple[int, ...]]:
    """Spatial size of every level: the input size, then ceil-halved NUM_LEVELS - 1 times."""
    sizes = [tuple(int(n) for n in spatial)]
    for _ in range(NUM_LEVELS - 1):
        sizes.append(tuple(-(-n // 2) for n in sizes[-1]))
    return sizes


class Preprocess(nn.Module):
    """Bring a cell input to node width c at level `target`, from `shift` = source level - target.

    An input from the level below is upsampled and then reduced (LeakyReLU-Conv1x1-IN at the cell's
    resolution, the paper's pre-upsampling); with upsample_before_reduce=False the LeakyReLU-Conv1x1 runs
    at the input's own resolution and its output is upsampled before the norm: a different function that
    costs an eighth of the FLOPs and memory there.
    """

    def __init__(self, c_in: int, c_out: int, shift: int, upsample_before_reduce: bool = True) -> None:
        super().__init__()
        if shift not in (-1, 0, 1):
            raise ValueError(f"a cell input can be at most one level away, got shift {shift}")
        self.upsample = shift == 1
        self.upsample_before_reduce = upsample_before_reduce
        self.block = FactorizedReduce(c_in, c_out) if shift == -1 else ConvBlock(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        if not self.upsample:
            return self.block(x)
        if self.upsample_before_reduce:
            return self.block(resize_trilinear(x, size))
        act, conv, norm = self.block
        return norm(resize_trilinear(conv(act(x)), size))


EdgeFactory = Callable[[str, int, int, int], "nn.Module | None"]
"""(cell_type, edge_index, node_width, stride) -> the edge's module, or None for an absent edge."""


class Cell(nn.Module):
    """One cell: preprocess both inputs, evaluate the DAG, concatenate the intermediate nodes."""

    def __init__(
        self,
        plan: CellPlan,
        stem_channels: int,
        num_nodes: int,
        make_edge: EdgeFactory,
        levels: Mapping[str, int],
        upsample_before_reduce: bool = True,
        preprocess: type[Preprocess] = Preprocess,
    ) -> None:
        """`levels` gives the output level of every tensor the macro-structure passes (output_levels);
        `preprocess` is the class that brings the inputs to the node width (a subclass may recompute it)."""
        super().__init__()
        self.plan = plan
        self.num_nodes = num_nodes
        self.node_width = node_width(stem_channels, plan.level, num_nodes)
        self.pre0, self.pre1 = (
            preprocess(
                level_channels(stem_channels, levels[src], num_nodes),
                self.node_width,
                levels[src] - plan.input_level,
                upsample_before_reduce,
            )
            for src in plan.inputs
        )
        self.edges = nn.ModuleDict()
        reduction = plan.cell_type == "reduction"
        for index, (i, j) in enumerate(cell_edges(num_nodes)):
            module = make_edge(plan.cell_type, index, self.node_width, 2 if reduction and i < 2 else 1)
            if module is not None:
                self.edges[edge_key(i, j)] = module

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, sizes: Sequence[tuple[int, ...]], sample=None
    ) -> torch.Tensor:
        """`sample` (an EdgeSample of the cell's type) is passed to mixed edges; None for fixed edges."""
        in_size = sizes[self.plan.input_level]
        states = [self.pre0(s0, in_size), self.pre1(s1, in_size)]
        index = 0
        for j in range(2, self.num_nodes + 2):
            total = None
            for i in range(j):
                key = edge_key(i, j)
                if key in self.edges:
                    x = states[i]
                    edge = self.edges[key]
                    y = edge(x) if sample is None else edge(x, sample.weights[index], sample.active[index])
                    if y is not None:
                        total = y if total is None else total + y
                index += 1
            if total is None:
                total = s1.new_zeros((s1.shape[0], self.node_width, *sizes[self.plan.level]))
            states.append(total)
        return torch.cat(states[2:], dim=1)


def edge_key(i: int, j: int) -> str:
    return f"{i}->{j}"


def level_channels(stem_channels: int, level: int, num_nodes: int = NUM_NODES) -> int:
    """Channels of every tensor passed between cells at `level`: stem_channels * 2^level rounded (half up)
    to the nearest multiple of num_nodes, so exactly that product when stem_channels is a multiple."""
    return num_nodes * ((stem_channels * 2 ** (level + 1) + num_nodes) // (2 * num_nodes))


def node_width(stem_channels: int, level: int, num_nodes: int = NUM_NODES) -> int:
    return level_channels(stem_channels, level, num_nodes) // num_nodes


class CellNetwork(nn.Module):
    """Stem -> the cells of `macro` (the paper's 12 of MACRO by default) -> 1x1x1 output conv; logits have
    the input's spatial size."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stem_channels: int,
        num_nodes: int,
        make_edge: EdgeFactory,
        macro: Sequence[CellPlan] | None = None,
        upsample_before_reduce: bool = True,
        preprocess: type[Preprocess] = Preprocess,
    ) -> None:
        super().__init__()
        macro = tuple(MACRO if macro is None else macro)
        check_macro(macro)
        if min(in_channels, num_classes, num_nodes) < 1:
            raise ValueError("in_channels, num_classes and num_nodes must be positive")
        if stem_channels < num_nodes:
            raise ValueError(f"stem_channels ({stem_channels}) must be at least num_nodes ({num_nodes})")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stem_channels = stem_channels
        self.num_nodes = num_nodes
        width = level_channels(stem_channels, 0, num_nodes)
        self.stem = nn.Sequential(
            Conv3d(in_channels, width, 3, padding=1, bias=False),
            nn.InstanceNorm3d(width, affine=True),
        )
        self.macro = macro
        levels = output_levels(macro)
        self.upsample_before_reduce = upsample_before_reduce
        self.cells = nn.ModuleList(
            Cell(plan, stem_channels, num_nodes, make_edge, levels, upsample_before_reduce, preprocess)
            for plan in macro
        )
        self.out = nn.Conv3d(width, num_classes, 1)

    def run_cells(self, x: torch.Tensor, samples: Mapping[str, object] | None = None) -> torch.Tensor:
        """Forward pass; `samples` maps a cell type to the EdgeSample all its cells share."""
        sizes = level_sizes(x.shape[2:])
        outputs = {"stem": self.stem(x)}
        for plan, cell in zip(self.macro, self.cells):
            s0, s1 = (outputs[name] for name in plan.inputs)
            if plan.skip is not None:
                s1 = s1 + outputs[plan.skip]
            outputs[plan.name] = cell(s0, s1, sizes, None if samples is None else samples[plan.cell_type])
        return self.out(outputs[self.macro[-1].name])
