"""Segment NIfTI scans with a trained model: preprocess as in training, sliding-window prediction with
optional test-time mirroring, then map the result back onto each input's own grid and header."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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
from scnas.io import ensure_output_dir, read_json, write_json
from scnas.layout import MANIFEST
from scnas.models.factory import build_model
from scnas.train.checkpoint import load_model_checkpoint, load_weights
from scnas.train.distributed import DistContext, init_distributed
from scnas.train.engine import Precision, progress
from scnas.train.loop import output_lock, reusable

log = logging.getLogger("scnas.predict")


@dataclass
class LoadedModel:
    network: torch.nn.Module
    plans: Plans
    source: str
    fingerprint: str
    """The provenance fingerprint of the training run that made the weights."""


def load_model(checkpoint: str | os.PathLike, device: torch.device) -> LoadedModel:
    """A final checkpoint as a ready network (eval mode), refusing foreign or damaged files."""
    state = load_model_checkpoint(checkpoint)
    network = build_model(state["model"])
    load_weights(network, state["state_dict"], str(checkpoint))
    network.to(device).eval()
    made_by = Provenance.from_dict(state["provenance"], str(checkpoint)).fingerprint
    return LoadedModel(network, Plans.from_dict(state["plans"], str(checkpoint)), str(checkpoint), made_by)


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(case id, path) for every NIfTI named, or found in a named folder; one-line errors otherwise."""
    found: list[tuple[str, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
            if not files:
                raise ScnasError(f"{path}: folder holds no .nii/.nii.gz image")
            found += [(case_id_from_path(p.name), p) for p in files]
        elif path.is_file():
            found.append((case_id_from_path(path.name), path))
        else:
            raise ScnasError(f"{path}: no such file or folder")
    ids = [c for c, _ in found]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise ScnasError(f"{dupes[0]}: two input images would write the same prediction file")
    return found


def predict_volume(
    model: LoadedModel, image: np.ndarray, affine: np.ndarray, settings: InferenceConfig, device: torch.device
) -> np.ndarray:
    """Label map (X, Y, Z) on the image's own grid, in the dataset's label values."""
    pre, _, props = preprocess_arrays(image, affine, model.plans)
    precision = Precision(device, settings.amp)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return torch.softmax(model.network(x).float(), dim=1)

    with torch.no_grad():
        probs = sliding_window(
            torch.from_numpy(pre).to(device),
            predictor,
            model.plans.patch_size,
            overlap=settings.overlap,
            mode=settings.mode,
            batch_size=settings.batch_size,
            mirror_axes=(0, 1, 2) if settings.mirror else (),
        )
    restored = restore(probs.float().cpu().numpy(), props, kind="probabilities")
    return np.asarray(model.plans.label_values, dtype=np.int16)[restored.argmax(0)]


def predict_files(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    settings: InferenceConfig,
    ctx: DistContext | None = None,
) -> list[Path]:
    """Segment every input image into out_dir/<case>.nii.gz; cases are shared out across processes.

    All inputs are validated before anything is written, so a bad scan stops the run with no output.
    """
    ctx = ctx or init_distributed()
    out = Path(out_dir)
    model = load_model(checkpoint, ctx.device)
    images = collect_images(inputs)
    problems = [p for _, path in images for p in check_image(path, model.plans.num_channels)]
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ScnasError(problems[0] + more)
    provenance = Provenance.of(
        {
            "stage": "predict",
            "model": model.fingerprint,
            "inference": dataclass_to_dict(settings),
            "images": {c: str(path) for c, path in images},
        }
    )
    names = {c: f"{c}.nii.gz" for c, _ in images}
    manifest = out / MANIFEST
    if ctx.is_main:
        ensure_output_dir(out, "predictions folder")
    ctx.barrier()
    with output_lock(ctx, out, "prediction", [MANIFEST, *names.values()]):
        if manifest.is_file() and all((out / n).is_file() for n in names.values()):
            if reusable(read_json(manifest).get("provenance"), provenance, manifest, "predicting"):
                log.info("%s exists with identical settings: predictions already made", manifest)
                return [out / n for n in names.values()]
        ctx.barrier()
        if ctx.is_main:
            manifest.unlink(missing_ok=True)
        mine = images[ctx.rank :: ctx.world_size]
        written = []
        for case_id, path in progress(mine, len(mine), "predict", ctx.is_main):
            image, affine = load_image(path)
            labels = predict_volume(model, image, affine, settings, ctx.device)
            target = out / names[case_id]
            save_nifti(target, labels, affine, like=path, dtype=np.uint8 if labels.max() < 256 else np.int16)
            written.append(target)
            log.info("wrote %s", target)
        ctx.barrier()
        if ctx.is_main:
            write_json(manifest, {"checkpoint": str(checkpoint), "cases": names, "provenance": provenance.to_dict()})
    return written
