"""MSD task folders: dataset.json, cases, and their image geometry read from headers only.

An MSD task holds `dataset.json` (`modality`, `labels`, `training: [{image, label}]`, `numTraining`),
`imagesTr/` and `labelsTr/`. Images are 3D, or 4D with the channels last (BrainTumour: 240x240x155x4).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from scnas.errors import DatasetError, os_error_cause

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def case_id_from_path(path: str) -> str:
    """`./imagesTr/BRATS_001.nii.gz` -> `BRATS_001`."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """`relative` resolved against `root`; refuses paths that leave the dataset folder, and paths the
    file system cannot look up (a NUL byte, a name too long, a symlink loop)."""
    where = root / "dataset.json"
    if not isinstance(relative, str) or not relative:
        raise DatasetError(f"{where}: {what}: path must be a non-empty string")
    if "\0" in relative:
        raise DatasetError(f"{where}: {what}: path {relative!r} holds a NUL byte")
    candidate = Path(relative)
    full = candidate if candidate.is_absolute() else root / candidate
    try:
        real_root, real = root.resolve(), full.resolve()
        os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        pass  # a missing file is for the checks to report, case by case
    except RuntimeError:
        raise DatasetError(f"{where}: {what}: path {relative!r} is a symlink loop") from None
    except OSError as e:
        shown = repr(relative) if len(relative) <= 100 else f"{relative[:60]!r}... ({len(relative)} characters)"
        raise DatasetError(f"{where}: {what}: path {shown}: {os_error_cause(e)}") from None
    if real != real_root and real_root not in real.parents:
        raise DatasetError(f"{where}: {what}: path {relative!r} leaves the dataset folder")
    return full


@dataclass(frozen=True)
class ImageHeader:
    """Geometry of a NIfTI file, read from its header (no voxels)."""

    shape: tuple[int, ...]
    affine: np.ndarray = field(repr=False, compare=False)
    dtype: str

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.shape[:3])

    @property
    def channels(self) -> int:
        return int(self.shape[3]) if len(self.shape) == 4 else 1

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def read_header(path: Path) -> ImageHeader:
    """Header of a NIfTI file; raises DatasetError naming the file when it is not a readable NIfTI."""
    import nibabel as nib

    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises many types for a damaged file
        if isinstance(e, OSError) and e.errno is not None:
            raise DatasetError(f"{path}: cannot read ({os_error_cause(e)})") from None
        raise DatasetError(f"{path}: not a readable NIfTI file ({_short(e)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DatasetError(f"{path}: not a NIfTI file ({type(img).__name__})")
    return ImageHeader(
        shape=tuple(int(s) for s in img.shape),
        affine=np.asarray(img.affine, dtype=np.float64),
        dtype=str(img.get_data_dtype()),
    )


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]


@dataclass(frozen=True)
class Case:
    """One training case: id, image and label paths; geometry is read from the image header on demand."""

    id: str
    image: Path
    label: Path | None = None

    @cached_property
    def header(self) -> ImageHeader:
        return read_header(self.image)

    @property
    def channels(self) -> int:
        return self.header.channels

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.header.spatial_shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.header.spacing

    @property
    def affine(self) -> np.ndarray:
        return self.header.affine


@dataclass(frozen=True)
class Dataset:
    """An MSD task: its folder, modalities by channel, labels by value, and the training cases."""

    root: Path
    name: str
    modalities: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[Case, ...]

    @property
    def num_channels(self) -> int:
        return len(self.modalities)

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        return tuple(sorted(v for v in self.labels if v != 0))

    @property
    def case_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.cases)

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.id == case_id:
                return c
        raise DatasetError(f"{self.root}: no case {case_id!r} in dataset.json")

    def is_ct(self, channel: int) -> bool:
        return self.modalities[channel].strip().upper() == "CT"


def read_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({os_error_cause(e)})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({_short(e)})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: must hold a JSON object")
    return data


def parse_dataset(root: str | os.PathLike) -> Dataset:
    """Parse dataset.json of the MSD task at `root` (structure only; case files are not opened).

    Raises DatasetError with the first problem; `scnas.data.check` reports all of them.
    """
    dataset, problems = parse_dataset_problems(root)
    if problems:
        raise DatasetError(problems[0])
    return dataset


def parse_dataset_problems(root: str | os.PathLike) -> tuple[Dataset, list[str]]:
    """Parse dataset.json, collecting every structural problem (one line each) instead of stopping.

    The Dataset holds what did parse (a faulty `modality` or `labels` is left empty, unparsable
    training entries are dropped), so the case files can still be checked.
    """
    root = Path(root)
    data = read_dataset_json(root)
    where = root / "dataset.json"
    problems: list[str] = []
    for key in ("modality", "labels", "training"):
        if key not in data:
            problems.append(f"{where}: missing key {key!r}")

    def section(key: str, parse, empty):
        found: list[str] = []
        value = parse(data[key], where, found) if key in data else empty
        problems.extend(found)
        return empty if found else value

    modalities = section("modality", _parse_modalities, ())
    labels = section("labels", _parse_labels, {})
    cases = _parse_training(root, data["training"], where, problems) if "training" in data else []
    if (
        "numTraining" in data
        and isinstance(data.get("training"), list)
        and data["numTraining"] != len(data["training"])
    ):
        problems.append(
            f"{where}: numTraining is {data['numTraining']} but 'training' lists {len(data['training'])} cases"
        )
    dataset = Dataset(
        root=root, name=str(data.get("name", root.name)), modalities=modalities, labels=labels, cases=tuple(cases)
    )
    return dataset, problems


def _parse_modalities(modality: Any, where: Path, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(modality, dict) or not modality:
        problems.append(f'{where}: \'modality\' must be a non-empty object like {{"0": "MRI"}}')
        return ()
    try:
        by_channel = {int(k): str(v) for k, v in modality.items()}
    except (TypeError, ValueError):
        problems.append(f"{where}: 'modality' keys must be channel numbers 0, 1, ...")
        return ()
    if sorted(by_channel) != list(range(len(by_channel))):
        problems.append(f"{where}: 'modality' keys must be the channel numbers 0..{len(by_channel) - 1}")
        return ()
    return tuple(by_channel[k] for k in range(len(by_channel)))


def _parse_labels(labels_raw: Any, where: Path, problems: list[str]) -> dict[int, str]:
    if not isinstance(labels_raw, dict) or not labels_raw:
        problems.append(f'{where}: \'labels\' must be a non-empty object like {{"0": "background"}}')
        return {}
    labels: dict[int, str] = {}
    for k, v in labels_raw.items():
        text = str(k).strip()
        if not text.isdigit():
            problems.append(f"{where}: label key {k!r} is not a non-negative whole number")
            continue
        labels[int(text)] = str(v)
    if labels and 0 not in labels:
        problems.append(f"{where}: 'labels' must declare the background label 0")
    if labels and len(labels) < 2:
        problems.append(f"{where}: 'labels' declares no foreground label")
    return labels


def _parse_training(root: Path, training: Any, where: Path, problems: list[str]) -> list[Case]:
    if not isinstance(training, list) or not training:
        problems.append(f"{where}: 'training' must be a non-empty list of {{image, label}}")
        return []
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            problems.append(f"{where}: training[{i}] must be an object with 'image' and 'label'")
            continue
        try:
            image = resolve_inside(root, entry["image"], f"training[{i}].image")
            label = resolve_inside(root, entry["label"], f"training[{i}].label")
        except DatasetError as e:
            problems.append(str(e))
            continue
        case = Case(id=case_id_from_path(entry["image"]), image=image, label=label)
        if case.id in seen:
            problems.append(f"{where}: case {case.id!r} is listed twice (training[{seen[case.id]}] and training[{i}])")
            continue
        seen[case.id] = i
        cases.append(case)
    return cases


def case_rng(case_id: str) -> np.random.Generator:
    """A generator seeded by the case id alone, so that reruns sample the same voxels."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "little"))
