"""Both dataset formats (MSD and nnU-Net v2 raw), conversion between them, and symlinked staging.

The nnU-Net datasets are written here by hand with nibabel, as nnU-Net documents the layout, so parsing
is checked against an independent writer; conversion is then checked against both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scnas.config import task_settings
from scnas.data import convert as convert_module
from scnas.data.check import check_dataset, check_image, validate_dataset
from scnas.data.convert import convert_dataset
from scnas.data.dataset import MSD, NNUNET, list_test_cases, parse_dataset
from scnas.data.nifti import load_case_arrays, load_image
from scnas.data.preprocess import preprocess_dataset
from scnas.data.store import load_preprocessed
from scnas.errors import DatasetError, ScnasError

SHAPE = (10, 9, 7)
LABELS = {0: "background", 1: "organ", 2: "lesion"}
# One oblique, permuted and flipped grid, one plain LPS grid: the geometry must survive every step.
AFFINES = [
    np.array([[0.0, 0.0, -2.0, 30.0], [-0.9, 0.1, 0.0, 12.0], [0.1, 1.1, 0.0, -20.0], [0, 0, 0, 1]]),
    np.array([[-1.2, 0.0, 0.0, 50.0], [0.0, -1.2, 0.0, 40.0], [0.0, 0.0, 1.8, -10.0], [0, 0, 0, 1]]),
]


def case_arrays(index: int, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (C, X, Y, Z), label, affine) of case `index`: a bright labelled block in noise."""
    rng = np.random.default_rng(index)
    label = np.zeros(SHAPE, np.uint8)
    label[2:7, 2:6, 1:5] = 1
    label[3:5, 3:5, 2:4] = 2
    image = rng.normal(100, 10, (channels, *SHAPE)).astype(np.float32) + 40 * label
    return image, label, AFFINES[index % 2]


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def write_msd(root: Path, channels: int, cases: int = 3, tests: int = 1, modalities=None) -> Path:
    modalities = modalities or [f"MR{c}" for c in range(channels)]
    training, test = [], []
    for i in range(cases + tests):
        image, label, affine = case_arrays(i, channels)
        data = np.moveaxis(image, 0, -1) if channels > 1 else image[0]
        if i < cases:
            save(root / "imagesTr" / f"case_{i:03d}.nii.gz", data, affine)
            save(root / "labelsTr" / f"case_{i:03d}.nii.gz", label, affine)
            training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"})
        else:
            save(root / "imagesTs" / f"case_{i:03d}.nii.gz", data, affine)
            test.append(f"./imagesTs/case_{i:03d}.nii.gz")
    write_json(
        root,
        {
            "name": "Formats",
            "modality": {str(c): m for c, m in enumerate(modalities)},
            "labels": {str(k): v for k, v in LABELS.items()},
            "numTraining": cases,
            "numTest": tests,
            "training": training,
            "test": test,
        },
    )
    return root


def write_nnunet(
    root: Path, channels: int, cases: int = 3, tests: int = 1, ending: str = ".nii.gz", modalities=None
) -> Path:
    modalities = modalities or [f"MR{c}" for c in range(channels)]
    for i in range(cases + tests):
        image, label, affine = case_arrays(i, channels)
        folder = "imagesTr" if i < cases else "imagesTs"
        for c in range(channels):
            save(root / folder / f"case_{i:03d}_{c:04d}{ending}", image[c], affine)
        if i < cases:
            save(root / "labelsTr" / f"case_{i:03d}{ending}", label, affine)
    write_json(
        root,
        {
            "name": "Formats",
            "channel_names": {str(c): m for c, m in enumerate(modalities)},
            "labels": {v: k for k, v in LABELS.items()},
            "numTraining": cases,
            "file_ending": ending,
        },
    )
    return root


def write_json(root: Path, data: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(data, indent=2))


def edit_json(root: Path, change) -> None:
    data = json.loads((root / "dataset.json").read_text())
    change(data)
    write_json(root, data)


