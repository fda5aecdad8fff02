"""The test-set predictions of a study, for the workflow: each task's test images (MSD `test` or imagesTs/,
nnU-Net v2 imagesTs/) segmented by each model's fold ensemble, only for tasks that have test images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from scnas.config import Config
from scnas.data.dataset import list_test_cases
from scnas.errors import DatasetError
from scnas.layout import Layout


def listed_cases(dataset_dir: str | os.PathLike) -> dict[str, tuple[Path, ...]] | None:
    """The task's test cases (case -> image files); {} when it has none or its dataset.json is not there yet
    (a synthetic task before the synth rule), None when they cannot be listed: the rule then runs and its
    log says why."""
    if not (Path(dataset_dir) / "dataset.json").is_file():
        return {}
    try:
        return list_test_cases(dataset_dir)
    except DatasetError:
        return None


def image_files(dataset_dir: str | os.PathLike) -> list[str]:
    """Every test image file of the task (the rule's input: a changed or added one reruns the ensemble)."""
    return [str(p) for files in (listed_cases(dataset_dir) or {}).values() for p in files]


def ensemble_targets(cfg: Config, layout: Layout, tasks: Sequence[str]) -> list[str]:
    """RESULTS/TASK/MODEL/test_predictions/predictions.json for every model of every task with test images."""
    return [
        layout.test_manifest(task, run)
        for task in tasks
        if listed_cases(cfg.dataset_dir(task)) != {}
        for run in cfg.runs_for(task)
    ]
