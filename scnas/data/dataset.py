"""Task folders in the two formats users bring: MSD and nnU-Net v2 raw; cases and their header geometry.

An MSD task holds `dataset.json` (`modality`, `labels` value -> name, `training: [{image, label}]`,
`numTraining`), `imagesTr/` and `labelsTr/`; images are 3D, or 4D with the channels last (BrainTumour:
240x240x155x4). An nnU-Net v2 raw dataset holds `dataset.json` (`channel_names`, `labels` name -> value,
`numTraining`, `file_ending`), `imagesTr/CASE_XXXX<file_ending>` (one 3D file per channel XXXX) and
`labelsTr/CASE<file_ending>`; its cases are the files of labelsTr, unless a `dataset` key lists them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from scnas.errors import DatasetError, os_error_cause

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MSD = "MSD"
NNUNET = "nnU-Net v2"
_NNUNET_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_MSD_KEYS = ("modality", "labels", "training")
_CHANNEL_FILE = re.compile(r"(.+)_(\d{4})")


def case_id_from_path(path: str) -> str:
    """`./imagesTr/BRATS_001.nii.gz` -> `BRATS_001`."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def file_problem(path: Path) -> str | None:
    """Why `path` is not a regular file that can be opened (missing, a dangling link, a symlink loop, a
    folder), in words; None when it is one. Symbolic links are followed."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (too many levels of symbolic links)"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            link = _dangling_link(Path(path))
            if link is not None:
                return f"dangling symbolic link: {link} points to {os.readlink(link)}, which does not exist"
            return "file not found" if e.errno == errno.ENOENT else os_error_cause(e)
        return os_error_cause(e)
    if stat.S_ISDIR(st.st_mode):
        if os.path.islink(path):
            return f"is a symbolic link to the folder {os.readlink(path)}, not a file"
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return None


def _dangling_link(path: Path) -> Path | None:
    """The first symbolic link on the way to `path` whose target does not exist, if any."""
    for step in (*reversed(path.parents), path):
        if os.path.islink(step) and not os.path.exists(step):
            return step
    return None


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """`relative`, a path from dataset.json, as a path inside `root`.

    Refuses, as written and without following links, a path that leaves the folder (a `..` escape, an
    absolute path elsewhere): the guard against a hostile dataset.json. Symbolic links inside the folder are
    the user's staging and are followed. Also refuses paths the file system cannot look up (a NUL byte, a
    name too long, a symlink loop); a missing file is left for the case checks to report.
    """
    where = root / "dataset.json"
    if not isinstance(relative, str) or not relative:
        raise DatasetError(f"{where}: {what}: path must be a non-empty string")
    if "\0" in relative:
        raise DatasetError(f"{where}: {what}: path {relative!r} holds a NUL byte")
    candidate = Path(relative)
    full = Path(os.path.normpath(candidate if candidate.is_absolute() else root / candidate))
    if not _lexically_inside(full, root):
        raise DatasetError(f"{where}: {what}: path {relative!r} leaves the dataset folder")
    try:
        os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DatasetError(f"{where}: {what}: path {relative!r} is a symlink loop") from None
        shown = repr(relative) if len(relative) <= 100 else f"{relative[:60]!r}... ({len(relative)} characters)"
        raise DatasetError(f"{where}: {what}: path {shown}: {os_error_cause(e)}") from None
    return full


def _lexically_inside(path: Path, root: Path) -> bool:
    """Whether `path`, normalised as text, lies in `root` as given or in the folder `root` really is."""
    absolute = os.path.abspath(path)
    for base in {os.path.abspath(root), os.path.realpath(root)}:
        if absolute == base or absolute.startswith(base.rstrip(os.sep) + os.sep):
            return True
    return False


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

    problem = file_problem(path)
    if problem is not None:
        raise DatasetError(f"{path}: {problem}")
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
    """One training case: id, its image files (one 4D or 3D file, or one 3D file per channel) and label;
    geometry is read from the (first) image header on demand."""

    id: str
    images: tuple[Path, ...]
    label: Path | None = None

    @property
    def image(self) -> Path | tuple[Path, ...]:
        """The image file, or the channel files of a case stored one file per channel: what
        `scnas.data.nifti.load_image` reads."""
        return self.images[0] if len(self.images) == 1 else self.images

    @cached_property
    def header(self) -> ImageHeader:
        first = read_header(self.images[0])
        if len(self.images) == 1:
            return first
        return ImageHeader(shape=(*first.spatial_shape, len(self.images)), affine=first.affine, dtype=first.dtype)

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
    """A task: its folder, modalities by channel, labels by value, the training cases and the format
    its folder is in (MSD or NNUNET)."""

    root: Path
    name: str
    modalities: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[Case, ...]
    format: str = MSD

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


def dataset_format(data: dict[str, Any]) -> str:
    """NNUNET for a dataset.json with nnU-Net v2's `channel_names` or `file_ending`, else MSD."""
    return NNUNET if "channel_names" in data or "file_ending" in data else MSD


