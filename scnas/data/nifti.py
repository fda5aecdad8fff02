"""NIfTI voxel I/O: images as (C, X, Y, Z) float32 (from one file, or one file per channel), labels as
integer (X, Y, Z), and atomic writes whose header every reader takes the same geometry from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from scnas.data.dataset import Case, file_problem
from scnas.errors import DatasetError
from scnas.io import atomic_path

if TYPE_CHECKING:
    import nibabel as nib

PathLike = Union[str, os.PathLike]


def _load(path: Path):
    import nibabel as nib

    problem = file_problem(Path(path))
    if problem is not None:
        raise DatasetError(f"{path}: {problem}")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel/zlib raise many types for a damaged file
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DatasetError(f"{path}: not a readable NIfTI file ({msg})") from None
    return img, data


def load_image(path: PathLike | Sequence[PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """Image voxels as float32 (C, X, Y, Z) and the 4x4 affine: from one 3D (C = 1) or 4D (channels last)
    file, or stacked from one 3D file per channel (nnU-Net's CASE_XXXX files), the affine being channel 0's."""
    if not isinstance(path, (str, os.PathLike)):
        return _load_channels([Path(p) for p in path])
    img, data = _load(Path(path))
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, 3, 0)
    else:
        raise DatasetError(f"{path}: expected a 3D or 4D image, got {data.ndim} dimensions {tuple(data.shape)}")
    return np.ascontiguousarray(data, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def _load_channels(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    if not paths:
        raise DatasetError("load_image: no image files given")
    stacked: np.ndarray | None = None
    affine = None
    for c, path in enumerate(paths):
        img, data = _load(path)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise DatasetError(f"{path}: a channel file must be 3D, got shape {tuple(data.shape)}")
        if stacked is None:
            stacked = np.empty((len(paths), *data.shape), dtype=np.float32)
            affine = np.asarray(img.affine, dtype=np.float64)
        elif data.shape != stacked.shape[1:]:
            raise DatasetError(
                f"{path}: shape {tuple(data.shape)} differs from channel 0's {tuple(stacked.shape[1:])} ({paths[0]})"
            )
        stacked[c] = data
    return stacked, affine


def load_label(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
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
    path: PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    like: PathLike | nib.Nifti1Header | None = None,
    dtype: type | None = None,
) -> None:
    """Write `data` ((X, Y, Z) or (C, X, Y, Z) -> channels last) atomically, qform and sform both `affine`.

    `like`, the input's file or its nibabel header, gives the qform/sform codes and the units (codes 1
    when it sets neither). Both transforms hold the same geometry and no stale quaternion is left, so
    nibabel (sform first) and ITK/SimpleITK (which may take the qform) place the voxels alike.
    """
    import nibabel as nib

    arr = np.asarray(data)
    if arr.ndim == 4:
        arr = np.moveaxis(arr, 0, 3)
    if dtype is not None:
        arr = arr.astype(dtype)
    img = nib.Nifti1Image(arr, affine)
    qform_code = sform_code = 1
    if like is not None:
        reference = like if isinstance(like, nib.Nifti1Header) else nib.load(os.fspath(like)).header
        qform_code, sform_code = int(reference["qform_code"]), int(reference["sform_code"])
        if qform_code == 0 and sform_code == 0:
            qform_code = sform_code = 1
        img.header.set_xyzt_units(*reference.get_xyzt_units())
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))


def load_case_arrays(
    case: Case, num_channels: int, with_label: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Image (C, X, Y, Z), affine and label of a case; refuses (one line naming the file) what cannot be
    preprocessed."""
    image, affine = load_image(case.image)
    first = case.images[0]
    if image.shape[0] != num_channels:
        raise DatasetError(f"{first}: has {image.shape[0]} channels, the dataset declares {num_channels}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DatasetError(f"{first}: the affine is not finite and invertible")
    label = None
    if with_label and case.label is not None:
        label, _ = load_label(case.label)
        if label.shape != image.shape[1:]:
            raise DatasetError(
                f"{case.label}: shape {tuple(label.shape)} differs from the image's {tuple(image.shape[1:])}"
            )
    return image, affine, label
