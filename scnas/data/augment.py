"""nnU-Net's training augmentations as batched tensor operations on the training device.

The transforms, their order and their parameter draws follow batchgenerators as nnU-Net configures it:
spatial (elastic deformation, rotation, scaling; one sampling grid per sample, one grid_sample call for
the batch), Gaussian noise, Gaussian blur, multiplicative brightness, contrast, inverted gamma, gamma,
mirroring. Every transform is decided per sample with its probability; intensity parameters are drawn
per channel where batchgenerators does. Scaling, contrast and gamma factors are drawn as batchgenerators
does: with probability 1/2 uniformly below 1 (from the range's lower end), else uniformly above 1.
Gaussian noise has a variance drawn uniformly from noise_variance (batchgenerators uses the drawn value
as the standard deviation instead).
All randomness comes from one torch.Generator, in a fixed order, so a run is reproducible and resumable
from the generator's state; samples a transform skips keep their values bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from scnas.config import AugmentationConfig

BLUR_P_PER_CHANNEL = 0.5  # nnU-Net blurs each channel of a chosen sample with probability 1/2
GAMMA_EPS = 1e-7
STD_EPS = 1e-8
TRUNCATE = 4.0  # Gaussian kernels reach int(4 sigma + 0.5) voxels, as scipy.ndimage.gaussian_filter


def augment_batch(
    image: Tensor, label: Tensor, cfg: AugmentationConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Augment a batch: image (B, C, X, Y, Z) float, label (B, X, Y, Z) int -> new (image, label)."""
    if image.ndim != 5 or not image.is_floating_point():
        raise ValueError(
            f"augment_batch: image must be a float (B, C, X, Y, Z) tensor, got {image.dtype} {tuple(image.shape)}"
        )
    if label.shape != image.shape[:1] + image.shape[2:] or label.is_floating_point():
        raise ValueError(
            "augment_batch: label must be an integer (B, X, Y, Z) tensor matching the image, "
            f"got {label.dtype} {tuple(label.shape)}"
        )
    draw = _Draws(generator, image.device)
    work = image.to(torch.promote_types(image.dtype, torch.float32))
    work, label = _spatial(work, label, cfg, draw)
    work = _noise(work, cfg, draw)
    work = _blur(work, cfg, draw)
    work = _brightness(work, cfg, draw)
    work = _contrast(work, cfg, draw)
    work = _gamma(work, cfg.gamma, cfg.p_gamma_invert, True, draw)
    work = _gamma(work, cfg.gamma, cfg.p_gamma, False, draw)
    work, label = _mirror(work, label, cfg.p_mirror, draw)
    return work.to(image.dtype), label


