"""3x3x3 max and average pooling and trilinear resizing as three per-axis passes, for the CPU.

The functions are torch's (`max_pool3d(x, 3, stride, 1)`, `avg_pool3d(..., count_include_pad=False)`,
`interpolate(..., mode="trilinear", align_corners=False)`), computed one axis at a time with hand-written
backward passes: on one CPU thread torch's own kernels run at 0.1-0.3 GFLOP/s on the searched network's
small-channel volumes and took a quarter of its training step. Max pooling gives the same values and,
without ties, the same gradient (on ties a different maximal voxel takes it); the others agree to float
rounding. On other devices (CUDA; meta, where FLOPs are counted) torch's kernels are used.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

SPATIAL = (2, 3, 4)


def _window(xp: torch.Tensor, dim: int, offset: int, stride: int, count: int) -> torch.Tensor:
    """Elements offset, offset + stride, ... (count of them) of `xp` along `dim`."""
    return xp.narrow(dim, offset, stride * (count - 1) + 1)[(slice(None),) * dim + (slice(None, None, stride),)]


def _padded(x: torch.Tensor, dim: int, value: float) -> torch.Tensor:
    pad = [0] * (2 * x.dim() - 4)
    pad[2 * (x.dim() - 1 - dim)] = pad[2 * (x.dim() - 1 - dim) + 1] = 1
    return F.pad(x, pad, value=value)


class _AxisMax(torch.autograd.Function):
    """Maximum of each 3-voxel window along one axis (-inf padding), remembering which voxel won
    (the first of equal ones, as torch does)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, stride: int) -> torch.Tensor:
        count = -(-x.shape[dim] // stride)
        xp = _padded(x, dim, float("-inf"))
        a, b, c = (_window(xp, dim, k, stride, count) for k in range(3))
        second = b > a
        out = torch.maximum(a, b)
        third = c > out
        out = torch.maximum(out, c)
        ctx.save_for_backward(second, third)
        ctx.dim, ctx.stride, ctx.shape = dim, stride, x.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        second, third = ctx.saved_tensors
        dim, stride, shape = ctx.dim, ctx.stride, ctx.shape
        to_c = grad * third
        rest = grad - to_c
        to_b = rest * second
        padded = list(shape)
        padded[dim] += 2
        gp = grad.new_zeros(padded)
        for k, part in enumerate((rest - to_b, to_b, to_c)):
            _window(gp, dim, k, stride, grad.shape[dim]).add_(part)
        return gp.narrow(dim, 1, shape[dim]), None, None


class _AxisSum(torch.autograd.Function):
    """Sum of each 3-voxel window along one axis (zero padding)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, stride: int) -> torch.Tensor:
        count = -(-x.shape[dim] // stride)
        xp = _padded(x, dim, 0.0)
        a, b, c = (_window(xp, dim, k, stride, count) for k in range(3))
        ctx.dim, ctx.stride, ctx.shape = dim, stride, x.shape
        return a + b + c

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dim, stride, shape = ctx.dim, ctx.stride, ctx.shape
        padded = list(shape)
        padded[dim] += 2
        gp = grad.new_zeros(padded)
        for k in range(3):
            _window(gp, dim, k, stride, grad.shape[dim]).add_(grad)
        return gp.narrow(dim, 1, shape[dim]), None, None


def _window_counts(n: int, stride: int, like: torch.Tensor) -> torch.Tensor:
    """How many of the 3 voxels of each window along an axis of n voxels lie inside it."""
    centres = torch.arange(0, n, stride, device=like.device)
    return (centres > 0).to(like.dtype) + 1 + (centres < n - 1).to(like.dtype)


def max_pool3(x: torch.Tensor, stride: int) -> torch.Tensor:
    """`F.max_pool3d(x, 3, stride, padding=1)` for a (B, C, D, H, W) tensor."""
    if x.device.type != "cpu":
        return F.max_pool3d(x, 3, stride, padding=1)
    for dim in reversed(SPATIAL):
        x = _AxisMax.apply(x, dim, stride)
    return x


def avg_pool3(x: torch.Tensor, stride: int) -> torch.Tensor:
    """`F.avg_pool3d(x, 3, stride, padding=1, count_include_pad=False)`, also for sides under 3 voxels."""
    if x.device.type != "cpu" and min(x.shape[2:]) >= 3:
        return F.avg_pool3d(x, 3, stride, padding=1, count_include_pad=False)
    counts = [_window_counts(n, stride, x) for n in x.shape[2:]]
    for dim in reversed(SPATIAL):
        x = _AxisSum.apply(x, dim, stride)
    d, h, w = counts
    return x / (d[:, None, None] * h[None, :, None] * w[None, None, :])


class _AxisDouble(torch.autograd.Function):
    """Linear resizing to twice the size along one axis: output voxel 2i reads 0.25 x[i - 1] + 0.75 x[i],
    2i + 1 reads 0.75 x[i] + 0.25 x[i + 1], edges clamped (torch's weights at scale 1/2)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        ctx.dim = dim
        even, odd = x * 0.75, x * 0.75
        even.narrow(dim, 1, n - 1).add_(x.narrow(dim, 0, n - 1), alpha=0.25)
        even.narrow(dim, 0, 1).add_(x.narrow(dim, 0, 1), alpha=0.25)
        odd.narrow(dim, 0, n - 1).add_(x.narrow(dim, 1, n - 1), alpha=0.25)
        odd.narrow(dim, n - 1, 1).add_(x.narrow(dim, n - 1, 1), alpha=0.25)
        shape = list(x.shape)
        shape[dim] = 2 * n
        return torch.stack((even, odd), dim + 1).view(shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dim = ctx.dim
        n = grad.shape[dim] // 2
        split = grad.reshape(*grad.shape[:dim], n, 2, *grad.shape[dim + 1 :])
        even, odd = split.select(dim + 1, 0), split.select(dim + 1, 1)
        out = (even + odd).mul_(0.75)
        out.narrow(dim, 0, n - 1).add_(even.narrow(dim, 1, n - 1), alpha=0.25)
        out.narrow(dim, 0, 1).add_(even.narrow(dim, 0, 1), alpha=0.25)
        out.narrow(dim, 1, n - 1).add_(odd.narrow(dim, 0, n - 1), alpha=0.25)
        out.narrow(dim, n - 1, 1).add_(odd.narrow(dim, n - 1, 1), alpha=0.25)
        return out, None


def resize_trilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """`F.interpolate(x, size, mode="trilinear", align_corners=False)` for a (B, C, D, H, W) tensor; the
    per-axis passes where every axis keeps its size or doubles, torch's kernel otherwise."""
    size = tuple(int(n) for n in size)
    same_or_double = all(n_out in (n, 2 * n) for n, n_out in zip(x.shape[2:], size))
    if x.device.type != "cpu" or not same_or_double:
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    for dim in reversed(SPATIAL):  # the innermost axis, the slowest to interleave, on the smallest tensor
        if x.shape[dim] != size[dim - 2]:
            x = _AxisDouble.apply(x, dim)
    return x
