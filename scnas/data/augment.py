"""nnU-Net v2's training augmentations as batched tensor operations on the training device.

Transforms, order, probabilities and parameter draws follow nnU-Net v2's get_training_transforms
(batchgeneratorsv2): spatial (rotation about all three axes, isotropic scaling), Gaussian noise,
Gaussian blur, multiplicative brightness, contrast, simulated low resolution, inverted gamma, gamma,
mirroring, then negative labels (nnU-Net's padding) turned to background. Each transform is decided per
sample with its probability, its parameters drawn per channel where nnU-Net draws them so.

The batch holds regions of `spatial_read_size(patch, cfg)` voxels, read around the patches: the
spatial transform samples the patch from the region, a sample without one gets the region's centre
crop, as batchgenerators' SpatialTransform does. Labels are resampled as batchgenerators does:
bilinear one-hot scores, argmax, ties to the nearest neighbour; nnU-Net's padding label (-1) is a
label like the others until the end.

Where this differs from nnU-Net v2, and why:
- The region is large enough for every rotation and scaling the config allows. nnU-Net's initial
  patch size (get_patch_size) bounds each axis's rotation separately and divides by the scaling range
  (0.85, 1.25) instead of using the configured (0.7, 1.4), so a rotated and scaled patch can reach
  outside it and get zero-filled borders. The region also has the patch's parity on every axis, so
  the centre crop and the transformed grid share their centre.
- Elastic deformation (off, as in v2) keeps batchgenerators v1's parametrisation (alpha, sigma), which
  nnU-Net v1 used; its field is clipped at 6 standard deviations so that it stays inside the region.
- A factor range lying entirely below 1 is sampled uniformly (batchgenerators' BGContrast then still
  draws from [low, 1] half of the time); ranges containing 1 (all defaults) are drawn as it draws them.
- No pseudo-2D augmentation for anisotropic patches: the pipeline plans patches on isotropic grids.
All randomness comes from one torch.Generator, in a fixed order, so a run is reproducible and resumable
from the generator's state; samples a transform skips keep their values bit for bit, and a transform
whose probability is 0 is not computed.

Each transform is computed only for the samples (or channels) that drew it, in place on runs of
consecutive samples, and every draw is made whether or not it is used, so the results do not depend on
how the work is split (benchmarks/NOTES.md, "Augmentation", records what each choice costs and saves).
"""

from __future__ import annotations

import itertools
import math
import threading
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from scnas.config import AugmentationConfig

PAD_LABEL = -1  # nnU-Net's loader pads labels outside the scan with -1; they become background at the end
BLUR_P_PER_CHANNEL = 0.5  # nnU-Net blurs each channel of a chosen sample with probability 1/2
LOW_RESOLUTION_P_PER_CHANNEL = 0.5  # and simulates low resolution on each with probability 1/2
GAMMA_EPS = 1e-7
SCORE_SCALE = 1000.0  # batchgenerators' label scores: float16 at this scale makes near ties exact ties
ELASTIC_CLIP_STD = 6.0
EXTENT_TOL = 0.05  # voxels by which the read size's rotation bound may exceed the true maximum
TRUNCATE = 4.0  # the elastic field's Gaussian reaches int(4 sigma + 0.5) voxels, as scipy's gaussian_filter
BG_TRUNCATE = 6.0  # batchgenerators' blur kernels have the odd length nearest 6 sigma + 0.5
CHANNELS_PER_PASS = 5  # region volumes per sample sampled by one grid_sample call: its buffer's size
MAX_LABEL_SPAN = 64  # label values tried one by one up to this span between the smallest and the largest
SCRATCH_LIMIT = 1 << 27  # float32 elements (512 MB) per scratch slot kept between calls on CPU

_SCRATCH = threading.local()


