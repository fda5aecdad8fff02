"""Against batchgeneratorsv2, the library nnU-Net v2 augments with, configured as nnU-Net v2's
get_training_transforms configures it: each transform driven at fixed parameters gives the same result
(spatial, blur, contrast, gamma, low resolution, brightness), and where the draws cannot be fixed, the
parameters recovered from probe images have the same distributions over many draws (KS or chi-square
test, p > 1e-3)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform, create_affine_matrix_3d
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from scipy import stats

from scnas.config import task_settings
from scnas.data.augment import (
    augment_batch,
    gaussian_blur,
    rotation_matrices,
    simulate_low_resolution,
    spatial_read_size,
    warp,
)

DEFAULTS = task_settings({}).train.augmentation
OFF = dataclasses.replace(DEFAULTS, **{f.name: 0.0 for f in dataclasses.fields(DEFAULTS) if f.name.startswith("p_")})
ROTATION = (-30.0 / 360 * 2 * np.pi, 30.0 / 360 * 2 * np.pi)  # nnU-Net's rotation_for_DA for 3D patches
DRAWS = 1500
P_MIN = 1e-3


def only(**changes):
    return dataclasses.replace(OFF, **changes)


def nnunet_spatial(patch, **fixed) -> SpatialTransform:
    """nnU-Net v2's SpatialTransform; `fixed` replaces its rotation/scaling ranges."""
    kwargs = dict(p_rotation=0.2, rotation=ROTATION, p_scaling=0.2, scaling=(0.7, 1.4))
    kwargs.update(fixed)
    return SpatialTransform(
        patch,
        patch_center_dist_from_border=0,
        random_crop=False,
        p_elastic_deform=0,
        p_synchronize_scaling_across_axes=1,
        bg_style_seg_sampling=False,
        **kwargs,
    )


