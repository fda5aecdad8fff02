import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from scnas.data.nifti import save_nifti
from scnas.errors import ScnasError
from scnas.evaluation.metrics import case_metrics, dice, evaluate_cases, hausdorff


def random_label_map(rng, shape, num_labels, smooth):
    """Blobby maps (smoothed noise, labels with interiors) or, with smooth=0, voxel-wise random labels."""
    noise = rng.standard_normal((num_labels + 1, *shape))
    if smooth:
        noise = np.stack([ndimage.gaussian_filter(n, smooth) for n in noise])
    return np.argmax(noise, axis=0).astype(np.int16)


def brute_force_surface(mask):
    """Voxels of the mask with a face neighbour outside it (outside the image counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def brute_force_hd(p, r, spacing, percentile):
    sp = np.argwhere(brute_force_surface(p)).astype(np.float64) * np.asarray(spacing, np.float64)
    sr = np.argwhere(brute_force_surface(r)).astype(np.float64) * np.asarray(spacing, np.float64)
    d_pr, _ = cKDTree(sr).query(sp)
    d_rp, _ = cKDTree(sp).query(sr)
    return float(np.percentile(np.concatenate([d_pr, d_rp]), percentile))


def sitk_image(array, spacing):
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


@pytest.mark.parametrize("smooth", [0, 1.5])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.9)])
def test_dice_matches_simpleitk(smooth, spacing):
    rng = np.random.default_rng(1)
    for _ in range(3):
        ref = random_label_map(rng, (17, 14, 11), 3, smooth)
        pred = np.where(rng.random(ref.shape) < 0.2, random_label_map(rng, ref.shape, 3, smooth), ref)
        got = dice(pred, ref, [1, 2, 3])
        f = sitk.LabelOverlapMeasuresImageFilter()
        f.Execute(sitk_image(ref, spacing), sitk_image(pred, spacing))
        for label in (1, 2, 3):
            assert got[label] == pytest.approx(f.GetDiceCoefficient(label), abs=1e-12)


def test_dice_empty_labels():
    ref = np.zeros((6, 5, 4), np.int16)
    pred = np.zeros_like(ref)
    ref[1:3, 1:3, 1:3] = 1
    pred[2:4, 1:3, 1:3] = 1
    pred[0, 0, 0] = 2
    got = dice(pred, ref, [1, 2, 3])
    assert got[1] == pytest.approx(2 * 4 / 16)
    assert got[2] == 0.0
    assert math.isnan(got[3])


@pytest.mark.parametrize("percentile", [95, 100, 50])
@pytest.mark.parametrize("smooth", [0, 1.2])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.6, 1.1, 2.5)])
def test_hausdorff_matches_brute_force(percentile, smooth, spacing):
    rng = np.random.default_rng(2)
    for _ in range(3):
        ref = random_label_map(rng, (15, 13, 10), 2, smooth)
        pred = random_label_map(rng, ref.shape, 2, smooth)
        got = hausdorff(pred, ref, [0, 1, 2], spacing, percentile)
        for label in (0, 1, 2):
            expected = brute_force_hd(pred == label, ref == label, spacing, percentile)
            assert got[label] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_hausdorff_small_objects_inside_large_image():
    """The distance transform runs on the labels' bounding region; distances must stay exact."""
    spacing = (0.8, 1.7, 1.2)
    ref = np.zeros((60, 50, 40), np.int16)
    pred = np.zeros_like(ref)
    ref[10:14, 20:25, 5:9] = 1
    pred[11:16, 21:24, 30:33] = 1
    pred[59, 49, 39] = 1
    ref[0:3, 0:2, 0] = 1
    got = hausdorff(pred, ref, [1], spacing, 95)[1]
    assert got == pytest.approx(brute_force_hd(pred == 1, ref == 1, spacing, 95), rel=1e-9)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 1.4, 3.0)])
