"""The per-case transforms of preprocessing (nnU-Net-style) and their exact inverse.

Per case: reorient to RAS+ (an axis permutation/flip, no interpolation), crop to the bounding box of the
nonzero region (union over channels), resample to the target spacing (images trilinear, labels
label-safe; see scnas.data.resample), normalise each channel (see scnas.data.normalize). `restore`
maps an array in preprocessed space back onto the original image grid.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal, Sequence

import nibabel as nib
import numpy as np

from scnas.data.dataset import Case
from scnas.data.nifti import load_image, load_label
from scnas.data.normalize import nonzero_mask, normalize
from scnas.data.resample import (
    bounding_box,
    effective_spacing,
    resample_image,
    resample_label,
    resample_mask,
    target_shape,
)
from scnas.errors import DatasetError

if TYPE_CHECKING:
    from scnas.data.plans import Plans

RAS = nib.orientations.axcodes2ornt("RAS")


def case_rng(case_id: str) -> np.random.Generator:
    """A generator seeded by the case id alone, so that reruns sample the same voxels."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "little"))


def to_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Apply the nibabel orientation transform `ornt` to the last three (spatial) axes; a view."""
    lead = array.ndim - 3
    moved = np.moveaxis(array, list(range(lead)), list(range(-lead, 0)))
    out = nib.orientations.apply_orientation(moved, ornt)
    return np.moveaxis(out, list(range(3, 3 + lead)), list(range(lead)))


def from_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Undo `to_canonical(., ornt)`; a view."""
    return to_canonical(array, nib.orientations.ornt_transform(RAS, np.asarray(ornt, dtype=np.float64)))


def canonical_geometry(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The RAS+ orientation transform of a grid, its canonical affine and canonical spacing."""
    ornt = nib.orientations.io_orientation(affine)
    canonical = affine @ nib.orientations.inv_ornt_aff(ornt, tuple(shape))
    return ornt, canonical, [float(s) for s in np.linalg.norm(canonical[:3, :3], axis=0)]


def nonzero_bbox(image: np.ndarray) -> list[list[int]]:
    """[lo, hi) per spatial axis of the voxels nonzero in any channel of (C, X, Y, Z); all if none is."""
    box = bounding_box(np.any(image != 0, axis=0))
    return box if box is not None else [[0, int(n)] for n in image.shape[1:]]


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


def preprocess_arrays(
    image: np.ndarray, affine: np.ndarray, plans: Plans, label: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Reorient, crop, resample and normalise one case; returns image (C, x, y, z) float32, label
    (x, y, z) int16 or None, and the JSON-able properties that `restore` needs to invert it."""
    if image.ndim != 4 or image.shape[0] != plans.num_channels:
        raise ValueError(f"image must be (C, X, Y, Z) with C = {plans.num_channels}, got {image.shape}")
    if label is not None and label.shape != image.shape[1:]:
        raise ValueError(f"label shape {label.shape} differs from the image's {image.shape[1:]}")
    affine = np.asarray(affine, dtype=np.float64)
    original_shape = [int(n) for n in image.shape[1:]]
    ornt, canonical_affine, spacing = canonical_geometry(affine, original_shape)
    canonical = to_canonical(image, ornt)
    bbox = nonzero_bbox(canonical)
    crop = tuple(slice(lo, hi) for lo, hi in bbox)
    cropped = canonical[(slice(None), *crop)]
    cropped_shape = [int(n) for n in cropped.shape[1:]]
    target = [float(s) for s in plans.target_spacing]
    new_shape = target_shape(cropped_shape, spacing, target)
    mode = plans.label_interpolation

    mask = None
    if any(entry["scheme"] == "zscore" for entry in plans.normalization):
        mask = resample_mask(nonzero_mask(cropped), new_shape, mode)
    data = normalize(resample_image(cropped, new_shape), plans.normalization, mask)
    del mask, cropped
    seg = None
    if label is not None:
        seg = resample_label(to_canonical(label, ornt)[crop], new_shape, mode)

    scale = np.array(cropped_shape, dtype=np.float64) / np.array(new_shape, dtype=np.float64)
    to_cropped = np.eye(4)
    to_cropped[:3, :3] = np.diag(scale)
    to_cropped[:3, 3] = np.array([lo for lo, _ in bbox]) + 0.5 * scale - 0.5
    properties = {
        "channels": int(image.shape[0]),
        "original_shape": original_shape,
        "original_affine": affine.tolist(),
        "original_spacing": [float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)],
        "orientation": ornt.astype(int).tolist(),
        "canonical_shape": [int(n) for n in canonical.shape[1:]],
        "canonical_affine": canonical_affine.tolist(),
        "canonical_spacing": spacing,
        "crop_bbox": bbox,
        "cropped_shape": cropped_shape,
        "resampled_shape": list(new_shape),
        "spacing": list(effective_spacing(cropped_shape, spacing, new_shape)),
        "target_spacing": target,
        "preprocessed_affine": (canonical_affine @ to_cropped).tolist(),
        "has_label": label is not None,
    }
    return data, seg, properties


def restore(
    array: np.ndarray, properties: dict, kind: Literal["label", "probabilities"], label_interpolation: str = "linear"
) -> np.ndarray:
    """Map a preprocessed-space array back onto the original image grid: undo the resampling, uncrop
    (background outside the crop) and undo the reorientation. label (x, y, z) -> int16 (X, Y, Z);
    probabilities (K, x, y, z) -> float32 (K, X, Y, Z), background probability 1 outside the crop."""
    resampled = tuple(properties["resampled_shape"])
    cropped_shape = properties["cropped_shape"]
    crop = tuple(slice(lo, hi) for lo, hi in properties["crop_bbox"])
    canonical_shape = tuple(properties["canonical_shape"])
    if kind == "label":
        if array.shape != resampled:
            raise ValueError(f"label shape {array.shape} differs from the preprocessed shape {resampled}")
        full = np.zeros(canonical_shape, dtype=np.int16)
        full[crop] = resample_label(array, cropped_shape, label_interpolation)
    elif kind == "probabilities":
        if array.ndim != 4 or array.shape[1:] != resampled:
            raise ValueError(f"probabilities shape {array.shape} is not (K, {', '.join(map(str, resampled))})")
        full = np.zeros((array.shape[0], *canonical_shape), dtype=np.float32)
        full[0] = 1
        full[(slice(None), *crop)] = resample_image(array, cropped_shape)
    else:
        raise ValueError(f"kind must be 'label' or 'probabilities', got {kind!r}")
    return np.ascontiguousarray(from_canonical(full, np.asarray(properties["orientation"])))
