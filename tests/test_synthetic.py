"""Synthetic MSD tasks: valid folders, deterministic, realistic geometry and intensities, not trivially separable."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import scnas.data.synthetic as synthetic
from scnas.data.check import check_dataset
from scnas.data.synthetic import make_synthetic_task
from scnas.errors import ScnasError

KINDS = ("brain", "heart", "lung")
CASES = 6


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {kind: make_synthetic_task(kind, root / kind, cases=CASES, seed=3) for kind in KINDS}


def cases(root: Path) -> list[tuple[np.ndarray, np.ndarray, nib.Nifti1Image]]:
    """(image voxels, label voxels, image) of every case, as stored."""
    out = []
    for entry in json.loads((root / "dataset.json").read_text())["training"]:
        img = nib.load(str(root / entry["image"]))
        out.append((np.asarray(img.dataobj), np.asarray(nib.load(str(root / entry["label"])).dataobj), img))
    return out


def spacing(img: nib.Nifti1Image) -> np.ndarray:
    return np.linalg.norm(img.affine[:3, :3], axis=0)


def best_threshold_error(a: np.ndarray, b: np.ndarray) -> float:
    """Balanced error of the best single threshold (either direction) separating samples a from b."""
    values = np.concatenate([a, b]).astype(np.float64)
    order = np.argsort(values, kind="stable")
    is_b = np.concatenate([np.zeros(len(a)), np.ones(len(b))])[order]
    b_below = np.concatenate([[0], np.cumsum(is_b)])
    a_above = len(a) - np.concatenate([[0], np.cumsum(1 - is_b)])
    error = (b_below / len(b) + a_above / len(a)) / 2
    sorted_values = values[order]
    cuts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1], [True]])
    return float(min(error[cuts].min(), (1 - error[cuts]).min()))


def test_best_threshold_error_on_a_hand_worked_example():
    assert best_threshold_error(np.array([1.0, 2, 3]), np.array([2.5, 4, 5])) == pytest.approx(1 / 6)
    assert best_threshold_error(np.array([5.0, 6]), np.array([1.0, 2])) == 0
    assert best_threshold_error(np.array([1.0, 2]), np.array([1.0, 2])) == pytest.approx(0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_dataset_json_is_msd_and_passes_the_check(tasks, kind):
    root = tasks[kind]
    data = json.loads((root / "dataset.json").read_text())
    channels = 4 if kind == "brain" else 1
    assert data["tensorImageSize"] == ("4D" if kind == "brain" else "3D")
    assert len(data["modality"]) == channels and data["labels"]["0"] == "background"
    assert len(data["labels"]) == (4 if kind == "brain" else 2)
    assert data["numTraining"] == CASES and data["numTest"] == 0 and data["test"] == []
    assert data["name"] and data["description"]
    ids = [f"{kind}_{i:03d}" for i in range(CASES)]
    assert data["training"] == [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids]
    dataset, problems = check_dataset(root, threads=2)
    assert problems == []
    assert dataset.num_channels == channels
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [f"{i}.nii.gz" for i in ids]
    if kind == "lung":
        assert data["modality"] == {"0": "CT"} and dataset.is_ct(0)
    if kind == "brain":
        assert data["modality"] == {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"}


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_identical_files_other_seed_differs(tmp_path, kind):
    a = cases(make_synthetic_task(kind, tmp_path / "a", cases=2, seed=11, size=24))
    b = cases(make_synthetic_task(kind, tmp_path / "b", cases=2, seed=11, size=24))
    c = cases(make_synthetic_task(kind, tmp_path / "c", cases=2, seed=12, size=24))
    for (ia, la, ha), (ib, lb, hb) in zip(a, b):
        assert ia.dtype == ib.dtype and np.array_equal(ia, ib) and np.array_equal(la, lb)
        assert ha.header.binaryblock == hb.header.binaryblock
    assert not any(ia.shape == ic.shape and np.array_equal(ia, ic) for (ia, _, _), (ic, _, _) in zip(a, c))


def test_brain_has_four_channels_all_labels_and_zero_outside_the_head(tasks):
    for image, label, _ in cases(tasks["brain"]):
        assert image.ndim == 4 and image.shape[3] == 4 and image.dtype == np.float32
        assert set(np.unique(label)) == {0, 1, 2, 3}
        head = image[..., 0] != 0
        for c in range(1, 4):
            assert np.array_equal(image[..., c] != 0, head)
        assert (image >= 0).all()
        _, regions = ndimage.label(head)
        assert regions == 1
        assert head[label > 0].all()
        assert 0.15 < head.mean() < 0.85
        for axis in range(3):
            assert not head.take([0, -1], axis=axis).any()


def test_brain_lesions_are_nested():
    for index in range(4):
        _, label, _ = synthetic.synthetic_case("brain", 5, index, spacing=(1.0, 1.0, 1.0))
        core, enhancing = label >= 2, label == 3
        core_on_background = ndimage.binary_dilation(label == 0) & core
        enhancing_outside_core = ndimage.binary_dilation(label <= 1) & enhancing
        assert core_on_background.sum() < 0.05 * core.sum()
        assert enhancing_outside_core.sum() < 0.4 * enhancing.sum()


def test_brain_edema_and_enhancing_need_two_channels(tasks):
    for image, label, _ in cases(tasks["brain"]):
        edema, enhancing = image[label == 1].astype(np.float64), image[label == 3].astype(np.float64)
        for c in range(4):
            assert best_threshold_error(edema[:, c], enhancing[:, c]) > 0.05, c
        pair = [0, 2]
        scatter = np.cov(edema[:, pair].T) + np.cov(enhancing[:, pair].T)
        w = np.linalg.solve(scatter, enhancing[:, pair].mean(0) - edema[:, pair].mean(0))
        assert best_threshold_error(edema[:, pair] @ w, enhancing[:, pair] @ w) < 0.01


def test_lung_is_ct_in_hounsfield_units(tasks):
    for image, label, _ in cases(tasks["lung"]):
        assert image.ndim == 3 and image.dtype == np.int16
        assert image.min() >= -1024 and image.max() > 500
        corners = np.array([image[i, j, k] for i in (0, -1) for j in (0, -1) for k in (0, -1)])
        assert np.all(np.abs(corners + 1000) < 80)
        assert np.mean((image > -950) & (image < -750)) > 0.1
        assert 0 < label.sum() < 0.02 * label.size
        assert -100 < np.median(image[label == 1]) < 100
        around = ndimage.binary_dilation(label == 1, iterations=2) & (label == 0)
        assert np.median(image[around]) < -500
        assert np.mean((image > -50) & (image < 100)) > 0.1


def test_heart_atrium_is_one_of_several_bright_structures(tasks):
    for image, label, _ in cases(tasks["heart"]):
        assert image.ndim == 3 and image.dtype == np.float32 and set(np.unique(label)) == {0, 1}
        atrium = label == 1
        as_bright = image >= np.percentile(image[atrium], 25)
        assert (as_bright & ~atrium).sum() > as_bright.sum() / 2
        components, _ = ndimage.label(atrium)
        assert np.bincount(components.ravel())[1:].max() > 0.8 * atrium.sum()


def test_cases_vary_in_shape_spacing_and_orientation_but_not_in_physical_size(tasks):
    for kind in KINDS:
        loaded = cases(tasks[kind])
        shapes = {img.shape[:3] for _, _, img in loaded}
        spacings = np.array([spacing(img) for _, _, img in loaded])
        assert len(shapes) > 1 and len({tuple(s) for s in spacings.round(3)}) > 1
        assert (spacings.max(1) / spacings.min(1)).max() >= 2
        assert any(nib.aff2axcodes(img.affine) != ("R", "A", "S") for _, _, img in loaded)
        assert all(np.linalg.norm(img.affine[:3, 3]) > 1 for _, _, img in loaded)
    heads = [(image[..., 0] != 0, spacing(img)) for image, _, img in cases(tasks["brain"])]
    voxels = np.array([h.sum() for h, _ in heads])
    volume_mm3 = np.array([h.sum() * s.prod() for h, s in heads])
    assert volume_mm3.std() / volume_mm3.mean() < 0.2
    assert voxels.std() / voxels.mean() > 2 * volume_mm3.std() / volume_mm3.mean()


def test_shape_and_spacing_overrides_hold_for_every_orientation(tmp_path):
    root = make_synthetic_task(
        "brain", tmp_path / "t", cases=4, seed=0, shape=(30, 26, 20), spacing=(1.5, 1.0, 2.0), progress=True
    )
    loaded = cases(root)
    assert {nib.aff2axcodes(img.affine) for _, _, img in loaded} >= {("R", "A", "S"), ("P", "I", "R")}
    for image, label, img in loaded:
        assert image.shape == (30, 26, 20, 4) and label.shape == (30, 26, 20)
        np.testing.assert_allclose(spacing(img), (1.5, 1.0, 2.0), rtol=1e-6)
        assert set(np.unique(label)) == {0, 1, 2, 3}
    assert check_dataset(root)[1] == []


def test_only_shape_or_only_spacing_forced(tmp_path):
    lung = cases(make_synthetic_task("lung", tmp_path / "lung", cases=2, seed=0, shape=(24, 24, 12)))
    assert [img.shape for _, _, img in lung] == [(24, 24, 12)] * 2
    heart = cases(make_synthetic_task("heart", tmp_path / "heart", cases=2, seed=0, size=32, spacing=(1.0, 1.0, 2.0)))
    for _, _, img in heart:
        np.testing.assert_allclose(spacing(img), (1.0, 1.0, 2.0), rtol=1e-6)
        assert 29 <= img.shape[0] <= 35 and 10 <= img.shape[2] <= 15


def test_interrupted_generation_leaves_no_dataset_json(tmp_path, monkeypatch):
    root = make_synthetic_task("heart", tmp_path / "t", cases=2, seed=0, size=24)
    written = []

    def failing_save(path, *args, **kwargs):
        if len(written) == 3:
            raise OSError("disk full")
        written.append(path)
        synthetic_save(path, *args, **kwargs)

    synthetic_save = synthetic.save_nifti
    monkeypatch.setattr(synthetic, "save_nifti", failing_save)
    with pytest.raises(OSError, match="disk full"):
        make_synthetic_task("heart", root, cases=3, seed=1, size=24)
    assert not (root / "dataset.json").exists()
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]


def test_bad_arguments_are_refused():
    with pytest.raises(ScnasError, match="kind"):
        make_synthetic_task("liver", Path("unused"), cases=1, seed=0)
    with pytest.raises(ScnasError, match="size"):
        synthetic.synthetic_case("brain", 0, 0, size=8)
    with pytest.raises(ScnasError, match="spacing"):
        synthetic.synthetic_case("brain", 0, 0, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ScnasError, match="cases"):
        make_synthetic_task("lung", Path("unused"), cases=0, seed=0)
