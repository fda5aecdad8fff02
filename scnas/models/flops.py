"""FLOPs of one inference pass, and the width whose FLOPs match a target (the paper's stem 68 vs U-ResNet).

Counted by torch.utils.flop_counter.FlopCounterMode: one multiply-add is 2 FLOPs; convolutions and
matrix products are counted (separable convolutions as the two they are written as), normalisation,
activations, pooling and interpolation are not. The
forward runs on the meta device by default (shapes only, no memory or compute), so it is exact and
instant for any patch size.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from scnas.nas.operations import as_written


def count_gflops(model: nn.Module, input_shape: Sequence[int], device: str | torch.device = "meta") -> float:
    """GFLOPs (1e9) of one eval-mode, no-grad forward at batch 1; input_shape is (C, X, Y, Z) or (1, C, X, Y, Z)."""
    shape = tuple(int(n) for n in input_shape)
    if len(shape) == 5 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (C, X, Y, Z) or (1, C, X, Y, Z), got {tuple(input_shape)}")
    tensors = {
        name: torch.empty_like(t, device=device)
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), as_written(), FlopCounterMode(display=False) as counter:
            functional_call(model, tensors, (torch.empty((1, *shape), device=device),))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def match_width(
    build: Callable[[int], nn.Module],
    target_gflops: float,
    input_shape: Sequence[int],
    lo: int = 4,
    hi: int = 256,
    step: int = 1,
) -> tuple[int, float]:
    """The width in lo, lo + step, ..., <= hi whose model's GFLOPs come closest to target_gflops.

    FLOPs grow monotonically with width: bisect for the first width reaching the target, then keep it
    or its predecessor, whichever is closer. Models are built on the meta device (no memory).
    GenotypeNetwork needs step = num_nodes (4) with lo a multiple of it.
    """
    widths = range(lo, hi + 1, step)
    if not widths:
        raise ValueError(f"no width in [{lo}, {hi}] with step {step}")
    cache: dict[int, float] = {}

    def gflops(index: int) -> float:
        if index not in cache:
            with torch.device("meta"):
                model = build(widths[index])
            cache[index] = count_gflops(model, input_shape)
        return cache[index]

    left, right = 0, len(widths) - 1
    while left < right:
        mid = (left + right) // 2
        if gflops(mid) >= target_gflops:
            right = mid
        else:
            left = mid + 1
    best = min((i for i in (left - 1, left) if i >= 0), key=lambda i: abs(gflops(i) - target_gflops))
    return widths[best], gflops(best)
