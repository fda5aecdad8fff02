"""Batched augmentation: behaviour of each transform against independent references (scipy, float64
numpy, exact geometric cases), the enlarged read region (no zero-filled voxels at the range limits),
labels, reproducibility, and the sampler's regions. Comparisons with batchgeneratorsv2 itself are in
test_augment_vs_batchgenerators.py."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from conftest import NO_AUG
from scipy import ndimage

from scnas.config import task_settings
from scnas.data.augment import (
    augment_batch,
    centre_crop,
    elastic_displacement,
    gaussian_blur,
    max_rotated_extent,
    rotation_matrices,
    spatial_read_size,
    warp,
)
from scnas.data.sampler import PatchDraw, PatchSampler
from scnas.data.store import PreprocessedCase

DEFAULTS = task_settings({}).train.augmentation
OFF = dataclasses.replace(DEFAULTS, **NO_AUG)


def cfg(**changes):
    return dataclasses.replace(OFF, **changes)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b=2, c=2, shape=(12, 10, 14), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, *shape, generator=g), torch.randint(0, classes, (b, *shape), generator=g)


def centred_radius(shape) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).square().sum(0).sqrt()


def test_every_probability_zero_leaves_the_batch_bit_identical():
    assert {f.name for f in dataclasses.fields(DEFAULTS) if f.name.startswith("p_")} == set(NO_AUG)
    assert "p_low_resolution" in NO_AUG
    image, label = batch()
    out_image, out_label = augment_batch(image, label, OFF, gen(), image.shape[2:])
    assert out_image.dtype == image.dtype and out_label.dtype == label.dtype
    assert torch.equal(out_image, image) and torch.equal(out_label, label)
    assert spatial_read_size((16, 12, 8), OFF) == (16, 12, 8)


def test_defaults_are_nnunet_v2s():
    d = DEFAULTS
    assert (d.p_rotation, d.rotation_deg, d.p_scaling, d.scaling, d.p_elastic) == (0.2, 30, 0.2, (0.7, 1.4), 0.0)
    assert (d.p_noise, d.noise_variance, d.p_blur, d.blur_sigma) == (0.1, (0.0, 0.1), 0.2, (0.5, 1.0))
    assert (d.p_brightness, d.brightness, d.p_contrast, d.contrast) == (0.15, (0.75, 1.25), 0.15, (0.75, 1.25))
    assert (d.p_low_resolution, d.low_resolution_scale) == (0.25, (0.5, 1.0))
    assert (d.p_gamma_invert, d.p_gamma, d.gamma, d.p_mirror) == (0.1, 0.3, (0.7, 1.5), 0.5)


def test_mirror_with_p_one_flips_image_and_label_over_all_axes():
    image, label = batch()
    out_image, out_label = augment_batch(image, label, cfg(p_mirror=1.0), gen())
    assert torch.equal(out_image, torch.flip(image, (2, 3, 4)))
    assert torch.equal(out_label, torch.flip(label, (1, 2, 3)))


@pytest.mark.parametrize("size", [9, 10])
def test_warp_by_90_degrees_about_x_equals_rot90(size):
    image, label = batch(b=1, c=2, shape=(7, size, size), classes=4)
    quarter = torch.tensor([[[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]])
    out_image, out_label = warp(image, label, quarter, image.shape[2:])
    torch.testing.assert_close(out_image, torch.rot90(image, -1, (3, 4)), atol=1e-5, rtol=0)
    assert torch.equal(out_label, torch.rot90(label, -1, (2, 3)))


def test_identity_warp_of_a_region_is_its_centre_crop():
    image, label = batch(b=2, c=1, shape=(15, 12, 13), classes=4)
    out_image, out_label = warp(image, label, torch.eye(3).expand(2, 3, 3), (11, 8, 9))
    torch.testing.assert_close(out_image, centre_crop(image, (11, 8, 9)), atol=1e-5, rtol=0)
    assert torch.equal(out_label, centre_crop(label, (11, 8, 9)))
    odd = (9, 8, 7)  # other parities than the region's: the crop starts at size // 2 - patch // 2
    assert torch.equal(centre_crop(label, odd), label[:, 3:12, 2:10, 3:10])


def test_warp_displacement_shifts_by_whole_voxels():
    image, label = batch(b=1, c=1, shape=(8, 8, 8))
    shift = torch.zeros(1, 3, 8, 8, 8)
    shift[:, 1] = 2.0
    out_image, out_label = warp(image, label, torch.eye(3)[None], (8, 8, 8), shift)
    torch.testing.assert_close(out_image[:, :, :, :6], image[:, :, :, 2:], atol=1e-5, rtol=0)
    assert out_image[:, :, :, 6:].abs().max() < 1e-5
    assert torch.equal(out_label[:, :, :6], label[:, :, 2:])
    assert (out_label[:, :, 6:] == 0).all()


def test_rotation_keeps_a_centred_radially_symmetric_blob():
    shape = (21, 21, 21)
    radius = centred_radius(shape)
    image = torch.exp(-radius.square() / (2 * 4.0**2)).expand(4, 1, *shape).clone()
    label = (radius < 6).long().expand(4, *shape).clone()
    out_image, out_label = augment_batch(image, label, cfg(p_rotation=1.0, rotation_deg=180.0), gen(3))
    assert not torch.equal(out_image, image)
    inside = radius < 10  # stays inside the volume under any rotation
    torch.testing.assert_close(out_image[:, :, inside], image[:, :, inside], atol=0.03, rtol=0)
    assert set(out_label.unique().tolist()) == {0, 1}
    dice = 2 * (out_label * label).sum((1, 2, 3)) / (out_label.sum((1, 2, 3)) + label.sum((1, 2, 3)))
    assert (dice > 0.9).all()


def test_scaling_by_two_samples_twice_as_far_from_the_centre():
    shape = (25, 25, 25)
    radius = centred_radius(shape)
    image = torch.exp(-radius.square() / (2 * 6.0**2)).expand(1, 1, *shape).clone()
    label = (radius < 8).long().expand(1, *shape).clone()
    out_image, out_label = augment_batch(image, label, cfg(p_scaling=1.0, scaling=(2.0, 2.0)), gen())
    inside = radius < 6  # sampled from inside the volume
    expected = torch.exp(-(2 * radius).square() / (2 * 6.0**2))
    torch.testing.assert_close(out_image[0, 0][inside], expected[inside], atol=0.02, rtol=0)
    assert out_image[0, 0][radius > 12.5 * math.sqrt(3) / 2].abs().max() < 1e-6
    assert (out_label[0] != (radius < 4).long()).float().mean() < 0.01


def test_labels_stay_integer_in_the_label_set_and_padding_becomes_background():
    image, label = batch(b=6, c=1, shape=(24, 24, 24), classes=4)
    label[label == 2] = 7  # a sparse, non-contiguous label set {0, 1, 3, 7}
    label[:, :5] = -1  # nnU-Net's padding outside the scan
    spin = cfg(p_rotation=1.0, p_scaling=1.0, p_elastic=1.0, elastic_sigma=(3.0, 4.0), elastic_alpha=(50.0, 100.0))
    for config in (spin, OFF):
        _, out_label = augment_batch(image, label, config, gen(), (12, 12, 12))
        assert out_label.dtype == torch.int64
        assert set(out_label.unique().tolist()) <= {0, 1, 3, 7}
    _, cropped = augment_batch(image, label, OFF, gen(), (24, 24, 24))
    assert torch.equal(cropped, label.clamp_min(0))


def test_image_and_label_stay_aligned_after_spatial_transforms():
    shape = (20, 20, 20)
    label = torch.zeros(2, *shape, dtype=torch.long)
    label[:, 4:14, 5:16, 3:12] = 1
    label[:, 8:12, 8:12, 6:10] = 2
    image = label.unsqueeze(1).float()
    config = cfg(p_rotation=1.0, p_scaling=1.0, p_elastic=1.0, elastic_sigma=(4.0, 5.0), elastic_alpha=(200.0, 300.0))
    out_image, out_label = augment_batch(image, label, config, gen(5))
    assert not torch.equal(out_label, label)
    homogeneous = (out_image[:, 0] - out_image[:, 0].round()).abs() < 1e-4
    assert homogeneous.float().mean() > 0.5
    assert torch.equal(out_image[:, 0].round().long()[homogeneous], out_label[homogeneous])


def test_same_seed_reproduces_and_another_seed_differs():
    image, label = batch(b=4)
    config = dataclasses.replace(DEFAULTS, p_rotation=0.5, p_elastic=0.5, elastic_sigma=(3.0, 4.0))
    first = augment_batch(image, label, config, gen(11), (8, 8, 8))
    again = augment_batch(image, label, config, gen(11), (8, 8, 8))
    other = augment_batch(image, label, config, gen(12), (8, 8, 8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_resumes_from_the_generator_state():
    image, label = batch(b=3)
    g = gen(4)
    augment_batch(image, label, DEFAULTS, g)
    state = g.get_state()
    second = augment_batch(image, label, DEFAULTS, g)
    resumed = augment_batch(image, label, DEFAULTS, torch.Generator().set_state(state))
    assert torch.equal(second[0], resumed[0]) and torch.equal(second[1], resumed[1])


def test_samples_of_a_batch_get_different_transforms():
    one_image, one_label = batch(b=1, c=1, shape=(12, 12, 12))
    image, label = one_image.expand(4, -1, -1, -1, -1).clone(), one_label.expand(4, -1, -1, -1).clone()
    for config in (cfg(p_rotation=1.0), cfg(p_noise=1.0), cfg(p_gamma=1.0), cfg(p_contrast=1.0)):
        out, _ = augment_batch(image, label, config, gen(6))
        for i in range(4):
            for j in range(i + 1, 4):
                assert not torch.equal(out[i], out[j])


def test_each_transform_is_applied_per_sample_and_skipped_samples_stay_bit_identical():
    image, label = batch(b=64, c=1, shape=(5, 5, 5))
    out_image, out_label = augment_batch(image, label, cfg(p_rotation=0.5), gen(8))
    changed = [not torch.equal(out_image[i], image[i]) for i in range(64)]
    assert 16 <= sum(changed) <= 48
    for i in range(64):
        if not changed[i]:
            assert torch.equal(out_label[i], label[i])


TRANSFORMS_WITH_A_COIN = [
    "p_rotation",
    "p_scaling",
    "p_noise",
    "p_blur",
    "p_brightness",
    "p_contrast",
    "p_low_resolution",
    "p_gamma_invert",
    "p_gamma",
]


@pytest.mark.parametrize("name", TRANSFORMS_WITH_A_COIN)
@pytest.mark.parametrize("channels, dtype", [(1, torch.float32), (2, torch.float32), (2, torch.float64)])
def test_samples_that_draw_a_transform_get_what_the_whole_batch_would_and_the_others_stay_untouched(
    name, channels, dtype
):
    """With p = 1/2 and p = 1 the generator gives the same coins' uniforms and the same parameters, so each
    sample (channel, for blur and low resolution) that draws the transform at p = 1/2 must equal the p = 1 result
    bit for bit, whichever other samples drew it, and every other one must equal its input's centre crop."""
    patch = (9, 8, 10)
    region = spatial_read_size(patch, DEFAULTS)
    image, label = batch(b=8, c=channels, shape=region, classes=4, seed=3)
    image = image.to(dtype)
    label[:, :2] = -1
    half = augment_batch(image, label, cfg(**{name: 0.5}), gen(21), patch)
    full = augment_batch(image, label, cfg(**{name: 1.0}), gen(21), patch)
    crop, crop_label = centre_crop(image, patch), centre_crop(label, patch).clamp_min(0)
    drawn = untouched = 0
    per_channel = name in ("p_blur", "p_low_resolution")
    for i in range(8):
        units = [(i, c) for c in range(channels)] if per_channel else [(i, slice(None))]
        for index in units:
            if torch.equal(half[0][index], crop[index]):
                untouched += 1
                assert torch.equal(half[1][i], crop_label[i]) or per_channel
            else:
                drawn += 1
                assert torch.equal(half[0][index], full[0][index])
                assert torch.equal(half[1][i], full[1][i])
    assert drawn and untouched


