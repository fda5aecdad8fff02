"""3D convolutions with a spatial kernel, computed in the channels-last layout on the CPU.

On one CPU thread oneDNN runs a dense 3x3x3 convolution over few channels (3-16: the full-resolution
levels of the cell networks and of the U-ResNet), its backward pass above all, 2-4x faster on
channels-last tensors than on contiguous ones; converting the input there and the output back costs a
copy each, and a training step of the study's networks takes 0.63-0.75x the time
(`benchmarks/conv_layout.py`). The same function, to float rounding; the tensors around stay contiguous.
1x1x1 and grouped (depthwise) convolutions, which the layout slows down, and other devices are left to
torch as they are.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

_CONTIGUOUS = False


def _channels_last(x: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    return x.device.type == "cpu" and groups == 1 and x.dim() == 5 and any(k > 1 for k in weight.shape[2:])


def conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple = 1,
    padding: int | str | tuple = 0,
    dilation: int | tuple = 1,
    groups: int = 1,
) -> torch.Tensor:
    """F.conv3d, in the channels-last layout where that is faster (a contiguous result either way)."""
    if _CONTIGUOUS or not _channels_last(x, weight, groups):
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    return F.conv3d(x, weight, bias, stride, padding, dilation, groups).contiguous()


class Conv3d(nn.Conv3d):
    """nn.Conv3d (same parameters and state dict) computed by `conv3d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super().forward(x)
        return conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


@contextlib.contextmanager
def contiguous_convs() -> Iterator[None]:
    """Inside, every convolution runs on contiguous tensors, as torch's own (to compare against)."""
    global _CONTIGUOUS
    before, _CONTIGUOUS = _CONTIGUOUS, True
    try:
        yield
    finally:
        _CONTIGUOUS = before
