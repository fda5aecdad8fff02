"""The memory model (scnas.models.memory) against measured peaks: training steps and search steps, side by side.

Every configuration runs one first step (forward, Jaccard loss, backward, Adam; a search step is a weight
and an alpha half-step) in a fresh process with one thread. Measured, on the CPU: peak RSS minus the
RSS just before the step, as benchmarks.search_step measures it, twice: with glibc's mmap threshold fixed
at 128 KiB (MALLOC_MMAP_THRESHOLD_=131072: every tensor over it gets its own mapping, returned when it is
freed, so RSS follows the memory the step holds) and with glibc's default (the threshold rises to 32 MiB
and freed heap memory stays resident, fragmented); on CUDA: torch.cuda.max_memory_allocated minus what
was allocated before the step. Predicted: the model's step memory for a first step of the same network,
seed and draws. The CPU's overhead constants (scnas.models.memory.CPU_OVERHEAD) come from the
least-squares fit of measured = simulated x (1 + fraction) + constant (fixed threshold, relative errors
weighted equally) over CALIBRATION, smaller sizes than the ones compared; the comparison uses the
constants in force. The results also hold the model's GPU figures for the paper's settings and its
prediction of a stem-48 search step at 128^3 on this CPU with and without recomputation.

    python -m benchmarks.memory                  # CPU: benchmarks/results/memory.json and .md
    python -m benchmarks.memory --device cuda    # the same on a GPU with AMP (memory_cuda.json and .md)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import search_step
from benchmarks.common import machine, markdown_table, write_result
from scnas.models import memory

GIB = 2**30
IN_CHANNELS = search_step.IN_CHANNELS
NUM_CLASSES = search_step.NUM_CLASSES
URESNET = {"arch": "uresnet", "in_channels": IN_CHANNELS, "num_classes": NUM_CLASSES, "base_channels": 32}
TRAINING = [(URESNET, 64, 2), (URESNET, 80, 2), (URESNET, 96, 2), ("derived", 64, 2)]
SEARCH = [(32, True), (48, True), (56, True), (48, False)]
CALIBRATION_TRAINING = [(URESNET, 48, 2), (URESNET, 72, 1), ("derived", 48, 1)]
CALIBRATION_SEARCH = [(40, True), (40, False)]
DERIVED_STEM = 32
SEARCH_STEM = 48
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def allocator_env(fixed: bool) -> dict[str, str]:
    """This environment with glibc's mmap threshold fixed at 128 KiB, or left to glibc's default."""
    env = {k: v for k, v in os.environ.items() if k not in FIXED_MMAP}
    return {**env, **FIXED_MMAP} if fixed else env


def derived_spec(stem: int) -> dict[str, Any]:
    """The random control's genotype (seed 0, draw 0) at `stem`."""
    from scnas.nas.genotype import genotype_to_dict, random_genotype

    return {
        "arch": "genotype",
        "in_channels": IN_CHANNELS,
        "num_classes": NUM_CLASSES,
        "stem_channels": stem,
        "genotype": genotype_to_dict(random_genotype(0, 0)),
    }


