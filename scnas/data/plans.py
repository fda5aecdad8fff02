"""Task plans: the dataset fingerprint (shapes after crop and resampling, CT foreground intensities) and
the settings that preprocessing, training and inference share, as one JSON-able dict (nnU-Net's plans)."""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import numpy as np

from scnas.config import PlanConfig, PreprocessConfig
from scnas.data.dataset import Case, Dataset
from scnas.data.normalize import ct_statistics, zscore_entry
from scnas.data.preprocess import canonical_geometry, case_rng, load_case_arrays, map_cases, nonzero_bbox, to_canonical
from scnas.data.resample import target_shape
from scnas.errors import DatasetError

PLANS_VERSION = 1
INTENSITY_SAMPLES = 100_000
"""Foreground voxels sampled per case for the CT intensity statistics."""


def make_plans(
    dataset: Dataset,
    preprocess: PreprocessConfig,
    plan: PlanConfig,
    case_ids: Sequence[str] | None = None,
    threads: int = 1,
) -> dict:
    """Plans of `dataset` from the fingerprint of the given (training) cases, all cases by default."""
    ids = list(case_ids) if case_ids is not None else list(dataset.case_ids)
    if not ids:
        raise DatasetError(f"{dataset.root / 'dataset.json'}: no cases to make plans from")
    cases = [dataset.case(c) for c in ids]
    ct_channels = [c for c in range(dataset.num_channels) if dataset.is_ct(c)]
    fingerprints = map_cases(
        partial(_fingerprint, num_channels=dataset.num_channels, target=preprocess.spacing, ct_channels=ct_channels),
        cases,
        threads,
    )
    median_shape = [float(m) for m in np.median(np.array([shape for shape, _ in fingerprints]), axis=0)]

    normalization = []
    for c in range(dataset.num_channels):
        if c not in ct_channels:
            normalization.append(zscore_entry())
            continue
        samples = np.concatenate([values[ct_channels.index(c)] for _, values in fingerprints])
        if samples.size == 0:
            raise DatasetError(
                f"{dataset.root / 'dataset.json'}: channel {c} is CT, but the label maps of the "
                f"planned cases hold no foreground voxels to take its intensity statistics from"
            )
        normalization.append(ct_statistics(samples, preprocess.ct_clip_percentiles))

    return {
        "version": PLANS_VERSION,
        "dataset": dataset.name,
        "modalities": list(dataset.modalities),
        "labels": {str(k): dataset.labels[k] for k in sorted(dataset.labels)},
        "num_channels": dataset.num_channels,
        "target_spacing": [float(s) for s in preprocess.spacing],
        "label_interpolation": preprocess.label_interpolation,
        "foreground_samples": int(preprocess.foreground_samples),
        "ct_clip_percentiles": [float(p) for p in preprocess.ct_clip_percentiles],
        "normalization": normalization,
        "median_shape": median_shape,
        "patch_size": fit_patch_size(plan.patch_size, median_shape)
        if plan.fit_to_median_shape
        else [int(p) for p in plan.patch_size],
        "case_ids": ids,
    }


def fit_patch_size(patch_size: Sequence[int], median_shape: Sequence[float]) -> list[int]:
    """Each patch axis shrunk to the median shape rounded up to a multiple of 8, never above the configured size."""
    return [int(min(p, 8 * math.ceil(m / 8))) for p, m in zip(patch_size, median_shape)]


def _fingerprint(
    case: Case, num_channels: int, target: Sequence[float], ct_channels: list[int]
) -> tuple[list[int], list[np.ndarray]]:
    """Shape of the case after crop and resampling, and sampled foreground intensities of its CT channels."""
    image, affine, label = load_case_arrays(case, num_channels, with_label=bool(ct_channels))
    ornt, _, spacing = canonical_geometry(affine, image.shape[1:])
    cropped = [hi - lo for lo, hi in nonzero_bbox(to_canonical(image, ornt))]
    shape = list(target_shape(cropped, spacing, target))
    if not ct_channels or label is None:
        return shape, [np.zeros(0, dtype=np.float32) for _ in ct_channels]
    index = np.flatnonzero(label.ravel() > 0)
    if index.size > INTENSITY_SAMPLES:
        index = case_rng(case.id).choice(index, size=INTENSITY_SAMPLES, replace=False)
    return shape, [image[c].ravel()[index] for c in ct_channels]