def same_arrays(a, b) -> None:
    """load_case_arrays of every case of two datasets: identical images, affines and labels."""
    assert a.case_ids == b.case_ids
    for case_a, case_b in zip(a.cases, b.cases):
        image_a, affine_a, label_a = load_case_arrays(case_a, a.num_channels)
        image_b, affine_b, label_b = load_case_arrays(case_b, b.num_channels)
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(affine_a, affine_b)
        np.testing.assert_array_equal(label_a, label_b)


@pytest.mark.parametrize("channels", [1, 3])
def test_both_formats_parse_to_the_same_cases_and_arrays(tmp_path, channels):
    msd = parse_dataset(write_msd(tmp_path / "msd", channels))
    nnunet = parse_dataset(write_nnunet(tmp_path / "nnunet", channels))
    assert (msd.format, nnunet.format) == (MSD, NNUNET)
    assert msd.case_ids == nnunet.case_ids == ("case_000", "case_001", "case_002")
    assert msd.labels == nnunet.labels == LABELS
    assert msd.modalities == nnunet.modalities == tuple(f"MR{c}" for c in range(channels))
    assert nnunet.case("case_001").images == tuple(
        tmp_path / "nnunet" / "imagesTr" / f"case_001_{c:04d}.nii.gz" for c in range(channels)
    )
    assert nnunet.case("case_001").header.shape == ((*SHAPE, channels) if channels > 1 else SHAPE)
    same_arrays(msd, nnunet)
    for root in (tmp_path / "msd", tmp_path / "nnunet"):
        assert check_dataset(root)[1] == []
    image = case_arrays(1, channels)[0]
    np.testing.assert_array_equal(load_case_arrays(nnunet.case("case_001"), channels)[0], image)


def test_preprocessed_arrays_are_identical_for_both_formats_and_ct_is_detected(tmp_path):
    modalities = ["CT", "T2"]
    msd = parse_dataset(write_msd(tmp_path / "msd", 2, modalities=modalities))
    nnunet = parse_dataset(write_nnunet(tmp_path / "nnunet", 2, modalities=modalities))
    assert nnunet.is_ct(0) and not nnunet.is_ct(1) and msd.is_ct(0)
    stage = task_settings({"preprocess": {"spacing": [1.5, 1.5, 1.5]}, "plan": {"patch_size": [8, 8, 8]}})
    runs = [
        preprocess_dataset(d, stage.preprocess, stage.plan, tmp_path / f"pre_{d.format[:3]}", progress=False)
        for d in (msd, nnunet)
    ]
    assert runs[0].plans.to_dict() == runs[1].plans.to_dict()
    assert runs[0].plans.normalization[0] != runs[0].plans.normalization[1]  # CT statistics, not z-score
    for case_id in msd.case_ids:
        a, b = (load_preprocessed(tmp_path / f"pre_{d.format[:3]}", case_id, mmap=False) for d in (msd, nnunet))
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        assert a.properties == b.properties


def test_nii_file_ending_and_explicit_dataset_key(tmp_path):
    plain = parse_dataset(write_nnunet(tmp_path / "plain", 2, ending=".nii"))
    assert plain.case_ids == ("case_000", "case_001", "case_002")
    assert all(p.name.endswith("_0001.nii") for p in (c.images[1] for c in plain.cases))
    root = write_nnunet(tmp_path / "listed", 2)
    (root / "imagesTr" / "case_002_0000.nii.gz").rename(root / "imagesTr" / "other_name.nii.gz")
    entries = {
        "case_000": {
            "images": ["imagesTr/case_000_0000.nii.gz", "imagesTr/case_000_0001.nii.gz"],
            "label": "labelsTr/case_000.nii.gz",
        },
        "case_002": {
            "images": ["./imagesTr/other_name.nii.gz", "imagesTr/case_002_0001.nii.gz"],
            "label": "labelsTr/case_002.nii.gz",
        },
    }
    edit_json(root, lambda d: d.update(dataset=entries, numTraining=2))
    listed = parse_dataset(root)
    assert listed.case_ids == ("case_000", "case_002")
    assert listed.case("case_002").images[0] == root / "imagesTr" / "other_name.nii.gz"
    assert check_dataset(root)[1] == []


def rename(root: Path, old: str, new: str) -> None:
    (root / old).rename(root / new)


