"""The memory model against real steps tracked tensor by tensor, and the planner's patch fitting."""

from __future__ import annotations

import json
import math
import weakref

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import scnas.nas.search_network as search_network
from scnas.config import dataclass_to_dict, task_settings
from scnas.data.dataset import parse_dataset
from scnas.data.plans import make_plans, patch_for_budget, plans_provenance, shrinking_patches
from scnas.errors import ConfigError, ScnasError
from scnas.fingerprint import Provenance
from scnas.models.factory import build_model
from scnas.models.memory import budget_for, search_step_memory, training_step_memory
from scnas.nas import SearchNetwork
from scnas.nas.genotype import genotype_to_dict, random_genotype
from scnas.train.loss import jaccard_loss

PATCH = (16, 24, 16)
URESNET = {"arch": "uresnet", "in_channels": 2, "num_classes": 3, "base_channels": 8}
DERIVED = {
    "arch": "genotype",
    "in_channels": 2,
    "num_classes": 3,
    "stem_channels": 8,
    "genotype": genotype_to_dict(random_genotype(0, 0)),
}


pytestmark = pytest.mark.usefixtures("one_thread")


class LiveBytes(TorchDispatchMode):
    """The reference: bytes of the real tensor storages alive during a real step, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, weakref.ref] = {}
        self.live = 0
        self.peak = 0

    def add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if key in self.refs:
            return

        def gone(_, key=key, size=size):
            if self.refs.pop(key, None) is not None:
                self.live -= size

        self.refs[key] = weakref.ref(storage, gone)
        self.live += size
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


def real_training_step(spec, patch, batch, steps=1):
    """Peak bytes a real CPU training step adds to its parameters and batch (the training loop's order)."""
    torch.manual_seed(0)
    net = build_model(spec).train()
    optimizer = torch.optim.Adam(net.parameters())
    x = torch.randn(batch, spec["in_channels"], *patch)
    y = torch.randint(0, spec["num_classes"], (batch, *patch), dtype=torch.int16)
    live = LiveBytes()
    with live:
        for t in (*net.parameters(), x, y):
            live.add(t)
        base = live.live
        for step in range(steps):
            if step == steps - 1:
                before, live.peak = live.live, live.live
            loss = jaccard_loss(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            del loss
    return live.peak - base, before - base


def real_search_step(patch, stem, seed):
    """Peak bytes a real search step (weight half-step, alpha half-step) adds, built as the benchmark builds it."""
    torch.manual_seed(seed)
    net = SearchNetwork(3, 3, stem, seed=seed)
    halves = [(net.weight_parameters(), torch.randn(1, 3, *patch)), (net.arch_parameters(), torch.randn(1, 3, *patch))]
    labels = torch.randint(0, 3, (1, *patch), dtype=torch.int16)
    optimizers = [torch.optim.Adam(params) for params, _ in halves]
    live = LiveBytes()
    with live:
        for t in (*net.parameters(), labels, *(x for _, x in halves)):
            live.add(t)
        base = live.live
        for (params, x), optimizer in zip(halves, optimizers):
            loss = jaccard_loss(net(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=params)
            optimizer.step()
    return live.peak - base


@pytest.mark.parametrize("spec", [URESNET, DERIVED], ids=["uresnet", "derived"])
def test_training_step_simulation_is_exact_to_the_byte(spec):
    predicted = training_step_memory(spec, PATCH, 2, warm=False)
    real, _ = real_training_step(spec, PATCH, 2)
    assert predicted.simulated_peak - predicted.resident == real
    assert predicted.step > real  # the calibrated overhead comes on top


def test_warm_step_holds_last_steps_gradients_and_adam_state():
    cold = training_step_memory(URESNET, PATCH, 2, warm=False)
    warm = training_step_memory(URESNET, PATCH, 2, warm=True)
    real_peak, real_resident = real_training_step(URESNET, PATCH, 2, steps=2)
    parameters = sum(p.numel() for p in build_model(URESNET).parameters()) * 4
    counters = 4 * len(list(build_model(URESNET).parameters()))  # Adam's step counts, not simulated
    assert warm.resident - cold.resident == 3 * parameters  # gradients and the two moments
    assert warm.resident - cold.resident == real_resident - counters
    assert warm.simulated_peak - cold.resident == real_peak - counters


@pytest.mark.parametrize("threshold", [search_network.RECOMPUTE_MIN_ELEMENTS, 0], ids=["as-is", "all-recomputed"])
def test_search_step_simulation_matches_a_real_step(monkeypatch, threshold):
    """Same seed, same draws: the simulation differs only by the sampler's few-byte tensors."""
    monkeypatch.setattr(search_network, "RECOMPUTE_MIN_ELEMENTS", threshold)
    predicted = search_step_memory(PATCH, 8, 1, 3, 3, draw=0, warm=False)
    real = real_search_step(PATCH, 8, seed=0)
    assert predicted.simulated_peak - predicted.resident == pytest.approx(real, rel=1e-3)


def test_worst_draw_needs_more_than_seeded_draws():
    worst = search_step_memory(PATCH, 8, 1, 3, 3)
    for seed in range(2):
        assert search_step_memory(PATCH, 8, 1, 3, 3, draw=seed).peak < worst.peak


def test_amp_halves_what_is_half_precision_only():
    """On the GPU path AMP saves half-precision activations: about half of float32's step, but not exactly,
    since the loss, parameters, gradients and Adam's moments stay float32."""
    patch = (32, 32, 32)
    full = training_step_memory(URESNET, patch, 2, "float32", "cuda")
    half = training_step_memory(URESNET, patch, 2, "amp", "cuda")
    assert 0.45 < half.step / full.step < 0.6
    assert half.resident == full.resident
    big = training_step_memory({**URESNET, "num_classes": 12}, patch, 2, "amp", "cuda")
    big_full = training_step_memory({**URESNET, "num_classes": 12}, patch, 2, "float32", "cuda")
    assert big.step / big_full.step > half.step / full.step  # the float32 loss over more classes


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="AMP"):
        training_step_memory(URESNET, PATCH, 1, "amp", "cpu")
    with pytest.raises(ValueError, match="precision"):
        training_step_memory(URESNET, PATCH, 1, "float16")
    with pytest.raises(ValueError, match="sampling"):
        search_step_memory(PATCH, 8, 1, 3, 3, sampling="three")


def test_shrinking_follows_the_median_shape_in_multiples_of_8():
    chain = shrinking_patches((100, 128, 32), (100.5, 200.0, 30.0))
    assert chain[:4] == [(100, 128, 32), (100, 128, 24), (96, 128, 24), (88, 128, 24)]  # 32/30, then 100/100.5
    assert chain[-1] == (16, 16, 16)  # the smallest the networks run (three halvings leave 2 voxels)
    for a, b in zip(chain, chain[1:]):
        (axis,) = [i for i in range(3) if a[i] != b[i]]
        assert b[axis] % 8 == 0 and 0 < a[axis] - b[axis] <= 8
        ratios = [a[i] / m for i, m in enumerate((100.5, 200.0, 30.0)) if a[i] > 16]
        assert a[axis] / (100.5, 200.0, 30.0)[axis] == max(ratios)


class VoxelBudget:
    """A fake budget: a patch fits when it has at most `voxels` voxels."""

    def __init__(self, voxels: int) -> None:
        self.voxels = voxels
        self.calls = 0
        self.settings = {"gpu_memory_gb": 1.0, "voxels": voxels}

    def __call__(self, patch) -> bool:
        self.calls += 1
        return math.prod(patch) <= self.voxels


@pytest.mark.parametrize("voxels", [100**3, 64**3, 40 * 48 * 56, 16**3])
def test_patch_for_budget_is_the_first_fitting_patch_of_the_chain(voxels):
    median = (90.0, 130.0, 70.0)
    fits = VoxelBudget(voxels)
    patch = patch_for_budget((128, 128, 128), median, fits)
    chain = shrinking_patches((128, 128, 128), median)
    assert fits.calls <= 1 + math.ceil(math.log2(len(chain)))
    index = chain.index(patch)
    assert fits(patch)
    assert index == 0 or not fits(chain[index - 1])  # the next larger patch does not fit


def test_patch_for_budget_refuses_a_budget_nothing_fits():
    with pytest.raises(ScnasError, match="gpu_memory_gb"):
        patch_for_budget((64, 64, 64), (64.0, 64.0, 64.0), VoxelBudget(16**3 - 1))


def _tiny_task(root):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for case, shape in (("c0", (40, 64, 24)), ("c1", (48, 60, 28))):
        image = rng.normal(100, 10, shape).astype(np.float32)
        label = (rng.random(shape) > 0.7).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"{case}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"{case}.nii.gz"))
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    meta = {"name": "Tiny", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a"}, "training": training}
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": len(training)}))
    return parse_dataset(root)


def test_make_plans_fits_the_patch_to_the_budget(tmp_path):
    dataset = _tiny_task(tmp_path / "task")
    settings = task_settings({"preprocess": {"spacing": [1.0, 1.0, 1.0]}, "plan": {"gpu_memory_gb": 1.0}})
    with pytest.raises(ScnasError, match="gpu_memory_gb"):
        make_plans(dataset, settings.preprocess, settings.plan)
    fits = VoxelBudget(32 * 32 * 24)
    plans = make_plans(dataset, settings.preprocess, settings.plan, fits=fits)
    unfitted = make_plans(dataset, settings.preprocess, task_settings({}).plan)
    assert plans.patch_size == patch_for_budget(unfitted.patch_size, unfitted.median_shape, VoxelBudget(fits.voxels))
    assert math.prod(plans.patch_size) <= fits.voxels < math.prod(unfitted.patch_size)
    assert (
        plans.fingerprint
        != make_plans(dataset, settings.preprocess, settings.plan, fits=VoxelBudget(10**5)).fingerprint
    )


def test_plans_without_a_budget_keep_their_fingerprint(tmp_path):
    """Plans made before plan.gpu_memory_gb existed are still recognised as made with the same settings."""
    dataset = _tiny_task(tmp_path / "task")
    settings = task_settings({})
    preprocess = dataclass_to_dict(settings.preprocess)
    preprocess.pop("threads")
    before = Provenance.of(
        {
            "preprocess": preprocess,
            "plan": {"patch_size": [128, 128, 128], "fit_to_median_shape": True},
            "dataset": {
                "name": dataset.name,
                "case_ids": list(dataset.case_ids),
                "labels": {"0": "background", "1": "a"},
                "modalities": list(dataset.modalities),
            },
        }
    )
    assert plans_provenance(dataset, settings.preprocess, settings.plan).fingerprint == before.fingerprint


def test_gpu_memory_gb_must_be_positive_or_null():
    assert task_settings({}).plan.gpu_memory_gb is None
    assert task_settings({"plan": {"gpu_memory_gb": 24}}).plan.gpu_memory_gb == 24
    for bad in (0, -2, "24"):
        with pytest.raises(ConfigError, match="plan.gpu_memory_gb"):
            task_settings({"plan": {"gpu_memory_gb": bad}})


def test_memory_budget_fits_what_the_model_predicts():
    small = {"search": {"stem_channels": 8, "batch_size": 1, "amp": True}, "train": {"uresnet_channels": 4}}
    assert budget_for(task_settings(small), 2, 3) is None
    probe = budget_for(task_settings({**small, "plan": {"gpu_memory_gb": 1000}}), 2, 3)
    search, train = probe.predictions(PATCH)
    need = max(search.peak, train.peak) / 2**30
    assert probe(PATCH)
    assert budget_for(task_settings({**small, "plan": {"gpu_memory_gb": need * 1.001}}), 2, 3)(PATCH)
    assert not budget_for(task_settings({**small, "plan": {"gpu_memory_gb": need * 0.999}}), 2, 3)(PATCH)
    assert probe.settings["search"] == {"stem_channels": 8, "sampling": "two", "amp": True}
    assert probe.settings["batch_per_process"] == {"search": 1, "train": 8}


def test_memory_budget_splits_the_batch_over_the_jobs_processes():
    two_gpus = {"launcher": {"search": {"gpus_per_node": 2}, "train": {"nodes": 2, "gpus_per_node": 2}}}
    budget = budget_for(task_settings({**two_gpus, "plan": {"gpu_memory_gb": 16}}), 4, 4)
    assert budget.batches == {"search": 2, "train": 2}  # search 4 over 2 processes, train 8 over 4