def training_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One first training step in this (fresh) process: its peak memory and time."""
    from scnas.models.factory import build_model
    from scnas.train.loss import jaccard_loss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    net = build_model(cfg["spec"]).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-4)
    patch = (cfg["patch"],) * 3
    x = torch.randn((cfg["batch"], cfg["spec"]["in_channels"], *patch), device=device)
    y = torch.randint(0, cfg["spec"]["num_classes"], (cfg["batch"], *patch), dtype=torch.int16, device=device)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    before = _rss()
    if amp:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        loss = jaccard_loss(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if amp:
        torch.cuda.synchronize(device)
    result = {
        **cfg,
        "seconds": time.perf_counter() - start,
        "step_rss_gib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / GIB,
    }
    if amp:
        result["step_cuda_gib"] = (torch.cuda.max_memory_allocated(device) - cuda_before) / GIB
    return result


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _run_training(cfg: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        env=env,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**cfg, "status": f"failed (exit {proc.returncode}): {last}"}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "status": "ok"}


def measure(
    device: str, training: list[tuple], search: list[tuple], allocators: tuple[bool, ...]
) -> list[dict[str, Any]]:
    """Every configuration: measured in fresh processes (one per allocator setting), then predicted."""
    precision = "amp" if device == "cuda" else "float32"
    key = "step_cuda_gib" if device == "cuda" else "step_rss_gib"
    rows = []
    for spec, size, batch in training:
        spec = derived_spec(DERIVED_STEM) if spec == "derived" else spec
        name = "U-ResNet 32" if spec["arch"] == "uresnet" else f"derived network, stem {spec['stem_channels']}"
        print(f"training {name}, {size}^3, batch {batch} ...", flush=True)
        cfg = {"device": device, "spec": spec, "patch": size, "batch": batch}
        runs = [_run_training(cfg, allocator_env(fixed)) for fixed in allocators]
        predicted = memory.training_step_memory(spec, (size,) * 3, batch, precision, device, warm=False)
        rows.append(_row("training", name, size, batch, runs, key, predicted))
    for size, recompute in search:
        name = f"search, stem {SEARCH_STEM}, two ops" + ("" if recompute else ", no recomputation")
        print(f"{name}, {size}^3 ...", flush=True)
        cfg = {
            "device": device,
            "sampling": "two",
            "patch": size,
            "stem": SEARCH_STEM,
            "batch": 1,
            "tau": 1.0,
            "threads": 1,
            "warmup": 0,
            "steps": 1,
            "recompute": recompute,
        }
        runs = [search_step.run_worker(cfg, env=allocator_env(fixed)) for fixed in allocators]
        for run in runs:
            run["seconds"] = run.get("median_seconds")
        predicted = memory.search_step_memory(
            (size,) * 3,
            SEARCH_STEM,
            1,
            IN_CHANNELS,
            NUM_CLASSES,
            "two",
            precision,
            device,
            draw=0,
            recompute=recompute,
            warm=False,
        )
        rows.append(_row("search", name, size, 1, runs, key, predicted))
    return rows


def search_at_128() -> list[dict[str, Any]]:
    """The model's stem-48 two-op search step at 128^3, batch 1, on this CPU (seed 0's draws, first step)."""
    rows = []
    for recompute in (False, True):
        m = memory.search_step_memory(
            (128,) * 3, SEARCH_STEM, 1, IN_CHANNELS, NUM_CLASSES, draw=0, recompute=recompute, warm=False
        )
        rows.append(
            {
                "recompute": recompute,
                "predicted_gib": m.step_gib,
                "simulated_gib": (m.simulated_peak - m.resident) / GIB,
            }
        )
    return rows


def _row(kind: str, name: str, size: int, batch: int, runs: list[dict], key: str, predicted) -> dict[str, Any]:
    """`runs`: the fixed-threshold (or CUDA) measurement, then (CPU) glibc's default."""
    row = {
        "kind": kind,
        "what": name,
        "patch": size,
        "batch": batch,
        "status": runs[0]["status"],
        "seconds": runs[0].get("seconds"),
        "measured_gib": runs[0].get(key),
        "simulated_gib": (predicted.simulated_peak - predicted.resident) / GIB,
        "predicted_gib": predicted.step_gib,
    }
    if row["measured_gib"] is not None:
        row["error"] = row["predicted_gib"] / row["measured_gib"] - 1
    if len(runs) > 1:
        row["default_allocator_gib"] = runs[1].get(key)
        row["default_allocator_seconds"] = runs[1].get("seconds")
    print(
        f"  {row['status']}: measured {row['measured_gib']} GiB, predicted {row['predicted_gib']:.3f} GiB", flush=True
    )
    return row


