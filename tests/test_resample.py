"""Resampling against SimpleITK's ResampleImageFilter on the equivalent physical output grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from scnas.data.resample import effective_spacing, resample_image, resample_label, resample_mask, target_shape

# nibabel world coordinates are RAS, ITK's are LPS: x and y change sign.
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def smooth_image(shape, seed=0):
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    out = np.zeros(shape)
    for _ in range(4):
        k, phase = rng.uniform(0.5, 3.0, 3), rng.uniform(0, 2 * np.pi, 3)
        out += rng.normal() * np.prod([np.cos(2 * np.pi * k[i] * axes[i] + phase[i]) for i in range(3)], axis=0)
    return out.astype(np.float32)


def sitk_resample(tmp_path, array, affine, new_shape, interpolator, pixel=np.float32):
    """Resample with SimpleITK after a NIfTI round trip; output grid = our grid placed in LPS space."""
    path = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(array.astype(pixel), affine), str(path))
    image = sitk.ReadImage(str(path))
    shape = np.array(array.shape)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    new_spacing = np.array(effective_spacing(shape, spacing, new_shape))
    first_centre = 0.5 * new_spacing / spacing - 0.5  # continuous input index of output voxel 0
    origin_ras = affine[:3, :3] @ first_centre + affine[:3, 3]
    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin((origin_ras * RAS_TO_LPS).tolist())
    f.SetOutputSpacing(new_spacing.tolist())
    f.SetOutputDirection(image.GetDirection())
    f.SetSize([int(n) for n in new_shape])
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(np.nan if pixel != np.uint8 else 255)
    return sitk.GetArrayFromImage(f.Execute(image)).transpose(2, 1, 0)


AFFINES = {
    "ras_aniso": np.diag([0.8, 1.1, 2.5, 1.0]),
    "lps_aniso": np.diag([-1.2, -0.9, 1.7, 1.0]),
    "permuted": np.array([[0, 0, -1.6, 5.0], [0.7, 0, 0, -3.0], [0, -1.3, 0, 2.0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("target", [(1.0, 1.0, 1.0), (0.6, 1.9, 1.1)])
def test_image_matches_simpleitk(tmp_path, name, target):
    affine = AFFINES[name].copy()
    affine[:3, 3] += [12.5, -7.0, 3.25]
    shape = (23, 19, 11)
    image = smooth_image(shape)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    new_shape = target_shape(shape, spacing, target)
    ours = resample_image(image[None], new_shape)[0]
    ref = sitk_resample(tmp_path, image, affine, new_shape, sitk.sitkLinear)
    assert ours.shape == tuple(new_shape) == ref.shape
    assert not np.isnan(ref).any()  # every output centre lies inside the input's physical box
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_physical_extent_is_preserved():
    shape, spacing = (240, 240, 155), (1.0, 1.0, 1.0)
    for target in [(0.7, 0.7, 0.7), (1.3, 0.45, 2.2)]:
        new = target_shape(shape, spacing, target)
        eff = effective_spacing(shape, spacing, new)
        extent = np.array(shape) * spacing
        np.testing.assert_allclose(np.array(new) * eff, extent, rtol=1e-12)
        assert np.all(np.abs(np.array(new) * target - extent) <= np.array(target) / 2 + 1e-9)
    assert target_shape((240, 240, 155), (1, 1, 1), (0.7, 0.7, 0.7)) == (343, 343, 221)
    assert target_shape((3, 3, 3), (1, 1, 1), (10, 10, 10)) == (1, 1, 1)


def blob_labels(shape, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    label = np.zeros(shape, dtype=np.int16)
    for value in (1, 2, 4):
        centre, radius = rng.uniform(0.25, 0.75, 3) * shape, rng.uniform(3, 6)
        label[np.linalg.norm(grid - centre, axis=-1) < radius] = value
    return label


@pytest.mark.parametrize("new_shape", [(31, 17, 26), (13, 40, 9)])
@pytest.mark.parametrize("swap", [False, True], ids=["background0", "background4"])
def test_label_linear_is_argmax_of_interpolated_one_hot(tmp_path, new_shape, swap):
    """Reference: SimpleITK linear resampling of each label's one-hot map (float64), then argmax."""
    label = blob_labels((24, 28, 18))
    if swap:  # the most frequent label is not the smallest one
        label = np.choose(label, [4, 1, 2, 3, 0]).astype(np.int16)
    affine = AFFINES["lps_aniso"]
    ours = resample_label(label, new_shape, "linear")
    values = np.unique(label)
    probs = np.stack(
        [
            sitk_resample(
                tmp_path, (label == v).astype(np.float64), affine, new_shape, sitk.sitkLinear, pixel=np.float64
            )
            for v in values
        ]
    )
    ref = values[np.argmax(probs, axis=0)]
    top2 = np.sort(probs, axis=0)[-2:]
    decided = top2[1] - top2[0] > 1e-5
    assert ours.dtype == np.int16 and ours.shape == tuple(new_shape)
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(ours[decided], ref[decided])
    assert set(np.unique(ours)) <= set(values)


def test_label_nearest_matches_simpleitk(tmp_path):
    label = blob_labels((25, 29, 19), seed=3)
    new_shape = (17, 37, 13)
    for n, m in zip(label.shape, new_shape):  # odd input sizes: no output centre is exactly between two inputs
        assert not np.any(((2 * np.arange(m) + 1) * n) % (2 * m) == 0)
    ours = resample_label(label, new_shape, "nearest")
    ref = sitk_resample(
        tmp_path, label.astype(np.uint8), AFFINES["permuted"], new_shape, sitk.sitkNearestNeighbor, pixel=np.uint8
    )
    np.testing.assert_array_equal(ours, ref)


def test_mask_is_two_label_rule():
    mask = blob_labels((20, 22, 18), seed=5) > 0
    for mode in ("linear", "nearest"):
        np.testing.assert_array_equal(
            resample_mask(mask, (29, 15, 25), mode), resample_label(mask.astype(np.int16), (29, 15, 25), mode) == 1
        )


def test_same_shape_is_an_exact_copy():
    image = smooth_image((9, 8, 7))[None]
    out = resample_image(image, (9, 8, 7))
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)
    label = blob_labels((9, 8, 7))
    for mode in ("linear", "nearest"):
        np.testing.assert_array_equal(resample_label(label, (9, 8, 7), mode), label)


def test_unknown_label_interpolation_is_refused():
    with pytest.raises(ValueError, match="cubic"):
        resample_label(np.zeros((4, 4, 4), np.int16), (5, 5, 5), "cubic")
