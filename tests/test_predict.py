"""`scnas predict`: output in each input's own geometry; bad scans and bad checkpoints refused, nothing written."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import cli_env

from scnas.config import task_settings
from scnas.data.synthetic import make_synthetic_task
from scnas.train.training import TrainRequest, train


@pytest.fixture(scope="module")
def model(tiny_task, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "fold_0"
    stage = task_settings(
        {"train": {"batch_size": 2, "uresnet_channels": 4, "max_epochs": 1, "iterations_per_epoch": 2, "amp": False}}
    )
    train(TrainRequest(tiny_task["pre"], tiny_task["splits"], 0, out, "uresnet", stage))
    return out / "checkpoint_final.pt"


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scnas", "predict", *args], env=cli_env(), capture_output=True, text=True
    )


def test_predictions_have_each_input_geometry(model, tmp_path):
    scans = make_synthetic_task("heart", tmp_path / "new", cases=4, seed=11, size=24) / "imagesTr"
    out = tmp_path / "seg"
    result = _predict(
        "--model",
        str(model),
        "--images",
        str(scans),
        "--out",
        str(out),
        "--config",
        json.dumps({"inference": {"mirror": True}}),
    )
    assert result.returncode == 0, result.stderr
    orientations = set()
    for scan in sorted(scans.iterdir()):
        src, pred = nib.load(scan), nib.load(out / scan.name)
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
        assert pred.header.get_zooms() == pytest.approx(src.header.get_zooms())
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
        orientations.add(nib.aff2axcodes(src.affine))
    assert len(orientations) > 1, "the test needs re-oriented inputs"
    manifest = json.loads((out / "predictions.json").read_text())
    assert sorted(manifest["cases"]) == sorted(p.name[:-7] for p in scans.iterdir())


def _bad_scans(tmp_path: Path) -> dict[str, Path]:
    good = nib.load(
        next(iter(sorted((make_synthetic_task("heart", tmp_path / "src", 2, 3, 24) / "imagesTr").iterdir())))
    )
    data = np.asarray(good.dataobj).astype(np.float32)
    scans = {}
    nan = data.copy()
    nan[3, 3, 3] = np.nan
    scans["NaN"] = nib.Nifti1Image(nan, good.affine)
    scans["channels"] = nib.Nifti1Image(np.stack([data, data], -1), good.affine)
    paths = {}
    for name, img in scans.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(img, paths[name])
    paths["not a readable NIfTI"] = tmp_path / "corrupt.nii.gz"
    paths["not a readable NIfTI"].write_bytes(b"\x1f\x8b garbage that is no gzip stream")
    return paths


@pytest.mark.parametrize("defect", ["NaN", "channels", "not a readable NIfTI"])
def test_bad_scan_is_refused_with_one_line_and_nothing_written(model, tmp_path, defect):
    scan = _bad_scans(tmp_path)[defect]
    out = tmp_path / "seg"
    result = _predict("--model", str(model), "--images", str(scan), "--out", str(out))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("scnas predict: error: ") and scan.name in last and "Traceback" not in result.stderr
    assert defect.split()[0] in last or defect in last
    assert not out.exists() or not any(out.iterdir())


def test_corrupt_and_foreign_checkpoints_are_refused(model, tmp_path):
    scans = make_synthetic_task("heart", tmp_path / "new", cases=2, seed=4, size=24) / "imagesTr"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model.read_bytes()[:500])
    result = _predict("--model", str(corrupt), "--images", str(scans), "--out", str(tmp_path / "a"))
    assert result.returncode == 1 and "not a readable checkpoint" in result.stderr.splitlines()[-1]

    foreign = torch.load(model, weights_only=True)
    foreign["model"] = {**foreign["model"], "base_channels": 8}
    other = tmp_path / "other.pt"
    torch.save(foreign, other)
    result = _predict("--model", str(other), "--images", str(scans), "--out", str(tmp_path / "b"))
    assert result.returncode == 1 and "another architecture" in result.stderr.splitlines()[-1]

    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "scnas-model", "payload": argparse.Namespace(run="code")}, pickled)
    result = _predict("--model", str(pickled), "--images", str(scans), "--out", str(tmp_path / "c"))
    assert result.returncode == 1 and "not a readable checkpoint" in result.stderr.splitlines()[-1]
    assert not any((tmp_path / d).exists() for d in "abc")


def test_predictions_record_what_made_them_and_are_redone_when_it_changes(model, tiny_task, tmp_path):
    from scnas.inference.predict import predict_files

    scans = make_synthetic_task("heart", tmp_path / "new", cases=2, seed=5, size=24) / "imagesTr"
    out = tmp_path / "seg"
    plain = task_settings({"inference": {"mirror": False}}).inference
    predict_files(model, [scans], out, plain)
    manifest = json.loads((out / "predictions.json").read_text())
    settings = manifest["provenance"]["settings"]
    assert settings["inference"]["mirror"] is False and set(settings["images"]) == set(manifest["cases"])
    made_by = torch.load(model, weights_only=True)["provenance"]["fingerprint"]
    assert settings["model"] == made_by
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}

    predict_files(model, [scans], out, plain)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == stamp, "identical settings reuse"

    predict_files(model, [scans], out, task_settings({"inference": {"mirror": True}}).inference)
    assert all(p.stat().st_mtime_ns != stamp[p.name] for p in out.glob("*.nii.gz"))
    assert json.loads((out / "predictions.json").read_text())["provenance"]["settings"]["inference"]["mirror"]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
