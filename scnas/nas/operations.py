"""The eight candidate operations of an SCNAS edge (paper section 3), as factories (C_in, C_out, stride).

Convolutions are LeakyReLU-Conv-InstanceNorm. Stride 2 (reduction cells) gives ceil(n / 2) voxels
along every axis, odd n included; identity then becomes a factorised reduction.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from scnas.nas.conv import Conv3d, conv3d
from scnas.nas.separable import avg_pool3, max_pool3

NEGATIVE_SLOPE = 0.01
FUSED_MAX_CHANNELS = 16

OPERATIONS: tuple[str, ...] = (
    "conv3",
    "sep_dil_conv3_r2",
    "sep_dil_conv3_r3",
    "sep_dil_conv3_r4",
    "max_pool3",
    "avg_pool3",
    "identity",
    "zero",
)


class ConvBlock(nn.Sequential):
    """LeakyReLU -> Conv3d (no bias) -> InstanceNorm3d(affine)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(
            nn.LeakyReLU(NEGATIVE_SLOPE),
            Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.InstanceNorm3d(c_out, affine=True),
        )


class SepDilConv(nn.Sequential):
    """LeakyReLU -> depthwise dilated 3x3x3 conv -> pointwise 1x1x1 conv -> InstanceNorm3d(affine).

    On the CPU, up to FUSED_MAX_CHANNELS channels, the two convolutions run as the one dense dilated
    convolution they compose to (weight pointwise x depthwise): the same function, and about 1.3-1.6x
    faster there, where a depthwise 3D convolution runs at a few GFLOP/s.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, dilation: int) -> None:
        super().__init__(
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv3d(c_in, c_in, 3, stride=stride, padding=dilation, dilation=dilation, groups=c_in, bias=False),
            nn.Conv3d(c_in, c_out, 1, bias=False),
            nn.InstanceNorm3d(c_out, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act, depthwise, pointwise, norm = self
        x = act(x)
        if x.device.type != "cpu" or depthwise.in_channels > FUSED_MAX_CHANNELS or _AS_WRITTEN:
            return norm(pointwise(depthwise(x)))
        weight = pointwise.weight * depthwise.weight.transpose(0, 1)
        conv = depthwise
        return norm(conv3d(x, weight, stride=conv.stride, padding=conv.padding, dilation=conv.dilation))


_AS_WRITTEN = False


@contextlib.contextmanager
def as_written() -> Iterator[None]:
    """Inside, separable convolutions run as the two convolutions they are (for counting FLOPs)."""
    global _AS_WRITTEN
    before, _AS_WRITTEN = _AS_WRITTEN, True
    try:
        yield
    finally:
        _AS_WRITTEN = before


class FactorizedReduce(nn.Module):
    """Halve the resolution without discarding voxels: two strided 1x1x1 convs, one shifted by a voxel.

    The shifted path pads one voxel at the far end so that both paths give ceil(n / 2) for odd n.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out < 2:
            raise ValueError(f"FactorizedReduce needs at least 2 output channels, got {c_out}")
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE)
        self.conv_a = nn.Conv3d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv3d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.norm = nn.InstanceNorm3d(c_out, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        shifted = F.pad(x, (0, 1, 0, 1, 0, 1))[:, :, 1:, 1:, 1:]
        return self.norm(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


class Zero(nn.Module):
    """The cut edge: zeros of the output shape (C_out channels, ceil(n / stride) voxels)."""

    def __init__(self, c_out: int, stride: int) -> None:
        super().__init__()
        self.c_out = c_out
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = [-(-n // self.stride) for n in x.shape[2:]]
        return x.new_zeros((x.shape[0], self.c_out, *spatial))


class MaxPool(nn.Module):
    """3x3x3 max pooling, padding 1 (scnas.nas.separable.max_pool3)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool3(x, self.stride)


class AvgPool(nn.Module):
    """3x3x3 average pooling over the voxels inside the image (padding not counted), also for sides
    shorter than the kernel (deep levels of small patches), which torch's avg_pool3d refuses."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool3(x, self.stride)


def _pool(pool: nn.Module, c_in: int, c_out: int) -> nn.Module:
    return pool if c_in == c_out else nn.Sequential(pool, ConvBlock(c_in, c_out, 1))


def _identity(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 2:
        return FactorizedReduce(c_in, c_out)
    return nn.Identity() if c_in == c_out else ConvBlock(c_in, c_out, 1)


OPS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "conv3": lambda c_in, c_out, stride: ConvBlock(c_in, c_out, 3, stride, padding=1),
    "sep_dil_conv3_r2": lambda c_in, c_out, stride: SepDilConv(c_in, c_out, stride, 2),
    "sep_dil_conv3_r3": lambda c_in, c_out, stride: SepDilConv(c_in, c_out, stride, 3),
    "sep_dil_conv3_r4": lambda c_in, c_out, stride: SepDilConv(c_in, c_out, stride, 4),
    "max_pool3": lambda c_in, c_out, stride: _pool(MaxPool(stride), c_in, c_out),
    "avg_pool3": lambda c_in, c_out, stride: _pool(AvgPool(stride), c_in, c_out),
    "identity": _identity,
    "zero": lambda c_in, c_out, stride: Zero(c_out, stride),
}