def parse_dataset(root: str | os.PathLike) -> Dataset:
    """Parse dataset.json of the task at `root`, MSD or nnU-Net v2 (structure only; images are not opened).

    Raises DatasetError with the first problem; `scnas.data.check` reports all of them.
    """
    dataset, problems = parse_dataset_problems(root)
    if problems:
        raise DatasetError(problems[0])
    return dataset


def parse_dataset_problems(root: str | os.PathLike) -> tuple[Dataset, list[str]]:
    """Parse dataset.json (and, for nnU-Net v2, the file names), collecting every structural problem (one
    line each) instead of stopping.

    The Dataset holds what did parse (a faulty `modality` or `labels` is left empty, unparsable cases are
    dropped), so the case files can still be checked. nnU-Net v2 problems name the format's rule.
    """
    root = Path(root)
    data = read_dataset_json(root)
    if dataset_format(data) == NNUNET:
        return _parse_nnunet(root, data)
    return _parse_msd(root, data)


def _parse_msd(root: Path, data: dict[str, Any]) -> tuple[Dataset, list[str]]:
    where = root / "dataset.json"
    problems = [
        f"{where}: missing key {key!r} (read as an MSD dataset.json; an nnU-Net v2 one has "
        f"{', '.join(map(repr, _NNUNET_KEYS))})"
        for key in _MSD_KEYS
        if key not in data
    ]
    modalities = _section(data, "modality", lambda v, p: _parse_channels(v, where, p, "modality"), (), problems)
    labels = _section(data, "labels", lambda v, p: _parse_msd_labels(v, where, p), {}, problems)
    cases = _parse_training(root, data["training"], where, problems) if "training" in data else []
    if (
        "numTraining" in data
        and isinstance(data.get("training"), list)
        and data["numTraining"] != len(data["training"])
    ):
        problems.append(
            f"{where}: numTraining is {data['numTraining']} but 'training' lists {len(data['training'])} cases"
        )
    name = str(data.get("name", root.name))
    return Dataset(root=root, name=name, modalities=modalities, labels=labels, cases=tuple(cases)), problems


def _section(data: dict[str, Any], key: str, parse, empty, problems: list[str]):
    """`parse(data[key], found)` when the key is there and parses without problems, else `empty`."""
    found: list[str] = []
    value = parse(data[key], found) if key in data else empty
    problems.extend(found)
    return empty if found else value


def _parse_channels(channels: Any, where: Path, problems: list[str], key: str) -> tuple[str, ...]:
    if not isinstance(channels, dict) or not channels:
        problems.append(f'{where}: {key!r} must be a non-empty object like {{"0": "MRI"}}')
        return ()
    try:
        by_channel = {int(k): str(v) for k, v in channels.items()}
    except (TypeError, ValueError):
        problems.append(f"{where}: {key!r} keys must be channel numbers 0, 1, ...")
        return ()
    if sorted(by_channel) != list(range(len(by_channel))):
        problems.append(f"{where}: {key!r} keys must be the channel numbers 0..{len(by_channel) - 1}")
        return ()
    return tuple(by_channel[k] for k in range(len(by_channel)))


def _parse_msd_labels(labels_raw: Any, where: Path, problems: list[str]) -> dict[int, str]:
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
    return _with_background(labels, where, problems)


