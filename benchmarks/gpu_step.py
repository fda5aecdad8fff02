"""Time and peak GPU memory of one step at the paper's settings, with mixed precision, on CUDA.

- training step: the U-ResNet (32 channels in its first block), 4 input channels, 4 classes, 128^3
  patch, batch 2, Jaccard loss, Adam, scnas.train.engine.Precision (bf16 where supported, else fp16 with
  loss scaling), as scnas.train.training does;
- the same for the searched network (random genotype seed 0, draw 0, or --genotype) at the stem whose
  FLOPs match the U-ResNet's;
- search step: SearchNetwork stem 48, two ops per edge (Algorithm 1), 128^3, batch 1: a weight step and
  an alpha step with the search's Adam settings, as scnas.train.search does.
Each runs after `--warmup` steps; the result is the median of `--steps` steps and the peak of
torch.cuda.max_memory_allocated over them (memory reserved by the caching allocator alongside).
Writes gpu_<device>.json to --out (default benchmarks/results/). Run by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import RESULTS, machine
from scnas.io import write_json

GIB = 2**30
IN_CHANNELS, CLASSES = 4, 4


def _step_stats(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {
        "median_step_s": statistics.median(seconds),
        "step_s": seconds,
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
    }


def training(model: torch.nn.Module, patch: int, batch: int, device: torch.device) -> Callable[[], None]:
    """One AMP training step of `model` on fixed random data, as the retrain loop does it."""
    from scnas.train.engine import Precision
    from scnas.train.loss import jaccard_loss

    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    precision = Precision(device, True)
    x = torch.randn((batch, IN_CHANNELS, patch, patch, patch), device=device)
    y = torch.randint(0, CLASSES, (batch, patch, patch, patch), device=device)

    def step() -> None:
        with precision.autocast():
            loss = jaccard_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(optimizer)

    return step


def search(stem: int, patch: int, batch: int, device: torch.device) -> Callable[[], None]:
    """One AMP search step (weights, then alphas, each its own batch) of a two-op SearchNetwork."""
    from scnas.nas import SearchNetwork
    from scnas.train.engine import Precision
    from scnas.train.loss import jaccard_loss

    net = SearchNetwork(IN_CHANNELS, CLASSES, stem, sampling="two", seed=0).to(device).train()
    w_params, a_params = net.weight_parameters(), net.arch_parameters()
    w_opt = torch.optim.Adam(w_params, lr=0.025, betas=(0.1, 0.001))
    a_opt = torch.optim.Adam(a_params, lr=0.003, betas=(0.5, 0.999))
    precision = Precision(device, True)
    shape = (batch, IN_CHANNELS, patch, patch, patch)
    batches = [
        (torch.randn(shape, device=device), torch.randint(0, CLASSES, (batch, *shape[2:]), device=device))
        for _ in range(2)
    ]

    def step() -> None:
        for (x, y), params, optimizer in zip(batches, (w_params, a_params), (w_opt, a_opt)):
            with precision.autocast():
                loss = jaccard_loss(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss, inputs=params)
            precision.step(optimizer)

    return step


def searched_model(patch: int, genotype: str | None) -> tuple[torch.nn.Module, int]:
    """The searched network at the stem whose FLOPs match the 32-channel U-ResNet's at `patch`."""
    from benchmarks.suite.training_step import genotype_spec
    from scnas.models.factory import build_model
    from scnas.models.flops import count_gflops, match_width

    shape = (IN_CHANNELS, patch, patch, patch)
    base = {"arch": "uresnet", "in_channels": IN_CHANNELS, "num_classes": CLASSES, "base_channels": 32}
    spec, _ = genotype_spec(genotype)
    spec = {**spec, "in_channels": IN_CHANNELS, "num_classes": CLASSES}
    stem, _ = match_width(
        lambda c: build_model({**spec, "stem_channels": c}), count_gflops(build_model(base), shape), shape, 4, 256, 4
    )
    return build_model({**spec, "stem_channels": stem}), stem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--genotype", help="genotype JSON of the searched network (default: a random genotype)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_step: torch sees no CUDA device")
        return 2
    from scnas.models.uresnet import UResNet

    device = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device)
    result: dict[str, Any] = {
        "machine": {**machine(), "gpu": name, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()},
        "settings": {"patch": args.patch, "warmup": args.warmup, "steps": args.steps, "amp": True},
        "runs": {},
    }
    searched, stem = searched_model(args.patch, args.genotype)
    runs = {
        "training step, U-ResNet 32 channels, batch 2": lambda: training(
            UResNet(IN_CHANNELS, CLASSES, 32), args.patch, 2, device
        ),
        f"training step, searched network stem {stem} (FLOPs-matched), batch 2": lambda: training(
            searched, args.patch, 2, device
        ),
        "search step, stem 48, two ops per edge, batch 1": lambda: search(48, args.patch, 1, device),
    }
    for what, build in runs.items():
        torch.manual_seed(0)
        try:
            result["runs"][what] = _step_stats(build(), device, args.warmup, args.steps)
        except torch.cuda.OutOfMemoryError as e:
            result["runs"][what] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
        torch.cuda.empty_cache()
        r = result["runs"][what]
        shown = r.get("error") or f"{r['median_step_s']:.3f} s/step, peak {r['peak_allocated_gib']:.2f} GiB allocated"
        print(f"{what} at {args.patch}^3 (AMP): {shown}", flush=True)
    path = args.out / f"gpu_{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json"
    write_json(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
