"""nnU-Net v2's training augmentations as batched tensor operations on the training device.

Transforms, order, probabilities and parameter draws follow nnU-Net v2's get_training_transforms
(batchgeneratorsv2): spatial (rotation about all three axes, isotropic scaling), Gaussian noise,
Gaussian blur, multiplicative brightness, contrast, simulated low resolution, inverted gamma, gamma,
mirroring, then padding labels turned to background. Each transform is decided per sample with its
probability, its parameters drawn per channel where nnU-Net draws them so.

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
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Sequence

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
    work, label = _spatial(work, label, cfg, draw, patch)
    work = _noise(work, cfg, draw)
    work = _blur(work, cfg, draw)
    work = _brightness(work, cfg, draw)
    work = _contrast(work, cfg, draw)
    work = _low_resolution(work, cfg, draw)
    work = _gamma(work, cfg.gamma, cfg.p_gamma_invert, True, draw)
    work = _gamma(work, cfg.gamma, cfg.p_gamma, False, draw)
    work, label = _mirror(work, label, cfg.p_mirror, draw)
    return work.to(image.dtype), torch.where(label == PAD_LABEL, 0, label)


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
    patch = tuple(int(p) for p in patch_size)
    region = image.shape[2:]
    n = image.shape[0]
    axes = [torch.linspace((1 - p) / 2, (p - 1) / 2, p, device=image.device) for p in patch]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).expand(n, *patch, 3)
    if displacement is not None:
        coords = coords + displacement.movedim(1, -1).float()
    source = torch.matmul(coords.reshape(n, -1, 3), matrix.float().transpose(1, 2)).reshape(n, *patch, 3)
    grid = (source / torch.tensor([s / 2 for s in region], device=image.device)).flip(-1)
    warped = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped, _warp_label(label, grid)


def _warp_label(label: Tensor, grid: Tensor) -> Tensor:
    """batchgenerators' label resampling: per label, the bilinear score of its indicator (x SCORE_SCALE, as
    float16), the first label with the top score, replaced by the nearest neighbour's label where that ties
    for the top. Where a sample's grid reaches outside the region, the outside counts as label 0."""
    region = label.shape[1:]
    size = torch.tensor(region[::-1], dtype=torch.float32, device=label.device)
    bound = (1 - 1 / size).min()
    reach = ((-grid.amin((1, 2, 3, 4)) > bound) | (grid.amax((1, 2, 3, 4)) > bound)).view(-1, 1, 1, 1)

    def sample(volume: Tensor, mode: str) -> Tensor:
        return F.grid_sample(volume.unsqueeze(1), grid, mode=mode, padding_mode="zeros", align_corners=False)[:, 0]

    nearest = sample(label.float(), "nearest").to(label.dtype)
    classes = sorted(set(torch.unique(label).tolist()) | {0})
    result = best = nn_score = None
    for u in classes:
        indicator = (label == u).float() * SCORE_SCALE
        score = sample(indicator, "bilinear")
        if u == 0:
            score = torch.where(reach, sample(indicator - SCORE_SCALE, "bilinear") + SCORE_SCALE, score)
        score = score.half()
        if best is None:
            result, best = torch.full_like(nearest, u), score
            nn_score = torch.full_like(score, -math.inf)
        else:
            result = torch.where(score > best, u, result)
            best = torch.maximum(best, score)
        nn_score = torch.where(nearest == u, score, nn_score)
    return torch.where(nn_score == best, nearest, result)


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
    ("constant") or mirrored without repeating the edge voxel ("mirror", torch's 'reflect')."""
    rows, radius = volumes.shape[0], (kernels.shape[2] - 1) // 2
    out = volumes.unsqueeze(0)
    for axis in range(3):
        n = out.shape[2 + axis]
        kernel = kernels[:, axis].to(volumes.dtype)
        padding = [0, 0, 0]
        if mode == "constant":
            reach = min(radius, n - 1)
            kernel = kernel[:, radius - reach : radius + reach + 1]
            padding[axis] = reach
        else:
            out = out.index_select(2 + axis, _mirror_index(n, radius, volumes.device))
        shape = [rows, 1, 1, 1, 1]
        shape[2 + axis] = kernel.shape[1]
        out = F.conv3d(out, kernel.reshape(shape), padding=padding, groups=rows)
    return out.squeeze(0)


def _mirror_index(n: int, radius: int, device: torch.device) -> Tensor:
    index = torch.arange(-radius, n + radius, device=device)
    if n == 1:
        return torch.zeros_like(index)
    index = index % (2 * (n - 1))
    return torch.where(index >= n, 2 * (n - 1) - index, index)


def simulate_low_resolution(image: Tensor, scale: Tensor) -> Tensor:
    """batchgenerators v2's SimulateLowResolutionTransform of each channel of image (B, C, X, Y, Z) at its own
    scale (B, C): nearest-exact downsampling to round(n * scale) voxels per axis and trilinear upsampling back,
    applied as one linear operator per axis so that the whole batch goes at once."""
    out = image
    b, c = image.shape[:2]
    for axis in range(3):
        n = image.shape[2 + axis]
        coarse = torch.round(scale.double() * n).clamp(1, n).long()
        operators = _low_resolution_operators(n, image.device)[coarse].to(image.dtype)
        moved = out.movedim(2 + axis, -1)
        shape = moved.shape
        moved = torch.matmul(moved.reshape(b, c, -1, n), operators.transpose(-1, -2))
        out = moved.reshape(shape).movedim(-1, 2 + axis)
    return out


@lru_cache(maxsize=16)
def _low_resolution_operators(n: int, device: torch.device) -> Tensor:
    """(n + 1, n, n): [m] is torch's linear upsampling from m voxels after nearest-exact downsampling to m."""
    operators = torch.zeros(n + 1, n, n)
    ramp = torch.arange(n, dtype=torch.float32)[None, None]
    for m in range(1, n + 1):
        kept = F.interpolate(ramp, size=m, mode="nearest-exact")[0, 0].long()
        up = F.interpolate(torch.eye(m)[:, None], size=n, mode="linear")[:, 0]
        operators[m][:, kept] = up.T
    return operators.to(device)


class _Draws:
    """Random tensors from one generator, moved to the batch's device."""

    def __init__(self, generator: torch.Generator, device: torch.device):
        self.generator = generator
        self.device = device

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> Tensor:
        u = torch.rand(shape, generator=self.generator, device=self.generator.device).to(self.device)
        return low + (high - low) * u

    def normal(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.generator.device).to(self.device)

    def coin(self, shape: tuple[int, ...], p: float) -> Tensor:
        return self.uniform(shape, 0.0, 1.0) < p

    def two_sided(self, shape: tuple[int, ...], low: float, high: float) -> Tensor:
        """batchgenerators' BGContrast draw: half the time uniform in [low, 1), else in [1, high)."""
        below = self.coin(shape, 0.5 if low < 1 < high else float(high <= 1))
        u = self.uniform(shape, 0.0, 1.0)
        return torch.where(below, low + (min(high, 1.0) - low) * u, max(low, 1.0) + (high - max(low, 1.0)) * u)


def _spatial(
    image: Tensor, label: Tensor, cfg: AugmentationConfig, draw: _Draws, patch: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
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
        return cropped_image, cropped_label
    displacement = None
    if cfg.p_elastic > 0:
        amplitude = torch.where(elastic, alpha, 0.0)[chosen]
        field = elastic_displacement(torch.Size(patch), amplitude, sigma[chosen], cfg.elastic_sigma, draw.generator)
        displacement = field.clamp(-elastic_bound(cfg), elastic_bound(cfg))
    eye = torch.eye(3, device=image.device).expand(b, 3, 3)
    matrix = torch.where(rotate.view(b, 1, 1), rotation_matrices(angles), eye)
    matrix = matrix * torch.where(scale, factor, 1.0).view(b, 1, 1)
    warped, warped_label = warp(image[chosen], label[chosen], matrix[chosen], patch, displacement)
    return cropped_image.index_copy(0, chosen, warped), cropped_label.index_copy(0, chosen, warped_label)


def _per_sample(mask: Tensor, ndim: int) -> Tensor:
    return mask.view(*mask.shape, *([1] * (ndim - mask.ndim)))


def _noise(image: Tensor, cfg: AugmentationConfig, draw: _Draws) -> Tensor:
    b = image.shape[0]
    chosen = draw.coin((b,), cfg.p_noise)
    std = draw.uniform((b,), *cfg.noise_variance)  # batchgenerators uses the drawn "variance" as the std
    if cfg.p_noise == 0:
        return image
    noise = draw.normal(tuple(image.shape)).to(image.dtype)
    return torch.where(_per_sample(chosen, 5), image + noise * _per_sample(std, 5), image)


def _blur(image: Tensor, cfg: AugmentationConfig, draw: _Draws) -> Tensor:
    b, c = image.shape[:2]
    chosen = draw.coin((b, 1), cfg.p_blur) & draw.coin((b, c), BLUR_P_PER_CHANNEL)
    sigma = draw.uniform((b, c, 3), *cfg.blur_sigma)
    if cfg.p_blur == 0:
        return image
    blurred = gaussian_blur(image.flatten(0, 1), sigma.flatten(0, 1), cfg.blur_sigma[1]).view_as(image)
    return torch.where(_per_sample(chosen, 5), blurred, image)


def _brightness(image: Tensor, cfg: AugmentationConfig, draw: _Draws) -> Tensor:
    b, c = image.shape[:2]
    chosen = draw.coin((b, 1), cfg.p_brightness)
    multiplier = draw.two_sided((b, c), *cfg.brightness)
    if cfg.p_brightness == 0:
        return image
    return image * _per_sample(torch.where(chosen, multiplier, 1.0), 5).to(image.dtype)


def _contrast(image: Tensor, cfg: AugmentationConfig, draw: _Draws) -> Tensor:
    b, c = image.shape[:2]
    chosen = draw.coin((b, 1), cfg.p_contrast).expand(b, c)
    factor = _per_sample(draw.two_sided((b, c), *cfg.contrast), 5)
    if cfg.p_contrast == 0:
        return image
    dims = (2, 3, 4)
    mean = image.mean(dims, keepdim=True)
    low, high = image.amin(dims, keepdim=True), image.amax(dims, keepdim=True)
    adjusted = torch.minimum(torch.maximum((image - mean) * factor + mean, low), high)
    return torch.where(_per_sample(chosen, 5), adjusted, image)


def _low_resolution(image: Tensor, cfg: AugmentationConfig, draw: _Draws) -> Tensor:
    b, c = image.shape[:2]
    chosen = draw.coin((b, 1), cfg.p_low_resolution) & draw.coin((b, c), LOW_RESOLUTION_P_PER_CHANNEL)
    scale = draw.uniform((b, c), *cfg.low_resolution_scale)
    if cfg.p_low_resolution == 0:
        return image
    return torch.where(_per_sample(chosen, 5), simulate_low_resolution(image, scale), image)


def _gamma(image: Tensor, gamma_range: tuple[float, float], p: float, invert: bool, draw: _Draws) -> Tensor:
    """Gamma on the per-channel range rescaled to [0, 1], mean and std restored (nnU-Net's retain_stats)."""
    b, c = image.shape[:2]
    chosen = draw.coin((b, 1), p).expand(b, c)
    gamma = _per_sample(draw.two_sided((b, c), *gamma_range), 5)
    if p == 0:
        return image
    dims = (2, 3, 4)
    x = -image if invert else image
    mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)
    low = x.amin(dims, keepdim=True)
    span = x.amax(dims, keepdim=True) - low
    y = ((x - low) / span.clamp_min(GAMMA_EPS)) ** gamma * span + low
    y = (y - y.mean(dims, keepdim=True)) * (std / y.std(dims, keepdim=True).clamp_min(GAMMA_EPS)) + mean
    return torch.where(_per_sample(chosen, 5), -y if invert else y, image)


def _mirror(image: Tensor, label: Tensor, p: float, draw: _Draws) -> tuple[Tensor, Tensor]:
    b = image.shape[0]
    flips = draw.coin((b, 3), p)
    if p == 0:
        return image, label
    for axis in range(3):
        flip = flips[:, axis]
        image = torch.where(_per_sample(flip, 5), image.flip(2 + axis), image)
        label = torch.where(_per_sample(flip, 4), label.flip(1 + axis), label)
    return image, label