def augment_batch(
    image: Tensor,
    label: Tensor,
    cfg: AugmentationConfig,
    generator: torch.Generator,
    patch_size: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Augment a batch of regions, image (B, C, *region) float and label (B, *region) int, into patches
    (B, C, *patch_size) and (B, *patch_size); the patch size defaults to the region's."""
    if image.ndim != 5 or not image.is_floating_point():
        raise ValueError(
            f"augment_batch: image must be a float (B, C, X, Y, Z) tensor, got {image.dtype} {tuple(image.shape)}"
        )
    if label.shape != image.shape[:1] + image.shape[2:] or label.is_floating_point():
        raise ValueError(
            "augment_batch: label must be an integer (B, X, Y, Z) tensor matching the image, "
            f"got {label.dtype} {tuple(label.shape)}"
        )
    region = tuple(image.shape[2:])
    patch = region if patch_size is None else tuple(int(p) for p in patch_size)
    if len(patch) != 3 or any(not 0 < p <= r for p, r in zip(patch, region)):
        raise ValueError(f"augment_batch: patch size {patch} does not fit in the {region} regions")
    draw = _Draws(generator, image.device)
    work = image.to(torch.promote_types(image.dtype, torch.float32))
    batch = _spatial(work, label, cfg, draw, patch, owned=work is not image)
    _noise(batch, cfg, draw)
    _blur(batch, cfg, draw)
    _brightness(batch, cfg, draw)
    _contrast(batch, cfg, draw)
    _low_resolution(batch, cfg, draw)
    _gamma(batch, cfg.gamma, cfg.p_gamma_invert, True, draw)
    _gamma(batch, cfg.gamma, cfg.p_gamma, False, draw)
    _mirror(batch, cfg.p_mirror, draw)
    return batch.image.to(image.dtype), batch.label_with_padding_as_background()


def spatial_read_size(patch_size: Sequence[int], cfg: AugmentationConfig) -> tuple[int, int, int]:
    """The region to read around a patch: every rotation cfg can draw (at scale 1) and every scaling (without
    rotation), each with the (clipped) elastic field, keeps the transformed patch inside it; the patch size
    when no spatial transform is on.

    Rotation and scaling drawn together at their extremes can reach a sliver beyond it, which is padded as
    nnU-Net pads. Covering those too would read about 14x the patch volume at 128^3 (302^3); this region is
    216x220x216 there (4.9x), against nnU-Net's own 205^3 (4.2x; get_patch_size with scales (0.85, 1.25)),
    which leaves the corners of a patch rotated by 30 degrees about all three axes outside.
    """
    return _read_size(tuple(int(p) for p in patch_size), cfg)


@lru_cache(maxsize=64)
def _read_size(patch: tuple[int, ...], cfg: AugmentationConfig) -> tuple[int, ...]:
    if cfg.p_rotation == 0 and cfg.p_scaling == 0 and cfg.p_elastic == 0:
        return patch
    margin = elastic_bound(cfg) if cfg.p_elastic > 0 else 0.0
    half = tuple((p - 1) / 2 + margin for p in patch)
    theta = min(math.radians(cfg.rotation_deg), math.pi) if cfg.p_rotation > 0 else 0.0
    scale = max(1.0, cfg.scaling[1]) if cfg.p_scaling > 0 else 1.0
    extent = np.maximum(scale * np.asarray(half), max_rotated_extent(half, theta))
    return tuple(p + 2 * max(0, math.ceil((2 * e + 1 - p) / 2 - 1e-9)) for p, e in zip(patch, extent))


_GENERATORS = np.array(
    [[[0, 0, 0], [0, 0, -1], [0, 1, 0]], [[0, 0, 1], [0, 0, 0], [-1, 0, 0]], [[0, -1, 0], [1, 0, 0], [0, 0, 0]]],
    dtype=np.float64,
)
_CHILDREN = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))


def max_rotated_extent(half: Sequence[float], theta: float) -> np.ndarray:
    """Per axis, max |(Rz Ry Rx c)_i| over the box |c_j| <= half_j and angles in [-theta, theta]^3, to within
    EXTENT_TOL above: branch and bound over the angles with a second-order Taylor bound per cell, stopped
    early where it reaches the box's half-diagonal, which no rotation exceeds."""
    half = np.asarray(half, dtype=np.float64)
    if theta == 0:
        return half
    corners = np.array(list(itertools.product(*[(-h, h) for h in half])))
    radius = float(np.linalg.norm(half))
    curvature = 4.5 * radius  # |second derivatives| <= |c|, times (3 half-widths)^2 / 2
    extent = []
    for axis in range(3):
        width = theta / 4
        ticks = (np.arange(4) * 2 - 3) * width
        cells = np.array(list(itertools.product(ticks, ticks, ticks)))
        lower = -np.inf
        while True:
            value, upper = _extent_bounds(cells, corners, axis, width, curvature)
            lower = max(lower, value.max())
            keep = upper > lower + EXTENT_TOL
            if not keep.any() or lower + EXTENT_TOL >= radius:
                extent.append(min(lower + EXTENT_TOL, radius))
                break
            width /= 2
            cells = (cells[keep][:, None] + width * _CHILDREN[None]).reshape(-1, 3)
    return np.array(extent)


