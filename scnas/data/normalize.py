"""Intensity normalisation per channel, as nnU-Net does it.

MRI (any modality other than CT): z-score over the nonzero mask of the case, zero outside it.
CT: clip to dataset-level foreground percentiles, then z-score with the dataset foreground mean and std.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

EPS = 1e-8


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every background region that does not touch the border filled (as binary_fill_holes).

    Labels the background components once instead of dilating from the border, which is much faster on
    brain-sized volumes.
    """
    background, _ = ndimage.label(~mask)
    border = np.zeros(mask.shape, dtype=bool)
    for axis in range(mask.ndim):
        border[(slice(None),) * axis + (0,)] = True
        border[(slice(None),) * axis + (-1,)] = True
    outside = np.unique(background[border & ~mask])
    return ~np.isin(background, outside[outside > 0])


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels that are nonzero in any channel of (C, X, Y, Z), holes filled (nnU-Net's nonzero mask)."""
    return fill_holes(np.any(image != 0, axis=0))


def zscore(channel: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Z-score a float32 channel in place with the mean and std over `mask` (float64); outside set to 0."""
    values = channel[mask]
    mean = float(values.mean(dtype=np.float64)) if values.size else 0.0
    std = float(values.std(dtype=np.float64)) if values.size else 1.0
    del values
    channel -= np.float32(mean)
    channel /= np.float32(max(std, EPS))
    channel[~mask] = 0
    return channel


def ct_normalize(channel: np.ndarray, clip: Sequence[float], mean: float, std: float) -> np.ndarray:
    """Clip a float32 channel in place to the dataset's foreground percentiles, then z-score it with
    the dataset's foreground mean and std."""
    np.clip(channel, np.float32(clip[0]), np.float32(clip[1]), out=channel)
    channel -= np.float32(mean)
    channel /= np.float32(max(std, EPS))
    return channel


def ct_statistics(samples: np.ndarray, percentiles: Sequence[float]) -> dict:
    """The plans entry of a CT channel from sampled foreground intensities (clip bounds, mean, std)."""
    values = np.asarray(samples, dtype=np.float64)
    lo, hi = np.percentile(values, percentiles)
    return {"scheme": "ct", "clip": [float(lo), float(hi)], "mean": float(values.mean()), "std": float(values.std())}


def zscore_entry() -> dict:
    """The plans entry of a channel z-scored per case over its nonzero mask."""
    return {"scheme": "zscore", "clip": None, "mean": None, "std": None}


def normalize(image: np.ndarray, schemes: Sequence[dict], mask: np.ndarray | None) -> np.ndarray:
    """Normalise each channel of a float32 (C, X, Y, Z) in place by its plans entry; zscore channels need `mask`."""
    for c, entry in enumerate(schemes):
        if entry["scheme"] == "ct":
            ct_normalize(image[c], entry["clip"], entry["mean"], entry["std"])
        elif entry["scheme"] == "zscore":
            zscore(image[c], mask)
        else:
            raise ValueError(f"unknown normalisation scheme {entry['scheme']!r}")
    return image
