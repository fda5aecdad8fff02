"""Segment NIfTI scans with a trained fold model, or with the ensemble of a model's folds: preprocess as in
training, sliding-window softmax with optional test-time mirroring, the mean of the folds' probabilities
(nnU-Net's fold ensemble), then the result mapped back onto each input's own grid and header."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import torch

from scnas.config import InferenceConfig, dataclass_to_dict
from scnas.data.check import check_image
from scnas.data.dataset import NIFTI_SUFFIXES, case_id_from_path
from scnas.data.nifti import load_image, save_nifti
from scnas.data.plans import Plans
from scnas.data.transforms import preprocess_arrays, restore
from scnas.errors import ScnasError
from scnas.fingerprint import Provenance
from scnas.inference.sliding_window import sliding_window
from scnas.io import atomic_path, ensure_output_dir, read_json, write_json
from scnas.layout import CHECKPOINT, MANIFEST, fold_dirs, fold_name
from scnas.models.factory import build_model
from scnas.train.checkpoint import load_model_checkpoint, load_weights
from scnas.train.distributed import DistContext, init_distributed
from scnas.train.engine import Precision, progress
from scnas.train.loop import output_lock, reusable

log = logging.getLogger("scnas.predict")
PathLike = Union[str, os.PathLike]
_CHANNEL_FILE = re.compile(r"(.+)_(\d{4})")
PROBABILITIES_KEY = "probabilities"


@dataclass
class LoadedModel:
    network: torch.nn.Module
    plans: Plans
    source: str
    fingerprint: str
    """The provenance fingerprint of the training run that made the weights."""


def load_model(checkpoint: PathLike, device: torch.device) -> LoadedModel:
    """A final checkpoint as a ready network (eval mode), refusing foreign or damaged files."""
    state = load_model_checkpoint(checkpoint)
    network = build_model(state["model"])
    load_weights(network, state["state_dict"], str(checkpoint))
    network.to(device).eval()
    made_by = Provenance.from_dict(state["provenance"], str(checkpoint)).fingerprint
    return LoadedModel(network, Plans.from_dict(state["plans"], str(checkpoint)), str(checkpoint), made_by)


def model_checkpoints(model: PathLike, folds: Sequence[int] | None = None) -> list[Path]:
    """The checkpoints `--model` names: a checkpoint file itself, or the final checkpoint of every fold_K of a
    model folder (RESULTS/TASK/MODEL), or of `folds`; a fold that has not finished training is refused."""
    path = Path(model)
    if not path.is_dir():
        if folds:
            raise ScnasError(f"--folds: {path} is one checkpoint; give its model folder (RESULTS/TASK/MODEL) instead")
        return [path]
    found = fold_dirs(path)
    if not found:
        raise ScnasError(
            f"{path}: holds no fold_K folder: give a model folder RESULTS/TASK/MODEL, or one fold's {CHECKPOINT}"
        )
    wanted = list(dict.fromkeys(folds)) if folds else list(found)
    absent = [k for k in wanted if k not in found]
    if absent:
        raise ScnasError(f"{path}: no {fold_name(absent[0])} (folds found: {', '.join(map(str, found))})")
    finished = [k for k in found if (found[k] / CHECKPOINT).is_file()]
    if not finished:
        raise ScnasError(f"{path}: no fold has finished training (no fold_K/{CHECKPOINT})")
    unfinished = [k for k in wanted if k not in finished]
    if unfinished:
        raise ScnasError(
            f"{found[unfinished[0]] / CHECKPOINT}: not found: fold {unfinished[0]} has not finished training; "
            f"wait for it, or ensemble the finished folds with --folds {' '.join(map(str, finished))}"
        )
    return [found[k] / CHECKPOINT for k in wanted]


def check_agreement(models: Sequence[tuple[str, Plans]]) -> None:
    """Refuse, in one line naming both checkpoints, an ensemble whose members predict other labels, read
    other channels or were trained on other plans (each (source, plans) against the first)."""
    first, reference = models[0]
    for source, plans in models[1:]:
        if plans.labels != reference.labels:
            what = f"predicts labels {plans.labels}, {first} predicts {reference.labels}"
        elif plans.num_channels != reference.num_channels:
            what = f"reads {plans.num_channels} channels, {first} reads {reference.num_channels}"
        elif plans.fingerprint != reference.fingerprint:
            what = f"was trained on other plans ({plans.fingerprint}) than {first} ({reference.fingerprint})"
        else:
            continue
        raise ScnasError(f"{source}: cannot be ensembled: it {what}; ensemble the folds of one preprocessed task")


def collect_images(inputs: Sequence[PathLike | Sequence[PathLike]], num_channels: int) -> dict[str, tuple[Path, ...]]:
    """Case id -> image files for every input: a NIfTI file, a folder of them, or one case's channel files.

    Files named nnU-Net's way (CASE_XXXX, every case with the channels 0000 to C-1 the model reads) are
    one case per CASE; otherwise each file is a case named after it. One-line errors otherwise.
    """
    files: list[Path] = []
    found: list[tuple[str, tuple[Path, ...]]] = []
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            channels = tuple(Path(p) for p in item)
            if not channels:
                raise ScnasError("an input case lists no image files")
            found.append((_channel_case_id(channels[0]), channels))
            continue
        path = Path(item)
        if path.is_dir():
            listed = sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
            if not listed:
                raise ScnasError(f"{path}: folder holds no .nii/.nii.gz image")
            files += listed
        elif path.is_file():
            files.append(path)
        else:
            raise ScnasError(f"{path}: no such file or folder")
    grouped = _channel_cases(files, num_channels)
    found += list(grouped.items()) if grouped is not None else [(case_id_from_path(p.name), (p,)) for p in files]
    ids = [c for c, _ in found]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise ScnasError(f"{dupes[0]}: two input images would write the same prediction file")
    return dict(found)


def _channel_case_id(first: Path) -> str:
    match = _CHANNEL_FILE.fullmatch(case_id_from_path(first.name))
    return match.group(1) if match and match.group(2) == "0000" else case_id_from_path(first.name)


def _channel_cases(files: list[Path], num_channels: int) -> dict[str, tuple[Path, ...]] | None:
    """{case: channel files} when every file is CASE_XXXX and every case has exactly 0000..C-1, else None."""
    by_case: dict[str, dict[int, Path]] = {}
    for path in files:
        match = _CHANNEL_FILE.fullmatch(case_id_from_path(path.name))
        if match is None:
            return None
        channels = by_case.setdefault(match.group(1), {})
        if int(match.group(2)) in channels:
            return None
        channels[int(match.group(2))] = path
    if not by_case or any(sorted(c) != list(range(num_channels)) for c in by_case.values()):
        return None
    return {case: tuple(channels[c] for c in range(num_channels)) for case, channels in sorted(by_case.items())}


def predict_probabilities(
    models: Sequence[LoadedModel],
    image: np.ndarray,
    affine: np.ndarray,
    settings: InferenceConfig,
    device: torch.device,
) -> np.ndarray:
    """Softmax probabilities (K, X, Y, Z) float32 on the image's own grid: the mean over `models` (which
    share their plans) of each one's sliding-window softmax, summed one model at a time."""
    plans = models[0].plans
    pre, _, props = preprocess_arrays(image, affine, plans)
    volume = torch.from_numpy(pre).to(device)
    precision = Precision(device, settings.amp)
    total = None
    for model in models:

        def predictor(x: torch.Tensor, network: torch.nn.Module = model.network) -> torch.Tensor:
            with precision.autocast():
                return torch.softmax(network(x).float(), dim=1)

        with torch.no_grad():
            probs = sliding_window(
                volume,
                predictor,
                plans.patch_size,
                overlap=settings.overlap,
                mode=settings.mode,
                batch_size=settings.batch_size,
                mirror_axes=(0, 1, 2) if settings.mirror else (),
            )
        total = probs if total is None else total.add_(probs)
        del probs
    if len(models) > 1:
        total /= len(models)
    return restore(total.float().cpu().numpy(), props, kind="probabilities")