def labelled_region(shape, seed=0):
    """Two image channels and blob labels {-1, 0, 1, 2, 3} (-1: nnU-Net's padding of the region)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, *shape, generator=g)
    x, y, z = torch.meshgrid(*[torch.arange(n).float() - n / 2 for n in shape], indexing="ij")
    label = torch.zeros(shape, dtype=torch.int16)
    label[x**2 + y**2 + z**2 < 90] = 1
    label[(x - 3) ** 2 + y**2 < 25] = 2
    label[z > shape[2] / 2 - 8] = 3
    label[:, :4] = -1
    return image, label


def bg(transform, image: torch.Tensor, label: torch.Tensor | None = None):
    data = {"image": image.clone()}
    if label is not None:
        data["segmentation"] = label[None].clone()
    return transform(**data)


@pytest.mark.parametrize(
    "angles, scale",
    [((0.3, -0.5, 0.2), 1.3), ((0.52, 0.52, -0.52), 1.4), ((-0.52, 0.1, 0.52), 0.7), ((0.0, 0.0, 0.0), 0.85)],
)
@pytest.mark.parametrize("inside", [True, False])
def test_spatial_transform_matches_batchgenerators_at_fixed_parameters(angles, scale, inside):
    """Tolerance: image 1e-5, labels identical on at least 99.9 % of the voxels (exact here)."""
    patch = (20, 18, 16)
    region = spatial_read_size(patch, DEFAULTS) if inside else (24, 22, 20)  # outside: the grid leaves the region
    image, label = labelled_region(region)
    spatial = nnunet_spatial(
        patch, p_rotation=1, rotation=lambda image, dim: angles[dim], p_scaling=1, scaling=lambda image, dim: scale
    )
    expected = bg(spatial, image, label)
    matrix = torch.from_numpy(create_affine_matrix_3d(angles, [scale] * 3))[None]
    got_image, got_label = warp(image[None], label[None].long(), matrix, patch)
    torch.testing.assert_close(got_image[0], expected["image"], atol=1e-5, rtol=0)
    assert (got_label[0] != expected["segmentation"][0].long()).float().mean() <= 1e-3
    assert set(expected["segmentation"].unique().tolist()) > {0, 1}


def test_rotation_matrices_match_batchgenerators():
    angles = torch.tensor([[0.3, -0.5, 0.2], [1.0, 2.0, -3.0]], dtype=torch.float64)
    expected = np.stack([create_affine_matrix_3d(a.tolist(), [1, 1, 1]) for a in angles])
    np.testing.assert_allclose(rotation_matrices(angles).numpy(), expected, atol=1e-12)


def test_centre_crop_matches_batchgenerators_when_no_spatial_transform_is_drawn():
    patch = (20, 18, 16)
    region = spatial_read_size(patch, DEFAULTS)
    image, label = labelled_region(region)
    expected = bg(nnunet_spatial(patch, p_rotation=0, p_scaling=0), image, label)
    got_image, got_label = augment_batch(image[None], label[None].long(), OFF, torch.Generator(), patch)
    assert torch.equal(got_image[0], expected["image"])
    assert torch.equal(got_label[0], expected["segmentation"][0].long().clamp_min(0))


@pytest.mark.parametrize("shape", [(9, 7, 12), (4, 11, 6)])
def test_blur_matches_batchgenerators_at_fixed_sigmas(shape):
    """Tolerance 1e-5; sigmas per channel and axis, kernel lengths 3, 5 and 7."""
    sigmas = [[0.5, 0.75, 1.0], [0.62, 0.93, 0.5]]
    image = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    calls = iter(itertools.chain.from_iterable(sigmas))
    blur = GaussianBlurTransform(
        blur_sigma=lambda shape, dim: next(calls), synchronize_channels=False, synchronize_axes=False, p_per_channel=1
    )
    expected = bg(blur, image)["image"]
    got = gaussian_blur(image, torch.tensor(sigmas), 1.0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("factor", [1.25, 0.8])
def test_contrast_matches_batchgenerators_at_a_fixed_factor(factor):
    """Tolerance 1e-5."""
    image = torch.randn(2, 9, 8, 7, generator=torch.Generator().manual_seed(2)) * 3 + 1
    expected = bg(ContrastTransform(factor, preserve_range=True, synchronize_channels=False), image)["image"]
    got, _ = augment_batch(
        image[None], torch.zeros(1, 9, 8, 7, dtype=torch.long), only(p_contrast=1.0, contrast=(factor, factor)), gen()
    )
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gamma", [0.7, 1.5])
@pytest.mark.parametrize("invert", [False, True])
def test_gamma_matches_batchgenerators_at_a_fixed_gamma(gamma, invert):
    """Tolerance 1e-5 (retained mean and std, as nnU-Net configures it)."""
    image = torch.randn(2, 9, 8, 7, generator=torch.Generator().manual_seed(3)) * 2 - 1
    transform = GammaTransform(
        gamma, p_invert_image=float(invert), synchronize_channels=False, p_per_channel=1, p_retain_stats=1
    )
    expected = bg(transform, image)["image"]
    cfg = only(p_gamma_invert=1.0, gamma=(gamma, gamma)) if invert else only(p_gamma=1.0, gamma=(gamma, gamma))
    got, _ = augment_batch(image[None], torch.zeros(1, 9, 8, 7, dtype=torch.long), cfg, gen())
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(20, 17, 13), (16, 16, 16)])
def test_low_resolution_matches_batchgenerators_at_fixed_scales(shape):
    """Tolerance 1e-5; scales that round to different coarse sizes per axis."""
    scales = [0.5, 0.63, 0.77, 1.0]
    image = torch.randn(4, *shape, generator=torch.Generator().manual_seed(4))
    calls = iter(scales)
    transform = SimulateLowResolutionTransform(
        scale=lambda image, channel, dim: next(calls),
        synchronize_channels=False,
        synchronize_axes=True,
        ignore_axes=None,
        allowed_channels=None,
        p_per_channel=1,
    )
    expected = bg(transform, image)["image"]
    got = simulate_low_resolution(image[None], torch.tensor([scales]))[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got[0], image[0], atol=1e-3)


def test_brightness_matches_batchgenerators_at_a_fixed_multiplier():
    image = torch.randn(2, 5, 5, 5, generator=torch.Generator().manual_seed(5))
    expected = bg(MultiplicativeBrightnessTransform(0.8, synchronize_channels=False), image)["image"]
    got, _ = augment_batch(
        image[None], torch.zeros(1, 5, 5, 5, dtype=torch.long), only(p_brightness=1.0, brightness=(0.8, 0.8)), gen()
    )
    torch.testing.assert_close(got[0], expected, atol=1e-6, rtol=0)


# --- parameter distributions over many draws, recovered from probe images -----------------------------


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def seed_batchgenerators(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def ours(probe: torch.Tensor, cfg, patch=None, draws: int = DRAWS) -> torch.Tensor:
    """Our outputs for `draws` copies of one probe region (C, *region)."""
    batch = probe.expand(draws, *probe.shape).clone()
    label = torch.zeros(draws, *probe.shape[1:], dtype=torch.long)
    return augment_batch(batch, label, cfg, gen(), patch)[0]


def theirs(probe: torch.Tensor, transform, draws: int = DRAWS) -> torch.Tensor:
    seed_batchgenerators(0)
    return torch.stack([bg(transform, probe)["image"] for _ in range(draws)])


def assert_same_distribution(a: np.ndarray, b: np.ndarray) -> None:
    assert stats.ks_2samp(np.ravel(a), np.ravel(b)).pvalue > P_MIN


def assert_same_counts(a: np.ndarray, b: np.ndarray) -> None:
    values = sorted(set(np.ravel(a).tolist()) | set(np.ravel(b).tolist()))
    table = [[int((np.ravel(x) == v).sum()) for v in values] for x in (a, b)]
    assert stats.chi2_contingency(table).pvalue > P_MIN


def test_rotation_and_scaling_draws_have_nnunets_distribution():
    """A linear ramp per axis is resampled exactly, so each output patch recovers its sample's matrix."""
    patch = (4, 4, 4)
    region = tuple(r + 20 for r in spatial_read_size(patch, DEFAULTS))  # joint extremes reach past the read size
    ramps = torch.stack(torch.meshgrid(*[torch.arange(n).float() - (n - 1) / 2 for n in region], indexing="ij"))
    centred = torch.stack(torch.meshgrid(*[torch.arange(n).float() - (n - 1) / 2 for n in patch], indexing="ij"))
    coords = centred.reshape(3, -1).double()

    def matrices(out: torch.Tensor) -> np.ndarray:
        values = out.reshape(len(out), 3, -1).double()
        fitted = values @ torch.linalg.pinv(coords)
        assert (fitted @ coords - values).abs().max() < 1e-3  # the patch is a linear map of the ramps
        return fitted.numpy()

    cfg = only(p_rotation=DEFAULTS.p_rotation, p_scaling=DEFAULTS.p_scaling)
    a = matrices(ours(ramps, cfg, patch))
    b = matrices(theirs(ramps, nnunet_spatial(patch)))
    still_a, still_b = (np.abs(m - np.eye(3)).max((1, 2)) < 1e-4 for m in (a, b))
    assert_same_counts(still_a, still_b)
    assert 0.6 < still_a.mean() < 0.7  # (1 - 0.2)^2 untransformed
    # every sample rotated and scaled, twice the draws: the angle and factor distributions themselves
    a = matrices(ours(ramps, dataclasses.replace(cfg, p_rotation=1.0, p_scaling=1.0), patch, 2 * DRAWS))
    b = matrices(theirs(ramps, nnunet_spatial(patch, p_rotation=1, p_scaling=1), 2 * DRAWS))
    for i, j in itertools.product(range(3), range(3)):
        assert_same_distribution(a[:, i, j], b[:, i, j])
    scale_a, scale_b = np.cbrt(np.linalg.det(a)), np.cbrt(np.linalg.det(b))
    assert_same_distribution(scale_a, scale_b)
    assert 0.7 - 1e-4 < scale_a.min() and scale_a.max() < 1.4 + 1e-4