def test_the_callers_tensors_are_never_written():
    """Transforms work in place on the batch's own copy: the input stays as it was, also where the patch is the
    whole region (the centre crop is then the input itself)."""
    image, label = batch(b=4, c=2, shape=(10, 9, 8), classes=4, seed=5)
    label[:, 0] = -1
    everything = dataclasses.replace(DEFAULTS, **{f: 1.0 for f in TRANSFORMS_WITH_A_COIN}, p_mirror=0.5)
    for config, seed in itertools.product((DEFAULTS, everything, cfg(p_mirror=1.0)), range(3)):
        before = image.clone(), label.clone()
        out_image, out_label = augment_batch(image, label, config, gen(seed))
        assert torch.equal(image, before[0]) and torch.equal(label, before[1])
        assert out_image.data_ptr() != image.data_ptr() or torch.equal(out_image, image)


def test_results_do_not_depend_on_earlier_calls():
    """Scratch buffers are kept between calls: a call after others of other shapes gives what a first call gives."""
    image, label = batch(b=3, c=1, shape=(14, 13, 12), classes=3, seed=6)
    spin = cfg(p_rotation=1.0, p_scaling=1.0, p_noise=1.0)
    first = augment_batch(image, label, spin, gen(7), (10, 9, 8))
    for shape in ((20, 22, 18), (8, 8, 8)):
        other_image, other_label = batch(b=5, c=2, shape=shape, classes=6, seed=8)
        augment_batch(other_image, other_label, spin, gen(9))
    again = augment_batch(image, label, spin, gen(7), (10, 9, 8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def reference_label_warp(label: torch.Tensor, matrix: torch.Tensor, patch) -> torch.Tensor:
    """batchgenerators' label resampling, written out directly: per label present (and 0), grid_sample of its
    indicator x 1000 (outside the region label 0's indicator is 1), as float16; the first label with the top
    score; the nearest neighbour's label wherever its own score ties for the top."""
    region = label.shape[1:]
    offsets = [torch.linspace((1 - p) / 2, (p - 1) / 2, p) for p in patch]
    coords = torch.stack(torch.meshgrid(*offsets, indexing="ij"), dim=-1).reshape(1, -1, 3).expand(len(label), -1, 3)
    source = torch.matmul(coords, matrix.float().transpose(1, 2)).reshape(len(label), *patch, 3)
    grid = (source / torch.tensor([s / 2 for s in region])).flip(-1)

    def sample(volume, mode):
        return torch.nn.functional.grid_sample(volume[:, None], grid, mode=mode, align_corners=False)[:, 0]

    nearest = sample(label.float(), "nearest").long()
    classes = sorted(set(label.unique().tolist()) | {0})
    scores = torch.stack(
        [
            (
                sample((label == u).float() * 1000 - 1000, "bilinear") + 1000
                if u == 0
                else sample((label == u).float() * 1000, "bilinear")
            ).half()
            for u in classes
        ]
    )
    best = scores.max(0).values
    first = torch.tensor(classes)[(scores == best).float().argmax(0)]
    own = scores.gather(0, torch.searchsorted(torch.tensor(classes), nearest)[None])[0]
    return torch.where(own == best, nearest, first)


@pytest.mark.parametrize("seed", range(3))
def test_label_resampling_matches_a_direct_reference_with_ties_padding_and_reaching_outside(seed):
    """Scalings by 1/2 and 3/2 put many voxels exactly between labels (ties, settled by the nearest neighbour);
    the region is small enough that some grids reach outside it; labels include -1 and a gap (no 2)."""
    g = gen(seed)
    region, patch = (14, 13, 15), (12, 12, 12)
    label = torch.randint(-1, 4, (8, *region), generator=g)
    label[label == 2] = 5
    matrices = torch.cat(
        [
            torch.stack([torch.eye(3) * 0.5, torch.eye(3) * 1.5, torch.diag(torch.tensor([0.5, 1.0, 1.5]))]),
            rotation_matrices(torch.rand(5, 3, generator=g) * 2 - 1) * (0.7 + 0.6 * torch.rand(5, 1, 1, generator=g)),
        ]
    )
    image = torch.randn(8, 1, *region, generator=g)
    _, got = warp(image, label, matrices, patch)
    assert torch.equal(got, reference_label_warp(label, matrices, patch))


def test_labels_beyond_float32s_integers_are_rejected():
    image, label = batch(b=2, c=1, shape=(8, 8, 8))
    label[0, 0, 0, 0] = 1 << 25
    with pytest.raises(ValueError, match="not class indices"):
        augment_batch(image, label, cfg(p_rotation=1.0), gen())


def test_default_augmentation_crops_regions_to_patches_and_keeps_types():
    patch = (10, 8, 12)
    region = spatial_read_size(patch, DEFAULTS)
    image, label = batch(b=4, c=2, shape=region)
    out_image, out_label = augment_batch(image.half(), label, DEFAULTS, gen(9), patch)
    assert out_image.shape == (4, 2, *patch) and out_image.dtype == torch.float16
    assert out_label.shape == (4, *patch) and out_label.dtype == torch.int64
    assert torch.isfinite(out_image).all()
    assert set(out_label.unique().tolist()) <= {0, 1, 2}


def test_gaussian_blur_matches_scipy_with_the_same_kernels():
    """batchgenerators' kernel lengths (odd, nearest 6 sigma + 0.5) and mirrored borders, as scipy's 'mirror'."""
    rng = np.random.default_rng(0)
    volumes = rng.normal(size=(3, 5, 11, 9))
    sigma = np.array([[0.5, 1.3, 2.2], [1.0, 0.75, 0.6], [2.0, 0.5, 1.7]])  # 2.2: 7 voxels, past the 5-voxel axis
    got = gaussian_blur(torch.tensor(volumes), torch.tensor(sigma), 2.2)

    def radius(s: float) -> int:
        n = 6 * s + 0.5
        r = round(n)
        return (r if r % 2 else (r + 1 if n - r >= 0 else r - 1)) // 2

    expected = volumes.copy()
    for i, axis in itertools.product(range(3), range(3)):
        s = sigma[i, axis]
        expected[i] = ndimage.gaussian_filter1d(expected[i], s, axis=axis, mode="mirror", radius=radius(s))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_elastic_field_has_the_statistics_of_batchgenerators_full_resolution_field():
    shape, sigma, alpha, n = (48, 48, 48), 6.0, 100.0, 12
    field = elastic_displacement(
        torch.Size(shape), torch.full((n,), alpha), torch.full((n,), sigma), (sigma, sigma), gen(1)
    )
    assert field.shape == (n, 3, *shape)
    rng = np.random.default_rng(1)
    reference = np.stack(
        [ndimage.gaussian_filter(rng.uniform(-1, 1, shape), sigma, mode="constant") * alpha for _ in range(3 * n)]
    )
    assert field.std().item() == pytest.approx(reference.std(), rel=0.1)
    assert field[:, :, 12:36, 12:36, 12:36].std().item() == pytest.approx(
        reference[:, 12:36, 12:36, 12:36].std(), rel=0.15
    )
    smooth = (field[:, :, 1:] - field[:, :, :-1]).abs().mean() / field.abs().mean()
    assert smooth < 0.2


def test_noise_uses_the_drawn_value_as_std_like_batchgenerators():
    image = torch.zeros(2, 1, 24, 24, 24)
    out, _ = augment_batch(
        image, torch.zeros(2, 24, 24, 24, dtype=torch.long), cfg(p_noise=1.0, noise_variance=(0.25, 0.25)), gen()
    )
    assert out.std().item() == pytest.approx(0.25, rel=0.02)
    assert abs(out.mean().item()) < 0.01


def test_brightness_multiplies_each_channel():
    image, label = batch()
    out, _ = augment_batch(image, label, cfg(p_brightness=1.0, brightness=(0.5, 0.5)), gen())
    torch.testing.assert_close(out, image * 0.5, atol=0, rtol=0)
    out, _ = augment_batch(image, label, cfg(p_brightness=1.0, brightness=(0.5, 2.0)), gen())
    ratio = (out / image).flatten(2)
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio), atol=1e-5, rtol=1e-5)
    assert ratio[0, 0, 0] != ratio[0, 1, 0]


