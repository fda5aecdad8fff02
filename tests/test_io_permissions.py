"""Outputs a group can share: files and folders get the permissions the umask gives anything new."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from scnas.io import atomic_path, ensure_output_dir, save_npy, save_torch, write_json, write_text


@pytest.fixture
def umask():
    """Set the process umask for one test; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


WRITERS = {
    "write_json": lambda p: write_json(p.with_suffix(".json"), {"a": 1}),
    "write_text": lambda p: write_text(p.with_suffix(".md"), "| a |\n"),
    "save_npy": lambda p: save_npy(p.with_suffix(".npy"), np.arange(6).reshape(2, 3)),
    "save_torch": lambda p: save_torch(p.with_suffix(".pt"), {"epoch": 3}),
}


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_written_files_follow_the_umask(tmp_path, umask, writer, mask, expected):
    umask(mask)
    WRITERS[writer](tmp_path / "out")
    (written,) = [p for p in tmp_path.iterdir()]
    assert not written.name.startswith("."), "the temporary file was left behind"
    assert mode(written) == expected, oct(mode(written))


def test_a_replaced_file_takes_the_umask_of_the_run_that_rewrote_it(tmp_path, umask):
    target = tmp_path / "summary.json"
    umask(0o077)
    write_json(target, {"run": 1})
    assert mode(target) == 0o600
    umask(0o022)
    write_json(target, {"run": 2})
    assert mode(target) == 0o644 and '"run": 2' in target.read_text()


def test_writers_that_reopen_the_temporary_keep_its_mode(tmp_path, umask):
    """nibabel, numpy.savez and matplotlib open the yielded path themselves (truncate, not recreate)."""
    umask(0o027)
    target = tmp_path / "fg.npz"
    with atomic_path(target, suffix=".npz") as tmp:
        np.savez(tmp, a=np.zeros(2))
    assert mode(target) == 0o640


@pytest.mark.parametrize("mask, expected", [(0o022, 0o755), (0o027, 0o750)])
def test_folders_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    made = ensure_output_dir(tmp_path / "results" / "Task" / "uresnet", "results folder")
    assert [mode(p) for p in (tmp_path / "results", tmp_path / "results" / "Task", made)] == [expected] * 3
    write_json(tmp_path / "fresh" / "nested" / "x.json", {})
    assert mode(tmp_path / "fresh") == mode(tmp_path / "fresh" / "nested") == expected
    assert mode(tmp_path / "fresh" / "nested" / "x.json") == expected & 0o666
