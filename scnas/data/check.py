"""Dataset validation that lists every problem (one line each, naming the file and case) before any compute.

Like nnU-Net's verify_dataset_integrity, but it never stops at the first problem: `scnas check` prints
them all, and every other stage calls `validate_dataset` for the cases it touches.
"""

from __future__ import annotations

import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from scnas.data.dataset import Case, Dataset, ImageHeader, parse_dataset_problems, read_header
from scnas.errors import DatasetError

SPACING_RTOL = 1e-3
DIRECTION_ATOL = 1e-3
ORIGIN_ATOL_MM = 5e-3


def check_dataset(
    root: str | os.PathLike, case_ids: Iterable[str] | None = None, threads: int = 1, progress: bool = False
) -> tuple[Dataset | None, list[str]]:
    """Every problem of the task at `root` (MSD or nnU-Net v2, `Dataset.format`), dataset-level first, then
    case by case in dataset order.

    The Dataset is None when dataset.json (or, for nnU-Net v2, the file naming) has problems; the case files
    it still names are checked anyway.
    `case_ids` restricts the per-case checks; ids not in dataset.json are problems. Cases run in parallel.
    """
    root = Path(root)
    try:
        declared, problems = parse_dataset_problems(root)
    except DatasetError as e:
        return None, [str(e)]
    dataset = None if problems else declared
    cases = list(declared.cases)
    if case_ids is not None:
        wanted = list(dict.fromkeys(case_ids))
        known = set(declared.case_ids)
        problems += [f"{root / 'dataset.json'}: no case {cid!r} in dataset.json" for cid in wanted if cid not in known]
        cases = [c for c in cases if c.id in set(wanted)]
    shared = _shared_files(declared.cases, {c.id for c in cases})

    def check(case: Case) -> list[str]:
        return shared.get(case.id, []) + check_case(case, declared)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = pool.map(check, cases)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(cases), desc="check", unit="case")
        for case_problems in results:
            problems += case_problems
    return dataset, problems


def validate_dataset(root: str | os.PathLike, case_ids: Iterable[str] | None = None, threads: int = 1) -> Dataset:
    """The parsed dataset, or DatasetError with the first problem and how many more there are."""
    dataset, problems = check_dataset(root, case_ids=case_ids, threads=threads)
    if problems:
        message = problems[0]
        if len(problems) > 1:
            more = len(problems) - 1
            message += (
                f" (and {more} more problem{'s' if more > 1 else ''}: "
                f"run `scnas check --dataset {shlex.quote(str(root))}`)"
            )
        raise DatasetError(message)
    assert dataset is not None
    return dataset


def check_image(
    path: str | os.PathLike | Sequence[str | os.PathLike], expected_channels: int, expected_by: str = "the model"
) -> list[str]:
    """Problems of a scan given to `scnas predict` (one file, or one 3D file per channel): readable NIfTI,
    3D/4D, channel count (`expected_by` expects), finite, spacing, and channel files on one grid."""
    problems: list[str] = []
    expects = f"{expected_by} expects {expected_channels}"
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        _check_image_file(path, f"{path}: ", expected_channels, expects, problems)
        return problems
    paths = [Path(p) for p in path]
    if len(paths) != expected_channels:
        problems.append(f"{paths[0] if paths else 'image'}: {len(paths)} channel files, {expects}")
    _check_channel_files(paths, "", problems)
    return problems


def check_case(case: Case, dataset: Dataset) -> list[str]:
    """Problems of one case: its files readable NIfTI, shapes, channels, geometry, finite voxels, labels.

    Channel count and label values are checked only against a usable `modality` (`channel_names`) and `labels`.
    """
    n = dataset.num_channels
    problems: list[str] = []
    if len(case.images) == 1:
        image = _check_image_file(
            case.images[0],
            f"{case.images[0]}: case {case.id}: ",
            n or None,
            f"dataset.json declares {n} modalit{'ies' if n != 1 else 'y'}",
            problems,
        )
    else:
        image = _check_channel_files(case.images, f"case {case.id}: ", problems)
    label = _check_label_file(case, dataset.labels, problems)
    if image is not None and label is not None:
        problems += _geometry_problems(f"{case.label}: case {case.id}: ", "label", label, "image", image)
    return problems


def _check_channel_files(paths: Sequence[Path], context: str, problems: list[str]) -> ImageHeader | None:
    """Problems of an image stored one 3D file per channel (nnU-Net v2), each file and their common grid;
    the header of the stacked image, or None when a file cannot be used."""
    headers = [
        _check_image_file(path, f"{path}: {context}", 1, "a file per channel must hold 1", problems) for path in paths
    ]
    if not headers or any(h is None or h.channels != 1 for h in headers):
        return None
    first = headers[0]
    for c, (path, header) in enumerate(zip(paths, headers)):
        if c:
            problems += _geometry_problems(f"{path}: {context}", f"channel {c}", header, "channel 0", first)
    return ImageHeader(shape=(*first.spatial_shape, len(paths)), affine=first.affine, dtype=first.dtype)


def _read(path: Path, where: str, role: str, problems: list[str]) -> tuple[ImageHeader, np.ndarray] | None:
    """Header and voxels of a NIfTI file (voxels read once), or None after recording why not."""
    import nibabel as nib

    try:
        header = read_header(path)
    except DatasetError as e:
        problems.append(f"{where}{role}: {str(e).removeprefix(f'{path}: ')}")
        return None
    try:
        voxels = np.asarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel/zlib raise many types for a damaged file
        problems.append(f"{where}{role}: voxels cannot be read ({_short(e)})")
        return None
    return header, voxels


