"""Write a task in the other dataset format (MSD <-> nnU-Net v2 raw), so the same data serves both tools.

Voxels (on-disk type and scaling) and headers are kept: nnU-Net's one file per channel is a 4D MSD image
split along its last axis, and back; files already in the wanted layout are copied (gzipped if need be).
"""

from __future__ import annotations

import gzip
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scnas.data.check import check_image, validate_dataset
from scnas.data.dataset import MSD, NNUNET, Dataset, list_test_cases, read_dataset_json
from scnas.errors import DatasetError, ScnasError, describe_os_error
from scnas.io import write_json

FORMATS = {"nnunetv2": NNUNET, "msd": MSD}
ENDING = ".nii.gz"
_METADATA = ("name", "description", "reference", "licence", "release")


def convert_dataset(source: Path, target: Path, to: str) -> Path:
    """Write the task at `source` as a `to` dataset ("nnunetv2" or "msd") at `target`, test images
    included; returns `target`.

    The source is validated first. Everything is written into a temporary folder next to `target`,
    renamed at the end, so `target` is complete or absent; an existing non-empty `target` is refused.
    nnU-Net v2 names label 0 "background", so a converted MSD task's label 0 is called that.
    """
    if to not in FORMATS:
        raise ScnasError(f"convert: unknown format {to!r}: choose one of {', '.join(map(repr, FORMATS))}")
    source, target = Path(source), Path(target)
    _refuse_existing(target)
    dataset = validate_dataset(source)
    if dataset.format == FORMATS[to]:
        raise ScnasError(f"{source}: is already an {dataset.format} dataset")
    tests = list_test_cases(source)
    _validate_test_images(tests, dataset.num_channels)
    meta = {k: v for k, v in read_dataset_json(source).items() if k in _METADATA}
    labels = _nnunet_labels(dataset) if to == "nnunetv2" else None
    staging = _staging_folder(target)
    try:
        if labels is not None:
            _write_nnunet(dataset, tests, labels, meta, staging)
        else:
            _write_msd(dataset, tests, meta, staging)
        try:
            os.replace(staging, target)
        except OSError as e:
            raise ScnasError(f"{describe_os_error(e, target)} (the converted dataset stays unwritten)") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _validate_test_images(tests: dict[str, tuple[Path, ...]], channels: int) -> None:
    problems = [
        p for files in tests.values() for p in check_image(files if len(files) > 1 else files[0], channels, "the task")
    ]
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DatasetError(f"test image {problems[0]}{more}")


def _refuse_existing(target: Path) -> None:
    if os.path.lexists(target) and not (target.is_dir() and not any(target.iterdir())):
        raise ScnasError(f"{target}: already exists and is not an empty folder; give a new folder to convert into")


