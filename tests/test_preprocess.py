"""Preprocessing stage: reorient/crop/resample/normalise, its inverse, plans, atomic outputs."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from scnas.config import task_settings
from scnas.data import store
from scnas.data.dataset import parse_dataset
from scnas.data.nifti import load_label, save_nifti
from scnas.data.normalize import fill_holes, zscore_entry
from scnas.data.plans import PLANS_FILE, PLANS_VERSION, Plans, fit_patch_size, make_plans, save_plans
from scnas.data.preprocess import preprocess_case, preprocess_dataset
from scnas.data.store import load_preprocessed
from scnas.data.transforms import preprocess_arrays, restore
from scnas.errors import DatasetError
from scnas.fingerprint import Provenance
from scnas.io import read_json, save_npy

LABELS = {0: "background", 1: "a", 2: "b", 3: "c"}
# Voxel axes -> world axes: permuted and flipped, anisotropic, with a translation.
PERMUTED = np.array([[0.0, 0.0, -1.6, 30.0], [-0.7, 0.0, 0.0, 12.0], [0.0, 1.3, 0.0, -20.0], [0, 0, 0, 1]])
LPS = np.array([[-1.0, 0.0, 0.0, 50.0], [0.0, -1.0, 0.0, 40.0], [0.0, 0.0, 1.5, -10.0], [0, 0, 0, 1]])
RAS = np.diag([0.9, 1.1, 1.2, 1.0])


def world(shape, affine):
    """(X, Y, Z, 3) world coordinates of the voxel centres."""
    idx = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ idx + affine[:3, 3:]).T.reshape(*shape, 3)


def make_case(shape, affine, seed=0, channels=2, radius=10.0, cavity=True):
    """A 'head' (ellipsoid, zero outside, with an enclosed zero cavity) holding labelled spheres (mm)."""
    rng = np.random.default_rng(seed)
    xyz = world(shape, affine)
    centre = xyz.reshape(-1, 3).mean(0)
    extent = np.ptp(xyz.reshape(-1, 3), axis=0)
    d = xyz - centre
    head = np.sum((d / (0.45 * extent)) ** 2, axis=-1) < 1
    label = np.zeros(shape, dtype=np.int16)
    offsets = [(-0.5, -0.4, 0.0), (0.45, 0.4, 0.0), (0.45, -0.45, 0.1)]
    for value, off in zip((1, 2, 3), offsets):
        r = radius * (0.6 if value == 3 else 1.0)
        label[np.linalg.norm(d - np.array(off) * extent * 0.5, axis=-1) < r] = value
    label *= head
    image = np.empty((channels, *shape), dtype=np.float32)
    for c in range(channels):
        image[c] = 100 + 20 * c + 30 * label + rng.normal(0, 5, shape) + 10 * np.sin(d[..., 0] / 7)
    image *= head
    if cavity:
        image[:, np.linalg.norm(d - [0.0, 0.0, -0.25 * extent[2]], axis=-1) < 2.5] = 0
    return image, label


def write_task(root, cases, modalities=("MRI", "MRI"), labels=LABELS):
    """An MSD task folder from [(case_id, image (C, X, Y, Z), label, affine)]; returns the parsed Dataset."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for case_id, image, label, affine in cases:
        data = np.moveaxis(image, 0, -1) if image.shape[0] > 1 else image[0]
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(root / "imagesTr" / f"{case_id}.nii.gz"))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(root / "labelsTr" / f"{case_id}.nii.gz"))
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Test",
                "modality": {str(i): m for i, m in enumerate(modalities)},
                "labels": {str(k): v for k, v in labels.items()},
                "numTraining": len(training),
                "training": training,
            }
        )
    )
    return parse_dataset(root)


def settings_for(**preprocess):
    plan = preprocess.pop("plan", {})
    stage = task_settings({"preprocess": preprocess, "plan": plan})
    return stage.preprocess, stage.plan


def plans_for(dataset, **preprocess):
    return make_plans(dataset, *settings_for(**preprocess))