def warp(image: Tensor, label: Tensor, matrix: Tensor, displacement: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Resample each sample at source = matrix @ (c + displacement(c)), c the voxel offset from the centre.

    matrix (N, 3, 3) and displacement (N, 3, X, Y, Z) act in voxel units; the image is interpolated
    trilinearly, the label by nearest neighbour; both are zero outside the volume.
    """
    shape = image.shape[2:]
    axes = [torch.arange(n, device=image.device, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).expand(image.shape[0], *shape, 3)
    if displacement is not None:
        coords = coords + displacement.movedim(1, -1)
    source = torch.einsum("nij,nxyzj->nxyzi", matrix.float(), coords)
    half = torch.tensor([max((n - 1) / 2, 0.5) for n in shape], device=image.device)
    grid = (source / half).flip(-1)
    warped = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
    warped_label = F.grid_sample(
        label.unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros", align_corners=True
    )
    return warped, warped_label.squeeze(1).to(label.dtype)


def gaussian_blur(volumes: Tensor, sigma: Tensor, max_sigma: float, mode: str) -> Tensor:
    """Separable Gaussian filter of each volumes[i] (N, X, Y, Z) with its own sigma[i] (N,).

    Matches scipy.ndimage.gaussian_filter (truncate 4) in mode "constant" (zeros outside) or "reflect"
    (half-sample symmetric); `max_sigma` bounds sigma and fixes the kernel length without a device sync.
    """
    rows = volumes.shape[0]
    radius = int(TRUNCATE * max_sigma + 0.5)
    dtype = torch.promote_types(volumes.dtype, torch.float32)
    taps = torch.arange(-radius, radius + 1, device=volumes.device, dtype=dtype)
    s = sigma.to(dtype).clamp_min(1e-6)[:, None]
    weights = torch.exp(-0.5 * (taps / s) ** 2) * (taps.abs() <= torch.floor(TRUNCATE * s + 0.5))
    weights = (weights / weights.sum(1, keepdim=True)).to(volumes.dtype)
    out = volumes.unsqueeze(0)
    for axis in range(3):
        n = out.shape[2 + axis]
        if mode == "constant":
            reach = min(radius, n - 1)
            kernel = weights[:, radius - reach : radius + reach + 1]
            padding = [0, 0, 0]
            padding[axis] = reach
        elif mode == "reflect":
            index = torch.arange(-radius, n + radius, device=volumes.device) % (2 * n)
            out = out.index_select(2 + axis, torch.where(index >= n, 2 * n - 1 - index, index))
            kernel, padding = weights, [0, 0, 0]
        else:
            raise ValueError(f"gaussian_blur: mode must be 'constant' or 'reflect', not {mode!r}")
        shape = [rows, 1, 1, 1, 1]
        shape[2 + axis] = kernel.shape[1]
        out = F.conv3d(out, kernel.reshape(shape), padding=padding, groups=rows)
    return out.squeeze(0)


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
        """batchgenerators' factor draw: half the time uniform in [low, 1), else in [1, high)."""
        below = self.coin(shape, 0.5 if low < 1 < high else float(high <= 1))
        u = self.uniform(shape, 0.0, 1.0)
        return torch.where(below, low + (min(high, 1.0) - low) * u, max(low, 1.0) + (high - max(low, 1.0)) * u)


def _rotation_matrices(angles: Tensor) -> Tensor:
    """Rz @ Ry @ Rx for angles (N, 3) in radians about the x, y, z axes."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def matrix(rows: list[list[Tensor]]) -> Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = matrix([[one, zero, zero], [zero, cos[:, 0], -sin[:, 0]], [zero, sin[:, 0], cos[:, 0]]])
    ry = matrix([[cos[:, 1], zero, sin[:, 1]], [zero, one, zero], [-sin[:, 1], zero, cos[:, 1]]])
    rz = matrix([[cos[:, 2], -sin[:, 2], zero], [sin[:, 2], cos[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def elastic_displacement(
    shape: torch.Size, amplitude: Tensor, sigma: Tensor, sigma_range: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """batchgenerators' elastic field (N, 3, *shape): amplitude * gaussian_filter(U(-1, 1), sigma), per sample.

    Built on a coarse grid `step` voxels apart (step <= min sigma / 3) with the noise variance divided by
    step^3, so that, blurred with sigma / step and upsampled trilinearly, it has the full-resolution
    field's statistics at a fraction of the cost. sigma must lie in sigma_range.
    """
    n = amplitude.shape[0]
    draw = _Draws(generator, amplitude.device)
    step = max(1, int(sigma_range[0] // 3))
    coarse = [math.ceil((s - 1) / step) + 1 for s in shape]
    noise = draw.uniform((n * 3, *coarse), -1.0, 1.0)
    field = gaussian_blur(noise, sigma.repeat_interleave(3) / step, sigma_range[1] / step, "constant")
    field = field.view(n, 3, *coarse) * (amplitude / step**1.5).view(n, 1, 1, 1, 1)
    fine = [(c - 1) * step + 1 for c in coarse]
    field = F.interpolate(field, size=fine, mode="trilinear", align_corners=True)
    return field[:, :, : shape[0], : shape[1], : shape[2]]


def _spatial(image: Tensor, label: Tensor, cfg: AugmentationConfig, draw: _Draws) -> tuple[Tensor, Tensor]:
    b = image.shape[0]
    rotate = draw.coin((b,), cfg.p_rotation)
    angles = draw.uniform((b, 3), -cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180)
    scale = draw.coin((b,), cfg.p_scaling)
    factor = draw.two_sided((b,), *cfg.scaling)
    elastic = draw.coin((b,), cfg.p_elastic)
    alpha = draw.uniform((b,), *cfg.elastic_alpha)
    sigma = draw.uniform((b,), *cfg.elastic_sigma)
    chosen = (rotate | scale | elastic).nonzero().squeeze(1)
    if chosen.numel() == 0:
        return image, label
    eye = torch.eye(3, device=image.device).expand(b, 3, 3)
    matrix = torch.where(rotate.view(b, 1, 1), _rotation_matrices(angles), eye)
    matrix = matrix * torch.where(scale, factor, 1.0).view(b, 1, 1)
    amplitude = torch.where(elastic, alpha, 0.0)[chosen]
    displacement = elastic_displacement(image.shape[2:], amplitude, sigma[chosen], cfg.elastic_sigma, draw.generator)
    warped, warped_label = warp(image[chosen], label[chosen], matrix[chosen], displacement)
    return image.index_copy(0, chosen, warped), label.index_copy(0, chosen, warped_label)


def _per_sample(mask: Tensor, ndim: int) -> Tensor:
    return mask.view(*mask.shape, *([1] * (ndim - mask.ndim)))


def _noise(image: Tensor, cfg: AugmentationConfig, draw: _Draws) -> Tensor:
    b = image.shape[0]
    chosen = draw.coin((b,), cfg.p_noise)
    std = draw.uniform((b,), *cfg.noise_variance)  # batchgenerators uses the drawn "variance" as the std
    noise = draw.normal(tuple(image.shape)).to(image.dtype)
    return torch.where(_per_sample(chosen, 5), image + noise * _per_sample(std, 5), image)


def _blur(image: Tensor, cfg: AugmentationConfig, draw: _Draws) -> Tensor:
    b, c = image.shape[:2]
    chosen = draw.coin((b, 1), cfg.p_blur) & draw.coin((b, c), BLUR_P_PER_CHANNEL)
    sigma = draw.uniform((b, c), *cfg.blur_sigma)
    blurred = gaussian_blur(image.flatten(0, 1), sigma.flatten(), cfg.blur_sigma[1], "reflect").view_as(image)
    return torch.where(_per_sample(chosen, 5), blurred, image)


def _brightness(image: Tensor, cfg: AugmentationConfig, draw: _Draws) -> Tensor:
    b, c = image.shape[:2]
    chosen = draw.coin((b, 1), cfg.p_brightness)
    multiplier = draw.uniform((b, c), *cfg.brightness)
    return image * _per_sample(torch.where(chosen, multiplier, 1.0), 5).to(image.dtype)


def _contrast(image: Tensor, cfg: AugmentationConfig, draw: _Draws) -> Tensor:
    b, c = image.shape[:2]
    chosen = draw.coin((b, 1), cfg.p_contrast).expand(b, c)
    factor = _per_sample(draw.two_sided((b, c), *cfg.contrast), 5)
    dims = (2, 3, 4)
    mean = image.mean(dims, keepdim=True)
    low, high = image.amin(dims, keepdim=True), image.amax(dims, keepdim=True)
    adjusted = torch.minimum(torch.maximum((image - mean) * factor + mean, low), high)
    return torch.where(_per_sample(chosen, 5), adjusted, image)


def _gamma(image: Tensor, gamma_range: tuple[float, float], p: float, invert: bool, draw: _Draws) -> Tensor:
    """Gamma on the per-channel range rescaled to [0, 1], mean and std restored (nnU-Net's retain_stats)."""
    b, c = image.shape[:2]
    chosen = draw.coin((b, 1), p).expand(b, c)
    gamma = _per_sample(draw.two_sided((b, c), *gamma_range), 5)
    dims = (2, 3, 4)
    x = -image if invert else image
    mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True, correction=0)
    low = x.amin(dims, keepdim=True)
    span = x.amax(dims, keepdim=True) - low
    y = ((x - low) / (span + GAMMA_EPS)) ** gamma * span + low
    y = (y - y.mean(dims, keepdim=True)) / (y.std(dims, keepdim=True, correction=0) + STD_EPS) * std + mean
    return torch.where(_per_sample(chosen, 5), -y if invert else y, image)


def _mirror(image: Tensor, label: Tensor, p: float, draw: _Draws) -> tuple[Tensor, Tensor]:
    b = image.shape[0]
    flips = draw.coin((b, 3), p)
    for axis in range(3):
        flip = flips[:, axis]
        image = torch.where(_per_sample(flip, 5), image.flip(2 + axis), image)
        label = torch.where(_per_sample(flip, 4), label.flip(1 + axis), label)
    return image, label