def test_hausdorff_max_matches_simpleitk(spacing):
    """At percentile 100 the result is the Hausdorff distance between the two surfaces (sitk on contours)."""
    rng = np.random.default_rng(3)
    for smooth in (0, 1.5):
        ref = random_label_map(rng, (16, 12, 11), 2, smooth)
        pred = random_label_map(rng, ref.shape, 2, smooth)
        got = hausdorff(pred, ref, [1, 2], spacing, percentile=100)
        for label in (1, 2):
            # sitk's contour treats the image edge as foreground; one voxel of zero padding makes it background
            contours = []
            for mask in (pred == label, ref == label):
                contour = sitk.BinaryContourImageFilter()
                contour.SetFullyConnected(False)
                contour.SetForegroundValue(1)
                contours.append(contour.Execute(sitk_image(np.pad(mask, 1).astype(np.uint8), spacing)))
            f = sitk.HausdorffDistanceImageFilter()
            f.Execute(*contours)
            assert got[label] == pytest.approx(f.GetHausdorffDistance(), rel=1e-9)


def test_hausdorff_empty_labels():
    ref = np.zeros((8, 8, 8), np.int16)
    pred = np.zeros_like(ref)
    ref[2:5, 2:5, 2:5] = 1
    pred[6, 6, 6] = 2
    got = hausdorff(pred, ref, [1, 2, 3], (1.0, 1.0, 1.0))
    assert got[1] == math.inf and got[2] == math.inf
    assert math.isnan(got[3])


def test_case_metrics_rows():
    ref = np.zeros((10, 9, 8), np.int16)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = 1
    pred[3:7, 2:6, 2:6] = 1
    rows = case_metrics(pred, ref, [1, 2], (1.5, 1.0, 1.0), percentile=100)
    assert rows[0].label == 1 and rows[0].n_pred == 64 and rows[0].n_ref == 64
    assert rows[0].dice == pytest.approx(0.75)
    assert rows[0].hd == pytest.approx(1.5)
    assert rows[1].label == 2 and math.isnan(rows[1].dice) and math.isnan(rows[1].hd)
    assert (rows[1].n_pred, rows[1].n_ref) == (0, 0)


def _write_case(folder, case, pred, ref, affine, pred_affine=None):
    save_nifti(folder / f"{case}_pred.nii.gz", pred, affine if pred_affine is None else pred_affine)
    save_nifti(folder / f"{case}_ref.nii.gz", ref, affine)
    return case, folder / f"{case}_pred.nii.gz", folder / f"{case}_ref.nii.gz"


