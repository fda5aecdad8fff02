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
    if mode not in ("linear", "nearest"):
        raise ValueError(f"label interpolation must be 'linear' or 'nearest', got {mode!r}")
    if tuple(label.shape) == new_shape:
        return np.array(label, dtype=np.int16)
    if mode == "nearest":
        return _nearest(label, new_shape).astype(np.int16, copy=False)
    return _linear_argmax(label, new_shape)


def resample_mask(mask: np.ndarray, new_shape: Sequence[int], mode: LabelInterpolation = "linear") -> np.ndarray:
    """Boolean (X, Y, Z) mask -> `new_shape`, with the same rule as a two-label map in `resample_label`."""
    new_shape = tuple(int(n) for n in new_shape)
    if mode not in ("linear", "nearest"):
        raise ValueError(f"label interpolation must be 'linear' or 'nearest', got {mode!r}")
    if tuple(mask.shape) == new_shape:
        return np.array(mask, dtype=bool)
    if mode == "nearest":
        return _nearest(mask, new_shape).astype(bool, copy=False)
    return resample_image(mask[None].astype(np.float32), new_shape)[0] > 0.5


def bounding_box(mask: np.ndarray) -> list[list[int]] | None:
    """[lo, hi) per axis of the True voxels of a 3D mask, None when there are none."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def _linear_argmax(label: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    """Argmax of the trilinearly interpolated one-hot maps, computed only where it can differ from the
    most frequent ("base") label: each other label is interpolated inside the output box its voxels
    reach, and the base label's probability there is 1 minus theirs (interpolation is linear)."""
    values, counts = np.unique(label, return_counts=True)
    base = values[np.argmax(counts)]
    out = np.full(new_shape, base, dtype=np.int16)
    if len(values) == 1:
        return out
    taps = [_axis_taps(n, m) for n, m in zip(label.shape, new_shape)]
    probs: dict[int, tuple[list[list[int]], np.ndarray]] = {}
    for value in values[values != base]:
        box_out, box_in, sub_taps = [], [], []
        for (lo, hi), (i0, i1, w) in zip(bounding_box(label == value), taps):
            reach = np.flatnonzero((i1 >= lo) & (i0 < hi))
            o_lo, o_hi = int(reach[0]), int(reach[-1]) + 1
            a, b = int(i0[o_lo]), int(i1[o_hi - 1]) + 1
            box_out.append([o_lo, o_hi])
            box_in.append(slice(a, b))
            sub_taps.append((i0[o_lo:o_hi] - a, i1[o_lo:o_hi] - a, w[o_lo:o_hi]))
        probs[int(value)] = (box_out, _linear(label[tuple(box_in)] == value, sub_taps))

    union = [
        [min(box[k][0] for box, _ in probs.values()), max(box[k][1] for box, _ in probs.values())] for k in range(3)
    ]
    region = {v: tuple(slice(lo - u, hi - u) for (lo, hi), (u, _) in zip(box, union)) for v, (box, _) in probs.items()}
    base_prob = np.ones([hi - lo for lo, hi in union], dtype=np.float32)
    for v, (_, p) in probs.items():
        base_prob[region[v]] -= p
    best = np.full(base_prob.shape, -1.0, dtype=np.float32)
    arg = np.full(base_prob.shape, base, dtype=np.int16)
    for value in values:
        v = int(value)
        where, p = ((slice(None),) * 3, base_prob) if value == base else (region[v], probs[v][1])
        current = best[where]
        wins = p > current
        arg[where][wins] = v
        current[wins] = p[wins]
    out[tuple(slice(lo, hi) for lo, hi in union)] = arg
    return out


def _axis_taps(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along an axis resampled from n to m voxels: each output's two input neighbours and the second's weight."""
    src = np.maximum((np.arange(m) + 0.5) * (n / m) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    return i0, np.minimum(i0 + 1, n - 1), (src - i0).astype(np.float32)


def _linear(block: np.ndarray, taps: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Separable linear interpolation of a 3D block at the given taps, float32."""
    out = block.astype(np.float32)
    for axis, (i0, i1, w) in enumerate(taps):
        w = w.reshape([-1 if k == axis else 1 for k in range(3)])
        out = np.take(out, i0, axis) * (1 - w) + np.take(out, i1, axis) * w
    return out


def _nearest(array: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    index = [
        np.minimum(((np.arange(m) + 0.5) * (n / m)).astype(np.int64), n - 1) for n, m in zip(array.shape, new_shape)
    ]
    return array[np.ix_(*index)]
