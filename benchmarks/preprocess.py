"""Preprocessing benchmark: one 240x240x155x4 synthetic brain-tumour case at 1 mm, preprocessed to 0.7 mm.

Reports the wall time of `preprocess_case` (load, compute, write; median over fresh processes), the peak
RSS of such a process, and the load/compute split. Run: `python -m benchmarks.preprocess`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, markdown_table, write_result

SHAPE = (240, 240, 155)
CASE = "brain_000"


def run_worker(dataset_dir: Path, out_dir: Path) -> dict:
    """Preprocess the case once in this (fresh) process; wall time and peak RSS."""
    from scnas.data.dataset import parse_dataset
    from scnas.data.plans import load_plans
    from scnas.data.preprocess import preprocess_case

    case = parse_dataset(dataset_dir).case(CASE)
    plans = load_plans(dataset_dir)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    properties = preprocess_case(case, plans, out_dir)
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mb": rss_before,
        "resampled_shape": properties["resampled_shape"],
    }


def split_timings(dataset_dir: Path, repeats: int) -> dict:
    """Median seconds of loading the case and of `preprocess_arrays` alone."""
    from scnas.data.dataset import parse_dataset
    from scnas.data.nifti import load_case_arrays
    from scnas.data.plans import load_plans
    from scnas.data.transforms import preprocess_arrays

    case = parse_dataset(dataset_dir).case(CASE)
    plans = load_plans(dataset_dir)
    load, compute = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        image, affine, label = load_case_arrays(case, plans.num_channels)
        load.append(time.perf_counter() - start)
        start = time.perf_counter()
        preprocess_arrays(image, affine, plans, label)
        compute.append(time.perf_counter() - start)
    return {"load_s": statistics.median(load), "preprocess_arrays_s": statistics.median(compute)}


def make_task(root: Path, spacing: float) -> dict:
    """Write the synthetic brain task (one case, SHAPE at 1 mm) and its plans (target `spacing` mm, isotropic)."""
    from scnas.config import task_settings
    from scnas.data.dataset import parse_dataset
    from scnas.data.plans import make_plans, save_plans
    from scnas.data.synthetic import make_synthetic_task

    make_synthetic_task("brain", root, cases=1, seed=0, shape=SHAPE, spacing=(1.0, 1.0, 1.0))
    stage = task_settings({"preprocess": {"spacing": [spacing] * 3}})
    save_plans(root, make_plans(parse_dataset(root), stage.preprocess, stage.plan))
    return {"root": str(root)}


def _in_subprocess(*args: str) -> dict:
    """Run one mode of this module in a fresh interpreter and return the JSON it prints.

    Linux carries the parent's peak RSS into a child's getrusage, so the parent stays small: all heavy
    work happens in children.
    """
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.preprocess", *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=0.7, help="target spacing in mm (isotropic)")
    parser.add_argument("--mode", choices=("make-task", "worker", "split"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == "make-task":
        print(json.dumps(make_task(args.dir, args.spacing)))
        return
    if args.mode == "worker":
        print(json.dumps(run_worker(args.dir / "task", args.dir / "out")))
        return
    if args.mode == "split":
        print(json.dumps(split_timings(args.dir / "task", args.repeats)))
        return

    with tempfile.TemporaryDirectory(prefix="scnas-bench-") as tmp:
        _in_subprocess("--mode", "make-task", "--dir", f"{tmp}/task", "--spacing", str(args.spacing))
        runs = [_in_subprocess("--mode", "worker", "--dir", tmp) for _ in range(args.repeats)]
        split = _in_subprocess("--mode", "split", "--dir", tmp, "--repeats", str(args.repeats))

    result = {
        "case": {
            "shape": [*SHAPE, 4],
            "spacing_mm": 1.0,
            "target_spacing_mm": args.spacing,
            "preprocessed_shape": runs[0]["resampled_shape"],
        },
        "wall_s_median": statistics.median(r["wall_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "rss_after_imports_mb": max(r["rss_after_imports_mb"] for r in runs),
        **split,
        "runs": runs,
        "machine": machine(),
    }
    m = result["machine"]
    rows = [
        ["preprocess_case (load + compute + write), median of %d" % args.repeats, f"{result['wall_s_median']:.2f} s"],
        ["  of which: load NIfTI (.nii.gz)", f"{split['load_s']:.2f} s"],
        [
            "  of which: preprocess_arrays (reorient, crop, resample, normalise)",
            f"{split['preprocess_arrays_s']:.2f} s",
        ],
        ["peak RSS of a fresh process", f"{result['peak_rss_mb']:.0f} MB"],
        ["  RSS after imports (python, torch, nibabel)", f"{result['rss_after_imports_mb']:.0f} MB"],
    ]
    markdown = (
        f"# Preprocessing benchmark\n\nOne {'x'.join(map(str, SHAPE))}x4 synthetic brain volume at 1 mm "
        f"-> {args.spacing} mm, preprocessed shape {'x'.join(map(str, result['case']['preprocessed_shape']))}.\n\n"
        + markdown_table(["what", "value"], rows)
        + f"\nMachine: {m['cpu_count']} CPUs ({m['cpu']}), torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}.\n"
    )
    json_path, md_path = write_result("preprocess", result, markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
