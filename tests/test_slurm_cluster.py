"""The launcher against a real SLURM cluster: tests/cluster/slurm-up.sh starts one on this machine
(SLURM_GPUS=4 SLURM_CPUS=8 also enables the fake-GPU test). Skipped when no controller answers."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from scnas.config import task_settings
from scnas.errors import ScnasError
from scnas.io import read_json
from scnas.launch import Job, run_job
from scnas.launch.probe import CHECKPOINT_NAME

PROBE = "scnas.launch.probe:ddp_probe"
REPO = Path(__file__).resolve().parents[1]
CPU_JOB = {"gpus_per_node": 0, "tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 1, "time_min": 5}


def _why_no_slurm() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("scontrol") is None:
        return "no SLURM client tools (sinfo, scontrol) on PATH"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return "scontrol ping did not answer"
    if "is UP" not in ping.stdout:
        return "no SLURM controller answers `scontrol ping` (tests/cluster/slurm-up.sh starts one)"
    return None


NO_SLURM = _why_no_slurm()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(NO_SLURM is not None, reason=NO_SLURM or "")]


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout


def default_partition() -> tuple[str, int, int]:
    """(name, GPUs, CPUs) of the default partition's nodes, read straight from sinfo."""
    for line in sh("sinfo", "-h", "-o", "%P|%G|%c").splitlines():
        name, gres, cpus = line.split("|")
        if name.endswith("*"):
            gpus = sum(int(n) for n in re.findall(r"gpu:(?:[^:,()]+:)?(\d+)", gres))
            return name[:-1], gpus, int(cpus.rstrip("+"))
    pytest.skip("the cluster has no default partition")


def launcher(train: dict | None = None, **default):
    return task_settings(
        {
            "launcher": {
                "executor": "slurm",
                "poll_s": 1,
                "default": {**CPU_JOB, **default},
                "train": train or {},
            }
        }
    ).launcher


def make_job(name: str, log_dir: Path, lc, target: str = PROBE, **kwargs) -> Job:
    return Job(name=name, target=target, kwargs=kwargs, resources=lc.resources("train"), log_dir=log_dir)


def probe_total(world_size: int, steps: int) -> int:
    """sum over ranks r and steps s of (r + 1) * (s + 1), counted by hand."""
    return sum((r + 1) * (s + 1) for r in range(world_size) for s in range(steps))


def job_ids(name: str) -> list[str]:
    return sh("squeue", "-h", "-t", "all", "-n", name, "-o", "%i").split()


def cancel_leftovers(name: str) -> None:
    """Cancel jobs named `name` that are still queued 10 s on (a finished one may still be completing)."""
    deadline = time.monotonic() + 10
    while sh("squeue", "-h", "-n", name).strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    subprocess.run(["scancel", "--name", name], capture_output=True, timeout=60)


def wait_for_step(ckpt_dir: Path, step: int, timeout_s: float = 120) -> None:
    ckpt = ckpt_dir / CHECKPOINT_NAME
    deadline = time.monotonic() + timeout_s
    while not (ckpt.exists() and read_json(ckpt)["step"] >= step):
        assert time.monotonic() < deadline, f"the probe did not reach step {step} within {timeout_s} s"
        time.sleep(0.2)


@pytest.fixture
def job_name(request):
    """A unique job name; whatever still runs under it is cancelled afterwards."""
    name = f"scnas-test-{request.node.name[:40]}-{uuid.uuid4().hex[:6]}"
    yield name
    cancel_leftovers(name)


@pytest.fixture(scope="module")
def unpreempted(tmp_path_factory):
    """An 8-step, 2-rank probe run that nothing interrupts."""
    name = f"scnas-test-unpreempted-{uuid.uuid4().hex[:6]}"
    lc = launcher()
    try:
        yield run_job(make_job(name, tmp_path_factory.mktemp("unpreempted") / "logs", lc, steps=8), lc)
    finally:
        cancel_leftovers(name)