def _with_background(labels: dict[int, str], where: Path, problems: list[str]) -> dict[int, str]:
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
        case = Case(id=case_id_from_path(entry["image"]), images=(image,), label=label)
        if case.id in seen:
            problems.append(f"{where}: case {case.id!r} is listed twice (training[{seen[case.id]}] and training[{i}])")
            continue
        seen[case.id] = i
        cases.append(case)
    return cases


def _parse_nnunet(root: Path, data: dict[str, Any]) -> tuple[Dataset, list[str]]:
    where = root / "dataset.json"
    problems = [
        f"{where}: missing key {key!r} (nnU-Net v2 format: dataset.json needs {', '.join(map(repr, _NNUNET_KEYS))})"
        for key in _NNUNET_KEYS
        if key not in data
    ]
    modalities = _section(
        data, "channel_names", lambda v, p: _parse_channels(v, where, p, "channel_names"), (), problems
    )
    labels = _section(data, "labels", lambda v, p: _parse_named_labels(v, where, p), {}, problems)
    ending = data.get("file_ending")
    if "file_ending" in data and ending not in NIFTI_SUFFIXES:
        problems.append(
            f"{where}: file_ending {ending!r} is not supported: scnas reads NIfTI files, '.nii.gz' or '.nii'"
        )
    cases: list[Case] = []
    if ending in NIFTI_SUFFIXES:
        if "dataset" in data:
            cases, found = _nnunet_listed_in_json(root, data["dataset"], ending, len(modalities), problems)
            counted = "'dataset' lists"
        else:
            cases, found = _nnunet_from_folders(root, ending, len(modalities), problems)
            counted = "labelsTr holds"
        number = data.get("numTraining")
        if "numTraining" in data and found is not None and number != found:
            problems.append(f"{where}: numTraining is {number} but {counted} {found} cases")
    name = str(data.get("name", root.name))
    dataset = Dataset(root=root, name=name, modalities=modalities, labels=labels, cases=tuple(cases), format=NNUNET)
    return dataset, problems


def _parse_named_labels(labels_raw: Any, where: Path, problems: list[str]) -> dict[int, str]:
    """nnU-Net v2 labels, name -> value, as value -> name; regions and the ignore label are refused."""
    if not isinstance(labels_raw, dict) or not labels_raw:
        problems.append(f'{where}: \'labels\' must be a non-empty object like {{"background": 0, "tumour": 1}}')
        return {}
    labels: dict[int, str] = {}
    for name, value in labels_raw.items():
        if isinstance(value, (list, tuple)):
            problems.append(
                f"{where}: label {name!r} is a region {value} (nnU-Net's region-based training), which scnas "
                "does not support: give each label one value"
            )
        elif name == "ignore":
            problems.append(f"{where}: label 'ignore' is nnU-Net's ignore label, which scnas does not support")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{where}: label {name!r} has value {value!r}, not a non-negative whole number")
        elif value in labels:
            problems.append(f"{where}: labels {labels[value]!r} and {name!r} both have the value {value}")
        else:
            labels[value] = str(name)
    return _with_background(labels, where, problems)


def _nnunet_listed_in_json(
    root: Path, entries: Any, ending: str, channels: int, problems: list[str]
) -> tuple[list[Case], int | None]:
    """Cases of nnU-Net v2's optional `dataset` key: {case: {"images": [one per channel], "label": path}}."""
    where = root / "dataset.json"
    if not isinstance(entries, dict) or not entries:
        problems.append(f"{where}: 'dataset' must be a non-empty object {{case: {{images: [...], label}}}}")
        return [], None
    cases = []
    for case_id, entry in entries.items():
        key = f"dataset[{case_id!r}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or "label" not in entry:
            problems.append(f"{where}: {key} must be an object with 'images' (one file per channel) and 'label'")
            continue
        if channels and len(entry["images"]) != channels:
            problems.append(
                f"{where}: {key}.images lists {len(entry['images'])} files, channel_names declares {channels} "
                "(nnU-Net v2: one file per channel)"
            )
            continue
        try:
            images = tuple(resolve_inside(root, p, f"{key}.images[{i}]") for i, p in enumerate(entry["images"]))
            label = resolve_inside(root, entry["label"], f"{key}.label")
        except DatasetError as e:
            problems.append(str(e))
            continue
        wrong = [p for p in (*images, label) if not p.name.endswith(ending)]
        if wrong:
            problems += [f"{p}: case {case_id}: {_ending_rule(ending)}" for p in wrong]
            continue
        cases.append(Case(id=str(case_id), images=images, label=label))
    return cases, len(entries)


