"""The training engine: patch sampling, learning, checkpoint/resume after SIGKILL, and the search loop."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NO_AUG, cli_env

from scnas.config import task_settings
from scnas.data.sampler import PatchSampler
from scnas.data.store import load_preprocessed
from scnas.nas.diagnostics import converged
from scnas.train.checkpoint import load_checkpoint
from scnas.train.search import SearchRequest, alpha_lr, search, search_provenance, temperature
from scnas.train.training import TrainRequest, train, training_provenance, warn_if_stuck_at_no_foreground


def _stage(**train):
    return task_settings(
        {"train": {"batch_size": 2, "uresnet_channels": 4, "lr": 1e-3, "amp": False, "augmentation": NO_AUG, **train}}
    )


def _log(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_patch_sampler_oversamples_foreground_and_pads(tiny_task):
    pre = tiny_task["pre"]
    ids = sorted(p.name[:-5] for p in pre.glob("*.json") if p.name != "plans.json")
    cases = [load_preprocessed(pre, c) for c in ids]
    big = tuple(s + 5 for s in cases[0].image.shape[1:])
    sampler = PatchSampler(cases[:1], big, foreground_fraction=1.0)
    image, label = sampler.read(sampler.draw(np.random.default_rng(0)))
    assert image.shape == (1, *big) and label.shape == big
    assert label.sum() == (np.asarray(cases[0].label) > 0).sum()  # the whole case fits: every label voxel is in

    always = PatchSampler(cases, (8, 8, 8), foreground_fraction=1.0)
    never = PatchSampler(cases, (8, 8, 8), foreground_fraction=0.0)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    fg_always = np.mean([(always.read(always.draw(rng_a))[1] > 0).any() for _ in range(60)])
    fg_never = np.mean([(never.read(never.draw(rng_b))[1] > 0).mean() for _ in range(60)])
    assert fg_always == 1.0
    assert fg_never < 0.5


def test_global_batch_is_sliced_across_ranks(tiny_task):
    pre = tiny_task["pre"]
    ids = sorted(p.name[:-5] for p in pre.glob("*.json") if p.name != "plans.json")
    sampler = PatchSampler.from_dir(pre, ids, (8, 8, 8), 0.33)
    whole = list(sampler.batches(seed=3, epoch=2, iterations=3, global_batch=4))
    halves = [
        list(sampler.batches(seed=3, epoch=2, iterations=3, global_batch=4, rank=r, world_size=2)) for r in (0, 1)
    ]
    for it in range(3):
        np.testing.assert_array_equal(np.concatenate([halves[0][it][0], halves[1][it][0]]), whole[it][0])
        np.testing.assert_array_equal(np.concatenate([halves[0][it][1], halves[1][it][1]]), whole[it][1])
    assert not np.array_equal(whole[0][0], list(sampler.batches(3, 3, 1, 4))[0][0])


def test_training_lowers_the_loss_and_writes_a_final_model(tiny_task, tmp_path):
    out = tmp_path / "uresnet" / "fold_0"
    train(
        TrainRequest(
            tiny_task["pre"],
            tiny_task["splits"],
            0,
            out,
            "uresnet",
            # lr 1e-3: at 3e-3 some seeds (and float roundings) take the tiny network into the Jaccard loss's
            # dead zone, every voxel background and no gradient left (benchmarks/NOTES.md, channels-last)
            _stage(max_epochs=30, iterations_per_epoch=8, lr=1e-3),
        )
    )
    losses = [float(r["train_loss"]) for r in _log(out / "training_log.csv")]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:2]), losses
    final = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert final["format"] == "scnas-model" and final["trained"]["epochs"] == 30
    model = json.loads((out / "model.json").read_text())
    assert model["gflops"] > 0 and model["gflops"] == model["uresnet_gflops"]


def test_a_training_that_collapses_to_no_foreground_is_warned_about_once(caplog):
    def rows(*losses):
        return [{"epoch": e + 1, "train_loss": v} for e, v in enumerate(losses)]

    collapsed = rows(0.998, 0.85, 0.87, 0.999999, 0.999999, 0.999999, 0.999999)
    with caplog.at_level("WARNING", logger="scnas.train"):
        for n in range(1, len(collapsed) + 1):
            warn_if_stuck_at_no_foreground(collapsed[:n], Path("fold_0"))
        for n in range(1, 6):  # never learned (or learning slowly from 1): nothing to say
            warn_if_stuck_at_no_foreground(rows(0.99995, 0.99995, 0.9999, 0.995, 0.99)[:n], Path("fold_1"))
        warn_if_stuck_at_no_foreground(rows(0.9, 0.999999, 0.8), Path("fold_2"))  # one bad epoch, recovered
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("fold_0: the training loss fell to 0.8500 and is back at 1 since epoch 4")


def test_lr_drops_on_plateau_and_training_stops_below_min_lr(tiny_task, tmp_path):
    out = tmp_path / "run"
    train(
        TrainRequest(
            tiny_task["pre"],
            tiny_task["splits"],
            1,
            out,
            "uresnet",
            _stage(max_epochs=30, iterations_per_epoch=1, lr=1e-6, patience=1, lr_factor=0.1, min_lr=5e-8),
        )
    )
    rows = _log(out / "training_log.csv")
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == 1e-6 and min(lrs) <= 1e-7
    assert len(rows) < 30  # stopped once lr < min_lr


def test_poly_schedule_anneals_the_lr_like_nnunet(tiny_task, tmp_path):
    out = tmp_path / "run"
    stage = _stage(schedule="poly", max_epochs=5, iterations_per_epoch=1, lr=1e-3, patience=1)
    train(TrainRequest(tiny_task["pre"], tiny_task["splits"], 1, out, "uresnet", stage))
    lrs = [float(r["lr"]) for r in _log(out / "training_log.csv")]
    assert lrs == pytest.approx([1e-3 * (1 - e / 5) ** 0.9 for e in range(5)], rel=1e-12)  # nnU-Net's PolyLRScheduler


def test_default_schedules_leave_the_fingerprints_of_earlier_runs_alone():
    plans, spec = type("Plans", (), {"fingerprint": "p"})(), {"name": "uresnet"}

    def train_keys(**train):
        req = TrainRequest(Path("."), Path("."), 0, Path("."), "uresnet", _stage(**train))
        return training_provenance(req, spec, plans, "s").settings["train"]

    def search_keys(**search):
        req = SearchRequest(Path("."), Path("."), 0, Path("."), task_settings({"search": search}))
        return search_provenance(req, plans, "s").settings["search"]

    assert "schedule" not in train_keys() and train_keys(schedule="poly")["schedule"] == "poly"
    assert "extra_alpha_lr_factor" not in search_keys(extra_epochs=4)
    assert "warmup_epochs" not in search_keys() and search_keys(warmup_epochs=3)["warmup_epochs"] == 3
    assert "extra_alpha_lr_factor" not in search_keys(extra_alpha_lr_factor=0.5)  # no extra epochs: no effect
    assert search_keys(extra_epochs=4, extra_alpha_lr_factor=0.5)["extra_alpha_lr_factor"] == 0.5


def _train_cmd(task, out: Path, max_epochs: int) -> list[str]:
    config = {
        "seed": 5,
        "train": {
            "batch_size": 2,
            "uresnet_channels": 4,
            "max_epochs": max_epochs,
            "iterations_per_epoch": 6,
            "amp": False,
        },
    }
    return [
        sys.executable,
        "-m",
        "scnas",
        "train",
        "--model",
        "uresnet",
        "--preprocessed",
        str(task["pre"]),
        "--splits",
        str(task["splits"]),
        "--fold",
        "2",
        "--out",
        str(out),
        "--config",
        json.dumps(config),
    ]


def test_resume_after_sigkill_gives_the_same_weights(tiny_task, tmp_path):
    epochs = 10
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(tiny_task, straight, epochs), env=cli_env(), check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_task, killed, epochs), env=cli_env(), stderr=subprocess.DEVNULL)
    log = killed / "training_log.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(_log(log)) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoint_final.pt").exists(), "the run finished before it could be killed"
    resumed_from = load_checkpoint(killed / "checkpoint_latest.pt")["epoch"] + 1
    assert 3 <= resumed_from < epochs

    result = subprocess.run(_train_cmd(tiny_task, killed, epochs), env=cli_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"resuming {killed / 'checkpoint_latest.pt'} from epoch {resumed_from}" in result.stderr
    a = torch.load(straight / "checkpoint_final.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "checkpoint_final.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _log(straight / "training_log.csv")[-1]["train_loss"] == _log(killed / "training_log.csv")[-1]["train_loss"]


def test_temperature_anneals_from_start_to_end():
    cfg = task_settings({"search": {"epochs": 5, "tau": {"start": 4.0, "end": 0.25}}}).search
    taus = [temperature(cfg, e) for e in range(5)]
    assert taus[0] == pytest.approx(4.0) and taus[-1] == pytest.approx(0.25)
    assert all(b < a for a, b in zip(taus, taus[1:]))
    assert taus[2] == pytest.approx(1.0)  # geometric mean: exponential schedule
    assert temperature(cfg, 5) == temperature(cfg, 9) == 0.25  # extra epochs stay at tau.end


def _tiny_search(task, tmp_path: Path, **search_settings) -> Path:
    """Search fold 0 of the tiny task with two steps an epoch; returns its folder."""
    settings = {
        "stem_channels": 8,
        "batch_size": 2,
        "iterations_per_epoch": 2,
        "amp": False,
        "alpha_lr": 0.05,
        "augmentation": NO_AUG,
        "tau": {"start": 2.0, "end": 0.5},
        **search_settings,
    }
    out = tmp_path / "search" / "fold_0"
    search(SearchRequest(task["pre"], task["splits"], 0, out, task_settings({"search": settings}), task="t"))
    return out


def test_warmup_epochs_hold_tau_at_start_and_shift_the_schedules():
    cfg = task_settings(
        {"search": {"warmup_epochs": 2, "epochs": 5, "extra_epochs": 2, "tau": {"start": 4.0, "end": 0.25}}}
    ).search
    taus = [temperature(cfg, e) for e in range(9)]
    assert taus[:3] == [4.0, 4.0, 4.0] and taus[4] == pytest.approx(1.0) and taus[6:] == [0.25] * 3
    decaying = task_settings({"search": {"warmup_epochs": 2, "epochs": 3, "extra_alpha_lr_factor": 0.5}}).search
    assert [alpha_lr(decaying, e) for e in range(7)] == [0.003] * 5 + [0.0015, 0.00075]


def test_a_warmup_trains_the_weights_and_leaves_alpha_alone(tiny_task, tmp_path):
    out = _tiny_search(tiny_task, tmp_path, warmup_epochs=2, epochs=2)
    rows = _log(out / "search_log.csv")
    assert [float(r["tau"]) for r in rows] == [2.0, 2.0, 2.0, 0.5]
    assert [int(r["alpha_steps"]) for r in rows] == [0, 0, 2, 2] and [float(r["alpha_lr"]) for r in rows[:2]] == [0, 0]
    assert len({r["weight_loss"] for r in rows}) == 4  # the weights learn from the first epoch
    history = json.loads((out / "alpha_history.json").read_text())
    alphas = [np.array(h["softmax_alpha"]["encoder_normal"]) for h in history]
    np.testing.assert_array_equal(alphas[0], alphas[1])  # no alpha step in the warm-up
    assert np.abs(alphas[3] - alphas[1]).max() > 1e-4
    summary = json.loads((out / "search_summary.json").read_text())
    assert summary["epochs"] == 4 and summary["weight_steps"] == 8 and summary["alpha_steps"] == 4


def test_alpha_lr_stays_through_the_schedule_and_decays_per_extra_epoch():
    cfg = task_settings({"search": {"epochs": 3, "extra_epochs": 4, "alpha_lr": 0.08, "extra_alpha_lr_factor": 0.5}})
    assert [alpha_lr(cfg.search, e) for e in range(7)] == [0.08, 0.08, 0.08, 0.04, 0.02, 0.01, 0.005]


def test_extra_epochs_continue_at_tau_end_until_the_genotype_is_stable(tiny_task, tmp_path):
    out = _tiny_search(tiny_task, tmp_path, epochs=2, extra_epochs=6, extra_alpha_lr_factor=0.5)
    rows = _log(out / "search_log.csv")
    genotypes = [r["genotype"] for r in rows]
    assert 2 <= len(rows) <= 8
    assert all(float(r["tau"]) == 0.5 for r in rows[1:])
    assert [float(r["alpha_lr"]) for r in rows] == [0.05 * 0.5 ** max(0, e - 1) for e in range(len(rows))]
    stable = [converged(genotypes[:n]) for n in range(1, len(rows) + 1)]
    if len(rows) < 8:  # it stopped at the first stable epoch after the schedule's two
        assert stable[-1] and not any(stable[2:-1])
    summary = json.loads((out / "search_summary.json").read_text())
    assert summary["epochs"] == len(rows) and summary["converged"] == stable[-1]


def test_search_moves_alpha_lowers_the_architecture_loss_and_writes_a_genotype(tiny_task, tmp_path):
    stage = task_settings(
        {
            "search": {
                "stem_channels": 8,
                "batch_size": 2,
                "epochs": 6,
                "iterations_per_epoch": 6,
                "amp": False,
                "weight_lr": 0.01,
                "alpha_lr": 0.05,
                "augmentation": NO_AUG,
                "tau": {"start": 2.0, "end": 0.5},
            }
        }
    )
    out = tmp_path / "search" / "fold_0"
    search(SearchRequest(tiny_task["pre"], tiny_task["splits"], 0, out, stage, task="tiny"))
    rows = _log(out / "search_log.csv")
    arch = [float(r["arch_loss"]) for r in rows]
    assert np.mean(arch[-2:]) < np.mean(arch[:2]), arch
    history = json.loads((out / "alpha_history.json").read_text())
    first, last = (
        np.array(history[0]["softmax_alpha"]["encoder_normal"]),
        np.array(history[-1]["softmax_alpha"]["encoder_normal"]),
    )
    assert np.abs(last - first).max() > 1e-3
    genotype = json.loads((out / "genotype.json").read_text())
    assert genotype["format"] == "scnas-genotype" and genotype["source"]["fold"] == 0
    split = json.loads((out / "search_split.json").read_text())
    assert not set(split["weight_cases"]) & set(split["arch_cases"])
    summary = json.loads((out / "search_summary.json").read_text())
    assert summary["epochs"] == 6 and summary["weight_steps"] == summary["alpha_steps"] == 36
    assert set(summary["final"]) == set(history[-1]["softmax_alpha"])
    assert 0 < summary["final"]["encoder_normal"]["entropy"] < np.log(8)
    genotypes = [r["genotype"] for r in rows]
    assert summary["converged"] == (genotypes[-1] == genotypes[-2])
    assert history[0]["diagnostics"]["encoder_normal"]["argmax_changes"] == 0
