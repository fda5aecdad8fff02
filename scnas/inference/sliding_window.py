"""Sliding-window patch inference over a whole volume, as nnU-Net does it.

Windows lie on a regular grid (nnU-Net's step computation: step = patch * (1 - overlap), first and last
window flush with the borders); each window's scores (logits or probabilities: whatever the predictor
returns) are weighted by a Gaussian importance map (or uniformly) and accumulated in float32 buffers on
the image's device; the result is the weighted average. The predictor runs under torch.no_grad() here.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

GAUSSIAN_SIGMA_SCALE = 1.0 / 8
GAUSSIAN_MIN_WEIGHT = 1e-6


def window_starts(shape: Sequence[int], patch_size: Sequence[int], overlap: float = 0.5) -> list[list[int]]:
    """Start index of the windows along each axis (nnU-Net's compute_steps_for_sliding_window).

    Requires shape >= patch_size in every axis. The windows are evenly spread so that the first starts
    at 0 and the last ends at the border, with a step no larger than patch * (1 - overlap).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    starts = []
    for size, patch in zip(shape, patch_size):
        if size < patch:
            raise ValueError(f"volume size {tuple(shape)} is smaller than the patch {tuple(patch_size)}")
        target_step = patch * (1 - overlap)
        num = int(math.ceil((size - patch) / target_step)) + 1
        step = (size - patch) / (num - 1) if num > 1 else 0.0
        starts.append([int(round(step * i)) for i in range(num)])
    return starts


def gaussian_weights(patch_size: Sequence[int], sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> np.ndarray:
    """Separable Gaussian importance map (sigma = patch * sigma_scale) centred on the patch, peak 1.

    The centre is the geometric centre ((n - 1) / 2), so the map is mirror-symmetric; values are clamped
    below at GAUSSIAN_MIN_WEIGHT so that no voxel gets a zero weight.
    """
    weights = np.ones((), dtype=np.float64)
    for n in patch_size:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        sigma = n * sigma_scale
        weights = np.multiply.outer(weights, np.exp(-0.5 * (x / sigma) ** 2))
    weights /= weights.max()
    return np.maximum(weights, GAUSSIAN_MIN_WEIGHT)


def sliding_window(
    image: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    patch_size: Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    batch_size: int = 2,
    mirror_axes: Sequence[int] = (),
    num_classes: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Scores (K, *spatial) for an image (C, *spatial), or (B, K, *spatial) for (B, C, *spatial).

    `predictor` maps a batch of windows (n, C, *patch_size) to scores (n, K, *patch_size). Volumes smaller
    than the patch are zero-padded symmetrically and cropped back. With `mirror_axes` (spatial axes,
    0 = X), each window's scores are the mean over all 2^n flip combinations of those axes.
    """
    patch_size = tuple(int(p) for p in patch_size)
    ndim = len(patch_size)
    if image.ndim not in (ndim + 1, ndim + 2):
        raise ValueError(f"image of shape {tuple(image.shape)} does not match a {ndim}D patch {patch_size}")
    if mode not in ("gaussian", "constant"):
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(not 0 <= a < ndim for a in mirror_axes) or len(set(mirror_axes)) != len(mirror_axes):
        raise ValueError(f"mirror_axes {tuple(mirror_axes)} must be distinct spatial axes in 0..{ndim - 1}")
    batched = image.ndim == ndim + 2
    volume = image if batched else image[None]
    spatial = tuple(volume.shape[2:])
    volume, crop = _pad_to_patch(volume, patch_size)
    padded = tuple(volume.shape[2:])
    device = volume.device

    if mode == "gaussian":
        weight = torch.from_numpy(gaussian_weights(patch_size)).to(device=device, dtype=torch.float32)
    else:
        weight = torch.ones(patch_size, device=device, dtype=torch.float32)
    grid = list(itertools.product(*window_starts(padded, patch_size, overlap)))
    windows = [tuple(slice(s, s + p) for s, p in zip(starts, patch_size)) for starts in grid]
    weight_sum = torch.zeros(padded, device=device, dtype=torch.float32)
    for window in windows:
        weight_sum[window] += weight

    flips = [
        tuple(2 + a for a in combo)
        for r in range(len(mirror_axes) + 1)
        for combo in itertools.combinations(mirror_axes, r)
    ]
    tiles = [(b, window) for b in range(volume.shape[0]) for window in windows]
    batches = range(0, len(tiles), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="sliding window", unit="batch")

    scores = None
    with torch.no_grad():
        for first in batches:
            chunk = tiles[first : first + batch_size]
            inputs = torch.stack([volume[b][(slice(None), *window)] for b, window in chunk])
            prediction = _predict_mirrored(predictor, inputs, flips, patch_size)
            if scores is None:
                k = num_classes if num_classes is not None else prediction.shape[1]
                scores = torch.zeros((volume.shape[0], k, *padded), device=device, dtype=torch.float32)
            if prediction.shape[1] != scores.shape[1]:
                raise ValueError(f"predictor returned {prediction.shape[1]} channels, expected {scores.shape[1]}")
            for (b, window), window_scores in zip(chunk, prediction):
                scores[b][(slice(None), *window)].addcmul_(window_scores, weight)
        scores /= weight_sum
    scores = scores[(slice(None), slice(None), *crop)]
    if padded != spatial:
        scores = scores.contiguous()
    return scores if batched else scores[0]


def _predict_mirrored(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    flips: list[tuple[int, ...]],
    patch_size: tuple[int, ...],
) -> torch.Tensor:
    total = None
    for dims in flips:
        out = predictor(torch.flip(inputs, dims) if dims else inputs)
        if out.ndim != inputs.ndim or out.shape[0] != inputs.shape[0] or tuple(out.shape[2:]) != patch_size:
            raise ValueError(
                f"predictor returned shape {tuple(out.shape)} for input {tuple(inputs.shape)}; "
                f"expected (n, K, *{patch_size})"
            )
        out = out.to(device=inputs.device, dtype=torch.float32)
        if dims:
            out = torch.flip(out, dims)
        total = out if total is None else total.add_(out)
    if len(flips) > 1:
        total /= len(flips)
    return total


def _pad_to_patch(volume: torch.Tensor, patch_size: tuple[int, ...]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad (B, C, *spatial) symmetrically up to the patch size; return it and the crop that undoes it."""
    before = [max(p - s, 0) // 2 for s, p in zip(volume.shape[2:], patch_size)]
    after = [max(p - s, 0) - b for s, p, b in zip(volume.shape[2:], patch_size, before)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, volume.shape[2:]))
    if not any(before) and not any(after):
        return volume, crop
    pad = [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)]
    return F.pad(volume, pad), crop