def test_noise_draws_have_nnunets_distribution():
    probe = torch.zeros(2, 8, 8, 8)
    transform = RandomTransform(
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
        apply_probability=0.1,
    )
    a = ours(probe, only(p_noise=DEFAULTS.p_noise)).std((2, 3, 4))
    b = theirs(probe, transform).std((2, 3, 4))
    assert_same_counts((a == 0).numpy(), (b == 0).numpy())
    assert torch.allclose(a[:, 0], a[:, 1], atol=0.02)  # one std for all channels
    assert_same_distribution(a[a > 0].numpy(), b[b > 0].numpy())


def test_blur_draws_have_nnunets_distribution():
    """An impulse's blurred marginal along each axis has a variance that grows with that axis's sigma."""
    probe = torch.zeros(2, 9, 9, 9)
    probe[:, 4, 4, 4] = 1.0
    transform = RandomTransform(
        GaussianBlurTransform(
            blur_sigma=(0.5, 1.0), synchronize_channels=False, synchronize_axes=False, p_per_channel=0.5, benchmark=True
        ),
        apply_probability=0.2,
    )
    offsets = (torch.arange(9.0) - 4) ** 2

    def variances(out: torch.Tensor) -> np.ndarray:
        marginals = [out.sum(dims) for dims in [(3, 4), (2, 4), (2, 3)]]
        return torch.stack([(m * offsets).sum(-1) / m.sum(-1) for m in marginals], -1).numpy()

    a = variances(ours(probe, only(p_blur=DEFAULTS.p_blur)))
    b = variances(theirs(probe, transform))
    blurred_a, blurred_b = a[..., 0] > 1e-6, b[..., 0] > 1e-6
    assert_same_counts(blurred_a, blurred_b)
    assert_same_counts(blurred_a.sum(1), blurred_b.sum(1))  # channels chosen independently, 1/2 each
    for axis in range(3):
        assert_same_distribution(a[blurred_a][:, axis], b[blurred_b][:, axis])
    assert np.corrcoef(a[blurred_a][:, 0], a[blurred_a][:, 1])[0, 1] < 0.2  # sigma drawn per axis