def test_evaluate_cases_writes_metrics_and_summary(tmp_path):
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    affine[:3, 3] = (10, -4, 3)
    ref_a = np.zeros((10, 9, 8), np.int16)
    ref_a[2:6, 2:6, 2:6] = 1
    ref_a[7:9, 6:8, 1:3] = 2
    pred_a = np.zeros_like(ref_a)
    pred_a[3:7, 2:6, 2:6] = 1  # label 1: Dice 0.75; label 2 missed: Dice 0, HD inf
    ref_b = np.zeros_like(ref_a)
    ref_b[1:5, 1:5, 1:5] = 1
    pred_b = ref_b.copy()  # label 1 perfect; label 2 in neither: NaN
    pairs = [_write_case(tmp_path, "a", pred_a, ref_a, affine), _write_case(tmp_path, "b", pred_b, ref_b, affine)]
    out = tmp_path / "out"
    table = evaluate_cases(pairs, {0: "background", 1: "edema", 2: "enhancing"}, out, threads=2)

    csv = pd.read_csv(out / "metrics.csv")
    assert list(csv.columns) == ["case", "label", "label_name", "dice", "hd95", "n_pred", "n_ref"]
    assert list(zip(csv["case"], csv["label"], csv["label_name"])) == [
        ("a", 1, "edema"),
        ("a", 2, "enhancing"),
        ("b", 1, "edema"),
        ("b", 2, "enhancing"),
    ]
    assert csv["dice"].iloc[0] == pytest.approx(0.75)
    assert csv["dice"].iloc[1] == 0.0 and csv["hd95"].iloc[1] == math.inf
    assert csv["dice"].iloc[2] == 1.0 and csv["hd95"].iloc[2] == 0.0
    assert math.isnan(csv["dice"].iloc[3]) and math.isnan(csv["hd95"].iloc[3])
    expected_hd = hausdorff(pred_a, ref_a, [1], (1.5, 1.0, 2.0), 95)[1]
    assert csv["hd95"].iloc[0] == pytest.approx(expected_hd)
    assert list(csv["n_pred"]) == [64, 0, 64, 0] and list(csv["n_ref"]) == [64, 8, 64, 0]
    pd.testing.assert_frame_equal(table.reset_index(drop=True), csv, check_dtype=False)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 2
    edema = summary["labels"]["1"]
    assert edema["name"] == "edema"
    assert edema["dice"]["mean"] == pytest.approx(0.875)
    assert edema["dice"]["std"] == pytest.approx(np.std([0.75, 1.0], ddof=1))
    assert edema["dice"]["count"] == 2
    assert edema["hd95"]["mean"] == pytest.approx(expected_hd / 2)
    enhancing = summary["labels"]["2"]
    assert enhancing["dice"] == {"mean": 0.0, "std": None, "count": 1}
    assert enhancing["hd95"] == {"mean": None, "std": None, "count": 0, "n_inf": 1}
    assert summary["mean_dice"] == pytest.approx((0.875 + 0.0) / 2)

    # nnU-Net v2's schema, hand-worked: case a label 1 overlaps 3x4x4 of two 4x4x4 cubes in 10x9x8 = 720 voxels
    by_case = {Path(c["prediction_file"]).name: c for c in summary["metric_per_case"]}
    assert [c["reference_file"] for c in summary["metric_per_case"]] == [str(pairs[0][2]), str(pairs[1][2])]
    a1, a2 = by_case["a_pred.nii.gz"]["metrics"]["1"], by_case["a_pred.nii.gz"]["metrics"]["2"]
    assert list(a1) == ["Dice", "FN", "FP", "HD95", "IoU", "TN", "TP", "n_pred", "n_ref"]
    assert (a1["TP"], a1["FP"], a1["FN"], a1["TN"], a1["n_pred"], a1["n_ref"]) == (48, 16, 16, 640, 64, 64)
    assert a1["Dice"] == pytest.approx(0.75) and a1["IoU"] == pytest.approx(0.6) and a1["HD95"] == expected_hd
    assert (a2["TP"], a2["FP"], a2["FN"], a2["Dice"], a2["IoU"], a2["HD95"]) == (0, 0, 8, 0.0, 0.0, math.inf)
    b2 = by_case["b_pred.nii.gz"]["metrics"]["2"]
    assert math.isnan(b2["Dice"]) and math.isnan(b2["IoU"]) and math.isnan(b2["HD95"]) and b2["TN"] == 720
    assert summary["mean"]["1"]["Dice"] == pytest.approx(0.875) and summary["mean"]["1"]["TP"] == 56.0
    assert summary["mean"]["1"]["HD95"] == pytest.approx(expected_hd / 2)
    assert summary["mean"]["2"]["Dice"] == 0.0 and summary["mean"]["2"]["FN"] == 4.0
    assert math.isnan(summary["mean"]["2"]["HD95"]), "inf and NaN are left out of the HD95 mean: none remain"
    assert summary["foreground_mean"]["Dice"] == pytest.approx(0.4375)
    assert math.isnan(summary["foreground_mean"]["HD95"])
    assert "NaN" in (out / "summary.json").read_text(), "NaN written as nnU-Net writes it"


