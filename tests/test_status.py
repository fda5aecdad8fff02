"""`scnas status` on a results folder laid out by hand (every state a fold can be in), and progress bars
that leave whole lines, not carriage returns, in log files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scnas.cli import main
from scnas.layout import Layout
from scnas.report.status import format_status, study_status

TASK = "T"


def _touch(path: Path, text: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _training_log(folder: Path, seconds: list[float]) -> None:
    rows = "".join(f"{k + 1},0.9,0.001,{s}\n" for k, s in enumerate(seconds))
    _touch(folder / "training_log.csv", "epoch,train_loss,lr,seconds\n" + rows)


@pytest.fixture
def sleeper():
    """A live process whose command line names scnas, as a running stage's would."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "scnas-train-stand-in"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def results(tmp_path, sleeper, monkeypatch) -> Path:
    res = tmp_path / "results"
    L = Layout(str(res))
    _touch(Path(L.check(TASK)))
    _touch(Path(L.splits(TASK)), "[{}, {}]")
    _touch(Path(L.plans(TASK)))
    logs = Path(L.log(TASK, "x")).parent
    # search: fold 0 done; fold 1 left off at epoch 3 with no process and no error line
    _touch(Path(L.genotype(TASK, 0)))
    _touch(logs / "search_fold_1.log", "epoch 1/5  tau 5\nepoch 3/5  tau 2\n")
    # uresnet: fold 0 evaluated; fold 1 training here (its lock names a live process)
    for name in ("checkpoint_final.pt", "predictions/predictions.json", "summary.json"):
        _touch(Path(L.fold(TASK, "uresnet", 0)) / name)
    running = Path(L.fold(TASK, "uresnet", 1))
    _touch(running / ".scnas.lock", f"pid {sleeper} on {socket.gethostname()}\n")
    _training_log(running, [3.0, 5.0])
    _touch(
        logs / "train_uresnet_fold_1.log", "epoch 1/10  loss 0.9\r\repoch 2/10: 50%|###  | 4/8\nepoch 2/10  loss 0.8\n"
    )
    # scnas: fold 0 failed; fold 1 runs as SLURM job 4242 (squeue below), 5 of 20 epochs of 60 s done
    _touch(logs / "train_scnas_fold_0.log", "epoch 1/10  loss 0.9\nscnas train: error: cell 'x' is wrong\n")
    _touch(logs / "train_scnas_fold_1.log", "scnas: submitted SLURM job 4242 (scnas-train-T-scnas-fold_1): ...\n")
    slurm_fold = Path(L.fold(TASK, "scnas", 1))
    _training_log(slurm_fold, [60.0] * 5)
    _touch(res / TASK / "scnas" / "logs" / "fold_1" / "4242_0_log.err", "x\nepoch 5/20  loss 0.7  60.0s\n")
    # random_0: fold 0 trained, waiting for its prediction; fold 1 stopped by Ctrl-C
    _touch(Path(L.checkpoint(TASK, "random_0", 0)))
    _touch(logs / "train_random_0_fold_1.log", "epoch 1/10\nscnas train: interrupted\n")
    bin_dir = tmp_path / "bin"
    _touch(bin_dir / "squeue", "#!/bin/sh\necho '4242|RUNNING'\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return res


def test_every_state_of_a_fold(results, sleeper):
    status = study_status(results)
    data, folds, rows = status[TASK]
    assert data == "data prepared" and folds == [0, 1]
    state = {(r.run, r.fold): r for r in rows}
    assert state["search", 0].state == "done"
    assert state["search", 1].state == "stopped" and "epoch 3/5" in state["search", 1].detail
    assert state["uresnet", 0].state == "done"
    local = state["uresnet", 1]
    assert (local.state, local.stage) == ("running", "train")
    assert local.detail == f"pid {sleeper} on {socket.gethostname()}, epoch 2/10, about 32 s left at most"
    failed = state["scnas", 0]
    assert failed.state == "failed" and failed.detail == "scnas train: error: cell 'x' is wrong"
    assert failed.log.endswith("logs/train_scnas_fold_0.log")
    remote = state["scnas", 1]
    assert remote.state == "running"
    assert remote.detail == "SLURM job 4242 RUNNING, epoch 5/20, about 15.0 min left at most"
    assert (state["random_0", 0].state, state["random_0", 0].cell) == ("waiting", "trained")
    assert state["random_0", 1].state == "stopped" and state["random_0", 1].detail == "scnas train: interrupted"

    text = format_status(status, str(results))
    grid = {
        line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("  ") and "fold_" not in line
    }
    assert grid["search"] == ["done", "stopped"]
    assert grid["uresnet"] == ["done", "train", "2/10"]
    assert grid["scnas"] == ["FAILED", "train", "5/20"]
    assert grid["random_0"] == ["trained", "stopped"]
    assert "2 done, 2 running, 1 waiting, 1 failed, 2 stopped (of 8 folds)" in text


def test_a_process_that_ended_is_not_running(results, sleeper):
    os.kill(sleeper, 9)
    os.waitpid(sleeper, 0)
    state = {(r.run, r.fold): r for r in study_status(results)[TASK][2]}
    assert state["uresnet", 1].state == "stopped"


def test_status_command(results, capsys):
    assert main(["status", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"results: {results}\n") and "T  (data prepared)" in out
    assert "failed:\n  T scnas fold_0 (train): scnas train: error: cell 'x' is wrong [" in out


def test_progress_in_a_log_file_is_whole_lines(tmp_path):
    code = (
        "from scnas.data.pool import map_cases\n"
        "from scnas.train.engine import progress\n"
        "map_cases(lambda x: x, range(5), threads=2, progress=True, desc='preprocess')\n"
        "assert list(progress(range(3), 3, 'epoch 1/1', True)) == [0, 1, 2]\n"
    )
    log = tmp_path / "rule.log"
    with open(log, "w") as f:
        subprocess.run(
            [sys.executable, "-c", code], stderr=f, check=True, timeout=120, env={**os.environ, "SCNAS_PROGRESS": "1"}
        )
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("preprocess: 0/5 cases") and lines[-1].startswith("preprocess: 5/5 cases, ")
    assert "left" in lines[-1] and len(lines) == 2, lines
