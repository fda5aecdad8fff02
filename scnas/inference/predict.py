"""Segment NIfTI scans with a trained model: preprocess as in training, sliding-window prediction with
optional test-time mirroring, then map the result back onto each input's own grid and header."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from scnas.config import InferenceConfig
from scnas.data.check import check_image
from scnas.data.dataset import NIFTI_SUFFIXES, case_id_from_path
from scnas.data.nifti import load_image, save_nifti
from scnas.data.preprocess import preprocess_arrays, restore
from scnas.errors import ScnasError
from scnas.inference.sliding_window import sliding_window
from scnas.io import write_json
from scnas.models.factory import build_model
from scnas.train.checkpoint import load_model_checkpoint, load_weights
from scnas.train.distributed import DistContext, init_distributed
from scnas.train.engine import Precision, progress

log = logging.getLogger("scnas.predict")


@dataclass
class LoadedModel:
    network: torch.nn.Module
    plans: dict[str, Any]
    label_values: list[int]
    source: str


def load_model(checkpoint: str | os.PathLike, device: torch.device) -> LoadedModel:
    """A final checkpoint as a ready network (eval mode), refusing foreign or damaged files."""
    state = load_model_checkpoint(checkpoint)
    network = build_model(state["model"])
    load_weights(network, state["state_dict"], str(checkpoint))
    network.to(device).eval()
    labels = sorted(int(k) for k in state["plans"]["labels"])
    return LoadedModel(network, state["plans"], labels, str(checkpoint))


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
            model.plans["patch_size"],
            overlap=settings.overlap,
            mode=settings.mode,
            batch_size=settings.batch_size,
            mirror_axes=(0, 1, 2) if settings.mirror else (),
        )
    restored = restore(probs.float().cpu().numpy(), props, kind="probabilities")
    return np.asarray(model.label_values, dtype=np.int16)[restored.argmax(0)]


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
    problems = [p for _, path in images for p in check_image(path, int(model.plans["num_channels"]))]
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ScnasError(problems[0] + more)
    mine = images[ctx.rank :: ctx.world_size]
    written = []
    for case_id, path in progress(mine, len(mine), "predict", ctx.is_main):
        image, affine = load_image(path)
        labels = predict_volume(model, image, affine, settings, ctx.device)
        target = out / f"{case_id}.nii.gz"
        save_nifti(target, labels, affine, like=path, dtype=np.uint8 if labels.max() < 256 else np.int16)
        written.append(target)
        log.info("wrote %s", target)
    ctx.barrier()
    if ctx.is_main:
        write_json(
            out / "predictions.json", {"checkpoint": str(checkpoint), "cases": {c: f"{c}.nii.gz" for c, _ in images}}
        )
    return written