def test_brightness_draws_have_nnunets_distribution():
    probe = torch.ones(2, 3, 3, 3)
    transform = RandomTransform(
        MultiplicativeBrightnessTransform(BGContrast((0.75, 1.25)), synchronize_channels=False, p_per_channel=1),
        apply_probability=0.15,
    )
    a = ours(probe, only(p_brightness=DEFAULTS.p_brightness))[:, :, 0, 0, 0].numpy()
    b = theirs(probe, transform)[:, :, 0, 0, 0].numpy()
    assert_same_counts(a[:, 0] == 1, b[:, 0] == 1)
    assert_same_distribution(a[a != 1], b[b != 1])


def test_contrast_draws_have_nnunets_distribution():
    """Values +-0.5 and +-1 around a mean of 0: the +0.5 voxel moves to 0.5 * factor (within the range)."""
    probe = torch.tensor([-1.0, -0.5, 0.5, 1.0]).repeat(2, 4, 4, 1)
    transform = RandomTransform(
        ContrastTransform(BGContrast((0.75, 1.25)), preserve_range=True, synchronize_channels=False, p_per_channel=1),
        apply_probability=0.15,
    )
    a = (ours(probe, only(p_contrast=DEFAULTS.p_contrast))[:, :, 0, 0, 2] / 0.5).numpy()
    b = (theirs(probe, transform)[:, :, 0, 0, 2] / 0.5).numpy()
    assert_same_counts(a[:, 0] == 1, b[:, 0] == 1)
    assert_same_distribution(a[a != 1], b[b != 1])


def test_low_resolution_draws_have_nnunets_distribution():
    """The change of a fixed random volume is a function of the coarse size each channel drew."""
    probe = torch.randn(4, 16, 16, 16, generator=gen(6))
    transform = RandomTransform(
        SimulateLowResolutionTransform(
            scale=(0.5, 1),
            synchronize_channels=False,
            synchronize_axes=True,
            ignore_axes=None,
            allowed_channels=None,
            p_per_channel=0.5,
        ),
        apply_probability=0.25,
    )

    def changes(out: torch.Tensor) -> np.ndarray:
        return np.round((out - probe).square().mean((2, 3, 4)).numpy(), 4)

    a = changes(ours(probe, only(p_low_resolution=DEFAULTS.p_low_resolution)))
    b = changes(theirs(probe, transform))
    assert_same_counts(a, b)
    assert_same_counts((a > 0).sum(1), (b > 0).sum(1))  # 0.25 per sample, then 0.5 per channel
    assert 0.1 < (a > 0).mean() < 0.15


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_draws_have_nnunets_distribution(invert):
    """Values 0, 0.5 and 1: with the range mapped to [0, 1], gamma sends 0.5 to 0.5 ** gamma, and keeping
    mean and std is affine, so the middle voxel's position between the others recovers gamma."""
    sign = -1.0 if invert else 1.0
    probe = sign * torch.tensor([0.0, 0.5, 1.0]).repeat(2, 3, 3, 1)
    p = DEFAULTS.p_gamma_invert if invert else DEFAULTS.p_gamma
    transform = RandomTransform(
        GammaTransform(
            BGContrast((0.7, 1.5)),
            p_invert_image=float(invert),
            synchronize_channels=False,
            p_per_channel=1,
            p_retain_stats=1,
        ),
        apply_probability=p,
    )

    def gammas(out: torch.Tensor) -> np.ndarray:
        zero, half, one = (out[:, :, 0, 0, k].double() for k in range(3))
        return (torch.log((half - zero) / (one - zero)) / math.log(0.5)).numpy()

    cfg = only(p_gamma_invert=p) if invert else only(p_gamma=p)
    a, b = gammas(ours(probe, cfg)), gammas(theirs(probe, transform))
    changed_a, changed_b = np.abs(a - 1) > 1e-5, np.abs(b - 1) > 1e-5
    assert_same_counts(changed_a[:, 0], changed_b[:, 0])
    assert_same_distribution(a[changed_a], b[changed_b])
    assert 0.7 - 1e-3 < a.min() and a.max() < 1.5 + 1e-3


def test_mirror_draws_have_nnunets_distribution():
    probe = torch.arange(8.0).reshape(1, 2, 2, 2)
    a = ours(probe, only(p_mirror=DEFAULTS.p_mirror))[:, 0, 0, 0, 0].numpy()
    b = theirs(probe, MirrorTransform(allowed_axes=(0, 1, 2)))[:, 0, 0, 0, 0].numpy()
    assert_same_counts(a, b)
    assert len(set(a.tolist())) == 8