def array_plans(num_channels, target_spacing, label_interpolation="linear"):
    """Plans for calling preprocess_arrays directly: MRI channels, no dataset behind them."""
    return Plans(
        dataset="arrays",
        modalities=("MRI",) * num_channels,
        labels=LABELS,
        num_channels=num_channels,
        target_spacing=tuple(target_spacing),
        label_interpolation=label_interpolation,
        foreground_samples=100,
        ct_clip_percentiles=(0.5, 99.5),
        normalization=(zscore_entry(),) * num_channels,
        median_shape=(1.0, 1.0, 1.0),
        patch_size=(8, 8, 8),
        case_ids=(),
        provenance=Provenance.of({}),
    )


def dice(a, b, value):
    return 2 * np.sum((a == value) & (b == value)) / (np.sum(a == value) + np.sum(b == value))


@pytest.mark.parametrize("affine", [PERMUTED, LPS, RAS], ids=["permuted", "lps", "ras"])
def test_exact_round_trip_at_the_input_spacing(tmp_path, affine):
    shape = (34, 30, 26)
    image, label = make_case(shape, affine)
    dataset = write_task(tmp_path / "task", [("c0", image, label, affine)])
    canonical = nib.as_closest_canonical(nib.load(str(dataset.cases[0].label)))
    spacing = [float(z) for z in canonical.header.get_zooms()[:3]]
    plans = plans_for(dataset, spacing=spacing)
    props = preprocess_case(dataset.cases[0], plans, tmp_path / "pre")
    case = load_preprocessed(tmp_path / "pre", "c0", plans=plans)

    # Canonical orientation and crop, checked against nibabel's own RAS+ reorientation.
    canon_label = np.asarray(canonical.dataobj).astype(np.int16)
    canon_image = np.stack(
        [np.asarray(nib.as_closest_canonical(nib.Nifti1Image(image[c], affine)).dataobj) for c in range(2)]
    )
    hits = np.nonzero(np.any(canon_image != 0, axis=0))
    bbox = [[int(h.min()), int(h.max()) + 1] for h in hits]
    assert props["crop_bbox"] == bbox
    np.testing.assert_array_equal(case.label, canon_label[tuple(slice(lo, hi) for lo, hi in bbox)])
    np.testing.assert_allclose(props["spacing"], spacing)
    np.testing.assert_allclose(
        np.array(props["preprocessed_affine"])[:3, 3],
        canonical.affine[:3, :3] @ [lo for lo, _ in bbox] + canonical.affine[:3, 3],
    )

    restored = restore(np.asarray(case.label), case.properties, "label")
    original, original_affine = load_label(dataset.cases[0].label)
    np.testing.assert_array_equal(restored, original)
    save_nifti(tmp_path / "restored.nii.gz", restored, np.array(case.properties["original_affine"]))
    again = nib.load(str(tmp_path / "restored.nii.gz"))
    np.testing.assert_array_equal(np.asarray(again.dataobj), original)
    np.testing.assert_allclose(again.affine, original_affine, atol=1e-6)

    probs = np.stack([case.label == k for k in range(4)]).astype(np.float32)
    back = restore(probs, case.properties, "probabilities")
    assert back.shape == (4, *shape) and back.dtype == np.float32
    np.testing.assert_array_equal(back.argmax(0), original)
    np.testing.assert_allclose(back.sum(0), 1.0)