def test_evaluate_cases_hd_column_follows_percentile(tmp_path):
    ref = np.zeros((6, 6, 6), np.int16)
    ref[1:4, 1:4, 1:4] = 1
    pairs = [_write_case(tmp_path, "c", ref, ref, np.eye(4))]
    table = evaluate_cases(pairs, {1: "x"}, tmp_path / "out", percentile=100)
    assert "hd100" in table.columns
    assert "hd100" in json.loads((tmp_path / "out" / "summary.json").read_text())["labels"]["1"]


def test_evaluate_cases_refuses_shape_mismatch(tmp_path):
    ref = np.zeros((6, 6, 6), np.int16)
    save_nifti(tmp_path / "p.nii.gz", np.zeros((6, 6, 5), np.int16), np.eye(4))
    save_nifti(tmp_path / "r.nii.gz", ref, np.eye(4))
    with pytest.raises(ScnasError) as info:
        evaluate_cases([("case_007", tmp_path / "p.nii.gz", tmp_path / "r.nii.gz")], {1: "x"}, tmp_path / "out")
    message = str(info.value)
    assert "case_007" in message and "shape" in message and "\n" not in message
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_evaluate_cases_refuses_affine_mismatch(tmp_path):
    ref = np.zeros((6, 6, 6), np.int16)
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    pairs = [
        _write_case(tmp_path, "ok", ref, ref, np.eye(4)),
        _write_case(tmp_path, "case_042", ref, ref, np.eye(4), pred_affine=shifted),
    ]
    with pytest.raises(ScnasError) as info:
        evaluate_cases(pairs, {1: "x"}, tmp_path / "out")
    message = str(info.value)
    assert "case_042" in message and "affine" in message and "\n" not in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _cube_case(tmp_path, case="c", pred_value=1):
    ref = np.zeros((6, 6, 6), np.int16)
    ref[1:4, 1:4, 1:4] = 1
    pred = ref.copy()
    pred[0, 0, 0] = pred_value
    return _write_case(tmp_path, case, pred, ref, np.eye(4))


def test_summary_records_the_hash_of_metrics_csv(tmp_path):
    import hashlib

    from scnas.evaluation.metrics import incomplete_reason

    out = tmp_path / "out"
    evaluate_cases([_cube_case(tmp_path)], {1: "x"}, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics_sha256"] == hashlib.sha256((out / "metrics.csv").read_bytes()).hexdigest()
    assert incomplete_reason(out / "metrics.csv") is None

    (out / "metrics.csv").write_text((out / "metrics.csv").read_text().replace("c,1,x", "c,1,y"))
    assert "written for other metrics" in incomplete_reason(out / "metrics.csv")
    (out / "summary.json").write_text("[1]")
    assert "not a JSON object" in incomplete_reason(out / "metrics.csv")
    (out / "summary.json").unlink()
    assert "no summary.json" in incomplete_reason(out / "metrics.csv")


def test_evaluate_cases_removes_its_stale_temporaries_only(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".metrics.csv.k2j3.tmp.csv", out / ".summary.json.x9.tmp.json"]
    others = [out / ".checkpoint_final.pt.a1.tmp.pt", out / "notes.txt"]
    for path in stale + others:
        path.write_text("left by a killed run\n")
    evaluate_cases([_cube_case(tmp_path)], {1: "x"}, out)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
    assert (out / "metrics.csv").is_file() and (out / "summary.json").is_file()


def test_evaluate_cases_refuses_undeclared_prediction_values_and_drops_the_old_pair(tmp_path):
    out = tmp_path / "out"
    evaluate_cases([_cube_case(tmp_path)], {1: "x"}, out)
    case = _cube_case(tmp_path, "case_009", pred_value=3)
    with pytest.raises(ScnasError) as info:
        evaluate_cases([case], {0: "background", 1: "x"}, out)
    message = str(info.value)
    assert str(case[1]) in message and "case_009" in message and "[3]" in message and "[0, 1]" in message
    assert not (out / "metrics.csv").exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"cases": {"a": "a.nii.gz", "b": "b.nii.gz"}}', ["a", "b"]),
        ('{"cases": ["a"]}', ["a"]),
        ("{broken", "not valid JSON"),
        ('{"cases": {}}', "'cases'"),
        ('{"cases": "a"}', "'cases'"),
        ('{"cases": ["../a"]}', "not a case id"),
        ('{"cases": [1]}', "not a case id"),
    ],
)
def test_read_prediction_manifest(tmp_path, content, expected):
    from scnas.evaluation.metrics import read_prediction_manifest

    path = tmp_path / "predictions.json"
    path.write_text(content)
    if isinstance(expected, list):
        assert read_prediction_manifest(path) == expected
    else:
        with pytest.raises(ScnasError) as info:
            read_prediction_manifest(path)
        assert str(path) in str(info.value) and expected in str(info.value) and "\n" not in str(info.value)


