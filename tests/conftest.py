"""Shared fixtures: small synthetic MSD tasks and their preprocessed form, built once per session."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

from scnas.config import AugmentationConfig

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Every augmentation off (each p_* probability of AugmentationConfig): for comparisons that must see exactly
# the same batches.
NO_AUG = {f.name: 0.0 for f in dataclasses.fields(AugmentationConfig) if f.name.startswith("p_")}


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running the `scnas` / `snakemake` commands of this venv in a subprocess."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["SCNAS_PROGRESS"] = "0"
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): the CI machine
    is shared, and its timings and memory measurements must not depend on oversubscription."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> dict[str, Path]:
    """A 6-case synthetic heart task, preprocessed at 2 mm with 5-fold splits."""
    from scnas.config import task_settings
    from scnas.data.dataset import parse_dataset
    from scnas.data.preprocess import preprocess_dataset
    from scnas.data.splits import make_splits, write_splits
    from scnas.data.synthetic import make_synthetic_task

    root = tmp_path_factory.mktemp("tiny")
    raw = make_synthetic_task("heart", root / "raw", cases=6, seed=0, size=24)
    stage = task_settings({"preprocess": {"spacing": [2.0, 2.0, 2.0]}, "plan": {"patch_size": [16, 16, 16]}})
    dataset = parse_dataset(raw)
    preprocess_dataset(dataset, stage.preprocess, stage.plan, root / "pre", progress=False)
    write_splits(root / "splits_final.json", make_splits(dataset.case_ids, 5, 0))
    return {"raw": raw, "pre": root / "pre", "splits": root / "splits_final.json", "root": root}
