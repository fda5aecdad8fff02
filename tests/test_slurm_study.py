"""The pipeline itself on a real SLURM cluster (tests/cluster/slurm-up.sh): a real training job preempted
and resumed, the study through `--profile profiles/slurm`, a failing job as Snakemake shows it, and
Ctrl-C on Snakemake cancelling the jobs it submitted."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BIN, REPO, cli_env
from test_slurm_cluster import NO_SLURM, cancel_leftovers, job_ids

from scnas.config import dataclass_to_dict, task_settings
from scnas.launch import Job, run_job

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(NO_SLURM is not None, reason=NO_SLURM or "")]

CPU_JOB = {"gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 2, "time_min": 20}


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.timeout(400)
def test_preempted_training_job_resumes_and_ends_like_an_uninterrupted_run(tiny_task, tmp_path):
    name = f"scnas-preempt-{uuid.uuid4().hex[:6]}"
    stage = task_settings(
        {
            "seed": 2,
            "train": {
                "batch_size": 2,
                "uresnet_channels": 4,
                "max_epochs": 12,
                "iterations_per_epoch": 6,
                "amp": False,
            },
            "launcher": {"executor": "slurm", "poll_s": 1, "default": CPU_JOB},
        }
    )
    kwargs = {
        "preprocessed": str(tiny_task["pre"]),
        "splits": str(tiny_task["splits"]),
        "fold": 3,
        "model": "uresnet",
        "settings": dataclass_to_dict(stage),
    }
    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as many threads as the job's one CPU: equal float summation order
    try:
        _reference_run(kwargs, reference, stage, tmp_path)
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "preempted"
    job = Job(
        name,
        "scnas.launch.targets:train_target",
        {**kwargs, "out_dir": str(out)},
        stage.launcher.resources("train"),
        tmp_path / "logs",
    )
    result: dict = {}

    def run() -> None:
        result["value"] = run_job(job, stage.launcher)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        _wait(lambda: len(_rows(out / "training_log.csv")) >= 3, 240, "three epochs of the SLURM job")
        ids = job_ids(name)
        assert ids, "the job is not in squeue"
        subprocess.run(["scancel", "--signal=USR2", ids[0]], check=True, timeout=30)
        thread.join(timeout=300)
        assert not thread.is_alive(), "the preempted job did not finish"
    finally:
        cancel_leftovers(name)
    assert result["value"]["checkpoint"].endswith("checkpoint_final.pt")
    logs = "\n".join(p.read_text() for p in (tmp_path / "logs").rglob("*.err"))
    assert "resuming" in logs and "from epoch" in logs, logs[-2000:]
    a = torch.load(reference / "checkpoint_final.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "checkpoint_final.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    assert [r["train_loss"] for r in _rows(out / "training_log.csv")] == [
        r["train_loss"] for r in _rows(reference / "training_log.csv")
    ]


def _reference_run(kwargs: dict, reference: Path, stage, tmp_path: Path) -> None:
    run_job(
        Job(
            "ref",
            "scnas.launch.targets:train_target",
            {**kwargs, "out_dir": str(reference)},
            stage.launcher.resources("train"),
            tmp_path / "logs-ref",
        ),
        dataclasses.replace(stage.launcher, executor="inprocess"),
    )


def _study(tmp_path: Path, **train) -> list[str]:
    extra = {
        "results": str(tmp_path / "results"),
        "run_tasks": ["Tiny"],
        "models": ["uresnet"],
        "folds": [0, 1],
        "tasks": {"Tiny": {"synthetic": {"kind": "heart", "cases": 5, "seed": 3, "size": 24}}},
        "transfer": {"source_task": None, "targets": []},
        "preprocess": {"spacing": [2.0, 2.0, 2.0]},
        "plan": {"patch_size": [16, 16, 16]},
        "train": {"max_epochs": 1, "iterations_per_epoch": 2, "uresnet_channels": 4, **train},
        "launcher": {"executor": "slurm", "poll_s": 1, "default": CPU_JOB},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(extra))
    return ["--profile", "profiles/slurm", "--configfiles", "config/demo.yaml", str(path), "--cores", "4"]


def _snakemake(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(700)
def test_study_runs_through_the_slurm_profile(tmp_path):
    result = _snakemake(*_study(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    res = tmp_path / "results"
    assert "3D U-ResNet" in (res / "cv_table.md").read_text()
    train_log = (res / "Tiny" / "logs" / "train_uresnet_fold_0.log").read_text()
    assert "submitted SLURM job" in train_log
    job_logs = list((res / "Tiny" / "uresnet" / "logs" / "fold_0").rglob("*_log.err"))
    assert job_logs, "the SLURM job's logs are not next to the fold's outputs"


@pytest.mark.timeout(600)
def test_a_failing_job_fails_its_rule_with_job_id_state_and_log_tail(tmp_path):
    args = _study(tmp_path)
    first = _snakemake(
        *args,
        str(tmp_path / "results" / "Tiny" / "preprocessed" / "plans.json"),
        str(tmp_path / "results" / "Tiny" / "splits_final.json"),
    )
    assert first.returncode == 0, first.stderr[-3000:]
    pre = tmp_path / "results" / "Tiny" / "preprocessed"
    for seg in pre.glob("*_seg.npy"):
        seg.write_bytes(b"damaged")
    result = _snakemake(*args, str(tmp_path / "results" / "Tiny" / "uresnet" / "fold_0" / "checkpoint_final.pt"))
    assert result.returncode != 0
    shown = result.stdout + result.stderr
    assert "scnas train: error: SLURM job" in shown and "ended FAILED" in shown, shown[-3000:]
    assert "_seg.npy" in shown  # the job's own error, from its log tail


@pytest.mark.xfail(
    strict=False,
    reason="Snakemake sometimes takes over 60 s to exit after Ctrl-C inside the full suite (passes alone and "
    "in most full runs); not yet understood",
)
@pytest.mark.timeout(300)
def test_interrupting_snakemake_cancels_its_slurm_jobs(tmp_path):
    args = _study(tmp_path, max_epochs=200, iterations_per_epoch=20, patience=1000)  # no early stop on min_lr
    target = str(tmp_path / "results" / "Tiny" / "uresnet" / "fold_0" / "checkpoint_final.pt")
    proc = subprocess.Popen(
        [str(BIN / "snakemake"), *args, target],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = tmp_path / "results" / "Tiny" / "logs" / "train_uresnet_fold_0.log"
    try:
        _wait(lambda: log.exists() and "submitted SLURM job" in log.read_text(), 200, "the training job's submission")
        job_id = log.read_text().split("submitted SLURM job ", 1)[1].split()[0]
        _wait(lambda: job_state(job_id) == "RUNNING", 60, f"job {job_id} to run")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        proc.wait(timeout=60)
        _wait(lambda: job_state(job_id) in ("", "CANCELLED", "COMPLETED"), 60, f"job {job_id} to be cancelled")
        assert job_state(job_id) != "COMPLETED"
        assert f"cancelled SLURM job {job_id}" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def job_state(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip()
