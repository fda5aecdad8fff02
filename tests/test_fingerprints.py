"""Every result belongs to the settings that made it: reuse and resume only on an identical fingerprint."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch
from conftest import NO_AUG

from scnas.config import task_settings
from scnas.fingerprint import Provenance, differing_keys, fingerprint, flatten
from scnas.train import loop
from scnas.train.checkpoint import load_checkpoint
from scnas.train.search import SearchRequest, search
from scnas.train.training import TrainRequest, _Training, train

EPOCHS = 3


def _train_settings(**train):
    base = {"batch_size": 2, "uresnet_channels": 4, "lr": 1e-3, "amp": False, "augmentation": NO_AUG}
    return task_settings({"train": {**base, "max_epochs": EPOCHS, "iterations_per_epoch": 2, **train}})


def _search_settings(**search):
    base = {
        "stem_channels": 4,
        "batch_size": 1,
        "epochs": EPOCHS,
        "iterations_per_epoch": 2,
        "amp": False,
        "augmentation": NO_AUG,
        "tau": {"start": 2.0, "end": 0.5},
    }
    return task_settings({"search": {**base, **search}})


def _train(task, out, settings):
    return train(TrainRequest(task["pre"], task["splits"], 0, out, "uresnet", settings))


def _weights(path):
    return load_checkpoint(path)["state_dict"]


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _epochs(path) -> list[int]:
    with open(path) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _crash_after(monkeypatch, epochs_done: int, cls=_Training) -> None:
    """Make the stage die (like a SIGKILL would, after its checkpoint) once `epochs_done` epochs are saved."""
    original = cls.run_epoch

    def run_epoch(self, epoch):
        if epoch == epochs_done:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(cls, "run_epoch", run_epoch)


def test_fingerprint_is_canonical_and_names_the_differing_keys():
    a = {"train": {"lr": 1e-3, "betas": (0.9, 0.999)}, "seed": 0}
    b = {"seed": 0, "train": {"betas": [0.9, 0.999], "lr": 1e-3}}
    assert fingerprint(a) == fingerprint(b)
    assert flatten(a) == {"seed": 0, "train.betas": [0.9, 0.999], "train.lr": 1e-3}
    c = {"seed": 0, "train": {"betas": [0.9, 0.99], "lr": 3e-2}, "model": "x"}
    assert differing_keys(a, c) == ["model", "train.betas", "train.lr"]
    assert Provenance.of(a).differences(Provenance.of(b)) == []
    assert Provenance.of(c).differences(Provenance.of(a)) == ["model", "train.betas", "train.lr"]


def test_a_changed_setting_after_a_finished_fold_trains_again(tiny_task, tmp_path, caplog):
    out = tmp_path / "fold_0"
    _train(tiny_task, out, _train_settings())
    first = _weights(out / "checkpoint_final.pt")
    assert not (out / "checkpoint_latest.pt").exists(), "a finished run keeps its resumable state"

    assert _train(tiny_task, out, _train_settings())["skipped"], "identical settings must reuse the model"

    with caplog.at_level(logging.INFO, logger="scnas"):
        result = _train(tiny_task, out, _train_settings(lr=3e-2))
    assert result.get("epochs") == EPOCHS
    assert "train.lr differ" in caplog.text
    assert not _equal(first, _weights(out / "checkpoint_final.pt"))
    reference = tmp_path / "reference"
    _train(tiny_task, reference, _train_settings(lr=3e-2))
    assert _equal(_weights(reference / "checkpoint_final.pt"), _weights(out / "checkpoint_final.pt"))


def test_deleting_the_final_checkpoint_trains_the_fold_from_scratch(tiny_task, tmp_path, caplog):
    out = tmp_path / "fold_0"
    _train(tiny_task, out, _train_settings())
    first = _weights(out / "checkpoint_final.pt")
    (out / "checkpoint_final.pt").unlink()
    with caplog.at_level(logging.INFO, logger="scnas"):
        result = _train(tiny_task, out, _train_settings())
    assert result["epochs"] == EPOCHS and "resuming" not in caplog.text
    assert _epochs(out / "training_log.csv") == list(range(1, EPOCHS + 1))
    assert _equal(first, _weights(out / "checkpoint_final.pt"))


def test_a_crashed_fold_resumes_only_under_identical_settings(tiny_task, tmp_path, monkeypatch, caplog):
    out = tmp_path / "fold_0"
    with monkeypatch.context() as m:
        _crash_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            _train(tiny_task, out, _train_settings())
    assert load_checkpoint(out / loop.LATEST)["epoch"] == 0

    with caplog.at_level(logging.INFO, logger="scnas"):
        _train(tiny_task, out, _train_settings(lr=3e-2, batch_size=4))
    assert "train.batch_size, train.lr differ" in caplog.text and "resuming" not in caplog.text
    reference = tmp_path / "reference"
    _train(tiny_task, reference, _train_settings(lr=3e-2, batch_size=4))
    assert _equal(_weights(reference / "checkpoint_final.pt"), _weights(out / "checkpoint_final.pt"))

    same = tmp_path / "same"
    with monkeypatch.context() as m:
        _crash_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            _train(tiny_task, same, _train_settings(lr=3e-2, batch_size=4))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scnas"):
        _train(tiny_task, same, _train_settings(lr=3e-2, batch_size=4))
    assert f"resuming {same / loop.LATEST} from epoch 2" in caplog.text
    assert _equal(_weights(reference / "checkpoint_final.pt"), _weights(same / "checkpoint_final.pt"))


def test_a_changed_search_setting_searches_again_and_a_stale_state_of_another_width_is_not_resumed(
    tiny_task, tmp_path, monkeypatch, caplog
):
    from scnas.train.search import _Search

    out = tmp_path / "search" / "fold_0"
    request = lambda settings: SearchRequest(tiny_task["pre"], tiny_task["splits"], 0, out, settings)  # noqa: E731
    search(request(_search_settings()))
    first = (out / "search_log.csv").read_text()
    assert search(request(_search_settings()))["skipped"]

    with caplog.at_level(logging.INFO, logger="scnas"):
        search(request(_search_settings(tau={"start": 2.0, "end": 0.1})))
    assert "search.tau.end differ" in caplog.text
    rows = list(csv.DictReader(open(out / "search_log.csv")))
    assert float(rows[-1]["tau"]) == pytest.approx(0.1) and (out / "search_log.csv").read_text() != first
    source = json.loads((out / "genotype.json").read_text())["source"]
    assert source["provenance"]["settings"]["search"]["tau"]["end"] == 0.1

    with monkeypatch.context() as m:
        _crash_after(m, 1, cls=_Search)
        with pytest.raises(KeyboardInterrupt):
            search(request(_search_settings(stem_channels=8)))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scnas"):
        search(request(_search_settings(stem_channels=4)))
    assert "search.stem_channels differ" in caplog.text
    assert not (out / loop.LATEST).exists()
