"""Two CPU processes (gloo, submitit's local executor) reach what one process with the whole batch does."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import NO_AUG

from scnas.config import Resources, dataclass_to_dict, task_settings
from scnas.launch import Job, run_job


def _launcher(executor: str, processes: int):
    launcher = task_settings({"launcher": {"executor": executor}}).launcher
    res = Resources(nodes=1, gpus_per_node=0, tasks_per_node=processes, cpus_per_task=1, time_min=30)
    return dataclasses.replace(launcher, poll_s=0.5, train=res, search=res, default=res)


def _run(executor: str, processes: int, target: str, kwargs: dict, log_dir) -> dict:
    launcher = _launcher(executor, processes)
    job = Job(name="dist-test", target=target, kwargs=kwargs, resources=launcher.resources("train"), log_dir=log_dir)
    return run_job(job, launcher)


@pytest.mark.timeout(300)
def test_two_processes_train_like_one_with_the_whole_batch(tiny_task, tmp_path):
    stage = dataclass_to_dict(
        task_settings(
            {
                "train": {
                    "batch_size": 4,
                    "uresnet_channels": 4,
                    "max_epochs": 2,
                    "iterations_per_epoch": 3,
                    "amp": False,
                    "augmentation": NO_AUG,
                }
            }
        )
    )
    common = {
        "preprocessed": str(tiny_task["pre"]),
        "splits": str(tiny_task["splits"]),
        "fold": 0,
        "model": "uresnet",
        "settings": stage,
    }
    one, two = tmp_path / "one" / "fold_0", tmp_path / "two" / "fold_0"
    _run("inprocess", 1, "scnas.launch.targets:train_target", {**common, "out_dir": str(one)}, tmp_path / "l1")
    _run("local", 2, "scnas.launch.targets:train_target", {**common, "out_dir": str(two)}, tmp_path / "l2")
    np.testing.assert_allclose(
        _column(one / "training_log.csv", "train_loss"), _column(two / "training_log.csv", "train_loss"), rtol=1e-4
    )
    a = torch.load(one / "checkpoint_final.pt", weights_only=True)["state_dict"]
    b = torch.load(two / "checkpoint_final.pt", weights_only=True)["state_dict"]
    init = _fresh_uresnet().state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-3, atol=1e-5)
    assert any(not torch.equal(a[k], init[k]) for k in a), "training changed no weight"


def _fresh_uresnet():
    from scnas.models.uresnet import UResNet

    torch.manual_seed(0)
    return UResNet(1, 2, base_channels=4)


def _column(path, name) -> list[float]:
    import csv

    with open(path) as f:
        return [float(row[name]) for row in csv.DictReader(f)]


@pytest.mark.timeout(300)
def test_two_process_search_samples_one_architecture_and_matches_one_process(tiny_task, tmp_path):
    stage = dataclass_to_dict(
        task_settings(
            {
                "search": {
                    "stem_channels": 8,
                    "batch_size": 2,
                    "epochs": 2,
                    "iterations_per_epoch": 2,
                    "amp": False,
                    "augmentation": NO_AUG,
                }
            }
        )
    )
    common = {"preprocessed": str(tiny_task["pre"]), "splits": str(tiny_task["splits"]), "fold": 1, "settings": stage}
    one, two = tmp_path / "one", tmp_path / "two"
    _run("inprocess", 1, "scnas.launch.targets:search_target", {**common, "out_dir": str(one)}, tmp_path / "l1")
    _run("local", 2, "scnas.launch.targets:search_target", {**common, "out_dir": str(two)}, tmp_path / "l2")
    # Adam turns float-reordering noise in a near-zero gradient into a full +-lr step, so alpha agrees
    # to a few lr steps (0.003 each), not to float precision; the losses agree closely.
    ha = json.loads((one / "alpha_history.json").read_text())
    hb = json.loads((two / "alpha_history.json").read_text())
    for ea, eb in zip(ha, hb):
        for cell in ea["softmax_alpha"]:
            np.testing.assert_allclose(ea["softmax_alpha"][cell], eb["softmax_alpha"][cell], atol=2e-3)
    for column in ("weight_loss", "arch_loss"):
        np.testing.assert_allclose(
            _column(one / "search_log.csv", column), _column(two / "search_log.csv", column), rtol=2e-3
        )


@pytest.mark.timeout(300)
def test_two_process_prediction_shares_the_cases_and_matches_one_process(tiny_task, tmp_path):
    import nibabel as nib

    stage = dataclass_to_dict(
        task_settings(
            {
                "train": {"uresnet_channels": 4, "max_epochs": 1, "iterations_per_epoch": 2, "amp": False},
                "inference": {"mirror": True},
            }
        )
    )
    model_dir = tmp_path / "model" / "fold_0"
    train_kwargs = {"preprocessed": str(tiny_task["pre"]), "splits": str(tiny_task["splits"]), "fold": 0}
    train_kwargs.update(out_dir=str(model_dir), model="uresnet", settings=stage)
    _run("inprocess", 1, "scnas.launch.targets:train_target", train_kwargs, tmp_path / "lt")
    images = sorted(str(p) for p in (tiny_task["raw"] / "imagesTr").glob("*.nii.gz"))
    common = {"checkpoint": str(model_dir / "checkpoint_final.pt"), "images": images, "settings": stage}
    one, two = tmp_path / "one", tmp_path / "two"
    _run("inprocess", 1, "scnas.launch.targets:predict_target", {**common, "out_dir": str(one)}, tmp_path / "l1")
    _run("local", 2, "scnas.launch.targets:predict_target", {**common, "out_dir": str(two)}, tmp_path / "l2")
    written = sorted(p.name for p in two.glob("*.nii.gz"))
    assert len(written) == len(images) == 6
    assert written == sorted(p.name for p in one.glob("*.nii.gz"))
    for name in written:
        a, b = nib.load(one / name), nib.load(two / name)
        np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj))
        np.testing.assert_array_equal(b.affine, a.affine)
    assert json.loads((two / "predictions.json").read_text()) == json.loads((one / "predictions.json").read_text())
