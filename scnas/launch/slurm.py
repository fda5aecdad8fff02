"""What the SLURM commands tell us: whether a request fits a partition, a job's state, cancelling.

The request is checked before anything is submitted, so that a job that could never start fails
at once with the config key to fix, instead of pending forever.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable

from scnas.config import Resources
from scnas.errors import ScnasError

# States after which a job runs no more (sacct may add detail, e.g. "CANCELLED by 0").
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    }
)
_COMMAND_TIMEOUT_S = 60


@dataclass(frozen=True)
class Partition:
    """The largest node of a partition: what one node of a job can get there."""

    name: str
    is_default: bool
    nodes: int
    cpus: int
    gpus: int
    mem_mb: int
    time_limit_min: int | None


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise ScnasError(
            "launcher.executor is slurm but sbatch is not on PATH: load SLURM (e.g. `module load slurm`) "
            "in the shell that runs snakemake, or set launcher.executor to local or inprocess"
        )


def partitions() -> dict[str, Partition]:
    """Every partition the cluster reports, by name."""
    out = _run(["sinfo", "-h", "-o", "%P|%D|%c|%G|%m|%l"], "list the partitions")
    rows: dict[str, list[list[str]]] = {}
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 6:
            rows.setdefault(fields[0], []).append(fields)
    found = {}
    for label, lines in rows.items():
        name = label.rstrip("*")
        found[name] = Partition(
            name=name,
            is_default=label.endswith("*"),
            nodes=sum(_int(f[1]) for f in lines),
            cpus=max(_int(f[2]) for f in lines),
            gpus=max(gres_gpus(f[3]) for f in lines),
            mem_mb=max(_int(f[4]) for f in lines),
            time_limit_min=_max_limit([parse_time_limit(f[5]) for f in lines]),
        )
    return found


def check_request(res: Resources, key: Callable[[str], str]) -> Partition:
    """The partition `res` asks for; ScnasError naming the config key (`key(field)`) if it cannot fit."""
    known = partitions()
    names = ", ".join(sorted(known)) or "none"
    if res.partition:
        if res.partition not in known:
            raise ScnasError(f"{key('partition')}: partition {res.partition!r} does not exist (partitions: {names})")
        part = known[res.partition]
    else:
        defaults = [p for p in known.values() if p.is_default]
        if not defaults:
            raise ScnasError(
                f"{key('partition')}: not set, and the cluster has no default partition (partitions: {names})"
            )
        part = defaults[0]
    gpus = res.gpus_per_node or 0
    if gpus > part.gpus:
        have = f"has at most {part.gpus}" if part.gpus else "has no GPUs (gpus_per_node: 0 runs on CPUs)"
        raise ScnasError(f"{key('gpus_per_node')}: {gpus} GPUs per node requested, partition {part.name} {have}")
    nodes = res.nodes or 1
    if nodes > part.nodes:
        raise ScnasError(f"{key('nodes')}: {nodes} nodes requested, partition {part.name} has {part.nodes}")
    cpus = (res.cpus_per_task or 1) * res.processes_per_node
    if cpus > part.cpus:
        raise ScnasError(
            f"{key('cpus_per_task')}: {res.cpus_per_task} CPUs per task x {res.processes_per_node} tasks per node "
            f"= {cpus} CPUs per node requested, partition {part.name}'s nodes have at most {part.cpus}"
        )
    if res.mem_gb is not None and res.mem_gb * 1024 > part.mem_mb:
        raise ScnasError(
            f"{key('mem_gb')}: {res.mem_gb:g} GB per node requested, "
            f"partition {part.name}'s nodes have at most {part.mem_mb / 1024:.1f} GB"
        )
    if res.time_min is not None and part.time_limit_min is not None and res.time_min > part.time_limit_min:
        raise ScnasError(
            f"{key('time_min')}: {res.time_min} minutes requested, partition {part.name} allows at most "
            f"{part.time_limit_min}"
        )
    return part


def job_state(job_id: str) -> tuple[str, str]:
    """(state, pending reason) from the controller, or from accounting once the controller forgot the job."""
    try:
        out = _run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r"], f"query job {job_id}")
    except ScnasError:
        out = ""
    if out.strip():
        state, _, reason = out.strip().splitlines()[0].partition("|")
        return state, reason if reason not in ("None", "") else ""
    final = accounting_state(job_id)
    return (final[0], "") if final else ("UNKNOWN", "")


def accounting_state(job_id: str) -> tuple[str, str] | None:
    """(state, exit code) as sacct records them, e.g. ("CANCELLED", "0:15"); None when unknown."""
    try:
        out = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode"], f"query job {job_id}")
    except ScnasError:
        return None
    lines = out.strip().splitlines()
    if not lines:
        return None
    state, _, exit_code = lines[-1].partition("|")
    return state.split()[0] if state else "UNKNOWN", exit_code


def cancel(job_id: str) -> bool:
    """scancel the job; False when that failed."""
    try:
        return subprocess.run(["scancel", job_id], capture_output=True, timeout=_COMMAND_TIMEOUT_S).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def gres_gpus(gres: str) -> int:
    """GPUs in an sinfo %G string, e.g. "gpu:4", "gpu:a100:2(S:0-1),gpu:v100:2" -> 4, "(null)" -> 0."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_time_limit(text: str) -> int | None:
    """Minutes in an sinfo time limit ([days-]hours:minutes:seconds or minutes:seconds); None = unlimited."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = 0, parts[0], 0
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def _max_limit(limits: list[int | None]) -> int | None:
    return None if any(limit is None for limit in limits) else max(limits)  # type: ignore[type-var]


def _int(text: str) -> int:
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def _run(cmd: list[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise ScnasError(f"launcher.executor is slurm but {cmd[0]} is not on PATH (needed to {what})") from None
    except subprocess.TimeoutExpired:
        raise ScnasError(f"{cmd[0]} did not answer within {_COMMAND_TIMEOUT_S} s (trying to {what})") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ScnasError(f"{' '.join(cmd[:1])} failed to {what}: {detail}")
    return proc.stdout
