"""What the paper's BrainTumour study would cost here, as an estimate: GPU-hours and memory per GPU.

The paper's settings (config.yaml): 4 MRI channels, 4 classes, 128^3 patches; per fold a search of
200 epochs x 250 steps at stem 48 (two operations per edge, batch 4 on 4 GPUs: 1 patch per GPU), then
trainings of at most 500 epochs x 250 steps at batch 8 on 4 GPUs (2 patches per GPU), the searched
network at the stem matching the U-ResNet's FLOPs (the paper's 68). From *counted* FLOPs (on the meta
device), the memory model's *predicted* peaks, and an *assumed* GPU throughput:

- FLOPs of a step: forward + backward = 3 forward passes per patch; a search step is a weight half-step and
  an alpha half-step. The two-operation forward is bounded by twice the mean FLOPs of the random genotypes
  at stem 48 (a random genotype draws each edge's operation uniformly, so its FLOPs are the expectation of
  one sampled operation per edge; the cells' input convolutions, counted twice, make it an upper bound).
- Throughput: a V100's dense 3D convolutions with mixed precision at THROUGHPUT_TFLOPS effective (an
  assumption, a range, not a measurement: nothing here has run on a GPU), and networks of many small
  operations (searched, random, the search network) at the fraction of the U-ResNet's speed measured on
  this CPU at equal FLOPs (the training-step benchmark; GPUs are unlikely to do better on small ops).

    python -m benchmarks.paper_cost      # writes benchmarks/results/paper_cost.json and .md
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from benchmarks.common import RESULTS, markdown_table, write_result
from scnas.io import read_json
from scnas.models.factory import build_model
from scnas.models.flops import count_gflops, match_width
from scnas.nas.genotype import genotype_to_dict, random_genotype

CHANNELS, CLASSES, PATCH = 4, 4, (128, 128, 128)
SEARCH_STEPS = 200 * 250
TRAIN_STEPS = 500 * 250
GPUS = 4
SEARCH_PATCHES_PER_GPU = 1
TRAIN_PATCHES_PER_GPU = 2
DRAWS = 8
THROUGHPUT_TFLOPS = (15.0, 45.0)
"""Assumed effective V100 throughput of a dense 3D-convolution training step with AMP (peak 125)."""
PAPER_SEARCH_GPU_HOURS = 96.0
""""One day on 4 V100 GPUs" (the paper) for one search."""


def _gflops(spec: dict[str, Any]) -> float:
    with torch.device("meta"):
        model = build_model(spec)
    return count_gflops(model, (CHANNELS, *PATCH))


def small_op_slowdown() -> float:
    """Searched network / U-ResNet training-step time at equal FLOPs, measured on this CPU (worst case)."""
    results = sorted(RESULTS.glob("*-cpu.json"))
    ratios = []
    for path in results:
        sections = [s for s in read_json(path).get("sections", []) if s.get("name") == "training_step"]
        for timing in (t for section in sections for t in section.get("timings", [])):
            if timing.get("ours") == "searched network" and timing.get("peer") == "U-ResNet":
                ratios.append(timing["ours_s"] / timing["peer_s"])
    return max(ratios) if ratios else 4.69


def estimate() -> dict[str, Any]:
    from scnas.models.memory import paper_settings_memory

    uresnet = {"arch": "uresnet", "in_channels": CHANNELS, "num_classes": CLASSES, "base_channels": 32}
    u_gflops = _gflops(uresnet)
    draws = []
    for draw in range(DRAWS):
        spec = {
            "arch": "genotype",
            "in_channels": CHANNELS,
            "num_classes": CLASSES,
            "genotype": genotype_to_dict(random_genotype(0, draw)),
        }
        at_48 = _gflops({**spec, "stem_channels": 48})
        with torch.device("meta"):
            stem, matched = match_width(
                lambda c, s=spec: build_model({**s, "stem_channels": c}), u_gflops, (CHANNELS, *PATCH), 4, 256, 4
            )
        draws.append({"draw": draw, "gflops_stem_48": at_48, "matched_stem": stem, "matched_gflops": matched})
    slowdown = small_op_slowdown()
    search_forward = 2 * statistics.mean(d["gflops_stem_48"] for d in draws)
    search_step = 2 * 3 * search_forward * SEARCH_PATCHES_PER_GPU  # per GPU
    train_step = 3 * u_gflops * TRAIN_PATCHES_PER_GPU  # per GPU, FLOPs-matched networks alike
    search_flops = search_step * 1e9 * SEARCH_STEPS * GPUS
    train_flops = train_step * 1e9 * TRAIN_STEPS * GPUS

    def hours(flops: float, speed_tflops: float) -> float:
        return flops / (speed_tflops * 1e12) / 3600

    low, high = THROUGHPUT_TFLOPS
    rows = {
        "search (per fold)": (search_flops, slowdown),
        "U-ResNet training (per model and fold)": (train_flops, 1.0),
        "searched network training (per model and fold)": (train_flops, slowdown),
    }
    jobs = {
        name: {
            "pflops": flops / 1e15,
            "gpu_hours": [hours(flops, high / factor), hours(flops, low / factor)],
        }
        for name, (flops, factor) in rows.items()
    }
    memory = {row["what"]: row["peak_gib"] for row in paper_settings_memory()}
    return {
        "uresnet_gflops": u_gflops,
        "random_draws": draws,
        "search_forward_gflops_bound": search_forward,
        "small_op_slowdown": slowdown,
        "throughput_tflops": list(THROUGHPUT_TFLOPS),
        "jobs": jobs,
        "memory_gib": memory,
        "paper_search_gpu_hours": PAPER_SEARCH_GPU_HOURS,
    }


def markdown(result: dict[str, Any]) -> str:
    low, high = result["throughput_tflops"]
    rows = [
        [name, f"{job['pflops']:,.0f}", f"{job['gpu_hours'][0]:,.0f} - {job['gpu_hours'][1]:,.0f}"]
        for name, job in result["jobs"].items()
    ]
    table = markdown_table(["job of the paper's BrainTumour study", "PFLOPs (counted)", "V100-hours (estimate)"], rows)
    stems = sorted({d["matched_stem"] for d in result["random_draws"]})
    memory = "; ".join(f"{what}: {gib:.1f} GiB" for what, gib in result["memory_gib"].items())
    folds = 5
    search = result["jobs"]["search (per fold)"]["gpu_hours"]
    training = [
        result["jobs"]["U-ResNet training (per model and fold)"]["gpu_hours"][k]
        + 4 * result["jobs"]["searched network training (per model and fold)"]["gpu_hours"][k]
        for k in (0, 1)
    ]
    return (
        "# The paper's BrainTumour study: an estimate of its cost\n\n"
        f"{table}\n\n"
        f"- FLOPs, *counted*: the U-ResNet {result['uresnet_gflops']:.1f} GFLOPs per 4x128^3 forward pass; the "
        f"FLOPs-matched stems of {len(result['random_draws'])} random genotypes {', '.join(map(str, stems))} "
        "(the paper's 68); a two-operation search forward at stem 48 at most "
        f"{result['search_forward_gflops_bound']:.0f} GFLOPs (twice the random genotypes' mean).\n"
        f"- GPU-hours, *estimated*: at {low:g}-{high:g} TFLOP/s effective for dense 3D convolutions with AMP on "
        f"a V100 (an assumption), and {result['small_op_slowdown']:.2f} times slower for networks of many small "
        "operations (the searched and search networks; *measured* on this CPU at equal FLOPs).\n"
        f"- Per fold: search {search[0]:,.0f}-{search[1]:,.0f} V100-hours against the paper's "
        f"{result['paper_search_gpu_hours']:.0f} (*reported*: one day on 4 V100); the five trainings of a fold "
        f"(U-ResNet, SCNAS, 3 random genotypes) {training[0]:,.0f}-{training[1]:,.0f}. The {folds}-fold "
        f"BrainTumour study: {folds * (search[0] + training[0]):,.0f}-{folds * (search[1] + training[1]):,.0f} "
        "V100-hours at the full 500 epochs (trainings stopped early by the lr schedule cost less).\n"
        f"- Memory per GPU, *predicted* by `scnas.models.memory` (AMP): {memory}.\n"
    )


def main() -> int:
    result = estimate()
    write_result("paper_cost", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
