"""Bad inputs and hostile environments: every one ends in exactly one line `scnas CMD: error: ...` naming the
path or key, exit 1, no traceback.

PROBES is the table of probes. Most run in-process through `scnas.cli.main`; the disk-full and read-only
ones write into a small tmpfs (mounting needs root: skipped otherwise), the permission ones run the CLI
in a subprocess that cannot override file modes (root loses CAP_DAC_OVERRIDE; any other user is already
bound by them).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import cli_env

from scnas.cli import main
from scnas.data.nifti import load_label, save_nifti
from scnas.errors import ScnasError, describe_os_error
from scnas.evaluation.metrics import evaluate_cases
from scnas.io import ensure_output_dir, save_torch, write_json

CASE = "heart_000"
PAGE = 4096


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class Env:
    """Where a probe builds its inputs: `tmp` (plain scratch), `task` (tiny_task), `mnt` (the tmpfs, writable
    while the probe is set up; None for probes that need none)."""

    tmp: Path
    task: dict[str, Path]
    mnt: Path | None = None


def predictions(env: Env, name: str = "pred", label_value: int | None = None) -> Path:
    """A predictions folder holding CASE's reference label as its prediction (optionally with one voxel
    set to `label_value`) and the predictions.json `scnas predict` writes."""
    folder = env.tmp / name
    label, affine = load_label(env.task["raw"] / "labelsTr" / f"{CASE}.nii.gz")
    if label_value is not None:
        label[0, 0, 0] = label_value
    save_nifti(folder / f"{CASE}.nii.gz", label, affine)
    write_json(folder / "predictions.json", {"checkpoint": "x.pt", "cases": {CASE: f"{CASE}.nii.gz"}})
    return folder


def finished_fold(results: Path, task: dict[str, Path], fold: int = 0) -> Path:
    """RESULTS/Tiny/uresnet/fold_K with the metrics.csv and summary.json of a real evaluation."""
    out = results / "Tiny" / "uresnet" / f"fold_{fold}"
    label = task["raw"] / "labelsTr" / f"{CASE}.nii.gz"
    evaluate_cases([(CASE, label, label)], {0: "background", 1: "left atrium"}, out)
    return out / "metrics.csv"


def dataset_with_entry(env: Env, image: str, make: Callable[[Path], None] | None = None) -> Path:
    """A copy of the tiny task's dataset.json whose second case has `image` as its image path."""
    root = env.tmp / "task"
    shutil.copytree(env.task["raw"], root)
    data = json.loads((root / "dataset.json").read_text())
    data["training"][1]["image"] = image
    (root / "dataset.json").write_text(json.dumps(data))
    if make:
        make(root)
    return root


def symlink_loop(root: Path) -> None:
    os.symlink("loop.nii.gz", root / "imagesTr" / "loop.nii.gz")


def garbage_checkpoint(env: Env) -> Path:
    path = env.tmp / "model.pt"
    path.write_bytes(b"not a checkpoint")
    return path


