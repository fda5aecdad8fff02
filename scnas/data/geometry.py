"""Grid geometry shared by planning and preprocessing: RAS+ reorientation (an axis permutation/flip, no
interpolation) and the bounding box of the nonzero region."""

from __future__ import annotations

from typing import Sequence

import nibabel as nib
import numpy as np

from scnas.data.resample import bounding_box

RAS = nib.orientations.axcodes2ornt("RAS")


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
