"""Checkpoints: written atomically, read with `weights_only=True` (a checkpoint can never run code)."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from scnas.errors import ScnasError, describe_os_error
from scnas.io import save_torch

MODEL_FORMAT = "scnas-model"
MODEL_VERSION = 2
"""Version 2 records the training run's provenance; version 1 files (no fingerprint, old plans) are refused."""
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNSUPPORTED = re.compile(r"(Unsupported [^.\n]*)")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    save_torch(path, state)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a damaged, foreign or code-carrying file gives one line naming it."""
    path = Path(path)
    if path.is_dir():
        raise ScnasError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise ScnasError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ScnasError(f"{path}: {_unpickling_problem(str(e))}") from None
    except OSError as e:
        raise ScnasError(describe_os_error(e, path)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise ScnasError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise ScnasError(f"{path}: not an SCNAS checkpoint (holds a {type(state).__name__})")
    return state


def _unpickling_problem(message: str) -> str:
    """What a safe load refused, in SCNAS's words (torch's own message advises weights_only=False)."""
    found = _GLOBAL.search(message)
    if found:
        return (
            f"not a readable checkpoint: refused, it holds a pickled Python object (GLOBAL {found.group(1)}) "
            "that a safe load cannot run; only checkpoints written by SCNAS can be loaded"
        )
    unsupported = _UNSUPPORTED.search(message)
    detail = unsupported.group(1).strip() if unsupported else _first_line(Exception(message))
    return f"not a readable checkpoint (damaged, or not written by torch.save: {detail})"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def load_model_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A final model checkpoint (what `scnas predict` takes), with its format and version checked."""
    state = load_checkpoint(path, map_location)
    if state.get("format") != MODEL_FORMAT:
        raise ScnasError(f"{path}: not an SCNAS model checkpoint (use a fold's checkpoint_final.pt)")
    version = state.get("version")
    if version is None:
        raise ScnasError(f"{path}: model checkpoint has no version (this SCNAS reads version {MODEL_VERSION})")
    if not isinstance(version, int) or isinstance(version, bool) or version != MODEL_VERSION:
        known = isinstance(version, int) and not isinstance(version, bool)
        age = "newer than this SCNAS supports" if known and version > MODEL_VERSION else "unknown"
        if known and 1 <= version < MODEL_VERSION:
            age = "from an older SCNAS; train the fold again"
        raise ScnasError(
            f"{path}: model checkpoint version {version!r} is {age} (this SCNAS reads version {MODEL_VERSION})"
        )
    for key in ("model", "state_dict", "plans", "provenance"):
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
