"""Whole preprocessing of an MSD task: `scnas preprocess` against `nnUNetv2_plan_and_preprocess -c 3d_fullres`.

The task is converted to nnU-Net's raw format with nnU-Net's own converter (nnUNetv2_convert_MSD_dataset,
not timed) in a temporary folder that also holds nnUNet_raw, nnUNet_preprocessed and nnUNet_results.
Both commands run in fresh processes with N workers (nnU-Net: -np N -npfp N processes; scnas: --threads N),
one BLAS/OpenMP thread each, into a fresh output folder every run; scnas gets nnU-Net's target spacing so
both produce the same grid. Each command's time includes what it does besides preprocessing (nnU-Net:
fingerprint and plans; scnas: validating the task and writing its plans).
Agreement per case: the label maps equal under one axis order/flip (nnU-Net keeps SimpleITK's z, y, x
order and marks background outside the nonzero mask -1, read as 0 here); the images agree to 5e-3 inside
the nonzero mask where neither resamples, and correlate to 0.95 where both resample (nnU-Net normalises
before its order-3 resampling, scnas after its trilinear one). Outside the mask nnU-Net z-scores the
zero background (use_mask_for_norm off) while scnas sets it to 0: those voxels are counted, not compared.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from benchmarks import peers
from benchmarks.timing import Options, Section, Timing, time_interleaved

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "data" / "Task04_Hippocampus"  # data_root's default
IMAGE_TOLERANCE = 5e-3
RESAMPLED_CORRELATION = 0.95
BIN = Path(sys.executable).parent


def stage_msd(task: Path, staging: Path, name: str) -> Path:
    """An MSD folder nnU-Net's converter accepts (TaskNNN_Name, an imagesTs folder, a "test" list), by links."""
    out = staging / name
    (out / "imagesTs").mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).symlink_to((task / sub).resolve(), target_is_directory=True)
    meta = json.loads((task / "dataset.json").read_text())
    meta.setdefault("test", [])
    (out / "dataset.json").write_text(json.dumps(meta))
    return out


def _synthetic_task(root: Path) -> Path:
    from scnas.data.synthetic import make_synthetic_task

    return make_synthetic_task("heart", root / "Task990_Synthetic", cases=3, seed=0, size=24)


def _run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise RuntimeError(f"{Path(cmd[0]).name} failed (exit {done.returncode}): {' | '.join(tail)}")