class Pickled:
    """An object whose unpickling runs a shell command (creating `marker`): a safe load must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def model_checkpoint(env: Env, **state) -> Path:
    path = env.tmp / "model.pt"
    torch.save({"format": "scnas-model", "model": {}, "state_dict": {}, "plans": {}, **state}, path)
    return path


def a_file(env: Env, name: str = "taken") -> Path:
    path = env.tmp / name
    path.write_text("a file\n")
    return path


def image(env: Env) -> str:
    return str(env.task["raw"] / "imagesTr" / f"{CASE}.nii.gz")


def evaluate_args(pred: Path, env: Env, out: Path) -> list[str]:
    return ["--predictions", str(pred), "--dataset", str(env.task["raw"]), "--cases", CASE, "--out", str(out)]


# ---------------------------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probe:
    """A bad input: `setup(env)` builds it and returns (argv after the command, fragments the error line
    must hold). `where`: plain, full (disk full), readonly, or denied (permission)."""

    name: str
    command: str
    setup: Callable[[Env], tuple[list[str], list[str]]]
    where: str = "plain"


def _synth(out: Path) -> list[str]:
    return ["--kind", "heart", "--cases", "1", "--size", "16", "--out", str(out)]


def _pred_file(env: Env):
    out = a_file(env)
    return ["--model", str(garbage_checkpoint(env)), "--images", image(env), "--out", str(out)], [str(out), "a file"]


def _bad_manifest(content: str, fragment: str):
    def setup(env: Env):
        pred = env.tmp / "pred"
        pred.mkdir()
        (pred / "predictions.json").write_text(content)
        args = ["--predictions", str(pred), "--dataset", str(env.task["raw"]), "--out", str(env.tmp / "out")]
        return args, [str(pred / "predictions.json"), fragment]

    return setup


def _dataset_probe(command: str, image_path: str, fragment: str, make=None):
    def setup(env: Env):
        root = dataset_with_entry(env, image_path, make)
        args = ["--dataset", str(root)]
        if command == "splits":
            args += ["--out", str(env.tmp / "splits.json")]
        return args, [str(root / "dataset.json"), "training[1].image", fragment]

    return setup


def _undeclared(env: Env):
    pred = predictions(env, label_value=7)
    return evaluate_args(pred, env, env.tmp / "out"), [str(pred / f"{CASE}.nii.gz"), "[7]", "declared: [0, 1]"]


def _checkpoint_probe(fragments: list[str], **state):
    def setup(env: Env):
        ckpt = model_checkpoint(env, **state)
        return ["--model", str(ckpt), "--images", image(env), "--out", str(env.tmp / "seg")], [str(ckpt), *fragments]

    return setup


def _garbage(env: Env):
    ckpt = garbage_checkpoint(env)
    args = ["--model", str(ckpt), "--images", image(env), "--out", str(env.tmp / "seg")]
    return args, [str(ckpt), "not a readable checkpoint"]


def _pickled(env: Env):
    ckpt = env.tmp / "evil.pt"
    torch.save({"format": "scnas-model", "payload": Pickled(env.tmp / "pwned")}, ckpt)
    args = ["--model", str(ckpt), "--images", image(env), "--out", str(env.tmp / "seg")]
    return args, [str(ckpt), "refused", "GLOBAL posix.system", "only checkpoints written by SCNAS"]


def _unfinished_metrics(env: Env):
    metrics = finished_fold(env.tmp / "results", env.task)
    metrics.with_name("summary.json").unlink()
    return ["--metrics", str(metrics), "--out", str(env.tmp / "cv")], [str(metrics), "incomplete", "summary.json"]


def _report_folder(env: Env):
    report = env.tmp / "report"
    report.mkdir()
    return ["--dataset", str(env.task["raw"]), "--report", str(report)], [str(report), "folder"]


def _evaluate_out_file(env: Env):
    out = a_file(env, "out")
    return evaluate_args(predictions(env), env, out), [str(out), "a file"]


def _out_of(place: str, cause: str):
    """Probes writing into `place` (the tmpfs, or a folder the CLI may not write) that must fail with `cause`."""

    def root(env: Env) -> Path:
        return env.mnt if place != "denied" else env.tmp / "locked"

    def synth(env: Env):
        out = root(env) / "task"
        return _synth(out), [str(out), cause]

    def splits(env: Env):
        out = root(env) / "splits_final.json"
        return ["--dataset", str(env.task["raw"]), "--out", str(out)], [str(root(env)), cause]

    def check(env: Env):
        report = root(env) / "check.json"
        return ["--dataset", str(env.task["raw"]), "--report", str(report)], [str(root(env)), cause]

    def evaluate(env: Env):
        out = root(env) / "fold_0"
        return evaluate_args(predictions(env), env, out), [str(out), cause]

    def table(env: Env):
        if place == "readonly":
            finished_fold(env.mnt, env.task)
            return ["--results", str(env.mnt), "--print"], [str(env.mnt), cause]
        prefix = root(env) / "cv_table"
        metrics = finished_fold(env.tmp / "results", env.task)
        return ["--metrics", str(metrics), "--out", str(prefix)], [str(root(env)), cause]

    def preprocess(env: Env):
        out = root(env) / "preprocessed"
        return ["--dataset", str(env.task["raw"]), "--out", str(out)], [str(root(env)), cause]

    def predict(env: Env):
        out = root(env) / "predictions"
        return ["--model", str(garbage_checkpoint(env)), "--images", image(env), "--out", str(out)], [str(out), cause]

    setups = {"synth": synth, "splits": splits, "check": check, "evaluate": evaluate, "table": table}
    if place != "denied":
        setups |= {"preprocess": preprocess, "predict": predict}
    return [Probe(f"{place}-{command}", command, setup, place) for command, setup in setups.items()]


LONG_NAME = "./imagesTr/" + "x" * 300 + ".nii.gz"
PROBES: list[Probe] = [
    Probe("predict-out-is-a-file", "predict", _pred_file),
    *(
        Probe(f"{command}-{what}", command, _dataset_probe(command, path, fragment, make))
        for command in ("check", "splits")
        for what, path, fragment, make in (
            ("symlink-loop", "./imagesTr/loop.nii.gz", "symlink loop", symlink_loop),
            ("nul-byte", "./imagesTr/heart\x00.nii.gz", "NUL byte", None),
            ("300-char-name", LONG_NAME, "file name too long", None),
        )
    ),
    Probe("predictions-json-not-json", "evaluate", _bad_manifest("{not json", "not valid JSON")),
    Probe("predictions-json-no-cases", "evaluate", _bad_manifest('{"checkpoint": "x.pt"}', "'cases'")),
    Probe("predictions-json-a-list", "evaluate", _bad_manifest("[1, 2]", "'cases'")),
    Probe("evaluate-undeclared-label", "evaluate", _undeclared),
    Probe("evaluate-out-is-a-file", "evaluate", _evaluate_out_file),
    Probe("checkpoint-pickled-object", "predict", _pickled),
    Probe("checkpoint-without-version", "predict", _checkpoint_probe(["no version"])),
    Probe("checkpoint-newer-version", "predict", _checkpoint_probe(["version 7", "newer"], version=7)),
    Probe("checkpoint-garbage", "predict", _garbage),
    Probe("table-unfinished-metrics", "table", _unfinished_metrics),
    Probe("check-report-is-a-folder", "check", _report_folder),
    *_out_of("full", "no space left on device (disk full)"),
    *_out_of("readonly", "read-only file system"),
    *_out_of("denied", "permission denied"),
]


# ---------------------------------------------------------------------------------------------- running


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() points the root logger at this test's captured stderr; give the next test its own."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class Tmpfs:
    """A small tmpfs, mounted for one test: fill() makes it full, readonly() remounts it read-only."""

    def __init__(self, point: Path, size: int):
        self.point = point
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True, text=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'})")

    def fill(self, leave_pages: int = 0) -> None:
        filler = self.point / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * PAGE)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        os.truncate(filler, max(0, filler.stat().st_size - leave_pages * PAGE))

    def readonly(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.point)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.point)], check=True)

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.point.rglob("*") if p.name != "filler" and ".tmp" in p.name)


@pytest.fixture
def tmpfs(tmp_path):
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    fs = Tmpfs(tmp_path / "mnt", 1 << 20)
    yield fs
    fs.unmount()


def _drop_file_mode_override() -> None:
    """preexec_fn: root loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH for the command it runs next."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _run_denied(argv: list[str], locked: Path) -> tuple[int, str]:
    preexec = _drop_file_mode_override if os.geteuid() == 0 else None
    can_write = subprocess.run(
        [sys.executable, "-c", f"open({str(locked / 'x')!r}, 'w')"], preexec_fn=preexec, capture_output=True
    )
    if can_write.returncode == 0:
        pytest.skip("this process cannot give up its right to write a read-only folder")
    result = subprocess.run(
        [sys.executable, "-m", "scnas", *argv], env=cli_env(), capture_output=True, text=True, preexec_fn=preexec
    )
    return result.returncode, result.stderr


