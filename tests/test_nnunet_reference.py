"""The nnU-Net v2 reference (workflow/scripts/nnunet_reference.py): nnU-Net trains and predicts a fold of the
study's splits at the study's batch size, and `scnas evaluate` scores its predictions exactly as nnU-Net's own
validation summary does; in the DAG it is one more model folder of the tables."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import BIN, REPO, cli_env
from test_workflow import job_counts, snakemake

SCRIPT = REPO / "workflow" / "scripts" / "nnunet_reference.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("nnunet_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def test_dataset_names_follow_nnunet():
    module = _load_script()
    names = {"Task04_Hippocampus": "Dataset004_Hippocampus", "Dataset012_Liver": "Dataset012_Liver"}
    for given, expected in names.items():
        assert module.dataset_name(REPO / given) == expected
    assert module.dataset_name(REPO / "my_task") == "Dataset999_mytask"


def test_nnunet_trains_a_fold_of_our_splits_and_our_metrics_equal_its_own(tiny_task, tmp_path):
    pytest.importorskip("nnunetv2")
    work, out = tmp_path / "work", tmp_path / "nnunet" / "fold_1"
    data = ("--dataset", str(tiny_task["raw"]), "--splits", str(tiny_task["splits"]))
    prepared = _run("prepare", *data, "--work", str(work), "--batch-size", "2")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    record = json.loads((work / "prepared.json").read_text())
    assert record["dataset"] == "Dataset999_raw" and record["batch_size"] == 2
    plans = json.loads((work / "nnUNet_preprocessed" / "Dataset999_raw" / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["batch_size"] == 2
    handed = json.loads((work / "nnUNet_preprocessed" / "Dataset999_raw" / "splits_final.json").read_text())
    assert handed == json.loads(tiny_task["splits"].read_text())

    budget = ("--epochs", "1", "--iterations", "2")
    args = ("train", "--work", str(work), "--fold", "1", *budget, "--out", str(out / "predictions"))
    trained = _run(*args)
    assert trained.returncode == 0, trained.stderr[-2000:]
    manifest = json.loads((out / "predictions" / "predictions.json").read_text())
    assert sorted(manifest["cases"]) == sorted(handed[1]["val"])
    scored = subprocess.run(
        [str(BIN / "scnas"), "evaluate", "--predictions", str(out / "predictions"), "--dataset", str(tiny_task["raw"])]
        + ["--splits", str(tiny_task["splits"]), "--fold", "1", "--out", str(out)],
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert scored.returncode == 0, scored.stderr
    ours = json.loads((out / "summary.json").read_text())["foreground_mean"]["Dice"]
    assert ours == pytest.approx(manifest["nnunet_foreground_mean_dice"], rel=1e-9, abs=1e-12)

    again = _run(*args)  # finished: its final checkpoint is validated again, not retrained
    assert again.returncode == 0 and "Epoch 0" not in again.stdout


def test_without_nnunet_it_says_how_to_install_it_in_one_line(tmp_path, monkeypatch, capsys):
    module = _load_script()
    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    budget = ["--epochs", "1", "--iterations", "1"]
    code = module.main(["train", "--work", str(tmp_path), "--fold", "0", *budget, "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("nnunet_reference: error: nnunetv2 is not installed") and ".[study]" in err[0]


def test_the_reference_is_a_model_folder_of_the_dag(tmp_path):
    (tmp_path / "Task04_Hippocampus").mkdir()
    (tmp_path / "Task04_Hippocampus" / "dataset.json").write_text("{}")
    config = {
        "data_root": str(tmp_path),
        "results": str(tmp_path / "results"),
        "run_tasks": ["Task04_Hippocampus"],
        "tasks": {
            "Task04_Hippocampus": {"dataset": "Task04_Hippocampus", "models": ["uresnet"], "nnunet_folds": [0, 2]}
        },
        "transfer": {"source_task": None, "targets": []},
    }
    (tmp_path / "study.yaml").write_text(json.dumps(config))
    result = snakemake("-n", "--cores", "2", "--configfiles", "config.yaml", str(tmp_path / "study.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    counts = job_counts(result.stdout)
    assert counts["nnunet_prepare"] == 1 and counts["nnunet_train"] == 2
    assert counts["evaluate"] == 5 + 2 and counts["predict"] == 5
    assert "Task04_Hippocampus/nnunet/fold_2/predictions/predictions.json" in result.stdout
    # A study in parts: `--config folds=[0]` (Snakemake hands its items over as strings) narrows the
    # models' folds and the reference's alike.
    result = snakemake(
        "-n", "--cores", "2", "--configfiles", "config.yaml", str(tmp_path / "study.yaml"), "--config", "folds=[0]"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 1 and counts["nnunet_train"] == 1 and counts["evaluate"] == 2
    assert "nnunet/fold_2" not in result.stdout
    result = snakemake(
        "-n", "--cores", "2", "--configfiles", "config.yaml", str(tmp_path / "study.yaml"), "--config", "folds=[1]"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 1 and "nnunet_train" not in counts and "nnunet_prepare" not in counts
    bad = {**config, "tasks": {"Task04_Hippocampus": {**config["tasks"]["Task04_Hippocampus"], "nnunet_folds": [5]}}}
    (tmp_path / "bad.yaml").write_text(json.dumps(bad))
    result = snakemake("-n", "--cores", "1", "--configfiles", "config.yaml", str(tmp_path / "bad.yaml"))
    assert result.returncode != 0
    assert "config key tasks.Task04_Hippocampus.nnunet_folds: fold 5 does not exist with num_folds=5" in result.stderr