def orientations() -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The 48 axis orders and flips of a 3D array."""
    for perm in itertools.permutations(range(3)):
        for r in range(4):
            for axes in itertools.combinations(range(3), r):
                yield perm, axes


def _orient(array: np.ndarray, perm: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    out = array.transpose(perm)
    return np.flip(out, axes) if axes else out


def compare_outputs(scnas_dir: Path, nnunet_dir: Path, section: Section) -> None:
    """Per-case agreement of the two preprocessed folders (see the module docstring)."""
    peers._quiet_nnunet_paths()
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset = infer_dataset_class(str(nnunet_dir))(str(nnunet_dir))
    cases = sorted(dataset.identifiers)
    ours_done = len(list(scnas_dir.glob("*_seg.npy")))
    unmatched, worst, lowest_r, resampled, outside, total = [], 0.0, 1.0, 0, 0, 0
    for case in cases:
        data, seg, _, props = dataset.load_case(case)
        theirs, their_label = np.asarray(data[:])[0], np.maximum(np.asarray(seg[:])[0], 0)
        ours, our_label = np.load(scnas_dir / f"{case}.npy")[0], np.load(scnas_dir / f"{case}_seg.npy")
        matches = [
            o
            for o in orientations()
            if _orient(our_label, *o).shape == their_label.shape and np.array_equal(_orient(our_label, *o), their_label)
        ]
        if not matches:
            unmatched.append(case)
            continue
        match = min(matches, key=lambda o: float(np.abs(_orient(ours, *o) - theirs).max()))
        image = _orient(ours, *match)
        mask = image != 0
        outside += int((~mask).sum())
        total += mask.size
        if tuple(props["shape_after_cropping_and_before_resampling"]) == theirs.shape:
            worst = max(worst, float(np.abs(image - theirs)[mask].max()))
        else:
            resampled += 1
            lowest_r = min(lowest_r, float(np.corrcoef(image[mask], theirs[mask])[0, 1]))
    section.check("cases preprocessed by both", f"{len(cases)} and {ours_done}", "equal", ours_done == len(cases) > 0)
    section.check(
        "label maps equal (same grid, one axis order)",
        f"{len(cases) - len(unmatched)}/{len(cases)}" + (f"; first differing: {unmatched[0]}" if unmatched else ""),
        "every case",
        not unmatched,
    )
    if resampled < len(cases) - len(unmatched):
        section.check(
            "image, cases not resampled: max |scnas - nnU-Net| inside the nonzero mask",
            worst,
            f"<= {IMAGE_TOLERANCE:g}",
            worst <= IMAGE_TOLERANCE,
        )
    if resampled:
        section.check(
            f"image, {resampled} resampled cases (scnas: normalise after trilinear; nnU-Net: before, order 3): "
            "lowest correlation inside the mask",
            lowest_r,
            f">= {RESAMPLED_CORRELATION}",
            lowest_r >= RESAMPLED_CORRELATION,
        )
    section.measurements.append(
        {
            "what": "voxels outside the nonzero mask (nnU-Net z-scores them, scnas sets 0)",
            "share": outside / max(total, 1),
        }
    )


def run(opts: Options) -> Section:
    section = Section("preprocessing", "Whole preprocessing of an MSD task")
    reason = peers.missing("nnunetv2")
    if reason:
        section.skipped = reason
        return section
    with tempfile.TemporaryDirectory(prefix="scnas-bench-pre-") as tmp:
        root = Path(tmp)
        if opts.quick:
            task, label = _synthetic_task(root / "synthetic"), "3 synthetic heart cases, 24^3"
        else:
            task = Path(opts.hippocampus) if opts.hippocampus else HIPPOCAMPUS
            if not (task / "dataset.json").is_file():
                section.skipped = f"the Hippocampus task is not at {task} (pass --hippocampus DIR)"
                return section
            label = f"{len(json.loads((task / 'dataset.json').read_text())['training'])} {task.name} cases"
        number, name = task.name.split("_", 1)
        staged = stage_msd(task, root / "staging", f"{number}_{name.replace('_', '')}")
        env = {
            **os.environ,
            "nnUNet_raw": str(root / "nnUNet_raw"),
            "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
            "nnUNet_results": str(root / "nnUNet_results"),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "SCNAS_PROGRESS": "0",
        }
        n = str(opts.processes)
        _run([str(BIN / "nnUNetv2_convert_MSD_dataset"), "-i", str(staged), "-np", n], env)
        dataset_id = str(int(number[4:]))
        runs = itertools.count()
        spacing: list[float] = []
        last: dict[str, Path] = {}
        made: list[Path] = []

        def nnunet() -> None:
            out = root / f"nnunet_{next(runs)}"
            _run(
                [str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", "3d_fullres", "-np", n, "-npfp", n],
                {**env, "nnUNet_preprocessed": str(out)},
            )
            last["nnunet"] = out
            made.append(out)
            if not spacing:
                plans = json.loads(next(out.glob("*/nnUNetPlans.json")).read_text())
                spacing.extend(reversed(plans["configurations"]["3d_fullres"]["spacing"]))

        def scnas() -> None:
            out = root / f"scnas_{next(runs)}"
            out.mkdir()
            cmd = [str(BIN / "scnas"), "preprocess", "--dataset", str(task), "--out", str(out), "--threads", n]
            _run(cmd + ["--spacing", *map(str, spacing)], env)
            last["scnas"] = out
            made.append(out)

        nnunet()
        scnas()
        compare_outputs(last["scnas"], next(p for p in last["nnunet"].glob("*/nnUNetPlans_3d_fullres")), section)
        for old in made:
            shutil.rmtree(old)
        times = time_interleaved({"scnas": scnas, "nnunet": nnunet}, opts.repeats, warmup=0)
    section.timings.append(
        Timing(
            f"{label}, {opts.processes} worker{'s' if opts.processes != 1 else ''}",
            "scnas preprocess",
            "nnUNetv2_plan_and_preprocess",
            times["scnas"]["median_s"],
            times["nnunet"]["median_s"],
            note="whole command",
        )
    )
    section.notes.append(
        f"Target spacing {spacing} mm (nnU-Net's plan, passed to scnas). Median of {opts.repeats} interleaved "
        "runs after one untimed run of each (which the agreement check reads)."
    )
    return section