def spheres_case(affine, radius):
    """Three disjoint labelled spheres in a row along world x, inside a nonzero box with a zero margin."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    world_axis = np.abs(affine[:3, :3]).argmax(axis=0)
    extent = np.array([7.2, 2.4, 2.4]) * radius
    shape = tuple(int(extent[world_axis[i]] / spacing[i]) for i in range(3))
    xyz = world(shape, affine)
    d = xyz - xyz.reshape(-1, 3).mean(0)
    label = np.zeros(shape, dtype=np.int16)
    for value, dx in zip((1, 2, 3), (-2.2, 0.0, 2.2)):
        label[np.linalg.norm(d - [dx * radius, 0, 0], axis=-1) < radius] = value
    image = np.all(np.abs(d) < extent / 2 - 3, axis=-1)[None].astype(np.float32)
    return image, label


@pytest.mark.parametrize(
    "axes",
    [((0, 0, -1.0, 30), (-0.8, 0, 0, 12), (0, 0.9, 0, -20)), ((-0.9, 0, 0, 50), (0, -0.8, 0, 40), (0, 0, 1.1, -10))],
    ids=["permuted", "lps"],
)
def test_round_trip_through_a_coarser_grid(axes):
    affine = np.array([*axes, (0, 0, 0, 1)], dtype=np.float64)
    image, label = spheres_case(affine, radius=32.0)
    for mode, threshold in (("linear", 0.99), ("nearest", 0.98)):
        plans = array_plans(1, [1.25, 1.25, 1.25], label_interpolation=mode)
        _, seg, props = preprocess_arrays(image, affine, plans, label)
        assert all(0 < lo for lo, _ in props["crop_bbox"])
        assert all(r < c for r, c in zip(props["resampled_shape"], props["cropped_shape"]))
        restored = restore(seg, props, "label", label_interpolation=mode)
        assert restored.shape == label.shape and restored.dtype == np.int16
        for value in (1, 2, 3):
            assert dice(restored, label, value) >= threshold, (mode, value)
    probs = np.stack([seg == k for k in range(4)]).astype(np.float32)
    back = restore(probs, props, "probabilities")
    assert back.shape == (4, *label.shape)
    np.testing.assert_array_equal(back[:, image[0] == 0], np.eye(4)[:, :1] * np.ones((1, int((image[0] == 0).sum()))))


def test_mri_channels_are_z_scored_over_the_filled_nonzero_mask():
    image, label = make_case((30, 28, 24), LPS, seed=1)
    image[1] *= 3.0
    spacing = [1.0, 1.0, 1.5]  # canonical spacing of LPS: no resampling
    plans = array_plans(2, spacing)
    data, _, props = preprocess_arrays(image, LPS, plans, label)
    canonical = np.stack(
        [np.asarray(nib.as_closest_canonical(nib.Nifti1Image(image[c], LPS)).dataobj) for c in range(2)]
    )
    canonical = canonical[(slice(None), *(slice(lo, hi) for lo, hi in props["crop_bbox"]))]
    mask = ndimage.binary_fill_holes(np.any(canonical != 0, axis=0))
    assert (mask & np.all(canonical == 0, axis=0)).sum() > 20  # the cavity is inside the mask
    for c in range(2):
        values = canonical[c][mask].astype(np.float64)
        np.testing.assert_allclose(data[c][mask], (values - values.mean()) / values.std(), atol=1e-5)
        assert np.all(data[c][~mask] == 0)
        assert abs(data[c][mask].mean()) < 1e-5 and abs(data[c][mask].std() - 1) < 1e-5

    data, _, props = preprocess_arrays(image, LPS, array_plans(2, [0.8, 0.8, 0.8]), label)
    inside = np.any(data != 0, axis=0)
    for c in range(2):
        assert abs(data[c][inside].mean()) < 1e-4 and abs(data[c][inside].std() - 1) < 1e-4
    # The mask follows the head: the preprocessed affine puts it where the original one does.
    xyz = world(data.shape[1:], np.array(props["preprocessed_affine"]))
    src = world(image.shape[1:], LPS).reshape(-1, 3)
    head = np.sum(((xyz - src.mean(0)) / (0.45 * np.ptp(src, axis=0))) ** 2, axis=-1) < 1
    assert np.mean(inside == head) > 0.97
    np.testing.assert_allclose(xyz[inside].mean(0), xyz[head].mean(0), atol=0.2)


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = ndimage.binary_opening(rng.random((20, 18, 16)) > 0.35)
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_ct_uses_dataset_foreground_statistics(tmp_path):
    cases = []
    for i in range(2):
        image, label = make_case((24, 22, 20), RAS, seed=i, channels=1, radius=6.0, cavity=False)
        image[0] = np.where(image[0] == 0, -1000.0, image[0] * (1 + i) - 50)
        cases.append((f"ct{i}", image, label, RAS))
    dataset = write_task(tmp_path / "task", cases, modalities=("CT",))
    plans = plans_for(dataset, spacing=[0.9, 1.1, 1.2], ct_clip_percentiles=[5.0, 95.0])
    fg = np.concatenate([c[1][0][c[2] > 0] for c in cases]).astype(np.float64)
    entry = plans.normalization[0]
    assert entry["scheme"] == "ct"
    np.testing.assert_allclose(entry["clip"], np.percentile(fg, [5.0, 95.0]), rtol=1e-6)
    np.testing.assert_allclose([entry["mean"], entry["std"]], [fg.mean(), fg.std()], rtol=1e-6)

    image, label = cases[1][1], cases[1][2]
    data, _, props = preprocess_arrays(image, RAS, plans, label)
    assert props["crop_bbox"] == [[0, 24], [0, 22], [0, 20]]  # -1000 is not background for the crop
    expected = (np.clip(image[0].astype(np.float64), *entry["clip"]) - entry["mean"]) / entry["std"]
    np.testing.assert_allclose(data[0], expected, atol=1e-5)


def test_ct_without_foreground_is_refused(tmp_path):
    image = np.full((1, 8, 8, 8), -1000.0, dtype=np.float32)
    dataset = write_task(tmp_path / "task", [("a", image, np.zeros((8, 8, 8)), RAS)], modalities=("CT",))
    with pytest.raises(DatasetError, match="dataset.json: channel 0 is CT"):
        plans_for(dataset)


def test_plans_and_properties_are_json(tmp_path):
    cases = [(f"c{i}", *make_case((30 + 4 * i, 28, 24), PERMUTED, seed=i), PERMUTED) for i in range(3)]
    dataset = write_task(tmp_path / "task", cases)
    plans = plans_for(dataset, spacing=[2.0, 2.0, 2.0], plan={"patch_size": [64, 16, 160]})
    data = plans.to_dict()
    assert json.loads(json.dumps(data)) == data and Plans.from_dict(data, "x") == plans
    assert data["labels"] == {"0": "background", "1": "a", "2": "b", "3": "c"}
    assert plans.labels == LABELS and plans.label_values == [0, 1, 2, 3] and plans.num_classes == 4
    assert data["normalization"] == [{"scheme": "zscore", "clip": None, "mean": None, "std": None}] * 2
    assert data["version"] == PLANS_VERSION == 2 and plans.num_channels == 2 and data["target_spacing"] == [2.0] * 3
    assert plans.case_ids == ("c0", "c1", "c2") and plans.fingerprint == plans.provenance.fingerprint
    shapes = [preprocess_case(c, plans, tmp_path / "pre")["resampled_shape"] for c in dataset.cases]
    assert list(plans.median_shape) == np.median(np.array(shapes), axis=0).tolist()
    assert list(plans.patch_size) == fit_patch_size([64, 16, 160], plans.median_shape)
    props = read_json(tmp_path / "pre" / "c1.json")
    assert props == load_preprocessed(tmp_path / "pre", "c1", plans=plans).properties
    assert json.loads(json.dumps(props)) == props and props["case_id"] == "c1"
    assert props["plans_fingerprint"] == plans.fingerprint
    unfitted = plans_for(dataset, plan={"patch_size": [64, 16, 160], "fit_to_median_shape": False})
    assert unfitted.patch_size == (64, 16, 160)


def test_patch_size_fits_the_median_shape():
    assert fit_patch_size([128, 128, 128], [100.5, 200.0, 30.0]) == [104, 128, 32]
    assert fit_patch_size([96, 160, 64], [97.0, 10.0, 64.0]) == [96, 16, 64]
    assert fit_patch_size([100, 128, 128], [300.0, 8.0, 1.0]) == [100, 8, 8]


def test_dataset_outputs_foreground_samples_and_plans_last(tmp_path):
    cases = [(f"c{i}", *make_case((30, 26, 22), LPS, seed=i, radius=5.0), LPS) for i in range(3)]
    cases[2][2][cases[2][2] == 3] = 0
    dataset = write_task(tmp_path / "task", cases)
    settings = settings_for(foreground_samples=40)
    out = tmp_path / "pre"
    run = preprocess_dataset(dataset, *settings, out, threads=2, progress=False)
    assert run.plans == make_plans(dataset, *settings) and run.written == ("c0", "c1", "c2") and run.kept == ()
    assert read_json(out / PLANS_FILE) == run.plans.to_dict()
    first = {}
    for case_id in dataset.case_ids:
        case = load_preprocessed(out, case_id)
        assert isinstance(case.image, np.memmap) and case.image.dtype == np.float32
        assert case.image.shape == (2, *case.label.shape) and case.label.dtype == np.int16
        assert sorted(case.foreground) == [1, 2, 3]
        for value, coords in case.foreground.items():
            assert coords.dtype == np.int32 and coords.shape == (min(40, int(np.sum(case.label == value))), 3)
            assert np.all(case.label[tuple(coords.T)] == value)
            assert len(np.unique(coords, axis=0)) == len(coords)
        first[case_id] = case.foreground
    assert first["c2"][3].shape == (0, 3)

    (out / "c1.json").unlink()  # c1 incomplete: a rerun redoes it alone, sampling the same voxels
    again = preprocess_dataset(dataset, *settings, out, case_ids=["c1"], progress=False)
    assert again.written == ("c1",) and again.kept == ()
    for value, coords in load_preprocessed(out, "c1").foreground.items():
        np.testing.assert_array_equal(coords, first["c1"][value])
    assert preprocess_dataset(dataset, *settings, out, progress=False).kept == ("c0", "c1", "c2")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pre.lock", "pre", "task"]


def test_a_failing_case_leaves_no_outputs(tmp_path, monkeypatch):
    cases = [(f"c{i}", *make_case((20, 20, 20), RAS, seed=i, radius=4.0), RAS) for i in range(2)]
    dataset = write_task(tmp_path / "task", cases)
    plans = plans_for(dataset)
    out = tmp_path / "pre"
    preprocess_case(dataset.case("c0"), plans, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"c0{s}" for s in (".npy", "_seg.npy", "_fg.npz", ".json"))

    def broken(path, obj, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_json", broken)
    with pytest.raises(OSError, match="disk full"):
        preprocess_case(dataset.case("c0"), plans, out)
    assert list(out.iterdir()) == []

    monkeypatch.undo()
    calls = []

    def fail_on_label(path, array):
        calls.append(path)
        if str(path).endswith("_seg.npy"):
            raise OSError("disk full")
        return save_npy(path, array)

    monkeypatch.setattr(store, "save_npy", fail_on_label)
    with pytest.raises(OSError):
        preprocess_case(dataset.case("c1"), plans, out)
    assert len(calls) == 2
    assert list(out.iterdir()) == []


def test_load_preprocessed_refuses_missing_or_inconsistent_files(tmp_path):
    dataset = write_task(tmp_path / "task", [("c0", *make_case((20, 20, 20), RAS, radius=4.0), RAS)])
    plans = plans_for(dataset)
    out = tmp_path / "pre"
    preprocess_case(dataset.cases[0], plans, out)
    save_plans(out, plans)

    def refused(match):
        with pytest.raises(DatasetError, match=match) as info:
            load_preprocessed(out, "c0")
        assert "\n" not in str(info.value)

    assert not isinstance(load_preprocessed(out, "c0", mmap=False).image, np.memmap)
    with pytest.raises(DatasetError, match="nope.json: file not found"):
        load_preprocessed(out, "nope")
    seg = np.load(out / "c0_seg.npy")
    np.save(out / "c0_seg.npy", seg[:-1])
    refused("c0_seg.npy: holds int16")
    (out / "c0_seg.npy").unlink()
    refused("c0_seg.npy: file not found")
    np.save(out / "c0_seg.npy", seg)
    (out / "c0_fg.npz").write_bytes(b"garbage")
    refused("c0_fg.npz: not a readable .npz file")
    np.savez(out / "c0_fg.npz", **{"1": np.array([[0, 0, 10_000]], dtype=np.int32)})
    refused("c0_fg.npz: label 1 has coordinates outside")
    (out / "c0.npy").write_bytes(b"\x93NUMPY garbage")
    refused("c0.npy: not a readable .npy file")
    (out / "c0.json").write_text("{")
    refused("c0.json: not readable JSON")


def test_case_files_that_do_not_fit_are_refused(tmp_path):
    image, label = make_case((20, 20, 20), RAS, radius=4.0)
    dataset = write_task(tmp_path / "task", [("c0", image, label[:, :, :-1], RAS)])
    plans = plans_for(dataset)
    with pytest.raises(DatasetError, match=r"c0.nii.gz: shape \(20, 20, 19\) differs"):
        preprocess_case(dataset.cases[0], plans, tmp_path / "pre")
    with pytest.raises(DatasetError, match="imagesTr/c0.nii.gz: has 2 channels, the dataset declares 3"):
        preprocess_case(dataset.cases[0], dataclasses.replace(plans, num_channels=3), tmp_path / "pre")
    assert not (tmp_path / "pre").exists()