def assert_one_line_error(code: int, stderr: str, command: str, fragments: list[str]) -> str:
    assert "Traceback" not in stderr, stderr
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("scnas ")]
    assert len(errors) == 1 and errors[0] == lines[-1], stderr
    assert errors[0].startswith(f"scnas {command}: error: "), errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_probe(probe, tmp_path, tiny_task, request, capsys, monkeypatch):
    monkeypatch.setenv("SCNAS_PROGRESS", "0")
    monkeypatch.delenv("SCNAS_DEBUG", raising=False)
    fs = request.getfixturevalue("tmpfs") if probe.where in ("full", "readonly") else None
    env = Env(tmp_path / "in", tiny_task, fs.point if fs else None)
    env.tmp.mkdir()
    argv, fragments = probe.setup(env)
    if probe.where == "denied":
        locked = env.tmp / "locked"
        locked.mkdir(mode=0o555)
        code, stderr = _run_denied([probe.command, *argv], locked)
        assert not any(locked.iterdir())
    else:
        if probe.where == "full":
            fs.fill()
        elif probe.where == "readonly":
            fs.readonly()
        capsys.readouterr()
        code = main([probe.command, *argv])
        stderr = capsys.readouterr().err
    assert_one_line_error(code, stderr, probe.command, fragments)
    if fs:
        assert fs.leftovers() == []


# ---------------------------------------------------------------------------------------------- writers


def test_save_torch_on_a_full_disk_is_enospc_naming_the_target(tmpfs):
    tmpfs.fill()
    target = tmpfs.point / "checkpoint_final.pt"
    with pytest.raises(OSError) as info:
        save_torch(target, {"w": torch.zeros(4096)})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert describe_os_error(info.value) == f"{target}: no space left on device (disk full)"
    assert not target.exists() and tmpfs.leftovers() == []


