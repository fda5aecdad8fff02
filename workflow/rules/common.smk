import json
import os
import re
import sys
from pathlib import Path

from scnas.config import coerce_strings, from_dict
from scnas.errors import ConfigError
from scnas.layout import NNUNET, Layout, model_of

try:
    CFG = from_dict(coerce_strings(config))
except ConfigError as error:
    sys.exit(f"scnas: error in the Snakemake config: {error}")
RES = CFG.results
L = Layout(RES)
TASKS = list(CFG.study_tasks)
# The transfer source may lie outside the study: only its search of the source fold runs then.
KNOWN_TASKS = TASKS + [t for t in [CFG.transfer.source_task] if t and t not in TASKS]
SYNTHETIC = [t for t in KNOWN_TASKS if CFG.task(t).synthetic is not None]
ENV = "../../envs/scnas.yaml"
# A heavy rule's process either waits for a SLURM job or does the work itself; on a small machine two
# single-threaded trainings get more done than one with two threads (the networks are many small ops).
HEAVY_THREADS = 1 if CFG.launcher.executor == "slurm" else max(1, (workflow.cores or 1) // 2)


def dataset_problem(task):
    """The config key and what is wrong when `task`'s dataset folder or its dataset.json is missing: one line
    here, instead of Snakemake's MissingInputException ending in a path."""
    folder = Path(os.path.abspath(CFG.dataset_dir(task)))
    if (folder / "dataset.json").is_file():
        return None
    root = Path(os.path.abspath(os.path.expanduser(CFG.data_root)))
    if not Path(os.path.expanduser(CFG.task(task).dataset)).is_absolute() and not root.is_dir():
        given = [CFG.task(t).dataset for t in KNOWN_TASKS if t not in SYNTHETIC]
        folders = ", ".join(d for d in given if not os.path.isabs(os.path.expanduser(d)))
        return (
            f"config key data_root: folder {root} does not exist (it should hold the task folders {folders}); "
            "set data_root in your config file or with --config data_root=DIR"
        )
    key = f"config key tasks.{task}.dataset"
    if not folder.exists():
        return f"{key}: folder {folder} does not exist"
    if not folder.is_dir():
        return f"{key}: {folder} is not a folder"
    return f"{key}: {folder} has no dataset.json (an MSD task or nnU-Net v2 dataset folder has one)"


# `snakemake --lint` judges the workflow, not this machine's data (it skips the environment variables too).
if workflow.check_envvars:
    for _real_task in [t for t in KNOWN_TASKS if t not in SYNTHETIC]:
        if _problem := dataset_problem(_real_task):
            sys.exit(f"scnas: error in the Snakemake config: {_problem}")


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


wildcard_constraints:
    task=_alternatives(KNOWN_TASKS),
    model=r"uresnet|scnas|scnas_transfer|random_\d+|nnunet",
    draw=r"\d+",
    fold=r"\d+",


def dataset_dir(task):
    return str(CFG.dataset_dir(task))


def dataset_json(wildcards):
    return f"{dataset_dir(wildcards.task)}/dataset.json"


def stage_settings(task, *sections):
    """The settings of one stage as inline JSON: a change to them reruns that stage (and only it)."""
    stage = CFG.settings_dict(task)
    return json.dumps({k: stage[k] for k in ("seed", *sections)}, separators=(",", ":"))


def launcher_settings(task):
    """Passed as a resource, not a param: changing partition or GPUs must not rerun finished work."""
    return json.dumps(CFG.settings_dict(task)["launcher"], separators=(",", ":"))


def gpus(task, stage):
    """GPUs one job of `stage` holds (gpus_per_node * nodes; 0 when it asks for none): the rule's `gpu`
    resource, so that `snakemake --resources gpu=N` runs only the heavy jobs that fit on N GPUs at once."""
    res = CFG.settings(task).launcher.resources(stage)
    return (res.gpus_per_node or 0) * (res.nodes or 1)


def genotype_for(wildcards):
    if wildcards.model == "scnas":
        return L.genotype(wildcards.task, wildcards.fold)
    if wildcards.model == "scnas_transfer":
        return L.genotype(CFG.transfer.source_task, CFG.transfer.source_fold)
    if model_of(wildcards.model) == "random":
        return L.random_genotype(wildcards.task, wildcards.model.split("_")[-1])
    return []


def fold_metrics(task):
    """Every fold's metrics of the task's models, and of the nnU-Net reference where it runs."""
    reference = [L.metrics(task, NNUNET, fold) for fold in CFG.reference_folds(task)]
    return [L.metrics(task, run, fold) for run in CFG.runs_for(task) for fold in CFG.folds] + reference


def study_targets():
    """The tables, and every fold's checkpoint and summary: naming them as targets makes a deleted
    checkpoint (or fold folder) rerun that fold, which Snakemake does not do for intermediate files."""
    folds = [
        path
        for task in TASKS
        for run in CFG.runs_for(task)
        for fold in CFG.folds
        for path in (L.checkpoint(task, run, fold), L.summary(task, run, fold))
    ]
    return folds + [L.cv_table(task) + ".md" for task in TASKS] + [L.cv_table() + ".md"]
