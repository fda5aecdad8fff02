"""Channels-last convolutions (scnas.nas.conv) against torch's contiguous ones, at the Hippocampus study's sizes.

A training step (forward, Jaccard loss, backward, Adam; batch 2, 1x40x56x40, 3 classes, one thread) of
the study's networks: the U-ResNet at 8 channels and three random genotypes (seed 0, draws 0-2) at the
stem whose FLOPs come closest to it (steps of 1), and a two-operation search step (weights and alpha,
stem 8) of the study's search. Each contender runs both ways in one process, interleaved (the order
rotating every repeat); the ratio is channels-last / contiguous, the same function to float rounding
(`tests/test_conv_layout.py`).

    python -m benchmarks.conv_layout               # writes benchmarks/results/conv_layout.json and .md
    python -m benchmarks.conv_layout --repeats 3   # quicker, noisier
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any, Callable

import torch

from benchmarks.common import machine, markdown_table, write_result
from benchmarks.timing import time_interleaved
from scnas.models.factory import build_model
from scnas.models.flops import count_gflops, match_width
from scnas.nas import SearchNetwork
from scnas.nas.conv import contiguous_convs
from scnas.nas.genotype import genotype_to_dict, random_genotype
from scnas.train.loss import jaccard_loss

PATCH, BATCH, CLASSES = (40, 56, 40), 2, 3
URESNET_WIDTH, SEARCH_STEM, DRAWS = 8, 8, 3


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((BATCH, 1, *PATCH), generator=g), torch.randint(0, CLASSES, (BATCH, *PATCH), generator=g)


def training_step(spec: dict[str, Any]) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model(spec).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _data(0)

    def step() -> None:
        loss = jaccard_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def search_step() -> Callable[[], None]:
    torch.manual_seed(0)
    net = SearchNetwork(1, CLASSES, SEARCH_STEM, sampling="two", seed=0, tau=5.0).train()
    halves = []
    for params, seed in ((net.weight_parameters(), 0), (net.arch_parameters(), 1)):
        halves.append((params, torch.optim.Adam(params, lr=1e-3), *_data(seed)))

    def step() -> None:
        for params, optimizer, x, y in halves:
            loss = jaccard_loss(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=params)
            optimizer.step()

    return step


def networks() -> dict[str, tuple[Callable[[], Callable[[], None]], str]]:
    """name -> (a builder of its step, its description)."""
    uresnet = {"arch": "uresnet", "in_channels": 1, "num_classes": CLASSES, "base_channels": URESNET_WIDTH}
    target = count_gflops(build_model(uresnet), (1, *PATCH))
    out = {"U-ResNet": (lambda: training_step(uresnet), f"width {URESNET_WIDTH}, {target:.2f} GFLOPs")}
    for draw in range(DRAWS):
        spec = {
            "arch": "genotype",
            "in_channels": 1,
            "num_classes": CLASSES,
            "genotype": genotype_to_dict(random_genotype(0, draw)),
        }
        build = lambda c, s=spec: build_model({**s, "stem_channels": c})  # noqa: E731
        stem, gflops = match_width(build, target, (1, *PATCH), 4, 64, 1)
        spec = {**spec, "stem_channels": stem}
        out[f"random genotype {draw}"] = (lambda s=spec: training_step(s), f"stem {stem}, {gflops:.2f} GFLOPs")
    out["search step"] = (search_step, f"stem {SEARCH_STEM}, two operations per edge, weights + alpha")
    return out


def _in_layout(step: Callable[[], None], layout: str) -> Callable[[], None]:
    def call() -> None:
        with contiguous_convs() if layout == "contiguous" else contextlib.nullcontext():
            step()

    return call


def run(repeats: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    rows = []
    for name, (build, what) in networks().items():
        steps = {"contiguous": build(), "channels-last": build()}
        contenders = {layout: _in_layout(step, layout) for layout, step in steps.items()}
        times = time_interleaved(contenders, repeats, warmup=1)
        ours, theirs = times["channels-last"]["median_s"], times["contiguous"]["median_s"]
        rows.append(
            {"network": name, "what": what, "channels_last_s": ours, "contiguous_s": theirs, "ratio": ours / theirs}
        )
        print(f"{name}: {ours:.3f} s vs {theirs:.3f} s ({ours / theirs:.2f})", flush=True)
    return {"patch": list(PATCH), "batch": BATCH, "repeats": repeats, "machine": machine(), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    header = ["network", "", "channels-last convs (s/step)", "contiguous (s/step)", "ratio"]
    body = [
        [r["network"], r["what"], f"{r['channels_last_s']:.3f}", f"{r['contiguous_s']:.3f}", f"**{r['ratio']:.2f}**"]
        for r in result["rows"]
    ]
    return (
        "# Channels-last convolutions against contiguous ones (one training step)\n\n"
        f"Patch {'x'.join(map(str, result['patch']))}, batch {result['batch']}, 1 channel, {CLASSES} classes, one "
        f"thread; median of {result['repeats']} interleaved steps after a warm-up, both layouts in one process.\n\n"
        + markdown_table(header, body)
        + f"\n\nMachine: {result['machine']}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved steps per layout (default: 7)")
    args = parser.parse_args(argv)
    result = run(args.repeats)
    for path in write_result("conv_layout", result, markdown(result)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
