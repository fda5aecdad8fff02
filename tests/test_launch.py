"""The launcher without a SLURM cluster: in-process and local submitit jobs, failures, cancelling,
the SLURM request checks (against a stand-in sinfo), and the torch.distributed helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scnas.config import Resources, task_settings
from scnas.errors import ScnasError
from scnas.launch import Job, devices, run_job
from scnas.launch.executors import config_key, descendants
from scnas.launch.job import limit_threads, rank_devices
from scnas.launch.slurm import check_request, gres_gpus, parse_time_limit
from scnas.train import distributed
from scnas.train.distributed import init_distributed

PROBE = "scnas.launch.probe:ddp_probe"
REPO = Path(__file__).resolve().parents[1]
CPU_JOB = {"gpus_per_node": 0, "tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 1, "time_min": 5}


def launcher(executor: str, train: dict | None = None, **default):
    return task_settings(
        {
            "launcher": {
                "executor": executor,
                "poll_s": 0.2,
                "default": {**CPU_JOB, **default},
                "train": train or {},
            }
        }
    ).launcher


def make_job(tmp_path: Path, lc, target: str = PROBE, **kwargs) -> Job:
    return Job(
        name="test-job", target=target, kwargs=kwargs, resources=lc.resources("train"), log_dir=tmp_path / "logs"
    )


def probe_total(world_size: int, steps: int) -> int:
    """sum over ranks r and steps s of (r + 1) * (s + 1), counted by hand."""
    return sum((r + 1) * (s + 1) for r in range(world_size) for s in range(steps))


def test_inprocess_calls_the_target_with_its_kwargs(tmp_path):
    lc = launcher("inprocess")
    assert run_job(make_job(tmp_path, lc, "json:dumps", obj=[1, {"a": 2}]), lc) == '[1, {"a": 2}]'
    result = run_job(make_job(tmp_path, lc, steps=4), lc)
    assert (result["world_size"], result["backend"], result["devices"]) == (1, None, ["cpu"])
    assert result["total"] == probe_total(1, 4) == 10
    assert not (tmp_path / "logs").exists()


def test_unimportable_target_is_refused_before_running(tmp_path):
    lc = launcher("local")
    with pytest.raises(ScnasError, match=r"job test-job: target 'scnas.nope:f' cannot be imported"):
        run_job(make_job(tmp_path, lc, "scnas.nope:f"), lc)
    with pytest.raises(ScnasError, match=r"not of the form 'module:function'"):
        run_job(make_job(tmp_path, lc, "json.dumps"), lc)
    assert not (tmp_path / "logs").exists()


@pytest.mark.timeout(120)
def test_local_executor_runs_two_gloo_ranks(tmp_path):
    lc = launcher("local")
    result = run_job(make_job(tmp_path, lc, steps=3, out=str(tmp_path / "probe.json")), lc)
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert sorted(r["rank"] for r in result["ranks"]) == [0, 1]
    assert len({r["pid"] for r in result["ranks"]}) == 2
    assert result["all_reduce_sum"] == 1 + 2
    assert result["total"] == probe_total(2, 3) == 18
    assert result["cuda_visible_devices"] == ["", ""]  # a CPU job hides every GPU
    assert json.loads((tmp_path / "probe.json").read_text()) == result


@pytest.mark.timeout(120)
def test_failing_target_raises_with_the_job_log_tail(tmp_path):
    lc = launcher("local", tasks_per_node=1)
    with pytest.raises(ScnasError) as info:
        run_job(make_job(tmp_path, lc, "json:loads", s="not json"), lc)
    headline, *tail = str(info.value).splitlines()
    assert headline.startswith("local job ") and " (test-job) failed: rank 0 raised " in headline
    assert headline.endswith("JSONDecodeError: Expecting value: line 1 column 1 (char 0)")
    assert tail[0].startswith("last 20 lines of ") and tail[0].endswith("_0_log.err:")
    assert len(tail) == 21
    assert any('raise JSONDecodeError("Expecting value"' in line for line in tail)


RANK0_FAILS = """
from scnas.train.distributed import init_distributed

def rank0_fails():
    ctx = init_distributed()
    if ctx.rank == 0:
        raise RuntimeError("rank 0 gives up")
    ctx.barrier()  # rank 1 waits for rank 0 in vain
"""


@pytest.mark.timeout(120)
def test_one_failed_rank_ends_a_local_job_whose_other_rank_waits(tmp_path, monkeypatch):
    (tmp_path / "rank0_fails.py").write_text(RANK0_FAILS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    lc = launcher("local")
    with pytest.raises(ScnasError) as info:
        run_job(make_job(tmp_path, lc, "rank0_fails:rank0_fails"), lc)
    assert str(info.value).splitlines()[0].endswith("failed: rank 0 raised RuntimeError: rank 0 gives up")


def test_slurm_without_sbatch_is_one_line_and_submits_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    lc = launcher("slurm")
    with pytest.raises(ScnasError) as info:
        run_job(make_job(tmp_path, lc), lc)
    message = str(info.value)
    assert message.startswith("launcher.executor is slurm but sbatch is not on PATH: ")
    assert "\n" not in message
    assert not (tmp_path / "logs").exists()


def fake_slurm(tmp_path: Path, monkeypatch, sinfo_lines: list[str]) -> Path:
    """sinfo printing `sinfo_lines`, an sbatch that only records that it was called, and an srun (submitit
    refuses to submit where it finds none), so that no SLURM needs to be installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(sinfo_lines) + "\nEOF\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-called\nexit 1\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path / "sbatch-called"