def test_contrast_matches_float64_reference():
    image, label = batch()
    out, _ = augment_batch(image, label, cfg(p_contrast=1.0, contrast=(1.25, 1.25)), gen())
    x = image.double().numpy()
    mean = x.mean(axis=(2, 3, 4), keepdims=True)
    expected = np.clip(
        (x - mean) * 1.25 + mean, x.min(axis=(2, 3, 4), keepdims=True), x.max(axis=(2, 3, 4), keepdims=True)
    )
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("inverted", [False, True])
def test_gamma_matches_float64_reference(inverted):
    image, label = batch()
    config = cfg(p_gamma_invert=1.0, gamma=(2.0, 2.0)) if inverted else cfg(p_gamma=1.0, gamma=(2.0, 2.0))
    out, _ = augment_batch(image, label, config, gen())
    x = image.double().numpy() * (-1 if inverted else 1)
    axes = (2, 3, 4)
    low, high = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    y = ((x - low) / (high - low)) ** 2.0 * (high - low) + low
    y = (y - y.mean(axis=axes, keepdims=True)) / y.std(axis=axes, keepdims=True)
    y = y * x.std(axis=axes, keepdims=True) + x.mean(axis=axes, keepdims=True)
    np.testing.assert_allclose(out.numpy(), y * (-1 if inverted else 1), atol=1e-4)
    torch.testing.assert_close(out.mean((2, 3, 4)), image.mean((2, 3, 4)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std((2, 3, 4)), image.std((2, 3, 4)), atol=1e-4, rtol=0)


def test_low_resolution_keeps_coarse_blocks_and_smooths_between_them():
    """At scale 1/2 on a 1-voxel checkerboard along x, nearest-exact keeps every other slab (the odd ones),
    so a constant comes back; about half the channels are chosen; at scale 1 nothing changes."""
    image = torch.zeros(1, 8, 8, 6, 6)
    image[:, :, 1::2] = 1.0
    label = torch.zeros(1, 8, 6, 6, dtype=torch.long)
    out, _ = augment_batch(image, label, cfg(p_low_resolution=1.0, low_resolution_scale=(0.5, 0.5)), gen(1))
    changed = [not torch.equal(out[0, c], image[0, c]) for c in range(8)]
    assert 0 < sum(changed) < 8
    for c in range(8):
        if changed[c]:
            torch.testing.assert_close(out[0, c], torch.ones(8, 6, 6), atol=1e-6, rtol=0)
    same, _ = augment_batch(image, label, cfg(p_low_resolution=1.0, low_resolution_scale=(1.0, 1.0)), gen(1))
    torch.testing.assert_close(same, image, atol=1e-6, rtol=0)


def test_blur_smooths_chosen_channels_like_scipy_and_leaves_the_others():
    image, label = batch(b=8, c=2, shape=(10, 10, 10))
    out, _ = augment_batch(image, label, cfg(p_blur=1.0, blur_sigma=(1.0, 1.0)), gen(2))
    blurred = 0
    for b in range(8):
        for c in range(2):
            if torch.equal(out[b, c], image[b, c]):
                continue
            expected = ndimage.gaussian_filter(image[b, c].double().numpy(), 1.0, mode="mirror", radius=3)
            np.testing.assert_allclose(out[b, c].numpy(), expected, atol=1e-5)
            blurred += 1
    assert 0 < blurred < 16


def test_rejects_mismatched_inputs():
    image, label = batch()
    with pytest.raises(ValueError, match="label"):
        augment_batch(image, label[:, :-1], OFF, gen())
    with pytest.raises(ValueError, match="image"):
        augment_batch(image[0], label, OFF, gen())
    with pytest.raises(ValueError, match="does not fit"):
        augment_batch(image, label, OFF, gen(), (16, 8, 8))


def test_rotation_angles_stay_within_the_configured_range():
    shape = (15, 15, 15)
    line = torch.zeros(1, 1, *shape)
    line[0, 0, 7, 7, :] = 1.0  # a rod along z through the centre
    image, label = line.expand(32, -1, -1, -1, -1).clone(), torch.zeros(32, *shape, dtype=torch.long)
    out, _ = augment_batch(image, label, cfg(p_rotation=1.0, rotation_deg=10.0), gen(7))
    # a rod tilted by at most 10 degrees about x and y stays within tan(10 deg) * 7 + 1 voxels of the axis
    reach = math.tan(math.radians(10.0)) * 7 + 1
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    xx, yy, _ = torch.meshgrid(*axes, indexing="ij")
    off_axis = (xx.square() + yy.square()).sqrt() > reach * math.sqrt(2)
    assert out[:, 0][:, off_axis].abs().max() < 1e-6


# --- the enlarged read region ---------------------------------------------------------------------


def dense_extent(half, theta_deg: float, steps: int = 25) -> np.ndarray:
    """A lower bound of the true extent: the maximum over a dense grid of angles, float64."""
    ticks = torch.linspace(-math.radians(theta_deg), math.radians(theta_deg), steps, dtype=torch.float64)
    angles = torch.cartesian_prod(ticks, ticks, ticks)
    return (rotation_matrices(angles).abs() @ torch.tensor(half, dtype=torch.float64)).amax(0).numpy()


def worst_matrices(patch, theta_deg: float, scale: float) -> torch.Tensor:
    """Rotations at the corners of the angle range and the dense-grid worst case of each axis, scaled."""
    t = math.radians(theta_deg)
    corners = torch.tensor(list(itertools.product((-t, t), repeat=3)), dtype=torch.float64)
    ticks = torch.linspace(-t, t, 25, dtype=torch.float64)
    grid = torch.cartesian_prod(ticks, ticks, ticks)
    half = torch.tensor([(p - 1) / 2 for p in patch], dtype=torch.float64)
    worst = grid[(rotation_matrices(grid).abs() @ half).argmax(0)]
    return rotation_matrices(torch.cat([corners, worst])) * scale


@pytest.mark.parametrize("patch", [(16, 16, 16), (20, 12, 9)])
def test_rotated_and_scaled_patches_at_the_range_limits_have_no_zero_filled_voxels(patch):
    region = spatial_read_size(patch, DEFAULTS)
    assert all(r % 2 == p % 2 and r >= p for r, p in zip(region, patch))
    g = gen(10)
    image = 1 + torch.rand(1, 2, *region, generator=g)
    label = torch.randint(1, 3, (1, *region), generator=g)
    rotated = worst_matrices(patch, DEFAULTS.rotation_deg, 1.0)
    scaled = torch.stack([torch.eye(3, dtype=torch.float64) * s for s in DEFAULTS.scaling])
    for matrices in (rotated, scaled):
        n = len(matrices)
        out_image, out_label = warp(image.expand(n, -1, -1, -1, -1), label.expand(n, -1, -1, -1), matrices, patch)
        assert out_image.min() > 1 - 1e-4 and out_label.min() >= 1
    many_images, many_labels = image.expand(64, -1, -1, -1, -1), label.expand(64, -1, -1, -1)
    for config in (cfg(p_rotation=1.0), cfg(p_scaling=1.0)):
        out_image, out_label = augment_batch(many_images, many_labels, config, g, patch)
        assert out_image.min() > 1 - 1e-4 and out_label.min() >= 1


def test_the_read_region_is_at_least_nnunets():
    nnunet = pytest.importorskip("nnunetv2.training.data_augmentation.compute_initial_patch_size")
    t = math.radians(DEFAULTS.rotation_deg)
    for patch in ((128, 128, 128), (40, 56, 40)):
        theirs = nnunet.get_patch_size(list(patch), (-t, t), (-t, t), (-t, t), (0.85, 1.25))
        ours = spatial_read_size(patch, DEFAULTS)
        assert all(o >= n for o, n in zip(ours, theirs)), (ours, theirs)
        assert np.prod(ours) <= 1.5 * np.prod(theirs)


def test_clipped_elastic_fields_stay_inside_the_region_too():
    patch = (12, 12, 12)
    config = cfg(p_rotation=1.0, p_elastic=1.0, elastic_alpha=(100.0, 100.0), elastic_sigma=(3.0, 3.0))
    region = spatial_read_size(patch, config)
    assert all(r > q for r, q in zip(region, spatial_read_size(patch, cfg(p_rotation=1.0))))
    image = 1 + torch.rand(8, 1, *region, generator=gen(11))
    out, _ = augment_batch(image, torch.ones(8, *region, dtype=torch.long), config, gen(12), patch)
    assert out.min() > 1 - 1e-4


@pytest.mark.parametrize("theta", [5.0, 30.0, 90.0])
def test_read_size_is_a_tight_bound_of_the_transformed_patch(theta):
    patch = (24, 16, 10)
    config = cfg(p_rotation=1.0, rotation_deg=theta, p_scaling=1.0)
    half = [(p - 1) / 2 for p in patch]
    lower = np.maximum(1.4 * np.asarray(half), dense_extent(half, theta))
    region = np.array(spatial_read_size(patch, config))
    assert (region >= 2 * lower + 1).all()
    assert (region <= 2 * lower + 1 + 2 + 2 * 0.05 + 0.5).all()  # parity step, EXTENT_TOL, grid slack
    np.testing.assert_allclose(max_rotated_extent(half, 0.0), half)
    assert spatial_read_size(patch, cfg(p_scaling=1.0, scaling=(0.5, 0.9))) == patch


# --- the sampler's regions ------------------------------------------------------------------------


def synthetic_case(shape=(20, 18, 16)) -> PreprocessedCase:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    label = rng.integers(0, 3, size=shape).astype(np.int16)
    return PreprocessedCase("case", image, label, {}, {1: np.argwhere(label == 1)[:50]})


def test_sampler_regions_are_centred_on_the_patch_and_padded_as_nnunet_pads():
    case = synthetic_case()
    sampler = PatchSampler([case], (8, 8, 8), foreground_fraction=0.5)
    draw = PatchDraw(0, (1, 6, 4))
    patch_image, patch_label = sampler.read(draw)
    image, label = sampler.read(draw, (15, 13, 12), pad_label=-1)
    assert image.shape == (2, 15, 13, 12) and label.shape == (15, 13, 12)
    np.testing.assert_array_equal(centre_crop(torch.from_numpy(image), (8, 8, 8)).numpy(), patch_image)
    np.testing.assert_array_equal(centre_crop(torch.from_numpy(label), (8, 8, 8)).numpy(), patch_label)
    # the region starts 15 // 2 - 8 // 2 = 3 voxels before the patch, which starts at x = 1: two outside
    assert (label[:2] == -1).all() and (image[:, :2] == 0).all()
    np.testing.assert_array_equal(label[2:], case.label[: 15 - 2, 6 - 2 : 6 - 2 + 13, 4 - 2 : 4 - 2 + 12])


def test_sampler_regions_larger_than_the_case_are_padded_on_every_side_like_np_pad():
    case = synthetic_case((7, 6, 5))
    sampler = PatchSampler([case], (4, 4, 4), foreground_fraction=0.0)
    size, start = (15, 12, 11), (1, 0, 2)
    image, label = sampler.read(PatchDraw(0, start), size, pad_label=-1)
    assert image.dtype == np.float32 and label.dtype == np.int16
    origin = [s - (r // 2 - 2) for s, r in zip(start, size)]
    widths = [(-o, o + r - n) for o, r, n in zip(origin, size, case.label.shape)]
    assert all(before > 0 and after > 0 for before, after in widths)
    np.testing.assert_array_equal(image, np.pad(case.image, [(0, 0), *widths], constant_values=0))
    np.testing.assert_array_equal(label, np.pad(case.label, widths, constant_values=-1))
    ((batch_image, batch_label),) = sampler.batches(seed=2, epoch=0, iterations=1, global_batch=2, read_size=size)
    rng = np.random.default_rng([2, 0, 0])
    for i in range(2):
        expected_image, expected_label = sampler.read(sampler.draw(rng), size, pad_label=-1)
        np.testing.assert_array_equal(batch_image[i], expected_image)
        np.testing.assert_array_equal(batch_label[i], expected_label)


def test_augmenting_sampled_regions_without_spatial_transforms_gives_the_patches():
    case = synthetic_case()
    sampler = PatchSampler([case], (8, 8, 8), foreground_fraction=0.5)
    region = spatial_read_size((8, 8, 8), DEFAULTS)
    ((image, label),) = sampler.batches(seed=1, epoch=0, iterations=1, global_batch=4, read_size=region)
    assert image.shape == (4, 2, *region) and (label == -1).any()
    out_image, out_label = augment_batch(torch.from_numpy(image), torch.from_numpy(label), OFF, gen(), (8, 8, 8))
    rng = np.random.default_rng([1, 0, 0])
    for i in range(4):
        expected_image, expected_label = sampler.read(sampler.draw(rng))
        np.testing.assert_array_equal(out_image[i].numpy(), expected_image)
        np.testing.assert_array_equal(out_label[i].numpy(), expected_label)
