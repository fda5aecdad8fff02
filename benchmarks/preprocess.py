"""Preprocessing benchmark: one 240x240x155x4 brain-tumour-like case at 1 mm, preprocessed to 0.7 mm.

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

import numpy as np

from benchmarks.common import machine, markdown_table, write_result

SHAPE = (240, 240, 155)
MODALITIES = ("FLAIR", "T1w", "t1gd", "T2w")
CASE = "BRATS_bench"


def write_brain_task(root: Path, shape: tuple[int, int, int] = SHAPE, spacing: float = 1.0, seed: int = 0) -> Path:
    """An MSD-format task with one case: a 4-channel ellipsoid 'brain' (zero outside) holding a nested
    tumour (labels 1-3), stored like ITK writes BraTS (LPS axes: affine diag(-1, -1, 1))."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    x, y, z = (((np.arange(n, dtype=np.float32) - n / 2) * spacing) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    brain = (x / 70) ** 2 + (y / 88) ** 2 + (z / 62) ** 2 < 1
    r = np.sqrt((x - 25) ** 2 + (y - 15) ** 2 + (z - 5) ** 2)
    label = np.select([r < 8, r < 14, r < 24], [3, 2, 1], 0).astype(np.uint8) * brain
    image = np.empty((*shape, len(MODALITIES)), dtype=np.float32)
    for c in range(len(MODALITIES)):
        k = rng.uniform(0.02, 0.06, size=3)
        field = 400 + 80 * np.cos(k[0] * x) * np.cos(k[1] * y) * np.cos(k[2] * z)
        tissue = field + 150 * (c + 1) * (label > 0) - 60 * (label == 2)
        image[..., c] = (tissue + rng.normal(0, 20, size=shape).astype(np.float32)) * brain
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"{CASE}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"{CASE}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "name": "BrainBench", "modality": dict(enumerate(MODALITIES)),
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": 1,
        "training": [{"image": f"./imagesTr/{CASE}.nii.gz", "label": f"./labelsTr/{CASE}.nii.gz"}],
    }))
    return root


def run_worker(dataset_dir: Path, out_dir: Path) -> dict:
    """Preprocess the case once in this (fresh) process; wall time and peak RSS."""
    from scnas.data.dataset import parse_dataset
    from scnas.data.preprocess import preprocess_case
    from scnas.io import read_json

    case = parse_dataset(dataset_dir).case(CASE)
    plans = read_json(dataset_dir / "plans.json")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    properties = preprocess_case(case, plans, out_dir)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_imports_mb": rss_before, "resampled_shape": properties["resampled_shape"]}


def split_timings(dataset_dir: Path, repeats: int) -> dict:
    """Median seconds of loading the case and of `preprocess_arrays` alone (in this process)."""
    from scnas.data.dataset import parse_dataset
    from scnas.data.preprocess import load_case_arrays, preprocess_arrays
    from scnas.io import read_json

    case = parse_dataset(dataset_dir).case(CASE)
    plans = read_json(dataset_dir / "plans.json")
    load, compute = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        image, affine, label = load_case_arrays(case, plans["num_channels"])
        load.append(time.perf_counter() - start)
        start = time.perf_counter()
        preprocess_arrays(image, affine, plans, label)
        compute.append(time.perf_counter() - start)
    return {"load_s": statistics.median(load), "preprocess_arrays_s": statistics.median(compute)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=0.7, help="target spacing in mm (isotropic)")
    parser.add_argument("--worker", nargs=2, metavar=("DATASET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(Path(args.worker[0]), Path(args.worker[1]))))
        return

    from scnas.config import stage_from_dict
    from scnas.data.dataset import parse_dataset
    from scnas.data.plans import make_plans
    from scnas.io import write_json

    with tempfile.TemporaryDirectory(prefix="scnas-bench-") as tmp:
        root = write_brain_task(Path(tmp) / "task")
        stage = stage_from_dict({"preprocess": {"spacing": [args.spacing] * 3}})
        write_json(root / "plans.json", make_plans(parse_dataset(root), stage.preprocess, stage.plan))
        runs = []
        for _ in range(args.repeats):
            done = subprocess.run([sys.executable, "-m", "benchmarks.preprocess", "--worker", str(root), f"{tmp}/out"],
                                  check=True, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        split = split_timings(root, args.repeats)

    result = {
        "case": {"shape": [*SHAPE, len(MODALITIES)], "spacing_mm": 1.0, "target_spacing_mm": args.spacing,
                 "preprocessed_shape": runs[0]["resampled_shape"]},
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
        ["  of which: preprocess_arrays (reorient, crop, resample, normalise)", f"{split['preprocess_arrays_s']:.2f} s"],
        ["peak RSS of a fresh process", f"{result['peak_rss_mb']:.0f} MB"],
        ["  RSS after imports (python, torch, nibabel)", f"{result['rss_after_imports_mb']:.0f} MB"],
    ]
    markdown = (
        f"# Preprocessing benchmark\n\nOne {'x'.join(map(str, SHAPE))}x{len(MODALITIES)} brain volume at 1 mm "
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
