"""GPU claims of local jobs, on a faked device list: distinct GPUs for jobs at once, waiting for enough free
ones, a dead holder's GPU free again, and too many GPUs refused in one line."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scnas.errors import ConfigError, ScnasError
from scnas.launch import devices
from scnas.launch.devices import claim_gpus, holders, lock_folder, visible_gpus

REPO = Path(__file__).resolve().parents[1]
KEY = "launcher.train.gpus_per_node"
TIME = r"\d\d\d\d-\d\d-\d\d \d\d:\d\d:\d\d"
HOLDER = r"job {} \(pid {} since " + TIME + r"\)"


@pytest.fixture
def three_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")


def test_the_visible_gpus_are_the_variables_entries_or_the_machines_count(monkeypatch):
    monkeypatch.setattr(devices, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5,7")
    assert visible_gpus() == ["3", "5", "7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2a,1,-1,2")  # CUDA reads up to the first invalid entry
    assert visible_gpus() == ["GPU-8f2a", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1"]


def test_two_claims_of_one_gpu_get_different_gpus_until_they_end(tmp_path, three_gpus):
    with claim_gpus(1, "first", KEY, folder=tmp_path) as first, claim_gpus(1, "second", KEY, folder=tmp_path) as second:
        assert (first, second) == (["3"], ["5"])
        held = holders(["3", "5", "7"], tmp_path)
        assert re.fullmatch(HOLDER.format("first", os.getpid()), held["3"])
        assert re.fullmatch(HOLDER.format("second", os.getpid()), held["5"])
        assert held["7"] is None
    assert holders(["3", "5", "7"], tmp_path) == {"3": None, "5": None, "7": None}
    with claim_gpus(2, "third", KEY, folder=tmp_path) as third:
        assert third == ["3", "5"]


def test_a_claim_of_two_waits_while_one_of_two_is_held(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "device_count", lambda: 2)
    said: list[str] = []
    waiting = threading.Event()
    got: list[list[str]] = []

    def say(message: str) -> None:
        said.append(message)
        waiting.set()

    def second() -> None:
        with claim_gpus(2, "second", KEY, folder=tmp_path, say=say, poll_s=0.05) as gpus:
            got.append(gpus)

    with claim_gpus(1, "first", KEY, folder=tmp_path):
        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        assert waiting.wait(timeout=30), "the second claim neither waited nor said so"
        assert got == [] and thread.is_alive()
    thread.join(timeout=30)
    assert got == [["0", "1"]]
    first = HOLDER.format("first", os.getpid())
    assert re.fullmatch(
        rf"second waits for 2 free GPU\(s\) \(since {TIME}\): GPU 0 held by {first}; GPU 1 free", said[0]
    )


CLAIM_AND_SLEEP = """
import sys, time
from pathlib import Path
from scnas.launch.devices import claim_gpus
with claim_gpus(1, "doomed", "k", folder=Path(sys.argv[1])) as gpus:
    print(",".join(gpus), flush=True)
    time.sleep(600)
"""


@pytest.mark.timeout(120)
def test_the_gpu_of_a_killed_holder_is_free_again(tmp_path, three_gpus):
    holder = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_SLEEP, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "3"
        assert re.fullmatch(HOLDER.format("doomed", holder.pid), holders(["3"], tmp_path)["3"])
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.stdout.close()
    assert holders(["3"], tmp_path) == {"3": None}
    said: list[str] = []
    with claim_gpus(1, "next", KEY, folder=tmp_path, say=said.append) as gpus:
        assert gpus == ["3"] and said == []


def test_more_gpus_than_the_machine_has_is_one_line_naming_the_key(tmp_path, three_gpus, monkeypatch):
    with pytest.raises(ConfigError) as info, claim_gpus(4, "big", KEY, folder=tmp_path):
        pass
    assert str(info.value) == f"{KEY}: 4 GPUs per node requested, this machine has 3 (CUDA_VISIBLE_DEVICES=3,5,7)"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(devices, "device_count", lambda: 0)
    with pytest.raises(ConfigError) as info, claim_gpus(1, "big", "launcher.default.gpus_per_node", folder=tmp_path):
        pass
    assert str(info.value) == "launcher.default.gpus_per_node: 1 GPUs per node requested, this machine has 0"
    assert list(tmp_path.iterdir()) == []


def test_a_cpu_job_claims_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "device_count", lambda: pytest.fail("a CPU job counted the GPUs"))
    monkeypatch.setattr(devices, "LOCK_PARENT", tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with claim_gpus(0, "cpu", KEY) as gpus:
        assert gpus == []
    assert list(tmp_path.iterdir()) == []


def test_the_lock_folder_is_private_and_one_others_could_write_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "LOCK_PARENT", tmp_path)
    folder = lock_folder()
    assert folder == tmp_path / f"scnas-gpus-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert lock_folder() == folder
    folder.chmod(0o777)
    with pytest.raises(ScnasError, match=r"the GPU lock folder must be a folder of yours that nobody else can write"):
        lock_folder()
    folder.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    folder.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ScnasError, match=r"the GPU lock folder must be"):
        lock_folder()