def fit_overhead(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(fraction, constant bytes) minimising sum ((simulated (1 + fraction) + constant) / measured - 1)^2."""
    ok = [r for r in rows if r.get("measured_gib")]
    a = torch.tensor(
        [[r["simulated_gib"] / r["measured_gib"], 1.0 / r["measured_gib"]] for r in ok], dtype=torch.float64
    )
    b = torch.tensor([1.0 - r["simulated_gib"] / r["measured_gib"] for r in ok], dtype=torch.float64)
    fraction, constant = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.flatten().tolist()
    return fraction, constant * GIB


def markdown(result: dict[str, Any]) -> str:
    cpu = result["device"] == "cpu"
    measured = (
        "peak RSS of a fresh process minus its RSS before the step, glibc's mmap threshold fixed at 128 KiB"
        if cpu
        else "torch.cuda.max_memory_allocated minus the allocation before the step"
    )
    fraction, constant = result["overhead"]
    fit = result.get("fitted_overhead")
    text = [
        f"# The memory model against measured steps ({result['device']}, {result['precision']})\n",
        f"One first step per fresh process, one thread, {IN_CHANNELS} input channels, {NUM_CLASSES} classes. "
        f"Measured: {measured}. Predicted: scnas.models.memory for the same network, seed and draws; "
        f"simulated is its tensor storages alone, predicted adds the overhead ({fraction:.2f} x simulated + "
        f"{constant / 2**20:.0f} MiB)"
        + (
            f"; the least-squares fit over the calibration rows below gives {fit[0]:.3f} and {fit[1] / 2**20:.0f} MiB"
            if fit
            else ""
        )
        + (
            ". The last columns: the same step under glibc's default allocator, which keeps freed heap memory "
            "(not modelled), and that peak over the prediction."
            if cpu
            else "."
        )
        + "\n",
    ]
    header = ["step", "patch", "batch", "status", "measured (GiB)", "simulated (GiB)", "predicted (GiB)", "error", "s"]
    if cpu:
        header += ["glibc default (GiB)", "default / predicted"]
    rows = []
    for r in result["rows"]:
        row = [
            r["what"],
            f"{r['patch']}^3",
            r["batch"],
            r["status"],
            _gib(r.get("measured_gib")),
            _gib(r["simulated_gib"]),
            _gib(r["predicted_gib"]),
            f"{100 * r['error']:+.1f} %" if "error" in r else "-",
            f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-",
        ]
        if cpu:
            default = r.get("default_allocator_gib")
            row += [_gib(default), f"{default / r['predicted_gib']:.2f}" if default is not None else "-"]
        rows.append(row)
    text.append(markdown_table(header, rows))
    errors = [abs(r["error"]) for r in result["rows"] if "error" in r]
    if errors:
        text.append(f"\nLargest error {100 * max(errors):.1f} % (goal: within 15 %).\n")
    if "calibration" in result:
        calibration = ", ".join(
            f"{r['what']} {r['patch']}^3 batch {r['batch']}: measured {_gib(r.get('measured_gib'))}, "
            f"simulated {_gib(r['simulated_gib'])}"
            for r in result["calibration"]
        )
        text.append(f"\nCalibration rows (GiB, fixed threshold): {calibration}.\n")
    if "search_128" in result:
        text.append("\n## Predicted: stem-48 two-op search step at 128^3, batch 1, this CPU (seed 0's draws)\n")
        rows = [
            ["on" if r["recompute"] else "off", _gib(r["simulated_gib"]), _gib(r["predicted_gib"])]
            for r in result["search_128"]
        ]
        text.append(markdown_table(["recomputation", "simulated (GiB)", "predicted step (GiB)"], rows))
        text.append("The measured step at 128^3 is in search_step.md.\n")
    text.append(
        "\n## Predicted GPU memory at the paper's settings (CUDA, AMP, 4 x 128^3, 4 classes, steps after the first)\n"
    )
    rows = [[r["what"], f"{r['peak_gib']:.2f}", f"{r['step_gib']:.2f}"] for r in result["paper_settings"]]
    text.append(markdown_table(["job", "peak (GiB)", "of it the step (GiB)"], rows))
    text.append(
        f"Peak: everything the process holds on the GPU, CUDA context excluded, with the "
        f"{memory.CUDA_OVERHEAD[0]:.0%} allowance for the allocator and cuDNN (not yet measured on a GPU).\n"
    )
    text.append(f"\nMachine: {json.dumps(result['machine'])}\n")
    return "\n".join(text)


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=memory.DEVICES, default="cpu")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(training_worker(json.loads(args.worker))))
        return 0
    cpu = args.device == "cpu"
    result: dict[str, Any] = {
        "device": args.device,
        "precision": "float32" if cpu else "amp",
        "overhead": list(memory.CPU_OVERHEAD if cpu else memory.CUDA_OVERHEAD),
    }
    if cpu:
        calibration = measure("cpu", CALIBRATION_TRAINING, CALIBRATION_SEARCH, (True,))
        result["calibration"] = calibration
        result["fitted_overhead"] = list(fit_overhead(calibration))
        print(f"fitted overhead: {result['fitted_overhead']}", flush=True)
    result["rows"] = measure(args.device, TRAINING, SEARCH, (True, False) if cpu else (True,))
    if cpu:
        result["search_128"] = search_at_128()
    result["paper_settings"] = memory.paper_settings_memory()
    result["machine"] = machine()
    name = "memory" if cpu else "memory_cuda"
    _, md_path = write_result(name, result, markdown(result))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
