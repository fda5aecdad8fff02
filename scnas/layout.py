"""The results layout, built and parsed in one place: the rules, the CLI, the job names and the tables use it.

    RESULTS/{task}/raw/                          synthetic tasks only
    RESULTS/{task}/check.json
    RESULTS/{task}/splits_final.json
    RESULTS/{task}/preprocessed/plans.json       + one set of files per case
    RESULTS/{task}/search/fold_{k}/genotype.json + search_log.csv, alpha_history.json
    RESULTS/{task}/{model}/fold_{k}/             checkpoint_final.pt, predictions/, metrics.csv, summary.json
    RESULTS/{task}/{model}/test_predictions/     the folds' ensemble on the task's test images
    RESULTS/{task}/random_{j}/genotype.json      draw j of the random-genotype control (model folder random_j)
    RESULTS/{task}/cv_table.{csv,md,tex}, cv_table_hd95.{csv,md,tex}, cv_table_cost.{csv,md}
    RESULTS/cv_table.{csv,md,tex} (and _hd95, _cost as per task)
    RESULTS/{task}/logs/                         one log per rule and job

Every method takes plain strings too, so `Layout(RES).fold("{task}", "{model}", "{fold}")` is a
Snakemake pattern.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

FOLD_PREFIX = "fold_"
FOLD_DIR = re.compile(r"^fold_(\d+)$")
SEARCH = "search"
CHECKPOINT = "checkpoint_final.pt"
GENOTYPE = "genotype.json"
SEARCH_LOG = "search_log.csv"
ALPHA_HISTORY = "alpha_history.json"
SEARCH_SUMMARY = "search_summary.json"
TRAINING_LOG = "training_log.csv"
LOGS = "logs"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
PREDICTIONS = "predictions"
MANIFEST = "predictions.json"
MODEL_INFO = "model.json"
TEST_PREDICTIONS = "test_predictions"


def fold_name(fold: int | str) -> str:
    return f"{FOLD_PREFIX}{fold}"


NNUNET = "nnunet"
"""The model folder of the nnU-Net v2 reference runs."""
NNUNET_FOLDERS = "nnUNet"
"""Inside it, nnU-Net's own nnUNet_raw, nnUNet_preprocessed and nnUNet_results."""

RANDOM = "random"
"""The random-genotype control; its draws are the model folders random_0, random_1, ..."""
RANDOM_RUN = re.compile(rf"^{RANDOM}_(\d+)$")


def model_of(run: str) -> str:
    """The model a model folder trains: random_3 -> random; every other folder is named by its model."""
    return "random" if RANDOM_RUN.match(run) else run


@dataclass(frozen=True)
class Layout:
    """Paths of one study's results folder (`results` in the config)."""

    root: str

    def _p(self, *parts: object) -> str:
        return os.path.join(self.root, *map(str, parts))

    def task(self, task: str) -> str:
        return self._p(task)

    def raw(self, task: str) -> str:
        return self._p(task, "raw")

    def check(self, task: str) -> str:
        return self._p(task, "check.json")

    def splits(self, task: str) -> str:
        return self._p(task, "splits_final.json")

    def preprocessed(self, task: str) -> str:
        return self._p(task, "preprocessed")

    def plans(self, task: str) -> str:
        return self._p(task, "preprocessed", "plans.json")

    def search(self, task: str, fold: int | str) -> str:
        return self._p(task, SEARCH, fold_name(fold))

    def genotype(self, task: str, fold: int | str) -> str:
        return self._p(task, SEARCH, fold_name(fold), GENOTYPE)

    def model(self, task: str, model: str) -> str:
        return self._p(task, model)

    def test_predictions(self, task: str, model: str) -> str:
        return self._p(task, model, TEST_PREDICTIONS)

    def test_manifest(self, task: str, model: str) -> str:
        return self._p(task, model, TEST_PREDICTIONS, MANIFEST)

    def fold(self, task: str, model: str, fold: int | str) -> str:
        return self._p(task, model, fold_name(fold))

    def random_genotype(self, task: str, draw: int | str) -> str:
        """The genotype of random-control draw `draw`, beside its folds."""
        return self._p(task, f"random_{draw}", GENOTYPE)

    def checkpoint(self, task: str, model: str, fold: int | str) -> str:
        return self._p(task, model, fold_name(fold), CHECKPOINT)

    def predictions(self, task: str, model: str, fold: int | str) -> str:
        return self._p(task, model, fold_name(fold), PREDICTIONS)

    def manifest(self, task: str, model: str, fold: int | str) -> str:
        return self._p(task, model, fold_name(fold), PREDICTIONS, MANIFEST)

    def metrics(self, task: str, model: str, fold: int | str) -> str:
        return self._p(task, model, fold_name(fold), METRICS)

    def summary(self, task: str, model: str, fold: int | str) -> str:
        return self._p(task, model, fold_name(fold), SUMMARY)

    def nnunet_work(self, task: str) -> str:
        """nnU-Net's raw, preprocessed and results folders for the reference runs (model folder nnunet)."""
        return self._p(task, NNUNET, NNUNET_FOLDERS)

    def nnunet_prepared(self, task: str) -> str:
        """Written once nnU-Net has planned and preprocessed the task with the study's splits."""
        return self._p(task, NNUNET, NNUNET_FOLDERS, "prepared.json")

    def cv_table(self, task: str | None = None) -> str:
        """The tables' prefix (add .csv, .md, .tex): one task's, or the whole study's."""
        return self._p(task, "cv_table") if task else self._p("cv_table")

    def log(self, task: str | None, name: str) -> str:
        return self._p(task, LOGS, name) if task else self._p(LOGS, name)


@dataclass(frozen=True)
class FoldRef:
    """Where a fold folder sits in a layout: RESULTS/{task}/{model}/fold_{k} (model "search" for a search)."""

    results: Path
    task: str
    model: str
    fold: int

    @property
    def job_label(self) -> str:
        return f"{self.task}-{self.model}-{fold_name(self.fold)}"


def parse_fold_dir(path: str | os.PathLike) -> FoldRef | None:
    """The task, model and fold of a fold folder (or of a file or folder inside one); None if it is not one."""
    p = Path(os.path.abspath(path))
    for candidate in (p, *p.parents):
        m = FOLD_DIR.match(candidate.name)
        if m and len(candidate.parents) >= 3:
            model_dir = candidate.parent
            return FoldRef(model_dir.parent.parent, model_dir.parent.name, model_dir.name, int(m.group(1)))
    return None


def fold_dirs(model_dir: str | os.PathLike) -> dict[int, Path]:
    """The fold_K folders of a model folder, by fold number in increasing order."""
    folder = Path(model_dir)
    found = {int(m.group(1)): p for p in folder.iterdir() if p.is_dir() and (m := FOLD_DIR.match(p.name))}
    return dict(sorted(found.items()))


def job_name(stage: str, out_dir: str | os.PathLike, task: str = "") -> str:
    """A SLURM job name that tells tasks, models and folds apart: scnas-train-Task04-uresnet-fold_0, and
    scnas-predict-Task04-uresnet-test for a model's test predictions."""
    ref = parse_fold_dir(out_dir)
    out = Path(os.path.abspath(out_dir))
    if ref is not None:
        label = ref.job_label if stage != "search" else f"{ref.task}-{fold_name(ref.fold)}"
    elif out.name == TEST_PREDICTIONS and len(out.parents) >= 2:
        label = f"{out.parent.parent.name}-{out.parent.name}-test"
    else:
        label = "-".join(x for x in (task, Path(out_dir).name) if x)
    return f"scnas-{stage}-{label}"