def test_save_torch_round_trips(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    save_torch(tmp_path / "a.pt", state)
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], state["w"])


def test_write_on_a_read_only_disk_names_the_target(tmpfs):
    tmpfs.readonly()
    target = tmpfs.point / "sub" / "splits_final.json"
    with pytest.raises(OSError) as info:
        write_json(target, {"a": 1})
    assert info.value.errno == errno.EROFS and info.value.filename == str(target)


def test_evaluation_outputs_appear_together_or_not_at_all(tmpfs, tiny_task):
    """Room for the lock and one output file only: neither metrics.csv nor summary.json may appear."""
    label = tiny_task["raw"] / "labelsTr" / f"{CASE}.nii.gz"
    out = tmpfs.point / "fold_0"
    out.mkdir()
    tmpfs.fill(leave_pages=2)
    with pytest.raises(OSError) as info:
        evaluate_cases([(CASE, label, label)], {0: "background", 1: "left atrium"}, out)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename in (str(out / "metrics.csv"), str(out / "summary.json"))
    assert sorted(p.name for p in out.iterdir()) == [".scnas.lock"]


def test_ensure_output_dir(tmp_path):
    made = ensure_output_dir(tmp_path / "a" / "b", "output folder")
    assert made.is_dir() and list(made.iterdir()) == []
    ensure_output_dir(tmp_path / "c" / "d", "output folder", create=False)
    assert not (tmp_path / "c").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for path, create in ((a_file, True), (a_file / "sub", False), (a_file / "sub", True)):
        with pytest.raises(ScnasError) as info:
            ensure_output_dir(path, "output folder", create=create)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    loop = tmp_path / "loop"
    os.symlink("loop", loop)
    with pytest.raises(ScnasError, match="symbolic link"):
        ensure_output_dir(loop, "output folder")


def test_ensure_output_dir_on_read_only_and_full_disks(tmpfs):
    tmpfs.fill()
    with pytest.raises(ScnasError, match="disk full"):
        ensure_output_dir(tmpfs.point / "x", "output folder")
    (tmpfs.point / "filler").unlink()
    tmpfs.readonly()
    with pytest.raises(ScnasError, match="read-only file system"):
        ensure_output_dir(tmpfs.point / "x", "output folder", create=False)


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "no space left on device (disk full)"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EIO, "input/output error"),
    ],
)
def test_describe_os_error_in_words(code, words):
    e = OSError(code, os.strerror(code), "/data/out.json")
    assert describe_os_error(e) == f"/data/out.json: {words}"
    assert describe_os_error(e, Path("/elsewhere")) == f"/elsewhere: {words}"
    assert describe_os_error(OSError(code, os.strerror(code))) == words


def test_predict_out_is_checked_before_the_model_is_loaded(tmp_path, tiny_task, capsys, monkeypatch):
    import scnas.train.checkpoint as checkpoint

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(checkpoint, "load_model_checkpoint", never)
    env = Env(tmp_path, tiny_task)
    argv, fragments = _pred_file(env)
    assert_one_line_error(main(["predict", *argv]), capsys.readouterr().err, "predict", fragments)


def test_a_refused_checkpoint_leaves_no_output_folder(tmp_path, tiny_task, capsys):
    argv, _ = _pickled(Env(tmp_path, tiny_task))
    assert main(["predict", *argv]) == 1
    assert not (tmp_path / "seg").exists()
    assert not (tmp_path / "pwned").exists()
    capsys.readouterr()


def test_undeclared_prediction_value_is_refused_before_writing(tmp_path, tiny_task, capsys):
    env = Env(tmp_path, tiny_task)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("stale\n")
    (out / "summary.json").write_text("{}\n")
    argv, _ = _undeclared(env)
    argv[argv.index("--out") + 1] = str(out)
    assert main(["evaluate", *argv]) == 1
    assert sorted(p.name for p in out.iterdir()) == [".scnas.lock"]
    capsys.readouterr()


def test_label_values_of_a_prediction_that_are_declared_pass(tmp_path, tiny_task):
    label = tiny_task["raw"] / "labelsTr" / f"{CASE}.nii.gz"
    data, affine = load_label(label)
    assert set(np.unique(data)) == {0, 1}
    table = evaluate_cases([(CASE, label, label)], {0: "background", 1: "left atrium"}, tmp_path / "out")
    assert table["dice"].tolist() == [1.0]
