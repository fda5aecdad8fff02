"""Peak memory and time of one SCNAS search step, Algorithm 1 ("two") against DARTS ("all") and "one".

A search step is what the search loop does per iteration: forward + backward on the operation weights
and an Adam step on them (one batch), then forward + backward on alpha and an Adam step on alpha
(another batch), with the paper's Adam settings and the search loop's Jaccard loss on int16 labels.
Every configuration runs in a fresh subprocess: peak memory = peak RSS (ru_maxrss) minus the RSS just
before the first step (on CUDA also torch.cuda.max_memory_allocated minus the allocation before the
first step); time = median over `--steps` steps after `--warmup`. The paper's claim: "two" needs at
most 0.4x of "all". The search network recomputes cheap intermediates in the backward pass (its
`recompute`, on by default; `--no-recompute` keeps them all, as before).

    python -m benchmarks.search_step                 # two / all / one at 64^3, stem 16, batch 1
    python -m benchmarks.search_step --max-patch     # largest cubic patch for a stem-48 "two" step (CPU)
    python -m benchmarks.search_step --patch-only 128 --max-patch-stem 48   # one stem-48 step at 128^3

`--max-patch` tries patch sizes 16, 32, 48, ... in subprocesses, watching each one's RSS: a size
stops when it passes `--stop-gib` (real memory this run may use; default 20) or leaves less than
`--reserve-gib` of the machine's memory available, or runs longer than `--max-seconds`. Sizes whose
step fits under `--limit-gib` (default 24) are reported; sizes past the stop are extrapolated from
the measured ones (memory grows linearly with the voxel count) and marked as estimates.
Results: benchmarks/results/search_step.json and .md (both modes merge into the same files).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, machine, markdown_table, write_result
from scnas.io import read_json
from scnas.nas import SearchNetwork
from scnas.train.loss import jaccard_loss

NAME = "search_step"
GIB = 2**30
IN_CHANNELS = 4
NUM_CLASSES = 4


def _rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _half_step(net: SearchNetwork, x: torch.Tensor, y: torch.Tensor, params: list, optimizer) -> None:
    loss = jaccard_loss(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    optimizer.step()


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this (fresh) process and return its measurements."""
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    net = SearchNetwork(
        IN_CHANNELS,
        NUM_CLASSES,
        cfg["stem"],
        sampling=cfg["sampling"],
        seed=0,
        tau=cfg["tau"],
        recompute=cfg.get("recompute", True),
    )
    net = net.to(device).train()
    w_params, a_params = net.weight_parameters(), net.arch_parameters()
    w_opt = torch.optim.Adam(w_params, lr=0.025, betas=(0.1, 0.001))
    a_opt = torch.optim.Adam(a_params, lr=0.003, betas=(0.5, 0.999))
    shape = (cfg["batch"], IN_CHANNELS, *(cfg["patch"],) * 3)
    labels = (cfg["batch"], *(cfg["patch"],) * 3)
    x_w, x_a = torch.randn(shape, device=device), torch.randn(shape, device=device)
    y_w = torch.randint(0, NUM_CLASSES, labels, dtype=torch.int16, device=device)
    y_a = torch.randint(0, NUM_CLASSES, labels, dtype=torch.int16, device=device)
    _sync(device)
    rss_before = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    seconds = []
    for _ in range(cfg["warmup"] + cfg["steps"]):
        start = time.perf_counter()
        _half_step(net, x_w, y_w, w_params, w_opt)
        _half_step(net, x_a, y_a, a_params, a_opt)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    result = {
        **cfg,
        "step_seconds": seconds[cfg["warmup"] :],
        "median_seconds": statistics.median(seconds[cfg["warmup"] :]),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        "rss_before_gib": rss_before / GIB,
    }
    result["step_rss_gib"] = result["peak_rss_gib"] - result["rss_before_gib"]
    if device.type == "cuda":
        result["step_cuda_gib"] = (torch.cuda.max_memory_allocated(device) - cuda_before) / GIB
    return result


