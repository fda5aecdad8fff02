"""Pieces shared by the retrain and search loops: precision, batches on the device, the epoch log."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from scnas.io import write_text

log = logging.getLogger("scnas.train")


class Precision:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); float32 on CPU."""

    def __init__(self, device: torch.device, enabled: bool):
        self.device = device
        self.enabled = bool(enabled) and device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)

    def backward(self, loss: torch.Tensor, inputs: Sequence[torch.Tensor] | None = None) -> None:
        """Backward into `inputs` only (when given), scaled when fp16 loss scaling is in use."""
        self.scaler.scale(loss).backward(inputs=list(inputs) if inputs is not None else None)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)
        self.scaler.update()


def batch_sum_reducer(ctx):
    """For losses pooled over the batch: sums the per-process statistics, differentiably, over all
    processes, so N processes compute exactly the loss (and, after DDP's averaging, the gradient) of
    one process holding the whole batch."""
    if ctx.world_size == 1:
        return None
    from torch.distributed.nn.functional import all_reduce

    return all_reduce


def average_gradients(params: Sequence[torch.Tensor], ctx) -> None:
    """Average the gradients of `params` over all processes in one flat all-reduce.

    Used where DDP cannot be (the search network runs a different sub-graph each step); every rank
    samples the same sub-graph, so the same parameters have gradients on every rank.
    """
    if ctx.world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def configure_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.set_device(device)


def to_device(batch: tuple[np.ndarray, np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    image, label = batch
    pin = device.type == "cuda"
    x = torch.from_numpy(image)
    y = torch.from_numpy(label)
    if pin:
        x, y = x.pin_memory(), y.pin_memory()
    return x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)


def torch_generator(device: torch.device, *seed_parts: int) -> torch.Generator:
    """A generator on `device` seeded from several integers (e.g. seed, epoch, rank)."""
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


def write_csv_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """The whole per-epoch log, rewritten atomically (it is small)."""
    if not rows:
        return
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def progress(iterable, total: int, desc: str, main: bool):
    """A tqdm bar with the time left, on rank 0 and only on a terminal: in a log file the loops write one
    line per epoch (or case) instead of carriage-return redraws. SCNAS_PROGRESS=0 hides it everywhere."""
    from tqdm import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=False,
        disable=not main or not sys.stderr.isatty() or os.environ.get("SCNAS_PROGRESS", "1") == "0",
    )


def cpu_state(obj: Any) -> Any:
    """Optimiser/scheduler state with tensors on the CPU (checkpoints load on any device)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_state(v) for v in obj]
    return obj
