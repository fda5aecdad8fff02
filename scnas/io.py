"""Atomic file writes: write to a temporary name in the same folder, then rename over the target.

A crash (or SIGKILL) mid-write therefore never leaves a file that looks complete. A failed write raises
an OSError that names the target (never the temporary name), so the CLI can report it in one line.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from scnas.errors import ScnasError, os_error_cause

WRITE_TEST_PREFIX = ".scnas-write-test."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, else removed.

    `suffix` keeps the extension that some writers (nibabel, numpy) use to pick a format.
    """
    target = Path(path)
    if suffix is None:
        suffix = "".join(target.suffixes)
    try:
        if not target.parent.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target)) from None
    except OSError as e:
        raise _naming(e, target) from e
    try:
        tmp_path = _create_temporary(target, suffix)
    except OSError as e:
        raise _naming(e, target) from e
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, OSError) and (e.filename is None or _same_path(e.filename, tmp_path, target)):
            raise _naming(e, target) from e
        raise


def _create_temporary(target: Path, suffix: str) -> Path:
    """A new empty file next to `target`, created with mode 0666 less the umask (and the folder's default
    ACL), as any new file: mkstemp's private 0600 would survive the rename and hide results from a group."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target))


def _naming(e: OSError, target: Path) -> OSError:
    """The same error (same errno, so the same OSError subclass) naming `target`."""
    return OSError(e.errno, e.strerror or str(e), str(target))


def _same_path(name: Any, *paths: str | os.PathLike) -> bool:
    if not isinstance(name, (str, bytes, os.PathLike)):
        return False
    return os.fsdecode(name) in {os.fsdecode(p) for p in paths}


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_together(contents: Mapping[str | os.PathLike, bytes]) -> None:
    """Write several files that belong together: all to temporaries first, then renamed in the given
    order, so a failed write leaves none of them (put the file that marks completion last)."""
    with contextlib.ExitStack() as stack:
        for path, data in reversed(list(contents.items())):
            tmp = stack.enter_context(atomic_path(path))
            with open(tmp, "wb") as f:
                f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def json_text(obj: Any, indent: int | None = 2) -> str:
    """JSON as scnas writes it (numpy scalars and arrays, paths allowed), newline-terminated."""
    return json.dumps(obj, indent=indent, default=_json_default) + "\n"


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json_text(obj, indent))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save through a buffer: a full disk is then an OSError (ENOSPC), not torch's "unexpected pos"."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def ensure_output_dir(path: str | os.PathLike, what: str, create: bool = True) -> Path:
    """Make sure `path` can be the `what` folder before any compute, else ScnasError in one line.

    Refuses a non-folder at `path` and a folder that cannot be written, probed by writing and removing a
    small file (os.access ignores file modes for root and knows nothing of a full disk). With
    create=False nothing is left behind: the nearest existing folder on the way to `path` is probed.
    """
    folder = Path(path)
    if folder.is_symlink() and not folder.exists():
        raise ScnasError(f"{folder}: cannot be the {what}: it is a symbolic link to nothing (broken or a loop)")
    if folder.exists() and not folder.is_dir():
        raise ScnasError(f"{folder}: cannot be the {what}: it is a file, not a folder")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            probe_dir = folder
        else:
            probe_dir = next(p for p in (folder, *folder.parents) if p.exists())
            if not probe_dir.is_dir():
                raise ScnasError(f"{folder}: cannot be the {what}: {probe_dir} is a file, not a folder")
        fd, probe = tempfile.mkstemp(prefix=WRITE_TEST_PREFIX, suffix=".tmp", dir=probe_dir)
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise ScnasError(f"{folder}: cannot write the {what}: {os_error_cause(e)}") from None
    return folder


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