def run_worker(
    cfg: dict[str, Any],
    stop_bytes: int | None = None,
    reserve_bytes: int = 0,
    max_seconds: float | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `worker(cfg)` in a fresh interpreter (environment `env`, default this one's); optionally stop it
    on RSS, free memory or time."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.search_step", "--worker", json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env=env,
    )
    start, peak, stopped = time.monotonic(), 0, None
    while proc.poll() is None:
        try:
            peak = max(peak, _rss_bytes(proc.pid))
        except (FileNotFoundError, RuntimeError, ProcessLookupError):
            pass
        if stop_bytes is not None and peak > stop_bytes:
            stopped = f"stopped at {peak / GIB:.1f} GiB RSS (over the {stop_bytes / GIB:.0f} GiB this run may use)"
        elif reserve_bytes and _available_bytes() < reserve_bytes:
            stopped = f"stopped at {peak / GIB:.1f} GiB RSS: machine had under {reserve_bytes / GIB:.0f} GiB available"
        elif max_seconds is not None and time.monotonic() - start > max_seconds:
            stopped = f"stopped after {max_seconds:.0f} s (too slow), {peak / GIB:.1f} GiB RSS so far"
        if stopped:
            proc.kill()
            proc.wait()
            return {**cfg, "status": stopped, "watched_peak_rss_gib": peak / GIB}
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        return {**cfg, "status": f"failed (exit {proc.returncode}): {last}", "watched_peak_rss_gib": peak / GIB}
    return {**json.loads(out.strip().splitlines()[-1]), "status": "ok"}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runs = []
    for device in devices:
        for sampling in ("two", "all", "one"):
            cfg = {
                "device": device,
                "sampling": sampling,
                "patch": args.patch,
                "stem": args.stem,
                "batch": args.batch,
                "tau": args.tau,
                "threads": args.threads,
                "warmup": args.warmup,
                "steps": args.steps,
                "recompute": not args.no_recompute,
            }
            print(f"{device} {sampling}: patch {args.patch}^3, stem {args.stem}, batch {args.batch} ...", flush=True)
            result = run_worker(cfg)
            print(
                f"  {result['status']}  {result.get('step_rss_gib', float('nan')):.2f} GiB  "
                f"{result.get('median_seconds', float('nan')):.1f} s",
                flush=True,
            )
            runs.append(result)
    ratios = {}
    for device in devices:
        by = {r["sampling"]: r for r in runs if r["device"] == device and r["status"] == "ok"}
        if "two" in by and "all" in by:
            ratio = {
                "time_two_over_all": by["two"]["median_seconds"] / by["all"]["median_seconds"],
                "rss_two_over_all": by["two"]["step_rss_gib"] / by["all"]["step_rss_gib"],
            }
            if device == "cuda":
                ratio["cuda_mem_two_over_all"] = by["two"]["step_cuda_gib"] / by["all"]["step_cuda_gib"]
            ratio["two_at_most_0.4x_all_memory"] = (
                max(v for k, v in ratio.items() if "rss" in k or "cuda_mem" in k) <= 0.4
            )
            ratio["two_at_most_0.4x_all_time"] = ratio["time_two_over_all"] <= 0.4
            ratios[device] = ratio
    return {"runs": runs, "ratios": ratios}


def max_patch(args: argparse.Namespace) -> dict[str, Any]:
    from scnas.models.memory import search_step_memory

    recompute = not args.no_recompute
    trials = []
    for size in args.sizes or range(args.start, args.max_size + 1, 16):
        cfg = {
            "device": "cpu",
            "sampling": "two",
            "patch": size,
            "stem": args.max_patch_stem,
            "batch": 1,
            "tau": args.tau,
            "threads": args.threads,
            "warmup": 0,
            "steps": 1,
            "recompute": recompute,
        }
        predicted = search_step_memory(
            (size,) * 3,
            args.max_patch_stem,
            1,
            IN_CHANNELS,
            NUM_CLASSES,
            "two",
            draw=0,
            tau=args.tau,
            recompute=recompute,
            warm=False,
        )
        print(
            f"max-patch: {size}^3, stem {args.max_patch_stem}, predicted {predicted.step_gib:.2f} GiB ...", flush=True
        )
        result = run_worker(
            cfg,
            stop_bytes=int(min(args.stop_gib, args.limit_gib) * GIB),
            reserve_bytes=int(args.reserve_gib * GIB),
            max_seconds=args.max_seconds,
        )
        result["predicted_step_gib"] = predicted.step_gib
        print(
            f"  {result['status']}  step {result.get('step_rss_gib', float('nan')):.2f} GiB  "
            f"{result.get('median_seconds', float('nan')):.0f} s",
            flush=True,
        )
        trials.append(result)
        if result["status"] != "ok" or result["peak_rss_gib"] > args.limit_gib:
            break
    measured = [t for t in trials if t["status"] == "ok"]
    fits = [t["patch"] for t in measured if t["peak_rss_gib"] <= args.limit_gib]
    summary: dict[str, Any] = {
        "limit_gib": args.limit_gib,
        "stop_gib": args.stop_gib,
        "stem": args.max_patch_stem,
        "recompute": recompute,
        "trials": trials,
        "largest_measured_fit": max(fits) if fits else None,
    }
    if len(measured) >= 2:
        a, b = measured[-2], measured[-1]
        slope = (b["peak_rss_gib"] - a["peak_rss_gib"]) / (b["patch"] ** 3 - a["patch"] ** 3)
        estimates = {}
        size = b["patch"] + 16
        while True:
            gib = b["peak_rss_gib"] + slope * (size**3 - b["patch"] ** 3)
            estimates[size] = round(gib, 2)
            if gib > args.limit_gib:
                break
            size += 16
        summary["estimated_peak_rss_gib"] = estimates
        summary["estimated_largest_fit"] = max(
            [s for s, g in estimates.items() if g <= args.limit_gib] + [summary["largest_measured_fit"] or 0]
        )
    return summary


def markdown(result: dict[str, Any]) -> str:
    text = ["# One SCNAS search step: Algorithm 1 (two ops per edge) vs DARTS (all) vs one op\n"]
    comp = result.get("compare")
    if comp:
        first = comp["runs"][0]
        text.append(
            f"Patch {first['patch']}^3, stem {first['stem']}, batch {first['batch']}, {IN_CHANNELS} input "
            f"channels, {NUM_CLASSES} classes, tau {first['tau']}, {first['threads']} CPU thread(s); "
            f"median of {first['steps']} steps after {first['warmup']} warm-up. A step = weight "
            "forward/backward/Adam + alpha forward/backward/Adam. Memory = peak RSS of a fresh process "
            "minus its RSS before the first step."
            + (
                " Measured before the search network recomputed intermediates and with a cross-entropy loss."
                if "recompute" not in first
                else f" Recomputation {'on' if first['recompute'] else 'off'}."
            )
            + "\n"
        )
        rows = [
            [
                r["device"],
                r["sampling"],
                r["status"],
                f"{r.get('step_rss_gib', float('nan')):.2f}",
                f"{r['step_cuda_gib']:.2f}" if "step_cuda_gib" in r else "-",
                f"{r.get('median_seconds', float('nan')):.2f}",
            ]
            for r in comp["runs"]
        ]
        text.append(
            markdown_table(
                ["device", "sampling", "status", "step memory (GiB RSS)", "CUDA (GiB)", "median step (s)"], rows
            )
        )
        for device, ratio in comp["ratios"].items():
            parts = ", ".join(f"{k} = {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in ratio.items())
            text.append(f"\n{device}: {parts}\n")
    for key in ("max_patch_no_recompute", "max_patch"):
        if key in result:
            text.append(_max_patch_markdown(result[key]))
    text.append(f"\nMachine: {json.dumps(result['machine'])}\n")
    return "\n".join(text)


def _max_patch_markdown(mp: dict[str, Any]) -> str:
    how = "recomputing cheap intermediates in the backward pass" if mp["recompute"] else "keeping every intermediate"
    text = [
        f"\n## Stem-{mp['stem']} two-op search step on CPU, {how} (limit {mp['limit_gib']} GiB, a run stops at "
        f"{mp['stop_gib']} GiB)\n"
    ]
    if mp.get("note"):
        text.append(f"{mp['note']}\n")
    rows = [
        [
            f"{t['patch']}^3",
            t["status"],
            f"{t['peak_rss_gib']:.2f}" if "peak_rss_gib" in t else f">= {t['watched_peak_rss_gib']:.2f}",
            f"{t['step_rss_gib']:.2f}" if "step_rss_gib" in t else "-",
            f"{t['predicted_step_gib']:.2f}" if "predicted_step_gib" in t else "-",
            f"{t['median_seconds']:.0f}" if "median_seconds" in t else "-",
        ]
        for t in mp["trials"]
    ]
    header = ["patch", "status", "peak RSS (GiB)", "step memory (GiB)", "predicted step (GiB)", "step (s)"]
    text.append(markdown_table(header, rows))
    text.append(f"\nLargest measured patch that fits: {mp['largest_measured_fit']}^3.\n")
    if "estimated_peak_rss_gib" in mp:
        est = ", ".join(f"{s}^3: {g} GiB" for s, g in mp["estimated_peak_rss_gib"].items())
        text.append(
            f"Extrapolated (linear in voxels, not measured): {est}; largest estimated fit "
            f"{mp['estimated_largest_fit']}^3.\n"
        )
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--stem", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tau", type=float, default=1.0, help="temperature (1.0: two ops run on every edge)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-patch", action="store_true", help="find the largest cubic patch instead (run last)")
    parser.add_argument("--max-patch-stem", type=int, default=48)
    parser.add_argument("--limit-gib", type=float, default=24.0)
    parser.add_argument("--stop-gib", type=float, default=20.0)
    parser.add_argument("--reserve-gib", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--start", type=int, default=16)
    parser.add_argument("--max-size", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", help="--max-patch: these cubic sizes instead of 16, 32, ...")
    parser.add_argument("--no-recompute", action="store_true", help="keep every intermediate (the network before)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    path = RESULTS / f"{NAME}.json"
    result = read_json(path) if path.exists() else {}
    if "recompute" not in result.get("max_patch", {"recompute": True}):
        result["max_patch_no_recompute"] = {
            **result.pop("max_patch"),
            "recompute": False,
            "note": "Measured before the per-axis pooling and upsampling and with a cross-entropy loss.",
        }
    if args.max_patch:
        result["max_patch" if not args.no_recompute else "max_patch_no_recompute"] = max_patch(args)
    else:
        result["compare"] = compare(args)
    result["machine"] = machine()
    json_path, md_path = write_result(NAME, result, markdown(result))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
