"""Run a Job in this process, as a local submitit job, or as a (multi-GPU, multi-node) SLURM job.

The calling process (a Snakemake rule) waits for the job, prints its progress to stderr, returns
rank 0's result, and raises ScnasError with the job's log tail when it fails. Ctrl-C or SIGTERM
while waiting cancels the job first, so nothing keeps running unseen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import submitit
from submitit.core.utils import pickle_load

from scnas.config import LauncherConfig, Resources
from scnas.errors import ConfigError, ScnasError
from scnas.launch import devices, slurm
from scnas.launch.job import Job, TargetCall, resolve_target

LOG_TAIL_LINES = 20
# How long before the time limit SLURM sends USR2: the job then requeues itself.
SIGNAL_DELAY_S = 120
# A rank that failed while the others still run (stuck in a collective) stops the job this much later.
LOCAL_FAILURE_GRACE_S = 10.0
_RULES = ("search", "train", "predict")
# Why a job that left no result ended, by its final state ({mem_gb}, {time_min}: config keys).
_NO_RESULT_REASONS = {
    "OUT_OF_MEMORY": "it was killed for using more memory than requested ({mem_gb})",
    "NODE_FAIL": "its node failed",
    "CANCELLED": "it was cancelled (scancel, an administrator, or preemption)",
    "TIMEOUT": "it reached its time limit ({time_min}) with no requeue left",
    "PREEMPTED": "it was preempted and not requeued",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "it missed its deadline",
    "INTERRUPTED": "its processes were killed",
}


def run_job(job: Job, launcher: LauncherConfig) -> Any:
    """Run `job` with `launcher.executor` (inprocess, local or slurm) and return rank 0's result."""
    job.validate()
    if launcher.executor == "inprocess":
        _warn_if_gpus_unavailable(job)
        return resolve_target(job.target, job.name)(**job.kwargs)
    if launcher.executor == "local":
        return _run_local(job, launcher)
    if launcher.executor == "slurm":
        return _run_slurm(job, launcher)
    raise ConfigError(f"config key launcher.executor: unknown executor {launcher.executor!r}")


def _warn_if_gpus_unavailable(job: Job) -> None:
    """An in-process job asking for GPUs on a machine without CUDA is probably a launcher left at its default."""
    import torch

    if (job.resources.gpus_per_node or 0) > 0 and not torch.cuda.is_available():
        _say(
            f"warning: {job.name} asks for {job.resources.gpus_per_node} GPU(s) per node but runs in this process "
            "on the CPU (launcher.executor: inprocess); set launcher.executor: slurm in your config (or local on "
            "a machine with GPUs), or launcher.default.gpus_per_node: 0 (and 0 for any launcher.search, train or "
            "predict that sets its own) to run on the CPU"
        )


def _say(message: str) -> None:
    print(f"scnas: {message}", file=sys.stderr, flush=True)


def _run_local(job: Job, launcher: LauncherConfig) -> Any:
    """A submitit job on this machine, on GPUs that no other local job of this user holds meanwhile."""
    res = job.resources
    key = config_key(launcher, res, "gpus_per_node")
    with devices.claim_gpus(res.gpus_per_node or 0, job.name, key, say=_say) as gpus:
        return _run_local_on(job, launcher, gpus)


def _run_local_on(job: Job, launcher: LauncherConfig, gpus: list[str]) -> Any:
    res = job.resources
    executor = submitit.LocalExecutor(folder=job.log_dir, max_num_timeout=launcher.max_requeues)
    executor.update_parameters(
        tasks_per_node=res.processes_per_node,
        gpus_per_node=res.gpus_per_node or 0,
        timeout_min=res.time_min or 60 * 24,
        signal_delay_s=SIGNAL_DELAY_S,
    )
    submitted: list[submitit.Job] = []

    def cancel(signame: str) -> None:
        for sub in submitted:
            _stop_local(sub)
            _say(f"{signame} received: stopped local job {sub.job_id} ({job.name}) and its processes")

    with _cancel_on_signal(cancel):
        sub = executor.submit(TargetCall(job, gpus))
        submitted.append(sub)
        on = f" on GPU(s) {','.join(gpus)}" if gpus else ""
        _say(f"local job {sub.job_id} ({job.name}): {res.processes_per_node} process(es){on}; logs in {job.log_dir}")
        failed_since = None
        while not sub.done():
            if failed_since is None and _failed_tasks(sub):
                failed_since = time.monotonic()
            elif failed_since is not None and time.monotonic() - failed_since > LOCAL_FAILURE_GRACE_S:
                _stop_local(sub)
            time.sleep(min(launcher.poll_s, 0.5))
    headline = f"local job {sub.job_id} ({job.name}) " + ("failed" if _failed_tasks(sub) else "ended")
    return _result(sub, headline, sub.state, _hints(launcher, res))