def _staging_folder(target: Path) -> Path:
    """A new folder next to `target`, made with the umask's permissions (mkdtemp's would be private)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            staging = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
            try:
                staging.mkdir()
                return staging
            except FileExistsError:
                continue
    except OSError as e:
        raise ScnasError(describe_os_error(e)) from None


def _nnunet_labels(dataset: Dataset) -> dict[str, int]:
    """nnU-Net v2 labels (name -> value, "background" 0), refusing what nnU-Net would not take."""
    where = dataset.root / "dataset.json"
    values = sorted(dataset.labels)
    if values != list(range(len(values))):
        raise DatasetError(f"{where}: label values {values} are not 0, 1, 2, ... as nnU-Net v2 requires")
    names = {0: "background", **{v: dataset.labels[v] for v in values if v}}
    seen: dict[str, int] = {}
    for value, name in names.items():
        if name in seen:
            raise DatasetError(
                f"{where}: labels {seen[name]} and {value} are both named {name!r}; nnU-Net v2 needs distinct names"
            )
        if name == "ignore" and value:
            raise DatasetError(f"{where}: label {value} is named 'ignore', nnU-Net v2's ignore label; rename it")
        seen[name] = value
    return {name: value for value, name in names.items()}


def _write_nnunet(
    dataset: Dataset, tests: dict[str, tuple[Path, ...]], labels: dict[str, int], meta: dict[str, Any], out: Path
) -> None:
    for case in dataset.cases:
        _split_channels(case.images[0], out / "imagesTr", case.id)
        _copy_nifti(case.label, out / "labelsTr" / f"{case.id}{ENDING}")
    for case_id, files in tests.items():
        _split_channels(files[0], out / "imagesTs", case_id)
    write_json(
        out / "dataset.json",
        {
            **meta,
            "channel_names": {str(c): m for c, m in enumerate(dataset.modalities)},
            "labels": labels,
            "numTraining": len(dataset.cases),
            "file_ending": ENDING,
        },
    )


def _write_msd(dataset: Dataset, tests: dict[str, tuple[Path, ...]], meta: dict[str, Any], out: Path) -> None:
    training = []
    for case in dataset.cases:
        image, label = f"./imagesTr/{case.id}{ENDING}", f"./labelsTr/{case.id}{ENDING}"
        _stack_channels(case.images, out / image)
        _copy_nifti(case.label, out / label)
        training.append({"image": image, "label": label})
    test = []
    for case_id, files in tests.items():
        test.append(f"./imagesTs/{case_id}{ENDING}")
        _stack_channels(files, out / test[-1])
    write_json(
        out / "dataset.json",
        {
            **meta,
            "tensorImageSize": "4D" if dataset.num_channels > 1 else "3D",
            "modality": {str(c): m for c, m in enumerate(dataset.modalities)},
            "labels": {str(v): dataset.labels[v] for v in sorted(dataset.labels)},
            "numTraining": len(training),
            "numTest": len(test),
            "training": training,
            "test": test,
        },
    )


def _copy_nifti(source: Path, target: Path) -> None:
    """`source` (followed if a link) as the .nii.gz file `target`, byte for byte once uncompressed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.name.endswith(".gz"):
        shutil.copyfile(source, target)
        return
    with open(source, "rb") as raw, gzip.open(target, "wb") as packed:
        shutil.copyfileobj(raw, packed)


def _split_channels(source: Path, folder: Path, case_id: str) -> None:
    """A 3D or 4D (channels last) image as the files folder/CASE_XXXX.nii.gz, one per channel."""
    import nibabel as nib

    img = nib.load(str(source))
    if img.ndim == 3:
        _copy_nifti(source, folder / f"{case_id}_0000{ENDING}")
        return
    raw = np.asanyarray(img.dataobj.get_unscaled())
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(raw.shape[3]):
        nib.save(_with_header(raw[..., c], img), str(folder / f"{case_id}_{c:04d}{ENDING}"))


def _stack_channels(sources: Sequence[Path], target: Path) -> None:
    """One 3D file per channel as the 4D (channels last) image `target`; a single file is copied."""
    import nibabel as nib

    if len(sources) == 1:
        _copy_nifti(sources[0], target)
        return
    imgs = [nib.load(str(p)) for p in sources]
    scalings = {(float(i.dataobj.slope), float(i.dataobj.inter), i.get_data_dtype()) for i in imgs}
    if len(scalings) == 1:
        data = np.stack([np.asanyarray(i.dataobj.get_unscaled()).reshape(i.shape[:3]) for i in imgs], axis=-1)
        out = _with_header(data, imgs[0])
    else:
        data = np.stack([np.asanyarray(i.dataobj).reshape(i.shape[:3]) for i in imgs], axis=-1)
        out = nib.Nifti1Image(data, None, imgs[0].header)
        out.header.set_data_dtype(data.dtype)
        out.header.set_slope_inter(None, None)
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(target))


def _with_header(raw: np.ndarray, like: Any) -> Any:
    """A NIfTI image of on-disk voxels `raw` carrying the header of `like` (geometry, type and scaling)."""
    import nibabel as nib

    img = nib.Nifti1Image(raw, None, like.header)
    img.header.set_slope_inter(like.dataobj.slope, like.dataobj.inter)
    return img
