"""Task plans (nnU-Net's plans): the dataset fingerprint (shapes after crop and resampling, CT foreground
intensities) and the settings that preprocessing, training and inference share, as one typed, versioned
object stored as PREPROCESSED/plans.json. Its provenance records exactly what produced it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from scnas.config import PlanConfig, PreprocessConfig, dataclass_to_dict
from scnas.data.dataset import Case, Dataset, case_rng
from scnas.data.geometry import canonical_geometry, nonzero_bbox, to_canonical
from scnas.data.nifti import load_case_arrays
from scnas.data.normalize import ct_statistics, zscore_entry
from scnas.data.pool import map_cases
from scnas.data.resample import target_shape
from scnas.errors import DatasetError, ScnasError
from scnas.fingerprint import Provenance
from scnas.io import read_json, write_json

PLANS_FILE = "plans.json"
PLANS_VERSION = 2
INTENSITY_SAMPLES = 100_000
"""Foreground voxels sampled per case for the CT intensity statistics."""


@dataclass(frozen=True)
class Plans:
    """The plans of one preprocessed task; `provenance` holds the settings and dataset that made them."""

    dataset: str
    modalities: tuple[str, ...]
    labels: dict[int, str]
    num_channels: int
    target_spacing: tuple[float, float, float]
    label_interpolation: str
    foreground_samples: int
    ct_clip_percentiles: tuple[float, float]
    normalization: tuple[dict, ...]
    median_shape: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    case_ids: tuple[str, ...]
    provenance: Provenance

    @property
    def fingerprint(self) -> str:
        return self.provenance.fingerprint

    @property
    def label_values(self) -> list[int]:
        return sorted(self.labels)

    @property
    def foreground_labels(self) -> list[int]:
        return [v for v in self.label_values if v != 0]

    @property
    def num_classes(self) -> int:
        """K for labels 0..K-1; other label values are refused (the network's outputs are 0..K-1)."""
        values = self.label_values
        if values != list(range(len(values))):
            raise DatasetError(
                f"plans of {self.dataset}: label values {values} are not 0..{len(values) - 1}; "
                "renumber the labels in dataset.json"
            )
        return len(values)

    def to_dict(self) -> dict:
        """The JSON form written to plans.json and stored in checkpoints."""
        return {
            "version": PLANS_VERSION,
            "dataset": self.dataset,
            "modalities": list(self.modalities),
            "labels": {str(k): self.labels[k] for k in sorted(self.labels)},
            "num_channels": self.num_channels,
            "target_spacing": list(self.target_spacing),
            "label_interpolation": self.label_interpolation,
            "foreground_samples": self.foreground_samples,
            "ct_clip_percentiles": list(self.ct_clip_percentiles),
            "normalization": [dict(entry) for entry in self.normalization],
            "median_shape": list(self.median_shape),
            "patch_size": list(self.patch_size),
            "case_ids": list(self.case_ids),
            "provenance": self.provenance.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Plans:
        """Plans from their JSON form; another version or a missing or mistyped key is refused in one
        line naming `source`."""
        if not isinstance(data, Mapping):
            raise DatasetError(f"{source}: plans must be a JSON object, not {type(data).__name__}")
        version = data.get("version")
        if version != PLANS_VERSION:
            raise DatasetError(
                f"{source}: plans version {version!r}, this SCNAS reads version {PLANS_VERSION}; "
                "rerun `scnas preprocess`"
            )
        values = {}
        for key, parse in _PARSERS.items():
            if key not in data:
                raise DatasetError(f"{source}: plans key {key!r} is missing")
            try:
                values[key] = parse(data[key])
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{source}: plans key {key!r} {e}") from None
        try:
            provenance = Provenance.from_dict(data.get("provenance"), source)
        except ScnasError as e:
            raise DatasetError(str(e)) from None
        return cls(**values, provenance=provenance)


def _typed(kind: type | tuple[type, ...], name: str) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"must be {name}, got {json.dumps(value)[:60]}")
        return value

    return parse


def _sequence(item: Callable[[Any], Any], name: str, length: int | None = None) -> Callable[[Any], tuple]:
    def parse(value: Any) -> tuple:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            size = f"{length} " if length is not None else ""
            raise TypeError(f"must be a list of {size}{name}, got {json.dumps(value)[:60]}")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except (TypeError, ValueError) as e:
                raise TypeError(f"entry {i}: {e}") from None
        return tuple(out)

    return parse


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {json.dumps(value)[:60]}")
        return value

    return parse


def _labels(value: Any) -> dict[int, str]:
    pairs = value.items() if isinstance(value, dict) else ()
    if not pairs or not all(k.isdigit() and isinstance(v, str) for k, v in pairs):
        raise TypeError('must map label values to names, like {"0": "background"}')
    return {int(k): v for k, v in value.items()}


def _normalization(entry: Any) -> dict:
    if not isinstance(entry, dict) or set(entry) != NORMALIZATION_KEYS or entry["scheme"] not in ("ct", "zscore"):
        raise TypeError('must be {"scheme": "ct" or "zscore", "clip": ..., "mean": ..., "std": ...}')
    return dict(entry)


NORMALIZATION_KEYS = {"scheme", "clip", "mean", "std"}
_NUMBER = _typed((int, float), "a number")
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "dataset": _typed(str, "a string"),
    "modalities": _sequence(_typed(str, "a string"), "strings"),
    "labels": _labels,
    "num_channels": _typed(int, "an integer"),
    "target_spacing": _sequence(lambda v: float(_NUMBER(v)), "numbers", 3),
    "label_interpolation": _choice("linear", "nearest"),
    "foreground_samples": _typed(int, "an integer"),
    "ct_clip_percentiles": _sequence(lambda v: float(_NUMBER(v)), "numbers", 2),
    "normalization": _sequence(_normalization, "normalisation entries"),
    "median_shape": _sequence(lambda v: float(_NUMBER(v)), "numbers", 3),
    "patch_size": _sequence(_typed(int, "an integer"), "integers", 3),
    "case_ids": _sequence(_typed(str, "a string"), "case ids"),
}


