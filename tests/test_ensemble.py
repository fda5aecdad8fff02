"""`scnas predict --model RESULTS/TASK/MODEL`: the folds' ensemble is the mean of their softmax probabilities,
saved as nnU-Net saves them; nnU-Net channel files make one case; unfinished or disagreeing folds refused."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import cli_env

from scnas.cli import main
from scnas.config import task_settings
from scnas.data.synthetic import make_synthetic_task
from scnas.errors import ScnasError
from scnas.inference.predict import collect_images, predict_files
from scnas.train.training import TrainRequest, train

PLAIN = task_settings({"inference": {"mirror": False}}).inference


@pytest.fixture(scope="module")
def model_dir(tiny_task, tmp_path_factory) -> Path:
    """RESULTS/Tiny/uresnet with two trained folds (different weights: other cases, other seeds)."""
    folder = tmp_path_factory.mktemp("results") / "Tiny" / "uresnet"
    for fold in (0, 1):
        stage = task_settings(
            {
                "seed": fold,
                "train": {
                    "batch_size": 2,
                    "uresnet_channels": 4,
                    "max_epochs": 1,
                    "iterations_per_epoch": 2,
                    "amp": False,
                },
            }
        )
        train(TrainRequest(tiny_task["pre"], tiny_task["splits"], fold, folder / f"fold_{fold}", "uresnet", stage))
    return folder


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    return make_synthetic_task("heart", tmp_path_factory.mktemp("new") / "task", cases=2, seed=21, size=24) / "imagesTr"


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scnas", "predict", *args], env=cli_env(), capture_output=True, text=True
    )


def _probabilities(path: Path) -> np.ndarray:
    with np.load(path) as data:
        assert list(data.files) == ["probabilities"]
        return data["probabilities"]


def test_two_fold_ensemble_is_the_mean_of_the_two_folds_probabilities(model_dir, scans, tmp_path):
    singles = []
    for fold in (0, 1):
        out = tmp_path / f"fold_{fold}"
        predict_files(model_dir / f"fold_{fold}" / "checkpoint_final.pt", [scans], out, PLAIN, save_probabilities=True)
        singles.append(out)
    ensemble = tmp_path / "ensemble"
    result = _predict(
        "--model", str(model_dir), "--images", str(scans), "--out", str(ensemble), "--save-probabilities",
        "--config", json.dumps({"inference": {"mirror": False}}),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    for scan in sorted(scans.iterdir()):
        case = scan.name[: -len(".nii.gz")]
        source = nib.load(scan)
        p0, p1 = (_probabilities(folder / f"{case}.npz") for folder in singles)
        mean = _probabilities(ensemble / f"{case}.npz")
        assert mean.dtype == p0.dtype == np.float32 and mean.shape == (2, *source.shape)
        assert np.abs(p0 - p1).max() > 1e-3, "the two folds must differ for the test to mean anything"
        expected = (p0.astype(np.float64) + p1.astype(np.float64)) / 2
        np.testing.assert_allclose(mean, expected, rtol=0, atol=2e-6)
        np.testing.assert_allclose(mean.sum(0), 1.0, atol=1e-5)
        labels = np.asarray(nib.load(ensemble / scan.name).dataobj)
        np.testing.assert_array_equal(labels, mean.argmax(0))

        geometry = json.loads((ensemble / f"{case}.json").read_text())
        np.testing.assert_allclose(geometry["affine"], source.affine, atol=1e-6)
        assert geometry["shape"] == list(source.shape)
        assert geometry["spacing"] == pytest.approx(source.header.get_zooms()[:3], abs=1e-5)
        assert geometry["labels"] == {"0": "background", "1": "left atrium"}
    manifest = json.loads((ensemble / "predictions.json").read_text())
    assert manifest["checkpoints"] == [str(model_dir / f"fold_{k}" / "checkpoint_final.pt") for k in (0, 1)]
    fingerprints = [torch.load(c, weights_only=True)["provenance"]["fingerprint"] for c in manifest["checkpoints"]]
    assert manifest["provenance"]["settings"]["model"] == fingerprints
    assert not list(ensemble.glob("*.pkl"))


def test_folds_picks_the_members_and_a_rerun_without_probabilities_drops_them(model_dir, scans, tmp_path):
    out = tmp_path / "seg"
    checkpoints = [model_dir / "fold_1" / "checkpoint_final.pt"]
    predict_files(checkpoints, [scans], out, PLAIN, save_probabilities=True)
    alone = tmp_path / "alone"
    predict_files(checkpoints[0], [scans], alone, PLAIN)
    for scan in scans.iterdir():
        np.testing.assert_array_equal(nib.load(out / scan.name).get_fdata(), nib.load(alone / scan.name).get_fdata())
    assert len(list(out.glob("*.npz"))) == 2

    predict_files(checkpoints, [scans], out, PLAIN)
    assert not list(out.glob("*.npz")) and sorted(p.name for p in out.glob("*.json")) == ["predictions.json"]
    assert "probabilities" not in json.loads((out / "predictions.json").read_text())


def test_an_nnunet_dataset_is_checked_as_one_and_its_test_images_named_by_case(model_dir, tiny_task, tmp_path):
    from scnas.data.convert import convert_dataset

    dataset = tmp_path / "Dataset001_Tiny"
    convert_dataset(tiny_task["raw"], dataset, "nnunetv2")
    (dataset / "imagesTs").mkdir()
    for source in sorted((dataset / "imagesTr").iterdir())[:2]:
        shutil.copy(source, dataset / "imagesTs" / source.name.replace("heart_", "test_"))
    report = tmp_path / "check.json"
    check = subprocess.run(
        [sys.executable, "-m", "scnas", "check", "--dataset", str(dataset), "--report", str(report)],
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "nnU-Net v2 dataset, 6 cases" in check.stderr, check.stderr
    assert json.loads(report.read_text())["format"] == "nnU-Net v2"
    out = tmp_path / "test_predictions"
    result = _predict(
        "--model", str(model_dir), "--folds", "1", "--dataset", str(dataset), "--test", "--out", str(out),
        "--config", json.dumps({"inference": {"mirror": False}}),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    inputs = sorted((dataset / "imagesTs").iterdir())
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(p.name.replace("_0000", "") for p in inputs)
    for scan in inputs:
        source, pred = nib.load(scan), nib.load(out / scan.name.replace("_0000", ""))
        assert pred.shape == source.shape
        np.testing.assert_allclose(pred.affine, source.affine, atol=1e-6)
    assert json.loads((out / "predictions.json").read_text())["checkpoints"] == [
        str(model_dir / "fold_1" / "checkpoint_final.pt")
    ]
    assert "set launcher.executor: slurm" in result.stderr and "--profile" not in result.stderr

    validation = tmp_path / "fold_1"
    result = _predict(
        "--model", str(model_dir / "fold_1" / "checkpoint_final.pt"), "--dataset", str(dataset),
        "--splits", str(tiny_task["splits"]), "--fold", "1", "--out", str(validation),
        "--config", json.dumps({"inference": {"mirror": False}}),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    val = json.loads(tiny_task["splits"].read_text())[1]["val"]
    assert sorted(p.name for p in validation.glob("*.nii.gz")) == sorted(f"{case}.nii.gz" for case in val)


def test_channel_files_make_one_case_only_when_every_case_has_every_channel(tmp_path):
    for name in ("a_0000", "a_0001", "b_0000", "b_0001"):
        (tmp_path / f"{name}.nii.gz").touch()
    files = {name: tmp_path / f"{name}.nii.gz" for name in ("a_0000", "a_0001", "b_0000", "b_0001")}
    assert collect_images([tmp_path], 2) == {
        "a": (files["a_0000"], files["a_0001"]),
        "b": (files["b_0000"], files["b_0001"]),
    }
    assert collect_images([tmp_path], 1) == {name: (path,) for name, path in files.items()}
    assert collect_images([[files["b_0000"], files["b_0001"]]], 2) == {"b": (files["b_0000"], files["b_0001"])}
    (tmp_path / "c_0000.nii.gz").touch()
    assert len(collect_images([tmp_path], 2)) == 5, "an incomplete case: every file is its own case"


@pytest.fixture
def refusal(capsys):
    """`scnas predict ARGS` run in this process, expected to fail: its one error line."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> str:
        code = main(["predict", *args])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("scnas predict: error: ")
        return last

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def test_unfinished_missing_and_disagreeing_folds_are_refused_in_one_line(model_dir, scans, tmp_path, refusal):
    study = tmp_path / "Tiny" / "uresnet"
    shutil.copytree(model_dir, study)
    (study / "fold_2").mkdir()
    out = tmp_path / "seg"
    base = ["--images", str(scans), "--out", str(out)]

    last = refusal("--model", str(study), *base)
    assert "fold_2" in last and "not finished training" in last and "--folds 0 1" in last
    last = refusal("--model", str(study), "--folds", "0", "3", *base)
    assert "no fold_3" in last and "0, 1, 2" in last
    last = refusal("--model", str(tmp_path), *base)
    assert "holds no fold_K folder" in last

    state = torch.load(study / "fold_1" / "checkpoint_final.pt", weights_only=True)
    state["plans"]["labels"] = {"0": "background", "1": "left atrium", "2": "scar"}
    torch.save(state, study / "fold_1" / "checkpoint_final.pt")
    last = refusal("--model", str(study), "--folds", "0", "1", *base)
    assert "fold_1" in last and "cannot be ensembled" in last and "labels" in last

    state["plans"]["labels"] = {"0": "background", "1": "left atrium"}
    state["plans"]["provenance"]["fingerprint"] = "0" * 16
    torch.save(state, study / "fold_1" / "checkpoint_final.pt")
    with pytest.raises(ScnasError, match="cannot be ensembled: it was trained on other plans"):
        predict_files(
            [study / "fold_0" / "checkpoint_final.pt", study / "fold_1" / "checkpoint_final.pt"], [scans], out, PLAIN
        )
    assert not out.exists()

    last = refusal("--model", str(study), "--fold", "0", "--dataset", str(scans.parent), *base)
    assert "fold_0/checkpoint_final.pt" in last and "trained on this fold's validation cases" in last