def label_map(probabilities: np.ndarray, plans: Plans) -> np.ndarray:
    """The most probable label of every voxel, in the dataset's label values."""
    return np.asarray(plans.label_values, dtype=np.int16)[probabilities.argmax(0)]


def write_probabilities(
    out: Path, case_id: str, probabilities: np.ndarray, affine: np.ndarray, plans: Plans, images: Sequence[Path]
) -> tuple[Path, Path]:
    """out/CASE.npz (key `probabilities`, float32 (K, X, Y, Z), nnU-Net's file) and, where nnU-Net writes a
    pickle, out/CASE.json: the grid the probabilities lie on (affine, shape, spacing) and the label of each K."""
    npz, geometry = out / f"{case_id}.npz", out / f"{case_id}.json"
    with atomic_path(npz, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{PROBABILITIES_KEY: probabilities.astype(np.float32, copy=False)})
    write_json(
        geometry,
        {
            "case": case_id,
            "images": [str(p) for p in images],
            "axes": "probabilities[k, x, y, z]: k the label of `labels` in this order, x, y, z the image's voxel axes",
            "labels": {str(v): plans.labels[v] for v in plans.label_values},
            "shape": list(probabilities.shape[1:]),
            "spacing": [float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)],
            "affine": np.asarray(affine, dtype=np.float64).tolist(),
        },
    )
    return npz, geometry


