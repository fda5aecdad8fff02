"""Resampling between voxel grids that cover the same physical box (nnU-Net-style, voxel centres aligned).

A grid of `shape` voxels at `spacing` is resampled to `new_shape` voxels at `shape * spacing / new_shape`;
output voxel i samples the input at continuous index (i + 0.5) * shape / new_shape - 0.5
(align_corners=False), with edge values repeated within the outer half voxel. This matches SimpleITK's
ResampleImageFilter with sitkLinear on the equivalent output grid.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

LabelInterpolation = Literal["linear", "nearest"]


def target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    """Voxels per axis of the grid at `target` spacing over the same physical extent (rounded, at least 1)."""
    extent = np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    return tuple(max(1, int(n)) for n in np.round(extent / np.asarray(target, dtype=np.float64)))


def effective_spacing(shape: Sequence[int], spacing: Sequence[float], new_shape: Sequence[int]) -> tuple[float, ...]:
    """Spacing of the `new_shape` grid that keeps the physical extent shape * spacing exactly."""
    return tuple(float(n * s / m) for n, s, m in zip(shape, spacing, new_shape))


def resample_image(image: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """(C, X, Y, Z) float image -> (C, *new_shape) float32 by trilinear interpolation (torch, align_corners=False)."""
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(image.shape[1:]) == new_shape:
        return np.array(image, dtype=np.float32)
    src = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    with torch.no_grad():
        out = torch.nn.functional.interpolate(src, size=new_shape, mode="trilinear", align_corners=False)
    return out[0].numpy()


def resample_label(label: np.ndarray, new_shape: Sequence[int], mode: LabelInterpolation = "linear") -> np.ndarray:
    """(X, Y, Z) integer label map -> int16 `new_shape`, label-safe.

    `linear`: each label's one-hot map is interpolated trilinearly and the most probable label wins
    (ties to the smaller label), as nnU-Net does; `nearest`: the nearest input voxel centre.
    """
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(label.shape) == new_shape:
        return np.array(label, dtype=np.int16)
    if mode == "nearest":
        return _nearest(label, new_shape).astype(np.int16, copy=False)
    if mode != "linear":
        raise ValueError(f"label interpolation must be 'linear' or 'nearest', got {mode!r}")
    values = np.unique(label)
    out = np.full(new_shape, values[0], dtype=np.int16)
    if len(values) == 1:
        return out
    best = None
    for value in values:
        prob = resample_image((label == value)[None].astype(np.float32), new_shape)[0]
        if best is None:
            best = prob
            continue
        wins = prob > best
        out[wins] = value
        np.maximum(best, prob, out=best)
    return out


def resample_mask(mask: np.ndarray, new_shape: Sequence[int], mode: LabelInterpolation = "linear") -> np.ndarray:
    """Boolean (X, Y, Z) mask -> `new_shape`, with the same rule as a two-label map in `resample_label`."""
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(mask.shape) == new_shape:
        return np.array(mask, dtype=bool)
    if mode == "nearest":
        return _nearest(mask, new_shape).astype(bool, copy=False)
    return resample_image(mask[None].astype(np.float32), new_shape)[0] > 0.5


def _nearest(array: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    index = [
        np.minimum(((np.arange(m) + 0.5) * (n / m)).astype(np.int64), n - 1)
        for n, m in zip(array.shape, new_shape)
    ]
    return array[np.ix_(*index)]
