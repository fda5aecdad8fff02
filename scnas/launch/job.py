"""A job description (what to run, with which resources) and the callable that submitit runs.

The target is a "module:function" name, called as target(**kwargs) in every process of the job;
rank 0's return value is the job's result. A checkpointable target saves its own progress every
epoch and resumes from it when started again, so a requeued job simply runs again.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scnas.config import Resources
from scnas.errors import ScnasError


@dataclass
class Job:
    name: str
    target: str
    kwargs: dict
    resources: Resources
    log_dir: Path
    checkpointable: bool = True

    def validate(self) -> None:
        """Fail before submitting anything: the target must import and the kwargs must be JSON."""
        resolve_target(self.target, self.name)
        try:
            json.dumps(self.kwargs)
        except (TypeError, ValueError) as e:
            raise ScnasError(f"job {self.name}: kwargs are not JSON-serialisable ({e})") from None


def resolve_target(target: str, job_name: str = "") -> Callable[..., Any]:
    """The function that "module:function" names."""
    where = f"job {job_name}: " if job_name else ""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ScnasError(f"{where}target {target!r} is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ScnasError(f"{where}target {target!r} cannot be imported ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ScnasError(f"{where}target {target!r}: module {module_name} has no function {attr!r}")
    return fn


class TargetCall:
    """What submitit pickles and runs in each process of a local or SLURM job.

    It exports the torch.distributed environment, gives each rank its own GPU (none when the job
    asked for none), and calls the target. The ranks share out `devices` (the GPUs a local job
    claimed) or else the node's CUDA_VISIBLE_DEVICES (as SLURM sets it). checkpoint() resubmits this
    same call, so preemption or a time limit requeues the job, and the target resumes from its
    on-disk checkpoint.
    """

    def __init__(self, job: Job, devices: list[str] | None = None) -> None:
        self.job = job
        self.devices = devices

    def __call__(self) -> Any:
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        visible = ",".join(self.devices) if self.devices is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = self.job.resources.gpus_per_node or 0
        os.environ["CUDA_VISIBLE_DEVICES"] = rank_devices(visible, env.local_rank, gpus)
        if self.job.resources.cpus_per_task:
            limit_threads(self.job.resources.cpus_per_task)
        return resolve_target(self.job.target, self.job.name)(**self.job.kwargs)

    def checkpoint(self) -> Any:
        if not self.job.checkpointable:
            return None
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def limit_threads(n: int) -> None:
    """A rank computes on the CPUs it was given, not on every core of the node it shares.

    The thread variables reach a torch imported later; an already imported one is told directly
    (importing it here would slow every rank's start, also of targets that never use it).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def rank_devices(visible: str | None, local_rank: int, gpus_per_node: int) -> str:
    """CUDA_VISIBLE_DEVICES for one rank: its own entry of the node's list ("" for a CPU job).

    SLURM without device cgroups lists the job's GPUs by their physical index, so rank k takes the
    k-th entry, never simply "k". A list of one (per-task binding) is kept as it is.
    """
    if gpus_per_node <= 0:
        return ""
    devices = [d.strip() for d in (visible or "").split(",") if d.strip()] or [str(i) for i in range(gpus_per_node)]
    return devices[local_rank % len(devices)]