def load_plans(folder: str | Path) -> Plans:
    """The plans of a preprocessed folder; refuses a missing, unreadable or foreign plans.json in one line."""
    path = Path(folder) / PLANS_FILE
    if not path.is_file():
        raise DatasetError(
            f"{path}: not found ({folder} is not a `scnas preprocess` output, or the run did not finish)"
        )
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not readable JSON ({type(e).__name__})") from None
    return Plans.from_dict(data, str(path))


def save_plans(folder: str | Path, plans: Plans, name: str = PLANS_FILE) -> Path:
    """Write the plans atomically into `folder` (as plans.json unless `name` says otherwise)."""
    path = Path(folder) / name
    write_json(path, plans.to_dict())
    return path


class PatchFit(Protocol):
    """fits(patch) -> whether a patch fits the memory budget (plan.gpu_memory_gb); `settings` (JSON-able)
    is everything the answer depends on besides the patch. The CLI builds it (scnas.models.memory)."""

    settings: Mapping[str, Any]

    def __call__(self, patch: Sequence[int]) -> bool: ...


def plans_provenance(
    dataset: Dataset,
    preprocess: PreprocessConfig,
    plan: PlanConfig,
    case_ids: Sequence[str] | None = None,
    fits: PatchFit | None = None,
) -> Provenance:
    """What plans of `dataset` from these settings depend on: the preprocess settings (threads never
    change results), the plan settings, the memory budget's settings and the dataset's identity. Known
    before any image is read."""
    settings = dataclass_to_dict(preprocess)
    settings.pop("threads", None)
    plan_settings = dataclass_to_dict(plan)
    if plan_settings.get("gpu_memory_gb") is None:  # absent: plans made before the key keep their fingerprints
        plan_settings.pop("gpu_memory_gb", None)
    record = {
        "preprocess": settings,
        "plan": plan_settings,
        "dataset": {
            "name": dataset.name,
            "case_ids": list(case_ids) if case_ids is not None else list(dataset.case_ids),
            "labels": {str(k): dataset.labels[k] for k in sorted(dataset.labels)},
            "modalities": list(dataset.modalities),
        },
    }
    if fits is not None:
        record["memory"] = dict(fits.settings)
    return Provenance.of(record)


