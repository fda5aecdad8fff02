"""Sliding-window inference benchmark: a 160x160x128 four-channel volume, 64^3 patches, 50 % overlap.

Reports the total time of `sliding_window`, the time spent inside the network's forward passes (the
predictor is wrapped with a timer) and the share left to the sliding-window machinery (window extraction,
flips, weighting and accumulation), without and with test-time mirroring over all three axes.
The default network is a stand-in (three 3x3x3 convolutions with 32 channels and a 1x1x1 head): the full
3D U-ResNet takes several seconds per 64^3 window on a small CPU (`--model uresnet` uses it;
results go to sliding_window_uresnet.*).
Run: `python -m benchmarks.sliding_window`.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from benchmarks.common import machine, markdown_table, write_result
from scnas.inference.sliding_window import sliding_window, window_starts


def stand_in(in_channels: int, num_classes: int, channels: int = 32, layers: int = 3) -> nn.Module:
    """A small 3D conv net: `layers` 3x3x3 convolutions (LeakyReLU) and a 1x1x1 classifier."""
    modules: list[nn.Module] = []
    width = in_channels
    for _ in range(layers):
        modules += [nn.Conv3d(width, channels, 3, padding=1), nn.LeakyReLU(0.01)]
        width = channels
    modules.append(nn.Conv3d(width, num_classes, 1))
    return nn.Sequential(*modules)


class TimedPredictor:
    """Calls the network and adds up the wall time spent in it."""

    def __init__(self, network: nn.Module, device: torch.device):
        self.network = network
        self.device = device
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _sync(self.device)
        start = time.perf_counter()
        out = self.network(x)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    network: nn.Module,
    image: torch.Tensor,
    patch: tuple[int, ...],
    overlap: float,
    batch_size: int,
    mirror_axes: tuple[int, ...],
    repeats: int,
) -> dict:
    """Best-of-`repeats` total time with its model time and the overhead share."""
    best = None
    for _ in range(repeats):
        predictor = TimedPredictor(network, image.device)
        _sync(image.device)
        start = time.perf_counter()
        sliding_window(image, predictor, patch, overlap=overlap, batch_size=batch_size, mirror_axes=mirror_axes)
        _sync(image.device)
        total = time.perf_counter() - start
        if best is None or total < best["total_s"]:
            best = {
                "mirror_axes": list(mirror_axes),
                "total_s": total,
                "model_s": predictor.seconds,
                "overhead_s": total - predictor.seconds,
                "overhead_share": (total - predictor.seconds) / total,
                "predictor_calls": predictor.calls,
            }
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(160, 160, 128))
    parser.add_argument("--patch", type=int, nargs=3, default=(64, 64, 64))
    parser.add_argument("--in-channels", type=int, default=4)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--model", choices=("standin", "uresnet"), default="standin")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-mirror", action="store_true", help="skip the run with test-time mirroring")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.model == "uresnet":
        from scnas.models.uresnet import UResNet

        network = UResNet(args.in_channels, args.classes)
        model_text = "3D U-ResNet (32 base channels)"
    else:
        network = stand_in(args.in_channels, args.classes)
        model_text = "stand-in: 3 x (3x3x3 conv, 32 channels, LeakyReLU) + 1x1x1 conv"
    network = network.to(device).eval()
    image = torch.randn((args.in_channels, *args.shape), device=device)
    patch = tuple(args.patch)
    num_windows = 1
    for starts in window_starts(args.shape, patch, args.overlap):
        num_windows *= len(starts)
    with torch.no_grad():
        network(torch.zeros((args.batch_size, args.in_channels, *patch), device=device))

    mirror_axes = [()] if args.no_mirror else [(), (0, 1, 2)]
    runs = [run(network, image, patch, args.overlap, args.batch_size, axes, args.repeats) for axes in mirror_axes]
    result = {
        "machine": {**machine(), "device": str(device)},
        "volume": list(args.shape),
        "patch": list(patch),
        "in_channels": args.in_channels,
        "classes": args.classes,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "windows": num_windows,
        "model": model_text,
        "repeats": args.repeats,
        "runs": runs,
    }
    rows = [
        [
            ", ".join(map(str, r["mirror_axes"])) or "none",
            r["predictor_calls"],
            f"{r['total_s']:.2f}",
            f"{r['model_s']:.2f}",
            f"{r['overhead_s']:.2f}",
            f"{100 * r['overhead_share']:.1f} %",
        ]
        for r in runs
    ]
    m = result["machine"]
    markdown = (
        "# Sliding-window inference\n\n"
        f"Volume {'x'.join(map(str, args.shape))} with {args.in_channels} channels, patch "
        f"{'x'.join(map(str, patch))}, overlap {args.overlap}, Gaussian weighting, {num_windows} windows, "
        f"{args.batch_size} windows per predictor call, {args.classes} output channels.\n"
        f"Model: {model_text}. Device: {device} ({m['cpu']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch "
        f"threads, torch {m['torch']}). Best of {args.repeats}.\n\n"
        + markdown_table(
            ["mirror axes", "predictor calls", "total (s)", "in model (s)", "overhead (s)", "overhead share"], rows
        )
    )
    name = "sliding_window" if args.model == "standin" else f"sliding_window_{args.model}"
    json_path, md_path = write_result(name, result, markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")
    return result


if __name__ == "__main__":
    main()
