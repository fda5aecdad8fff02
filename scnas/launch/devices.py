"""Distinct GPUs for local jobs that run at once: a job claims k of this machine's GPUs while it runs.

submitit's local executor numbers every job's GPUs from 0, so two 1-GPU jobs started by two Snakemake
rules would share GPU 0. A claim is an flock on one file per GPU in a folder of this user's: the kernel
releases it when the holder exits or dies, so a crashed job never keeps a GPU. A job that finds fewer
than k free waits, and says every minute which job holds which GPU.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from scnas.errors import ConfigError, ScnasError

# A fixed folder, not $TMPDIR or $XDG_RUNTIME_DIR: every process of the user on this machine must find
# the same lock files, also one started from cron or nohup, or after the user's last session ended.
LOCK_PARENT = Path("/tmp")
POLL_S = 1.0
WAIT_REPORT_S = 60.0
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def device_count() -> int:
    """GPUs on this machine, from `nvidia-smi -L` (no CUDA initialised), else from torch."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
            if listed.returncode == 0:
                return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))
    import torch

    return torch.cuda.device_count()


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries: that variable's list when it is set
    (up to its first invalid entry, as CUDA reads it), otherwise 0 .. device_count() - 1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(k) for k in range(device_count())]
    gpus = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry.startswith("-"):
            break
        gpus.append(entry)
    return gpus


def lock_folder() -> Path:
    """LOCK_PARENT/scnas-gpus-UID, created private; one that another user could write is refused."""
    folder = LOCK_PARENT / f"scnas-gpus-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise ScnasError(
            f"{folder}: the GPU lock folder must be a folder of yours that nobody else can write; remove it"
        )
    return folder


def holders(gpus: list[str], folder: Path | None = None) -> dict[str, str | None]:
    """Who holds each of `gpus` ("job NAME (pid P since T)"), None for a free one."""
    folder = folder or lock_folder()
    found: dict[str, str | None] = {}
    for gpu in gpus:
        fd = _open(folder, gpu)
        try:
            found[gpu] = None if _lock(fd) else _holder(fd)
        finally:
            os.close(fd)
    return found


@contextlib.contextmanager
def claim_gpus(
    count: int,
    job: str,
    key: str,
    folder: Path | None = None,
    say: Callable[[str], None] | None = None,
    poll_s: float = POLL_S,
    report_s: float = WAIT_REPORT_S,
) -> Iterator[list[str]]:
    """Hold `count` distinct GPUs of this machine for the block and give their CUDA_VISIBLE_DEVICES entries.

    Waits while fewer are free, calling `say` (default: stderr) with who holds what when it starts to
    wait and every `report_s`. More GPUs than the machine has is a ConfigError naming `key`.
    """
    if count <= 0:
        yield []
        return
    say = say or _stderr
    gpus = visible_gpus()
    if count > len(gpus):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        raise ConfigError(f"{key}: {count} GPUs per node requested, this machine has {len(gpus)}{where}")
    folder = folder or lock_folder()
    since = time.strftime(TIME_FORMAT)
    next_report = time.monotonic()
    held: dict[str, int] = {}
    try:
        while True:
            held, busy = _try_claim(folder, gpus, count)
            if held:
                break
            if time.monotonic() >= next_report:
                state = "; ".join(f"GPU {g} " + (f"held by {busy[g]}" if g in busy else "free") for g in gpus)
                say(f"{job} waits for {count} free GPU(s) (since {since}): {state}")
                next_report = time.monotonic() + report_s
            time.sleep(poll_s)
        for fd in held.values():
            with contextlib.suppress(OSError):  # the holder line only informs
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"job {job} (pid {os.getpid()} since {time.strftime(TIME_FORMAT)})\n".encode(), 0)
        yield list(held)
    finally:
        for fd in held.values():
            os.close(fd)


def _try_claim(folder: Path, gpus: list[str], count: int) -> tuple[dict[str, int], dict[str, str]]:
    """({gpu: locked fd} for `count` GPUs, {}) or, when fewer are free, ({}, {busy gpu: its holder})."""
    held: dict[str, int] = {}
    busy: dict[str, str] = {}
    for gpu in gpus:
        fd = _open(folder, gpu)
        if _lock(fd):
            held[gpu] = fd
            if len(held) == count:
                return held, {}
        else:
            busy[gpu] = _holder(fd)
            os.close(fd)
    for fd in held.values():
        os.close(fd)
    return {}, busy


def _open(folder: Path, gpu: str) -> int:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", gpu)
    return os.open(folder / f"gpu-{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def _stderr(message: str) -> None:
    print(f"scnas: {message}", file=sys.stderr, flush=True)
