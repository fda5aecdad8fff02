"""One writer per output folder, and no crash leftovers: a stage locks the folder it writes, then removes
the temporary files that a killed run of its own left there.

The lock is `flock` on FOLDER/.scnas.lock: the kernel releases it when the holder dies (SIGKILL, node
loss), so a crashed run never blocks the next one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterable, Iterator

from scnas.errors import ScnasError

LOCK_NAME = ".scnas.lock"
TEMP_MARK = ".tmp"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing); another holder stops this run in one line."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _flock(folder / LOCK_NAME, folder, what):
        yield folder


@contextlib.contextmanager
def sibling_lock(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Lock `path` through PARENT/.NAME.lock, for a folder that is replaced as a whole (its own lock
    file would go with it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _flock(path.parent / f".{path.name}.lock", path, what):
        yield path


@contextlib.contextmanager
def _flock(lock_path: Path, target: Path, what: str) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ScnasError(
                f"{target}: another {what} is writing this folder ({holder}); wait for it to finish or stop it"
            ) from None
        with contextlib.suppress(OSError):  # the holder line only informs; a full disk may refuse it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def is_temporary(name: str, outputs: Iterable[str] | None = None) -> bool:
    """Whether `name` is a temporary file of scnas.io's atomic writes (of one of `outputs`, when given)."""
    if not name.startswith(".") or TEMP_MARK not in name:
        return False
    return outputs is None or any(name.startswith(f".{out}.") for out in outputs)


def remove_stale_temporaries(folder: str | os.PathLike, outputs: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files a killed run left in `folder` (of `outputs` only, when given).

    Call it while holding the folder's lock: nobody else is writing then.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = list(outputs) if outputs is not None else None
    removed = []
    for entry in folder.iterdir():
        if entry.is_file() and is_temporary(entry.name, names):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