# (id, defect of a valid 2-channel nnU-Net dataset, substrings of the one problem: the file and the rule)
NNUNET_DEFECTS = [
    (
        "missing_channel",
        lambda r: (r / "imagesTr/case_001_0001.nii.gz").unlink(),
        ["imagesTr/case_001_0001.nii.gz", "case case_001", "missing channel file", "0000..0001"],
    ),
    (
        "extra_channel",
        lambda r: save(r / "imagesTr/case_001_0002.nii.gz", np.zeros(SHAPE, np.float32), AFFINES[1]),
        ["imagesTr/case_001_0002.nii.gz", "extra channel index 0002", "declares 2 channels"],
    ),
    (
        "label_without_images",
        lambda r: [(r / f"imagesTr/case_002_000{c}.nii.gz").unlink() for c in (0, 1)],
        ["labelsTr/case_002.nii.gz", "label file without images", "imagesTr/case_002_0000.nii.gz"],
    ),
    (
        "image_without_label",
        lambda r: save(r / "imagesTr/extra_0000.nii.gz", np.zeros(SHAPE, np.float32), AFFINES[1]),
        ["imagesTr/extra_0000.nii.gz", "without a label file labelsTr/extra.nii.gz", "files of labelsTr"],
    ),
    (
        "wrong_ending",
        lambda r: rename(r, "labelsTr/case_000.nii.gz", "labelsTr/case_000.nii"),
        ["labelsTr/case_000.nii", "does not end with '.nii.gz'", "file_ending"],
    ),
    (
        "no_channel_suffix",
        lambda r: save(r / "imagesTr/case_000.nii.gz", np.zeros(SHAPE, np.float32), AFFINES[0]),
        ["imagesTr/case_000.nii.gz", "not CASE_XXXX.nii.gz", "4-digit channel"],
    ),
    (
        "region_label",
        lambda r: edit_json(r, lambda d: d["labels"].update({"whole tumour": [1, 2]})),
        ["dataset.json", "'whole tumour'", "region"],
    ),
    (
        "ignore_label",
        lambda r: edit_json(r, lambda d: d["labels"].update({"ignore": 3})),
        ["dataset.json", "'ignore'", "ignore label"],
    ),
    (
        "unsupported_ending",
        lambda r: edit_json(r, lambda d: d.update(file_ending=".mha")),
        ["dataset.json", "file_ending '.mha' is not supported", "'.nii.gz' or '.nii'"],
    ),
    (
        "missing_key",
        lambda r: edit_json(r, lambda d: d.pop("numTraining")),
        ["dataset.json", "missing key 'numTraining'", "nnU-Net v2 format"],
    ),
    (
        "num_training",
        lambda r: edit_json(r, lambda d: d.update(numTraining=4)),
        ["dataset.json", "numTraining is 4 but labelsTr holds 3 cases"],
    ),
    (
        "two_names_one_value",
        lambda r: edit_json(r, lambda d: d["labels"].update({"tumour": 1})),
        ["dataset.json", "'organ' and 'tumour' both have the value 1"],
    ),
    (
        "channel_geometry",
        lambda r: save(r / "imagesTr/case_001_0001.nii.gz", np.zeros(SHAPE, np.float32), AFFINES[0]),
        ["imagesTr/case_001_0001.nii.gz", "case case_001", "channel 1 spacing", "channel 0 spacing"],
    ),
    (
        "4d_channel_file",
        lambda r: save(r / "imagesTr/case_001_0001.nii.gz", np.zeros((*SHAPE, 2), np.float32), AFFINES[1]),
        ["imagesTr/case_001_0001.nii.gz", "case case_001", "image has 2 channels", "a file per channel must hold 1"],
    ),
]


@pytest.mark.parametrize("defect, expected", [d[1:] for d in NNUNET_DEFECTS], ids=[d[0] for d in NNUNET_DEFECTS])
def test_each_nnunet_rule_broken_is_one_problem_naming_file_and_rule(tmp_path, defect, expected):
    root = write_nnunet(tmp_path / "task", 2, tests=0)
    defect(root)
    problems = check_dataset(root)[1]
    assert len(problems) == 1, problems
    for text in expected:
        assert text in problems[0], (text, problems[0])
    with pytest.raises(DatasetError) as info:
        validate_dataset(root)
    assert str(info.value) == problems[0]