SINFO = [
    "debug*|1|8|gpu:4|23593|infinite",
    "big|2|64|gpu:a100:4(S:0-1),gpu:v100:2|512000|2-00:00:00",
    "big|1|32|(null)|256000|2-00:00:00",
]


@pytest.mark.parametrize(
    "train, message",
    [
        ({"partition": "gpu"}, "launcher.train.partition: partition 'gpu' does not exist (partitions: big, debug)"),
        (
            {"gpus_per_node": 8},
            "launcher.train.gpus_per_node: 8 GPUs per node requested, partition debug has at most 4",
        ),
        ({"partition": "big", "nodes": 4}, "launcher.train.nodes: 4 nodes requested, partition big has 3"),
        (
            {"gpus_per_node": 2, "cpus_per_task": 6},
            "launcher.train.cpus_per_task: 6 CPUs per task x 2 tasks per node = 12 CPUs per node requested, "
            "partition debug's nodes have at most 8",
        ),
        (
            {"mem_gb": 64},
            "launcher.train.mem_gb: 64 GB per node requested, partition debug's nodes have at most 23.0 GB",
        ),
        (
            {"partition": "big", "time_min": 3000},
            "launcher.train.time_min: 3000 minutes requested, partition big allows at most 2880",
        ),
    ],
    ids=["partition", "gpus", "nodes", "cpus", "mem", "time"],
)
def test_slurm_request_that_cannot_fit_is_refused_before_submitting(tmp_path, monkeypatch, train, message):
    sbatch_called = fake_slurm(tmp_path, monkeypatch, SINFO)
    lc = launcher("slurm", train=train)
    with pytest.raises(ScnasError) as info:
        run_job(make_job(tmp_path, lc), lc)
    assert str(info.value) == message
    assert not sbatch_called.exists() and not (tmp_path / "logs").exists()


def test_slurm_log_folder_exists_when_sbatch_is_called_and_a_refusal_is_one_line(tmp_path, monkeypatch):
    """SLURM does not create the --output folder: a job that starts at once must find it there."""
    fake_slurm(tmp_path, monkeypatch, SINFO)
    (tmp_path / "bin" / "sbatch").write_text(
        "#!/bin/sh\n"
        "out=$(sed -n 's/^#SBATCH --output=//p' \"$1\")\n"
        f'if [ -d "$(dirname "$out")" ]; then echo ok; else echo "missing: $out"; fi > {tmp_path}/seen\n'
        "echo 'sbatch: error: Invalid account or account/partition combination specified' >&2\n"
        "exit 1\n"
    )
    lc = launcher("slurm")
    with pytest.raises(ScnasError) as info:
        run_job(make_job(tmp_path, lc), lc)
    assert (tmp_path / "seen").read_text().strip() == "ok"
    assert str(info.value) == (
        "sbatch refused job test-job: sbatch: error: Invalid account or account/partition combination specified"
    )


def test_slurm_request_that_fits_picks_its_partition(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch, SINFO)
    big = check_request(
        Resources(nodes=3, gpus_per_node=6, cpus_per_task=10, mem_gb=500, time_min=2880, partition="big"), str
    )
    assert (big.name, big.nodes, big.gpus, big.cpus, big.time_limit_min) == ("big", 3, 6, 64, 2880)
    assert check_request(Resources(gpus_per_node=4, cpus_per_task=2), str).name == "debug"


def test_config_key_names_the_section_that_set_the_value():
    lc = launcher("slurm", train={"gpus_per_node": 4})
    assert config_key(lc, lc.resources("train"), "gpus_per_node") == "launcher.train.gpus_per_node"
    assert config_key(lc, lc.resources("train"), "mem_gb") == "launcher.default.mem_gb"
    assert config_key(lc, lc.resources("search"), "gpus_per_node") == "launcher.default.gpus_per_node"


def test_sinfo_fields_are_parsed():
    assert gres_gpus("gpu:4") == 4
    assert gres_gpus("gpu:a100:4(S:0-1),gpu:v100:2") == 6
    assert gres_gpus("gpu:tesla:2(S:0,1),mps:100") == 2
    assert gres_gpus("(null)") == 0
    assert parse_time_limit("infinite") is None
    assert parse_time_limit("30:00") == 30
    assert parse_time_limit("2:00:00") == 120
    assert parse_time_limit("1-12:00:00") == 36 * 60
    assert parse_time_limit("0:30") == 1  # 30 s still needs a minute