def _extent_bounds(
    cells: np.ndarray, corners: np.ndarray, axis: int, width: float, curvature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Over the corners: the extent at each cell's centre and an upper bound of it over the cell."""
    rx, ry, rz = (_axis_rotations(cells[:, k], k) for k in range(3))
    v1 = np.einsum("nij,cj->nci", rx, corners)
    v2 = np.einsum("nij,ncj->nci", ry, v1)
    v3 = np.einsum("nij,ncj->nci", rz, v2)
    slopes = (
        np.einsum("nj,ncj->nc", (rz @ ry @ _GENERATORS[0])[:, axis], v1),
        np.einsum("nj,ncj->nc", (rz @ _GENERATORS[1])[:, axis], v2),
        np.einsum("j,ncj->nc", _GENERATORS[2][axis], v3),
    )
    value = v3[..., axis]
    upper = value + width * sum(np.abs(s) for s in slopes) + curvature * width**2
    return value.max(1), upper.max(1)


def _axis_rotations(angles: np.ndarray, axis: int) -> np.ndarray:
    rotations = np.repeat(np.eye(3)[None], len(angles), axis=0)
    i, j = [k for k in range(3) if k != axis]
    cos, sin = np.cos(angles), np.sin(angles)
    sign = -1.0 if axis == 1 else 1.0  # Ry = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    rotations[:, i, i], rotations[:, j, j] = cos, cos
    rotations[:, i, j], rotations[:, j, i] = -sign * sin, sign * sin
    return rotations


def rotation_matrices(angles: Tensor) -> Tensor:
    """Rz @ Ry @ Rx for angles (N, 3) in radians about the x, y, z axes (batchgenerators' order)."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def matrix(rows: list[list[Tensor]]) -> Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = matrix([[one, zero, zero], [zero, cos[:, 0], -sin[:, 0]], [zero, sin[:, 0], cos[:, 0]]])
    ry = matrix([[cos[:, 1], zero, sin[:, 1]], [zero, one, zero], [-sin[:, 1], zero, cos[:, 1]]])
    rz = matrix([[cos[:, 2], -sin[:, 2], zero], [sin[:, 2], cos[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def centre_crop(volume: Tensor, patch_size: Sequence[int]) -> Tensor:
    """The patch at the centre of the last three axes, starting at size // 2 - patch // 2 (batchgenerators)."""
    shape = volume.shape[-3:]
    index = tuple(slice(n // 2 - p // 2, n // 2 - p // 2 + p) for n, p in zip(shape, patch_size))
    return volume[(..., *index)]


def warp(
    image: Tensor, label: Tensor, matrix: Tensor, patch_size: Sequence[int], displacement: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Sample patches (N, C, *patch_size) from regions image (N, C, *region), label (N, *region) at
    source = matrix @ (c + displacement(c)), c the voxel offset from the patch centre, which sits at the
    region's centre (batchgenerators' SpatialTransform). matrix (N, 3, 3) and displacement (N, 3, *patch)
    act in voxels; the image is interpolated trilinearly, the label as batchgenerators does; outside the
    region the image is 0 and the label 0."""
    return _warp_rows(image, label, None, matrix, tuple(int(p) for p in patch_size), displacement)


def _sampling_grid(
    matrix: Tensor, patch: tuple[int, ...], region: tuple[int, ...], displacement: Tensor | None
) -> Tensor:
    """grid_sample's grid (N, *patch, 3): source = matrix @ offset in voxels, normalised by half the region, its
    components reversed (grid_sample reads z, y, x). Summed per axis as (o0 m0 + o1 m1) + o2 m2, the order
    of a batched matrix product, one component at a time with the per-axis offsets broadcast."""
    n, device = matrix.shape[0], matrix.device
    m = matrix.float()
    offsets = []
    for axis, p in enumerate(patch):
        shape = [1, 1, 1, 1]
        shape[1 + axis] = p
        offset = torch.linspace((1 - p) / 2, (p - 1) / 2, p, device=device).view(shape)
        offsets.append(offset if displacement is None else offset + displacement[:, axis].float())
    components = []
    for k in range(3):
        row = m[:, 2 - k].view(n, 3, 1, 1, 1)
        component = (offsets[0] * row[:, 0] + offsets[1] * row[:, 1]) + offsets[2] * row[:, 2]
        components.append(component.expand(n, *patch).div(region[2 - k] / 2))
    return torch.stack(components, dim=-1)


def _warp_rows(
    image: Tensor,
    label: Tensor,
    rows: Tensor | None,
    matrix: Tensor,
    patch: tuple[int, ...],
    displacement: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """warp() of the samples `rows` (all when None) of image (B, C, *region) and label (B, *region), the
    regions read from the batch itself rather than first copied out of it.

    Labels are resampled as batchgenerators does: per label, the bilinear score of its indicator
    (x SCORE_SCALE, as float16), the first label with the top score, replaced by the nearest neighbour's label
    where that ties for the top; where a sample's grid reaches outside the region, the outside counts as
    label 0. Computed so that the values stay the same, faster:
    - the labels, as float32 once, give every indicator with one vectorised comparison; a label value
      between the smallest and the largest whose indicator is empty in every sample is skipped (its score
      would be 0 everywhere, below the top), which replaces torch.unique, a sort, 20x slower on CPU;
    - indicators share grid_sample calls, up to CHANNELS_PER_PASS volumes each, the first with a
      single-channel float32 image (per channel the same values as separate calls, in about half the time
      per label; with more image channels a shared call is no faster than two);
    - label 0's indicator is shifted by -SCORE_SCALE, and its score back, only in the samples whose grid
      reaches outside;
    - the vote runs on float32 copies of the float16 scores with 0/1 masks and lerp (torch.where is not
      vectorised on CPU), and the nearest neighbour is sampled only where the top score is tied, the only
      voxels where it can differ from the first label with the top score.
    """
    picked = list(range(image.shape[0])) if rows is None else rows.tolist()
    n, c, region = len(picked), image.shape[1], tuple(image.shape[2:])
    grid = _sampling_grid(matrix, patch, region, displacement)
    flat = grid.view(n, -1)
    size = torch.tensor(region[::-1], dtype=torch.float32, device=image.device)
    bound = (1 - 1 / size).min()
    shift = (((-flat.amin(1) > bound) | (flat.amax(1) > bound)).float() * SCORE_SCALE).view(n, 1, 1, 1)
    reaches = bool(shift.any())
    values = _scratch("labels", (n, *region), image.device)
    for i, r in enumerate(picked):
        values[i].copy_(label[r])
    candidates = _label_candidates(values)
    joint = image.dtype == torch.float32 and c == 1
    lead = c if joint else 0
    buffer = _scratch("sampling", (n, min(CHANNELS_PER_PASS, lead + len(candidates)), *region), image.device)
    if joint:
        for i, r in enumerate(picked):
            buffer[i, :c].copy_(image[r])
    else:
        sources = (
            [(image, grid)] if rows is None else [(image[r : r + 1], grid[i : i + 1]) for i, r in enumerate(picked)]
        )
        parts = [
            F.grid_sample(x, g.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
            for x, g in sources
        ]
        warped = parts[0] if len(parts) == 1 else torch.cat(parts)
    classes, scores, remaining = [], [], iter(candidates)
    while True:
        chunk = []
        for u in remaining:
            torch.eq(values, u, out=buffer[:, lead + len(chunk)])
            if u == 0 or bool(buffer[:, lead + len(chunk)].amax() > 0):
                chunk.append(u)
                if lead + len(chunk) == buffer.shape[1]:
                    break
        if not chunk:
            break
        buffer[:, lead : lead + len(chunk)].mul_(SCORE_SCALE)
        if reaches and 0 in chunk:
            buffer[:, lead + chunk.index(0)].sub_(shift)
        sampled = F.grid_sample(
            buffer[:, : lead + len(chunk)], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        if lead:
            warped = sampled[:, :lead]
        if reaches and 0 in chunk:
            sampled[:, lead + chunk.index(0)].add_(shift)
        scores.extend(sampled[:, lead:].half().float().unbind(1))
        classes.extend(chunk)
        lead = 0
    return warped, _vote(scores, classes, values, grid).to(label.dtype)


def _label_candidates(values: Tensor) -> list[int]:
    """Every label value between the smallest and the largest of `values` (the labels as float32), and 0 (what
    lies outside the region), ascending; the present ones where the span exceeds MAX_LABEL_SPAN."""
    low, high = (int(v) for v in values.aminmax())
    if not (-(1 << 24) < low and high < 1 << 24):
        raise ValueError(f"augment_batch: label values {low}..{high} are not class indices (|label| < 2^24)")
    if high - low > MAX_LABEL_SPAN:
        return sorted(set(torch.unique(values).long().tolist()) | {0})
    return sorted(set(range(low, high + 1)) | {0})


def _vote(scores: list[Tensor], classes: list[int], values: Tensor, grid: Tensor) -> Tensor:
    """The label (as float) of each voxel from its labels' scores: the first with the top score, or the
    nearest neighbour's label where that ties for the top (sampled from `values` at the tied voxels only)."""
    best = scores[0].clone()
    for score in scores[1:]:
        torch.maximum(best, score, out=best)
    first = torch.full_like(best, classes[-1])
    count = torch.zeros_like(best)
    mask = torch.empty_like(best)
    for u, score in zip(reversed(classes), reversed(scores)):
        torch.eq(score, best, out=mask)
        first.lerp_(torch.full_like(mask[(0,) * mask.ndim], u), mask)
        count.add_(mask)
    tied = count > 1
    if not bool(tied.any()):
        return first
    n = best.shape[0]
    where = tied.view(n, -1).nonzero()
    sample, voxel = where[:, 0], where[:, 1]
    per_sample = torch.bincount(sample, minlength=n)
    slot = torch.arange(len(sample), device=sample.device) - (per_sample.cumsum(0) - per_sample)[sample]
    points = grid.new_zeros((n, int(per_sample.max()), 3))
    points[sample, slot] = grid.view(n, -1, 3)[sample, voxel]
    nearest = F.grid_sample(
        values.unsqueeze(1), points.view(n, 1, 1, -1, 3), mode="nearest", padding_mode="zeros", align_corners=False
    ).view(n, -1)[sample, slot]
    nn_score = torch.zeros_like(nearest)
    for u, score in zip(classes, scores):
        nn_score.add_((nearest == u) * score.view(n, -1)[sample, voxel])
    at = tied.nonzero(as_tuple=True)
    first[at] = torch.where(nn_score == best[at], nearest, first[at])
    return first


def _scratch(slot: str, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """An uninitialised float32 tensor of `shape` for temporary use. On CPU it is carved from a per-thread block
    per slot kept between calls (up to SCRATCH_LIMIT elements): glibc hands blocks over 32 MB back to the
    system when they are freed, so a fresh one is page-faulted in again every training step, which at 128^3
    costs as much as the work done on it. CUDA's allocator caches already."""
    numel = math.prod(shape)
    if device.type != "cpu" or numel > SCRATCH_LIMIT:
        return torch.empty(shape, device=device)
    if not hasattr(_SCRATCH, "blocks"):
        _SCRATCH.blocks = {}
    blocks = _SCRATCH.blocks
    if slot not in blocks or blocks[slot].numel() < numel:
        blocks[slot] = torch.empty(numel)
    return blocks[slot][:numel].view(shape)


def elastic_bound(cfg: AugmentationConfig) -> float:
    """Where the elastic field is clipped: ELASTIC_CLIP_STD standard deviations of the strongest field cfg
    can draw (alpha at its top, sigma at its bottom), from the field's kernel."""
    sigma = max(cfg.elastic_sigma[0], 1e-6)
    taps = np.arange(-int(TRUNCATE * sigma + 0.5), int(TRUNCATE * sigma + 0.5) + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    return ELASTIC_CLIP_STD * cfg.elastic_alpha[1] * math.sqrt(1 / 3) * float((weights**2).sum()) ** 1.5


def elastic_displacement(
    shape: torch.Size, amplitude: Tensor, sigma: Tensor, sigma_range: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """batchgenerators v1's elastic field (N, 3, *shape): amplitude * gaussian_filter(U(-1, 1), sigma), per sample.

    Built on a coarse grid `step` voxels apart (step <= min sigma / 3) with the noise variance divided by
    step^3, so that, blurred with sigma / step and upsampled trilinearly, it has the full-resolution
    field's statistics at a fraction of the cost. sigma must lie in sigma_range.
    """
    n = amplitude.shape[0]
    draw = _Draws(generator, amplitude.device)
    step = max(1, int(sigma_range[0] // 3))
    coarse = [math.ceil((s - 1) / step) + 1 for s in shape]
    noise = draw.uniform((n * 3, *coarse), -1.0, 1.0)
    kernels = _scipy_kernels(sigma.repeat_interleave(3) / step, sigma_range[1] / step)
    field = _separable_filter(noise, kernels, "constant")
    field = field.view(n, 3, *coarse) * (amplitude / step**1.5).view(n, 1, 1, 1, 1)
    fine = [(c - 1) * step + 1 for c in coarse]
    field = F.interpolate(field, size=fine, mode="trilinear", align_corners=True)
    return field[:, :, : shape[0], : shape[1], : shape[2]]


def gaussian_blur(volumes: Tensor, sigma: Tensor, max_sigma: float) -> Tensor:
    """batchgenerators v2's Gaussian blur of each volumes[i] (N, X, Y, Z) with its own per-axis sigma[i] (N, 3):
    kernels of the odd length nearest 6 sigma + 0.5, borders mirrored without repeating the edge voxel.
    `max_sigma` bounds sigma and fixes the kernel buffer without a device sync."""
    radius = int((_odd_length(torch.tensor(BG_TRUNCATE * max_sigma + 0.5, dtype=torch.float64)) - 1) // 2)
    s = sigma.double().clamp_min(1e-6)
    reach = (_odd_length(BG_TRUNCATE * s + 0.5) - 1) / 2
    return _separable_filter(volumes, _gaussian_kernels(s.to(volumes.device), reach, radius), "mirror")


def _odd_length(x: Tensor) -> Tensor:
    """batchgenerators' _round_to_nearest_odd (half-to-even rounding, like Python's round)."""
    r = torch.round(x)
    return torch.where(r % 2 == 1, r, torch.where(x - r >= 0, r + 1, r - 1))


def _scipy_kernels(sigma: Tensor, max_sigma: float) -> Tensor:
    """scipy.ndimage.gaussian_filter's kernels (truncate 4) for isotropic sigma (N,), as (N, 3, K)."""
    s = sigma.double().clamp_min(1e-6)[:, None].expand(-1, 3)
    return _gaussian_kernels(s, torch.floor(TRUNCATE * s + 0.5), int(TRUNCATE * max_sigma + 0.5))


def _gaussian_kernels(sigma: Tensor, reach: Tensor, radius: int) -> Tensor:
    """Normalised Gaussian taps -radius..radius (N, 3, 2 radius + 1), zero beyond each kernel's own reach."""
    taps = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.float()[..., None]
    weights = torch.exp(-0.5 * (taps / s) ** 2) * (taps.abs() <= reach.float()[..., None])
    return weights / weights.sum(-1, keepdim=True)


def _separable_filter(volumes: Tensor, kernels: Tensor, mode: str) -> Tensor:
    """Filter each volumes[i] (N, X, Y, Z) along axis a with kernels[i, a] (N, 3, K): zeros outside
    ("constant") or mirrored without repeating the edge voxel ("mirror", torch's 'reflect'). Each axis's
    filter, its border included, is one (n, n) matrix per volume, applied by a matrix product."""
    radius = (kernels.shape[2] - 1) // 2
    matrices = []
    for axis in range(3):
        n = volumes.shape[1 + axis]
        if mode == "constant":
            taps = torch.arange(-radius, radius + 1, device=volumes.device)
            source = torch.arange(n, device=volumes.device)[:, None] + taps
            inside = (source >= 0) & (source < n)
            weights = kernels[:, axis, None, :] * inside
            source = source.clamp(0, n - 1)
        else:
            source = _mirror_index(n, radius, volumes.device).unfold(0, 2 * radius + 1, 1)
            weights = kernels[:, axis, None, :].expand(-1, n, -1)
        matrix = torch.zeros((volumes.shape[0], n, n), dtype=weights.dtype, device=volumes.device)
        matrices.append(matrix.scatter_add_(2, source.expand_as(weights), weights).to(volumes.dtype))
    return _along_axes(volumes, matrices)


def _mirror_index(n: int, radius: int, device: torch.device) -> Tensor:
    index = torch.arange(-radius, n + radius, device=device)
    if n == 1:
        return torch.zeros_like(index)
    index = index % (2 * (n - 1))
    return torch.where(index >= n, 2 * (n - 1) - index, index)


def _along_axes(volumes: Tensor, matrices: Sequence[Tensor]) -> Tensor:
    """Each volumes[i] (N, X, Y, Z) with matrices[a][i] (N, n_a, n_a) applied along axis a: three matrix
    products on the volume's own memory layout (no transposes of it), one volume at a time, so that its
    values do not depend on how many volumes go together (batched products round differently by batch size)."""
    x, y, z = volumes.shape[1:]
    out = torch.empty_like(volumes)
    for i, volume in enumerate(volumes):
        along_x = torch.mm(matrices[0][i], volume.reshape(x, y * z)).view(x, y, z)
        along_y = torch.matmul(matrices[1][i], along_x)
        torch.mm(along_y.view(x * y, z), matrices[2][i].T, out=out[i].view(x * y, z))
    return out


def simulate_low_resolution(image: Tensor, scale: Tensor) -> Tensor:
    """batchgenerators v2's SimulateLowResolutionTransform of each channel of image (B, C, X, Y, Z) at its own
    scale (B, C): nearest-exact downsampling to round(n * scale) voxels per axis and trilinear upsampling back."""
    return _low_resolution_volumes(image.flatten(0, 1), scale.flatten()).view_as(image)


def _low_resolution_volumes(volumes: Tensor, scale: Tensor) -> Tensor:
    """simulate_low_resolution of volumes (N, X, Y, Z) at scale (N,), the volumes of one coarse size at once."""
    shape = volumes.shape[1:]
    coarse = torch.round(scale.double()[:, None] * torch.tensor(shape, dtype=torch.float64, device=scale.device))
    sizes = [tuple(size) for size in coarse.clamp_min(1).long().tolist()]
    out = torch.empty_like(volumes)
    for size in sorted(set(sizes)):
        index = torch.tensor([i for i, s in enumerate(sizes) if s == size], device=volumes.device)
        low = F.interpolate(volumes.index_select(0, index).unsqueeze(1), size=size, mode="nearest-exact")
        out.index_copy_(0, index, F.interpolate(low, size=shape, mode="trilinear").squeeze(1))
    return out


class _Draws:
    """Random tensors from one generator, moved to the batch's device."""

    def __init__(self, generator: torch.Generator, device: torch.device):
        self.generator = generator
        self.device = device

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> Tensor:
        u = torch.rand(shape, generator=self.generator, device=self.generator.device).to(self.device)
        return low + (high - low) * u

    def normal_(self, out: Tensor) -> Tensor:
        """out filled with the values torch.randn(out.shape) would draw."""
        if out.device == self.generator.device:
            return out.normal_(generator=self.generator)
        return out.copy_(torch.randn(out.shape, generator=self.generator, device=self.generator.device))

    def coin(self, shape: tuple[int, ...], p: float) -> Tensor:
        return self.uniform(shape, 0.0, 1.0) < p

    def two_sided(self, shape: tuple[int, ...], low: float, high: float) -> Tensor:
        """batchgenerators' BGContrast draw: half the time uniform in [low, 1), else in [1, high)."""
        below = self.coin(shape, 0.5 if low < 1 < high else float(high <= 1))
        u = self.uniform(shape, 0.0, 1.0)
        return torch.where(below, low + (min(high, 1.0) - low) * u, max(low, 1.0) + (high - max(low, 1.0)) * u)


class _Batch:
    """The image (B, C, *patch) and label (B, *patch) under augmentation. While they may still be the caller's
    tensors (or views of them) they are copied before the first write; later transforms write in place."""

    def __init__(self, image: Tensor, label: Tensor, image_owned: bool, label_owned: bool):
        self.image, self.label = image, label
        self.image_owned, self.label_owned = image_owned, label_owned

    def writable_image(self) -> Tensor:
        if not self.image_owned or not self.image.is_contiguous():
            self.image, self.image_owned = self.image.clone(memory_format=torch.contiguous_format), True
        return self.image

    def writable_label(self) -> Tensor:
        if not self.label_owned or not self.label.is_contiguous():
            self.label, self.label_owned = self.label.clone(memory_format=torch.contiguous_format), True
        return self.label

    def update_image(
        self, rows: Tensor | None, transform: _Transform, per_channel: bool = False, in_place: bool = True
    ) -> None:
        """Apply `transform` to the samples `rows`, or to the channel volumes `rows` of the (B * C, *patch) view.
        A transform that returns a new tensor (in_place False) applied to all of them needs no copy first."""
        if rows is None:
            return
        shape = self.image.shape
        if in_place or rows.numel() < (shape[0] * shape[1] if per_channel else shape[0]):
            self.writable_image()
        image = self.image.flatten(0, 1) if per_channel else self.image
        self.image = _update(image, rows, transform).view(shape)
        self.image_owned = True

    def update_label(self, rows: Tensor | None, transform: _Transform, in_place: bool = True) -> None:
        if rows is None:
            return
        if in_place or rows.numel() < self.label.shape[0]:
            self.writable_label()
        self.label, self.label_owned = _update(self.label, rows, transform), True

    def label_with_padding_as_background(self) -> Tensor:
        """The label with nnU-Net's padding (PAD_LABEL = -1, the only negative label) as background."""
        return self.label.clamp_min_(0) if self.label_owned else self.label.clamp_min(0)


_Transform = Callable[[Tensor, Callable[[Tensor], Tensor]], Tensor]


def _rows(mask: Tensor) -> Tensor | None:
    """The indices where a (N,) mask holds, None where it holds nowhere."""
    rows = mask.nonzero().squeeze(1)
    return rows if rows.numel() else None


def _update(target: Tensor, rows: Tensor, transform: _Transform) -> Tensor:
    """target with target[rows] = transform(target[rows], pick), pick(t) giving the same rows of a per-row tensor
    t: computed on each run of consecutive rows in place, on a view of target (no copies of the others), or,
    where the rows are all of target, transform's own result. transform may overwrite its first argument.
    Samples that did not draw a transform cost nothing and keep their values bit for bit."""
    index = rows.tolist()
    if index == list(range(target.shape[0])):
        return transform(target, lambda t: t)
    runs = [[index[0], index[0] + 1]]
    for row in index[1:]:
        if row == runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([row, row + 1])
    for start, stop in runs:
        view = target[start:stop]
        out = transform(view, lambda t, run=slice(start, stop): t[run])
        if out is not view:
            view.copy_(out)
    return target


def _spatial(
    image: Tensor, label: Tensor, cfg: AugmentationConfig, draw: _Draws, patch: tuple[int, ...], owned: bool
) -> _Batch:
    """The patches, rotated, scaled and elastically deformed where drawn; `owned`: whether image is ours to write."""
    b = image.shape[0]
    rotate = draw.coin((b,), cfg.p_rotation)
    scale = draw.coin((b,), cfg.p_scaling)
    elastic = draw.coin((b,), cfg.p_elastic)
    angles = draw.uniform((b, 3), -cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180)
    factor = draw.uniform((b,), *cfg.scaling)
    alpha = draw.uniform((b,), *cfg.elastic_alpha)
    sigma = draw.uniform((b,), *cfg.elastic_sigma)
    cropped_image, cropped_label = centre_crop(image, patch), centre_crop(label, patch)
    chosen = (rotate | scale | elastic).nonzero().squeeze(1)
    if chosen.numel() == 0:
        return _Batch(cropped_image, cropped_label, owned, False)
    displacement = None
    if cfg.p_elastic > 0:
        amplitude = torch.where(elastic, alpha, 0.0)[chosen]
        field = elastic_displacement(torch.Size(patch), amplitude, sigma[chosen], cfg.elastic_sigma, draw.generator)
        displacement = field.clamp(-elastic_bound(cfg), elastic_bound(cfg))
    eye = torch.eye(3, device=image.device).expand(b, 3, 3)
    matrix = torch.where(rotate.view(b, 1, 1), rotation_matrices(angles), eye)
    matrix = matrix * torch.where(scale, factor, 1.0).view(b, 1, 1)
    if chosen.numel() == b:
        return _Batch(*_warp_rows(image, label, None, matrix, patch, displacement), True, True)
    warped, warped_label = _warp_rows(image, label, chosen, matrix[chosen], patch, displacement)
    batch = _Batch(cropped_image, cropped_label, owned, False)
    batch.writable_image().index_copy_(0, chosen, warped)
    batch.writable_label().index_copy_(0, chosen, warped_label)
    return batch


def _per_sample(mask: Tensor, ndim: int) -> Tensor:
    return mask.view(*mask.shape, *([1] * (ndim - mask.ndim)))


def _noise(batch: _Batch, cfg: AugmentationConfig, draw: _Draws) -> None:
    b = batch.image.shape[0]
    chosen = draw.coin((b,), cfg.p_noise)
    std = _per_sample(draw.uniform((b,), *cfg.noise_variance), 5)  # batchgenerators: the drawn "variance" is the std
    if cfg.p_noise == 0:
        return
    noise = draw.normal_(_scratch("noise", tuple(batch.image.shape), batch.image.device))  # all drawn: draws in step
    batch.update_image(_rows(chosen), lambda x, pick: x.add_(pick(noise).to(x.dtype).mul_(pick(std))))


def _blur(batch: _Batch, cfg: AugmentationConfig, draw: _Draws) -> None:
    b, c = batch.image.shape[:2]
    chosen = draw.coin((b, 1), cfg.p_blur) & draw.coin((b, c), BLUR_P_PER_CHANNEL)
    sigma = draw.uniform((b, c, 3), *cfg.blur_sigma).flatten(0, 1)

    def blur(x: Tensor, pick: Callable[[Tensor], Tensor]) -> Tensor:
        return gaussian_blur(x, pick(sigma), cfg.blur_sigma[1])

    if cfg.p_blur > 0:
        batch.update_image(_rows(chosen.flatten()), blur, per_channel=True, in_place=False)


def _brightness(batch: _Batch, cfg: AugmentationConfig, draw: _Draws) -> None:
    b, c = batch.image.shape[:2]
    chosen = draw.coin((b,), cfg.p_brightness)
    multiplier = _per_sample(draw.two_sided((b, c), *cfg.brightness), 5)
    if cfg.p_brightness > 0:
        batch.update_image(_rows(chosen), lambda x, pick: x.mul_(pick(multiplier).to(x.dtype)))


def _contrast(batch: _Batch, cfg: AugmentationConfig, draw: _Draws) -> None:
    b, c = batch.image.shape[:2]
    chosen = draw.coin((b,), cfg.p_contrast)
    factor = _per_sample(draw.two_sided((b, c), *cfg.contrast), 5)

    def contrast(x: Tensor, pick: Callable[[Tensor], Tensor]) -> Tensor:
        dims = (2, 3, 4)
        mean, low, high = x.mean(dims, keepdim=True), x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
        return x.sub_(mean).mul_(pick(factor)).add_(mean).clamp_(low, high)

    if cfg.p_contrast > 0:
        batch.update_image(_rows(chosen), contrast)


def _low_resolution(batch: _Batch, cfg: AugmentationConfig, draw: _Draws) -> None:
    b, c = batch.image.shape[:2]
    chosen = draw.coin((b, 1), cfg.p_low_resolution) & draw.coin((b, c), LOW_RESOLUTION_P_PER_CHANNEL)
    scale = draw.uniform((b, c), *cfg.low_resolution_scale).flatten()

    def coarsen(x: Tensor, pick: Callable[[Tensor], Tensor]) -> Tensor:
        return _low_resolution_volumes(x, pick(scale))

    if cfg.p_low_resolution > 0:
        batch.update_image(_rows(chosen.flatten()), coarsen, per_channel=True, in_place=False)


def _gamma(batch: _Batch, gamma_range: tuple[float, float], p: float, invert: bool, draw: _Draws) -> None:
    """Gamma on the per-channel range rescaled to [0, 1], mean and std restored (nnU-Net's retain_stats)."""
    b, c = batch.image.shape[:2]
    chosen = draw.coin((b,), p)
    gamma = _per_sample(draw.two_sided((b, c), *gamma_range), 5)

    def transform(x: Tensor, pick: Callable[[Tensor], Tensor]) -> Tensor:
        dims = (2, 3, 4)
        if invert:
            x = x.neg_()
        mean, std, low = x.mean(dims, keepdim=True), _std(x), x.amin(dims, keepdim=True)
        span = x.amax(dims, keepdim=True) - low
        y = x.sub_(low).div_(span.clamp_min(GAMMA_EPS)).pow_(pick(gamma)).mul_(span).add_(low)
        y_mean, y_std = y.mean(dims, keepdim=True), _std(y)
        y = y.sub_(y_mean).mul_(std / y_std.clamp_min(GAMMA_EPS)).add_(mean)
        return y.neg_() if invert else y

    if p > 0:
        batch.update_image(_rows(chosen), transform)


def _std(x: Tensor) -> Tensor:
    """x.std((2, 3, 4), keepdim=True) of x (N, C, X, Y, Z); on CPU one reduction per volume, which takes a sixth of
    the time of torch's reduction over several volumes and gives each volume a value that does not depend on
    the others (for float32 the same values; float64's batched reduction rounds by batch size)."""
    if x.device.type != "cpu":
        return x.std((2, 3, 4), keepdim=True)
    return torch.stack([v.std() for v in x.flatten(0, 1)]).view(*x.shape[:2], 1, 1, 1)


def _mirror(batch: _Batch, p: float, draw: _Draws) -> None:
    """Each sample flipped over the axes it drew, image and label, in one flip per group of samples that drew
    the same axes."""
    b = batch.image.shape[0]
    flips = draw.coin((b, 3), p)
    if p == 0:
        return
    codes = (flips.long() * torch.tensor([1, 2, 4], device=flips.device)).sum(1)
    for code in sorted(set(codes.tolist()) - {0}):
        axes = [axis for axis in range(3) if code >> axis & 1]
        rows = _rows(codes == code)
        batch.update_image(rows, lambda x, pick, dims=[2 + a for a in axes]: x.flip(dims), in_place=False)
        batch.update_label(rows, lambda x, pick, dims=[1 + a for a in axes]: x.flip(dims), in_place=False)
