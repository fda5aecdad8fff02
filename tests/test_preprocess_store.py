"""The preprocessed store against mixing, crashes and concurrency: fingerprinted plans and cases, a staging
folder swapped in whole, resume after SIGKILL, a lock per output folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env

from scnas.cli import main
from scnas.config import task_settings
from scnas.data.dataset import parse_dataset
from scnas.data.plans import PLANS_FILE, Plans, load_plans
from scnas.data.preprocess import preprocess_dataset
from scnas.data.sampler import PatchSampler
from scnas.data.store import load_preprocessed
from scnas.data.synthetic import make_synthetic_task
from scnas.errors import DatasetError, ScnasError
from scnas.locking import sibling_lock


def settings(spacing: float):
    stage = task_settings({"preprocess": {"spacing": [spacing] * 3}, "plan": {"patch_size": [16, 16, 16]}})
    return stage.preprocess, stage.plan


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_synthetic_task("heart", tmp_path_factory.mktemp("raw") / "task", cases=6, seed=0, size=24)


def preprocess_cli(raw: Path, out: Path, *flags: str) -> int:
    return main(["preprocess", "--dataset", str(raw), "--out", str(out), *flags])


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and "Traceback" not in "\n".join(lines)
    return lines[-1]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file of `folder` with its inode and modification time: unchanged iff not rewritten."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def contents(folder: Path) -> dict[str, object]:
    """What a folder's files hold (npz members loaded: a zip records its write time)."""
    out: dict[str, object] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix == ".npz":
            with np.load(p) as archive:
                out[p.name] = {k: archive[k].tolist() for k in archive.files}
        elif p.suffix == ".json":
            out[p.name] = json.loads(p.read_text())
        else:
            out[p.name] = p.read_bytes()
    return out