def _check_image_file(
    path: Path, where: str, channels: int | None, declared: str, problems: list[str]
) -> ImageHeader | None:
    read = _read(path, where, "image", problems)
    if read is None:
        return None
    header, voxels = read
    if voxels.ndim not in (3, 4):
        problems.append(f"{where}image must be 3D or 4D (channels last), got shape {tuple(voxels.shape)}")
        return None
    if channels is not None and header.channels != channels:
        problems.append(f"{where}image has {header.channels} channel{'s' if header.channels != 1 else ''}, {declared}")
    problems += [f"{where}image {p}" for p in _affine_problems(header.affine)]
    if not np.issubdtype(voxels.dtype, np.integer):
        finite = np.isfinite(voxels)
        if not finite.all():
            nan = int(np.isnan(voxels).sum())
            inf = int(voxels.size - finite.sum()) - nan
            counts = " and ".join(k for k in (f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else "") if k)
            problems.append(f"{where}image holds {counts} voxel{'s' if nan + inf > 1 else ''}")
    return header


def _check_label_file(case: Case, labels: dict[int, str], problems: list[str]) -> ImageHeader | None:
    where = f"{case.label}: case {case.id}: "
    read = _read(case.label, where, "label", problems)
    if read is None:
        return None
    header, voxels = read
    if voxels.ndim == 4 and voxels.shape[3] == 1:
        voxels = voxels[..., 0]
    if voxels.ndim != 3:
        problems.append(f"{where}label must be 3D, got shape {tuple(voxels.shape)}")
        return None
    problems += [f"{where}label {p}" for p in _affine_problems(header.affine)]
    values, problem = _label_values(voxels)
    if problem:
        problems.append(f"{where}label {problem}")
    elif labels:
        undeclared = [int(v) for v in values if int(v) not in labels]
        if undeclared:
            problems.append(
                f"{where}label holds values {undeclared} not declared in dataset.json 'labels' {sorted(labels)}"
            )
    return header


def _label_values(voxels: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The distinct values of a label map, or a problem when they are not finite whole numbers."""
    if not np.issubdtype(voxels.dtype, np.integer):
        if not np.isfinite(voxels).all():
            return np.empty(0), "holds NaN or infinite voxels"
        fractional = voxels[np.rint(voxels) != voxels]
        if fractional.size:
            return np.empty(0), f"holds values that are not whole numbers (e.g. {float(fractional[0]):g})"
        voxels = voxels.astype(np.int64)
    low, high = int(voxels.min()), int(voxels.max())
    if low >= 0 and high < 1 << 16:
        return np.flatnonzero(np.bincount(voxels.ravel().astype(np.intp), minlength=high + 1)), None
    return np.unique(voxels), None


def _affine_problems(affine: np.ndarray) -> list[str]:
    linear = affine[:3, :3]
    if not np.isfinite(affine).all():
        return ["affine holds NaN or infinite values"]
    spacing = np.linalg.norm(linear, axis=0)
    if not (spacing > 0).all():
        return [f"spacing {_fmt(spacing)} must be positive"]
    if abs(np.linalg.det(linear / spacing)) < 1e-6:
        return ["affine is not invertible (its voxel axes are parallel)"]
    return []


def _geometry_problems(
    where: str, role: str, header: ImageHeader, reference_role: str, reference: ImageHeader
) -> list[str]:
    """The first way the grid of `header` (the `role` file) differs from that of `reference`, if any."""
    if reference.spatial_shape != header.spatial_shape:
        return [
            f"{where}{role} shape {header.spatial_shape} differs from {reference_role} shape {reference.spatial_shape}"
        ]
    if _affine_problems(reference.affine) or _affine_problems(header.affine):
        return []
    ref_sp, sp = np.asarray(reference.spacing), np.asarray(header.spacing)
    if not np.allclose(sp, ref_sp, rtol=SPACING_RTOL, atol=0):
        return [f"{where}{role} spacing {_fmt(sp)} differs from {reference_role} spacing {_fmt(ref_sp)}"]
    ref_dir, direction = reference.affine[:3, :3] / ref_sp, header.affine[:3, :3] / sp
    if not np.allclose(direction, ref_dir, rtol=0, atol=DIRECTION_ATOL):
        return [
            f"{where}{role} orientation differs from the {reference_role}'s (direction cosines differ by up to "
            f"{np.abs(direction - ref_dir).max():.3g})"
        ]
    offset = np.linalg.norm(header.affine[:3, 3] - reference.affine[:3, 3])
    if offset > ORIGIN_ATOL_MM:
        return [
            f"{where}{role} origin {_fmt(header.affine[:3, 3])} differs from {reference_role} origin "
            f"{_fmt(reference.affine[:3, 3])} by {offset:.3g} mm"
        ]
    return []


def _shared_files(cases: Iterable[Case], selected: set[str]) -> dict[str, list[str]]:
    """Problems (by case id) for a file that serves as image or label of more than one entry."""
    first_use: dict[tuple, tuple[str, str]] = {}
    problems: dict[str, list[str]] = {}
    for case in cases:
        for role, path in (*(("image", p) for p in case.images), ("label", case.label)):
            if path is None:
                continue
            key = _file_key(path)
            if key not in first_use:
                first_use[key] = (case.id, role)
                continue
            other_id, other_role = first_use[key]
            message = f"{path}: case {case.id}: {role} file is also the {other_role} of case {other_id}"
            if case.id in selected:
                problems.setdefault(case.id, []).append(message)
            elif other_id in selected:
                problems.setdefault(other_id, []).append(message)
    return problems


def _file_key(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return ("path", os.path.abspath(path))
    return ("inode", st.st_dev, st.st_ino)


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]
