"""Segmentation overlays in the layout of the paper's Figure 3: for the best, median and worst validation
case of a fold (by Dice, averaged over labels and models), slices through the largest lesion in three
orientations, each input channel, the reference and every model's prediction in colour.

Images, references and predictions are shown in the scan's own voxel grid (no resampling), only turned
to the nearest RAS orientation, with each panel's aspect ratio set by the voxel spacing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from scnas.data.dataset import Dataset, parse_dataset
from scnas.data.nifti import load_image, load_label
from scnas.errors import ScnasError
from scnas.layout import MANIFEST, PREDICTIONS, RANDOM_RUN
from scnas.report import style
from scnas.report.readers import fold_folders, read_json_file, read_metrics, run_key, run_label

ROLES = ("best", "median", "worst")
# (name, axis sliced, horizontal axis, vertical axis) in RAS voxel order.
VIEWS = (("axial", 2, 0, 1), ("coronal", 1, 0, 2), ("sagittal", 0, 1, 2))
PANEL_IN = 1.75


@dataclass(frozen=True)
class Volume:
    """A case's arrays in the nearest RAS orientation, with the voxel spacing along each array axis."""

    image: np.ndarray  # (C, X, Y, Z)
    reference: np.ndarray  # (X, Y, Z)
    predictions: dict[str, np.ndarray]
    spacing: tuple[float, float, float]


def dataset_of(task_dir: str | os.PathLike) -> Path:
    """The task's MSD folder, as the check stage recorded it in check.json."""
    check = Path(task_dir) / "check.json"
    data = read_json_file(check, "dataset check report")
    if not isinstance(data, dict) or not isinstance(data.get("dataset"), str):
        raise ScnasError(f"{check}: lacks the dataset folder ('dataset'); give the dataset with --dataset")
    return Path(data["dataset"])


def fold_runs(task_dir: str | os.PathLike, fold: int) -> dict[str, Path]:
    """The model folders with an evaluated fold `fold`, keeping one random draw (the lowest) of the control."""
    task_dir = Path(task_dir)
    runs = {}
    for model_dir in sorted((p for p in task_dir.iterdir() if p.is_dir()), key=lambda p: run_key(p.name)):
        folder = fold_folders(model_dir).get(fold)
        if folder is None or not (folder / "metrics.csv").is_file():
            continue
        if RANDOM_RUN.match(model_dir.name) and any(RANDOM_RUN.match(r) for r in runs):
            continue
        runs[model_dir.name] = folder
    return runs