@pytest.mark.timeout(180)
def test_two_rank_gloo_job(unpreempted):
    result = unpreempted
    assert (result["world_size"], result["backend"]) == (2, "gloo")
    assert sorted(r["rank"] for r in result["ranks"]) == [0, 1]
    assert len({r["pid"] for r in result["ranks"]}) == 2
    assert len({r["slurm_job_id"] for r in result["ranks"]} - {None}) == 1
    assert result["all_reduce_sum"] == 3
    assert result["total"] == probe_total(2, 8) == 108
    assert (result["start_step"], result["restart_count"]) == (0, 0)


@pytest.mark.timeout(300)
def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, job_name, unpreempted):
    lc = launcher(time_min=15)  # above 10 min, submitit takes USR2 as preemption, not as a time-out
    ckpt_dir = tmp_path / "ckpt"
    job = make_job(job_name, tmp_path / "logs", lc, steps=8, sleep_s=0.5, checkpoint_dir=str(ckpt_dir))
    preempted: list[str] = []

    def preempt() -> None:
        wait_for_step(ckpt_dir, 2)
        job_id = job_ids(job_name)[0]
        sh("scancel", "--signal=USR2", job_id)
        preempted.append(job_id)

    thread = threading.Thread(target=preempt, daemon=True)
    thread.start()
    result = run_job(job, lc)
    thread.join(timeout=5)
    assert preempted, "the job was never preempted"
    assert result["restart_count"] >= 1
    assert all(r["slurm_restart_count"] >= 1 for r in result["ranks"])
    assert {r["slurm_job_id"] for r in result["ranks"]} == {preempted[0]}  # the same job, requeued
    assert result["start_step"] >= 2  # resumed from the checkpoint, not from step 0
    assert result["starts"] == [
        {"step": 0, "restart_count": 0},
        {"step": result["start_step"], "restart_count": result["restart_count"]},
    ]
    for key in ("world_size", "backend", "all_reduce_sum", "steps", "total"):
        assert result[key] == unpreempted[key], key


@pytest.mark.timeout(120)
def test_failed_job_names_its_id_state_and_log_tail(tmp_path, job_name):
    lc = launcher()
    with pytest.raises(ScnasError) as info:
        run_job(make_job(job_name, tmp_path / "logs", lc, "json:loads", s="not json"), lc)
    headline, *tail = str(info.value).splitlines()
    # --kill-on-bad-exit may terminate the other rank before it raises too (srun then says 15)
    match = re.fullmatch(
        rf"SLURM job (\d+) \({job_name}\) ended FAILED \(exit code (?:1|15):0\): rank (\d) raised "
        r"json\.decoder\.JSONDecodeError: Expecting value: line 1 column 1 \(char 0\)",
        headline,
    )
    assert match, headline
    job_id, rank = match.groups()
    assert sh("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%j|%T").strip() == f"{job_name}|FAILED"
    assert tail[0] == f"last 20 lines of {tmp_path}/logs/{job_id}_{rank}_log.err:"
    assert any('raise JSONDecodeError("Expecting value"' in line for line in tail[1:])


@pytest.mark.timeout(120)
def test_job_killed_from_outside_is_reported_as_such(tmp_path, job_name):
    lc = launcher()
    ckpt_dir = tmp_path / "ckpt"
    job = make_job(job_name, tmp_path / "logs", lc, steps=10_000, sleep_s=0.5, checkpoint_dir=str(ckpt_dir))

    def kill() -> None:
        wait_for_step(ckpt_dir, 1)
        sh("scancel", job_ids(job_name)[0])

    threading.Thread(target=kill, daemon=True).start()
    with pytest.raises(ScnasError) as info:
        run_job(job, lc)
    headline = str(info.value).splitlines()[0]
    assert re.fullmatch(
        rf"SLURM job \d+ \({job_name}\) ended CANCELLED( \(exit code [0-9:]+\))?: it was cancelled "
        r"\(scancel, an administrator, or preemption\), and no rank left a result",
        headline,
    ), headline
    assert "pickle" not in str(info.value)


