"""Written NIfTI headers that every reader agrees on: nibabel, SimpleITK and MONAI find the same grid.

Inputs are built with one of the two transforms switched off and a stale value left in it, as scanners
and converters write them; the output of save_nifti must carry the geometry the input means.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from scnas.data.nifti import save_nifti

SHAPE = (7, 6, 5)
# Voxel axes permuted and flipped, anisotropic, with an origin: the geometry the input means.
AFFINE = np.array([[0.0, 0.0, -1.6, 30.0], [-0.7, 0.0, 0.0, 12.0], [0.0, 1.3, 0.0, -20.0], [0, 0, 0, 1]])
# What a stale transform holds: same spacing, another orientation and origin.
STALE = np.array([[0.7, 0.0, 0.0, -5.0], [0.0, 1.3, 0.0, 3.0], [0.0, 0.0, 1.6, 7.0], [0, 0, 0, 1]])
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def write_input(path, qform_code: int, sform_code: int) -> None:
    """An image whose switched-off transform (code 0) still holds STALE, the other AFFINE."""
    img = nib.Nifti1Image(np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE), None)
    img.header.set_qform(AFFINE if qform_code else STALE, code=qform_code or 1)
    img.header.set_sform(AFFINE if sform_code else STALE, code=sform_code or 1)
    img.header["qform_code"], img.header["sform_code"] = qform_code, sform_code
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def sitk_geometry(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return np.array(image.GetOrigin()), np.array(image.GetDirection()).reshape(3, 3), np.array(image.GetSpacing())


def nibabel_geometry_in_lps(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origin, direction and spacing of a nibabel (RAS) affine as ITK states them (LPS)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return RAS_TO_LPS @ affine[:3, 3], RAS_TO_LPS @ (affine[:3, :3] / spacing), spacing


def assert_same_geometry(ours, theirs) -> None:
    for a, b, what in zip(ours, theirs, ("origin", "direction", "spacing")):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=what)


@pytest.fixture(autouse=True)
def quiet_itk():
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    yield
    sitk.ProcessObject_SetGlobalWarningDisplay(True)


@pytest.mark.parametrize(
    "qform_code, sform_code",
    [(0, 1), (0, 2), (1, 0), (2, 0)],
    ids=["no-qform-sform-scanner", "no-qform-sform-aligned", "no-sform-qform-scanner", "no-sform-qform-aligned"],
)
@pytest.mark.parametrize("reference", ["file", "header"])
def test_every_reader_finds_the_inputs_geometry_in_the_prediction(tmp_path, qform_code, sform_code, reference):
    source = tmp_path / "scan.nii.gz"
    write_input(source, qform_code, sform_code)
    scan = nib.load(str(source))
    np.testing.assert_allclose(scan.affine, AFFINE, atol=1e-6)
    assert_same_geometry(sitk_geometry(source), nibabel_geometry_in_lps(AFFINE))

    labels = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3).astype(np.uint8)
    out = tmp_path / "pred.nii.gz"
    save_nifti(out, labels, scan.affine, like=source if reference == "file" else scan.header, dtype=np.uint8)

    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, scan.affine, atol=1e-5)
    assert_same_geometry(sitk_geometry(out), nibabel_geometry_in_lps(written.affine))
    assert_same_geometry(sitk_geometry(out), sitk_geometry(source))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))).transpose(2, 1, 0), labels)
    header = written.header
    np.testing.assert_allclose(header.get_qform(), AFFINE, atol=1e-5)  # no stale quaternion, even unused
    np.testing.assert_allclose(header.get_sform(), AFFINE, atol=1e-5)
    assert (int(header["qform_code"]), int(header["sform_code"])) == (qform_code, sform_code)
    assert header.get_xyzt_units() == ("mm", "sec")


def test_monai_reads_the_same_affine_and_voxels(tmp_path):
    monai = pytest.importorskip("monai.transforms")
    source = tmp_path / "scan.nii.gz"
    write_input(source, 0, 2)
    labels = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3).astype(np.uint8)
    out = tmp_path / "pred.nii.gz"
    save_nifti(out, labels, nib.load(str(source)).affine, like=source)
    loaded = monai.LoadImage(image_only=True, reader="NibabelReader")(str(out))
    np.testing.assert_allclose(np.asarray(loaded.affine), AFFINE, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(loaded), labels)


def test_without_a_reference_or_with_an_uncoded_one_both_transforms_get_code_1(tmp_path):
    uncoded = tmp_path / "analyze_like.nii"
    img = nib.Nifti1Image(np.zeros(SHAPE, np.float32), None)
    img.header["qform_code"] = img.header["sform_code"] = 0
    nib.save(img, str(uncoded))
    for like in (None, uncoded):
        out = tmp_path / f"out_{like is None}.nii.gz"
        save_nifti(out, np.ones(SHAPE, np.float32), AFFINE, like=like)
        written = nib.load(str(out))
        assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 1)
        np.testing.assert_allclose(written.header.get_qform(), AFFINE, atol=1e-5)
        assert_same_geometry(sitk_geometry(out), nibabel_geometry_in_lps(AFFINE))