def test_two_spacings_into_one_folder_do_not_mix(raw, tmp_path, capsys):
    out = tmp_path / "pre"
    assert preprocess_cli(raw, out, "--spacing", "2", "2", "2") == 0
    coarse = load_plans(out)
    before = snapshot(out)

    # The bug: a second run at 0.5 mm for some cases reused the 2 mm plans.json and mixed two grids.
    ids = ["heart_001", "heart_004"]
    assert preprocess_cli(raw, out, "--spacing", "0.5", "0.5", "0.5", "--case", ids[0], "--case", ids[1]) == 1
    line = error_line(capsys)
    assert "plans.json: made with other settings (preprocess.spacing differ)" in line and "rerun without --case" in line
    assert snapshot(out) == before

    assert preprocess_cli(raw, out, "--spacing", "0.5", "0.5", "0.5") == 0
    fine = load_plans(out)
    assert fine.target_spacing == (0.5, 0.5, 0.5) and fine.fingerprint != coarse.fingerprint
    for case_id in fine.case_ids:
        case = load_preprocessed(out, case_id)
        assert case.properties["target_spacing"] == [0.5] * 3
        assert case.properties["plans_fingerprint"] == fine.fingerprint
        assert case.image.shape[1:] == tuple(case.properties["resampled_shape"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pre.lock", "pre"]

    # Same settings again: nothing is redone.
    kept = snapshot(out)
    assert preprocess_cli(raw, out, "--spacing", "0.5", "0.5", "0.5") == 0
    assert snapshot(out) == kept


def test_a_case_made_by_other_plans_is_refused_on_load(raw, tmp_path):
    dataset = parse_dataset(raw)
    preprocess_dataset(dataset, *settings(2.0), tmp_path / "coarse", progress=False)
    preprocess_dataset(dataset, *settings(1.5), tmp_path / "fine", progress=False)
    for name in ("heart_002.npy", "heart_002_seg.npy", "heart_002_fg.npz", "heart_002.json"):
        shutil.copy(tmp_path / "coarse" / name, tmp_path / "fine" / name)
    fine = load_plans(tmp_path / "fine")

    with pytest.raises(DatasetError) as info:
        load_preprocessed(tmp_path / "fine", "heart_002")
    message = str(info.value)
    assert message.startswith(str(tmp_path / "fine" / "heart_002.json"))
    assert f"not by this folder's plans {fine.fingerprint}" in message and "rerun `scnas preprocess`" in message
    assert "\n" not in message
    with pytest.raises(DatasetError, match="heart_002.json: made by plans"):
        PatchSampler.from_dir(tmp_path / "fine", ["heart_001", "heart_002"], (16, 16, 16), 0.33)
    assert len(PatchSampler.from_dir(tmp_path / "fine", ["heart_001", "heart_003"], (16, 16, 16), 0.33).cases) == 2

    props = json.loads((tmp_path / "fine" / "heart_003.json").read_text())
    del props["plans_fingerprint"]
    (tmp_path / "fine" / "heart_003.json").write_text(json.dumps(props))
    with pytest.raises(DatasetError, match="heart_003.json: made by plans that recorded no fingerprint"):
        load_preprocessed(tmp_path / "fine", "heart_003")


def test_plans_of_another_version_or_malformed_are_refused(raw, tmp_path):
    out = tmp_path / "pre"
    plans = preprocess_dataset(parse_dataset(raw), *settings(2.0), out, progress=False).plans
    assert load_plans(out) == plans == Plans.from_dict(plans.to_dict(), "checkpoint.pt")
    path = out / PLANS_FILE

    def refused(data, match):
        path.write_text(json.dumps(data))
        with pytest.raises(DatasetError, match=match) as info:
            load_plans(out)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)

    good = plans.to_dict()
    refused({**good, "version": 1}, "plans version 1, this SCNAS reads version 2")
    refused({**good, "version": 99}, "plans version 99")
    refused({k: v for k, v in good.items() if k != "version"}, "plans version None")
    refused({k: v for k, v in good.items() if k != "patch_size"}, "plans key 'patch_size' is missing")
    refused({**good, "patch_size": [16, 16]}, "plans key 'patch_size' must be a list of 3 integers")
    refused({**good, "num_channels": "1"}, "plans key 'num_channels' must be an integer")
    refused({**good, "labels": {"x": "background"}}, "plans key 'labels' must map label values")
    refused({**good, "provenance": None}, "records no settings fingerprint")
    refused([good], "plans must be a JSON object")
    path.write_text("{")
    with pytest.raises(DatasetError, match="plans.json: not readable JSON"):
        load_plans(out)
    path.unlink()
    with pytest.raises(DatasetError, match=r"plans.json: not found \(.* is not a `scnas preprocess` output"):
        load_plans(out)
    with pytest.raises(DatasetError, match="plans.json: not found"):
        load_preprocessed(out, "heart_000")


def test_num_classes_refuses_labels_that_are_not_0_to_k(raw, tmp_path):
    plans = preprocess_dataset(parse_dataset(raw), *settings(2.0), tmp_path / "pre", progress=False).plans
    assert plans.num_classes == len(plans.labels) == 2
    gappy = Plans.from_dict({**plans.to_dict(), "labels": {"0": "background", "2": "heart"}}, "x")
    with pytest.raises(DatasetError, match=r"label values \[0, 2\] are not 0..1"):
        _ = gappy.num_classes


def test_a_failed_rerun_leaves_the_previous_outputs_intact(raw, tmp_path):
    task = tmp_path / "task"
    shutil.copytree(raw, task)
    out = tmp_path / "pre"
    preprocess_dataset(parse_dataset(task), *settings(2.0), out, progress=False)
    before, held = snapshot(out), contents(out)

    good_label = (task / "labelsTr" / "heart_003.nii.gz").read_bytes()
    other = make_synthetic_task("heart", tmp_path / "other", cases=1, seed=5, size=30)
    shutil.copy(other / "labelsTr" / "heart_000.nii.gz", task / "labelsTr" / "heart_003.nii.gz")
    with pytest.raises(DatasetError, match="heart_003.nii.gz: shape .* differs from the image's"):
        preprocess_dataset(parse_dataset(task), *settings(1.5), out, progress=False)
    assert snapshot(out) == before and contents(out) == held
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".pre.partial-")]
    assert len(staging) == 1 and sorted(p.name for p in staging[0].glob("heart_*.json")) == [
        f"heart_00{i}.json" for i in range(3)
    ]

    (task / "labelsTr" / "heart_003.nii.gz").write_bytes(good_label)
    run = preprocess_dataset(parse_dataset(task), *settings(1.5), out, progress=False)
    assert run.kept == ("heart_000", "heart_001", "heart_002") and len(run.written) == 3
    assert load_plans(out).target_spacing == (1.5, 1.5, 1.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pre.lock", "other", "pre", "task"]


def test_a_folder_with_other_files_is_never_replaced(raw, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="mine: holds 'notes.txt', which no `scnas preprocess` writes"):
        preprocess_dataset(parse_dataset(raw), *settings(2.0), out, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_an_interrupted_swap_is_recovered(raw, tmp_path):
    dataset = parse_dataset(raw)
    out = tmp_path / "pre"
    preprocess_dataset(dataset, *settings(2.0), out, progress=False)
    held = contents(out)
    os.replace(out, tmp_path / ".pre.old")  # killed after setting the old folder aside
    assert preprocess_dataset(dataset, *settings(2.0), out, progress=False).written == ()
    assert contents(out) == held and not (tmp_path / ".pre.old").exists()

    shutil.copytree(out, tmp_path / ".pre.old")  # killed after the new folder was swapped in
    preprocess_dataset(dataset, *settings(2.0), out, progress=False)
    assert contents(out) == held and not (tmp_path / ".pre.old").exists()


def test_case_adds_cases_only_to_a_folder_of_the_same_plans(raw, tmp_path):
    dataset = parse_dataset(raw)
    out = tmp_path / "pre"
    first = preprocess_dataset(dataset, *settings(2.0), out, case_ids=["heart_000"], progress=False)
    assert first.plans.case_ids == dataset.case_ids  # planned from the whole dataset
    assert sorted(p.name for p in out.glob("*.json")) == ["heart_000.json", PLANS_FILE]
    before = snapshot(out)
    more = preprocess_dataset(dataset, *settings(2.0), out, case_ids=["heart_000", "heart_005"], progress=False)
    assert more.written == ("heart_005",) and more.kept == ("heart_000",) and more.plans == first.plans
    assert all(snapshot(out)[name] == before[name] for name in before)
    with pytest.raises(ScnasError, match="preprocess.foreground_samples differ"):
        preprocess_dataset(
            dataset,
            task_settings({"preprocess": {"spacing": [2.0] * 3, "foreground_samples": 5}}).preprocess,
            settings(2.0)[1],
            out,
            case_ids=["heart_001"],
            progress=False,
        )


def test_threads_do_not_enter_the_fingerprint(raw, tmp_path):
    dataset = parse_dataset(raw)
    one = preprocess_dataset(dataset, *settings(2.0), tmp_path / "a", threads=1, progress=False).plans
    stage = task_settings({"preprocess": {"spacing": [2.0] * 3, "threads": 2}, "plan": {"patch_size": [16] * 3}})
    again = preprocess_dataset(dataset, stage.preprocess, stage.plan, tmp_path / "a", threads=2, progress=False)
    assert again.written == ()
    assert one.fingerprint == load_plans(tmp_path / "a").fingerprint
    assert "threads" not in one.provenance.settings["preprocess"]
    assert one.provenance.settings["dataset"]["case_ids"] == list(dataset.case_ids)


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_bad_spacing_flags_are_refused_in_one_line(raw, tmp_path, capsys, value):
    out = tmp_path / "pre"
    assert preprocess_cli(raw, out, "--spacing", "1", value, "1") == 1
    line = error_line(capsys)
    assert line.startswith("scnas preprocess: error: config key preprocess.spacing")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_second_run_on_the_same_folder_stops_in_one_line(raw, tmp_path):
    out = tmp_path / "pre"
    with sibling_lock(out, "scnas preprocess"):
        done = subprocess.run(
            [sys.executable, "-m", "scnas", "preprocess", "--dataset", str(raw), "--out", str(out)],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert lines[-1] == (
        f"scnas preprocess: error: {out}: another scnas preprocess is writing this folder "
        f"(pid {os.getpid()} on {socket.gethostname()}); wait for it to finish or stop it"
    )
    assert not out.exists()


def test_a_killed_run_resumes_to_the_outputs_of_an_uninterrupted_one(tmp_path):
    raw = make_synthetic_task("heart", tmp_path / "raw", cases=12, seed=1, size=32)
    reference = tmp_path / "reference"
    preprocess_dataset(parse_dataset(raw), *settings(0.35), reference, progress=False)

    work = tmp_path / "work"
    work.mkdir()
    out = work / "pre"
    command = [sys.executable, "-m", "scnas", "preprocess", "--dataset", str(raw), "--out", str(out)]
    command += ["--spacing", "0.35", "0.35", "0.35", "--threads", "1"]
    command += ["--config", '{"plan": {"patch_size": [16, 16, 16]}}']
    proc = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    staging = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        found = [p for p in work.glob(".pre.partial-*") if any(p.glob("heart_*.json"))]
        if found:
            proc.send_signal(signal.SIGKILL)
            staging = found[0]
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert staging is not None and not out.exists()
    done = sorted(p.stem for p in staging.glob("heart_*.json"))
    assert 1 <= len(done) < 12
    inodes = {c: (staging / f"{c}.npy").stat().st_ino for c in done}
    (staging / ".heart_011.npy.abc123.tmp.npy").write_bytes(b"half a file")
    (staging / ".heart_010_fg.npz.def456.tmp.npz").write_bytes(b"half a file")

    rerun = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"kept {len(done)} already done" in rerun.stderr
    assert contents(out) == contents(reference)
    assert {c: (out / f"{c}.npy").stat().st_ino for c in done} == inodes  # finished cases were kept
    assert sorted(p.name for p in work.iterdir()) == [".pre.lock", "pre"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