def _stop_local(sub: submitit.Job) -> None:
    """SIGINT to the local job's controller, which stops its processes (SIGKILL after 1 s); whatever of
    them still runs after that (a controller that missed the signal while starting) is killed."""
    process = getattr(sub, "_process", None)
    tree = descendants(process.pid) | {process.pid} if process is not None else set()
    sub.cancel()
    deadline = time.monotonic() + 15
    while not sub.done() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in tree | (descendants(process.pid) if process is not None else set()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def descendants(pid: int) -> set[int]:
    """The processes below `pid`, from /proc (empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _run_slurm(job: Job, launcher: LauncherConfig) -> Any:
    res = job.resources
    slurm.require_sbatch()
    part = slurm.check_request(res, lambda field: config_key(launcher, res, field))
    # No %j in the folder: submitit would create it only after sbatch returns, and a job that starts
    # at once then fails to launch because slurmd cannot open its log (JobLaunchFailure).
    executor = submitit.AutoExecutor(folder=job.log_dir, cluster="slurm", slurm_max_num_timeout=launcher.max_requeues)
    executor.update_parameters(
        name=job.name,
        nodes=res.nodes or 1,
        tasks_per_node=res.processes_per_node,
        gpus_per_node=res.gpus_per_node or None,
        cpus_per_task=res.cpus_per_task,
        mem_gb=float(res.mem_gb) if res.mem_gb is not None else None,
        timeout_min=res.time_min,
        slurm_partition=res.partition,
        slurm_account=res.account,
        slurm_qos=res.qos,
        slurm_constraint=res.constraint,
        slurm_additional_parameters=dict(res.sbatch_extra or {}),
        slurm_setup=list(res.setup or ()),
        slurm_signal_delay_s=SIGNAL_DELAY_S,
        # one failed rank ends the step, instead of the others waiting in a collective until a timeout
        slurm_srun_args=["--kill-on-bad-exit=1"],
    )
    submitted: list[submitit.Job] = []

    def cancel(signame: str) -> None:
        for sub in submitted:
            done = "cancelled" if slurm.cancel(sub.job_id) else "could not cancel (run scancel yourself)"
            _say(f"{signame} received: {done} SLURM job {sub.job_id} ({job.name})")

    with _cancel_on_signal(cancel):
        try:
            sub = executor.submit(TargetCall(job))
        except submitit.core.utils.FailedJobError as exc:
            said = str(exc).strip().splitlines()
            raise ScnasError(f"sbatch refused job {job.name}: {said[-1] if said else 'no message'}") from exc
        submitted.append(sub)
        _say(
            f"submitted SLURM job {sub.job_id} ({job.name}): {res.nodes or 1} node(s) x "
            f"{res.processes_per_node} task(s), {res.gpus_per_node or 0} GPU(s) per node, "
            f"partition {part.name}; logs in {sub.paths.folder}"
        )
        state, reason = _wait_slurm(sub, launcher.poll_s)
    exit_code = ""
    if state != "COMPLETED":
        state, exit_code = _final_accounting(sub.job_id, state)
    code = f" (exit code {exit_code})" if exit_code and exit_code != "0:0" else ""
    why = f", reason {reason}" if reason not in ("", "NonZeroExitCode") and state != "COMPLETED" else ""
    return _result(sub, f"SLURM job {sub.job_id} ({job.name}) ended {state}{code}{why}", state, _hints(launcher, res))


def _final_accounting(job_id: str, state: str, timeout_s: float = 5.0) -> tuple[str, str]:
    """(state, exit code) from sacct, which records a job's end a moment after the controller."""
    deadline = time.monotonic() + timeout_s
    while True:
        final = slurm.accounting_state(job_id)
        if final is not None and final[0] in slurm.TERMINAL_STATES:
            return final
        if time.monotonic() > deadline:
            return state, ""
        time.sleep(0.5)


def _hints(launcher: LauncherConfig, res: Resources) -> dict[str, str]:
    return {field: config_key(launcher, res, field) for field in ("mem_gb", "time_min")}


def _wait_slurm(sub: submitit.Job, poll_s: float) -> tuple[str, str]:
    """Poll until the job ends (or every rank has returned); print each state change. (state, reason)."""
    shown = None
    while True:
        state, reason = slurm.job_state(sub.job_id)
        line = f"{state} ({reason})" if reason else state
        if line != shown:
            _say(f"SLURM job {sub.job_id}: {line}")
            shown = line
        if state in slurm.TERMINAL_STATES:
            return state, reason
        if _all_succeeded(sub):
            _say(f"SLURM job {sub.job_id}: every rank returned its result")
            return "COMPLETED", ""
        time.sleep(poll_s)


def _tasks(sub: submitit.Job) -> list[submitit.Job]:
    return [sub.task(k) for k in range(sub.num_tasks)]


def _outcome(task: submitit.Job) -> tuple[str, Any] | None:
    """("success", result) or ("error", traceback) from the task's result pickle; None if it left none."""
    path = task.paths.result_pickle
    if not path.exists():
        return None
    try:
        return pickle_load(path)
    except (EOFError, OSError):
        return None


def _all_succeeded(sub: submitit.Job) -> bool:
    outcomes = [_outcome(t) for t in _tasks(sub)]
    return all(o is not None and o[0] == "success" for o in outcomes)


def _failed_tasks(sub: submitit.Job) -> list[int]:
    return [k for k, t in enumerate(_tasks(sub)) if (o := _outcome(t)) is not None and o[0] == "error"]


def _result(sub: submitit.Job, headline: str, state: str, hints: dict[str, str]) -> Any:
    """Rank 0's result, or ScnasError: the headline and the cause on one line, then the log tail."""
    tasks = _tasks(sub)
    if state == "COMPLETED" and not _all_succeeded(sub):
        _wait_for_results(sub)
    outcomes = [_outcome(t) for t in tasks]
    if all(o is not None and o[0] == "success" for o in outcomes):
        return outcomes[0][1]  # type: ignore[index]
    failed = [k for k, o in enumerate(outcomes) if o is not None and o[0] == "error"]
    if failed:
        trace = str(outcomes[failed[0]][1]).strip().splitlines()  # type: ignore[index]
        cause = f"rank {failed[0]} raised {trace[-1] if trace else 'an exception'}"
        log_task = tasks[failed[0]]
    else:
        started = any(t.paths.stderr.exists() or t.paths.stdout.exists() for t in tasks)
        fallback = "it was killed (out of memory?)" if started else "it never started (SLURM could not launch it)"
        reason = _NO_RESULT_REASONS.get(state, fallback).format(**hints)
        cause = f"{reason}, and no rank left a result"
        log_task = tasks[0]
    raise ScnasError(f"{headline}: {cause}\n{_log_tail(log_task)}")


def _wait_for_results(sub: submitit.Job, timeout_s: float = 15.0) -> None:
    """A shared filesystem may show the result files a little after SLURM reports the job done."""
    deadline = time.monotonic() + timeout_s
    while not _all_succeeded(sub) and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            folder = sub.paths.folder
            folder.chmod(folder.stat().st_mode)
        time.sleep(0.5)


def _log_tail(task: submitit.Job, lines: int = LOG_TAIL_LINES) -> str:
    for path in (task.paths.stderr, task.paths.stdout):
        text = _read(path)
        if text.strip():
            tail = "\n".join(text.rstrip().splitlines()[-lines:])
            return f"last {lines} lines of {path}:\n{tail}"
    return f"the job wrote no log (expected {task.paths.stderr})"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def config_key(launcher: LauncherConfig, res: Resources, field: str) -> str:
    """The config key that set `field` of `res`: launcher.<rule>.<field> or launcher.default.<field>."""
    for rule in _RULES:
        if launcher.resources(rule) == res and getattr(getattr(launcher, rule), field) is not None:
            return f"launcher.{rule}.{field}"
    return f"launcher.default.{field}"


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that the wait unwinds and cancels the job."""


@contextlib.contextmanager
def _cancel_on_signal(cancel: Callable[[str], None]) -> Iterator[None]:
    """On Ctrl-C or SIGTERM inside the block: call cancel(signal name), then exit as the signal would."""

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Terminated()

    in_main = threading.current_thread() is threading.main_thread()
    previous_term = signal.signal(signal.SIGTERM, on_sigterm) if in_main else None
    previous_int = signal.getsignal(signal.SIGINT) if in_main else None
    try:
        yield
    except (KeyboardInterrupt, _Terminated) as e:
        if in_main:  # a second signal must not interrupt the cancelling
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        cancel("SIGTERM" if isinstance(e, _Terminated) else "SIGINT")
        if isinstance(e, _Terminated):
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        if in_main:  # None: a handler installed outside Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
            signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.default_int_handler)
