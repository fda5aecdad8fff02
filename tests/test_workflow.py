"""The Snakemake DAG: lint-clean, the whole MSD study dry-runs, and a tiny synthetic study runs for real."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, cli_env

TINY_FOLDS = 3


def snakemake(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_workflow_is_lint_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_the_whole_msd_study_dry_runs(tmp_path):
    for task in ("Task01_BrainTumour", "Task02_Heart", "Task06_Lung"):
        (tmp_path / task).mkdir()
        (tmp_path / task / "dataset.json").write_text("{}")
    (tmp_path / "Task02_Heart" / "imagesTs").mkdir()
    for case in ("la_001", "la_002"):
        (tmp_path / "Task02_Heart" / "imagesTs" / f"{case}.nii.gz").write_bytes(b"")
    result = snakemake("-n", "--cores", "2", "--config", f"data_root={tmp_path}", f"results={tmp_path / 'results'}")
    assert result.returncode == 0, result.stdout + result.stderr
    counts = job_counts(result.stdout)
    # Only Heart has test images: each of its 6 models' 5-fold ensemble predicts them.
    assert counts["predict_test_set"] == 6
    assert (
        re.findall(r"test_predictions/predictions\.json", result.stdout)
        and "Task06_Lung/uresnet/test" not in result.stdout
    )
    assert counts["check"] == counts["splits"] == counts["preprocess"] == 3
    assert counts["search"] == 15
    # BrainTumour: uresnet, scnas and 3 random draws; Heart and Lung add scnas_transfer.
    assert counts["train"] == counts["predict"] == counts["evaluate"] == 5 * (5 + 6 + 6)
    assert counts["random_genotype"] == 3 * 3
    assert counts["cv_table_task"] == 3 and counts["cv_table"] == 1


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("study")
    extra = {
        "results": str(root / "results"),
        "run_tasks": ["Tiny"],
        "models": ["uresnet"],
        "num_folds": TINY_FOLDS,
        "folds": list(range(TINY_FOLDS)),
        "tasks": {"Tiny": {"synthetic": {"kind": "heart", "cases": 5, "seed": 3, "size": 24}}},
        "transfer": {"source_task": None, "targets": []},
        "preprocess": {"spacing": [2.0, 2.0, 2.0]},
        "plan": {"patch_size": [16, 16, 16]},
        "train": {"max_epochs": 1, "iterations_per_epoch": 2, "uresnet_channels": 4},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(extra))
    args = ["--profile", "profiles/local", "--configfiles", "config/demo.yaml", str(path)]
    return root, args


def test_first_stages_run_on_a_synthetic_task(tiny_study):
    root, args = tiny_study
    res = root / "results" / "Tiny"
    result = snakemake(str(res / "preprocessed" / "plans.json"), str(res / "splits_final.json"), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    check = json.loads((res / "check.json").read_text())
    assert check["cases"] and check["format"] == "MSD"
    assert len(json.loads((res / "splits_final.json").read_text())) == TINY_FOLDS
    assert len(list((res / "preprocessed").glob("*_seg.npy"))) == 5
    assert (res / "logs" / "preprocess.log").read_text().strip()


def test_tiny_study_runs_end_to_end_and_one_fold_reruns_alone(tiny_study):
    root, args = tiny_study
    result = snakemake(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    res = root / "results"
    table = (res / "cv_table.md").read_text()
    assert "3D U-ResNet" in table and "left atrium" in table
    assert (res / "Tiny" / "cv_table.tex").exists() and (res / "Tiny" / "cv_table.csv").exists()
    for fold in range(TINY_FOLDS):
        assert (res / "Tiny" / "uresnet" / f"fold_{fold}" / "metrics.csv").exists()

    (res / "Tiny" / "uresnet" / "fold_2" / "checkpoint_final.pt").unlink()
    dry = snakemake("-n", *args)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    counts = job_counts(dry.stdout)
    assert counts["train"] == counts["predict"] == counts["evaluate"] == 1
    assert "fold=2" in dry.stdout and "fold=1" not in dry.stdout
    assert counts.get("preprocess", 0) == 0 and counts.get("search", 0) == 0
    assert counts["cv_table"] == counts["cv_table_task"] == 1


def test_a_config_error_is_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  min_lr: 0.5\n")
    result = snakemake("-n", "--cores", "1", "--configfiles", "config.yaml", str(bad))
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip().splitlines()
    assert output[-1].startswith("scnas: error in the Snakemake config: config key train.min_lr:"), output[-3:]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_missing_data_root_or_dataset_is_one_line_naming_the_key(tmp_path):
    """Not Snakemake's MissingInputException, whose last line is only a path."""
    missing = tmp_path / "not-mounted"
    result = snakemake("-n", "--cores", "1", "--config", f"data_root={missing}", f"results={tmp_path / 'results'}")
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip().splitlines()
    assert output[-1] == (
        f"scnas: error in the Snakemake config: config key data_root: folder {missing} does not exist (it should "
        "hold the task folders Task01_BrainTumour, Task02_Heart, Task06_Lung); set data_root in your config file "
        "or with --config data_root=DIR"
    )
    assert [line for line in output if "scnas" in line or "Exception" in line] == output[-1:]

    for task in ("Task01_BrainTumour", "Task02_Heart"):
        (tmp_path / task).mkdir()
    (tmp_path / "Task01_BrainTumour" / "dataset.json").write_text("{}")
    result = snakemake("-n", "--cores", "1", "--config", f"data_root={tmp_path}", f"results={tmp_path / 'results'}")
    assert result.returncode != 0
    assert (result.stdout + result.stderr).strip().splitlines()[-1] == (
        f"scnas: error in the Snakemake config: config key tasks.Task02_Heart.dataset: {tmp_path / 'Task02_Heart'} "
        "has no dataset.json (an MSD task or nnU-Net v2 dataset folder has one)"
    )


