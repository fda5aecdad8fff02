"""A diagnostic job target: does every rank start, find its device and take part in all_reduce?

Run it through the launcher to smoke-test a cluster set-up before a long search. With
checkpoint_dir it counts steps with an on-disk checkpoint, as training does, so that preemption
and requeue can be tested end to end.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import torch

from scnas.io import read_json, write_json
from scnas.train.distributed import init_distributed

CHECKPOINT_NAME = "probe_checkpoint.json"


def ddp_probe(steps: int = 3, out: str | None = None, sleep_s: float = 0, checkpoint_dir: str | None = None) -> dict:
    """Run `steps` all_reduce steps on every rank and report what each rank saw (JSON-able).

    Step s adds sum over ranks of (rank + 1) * (s + 1) to `total`. With `checkpoint_dir`, rank 0
    saves the step and total after every step and a restarted job resumes from there; `starts`
    records each (re)start with its SLURM_RESTART_COUNT. Rank 0 writes the result to `out` if given.
    """
    ctx = init_distributed()
    try:
        restart_count = int(os.environ.get("SLURM_RESTART_COUNT", 0))
        ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
        state = read_json(ckpt) if ckpt is not None and ckpt.exists() else {"step": 0, "total": 0, "starts": []}
        ctx.barrier()  # every rank has read the checkpoint before rank 0 overwrites it
        start_step = state["step"]
        starts = [*state["starts"], {"step": start_step, "restart_count": restart_count}]
        total = state["total"]
        for step in range(start_step, steps):
            value = torch.tensor([float((ctx.rank + 1) * (step + 1))], dtype=torch.float64, device=ctx.device)
            total += round(ctx.all_reduce_mean(value).item() * ctx.world_size)
            time.sleep(sleep_s)
            if ckpt is not None and ctx.is_main:
                write_json(ckpt, {"step": step + 1, "total": total, "starts": starts})
        one = torch.ones(1, dtype=torch.float64, device=ctx.device)
        rank_sum = ctx.all_reduce_mean(one * (ctx.rank + 1)).item() * ctx.world_size
        ranks = ctx.all_gather_object(
            {
                "rank": ctx.rank,
                "local_rank": ctx.local_rank,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "device": str(ctx.device),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "slurm_restart_count": restart_count,
            }
        )
        result = {
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "ranks": ranks,
            "devices": [r["device"] for r in ranks],
            "cuda_visible_devices": [r["cuda_visible_devices"] for r in ranks],
            "all_reduce_sum": round(rank_sum),
            "steps": steps,
            "total": total,
            "start_step": start_step,
            "starts": starts,
            "restart_count": restart_count,
        }
        if out is not None and ctx.is_main:
            write_json(out, result)
        return result
    finally:
        ctx.close()
