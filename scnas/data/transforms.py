"""The per-case transforms of preprocessing (nnU-Net-style) and their exact inverse.

Per case: reorient to RAS+ (an axis permutation/flip, no interpolation), crop to the bounding box of the
nonzero region (union over channels), resample to the target spacing (images trilinear, labels
label-safe; see scnas.data.resample), normalise each channel (see scnas.data.normalize). `restore`
maps an array in preprocessed space back onto the original image grid.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from scnas.data.geometry import canonical_geometry, from_canonical, nonzero_bbox, to_canonical
from scnas.data.normalize import nonzero_mask, normalize
from scnas.data.plans import Plans
from scnas.data.resample import (
    effective_spacing,
    resample_image,
    resample_label,
    resample_mask,
    target_shape,
)


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