def test_after_a_finished_study_a_rerun_fold_trains_afresh_and_a_changed_setting_changes_the_table(tiny_study):
    root, args = tiny_study
    res = root / "results"
    assert (res / "cv_table.md").exists(), "runs after test_tiny_study_runs_end_to_end_and_one_fold_reruns_alone"
    result = snakemake(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    log = (res / "Tiny" / "logs" / "train_uresnet_fold_2.log").read_text()
    assert "epoch 1/1" in log and "resuming" not in log
    for fold in range(TINY_FOLDS):
        assert not (res / "Tiny" / "uresnet" / f"fold_{fold}" / "checkpoint_latest.pt").exists()

    before = (res / "cv_table.csv").read_text()
    changed = root / "changed.yaml"
    changed.write_text(yaml.safe_dump({"train": {"lr": 3e-2}}))
    result = snakemake(*args, str(changed))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epoch 1/1" in (res / "Tiny" / "logs" / "train_uresnet_fold_0.log").read_text()
    assert (res / "cv_table.csv").read_text() != before


def test_test_images_are_predicted_by_each_models_fold_ensemble(tiny_study):
    root, args = tiny_study
    res = root / "results" / "Tiny"
    changed = root / "changed.yaml"
    assert changed.exists(), "runs after test_after_a_finished_study_a_rerun_fold_trains_afresh_and_a_changed_..."
    args = [*args, str(changed)]
    test_dir = res / "raw" / "imagesTs"
    test_dir.mkdir()
    for scan in sorted((res / "raw" / "imagesTr").iterdir())[:2]:
        shutil.copy(scan, test_dir / scan.name.replace("heart_", "unseen_"))
    dry = snakemake("-n", *args)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert job_counts(dry.stdout) == {"predict_test_set": 1, "all": 1, "total": 2}

    result = snakemake(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    out = res / "uresnet" / "test_predictions"
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(p.name for p in test_dir.iterdir())
    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["checkpoints"] == [
        str(res / "uresnet" / f"fold_{k}" / "checkpoint_final.pt") for k in range(TINY_FOLDS)
    ]
    assert "predict finished" in (res / "logs" / "predict_test_set_uresnet.log").read_text()
