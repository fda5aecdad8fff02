"""Checkpoints: written atomically, read with `weights_only=True` (a checkpoint can never run code)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from scnas.errors import ScnasError
from scnas.io import save_torch

MODEL_FORMAT = "scnas-model"
MODEL_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    save_torch(path, state)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a damaged or foreign file gives one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise ScnasError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ScnasError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(state, dict):
        raise ScnasError(f"{path}: not an SCNAS checkpoint (holds a {type(state).__name__})")
    return state


def load_model_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A final model checkpoint (what `scnas predict` takes), with its format checked."""
    state = load_checkpoint(path, map_location)
    if state.get("format") != MODEL_FORMAT:
        raise ScnasError(f"{path}: not an SCNAS model checkpoint (use a fold's checkpoint_final.pt)")
    if state.get("version", 0) > MODEL_VERSION:
        raise ScnasError(
            f"{path}: model checkpoint version {state['version']} is newer than this SCNAS supports ({MODEL_VERSION})"
        )
    for key in ("model", "state_dict", "plans"):
        if key not in state:
            raise ScnasError(f"{path}: model checkpoint lacks {key!r}")
    return state


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, refusing a checkpoint made for another architecture with one clear line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise ScnasError(
            f"{source}: checkpoint is for another architecture "
            f"({len(missing)} missing and {len(unexpected)} unexpected parameters, e.g. {example!r})"
        )
    for key, value in state_dict.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ScnasError(
                f"{source}: checkpoint is for another architecture (parameter {key!r} has shape "
                f"{tuple(value.shape)}, the model expects {tuple(own[key].shape)})"
            )
    model.load_state_dict(state_dict)
