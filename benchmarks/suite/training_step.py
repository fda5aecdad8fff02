"""One training step at equal FLOPs: the U-ResNet, the searched network and nnU-Net's PlainConvUNet.

A step is forward, the project's Jaccard loss, backward and an Adam step, batch 2, one thread. The
U-ResNet (32 channels in its first block) sets the FLOPs; the searched network (a network derived from
a genotype: --genotype FILE, else random genotype seed 0 draw 0, the project's random control), also
in its reduce-before-upsampling form (train.upsample_before_reduce: false), gets the stem whose FLOPs
come closest (scnas.models.flops.match_width, steps of 4) and the PlainConvUNet, as nnU-Net's planner
lays it out for the patch, the closest first-stage width. Both at the Hippocampus
patch (40x56x40, 1 channel, 3 classes) and at 64^3.
Checks (no peer computes the same function here): every network's forward FLOPs within 10 % of the
U-ResNet's, and its output (B, 3, *patch) with a finite loss. The issue's goal: searched / U-ResNet <= 1.5.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from benchmarks import peers
from benchmarks.timing import Options, Section, Timing, time_interleaved
from scnas.models.factory import build_model
from scnas.models.flops import count_gflops, match_width
from scnas.train.loss import jaccard_loss

IN_CHANNELS = 1
CLASSES = 3
BATCH = 2
FLOPS_TOLERANCE = 0.10
SEARCHED_GOAL = 1.5
REDUCED = "searched network, reduce before upsampling"
FULL = {"patches": [(40, 56, 40), (64, 64, 64)], "uresnet": 32}
QUICK = {"patches": [(16, 16, 16)], "uresnet": 8}


def genotype_spec(path: str | None) -> tuple[dict[str, Any], str]:
    """The searched network's spec without its stem, and where its genotype came from."""
    from scnas.nas.genotype import genotype_to_dict, load_genotype, random_genotype

    genotype = load_genotype(path) if path else random_genotype(0, 0)
    source = path or "random genotype, seed 0, draw 0"
    spec = {
        "arch": "genotype",
        "in_channels": IN_CHANNELS,
        "num_classes": CLASSES,
        "genotype": genotype_to_dict(genotype),
    }
    return spec, source


def matched_networks(
    patch: Sequence[int], uresnet_channels: int, genotype: str | None
) -> tuple[dict[str, Callable[[], torch.nn.Module]], dict[str, dict[str, Any]]]:
    """Builders of the three networks at equal FLOPs for `patch`, and each one's width and GFLOPs."""
    shape = (IN_CHANNELS, *patch)
    base = {"arch": "uresnet", "in_channels": IN_CHANNELS, "num_classes": CLASSES, "base_channels": uresnet_channels}
    target = count_gflops(build_model(base), shape)
    searched, source = genotype_spec(genotype)
    stem, stem_gflops = match_width(lambda c: build_model({**searched, "stem_channels": c}), target, shape, 4, 256, 4)
    reduced = {**searched, "upsample_before_reduce": False}
    stem_r, stem_r_gflops = match_width(
        lambda c: build_model({**reduced, "stem_channels": c}), target, shape, 4, 256, 4
    )
    plain, plain_gflops = match_width(
        lambda b: peers.plain_conv_unet(IN_CHANNELS, CLASSES, b, patch), target, shape, 4, 128
    )
    builders = {
        "U-ResNet": lambda: build_model(base),
        "searched network": lambda: build_model({**searched, "stem_channels": stem}),
        REDUCED: lambda: build_model({**reduced, "stem_channels": stem_r}),
        "PlainConvUNet": lambda: peers.plain_conv_unet(IN_CHANNELS, CLASSES, plain, patch),
    }
    info = {
        "U-ResNet": {"width": uresnet_channels, "gflops": target},
        "searched network": {"width": stem, "gflops": stem_gflops, "genotype": source},
        REDUCED: {"width": stem_r, "gflops": stem_r_gflops, "genotype": source},
        "PlainConvUNet": {"width": plain, "gflops": plain_gflops},
    }
    return builders, info


def training_step(
    model: torch.nn.Module, patch: Sequence[int], batch: int = BATCH, seed: int = 0
) -> Callable[[], float]:
    """A closure doing one step on fixed random data; returns the loss."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, IN_CHANNELS, *patch), generator=generator)
    y = torch.randint(0, CLASSES, (batch, *patch), generator=generator)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step() -> float:
        loss = jaccard_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def run(opts: Options) -> Section:
    section = Section("training_step", "Training step at equal FLOPs, batch 2, one thread")
    reason = peers.missing("nnunetv2")
    if reason:
        section.skipped = reason
        return section
    size = QUICK if opts.quick else FULL
    for patch in size["patches"]:
        patch_text = "x".join(map(str, patch))
        builders, info = matched_networks(patch, size["uresnet"], opts.genotype)
        target = info["U-ResNet"]["gflops"]
        steps = {}
        for name, build in builders.items():
            torch.manual_seed(0)
            model = build()
            if name != "U-ResNet":
                gap = info[name]["gflops"] / target - 1
                section.check(
                    f"{patch_text}: {name} (width {info[name]['width']}) forward GFLOPs vs the U-ResNet's",
                    f"{info[name]['gflops']:.3g} vs {target:.3g} ({gap:+.1%})",
                    f"within {FLOPS_TOLERANCE:.0%}",
                    abs(gap) <= FLOPS_TOLERANCE,
                )
            with torch.no_grad():
                shape = tuple(model(torch.zeros((BATCH, IN_CHANNELS, *patch))).shape)
            steps[name] = training_step(model, patch)
            loss = steps[name]()
            section.check(
                f"{patch_text}: {name} output shape, loss",
                f"{shape}, {loss:.4f}",
                f"(2, 3, {patch_text}), finite",
                shape == (BATCH, CLASSES, *patch) and math.isfinite(loss),
            )
        times = time_interleaved(steps, opts.repeats, opts.warmup)
        t = {name: v["median_s"] for name, v in times.items()}
        case = f"{patch_text}, batch {BATCH}, {target:.3g} GFLOPs per sample"
        section.timings += [
            Timing(case, "U-ResNet", "PlainConvUNet", t["U-ResNet"], t["PlainConvUNet"], unit="s/step"),
            Timing(case, "searched network", "PlainConvUNet", t["searched network"], t["PlainConvUNet"], unit="s/step"),
            Timing(
                case,
                "searched network",
                "U-ResNet",
                t["searched network"],
                t["U-ResNet"],
                unit="s/step",
                note=f"goal <= {SEARCHED_GOAL}",
            ),
            Timing(
                case,
                REDUCED,
                "U-ResNet",
                t[REDUCED],
                t["U-ResNet"],
                unit="s/step",
                note="train.upsample_before_reduce: false, a different network",
            ),
        ]
        for name, seconds in t.items():
            section.measurements.append(
                {
                    "what": f"{patch_text}: {name}",
                    **info[name],
                    "step_s": seconds,
                    "gflop_per_s": 3 * BATCH * info[name]["gflops"] / seconds,
                }
            )
    section.notes.append(
        "GFLOP/s counts a step as 3 forward passes (forward + backward, which costs about twice the forward). "
        f"Median of {opts.repeats} interleaved steps after {opts.warmup} warm-up."
    )
    return section