def predict_files(
    checkpoint: PathLike | Sequence[PathLike],
    inputs: Sequence[PathLike | Sequence[PathLike]],
    out_dir: PathLike,
    settings: InferenceConfig,
    ctx: DistContext | None = None,
    cases: Mapping[str, Sequence[PathLike]] | None = None,
    save_probabilities: bool = False,
) -> list[Path]:
    """Segment every input (see collect_images) and every named case into out_dir/<case>.nii.gz with one
    checkpoint, or with the mean probabilities of several (a fold ensemble); with `save_probabilities` also
    CASE.npz and CASE.json (write_probabilities). Cases are shared out across processes.

    All checkpoints and inputs are validated before anything is written, so a bad one stops the run with
    no output.
    """
    ctx = ctx or init_distributed()
    out = Path(out_dir)
    checkpoints = [checkpoint] if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint)
    models = [load_model(c, ctx.device) for c in checkpoints]
    check_agreement([(m.source, m.plans) for m in models])
    plans = models[0].plans
    images = collect_images(inputs, plans.num_channels)
    for case_id, files in (cases or {}).items():
        if case_id in images:
            raise ScnasError(f"{case_id}: two input images would write the same prediction file")
        images[case_id] = tuple(Path(p) for p in files)
    clash = [c for c in images if f"{c}.json" == MANIFEST]
    if save_probabilities and clash:
        raise ScnasError(f"case {clash[0]!r}: its geometry file {clash[0]}.json would overwrite {out / MANIFEST}")
    problems = [p for files in images.values() for p in check_image(_one_or_all(files), plans.num_channels)]
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ScnasError(problems[0] + more)
    provenance = Provenance.of(
        {
            "stage": "predict",
            "model": models[0].fingerprint if len(models) == 1 else [m.fingerprint for m in models],
            "inference": dataclass_to_dict(settings),
            "images": {c: str(files[0]) if len(files) == 1 else [str(p) for p in files] for c, files in images.items()},
            **({"save_probabilities": True} if save_probabilities else {}),
        }
    )
    names = {c: f"{c}.nii.gz" for c in images}
    extra = {c: [f"{c}.npz", f"{c}.json"] for c in images} if save_probabilities else {}
    outputs = [*names.values(), *(name for pair in extra.values() for name in pair)]
    manifest = out / MANIFEST
    if ctx.is_main:
        ensure_output_dir(out, "predictions folder")
    ctx.barrier()
    with output_lock(ctx, out, "prediction", [MANIFEST, *outputs]):
        if manifest.is_file() and all((out / n).is_file() for n in outputs):
            if reusable(read_json(manifest).get("provenance"), provenance, manifest, "predicting"):
                log.info("%s exists with identical settings: predictions already made", manifest)
                return [out / n for n in names.values()]
        ctx.barrier()
        if ctx.is_main:
            _drop_previous(out, manifest, keep=set(outputs))
        mine = list(images.items())[ctx.rank :: ctx.world_size]
        written = []
        for case_id, files in progress(mine, len(mine), "predict", ctx.is_main):
            image, affine = load_image(_one_or_all(files))
            probs = predict_probabilities(models, image, affine, settings, ctx.device)
            if save_probabilities:
                write_probabilities(out, case_id, probs, affine, plans, files)
            labels = label_map(probs, plans)
            target = out / names[case_id]
            save_nifti(target, labels, affine, like=files[0], dtype=np.uint8 if labels.max() < 256 else np.int16)
            written.append(target)
            log.info("wrote %s", target)
        ctx.barrier()
        if ctx.is_main:
            record = {"checkpoints": [str(c) for c in checkpoints], "cases": names}
            if save_probabilities:
                record["probabilities"] = {c: pair[0] for c, pair in extra.items()}
            write_json(manifest, {**record, "provenance": provenance.to_dict()})
    return written


def _drop_previous(out: Path, manifest: Path, keep: set[str]) -> None:
    """Remove the manifest, and the probability files it lists that this run will not write again."""
    if manifest.is_file():
        try:
            listed = read_json(manifest).get("probabilities") or {}
        except (ValueError, AttributeError):
            listed = {}
        for case_id, name in listed.items() if isinstance(listed, dict) else ():
            for stale in (str(name), f"{case_id}.json"):
                if stale not in keep and "/" not in stale and stale != MANIFEST:
                    (out / stale).unlink(missing_ok=True)
    manifest.unlink(missing_ok=True)


def _one_or_all(files: Sequence[Path]) -> Path | tuple[Path, ...]:
    """What load_image and check_image take: the file of a one-file case, else the channel files."""
    return files[0] if len(files) == 1 else tuple(files)