@pytest.mark.timeout(60)
def test_unknown_partition_is_refused_before_submitting(tmp_path, job_name):
    lc = launcher(train={"partition": "no-such-partition"})
    with pytest.raises(ScnasError) as info:
        run_job(make_job(job_name, tmp_path / "logs", lc), lc)
    assert re.fullmatch(
        r"launcher\.train\.partition: partition 'no-such-partition' does not exist "
        rf"\(partitions: .*\b{default_partition()[0]}\b.*\)",
        str(info.value),
    ), str(info.value)
    assert job_ids(job_name) == [] and not (tmp_path / "logs").exists()


@pytest.mark.timeout(60)
def test_more_gpus_than_a_node_has_is_refused_before_submitting(tmp_path, job_name):
    partition, gpus, _ = default_partition()
    lc = launcher(train={"gpus_per_node": gpus + 1})
    with pytest.raises(ScnasError) as info:
        run_job(make_job(job_name, tmp_path / "logs", lc), lc)
    have = f"has at most {gpus}" if gpus else "has no GPUs (gpus_per_node: 0 runs on CPUs)"
    assert (
        str(info.value)
        == f"launcher.train.gpus_per_node: {gpus + 1} GPUs per node requested, partition {partition} {have}"
    )
    assert job_ids(job_name) == [] and not (tmp_path / "logs").exists()


@pytest.mark.timeout(180)
def test_fake_gpus_give_each_rank_its_own_device(tmp_path, job_name):
    _, gpus, cpus = default_partition()
    if gpus < 4 or cpus < 4:
        pytest.skip(
            f"the cluster's nodes have {gpus} GPUs and {cpus} CPUs; this needs 4 of each "
            "(SLURM_GPUS=4 SLURM_CPUS=8 tests/cluster/slurm-up.sh)"
        )
    if torch.cuda.is_available():
        pytest.skip("real CUDA devices: the fake GPUs would map onto them")
    lc = launcher(gpus_per_node=4, cpus_per_task=1)
    result = run_job(make_job(job_name, tmp_path / "logs", lc, steps=2), lc)
    assert (result["world_size"], result["backend"]) == (4, "gloo")
    assert sorted(r["rank"] for r in result["ranks"]) == [0, 1, 2, 3]
    assert sorted(result["cuda_visible_devices"]) == ["0", "1", "2", "3"]
    assert result["all_reduce_sum"] == 10 and result["total"] == probe_total(4, 2)


RUN_JOB = """
import json, sys
from pathlib import Path
from scnas.config import task_settings
from scnas.launch import Job, run_job
spec = json.loads(sys.argv[1])
lc = task_settings({"launcher": spec["launcher"]}).launcher
job = Job(name=spec["name"], target=spec["target"], kwargs=spec["kwargs"], resources=lc.resources("train"),
          log_dir=Path(spec["log_dir"]))
print(json.dumps(run_job(job, lc)))
"""


@pytest.mark.timeout(180)
def test_sigterm_while_waiting_cancels_the_slurm_job(tmp_path, job_name):
    ckpt_dir = tmp_path / "ckpt"
    spec = {
        "launcher": {"executor": "slurm", "poll_s": 1, "default": CPU_JOB},
        "name": job_name,
        "target": PROBE,
        "kwargs": {"steps": 10_000, "sleep_s": 0.5, "checkpoint_dir": str(ckpt_dir)},
        "log_dir": str(tmp_path / "logs"),
    }
    waiting = subprocess.Popen(
        [sys.executable, "-c", RUN_JOB, json.dumps(spec)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_step(ckpt_dir, 1)
        (job_id,) = job_ids(job_name)
        waiting.send_signal(signal.SIGTERM)
        _, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 128 + signal.SIGTERM
    assert f"SIGTERM received: cancelled SLURM job {job_id} ({job_name})" in err
    deadline = time.monotonic() + 60
    while sh("squeue", "-h", "-j", job_id).strip():
        assert time.monotonic() < deadline, "squeue still lists the job a minute after it was cancelled"
        time.sleep(0.5)
    while sh("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State").split()[0] != "CANCELLED":
        assert time.monotonic() < deadline, "sacct does not record the job as cancelled"
        time.sleep(0.5)
