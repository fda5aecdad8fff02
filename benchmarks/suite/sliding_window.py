"""Sliding-window inference: scnas.inference.sliding_window against MONAI's sliding_window_inference.

Same network (the stand-in of benchmarks.sliding_window: 3x3x3 convolutions and a 1x1x1 head), same
volume, patch, 50 % overlap and 2 windows per call, Gaussian weighting with sigma = patch / 8 on both,
one thread. The volume's edges are chosen so that nnU-Net's and MONAI's window grids coincide.
Agreement: with uniform weighting, and with MONAI given our Gaussian importance map, both average the same
windows with the same weights, so the outputs must be equal to 1e-5 and the predictor called as often.
Each tool's own Gaussian map differs (MONAI centres it on voxel n // 2, nnU-Net on (n - 1) / 2, which
changes the weights' ratios near a window's edge): the largest difference that makes is reported.
Cost: total time of each, and its overhead over its own forward passes (total / time inside the network).
"""

from __future__ import annotations

from typing import Callable

import torch

from benchmarks import peers
from benchmarks.sliding_window import TimedPredictor, stand_in
from benchmarks.timing import Options, Section, Timing, time_interleaved
from scnas.inference.sliding_window import gaussian_weights, sliding_window

OVERLAP = 0.5
BATCH = 2
TOLERANCE = 1e-5
FULL = {"shape": (160, 160, 128), "channels": 4, "classes": 4, "patch": (64, 64, 64), "width": 16, "layers": 2}
QUICK = {"shape": (24, 24, 20), "channels": 1, "classes": 3, "patch": (16, 16, 16), "width": 4, "layers": 2}


def _tools(network: torch.nn.Module, image: torch.Tensor, patch: tuple[int, ...]) -> dict[str, Callable]:
    def ours(predictor, mode: str) -> torch.Tensor:
        return sliding_window(image, predictor, patch, overlap=OVERLAP, mode=mode, batch_size=BATCH)

    def monai(predictor, mode: str) -> torch.Tensor:
        return peers.monai_sliding_window(image, predictor, patch, OVERLAP, BATCH, mode)

    return {"ours": ours, "MONAI": monai}


def run(opts: Options) -> Section:
    section = Section("sliding_window", "Sliding-window inference, overhead over the forward passes")
    reason = peers.missing("monai")
    if reason:
        section.skipped = reason
        return section
    size = QUICK if opts.quick else FULL
    torch.manual_seed(0)
    network = stand_in(size["channels"], size["classes"], size["width"], size["layers"]).eval()
    image = torch.randn((size["channels"], *size["shape"]))
    patch = size["patch"]
    tools = _tools(network, image, patch)
    device = image.device

    outputs, calls = {}, {}
    for name, tool in tools.items():
        predictor = TimedPredictor(network, device)
        outputs[name] = tool(predictor, "constant")
        calls[name] = predictor.calls
    diff = float((outputs["ours"] - outputs["MONAI"]).abs().max())
    section.check("uniform weighting: max |ours - MONAI|", diff, f"<= {TOLERANCE:g}", diff <= TOLERANCE)
    section.check(
        "predictor calls (ours, MONAI)", f"{calls['ours']}, {calls['MONAI']}", "equal", calls["ours"] == calls["MONAI"]
    )
    weights = torch.from_numpy(gaussian_weights(patch)).float()
    same_map = peers.monai_sliding_window(image, network, patch, OVERLAP, BATCH, "gaussian", weights)
    gauss = {name: tool(network, "gaussian") for name, tool in tools.items()}
    diff = float((gauss["ours"] - same_map).abs().max())
    section.check("our Gaussian map in both: max |ours - MONAI|", diff, f"<= {TOLERANCE:g}", diff <= TOLERANCE)
    section.measurements.append(
        {
            "what": "each its own Gaussian map: max |ours - MONAI| relative to the largest score",
            "relative_difference": float((gauss["ours"] - gauss["MONAI"]).abs().max())
            / float(gauss["MONAI"].abs().max()),
        }
    )

    model_seconds: dict[str, list[float]] = {name: [] for name in tools}

    def timed(name: str) -> Callable[[], None]:
        def call() -> None:
            predictor = TimedPredictor(network, device)
            tools[name](predictor, "gaussian")
            model_seconds[name].append(predictor.seconds)

        return call

    with torch.no_grad():
        times = time_interleaved({name: timed(name) for name in tools}, opts.repeats, opts.warmup)
    case = (
        f"{'x'.join(map(str, size['shape']))}x{size['channels']} volume, {'x'.join(map(str, patch))} patch, "
        f"{calls['ours']} calls of {BATCH} windows"
    )
    section.timings.append(
        Timing(
            case,
            "sliding_window",
            "MONAI sliding_window_inference",
            times["ours"]["median_s"],
            times["MONAI"]["median_s"],
        )
    )
    for name in tools:
        runs = times[name]["runs_s"]
        inside = model_seconds[name][-len(runs) :]
        factors = sorted(t / m for t, m in zip(runs, inside))
        section.measurements.append(
            {
                "what": f"{name}: total / time in the network's forward passes",
                "median": factors[len(factors) // 2],
                "min": factors[0],
                "max": factors[-1],
            }
        )
    section.notes.append(
        f"Network: {size['layers']} x (3x3x3 conv, {size['width']} channels, LeakyReLU) + 1x1x1 conv, eval, no grad; "
        f"Gaussian weighting; median of {opts.repeats} interleaved runs after {opts.warmup} warm-up."
    )
    return section