def _ending_rule(ending: str) -> str:
    return f"does not end with {ending!r} (nnU-Net v2: every image and label file ends with file_ending)"


def _nnunet_from_folders(root: Path, ending: str, channels: int, problems: list[str]) -> tuple[list[Case], int | None]:
    """Cases of an nnU-Net v2 dataset from its file names: labelsTr/CASE<ending> and imagesTr/CASE_XXXX<ending>.

    A case whose files break the format's rules is reported (naming the file and the rule) and left out.
    """
    label_names = _list_folder(root / "labelsTr", problems)
    image_names = _list_folder(root / "imagesTr", problems)
    if label_names is None or image_names is None:
        return [], None
    labels: dict[str, Path] = {}
    misnamed_labels = set()
    for name in label_names:
        path = root / "labelsTr" / name
        if name.endswith(ending):
            labels[name[: -len(ending)]] = path
        else:
            problems.append(f"{path}: {_ending_rule(ending)}")
            misnamed_labels.add(case_id_from_path(name))
    found, misnamed = _channel_files(root / "imagesTr", image_names, ending, channels, problems)
    for case_id in sorted(set(found) - set(labels) - misnamed_labels):
        for path in found[case_id].values():
            problems.append(
                f"{path}: case {case_id}: image without a label file labelsTr/{case_id}{ending} "
                "(nnU-Net v2: the cases are the files of labelsTr)"
            )
    cases = []
    for case_id in sorted(labels):
        files = found.get(case_id, {})
        if not files and not any(c == case_id for c, _ in misnamed):
            problems.append(
                f"{labels[case_id]}: case {case_id}: label file without images "
                f"(nnU-Net v2: expected imagesTr/{case_id}_0000{ending}, one file per channel)"
            )
            continue
        expected = range(channels) if channels else sorted(files)
        missing = [c for c in expected if c not in files]
        for c in missing:
            if (case_id, c) in misnamed:
                continue
            problems.append(
                f"{root / 'imagesTr' / f'{case_id}_{c:04d}{ending}'}: case {case_id}: missing channel file "
                f"(nnU-Net v2: one file {case_id}_XXXX{ending} per channel of channel_names, "
                f"0000..{channels - 1:04d})"
            )
        if not missing:
            cases.append(Case(id=case_id, images=tuple(files[c] for c in expected), label=labels[case_id]))
    return cases, len(labels.keys() | misnamed_labels)


def _channel_files(
    folder: Path, names: list[str], ending: str, channels: int, problems: list[str]
) -> tuple[dict[str, dict[int, Path]], set[tuple[str, int]]]:
    """{case: {channel: path}} from the names CASE_XXXX<ending> of a folder, reporting names that break the
    rule; also the (case, channel) of the files with another NIfTI ending, already reported."""
    found: dict[str, dict[int, Path]] = {}
    misnamed: set[tuple[str, int]] = set()
    for name in names:
        path = folder / name
        if not name.endswith(ending):
            problems.append(f"{path}: {_ending_rule(ending)}")
            match = _CHANNEL_FILE.fullmatch(case_id_from_path(name))
            if match is not None:
                misnamed.add((match.group(1), int(match.group(2))))
            continue
        match = _CHANNEL_FILE.fullmatch(name[: -len(ending)])
        if match is None:
            problems.append(
                f"{path}: image file name is not CASE_XXXX{ending} "
                "(nnU-Net v2: the case id, '_' and a 4-digit channel number)"
            )
            continue
        case_id, channel = match.group(1), int(match.group(2))
        if channels and channel >= channels:
            problems.append(
                f"{path}: case {case_id}: extra channel index {channel:04d} "
                f"(nnU-Net v2: channel_names declares {channels} channel{'s' if channels > 1 else ''}, "
                f"0000..{channels - 1:04d})"
            )
            continue
        found.setdefault(case_id, {})[channel] = path
    return found, misnamed