def test_each_rank_gets_its_own_gpu():
    assert [rank_devices("4,5,6,7", r, 4) for r in range(4)] == ["4", "5", "6", "7"]
    assert [rank_devices(None, r, 2) for r in range(2)] == ["0", "1"]
    assert [rank_devices("3", r, 2) for r in range(2)] == ["3", "3"]  # SLURM bound one GPU per task
    assert rank_devices("0,1", 0, 0) == ""


def test_single_process_context_without_a_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed(prefer_cuda=False)
    try:
        assert init_distributed() is ctx
        assert (ctx.rank, ctx.world_size, ctx.backend, ctx.device, ctx.is_main) == (
            0,
            1,
            None,
            torch.device("cpu"),
            True,
        )
        x = torch.tensor([1, 2, 3])
        mean = ctx.all_reduce_mean(x)
        assert mean.dtype == torch.float64 and mean.tolist() == [1.0, 2.0, 3.0]
        assert ctx.broadcast_object({"a": 1}) == {"a": 1} and ctx.all_gather_object(5) == [5]
        ctx.barrier()
    finally:
        ctx.close()
    assert distributed._CONTEXT is None
    again = init_distributed(prefer_cuda=False)
    assert again is not ctx
    again.close()


def test_gloo_falls_back_to_loopback_when_the_host_name_does_not_resolve(monkeypatch):
    host = socket.gethostname()
    monkeypatch.setattr(distributed, "_resolves", lambda name: name not in (host, "node-a"))
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "node-a")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    distributed._use_loopback_if_unresolvable(world_size=2)
    assert (os.environ["GLOO_SOCKET_IFNAME"], os.environ["MASTER_ADDR"]) == ("lo", "127.0.0.1")
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    monkeypatch.setenv("MASTER_ADDR", "node-a")
    with pytest.raises(
        ScnasError, match=rf"host name '{host}' does not resolve, and gloo needs it on a multi-node job"
    ):
        distributed._use_loopback_if_unresolvable(world_size=4)
    assert "GLOO_SOCKET_IFNAME" not in os.environ


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


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_sigterm_while_waiting_stops_the_local_job(tmp_path):
    ckpt = tmp_path / "ckpt" / "probe_checkpoint.json"
    spec = {
        "launcher": {"executor": "local", "poll_s": 0.2, "default": CPU_JOB},
        "name": "test-cancel",
        "target": PROBE,
        "kwargs": {"steps": 10_000, "sleep_s": 0.2, "checkpoint_dir": str(ckpt.parent)},
        "log_dir": str(tmp_path / "logs"),
    }
    # a file, not a pipe: a stray process holding the pipe would hang communicate(), not the launcher
    err_file = tmp_path / "stderr.txt"
    waiting = subprocess.Popen(
        [sys.executable, "-c", RUN_JOB, json.dumps(spec)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=err_file.open("w"),
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not ckpt.exists():  # both ranks run: rank 0 saved a step after an all_reduce
            if waiting.poll() is not None:
                pytest.fail(f"run_job ended early: {err_file.read_text()}")
            assert time.monotonic() < deadline, "the local job did not start within 90 s"
            time.sleep(0.2)
        workers = descendants(waiting.pid)
        assert len(workers) >= 3  # the controller and two ranks
        waiting.send_signal(signal.SIGTERM)
        waiting.wait(timeout=90)
    finally:
        waiting.kill()
    assert waiting.returncode == 128 + signal.SIGTERM
    assert "SIGTERM received: stopped local job" in err_file.read_text()
    assert [pid for pid in workers if alive(pid)] == []


def test_a_rank_computes_on_the_cpus_it_was_given(monkeypatch):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    try:
        limit_threads(1)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
        fresh = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert fresh.stdout.strip() == "1"  # a torch imported after the call obeys it too
    finally:
        torch.set_num_threads(before)


@pytest.mark.timeout(120)
def test_a_local_job_runs_on_gpus_that_no_other_local_job_holds(tmp_path, monkeypatch):
    """Two GPUs of 3,5,7 with 3 held elsewhere: the ranks see 5 and 7, not submitit's own 0 and 1."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    monkeypatch.setattr(devices, "LOCK_PARENT", tmp_path)
    lc = launcher("local", train={"gpus_per_node": 2})
    with devices.claim_gpus(1, "other-job", "launcher.default.gpus_per_node") as other:
        assert other == ["3"]
        result = run_job(make_job(tmp_path, lc, steps=1), lc)
    assert result["world_size"] == 2
    assert result["cuda_visible_devices"] == ["5", "7"]
    assert devices.holders(["3", "5", "7"]) == {"3": None, "5": None, "7": None}


def test_a_local_job_asking_for_more_gpus_than_the_machine_has_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(devices, "LOCK_PARENT", tmp_path)
    lc = launcher("local", train={"gpus_per_node": 2})
    with pytest.raises(ScnasError) as info:
        run_job(make_job(tmp_path, lc), lc)
    assert str(info.value) == (
        "launcher.train.gpus_per_node: 2 GPUs per node requested, this machine has 1 (CUDA_VISIBLE_DEVICES=3)"
    )
    assert not (tmp_path / "logs").exists()
