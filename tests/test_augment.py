import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from scnas.config import task_settings
from scnas.data.augment import augment_batch, elastic_displacement, gaussian_blur, warp

DEFAULTS = task_settings({}).train.augmentation
OFF = dataclasses.replace(
    DEFAULTS,
    p_rotation=0.0,
    p_scaling=0.0,
    p_elastic=0.0,
    p_noise=0.0,
    p_blur=0.0,
    p_brightness=0.0,
    p_contrast=0.0,
    p_gamma=0.0,
    p_gamma_invert=0.0,
    p_mirror=0.0,
)


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


def test_all_probabilities_zero_leaves_the_batch_bit_identical():
    image, label = batch()
    out_image, out_label = augment_batch(image, label, OFF, gen())
    assert out_image.dtype == image.dtype and out_label.dtype == label.dtype
    assert torch.equal(out_image, image) and torch.equal(out_label, label)


def test_mirror_with_p_one_flips_image_and_label_over_all_axes():
    image, label = batch()
    out_image, out_label = augment_batch(image, label, cfg(p_mirror=1.0), gen())
    assert torch.equal(out_image, torch.flip(image, (2, 3, 4)))
    assert torch.equal(out_label, torch.flip(label, (1, 2, 3)))


@pytest.mark.parametrize("size", [9, 10])
def test_warp_by_90_degrees_about_x_equals_rot90(size):
    image, label = batch(b=1, c=2, shape=(7, size, size), classes=4)
    quarter = torch.tensor([[[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]])
    out_image, out_label = warp(image, label, quarter)
    torch.testing.assert_close(out_image, torch.rot90(image, -1, (3, 4)), atol=1e-5, rtol=0)
    assert torch.equal(out_label, torch.rot90(label, -1, (2, 3)))


def test_warp_displacement_shifts_by_whole_voxels():
    image, label = batch(b=1, c=1, shape=(8, 8, 8))
    shift = torch.zeros(1, 3, 8, 8, 8)
    shift[:, 1] = 2.0
    out_image, out_label = warp(image, label, torch.eye(3)[None], shift)
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


def test_spatial_transforms_keep_labels_integer_and_within_the_label_set():
    image, label = batch(b=3, c=1, shape=(16, 16, 16), classes=4)
    label[label == 2] = 7  # a sparse, non-contiguous label set {0, 1, 3, 7}
    config = cfg(p_rotation=1.0, p_scaling=1.0, p_elastic=1.0, elastic_sigma=(3.0, 4.0), elastic_alpha=(50.0, 100.0))
    _, out_label = augment_batch(image, label, config, gen())
    assert out_label.dtype == torch.int64
    assert set(out_label.unique().tolist()) <= {0, 1, 3, 7}


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
    first = augment_batch(image, label, config, gen(11))
    again = augment_batch(image, label, config, gen(11))
    other = augment_batch(image, label, config, gen(12))
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


def test_default_augmentation_runs_and_keeps_shapes_and_types():
    image, label = batch(b=4, c=2, shape=(16, 12, 20))
    out_image, out_label = augment_batch(image.half(), label, DEFAULTS, gen(9))
    assert out_image.shape == image.shape and out_image.dtype == torch.float16
    assert out_label.shape == label.shape and out_label.dtype == torch.int64
    assert torch.isfinite(out_image).all()
    assert set(out_label.unique().tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_gaussian_blur_matches_scipy(mode):
    rng = np.random.default_rng(0)
    volumes = rng.normal(size=(3, 5, 11, 9))
    sigma = np.array([0.5, 1.3, 2.2])  # 2.2 reaches 9 voxels, past the 5-voxel axis
    got = gaussian_blur(torch.tensor(volumes, dtype=torch.float64), torch.tensor(sigma), 2.2, mode)
    expected = np.stack([ndimage.gaussian_filter(v, s, mode=mode) for v, s in zip(volumes, sigma)])
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)


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
    y = ((x - low) / (high - low + 1e-7)) ** 2.0 * (high - low) + low
    y = (y - y.mean(axis=axes, keepdims=True)) / (y.std(axis=axes, keepdims=True) + 1e-8)
    y = y * x.std(axis=axes, keepdims=True) + x.mean(axis=axes, keepdims=True)
    np.testing.assert_allclose(out.numpy(), y * (-1 if inverted else 1), atol=1e-4)
    torch.testing.assert_close(out.mean((2, 3, 4)), image.mean((2, 3, 4)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std((2, 3, 4), correction=0), image.std((2, 3, 4), correction=0), atol=1e-4, rtol=0)


def test_blur_smooths_chosen_channels_like_scipy_and_leaves_the_others():
    image, label = batch(b=8, c=2, shape=(10, 10, 10))
    out, _ = augment_batch(image, label, cfg(p_blur=1.0, blur_sigma=(1.0, 1.0)), gen(2))
    blurred = 0
    for b in range(8):
        for c in range(2):
            if torch.equal(out[b, c], image[b, c]):
                continue
            expected = ndimage.gaussian_filter(image[b, c].double().numpy(), 1.0, mode="reflect")
            np.testing.assert_allclose(out[b, c].numpy(), expected, atol=1e-5)
            blurred += 1
    assert 0 < blurred < 16


def test_rejects_mismatched_inputs():
    image, label = batch()
    with pytest.raises(ValueError, match="label"):
        augment_batch(image, label[:, :-1], OFF, gen())
    with pytest.raises(ValueError, match="image"):
        augment_batch(image[0], label, OFF, gen())


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