def _list_folder(folder: Path, problems: list[str], required: bool = True) -> list[str] | None:
    """The sorted names in `folder` (hidden ones left out), followed if it is a symbolic link; None, after
    recording why, when it cannot be listed (or, unless `required`, silently when it does not exist)."""
    try:
        return sorted(name for name in os.listdir(folder) if not name.startswith("."))
    except FileNotFoundError:
        if not required and not os.path.islink(folder):
            return None
        problem = file_problem(folder) or "folder not found"
        problems.append(f"{folder}: {problem}")
    except NotADirectoryError:
        problems.append(f"{folder}: is a file, not a folder")
    except OSError as e:
        problems.append(f"{folder}: cannot list ({os_error_cause(e)})")
    return None


def list_test_cases(root: str | os.PathLike) -> dict[str, tuple[Path, ...]]:
    """The test cases of the task at `root` (case id -> its image files, one per channel for nnU-Net v2):
    MSD's `test` list (or imagesTs/ when dataset.json lists none), nnU-Net v2's imagesTs/CASE_XXXX files.

    Empty when there are none; DatasetError naming the file and the rule when the files break the format.
    """
    root = Path(root)
    data = read_dataset_json(root)
    problems: list[str] = []
    if dataset_format(data) == NNUNET:
        cases = _nnunet_test_cases(root, data, problems)
    else:
        cases = _msd_test_cases(root, data, problems)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DatasetError(problems[0] + more)
    return cases


def _msd_test_cases(root: Path, data: dict[str, Any], problems: list[str]) -> dict[str, tuple[Path, ...]]:
    listed = data.get("test")
    if listed:
        if not isinstance(listed, list):
            problems.append(f"{root / 'dataset.json'}: 'test' must be a list of image paths")
            return {}
        paths = []
        for i, entry in enumerate(listed):
            try:
                paths.append(resolve_inside(root, entry, f"test[{i}]"))
            except DatasetError as e:
                problems.append(str(e))
    else:
        names = _list_folder(root / "imagesTs", problems, required=False) or []
        paths = [root / "imagesTs" / n for n in names if n.endswith(NIFTI_SUFFIXES)]
    cases: dict[str, tuple[Path, ...]] = {}
    for path in paths:
        case_id = case_id_from_path(path.name)
        if case_id in cases:
            problems.append(f"{path}: test case {case_id!r} is listed twice")
        cases[case_id] = (path,)
    return cases


def _nnunet_test_cases(root: Path, data: dict[str, Any], problems: list[str]) -> dict[str, tuple[Path, ...]]:
    ending = data.get("file_ending")
    channel_names = data.get("channel_names")
    if ending not in NIFTI_SUFFIXES or not isinstance(channel_names, dict):
        problems.append(f"{root / 'dataset.json'}: needs 'channel_names' and a file_ending '.nii.gz' or '.nii'")
        return {}
    names = _list_folder(root / "imagesTs", problems, required=False)
    if names is None:
        return {}
    channels = len(channel_names)
    found, misnamed = _channel_files(root / "imagesTs", names, ending, channels, problems)
    cases = {}
    for case_id in sorted(found):
        missing = [c for c in range(channels) if c not in found[case_id]]
        for c in (c for c in missing if (case_id, c) not in misnamed):
            problems.append(
                f"{root / 'imagesTs' / f'{case_id}_{c:04d}{ending}'}: test case {case_id}: missing channel file "
                f"(nnU-Net v2: one file per channel of channel_names, 0000..{channels - 1:04d})"
            )
        if not missing:
            cases[case_id] = tuple(found[case_id][c] for c in range(channels))
    return cases


def case_rng(case_id: str) -> np.random.Generator:
    """A generator seeded by the case id alone, so that reruns sample the same voxels."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "little"))