def test_summary_matches_nnunet_compute_metrics_on_folder(tmp_path):
    """nnU-Net v2's own evaluation on the same files gives the same numbers, and its loader reads our file."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rng = np.random.default_rng(7)
    affine = np.diag([0.8, 1.2, 2.5, 1.0])
    affine[:3, 3] = (-20, 5, 11)
    refs, preds = tmp_path / "labelsTr", tmp_path / "pred"
    pairs = []
    for i in range(4):
        ref = random_label_map(rng, (14, 12, 9), 3, 1.2)
        pred = np.where(rng.random(ref.shape) < 0.15, random_label_map(rng, ref.shape, 3, 1.2), ref)
        if i == 1:
            ref[ref == 3], pred[pred == 3] = 0, 0  # label 3 in neither map: Dice NaN
        if i == 2:
            ref[ref == 2] = 0  # label 2 in the prediction only
        save_nifti(refs / f"case_{i}.nii.gz", ref, affine)
        save_nifti(preds / f"case_{i}.nii.gz", pred, affine)
        pairs.append((f"case_{i}", preds / f"case_{i}.nii.gz", refs / f"case_{i}.nii.gz"))
    evaluate_cases(pairs, {0: "background", 1: "a", 2: "b", 3: "c"}, tmp_path / "ours")
    theirs = compute_metrics_on_folder(
        str(refs), str(preds), str(tmp_path / "theirs.json"), SimpleITKIO(), ".nii.gz", [1, 2, 3], num_processes=1
    )
    ours = load_summary_json(str(tmp_path / "ours" / "summary.json"))
    theirs = load_summary_json(str(tmp_path / "theirs.json"))

    def same(a, b) -> bool:
        """Equal to the last digit, NaN matching NaN."""
        if isinstance(b, float) and math.isnan(b):
            return isinstance(a, float) and math.isnan(a)
        return a == b

    keys = ("Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref")
    ours_by_file = {c["prediction_file"]: c for c in ours["metric_per_case"]}
    assert sorted(ours_by_file) == sorted(c["prediction_file"] for c in theirs["metric_per_case"])
    for case in theirs["metric_per_case"]:
        mine = ours_by_file[case["prediction_file"]]
        assert mine["reference_file"] == case["reference_file"]
        for label in (1, 2, 3):
            for key in keys:
                assert same(mine["metrics"][label][key], case["metrics"][label][key]), (case, label, key)
    assert math.isnan(ours_by_file[str(preds / "case_1.nii.gz")]["metrics"][3]["Dice"])
    assert ours_by_file[str(preds / "case_2.nii.gz")]["metrics"][2]["Dice"] == 0.0
    for label in (1, 2, 3):
        for key in keys:
            assert same(ours["mean"][label][key], theirs["mean"][label][key]), (label, key)
    for key in keys:
        assert same(ours["foreground_mean"][key], theirs["foreground_mean"][key]), key
