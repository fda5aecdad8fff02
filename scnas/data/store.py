"""The on-disk store of preprocessed cases: per case <id>.npy (image), <id>_seg.npy (label), <id>_fg.npz
(sampled foreground voxels per label) and <id>.json (properties, written last: it marks the case complete
and records the fingerprint of the plans that made it).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from scnas.data.dataset import case_rng
from scnas.data.plans import PLANS_FILE, Plans, load_plans
from scnas.errors import DatasetError
from scnas.io import atomic_path, read_json, save_npy, write_json

FINGERPRINT_KEY = "plans_fingerprint"


@dataclass(frozen=True)
class PreprocessedCase:
    """One preprocessed case: image (C, x, y, z), label (x, y, z) or None, properties, and the sampled
    foreground voxel coordinates per label."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    properties: dict
    foreground: dict[int, np.ndarray]


def case_files(folder: str | Path, case_id: str) -> dict[str, Path]:
    """The files of one preprocessed case; `properties` is written last and marks the case complete."""
    folder = Path(folder)
    return {
        "image": folder / f"{case_id}.npy",
        "label": folder / f"{case_id}_seg.npy",
        "foreground": folder / f"{case_id}_fg.npz",
        "properties": folder / f"{case_id}.json",
    }


def output_names(case_ids: Iterable[str]) -> list[str]:
    """The file names a preprocessed folder of these cases holds (plans.json included)."""
    return [PLANS_FILE] + [path.name for c in case_ids for path in case_files(".", c).values()]


def sample_foreground(
    label: np.ndarray | None, labels: Iterable[int], samples: int, case_id: str
) -> dict[str, np.ndarray]:
    """Up to `samples` voxel coordinates (N, 3) int32 per foreground label, seeded by the case id."""
    if label is None:
        return {str(value): np.zeros((0, 3), dtype=np.int32) for value in labels}
    rng = case_rng(case_id)
    flat = label.ravel()
    out = {}
    for value in labels:
        index = np.flatnonzero(flat == value)
        if index.size > samples:
            index = np.sort(rng.choice(index, size=samples, replace=False))
        out[str(value)] = np.stack(np.unravel_index(index, label.shape), axis=1).astype(np.int32)
    return out


def write_case(
    folder: Path,
    case_id: str,
    data: np.ndarray,
    seg: np.ndarray | None,
    foreground: dict[str, np.ndarray],
    properties: dict,
) -> None:
    """Write one case, each file atomically and the properties last; a failure leaves none of its files."""
    files = case_files(folder, case_id)
    folder.mkdir(parents=True, exist_ok=True)
    files["properties"].unlink(missing_ok=True)
    try:
        save_npy(files["image"], data)
        if seg is not None:
            save_npy(files["label"], seg)
        else:
            files["label"].unlink(missing_ok=True)
        with atomic_path(files["foreground"], suffix=".npz") as tmp:
            np.savez(tmp, **foreground)
        write_json(files["properties"], properties)
    except BaseException:
        for path in files.values():
            path.unlink(missing_ok=True)
        raise


def is_complete(folder: Path, case_id: str, fingerprint: str) -> bool:
    """Whether `folder` holds the case in full, made by the plans with this fingerprint."""
    files = case_files(folder, case_id)
    try:
        properties = read_json(files["properties"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(properties, dict) or properties.get(FINGERPRINT_KEY) != fingerprint:
        return False
    needed = ["image", "foreground"] + (["label"] if properties.get("has_label") else [])
    return all(files[k].is_file() for k in needed)


def load_preprocessed(
    folder: str | Path, case_id: str, mmap: bool = True, plans: Plans | None = None
) -> PreprocessedCase:
    """A preprocessed case, arrays memory-mapped read-only when `mmap`; refuses a missing or inconsistent
    file, and a case made by other plans than the folder's (`plans`, read from the folder when not given)."""
    plans = plans if plans is not None else load_plans(folder)
    files = case_files(folder, case_id)
    path = files["properties"]
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (case {case_id!r} is not preprocessed, or did not finish)")
    try:
        properties = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not readable JSON ({type(e).__name__})") from None
    required = ("case_id", "channels", "resampled_shape", "has_label")
    missing = [k for k in required if not isinstance(properties, dict) or k not in properties]
    if missing:
        raise DatasetError(f"{path}: missing key {missing[0]!r}")
    if properties["case_id"] != case_id:
        raise DatasetError(f"{path}: belongs to case {properties['case_id']!r}, not {case_id!r}")
    made_by = properties.get(FINGERPRINT_KEY)
    if made_by != plans.fingerprint:
        made = f"plans {made_by}" if isinstance(made_by, str) else "plans that recorded no fingerprint"
        raise DatasetError(
            f"{path}: made by {made}, not by this folder's plans {plans.fingerprint}; "
            "rerun `scnas preprocess` into this folder"
        )
    shape = tuple(properties["resampled_shape"])
    image = _load_npy(files["image"], mmap, (properties["channels"], *shape), np.float32)
    label = _load_npy(files["label"], mmap, shape, np.int16) if properties["has_label"] else None
    return PreprocessedCase(
        case_id=case_id,
        image=image,
        label=label,
        properties=properties,
        foreground=_load_foreground(files["foreground"], shape),
    )


def _load_npy(path: Path, mmap: bool, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: not a readable .npy file ({_first_line(e)})") from None
    if array.shape != shape or array.dtype != dtype:
        raise DatasetError(f"{path}: holds {array.dtype} {array.shape}, its properties say {np.dtype(dtype)} {shape}")
    return array


def _load_foreground(path: Path, shape: tuple[int, ...]) -> dict[int, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path}: not a readable .npz file ({_first_line(e)})") from None
    out = {}
    for key, coords in arrays.items():
        if not key.isdigit() or coords.ndim != 2 or coords.shape[1] != 3:
            raise DatasetError(f"{path}: entry {key!r} must be a label with (N, 3) coordinates, got {coords.shape}")
        if coords.size and (coords.min() < 0 or np.any(coords.max(axis=0) >= np.array(shape))):
            raise DatasetError(f"{path}: label {key} has coordinates outside the image {shape}")
        out[int(key)] = coords
    return out


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__
