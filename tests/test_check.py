"""Dataset validation: a valid MSD task passes; each of many single-defect tasks gets one precise message."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scnas.data.check import check_dataset, check_image, validate_dataset
from scnas.errors import DatasetError

SHAPE = (9, 8, 7)
AFFINE = np.array([[-1.0, 0, 0, 10.0], [0, -1.2, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def make_task(root: Path, channels: int = 1, cases: int = 3, image_dtype=np.float32, label_dtype=np.uint8) -> Path:
    """A valid MSD task: `cases` cases of SHAPE, labels 0/1/2, 3D images or 4D with `channels` channels last."""
    rng = np.random.default_rng(0)
    training = []
    for i in range(cases):
        cid = f"case_{i:03d}"
        image = rng.uniform(0, 200, SHAPE + ((channels,) if channels > 1 else ()))
        label = np.zeros(SHAPE)
        label[2:5, 2:5, 2:5] = 1
        label[3, 3, 3] = 2
        write_nifti(root / "imagesTr" / f"{cid}.nii.gz", image.astype(image_dtype))
        write_nifti(root / "labelsTr" / f"{cid}.nii.gz", label.astype(label_dtype))
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    write_json(
        root,
        {
            "name": "Test",
            "tensorImageSize": "4D" if channels > 1 else "3D",
            "modality": {str(c): f"MRI{c}" for c in range(channels)},
            "labels": {"0": "background", "1": "organ", "2": "lesion"},
            "numTraining": cases,
            "numTest": 0,
            "training": training,
            "test": [],
        },
    )
    return root


def write_json(root: Path, data: dict) -> None:
    (root / "dataset.json").write_text(json.dumps(data, indent=2))


def read_json(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text())


def edit_json(root: Path, change) -> None:
    data = read_json(root)
    change(data)
    write_json(root, data)


def image(root: Path, i: int = 1) -> Path:
    return root / "imagesTr" / f"case_{i:03d}.nii.gz"


def label(root: Path, i: int = 1) -> Path:
    return root / "labelsTr" / f"case_{i:03d}.nii.gz"


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def with_voxel(path: Path, index, value, dtype=np.float32) -> None:
    data = load(path).astype(dtype)
    data[index] = value
    write_nifti(path, data)


def png_bytes() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(40)


def truncated(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def with_sform(path: Path, affine: np.ndarray) -> None:
    """Rewrite `path` with a raw sform that nibabel cannot turn into a qform (singular, zero columns)."""
    img = nib.Nifti1Image(np.asarray(nib.load(str(path)).dataobj), None)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(None, code=0)
    nib.save(img, str(path))
    assert np.allclose(nib.load(str(path)).affine, affine)


def parallel_axes(path: Path) -> None:
    affine = AFFINE.copy()
    affine[:3, 1] = affine[:3, 0]
    with_sform(path, affine)


def zero_spacing(path: Path) -> None:
    affine = AFFINE.copy()
    affine[:3, 2] = 0
    with_sform(path, affine)


def shifted(dx: float):
    affine = AFFINE.copy()
    affine[0, 3] += dx
    return affine


# (id, channels of the valid task, defect, substrings every reported message must hold: where, what)
DEFECTS = [
    ("not_json", 1, lambda r: (r / "dataset.json").write_text("{ not json"), ["dataset.json", "not valid JSON"]),
    ("no_dataset_json", 1, lambda r: (r / "dataset.json").unlink(), ["dataset.json", "file not found"]),
    ("json_list", 1, lambda r: (r / "dataset.json").write_text("[1, 2]"), ["dataset.json", "JSON object"]),
    ("missing_labels", 1, lambda r: edit_json(r, lambda d: d.pop("labels")), ["dataset.json", "'labels'"]),
    ("missing_modality", 1, lambda r: edit_json(r, lambda d: d.pop("modality")), ["dataset.json", "'modality'"]),
    (
        "no_background",
        1,
        lambda r: edit_json(r, lambda d: d["labels"].pop("0")),
        ["dataset.json", "background label 0"],
    ),
    (
        "label_key_not_number",
        1,
        lambda r: edit_json(r, lambda d: d["labels"].update({"two": "x"})),
        ["dataset.json", "'two'", "whole number"],
    ),
    (
        "modality_keys_gap",
        2,
        lambda r: edit_json(r, lambda d: d.update(modality={"0": "a", "2": "b"})),
        ["dataset.json", "'modality'"],
    ),
    (
        "entry_without_label",
        1,
        lambda r: edit_json(r, lambda d: d["training"][1].pop("label")),
        ["dataset.json", "training[1]", "'label'"],
    ),
    (
        "dotdot_escape",
        1,
        lambda r: edit_json(r, lambda d: d["training"][1].update(image="../../etc/passwd.nii.gz")),
        ["dataset.json", "training[1].image", "leaves the dataset folder"],
    ),
    (
        "absolute_outside",
        1,
        lambda r: edit_json(r, lambda d: d["training"][2].update(label="/tmp/elsewhere.nii.gz")),
        ["dataset.json", "training[2].label", "leaves the dataset folder"],
    ),
    (
        "duplicate_case",
        1,
        lambda r: edit_json(r, lambda d: d["training"].__setitem__(2, d["training"][0])),
        ["dataset.json", "'case_000'", "listed twice"],
    ),
    (
        "num_training_mismatch",
        1,
        lambda r: edit_json(r, lambda d: d.update(numTraining=5)),
        ["dataset.json", "numTraining is 5", "lists 3"],
    ),
    (
        "image_missing",
        1,
        lambda r: image(r).unlink(),
        ["imagesTr/case_001.nii.gz", "case case_001", "image: file not found"],
    ),
    (
        "label_missing",
        1,
        lambda r: label(r, 2).unlink(),
        ["labelsTr/case_002.nii.gz", "case case_002", "label: file not found"],
    ),
    ("truncated_gz", 1, lambda r: truncated(image(r)), ["imagesTr/case_001.nii.gz", "case case_001", "image", "read"]),
    (
        "garbage_bytes",
        1,
        lambda r: image(r).write_bytes(np.random.default_rng(1).bytes(2000)),
        ["imagesTr/case_001.nii.gz", "case case_001", "not a readable NIfTI"],
    ),
    (
        "gzip_of_garbage",
        1,
        lambda r: label(r).write_bytes(gzip.compress(b"hello" * 100)),
        ["labelsTr/case_001.nii.gz", "case case_001", "label", "not a readable NIfTI"],
    ),
    (
        "png_named_nii",
        1,
        lambda r: image(r, 0).write_bytes(png_bytes()),
        ["imagesTr/case_000.nii.gz", "case case_000", "not a readable NIfTI"],
    ),
    (
        "text_named_nii",
        1,
        lambda r: label(r, 0).write_text("just some text\n"),
        ["labelsTr/case_000.nii.gz", "case case_000", "not a readable NIfTI"],
    ),
    (
        "wrong_channels",
        2,
        lambda r: write_nifti(image(r), np.ones(SHAPE + (3,), np.float32)),
        ["imagesTr/case_001.nii.gz", "case case_001", "image has 3 channels, dataset.json declares 2 modalities"],
    ),
    (
        "3d_image_for_2_modalities",
        2,
        lambda r: write_nifti(image(r), np.ones(SHAPE, np.float32)),
        ["imagesTr/case_001.nii.gz", "case case_001", "image has 1 channel, dataset.json declares 2 modalities"],
    ),
    (
        "shape_mismatch",
        1,
        lambda r: write_nifti(label(r), np.zeros((9, 8, 6), np.uint8)),
        ["labelsTr/case_001.nii.gz", "case case_001", "label shape (9, 8, 6) differs from image shape (9, 8, 7)"],
    ),
    (
        "origin_mismatch",
        1,
        lambda r: write_nifti(label(r), load(label(r)), shifted(2.0)),
        ["labelsTr/case_001.nii.gz", "case case_001", "origin", "by 2 mm"],
    ),
    (
        "spacing_mismatch",
        1,
        lambda r: write_nifti(label(r), load(label(r)), AFFINE @ np.diag([1, 1, 1.2, 1])),
        [
            "labelsTr/case_001.nii.gz",
            "case case_001",
            "label spacing (1, 1.2, 3) differs from image spacing (1, 1.2, 2.5)",
        ],
    ),
    (
        "orientation_mismatch",
        1,
        lambda r: write_nifti(label(r), load(label(r)), AFFINE @ np.diag([-1, 1, 1, 1])),
        ["labelsTr/case_001.nii.gz", "case case_001", "orientation"],
    ),
    (
        "nan_in_image",
        1,
        lambda r: with_voxel(image(r), (1, 2, 3), np.nan),
        ["imagesTr/case_001.nii.gz", "case case_001", "image holds 1 NaN voxel"],
    ),
    (
        "inf_in_image",
        2,
        lambda r: with_voxel(image(r), (1, 2, 3, 1), -np.inf),
        ["imagesTr/case_001.nii.gz", "case case_001", "image holds 1 infinite voxel"],
    ),
    (
        "fractional_label",
        1,
        lambda r: with_voxel(label(r), (0, 0, 0), 1.5),
        ["labelsTr/case_001.nii.gz", "case case_001", "not whole numbers (e.g. 1.5)"],
    ),
    (
        "nan_label",
        1,
        lambda r: with_voxel(label(r), (0, 0, 0), np.nan),
        ["labelsTr/case_001.nii.gz", "case case_001", "label holds NaN"],
    ),
    (
        "undeclared_label",
        1,
        lambda r: with_voxel(label(r), (0, 0, 0), 7, np.uint8),
        ["labelsTr/case_001.nii.gz", "case case_001", "values [7] not declared", "[0, 1, 2]"],
    ),
    (
        "negative_label",
        1,
        lambda r: with_voxel(label(r), (0, 0, 0), -1, np.int16),
        ["labelsTr/case_001.nii.gz", "case case_001", "values [-1] not declared"],
    ),
    (
        "zero_spacing",
        1,
        lambda r: zero_spacing(image(r)),
        ["imagesTr/case_001.nii.gz", "case case_001", "image spacing (1, 1.2, 0) must be positive"],
    ),
    (
        "singular_affine",
        1,
        lambda r: parallel_axes(label(r)),
        ["labelsTr/case_001.nii.gz", "case case_001", "label affine is not invertible"],
    ),
    (
        "2d_image",
        1,
        lambda r: write_nifti(image(r), np.ones((9, 8), np.float32)),
        ["imagesTr/case_001.nii.gz", "case case_001", "image must be 3D or 4D", "(9, 8)"],
    ),
    (
        "5d_image",
        2,
        lambda r: write_nifti(image(r), np.ones(SHAPE + (2, 2), np.float32)),
        ["imagesTr/case_001.nii.gz", "case case_001", "image must be 3D or 4D"],
    ),
    (
        "4d_label",
        1,
        lambda r: write_nifti(label(r), np.zeros(SHAPE + (2,), np.uint8)),
        ["labelsTr/case_001.nii.gz", "case case_001", "label must be 3D"],
    ),
    (
        "same_image_twice",
        1,
        lambda r: (image(r, 2).unlink(), os.link(image(r, 0), image(r, 2))),
        ["imagesTr/case_002.nii.gz", "case case_002", "image file is also the image of case case_000"],
    ),
    (
        "same_label_twice",
        1,
        lambda r: (label(r, 1).unlink(), os.symlink(label(r, 0), label(r, 1))),
        ["labelsTr/case_001.nii.gz", "case case_001", "label file is also the label of case case_000"],
    ),
]


@pytest.mark.parametrize("channels, defect, expected", [d[1:] for d in DEFECTS], ids=[d[0] for d in DEFECTS])
def test_each_defect_is_reported_once_and_nothing_is_written(tmp_path, channels, defect, expected):
    root = make_task(tmp_path / "task", channels=channels)
    defect(root)
    before = snapshot(tmp_path)
    dataset, problems = check_dataset(root)
    assert snapshot(tmp_path) == before
    assert len(problems) == 1, problems
    for text in expected:
        assert text in problems[0], (text, problems[0])
    with pytest.raises(DatasetError) as info:
        validate_dataset(root)
    assert str(info.value) == problems[0]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("channels", [1, 2])
def test_valid_tasks_pass(tmp_path, channels):
    root = make_task(tmp_path, channels=channels)
    before = snapshot(tmp_path)
    dataset, problems = check_dataset(root, threads=2, progress=True)
    assert problems == []
    assert dataset.case_ids == ("case_000", "case_001", "case_002")
    assert dataset.num_channels == channels
    assert validate_dataset(root).labels == {0: "background", 1: "organ", 2: "lesion"}
    assert snapshot(tmp_path) == before


def test_float_labels_holding_whole_numbers_and_integer_images_pass(tmp_path):
    root = make_task(tmp_path, image_dtype=np.uint8, label_dtype=np.float32)
    assert load(image(root)).dtype == np.uint8 and load(label(root)).dtype == np.float32
    assert check_dataset(root) == (validate_dataset(root), [])


def test_geometry_within_tolerance_passes(tmp_path):
    root = make_task(tmp_path)
    nudged = AFFINE.copy()
    nudged[:3, 3] += 1e-3
    nudged[:3, :3] *= 1 + 1e-4
    write_nifti(label(root), load(label(root)), nudged)
    assert check_dataset(root)[1] == []


def test_all_defects_of_a_task_are_reported_in_case_order(tmp_path):
    root = make_task(tmp_path / "task", cases=5)
    edit_json(root, lambda d: d.update(numTraining=4))
    image(root, 0).unlink()
    with_voxel(label(root, 1), (0, 0, 0), 7, np.uint8)
    with_voxel(image(root, 1), (1, 1, 1), np.nan)
    write_nifti(label(root, 3), np.zeros((9, 8, 6), np.uint8))
    image(root, 4).write_text("not an image")
    dataset, problems = check_dataset(root, threads=3)
    assert dataset is None
    expected = [
        ("dataset.json", "numTraining is 4"),
        ("case case_000", "image: file not found"),
        ("case case_001", "image holds 1 NaN voxel"),
        ("case case_001", "values [7] not declared"),
        ("case case_003", "label shape (9, 8, 6) differs"),
        ("case case_004", "not a readable NIfTI"),
    ]
    assert len(problems) == len(expected), problems
    for (where, what), problem in zip(expected, problems):
        assert where in problem and what in problem, (where, what, problem)
    assert check_dataset(root, threads=1)[1] == problems


def test_validate_dataset_message_counts_the_other_problems(tmp_path):
    root = make_task(tmp_path / "my task", cases=4)
    for i in (1, 2, 3):
        image(root, i).unlink()
    with pytest.raises(DatasetError) as info:
        validate_dataset(root)
    assert str(info.value) == (
        f"{image(root, 1)}: case case_001: image: file not found (and 2 more problems: "
        f"run `scnas check --dataset '{root}'`)"
    )
    image(root, 3).write_bytes(image(root, 0).read_bytes())
    with pytest.raises(DatasetError, match=r"case_001: image: file not found \(and 1 more problem: run"):
        validate_dataset(root)


def test_case_ids_restrict_the_per_case_checks(tmp_path):
    root = make_task(tmp_path, cases=3)
    with_voxel(image(root, 2), (0, 0, 0), np.inf)
    dataset = validate_dataset(root, case_ids=["case_000", "case_001"])
    assert dataset.case_ids == ("case_000", "case_001", "case_002")
    _, problems = check_dataset(root, case_ids=["case_002", "nope"])
    assert len(problems) == 2
    assert "no case 'nope'" in problems[0] and "dataset.json" in problems[0]
    assert "case case_002: image holds 1 infinite voxel" in problems[1]


def test_shared_file_is_reported_when_either_case_is_checked(tmp_path):
    root = make_task(tmp_path, cases=3)
    image(root, 2).unlink()
    image(root, 2).symlink_to(image(root, 0))
    for ids in (["case_000"], ["case_002"]):
        problems = check_dataset(root, case_ids=ids)[1]
        assert problems == [f"{image(root, 2)}: case case_002: image file is also the image of case case_000"]
    assert check_dataset(root, case_ids=["case_001"])[1] == []


def test_check_image_for_prediction(tmp_path):
    good = write_nifti(tmp_path / "scan.nii.gz", np.ones(SHAPE + (4,), np.float32))
    assert check_image(good, expected_channels=4) == []
    assert check_image(good, expected_channels=2) == [f"{good}: image has 4 channels, the model expects 2"]
    assert check_image(write_nifti(tmp_path / "ct.nii", np.zeros(SHAPE, np.int16)), 1) == []
    bad = np.ones(SHAPE, np.float32)
    bad[0, 0, 0], bad[1, 1, 1], bad[2, 2, 2] = np.nan, np.nan, np.inf
    path = write_nifti(tmp_path / "nan.nii.gz", bad)
    assert check_image(path, 1) == [f"{path}: image holds 2 NaN and 1 infinite voxels"]
    flat = write_nifti(tmp_path / "flat.nii.gz", np.ones((9, 8), np.float32))
    assert check_image(flat, 1) == [f"{flat}: image must be 3D or 4D (channels last), got shape (9, 8)"]
    squashed = write_nifti(tmp_path / "squashed.nii.gz", np.ones(SHAPE, np.float32))
    zero_spacing(squashed)
    assert check_image(squashed, 1) == [f"{squashed}: image spacing (1, 1.2, 0) must be positive"]
    text = tmp_path / "notes.nii.gz"
    text.write_text("hello")
    [problem] = check_image(text, 1)
    assert problem.startswith(f"{text}: image: not a readable NIfTI file")
    assert check_image(tmp_path / "missing.nii.gz", 1) == [f"{tmp_path / 'missing.nii.gz'}: image: file not found"]


def test_paths_the_file_system_cannot_look_up_are_each_one_problem(tmp_path):
    root = make_task(tmp_path / "task", cases=4)
    os.symlink("loop.nii.gz", root / "imagesTr" / "loop.nii.gz")
    bad = {1: "./imagesTr/loop.nii.gz", 2: "./imagesTr/case\x00.nii.gz", 3: "./labelsTr/" + "y" * 300 + ".nii.gz"}

    def breaks(data):
        for i, path in bad.items():
            data["training"][i]["image" if i < 3 else "label"] = path

    edit_json(root, breaks)
    dataset, problems = check_dataset(root)
    assert dataset is None and len(problems) == 3, problems
    expected = [
        ("training[1].image", "'./imagesTr/loop.nii.gz' is a symlink loop"),
        ("training[2].image", r"'./imagesTr/case\x00.nii.gz' holds a NUL byte"),
        ("training[3].label", f"({len(bad[3])} characters): file name too long"),
    ]
    for (where, what), problem in zip(expected, problems):
        assert problem.startswith(f"{root / 'dataset.json'}: {where}: path ") and what in problem, problem
        assert "\n" not in problem and "\x00" not in problem