def pick_cases(metrics: Mapping[str, pd.DataFrame]) -> list[tuple[str, str]]:
    """[(role, case)] for the best, median and worst case by mean Dice over labels and models (NaN, a
    label absent from prediction and reference, left out); fewer when the fold has fewer cases."""
    if not metrics:
        raise ScnasError("no evaluated model for this fold")
    per_run = [m.groupby("case")["dice"].mean() for m in metrics.values()]
    score = pd.concat(per_run, axis=1).mean(axis=1).fillna(-1.0).sort_values(ascending=False, kind="stable")
    cases = list(score.index)
    picks = [("best", cases[0]), ("median", cases[(len(cases) - 1) // 2]), ("worst", cases[-1])]
    seen: set[str] = set()
    return [(role, case) for role, case in picks if not (case in seen or seen.add(case))]


def _canonical(arrays: Sequence[np.ndarray], affine: np.ndarray) -> tuple[list[np.ndarray], tuple[float, ...]]:
    """Flip and permute (X, Y, Z)-trailing arrays to the nearest RAS orientation; the spacing in that order."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    out = []
    for arr in arrays:
        lead = arr.ndim - 3
        moved = np.moveaxis(arr, list(range(lead)), list(range(3, 3 + lead))) if lead else arr
        turned = nio.apply_orientation(moved, ornt)
        out.append(np.moveaxis(turned, list(range(3, 3 + lead)), list(range(lead))) if lead else turned)
    order = np.argsort(ornt[:, 0])
    return out, tuple(float(spacing[int(i)]) for i in order)


def load_volume(dataset: Dataset, case_id: str, predictions: Mapping[str, Path]) -> Volume:
    """A case's image, reference and predictions, checked to share one grid."""
    case = dataset.case(case_id)
    if case.label is None:
        raise ScnasError(f"{dataset.root}: case {case_id} has no reference label")
    image, affine = load_image(case.image)
    reference, _ = load_label(case.label)
    preds = {}
    for run, path in predictions.items():
        pred, _ = load_label(path)
        if pred.shape != reference.shape:
            raise ScnasError(f"{path}: prediction shape {pred.shape} differs from the reference's {reference.shape}")
        preds[run] = pred
    if image.shape[1:] != reference.shape:
        raise ScnasError(f"{case.image}: image shape {image.shape[1:]} differs from its label's {reference.shape}")
    arrays, spacing = _canonical([image, reference, *preds.values()], affine)
    return Volume(arrays[0], arrays[1], dict(zip(preds, arrays[2:])), spacing)  # type: ignore[arg-type]


def lesion_slices(reference: np.ndarray) -> tuple[int, int, int]:
    """Per axis, the slice holding most of the largest connected lesion (foreground, 26-connected); the
    middle slices when the reference is empty."""
    from scipy import ndimage

    mask = reference > 0
    if not mask.any():
        return tuple(s // 2 for s in reference.shape)  # type: ignore[return-value]
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (int(np.argmax(sizes)) + 1)
    return tuple(  # type: ignore[return-value]
        int(np.argmax(largest.sum(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3)
    )


def _window(channel: np.ndarray) -> tuple[float, float]:
    values = channel[channel != 0] if np.any(channel != 0) else channel.ravel()
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _crop_box(image: np.ndarray, margin: int = 2) -> tuple[slice, slice, slice]:
    """The box around the scan's nonzero voxels (any channel), to spend the panels on the body."""
    nonzero = np.any(image != 0, axis=0)
    if not nonzero.any():
        return tuple(slice(None) for _ in range(3))  # type: ignore[return-value]
    box = []
    for axis in range(3):
        hit = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(0, hit[0] - margin), min(nonzero.shape[axis], hit[-1] + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]


def _plane(volume: np.ndarray, view: tuple[str, int, int, int], index: int) -> np.ndarray:
    """The 2D slice of a 3D array for one view, as (vertical, horizontal) for imshow(origin="lower")."""
    _, axis, horizontal, vertical = view
    plane = np.take(volume, index, axis=axis)
    rest = [a for a in range(3) if a != axis]
    return plane if rest.index(vertical) == 0 else plane.T


def plot_overlays(
    task_dir: str | os.PathLike,
    fold: int,
    out: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    title: str = "",
) -> str:
    """The overlay figure of one fold of a task's results folder (rows: case x orientation); `title`
    starts the heading, which names the cases shown."""
    task_dir = Path(task_dir)
    dataset = parse_dataset(dataset_dir if dataset_dir is not None else dataset_of(task_dir))
    runs = fold_runs(task_dir, fold)
    if not runs:
        raise ScnasError(f"{task_dir}: no model has an evaluated fold {fold} (metrics.csv)")
    metrics = {run: read_metrics(folder) for run, folder in runs.items()}
    picks = pick_cases(metrics)
    labels = dataset.foreground_labels
    colours = ListedColormap([style.label_colour(v) for v in labels])
    channels = list(dataset.modalities) or ["image"]
    columns = [*channels, "reference", *(run_label(r) for r in runs)]
    rows = len(picks) * len(VIEWS)
    fig = style.figure(PANEL_IN * len(columns), PANEL_IN * rows + 0.9)
    axes = np.atleast_2d(fig.subplots(rows, len(columns), squeeze=False))
    for p, (role, case_id) in enumerate(picks):
        volume = load_volume(dataset, case_id, {run: _prediction(folder, case_id) for run, folder in runs.items()})
        box = _crop_box(volume.image)
        image = volume.image[(slice(None), *box)]
        maps = [volume.reference[box], *(pred[box] for pred in volume.predictions.values())]
        where = lesion_slices(maps[0])
        windows = [_window(c) for c in image]
        dice = {run: float(np.nanmean(m.loc[m["case"] == case_id, "dice"])) for run, m in metrics.items()}
        for v, view in enumerate(VIEWS):
            row = p * len(VIEWS) + v
            _, axis, horizontal, vertical = view
            aspect = volume.spacing[vertical] / volume.spacing[horizontal]
            index = where[axis]
            for c in range(image.shape[0]):
                ax = axes[row, c]
                ax.imshow(
                    _plane(image[c], view, index),
                    cmap="gray",
                    origin="lower",
                    aspect=aspect,
                    vmin=windows[c][0],
                    vmax=windows[c][1],
                    interpolation="nearest",
                )
            base = _plane(image[0], view, index)
            for m, seg in enumerate(maps):
                ax = axes[row, image.shape[0] + m]
                ax.imshow(
                    base,
                    cmap="gray",
                    origin="lower",
                    aspect=aspect,
                    vmin=windows[0][0],
                    vmax=windows[0][1],
                    interpolation="nearest",
                )
                plane = _plane(seg, view, index)
                shown = np.ma.masked_where(~np.isin(plane, labels), np.searchsorted(labels, plane))
                ax.imshow(
                    shown,
                    cmap=colours,
                    origin="lower",
                    aspect=aspect,
                    vmin=-0.5,
                    vmax=len(labels) - 0.5,
                    alpha=0.55,
                    interpolation="nearest",
                )
            for c, ax in enumerate(axes[row]):
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if v == 0:
                    header = columns[c]
                    if c >= len(channels) + 1:
                        header += f"\nDice {dice[list(runs)[c - len(channels) - 1]]:.3f}"
                    elif c == len(channels):
                        header += "\n"
                    ax.set_title(header, fontsize=9)
            axes[row, 0].set_ylabel(
                f"{role}: {case_id}\n{view[0]} {index}" if v == 0 else f"{view[0]} {index}", fontsize=9
            )
    handles = [Patch(color=style.label_colour(v), alpha=0.8) for v in labels]
    fig.legend(
        handles, [dataset.labels[v] for v in labels], loc="outside lower center", ncols=len(labels), frameon=False
    )
    roles = [role for role, _ in picks]
    which = ", ".join(roles[:-1]) + f" and {roles[-1]}" if len(roles) > 1 else roles[0]
    cases = "case" if len(roles) == 1 else "cases"
    heading = f"{title or f'fold {fold}'}: {which} validation {cases} by Dice (mean over labels and models)"
    fig.suptitle(heading, fontsize=12)
    return style.save_png(fig, out)


def _prediction(fold_dir: Path, case_id: str) -> Path:
    """A case's prediction file, by the fold's predictions.json (or its usual name)."""
    folder = fold_dir / PREDICTIONS
    manifest = folder / MANIFEST
    name = f"{case_id}.nii.gz"
    if manifest.is_file():
        cases = read_json_file(manifest, "prediction manifest").get("cases") or {}
        if isinstance(cases, dict) and isinstance(cases.get(case_id), str):
            name = cases[case_id]
    path = folder / name
    if not path.is_file():
        raise ScnasError(f"{path}: prediction of case {case_id} not found")
    return path