def test_msd_file_without_modality_hints_at_the_nnunet_format(tmp_path):
    root = write_msd(tmp_path / "task", 1)
    edit_json(root, lambda d: d.pop("modality"))
    [problem] = check_dataset(root)[1]
    assert "missing key 'modality'" in problem and "MSD" in problem and "'channel_names'" in problem


def test_test_cases_of_both_formats(tmp_path):
    msd = write_msd(tmp_path / "msd", 2, tests=2)
    nnunet = write_nnunet(tmp_path / "nnunet", 2, tests=2)
    assert list_test_cases(msd) == {f"case_{i:03d}": (msd / "imagesTs" / f"case_{i:03d}.nii.gz",) for i in (3, 4)}
    assert list_test_cases(nnunet) == {
        f"case_{i:03d}": tuple(nnunet / "imagesTs" / f"case_{i:03d}_{c:04d}.nii.gz" for c in (0, 1)) for i in (3, 4)
    }
    for root in (msd, nnunet):
        for case_id, files in list_test_cases(root).items():
            image, _ = load_image(files if len(files) > 1 else files[0])
            np.testing.assert_array_equal(image, case_arrays(int(case_id[-3:]), 2)[0])
    edit_json(msd, lambda d: d.update(test=[]))
    assert sorted(list_test_cases(msd)) == ["case_003", "case_004"]
    (nnunet / "imagesTs" / "case_004_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"imagesTs/case_004_0001.nii.gz: test case case_004: missing channel"):
        list_test_cases(nnunet)
    assert list_test_cases(write_nnunet(tmp_path / "none", 1, tests=0)) == {}


def test_channel_files_load_and_check_as_one_image(tmp_path):
    root = write_nnunet(tmp_path / "task", 3, cases=1, tests=0)
    files = [root / "imagesTr" / f"case_000_{c:04d}.nii.gz" for c in range(3)]
    image, affine = load_image(files)
    np.testing.assert_array_equal(image, case_arrays(0, 3)[0])
    np.testing.assert_array_equal(affine, nib.load(str(files[0])).affine)
    assert check_image(files, 3) == []
    assert check_image(files[:2], 3) == [f"{files[0]}: 2 channel files, the model expects 3"]
    save(files[2], np.zeros((4, 4, 4), np.float32), AFFINES[0])
    with pytest.raises(DatasetError, match=r"case_000_0002.nii.gz: shape \(4, 4, 4\) differs from channel 0's"):
        load_image(files)


def headers_and_voxels(root: Path) -> dict[str, tuple]:
    """Every NIfTI file under `root`: (voxels as read, their dtype, affine, qform/sform codes)."""
    found = {}
    for path in sorted(root.rglob("*.nii*")):
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        codes = (int(img.header["qform_code"]), int(img.header["sform_code"]))
        found[str(path.relative_to(root))] = (data, data.dtype, img.affine, codes)
    return found


def assert_same_files(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        (data_a, dtype_a, affine_a, codes_a), (data_b, dtype_b, affine_b, codes_b) = a[name], b[name]
        assert dtype_a == dtype_b and codes_a == codes_b, name
        np.testing.assert_array_equal(data_a, data_b, err_msg=name)
        np.testing.assert_array_equal(affine_a, affine_b, err_msg=name)


@pytest.mark.parametrize("channels", [1, 3])
def test_msd_to_nnunet_and_back_keeps_voxels_and_affines(tmp_path, channels):
    source = write_msd(tmp_path / "msd", channels, tests=2)
    scaled = source / "imagesTr" / "case_001.nii.gz"
    img = nib.load(str(scaled))
    raw = nib.Nifti1Image(np.rint(np.asarray(img.dataobj)).astype(np.int16), img.affine)
    raw.header.set_slope_inter(0.5, -10.0)
    nib.save(raw, str(scaled))
    assert nib.load(str(scaled)).dataobj.slope == 0.5
    converted = convert_dataset(source, tmp_path / "nnunet", "nnunetv2")
    assert converted == tmp_path / "nnunet"
    data = json.loads((converted / "dataset.json").read_text())
    assert data["labels"] == {"background": 0, "organ": 1, "lesion": 2} and data["file_ending"] == ".nii.gz"
    assert data["channel_names"] == {str(c): f"MR{c}" for c in range(channels)} and data["numTraining"] == 3
    assert sorted(p.name for p in (converted / "imagesTs").iterdir()) == [
        f"case_{i:03d}_{c:04d}.nii.gz" for i in (3, 4) for c in range(channels)
    ]
    nnunet = parse_dataset(converted)
    assert nnunet.format == NNUNET and check_dataset(converted)[1] == []
    same_arrays(parse_dataset(source), nnunet)
    back = convert_dataset(converted, tmp_path / "back", "msd")
    assert parse_dataset(back).format == MSD
    same_arrays(parse_dataset(source), parse_dataset(back))
    assert_same_files(headers_and_voxels(source), headers_and_voxels(back))
    assert list_test_cases(back) == {f"case_{i:03d}": (back / "imagesTs" / f"case_{i:03d}.nii.gz",) for i in (3, 4)}


def test_nnunet_to_msd_stacks_channels(tmp_path):
    source = write_nnunet(tmp_path / "nnunet", 2, ending=".nii")
    msd = convert_dataset(source, tmp_path / "msd", "msd")
    data = json.loads((msd / "dataset.json").read_text())
    assert data["modality"] == {"0": "MR0", "1": "MR1"} and data["labels"] == {str(k): v for k, v in LABELS.items()}
    assert data["tensorImageSize"] == "4D" and data["test"] == ["./imagesTs/case_003.nii.gz"]
    assert nib.load(str(msd / "imagesTr" / "case_002.nii.gz")).shape == (*SHAPE, 2)
    same_arrays(parse_dataset(source), parse_dataset(msd))


def test_convert_refuses_a_used_target_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    source = write_msd(tmp_path / "msd", 2)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ScnasError) as info:
        convert_dataset(source, target, "nnunetv2")
    assert str(info.value) == f"{target}: already exists and is not an empty folder; give a new folder to convert into"
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    with pytest.raises(ScnasError, match="unknown format 'nnunet'"):
        convert_dataset(source, tmp_path / "new", "nnunet")
    with pytest.raises(ScnasError, match="already an MSD dataset"):
        convert_dataset(source, tmp_path / "new", "msd")

    def failing(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_module, "_copy_nifti", failing)
    with pytest.raises(OSError):
        convert_dataset(source, tmp_path / "new", "nnunetv2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msd", "out"]
    monkeypatch.undo()
    test_image = source / "imagesTs" / "case_003.nii.gz"
    save(test_image, np.zeros(SHAPE, np.float32), AFFINES[1])
    with pytest.raises(DatasetError, match=f"test image {test_image}: image has 1 channel, the task expects 2"):
        convert_dataset(source, tmp_path / "new", "nnunetv2")
    assert not (tmp_path / "new").exists()
    save(test_image, np.zeros((*SHAPE, 2), np.float32), AFFINES[1])
    (tmp_path / "empty").mkdir()
    assert parse_dataset(convert_dataset(source, tmp_path / "empty", "nnunetv2")).format == NNUNET


@pytest.mark.parametrize("kind", ["msd", "nnunet"])
def test_symlinked_folders_and_files_are_followed(tmp_path, kind):
    write = write_msd if kind == "msd" else write_nnunet
    reference = parse_dataset(write(tmp_path / "reference", 2))
    staged = write(tmp_path / "staged", 2)
    elsewhere = tmp_path / "elsewhere"
    (staged / "imagesTr").rename(elsewhere)
    (staged / "imagesTr").symlink_to(elsewhere)
    (tmp_path / "labels").mkdir()
    for path in sorted((staged / "labelsTr").iterdir()):
        path.rename(tmp_path / "labels" / path.name)
        path.symlink_to(tmp_path / "labels" / path.name)
    dataset, problems = check_dataset(staged)
    assert problems == []
    same_arrays(reference, dataset)


def test_paths_in_dataset_json_are_judged_as_written(tmp_path):
    root = write_msd(tmp_path / "task", 1)
    elsewhere = tmp_path / "elsewhere"
    (root / "imagesTr").rename(elsewhere)
    (root / "imagesTr").symlink_to(elsewhere)
    (tmp_path / "outside.nii.gz").write_bytes((elsewhere / "case_000.nii.gz").read_bytes())
    entries = {
        0: "./imagesTr/../imagesTr/case_000.nii.gz",  # lexically inside: accepted
        1: str(root / "imagesTr" / "case_001.nii.gz"),  # absolute, inside as written: accepted
        2: "imagesTr/../../outside.nii.gz",  # a real file, but `..` leaves the folder as written
    }
    edit_json(root, lambda d: [d["training"][i].update(image=p) for i, p in entries.items()])
    dataset, problems = check_dataset(root)
    assert problems == [f"{root / 'dataset.json'}: training[2].image: path {entries[2]!r} leaves the dataset folder"]
    real = tmp_path / "real"
    root.rename(real)
    root.symlink_to(real)
    edit_json(root, lambda d: d["training"][2].update(image=str(real / "imagesTr" / "case_002.nii.gz")))
    assert check_dataset(root)[1] == []


def test_broken_links_are_one_line_each(tmp_path):
    root = write_msd(tmp_path / "task", 1, cases=4)
    image = root / "imagesTr"
    (image / "case_000.nii.gz").unlink()
    (image / "case_000.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (image / "case_001.nii.gz").unlink()
    (tmp_path / "folder.nii.gz").mkdir()
    (image / "case_001.nii.gz").symlink_to(tmp_path / "folder.nii.gz")
    (image / "case_002.nii.gz").unlink()
    os.symlink("case_002.nii.gz", image / "case_002.nii.gz")
    dataset, problems = check_dataset(root)
    assert problems == [
        f"{root / 'dataset.json'}: training[2].image: path './imagesTr/case_002.nii.gz' is a symlink loop",
        f"{image / 'case_000.nii.gz'}: case case_000: image: dangling symbolic link: {image / 'case_000.nii.gz'} "
        f"points to {tmp_path / 'gone.nii.gz'}, which does not exist",
        f"{image / 'case_001.nii.gz'}: case case_001: image: is a symbolic link to the folder "
        f"{tmp_path / 'folder.nii.gz'}, not a file",
    ]


def test_broken_links_in_an_nnunet_dataset(tmp_path):
    root = write_nnunet(tmp_path / "task", 2, cases=3, tests=0)
    loop = root / "imagesTr" / "case_001_0001.nii.gz"
    loop.unlink()
    os.symlink(loop.name, loop)
    [problem] = check_dataset(root)[1]
    assert problem.startswith(f"{loop}: case case_001: image: symlink loop")
    (root / "labelsTr").rename(tmp_path / "labels")
    (root / "labelsTr").symlink_to(tmp_path / "moved-away")
    [problem] = check_dataset(root)[1]
    assert problem == (
        f"{root / 'labelsTr'}: dangling symbolic link: {root / 'labelsTr'} points to {tmp_path / 'moved-away'}, "
        "which does not exist"
    )


def test_msd_labels_nnunet_cannot_take_are_refused(tmp_path):
    cases = [
        ({"0": "bg", "1": "organ", "2": "lesion"}, None),
        ({"0": "background", "1": "organ", "2": "organ"}, "labels 1 and 2 are both named 'organ'"),
        ({"0": "background", "1": "organ", "2": "ignore"}, "label 2 is named 'ignore'"),
        ({"0": "background", "1": "organ", "2": "lesion", "4": "x"}, r"label values \[0, 1, 2, 4\] are not 0, 1, 2"),
    ]
    for i, (labels, refused) in enumerate(cases):
        source = write_msd(tmp_path / f"msd{i}", 1, tests=0)
        edit_json(source, lambda d, labels=labels: d.update(labels=labels))
        if refused is None:
            converted = convert_dataset(source, tmp_path / f"out{i}", "nnunetv2")
            assert json.loads((converted / "dataset.json").read_text())["labels"] == {
                "background": 0,
                "organ": 1,
                "lesion": 2,
            }
            continue
        with pytest.raises(DatasetError, match=refused):
            convert_dataset(source, tmp_path / f"out{i}", "nnunetv2")
        assert not (tmp_path / f"out{i}").exists()