def make_plans(
    dataset: Dataset,
    preprocess: PreprocessConfig,
    plan: PlanConfig,
    case_ids: Sequence[str] | None = None,
    threads: int = 1,
    fits: PatchFit | None = None,
) -> Plans:
    """Plans of `dataset` from the fingerprint of the given (training) cases, all cases by default; with
    plan.gpu_memory_gb set, `fits` (required then) decides the patch size (patch_for_budget)."""
    if plan.gpu_memory_gb is not None and fits is None:
        raise ScnasError("config key plan.gpu_memory_gb: set, but no memory model was given to fit the patch to it")
    ids = list(case_ids) if case_ids is not None else list(dataset.case_ids)
    if not ids:
        raise DatasetError(f"{dataset.root / 'dataset.json'}: no cases to make plans from")
    cases = [dataset.case(c) for c in ids]
    ct_channels = [c for c in range(dataset.num_channels) if dataset.is_ct(c)]
    fingerprints = map_cases(
        partial(
            _shape_and_intensities,
            num_channels=dataset.num_channels,
            target=preprocess.spacing,
            ct_channels=ct_channels,
        ),
        cases,
        threads,
    )
    median_shape = tuple(float(m) for m in np.median(np.array([shape for shape, _ in fingerprints]), axis=0))

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

    patch = fit_patch_size(plan.patch_size, median_shape) if plan.fit_to_median_shape else list(plan.patch_size)
    if fits is not None:
        patch = patch_for_budget(patch, median_shape, fits)
    return Plans(
        dataset=dataset.name,
        modalities=tuple(dataset.modalities),
        labels={int(k): dataset.labels[k] for k in sorted(dataset.labels)},
        num_channels=dataset.num_channels,
        target_spacing=tuple(float(s) for s in preprocess.spacing),
        label_interpolation=preprocess.label_interpolation,
        foreground_samples=int(preprocess.foreground_samples),
        ct_clip_percentiles=tuple(float(p) for p in preprocess.ct_clip_percentiles),
        normalization=tuple(normalization),
        median_shape=median_shape,
        patch_size=tuple(int(p) for p in patch),
        case_ids=tuple(ids),
        provenance=plans_provenance(dataset, preprocess, plan, ids, fits),
    )


def fit_patch_size(patch_size: Sequence[int], median_shape: Sequence[float]) -> list[int]:
    """Each patch axis shrunk to the median shape rounded up to a multiple of 8, never above the configured size."""
    return [int(min(p, 8 * math.ceil(m / 8))) for p, m in zip(patch_size, median_shape)]


SMALLEST_PATCH = 16
"""The networks halve a patch three times and normalise each level over its voxels: 16 leaves 2."""


def shrinking_patches(patch: Sequence[int], median_shape: Sequence[float]) -> list[tuple[int, int, int]]:
    """nnU-Net's order of shrinking a patch to a memory target: `patch` first, then each next one takes the
    axis largest against the median shape (the first such axis on ties) down to the next multiple of 8,
    until every axis is SMALLEST_PATCH voxels."""
    current = [int(p) for p in patch]
    chain = [tuple(current)]
    while any(p > SMALLEST_PATCH for p in current):
        axis = max(
            (i for i in range(3) if current[i] > SMALLEST_PATCH), key=lambda i: current[i] / max(median_shape[i], 1.0)
        )
        current[axis] = 8 * ((current[axis] - 1) // 8)
        chain.append(tuple(current))
    return chain


def patch_for_budget(patch: Sequence[int], median_shape: Sequence[float], fits: PatchFit) -> tuple[int, int, int]:
    """The first patch of shrinking_patches(patch, median_shape) that fits; memory grows with every axis,
    so the chain is bisected (fits is called about log2 of its length times)."""
    chain = shrinking_patches(patch, median_shape)
    if not fits(chain[-1]):
        raise ScnasError(
            f"config key plan.gpu_memory_gb: not even a {'x'.join(map(str, chain[-1]))} patch fits "
            f"{fits.settings.get('gpu_memory_gb', 'the budget')} GiB at these batch sizes"
        )
    lo, hi = 0, len(chain) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(chain[mid]):
            hi = mid
        else:
            lo = mid + 1
    return chain[lo]


def _shape_and_intensities(
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
