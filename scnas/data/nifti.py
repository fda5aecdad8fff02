"""NIfTI voxel I/O: images as (C, X, Y, Z) float32, labels as integer (X, Y, Z), and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scnas.data.dataset import Case
from scnas.errors import DatasetError
from scnas.io import atomic_path


def _load(path: Path):
    import nibabel as nib

    if not Path(path).is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel/zlib raise many types for a damaged file
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DatasetError(f"{path}: not a readable NIfTI file ({msg})") from None
    return img, data


def load_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Image voxels as float32 (C, X, Y, Z) (a 3D file gives C = 1) and its 4x4 affine."""
    img, data = _load(Path(path))
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, 3, 0)
    else:
        raise DatasetError(f"{path}: expected a 3D or 4D image, got {data.ndim} dimensions {tuple(data.shape)}")
    return np.ascontiguousarray(data, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def load_label(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Label voxels as int16 (X, Y, Z) and the affine; float files holding whole numbers are accepted."""
    img, data = _load(Path(path))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{path}: a label map must be 3D, got shape {tuple(data.shape)}")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)):
            raise DatasetError(f"{path}: label map holds NaN or Inf")
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise DatasetError(f"{path}: label map holds values that are not whole numbers")
        data = rounded
    return data.astype(np.int16), np.asarray(img.affine, dtype=np.float64)


def save_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    like: str | os.PathLike | None = None,
    dtype: type | None = None,
) -> None:
    """Write `data` ((X, Y, Z) or (C, X, Y, Z) -> channels last) atomically.

    With `like`, the header (qform/sform codes, units, description) is copied from that file so the
    output carries the input's exact geometry.
    """
    import nibabel as nib

    arr = np.asarray(data)
    if arr.ndim == 4:
        arr = np.moveaxis(arr, 0, 3)
    if dtype is not None:
        arr = arr.astype(dtype)
    header = None
    if like is not None:
        ref = nib.load(str(like))
        header = ref.header.copy()
        header.set_data_dtype(arr.dtype)
        img = nib.Nifti1Image(arr, affine, header=header)
        img.set_qform(ref.get_qform(), code=int(ref.header["qform_code"]) or 1)
        img.set_sform(ref.get_sform(), code=int(ref.header["sform_code"]) or 1)
        if not np.allclose(img.affine, affine, atol=1e-5):
            img.set_sform(affine, code=1)
            img.set_qform(affine, code=1)
    else:
        img = nib.Nifti1Image(arr, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))


def load_case_arrays(
    case: Case, num_channels: int, with_label: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Image (C, X, Y, Z), affine and label of a case; refuses (one line naming the file) what cannot be
    preprocessed."""
    image, affine = load_image(case.image)
    if image.shape[0] != num_channels:
        raise DatasetError(f"{case.image}: has {image.shape[0]} channels, the dataset declares {num_channels}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DatasetError(f"{case.image}: the affine is not finite and invertible")
    label = None
    if with_label and case.label is not None:
        label, _ = load_label(case.label)
        if label.shape != image.shape[1:]:
            raise DatasetError(
                f"{case.label}: shape {tuple(label.shape)} differs from the image's {tuple(image.shape[1:])}"
            )
    return image, affine, label
