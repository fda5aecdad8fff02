"""The planted-answer search (scnas.data.planted): search, derive, and retrain against random genotypes.

The search space is reduced to the stem, one encoder_normal cell of one node (two edges, both reading
the stem) and the output convolution; the search itself is scnas.train.search.search (Algorithm 1's
sampler, the bi-level loop, argmax genotype derivation) with SearchNetwork built on that
macro-structure, and every network is retrained by scnas.train.training.train. The derived network and
random genotypes (each edge uniform over the 8 operations) are retrained identically at matched FLOPs
and scored by Dice on the fold's validation cases.

    python -m tests.sanity.planted [--seeds 0 1 2] [--random 3] [--control-offset 2] [--alpha-lr 0.03]

writes benchmarks/results/planted_search.{json,md}; each --alpha-lr adds a search-only run at that rate.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence
from unittest import mock

import numpy as np
import torch

import scnas.models.genotype_network as genotype_network
import scnas.train.search as search_module
from scnas.config import AugmentationConfig, TaskSettings, task_settings
from scnas.data.dataset import parse_dataset
from scnas.data.planted import OFFSET, PLANTED_OPERATION, make_planted_task
from scnas.data.preprocess import preprocess_dataset
from scnas.data.splits import fold_cases, load_splits, make_splits, write_splits
from scnas.data.store import load_preprocessed
from scnas.models.flops import count_gflops, match_width
from scnas.models.genotype_network import GenotypeNetwork
from scnas.nas import CELL_TYPES, OPERATIONS, SearchNetwork, cell_edges
from scnas.nas.cells import CellPlan
from scnas.nas.genotype import Genotype, load_genotype, save_genotype
from scnas.train.checkpoint import load_checkpoint
from scnas.train.search import SearchRequest, search
from scnas.train.training import TrainRequest, train

CELL_TYPE = "encoder_normal"
NUM_NODES = 1
MACRO = (CellPlan("cell", CELL_TYPE, 0, ("stem", "stem")),)
CASES, SIZE, PATCH = 10, 32, 24
SEARCH_STEM = 8
RETRAIN_STEM = 8
NO_AUG = {f.name: 0.0 for f in dataclasses.fields(AugmentationConfig) if f.name.startswith("p_")}
SEARCH = {
    "stem_channels": SEARCH_STEM,
    "batch_size": 2,
    "epochs": 20,
    "iterations_per_epoch": 25,
    "amp": False,
    "augmentation": NO_AUG,
}
TRAIN = {
    "batch_size": 2,
    "max_epochs": 8,
    "iterations_per_epoch": 25,
    "lr": 0.003,
    "amp": False,
    "augmentation": NO_AUG,
}


def prepare(root: Path, offset: int = OFFSET) -> tuple[Path, Path]:
    """The planted task written, preprocessed (1 mm, patch PATCH^3) and split into 5 folds under root."""
    raw = make_planted_task(root / "raw", cases=CASES, seed=0, size=SIZE, offset=offset)
    base = task_settings({"preprocess": {"spacing": [1.0, 1.0, 1.0]}, "plan": {"patch_size": [PATCH] * 3}})
    dataset = parse_dataset(raw)
    preprocess_dataset(dataset, base.preprocess, base.plan, root / "pre", progress=False)
    write_splits(root / "splits.json", make_splits(dataset.case_ids, 5, 0))
    return root / "pre", root / "splits.json"


def settings(seed: int, search_overrides: dict | None = None, stem: int = RETRAIN_STEM) -> TaskSettings:
    return task_settings(
        {
            "seed": seed,
            "search": {**SEARCH, **(search_overrides or {})},
            "train": {**TRAIN, "scnas_stem_channels": stem},
        }
    )


@contextlib.contextmanager
def reduced_space() -> Iterator[None]:
    """search() and train() build their cell networks on MACRO with NUM_NODES nodes."""
    with (
        mock.patch.object(
            search_module, "SearchNetwork", functools.partial(SearchNetwork, macro=MACRO, num_nodes=NUM_NODES)
        ),
        mock.patch.object(genotype_network, "GenotypeNetwork", functools.partial(GenotypeNetwork, macro=MACRO)),
    ):
        yield


def relevant_ops(genotype: Genotype) -> list[str]:
    """The operations on the edges the reduced network uses (those of CELL_TYPE)."""
    return [op for _, _, op in genotype.cells[CELL_TYPE]]


def random_genotype(seed: int) -> Genotype:
    """Each edge of each cell type uniform over the 8 operations, zero included."""
    rng = np.random.default_rng([seed, 7])
    edges = cell_edges(NUM_NODES)
    return Genotype(
        cells={t: tuple((i, j, OPERATIONS[rng.integers(len(OPERATIONS))]) for i, j in edges) for t in CELL_TYPES},
        num_nodes=NUM_NODES,
    )


def build(genotype: Genotype, stem: int) -> torch.nn.Module:
    return GenotypeNetwork(genotype, 1, 2, stem, macro=MACRO)


def gflops(genotype: Genotype, stem: int) -> float:
    return count_gflops(build(genotype, stem), (1, PATCH, PATCH, PATCH))


def search_seed(pre: Path, splits: Path, out: Path, seed: int, search_overrides: dict | None = None) -> dict:
    """One search; the genotype, the planted operation's edges and the final figures of CELL_TYPE."""
    t0 = time.time()
    with reduced_space():
        search(SearchRequest(pre, splits, 0, out, settings(seed, search_overrides), task="planted"))
    genotype = load_genotype(out / "genotype.json")
    history = json.loads((out / "alpha_history.json").read_text())
    summary = json.loads((out / "search_summary.json").read_text())
    ops = relevant_ops(genotype)
    final = history[-1]["softmax_alpha"][CELL_TYPE]
    return {
        "seed": seed,
        "seconds": round(time.time() - t0, 1),
        "genotype_ops": ops,
        "planted_edges": sum(op == PLANTED_OPERATION for op in ops),
        "edges": len(ops),
        "planted_prob": [round(row[OPERATIONS.index(PLANTED_OPERATION)], 4) for row in final],
        "entropy": history[-1]["diagnostics"][CELL_TYPE]["entropy"],
        "max_prob": history[-1]["diagnostics"][CELL_TYPE]["max_prob"],
        "converged": summary["converged"],
        "stable_since_epoch": summary["genotype_stable_since_epoch"],
        "alpha_steps": summary["alpha_steps"],
        "genotype": genotype,
    }


def dice_on_validation(checkpoint: Path, pre: Path, val_ids: Sequence[str]) -> float:
    """Foreground Dice pooled over the whole validation volumes, predicted by the final checkpoint."""
    state = load_checkpoint(checkpoint)
    spec = state["model"]
    model = build(Genotype.from_dict(spec["genotype"]), spec["stem_channels"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    inter = total = 0
    with torch.no_grad():
        for case_id in val_ids:
            case = load_preprocessed(pre, case_id, mmap=False)
            pred = model(torch.from_numpy(case.image[None])).argmax(1)[0].numpy() == 1
            truth = case.label == 1
            inter += int((pred & truth).sum())
            total += int(pred.sum() + truth.sum())
    return 2 * inter / total if total else float("nan")


def retrain(pre: Path, splits: Path, out: Path, genotype: Genotype, stem: int) -> dict:
    """Train `genotype` at stem width `stem` with the retrain recipe (seed 0) and score it."""
    out.mkdir(parents=True, exist_ok=True)
    save_genotype(out / "genotype.json", genotype)
    with reduced_space():
        result = train(TrainRequest(pre, splits, 0, out, "scnas", settings(0, stem=stem), out / "genotype.json"))
    _, val_ids = fold_cases(load_splits(splits), 0)
    return {
        "ops": relevant_ops(genotype),
        "stem": stem,
        "gflops": round(gflops(genotype, stem), 5),
        "dice": round(dice_on_validation(Path(result["checkpoint"]), pre, val_ids), 4),
    }


def matched_stem(genotype: Genotype, target: float) -> int:
    stem, _ = match_width(lambda c: build(genotype, c), target, (1, PATCH, PATCH, PATCH), lo=4, hi=64, step=NUM_NODES)
    return stem


def chance_dice(pre: Path, splits: Path, offset: int = OFFSET) -> float:
    """Dice of calling foreground every validation voxel whose deciding voxel lies inside the volume (the
    others are background by construction): the most a network blind to that voxel can expect. Float64
    numpy, from the labels alone."""
    _, val_ids = fold_cases(load_splits(splits), 0)
    inter = total = 0.0
    for case_id in val_ids:
        truth = load_preprocessed(pre, case_id, mmap=False).label == 1
        called = np.zeros(truth.shape, dtype=bool)
        called[:-offset] = True
        inter += float(np.sum(truth & called, dtype=np.float64))
        total += float(np.sum(truth, dtype=np.float64) + np.sum(called, dtype=np.float64))
    return 2 * inter / total


def run(
    root: Path,
    seeds: Sequence[int],
    random_draws: int,
    search_overrides: dict | None = None,
    control_offset: int | None = None,
) -> dict[str, Any]:
    """Search on every seed, retrain each derived genotype and `random_draws` random ones at its FLOPs;
    with `control_offset`, one more search (first seed) on the task planted at that offset. One thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(root, seeds, random_draws, search_overrides, control_offset)
    finally:
        torch.set_num_threads(threads)


def _run(
    root: Path,
    seeds: Sequence[int],
    random_draws: int,
    search_overrides: dict | None,
    control_offset: int | None,
) -> dict[str, Any]:
    t0 = time.time()
    pre, splits = prepare(root / "task")
    randoms = [random_genotype(k) for k in range(random_draws)]
    trained: dict[tuple, dict] = {}

    def scored(name: str, genotype: Genotype, stem: int) -> dict:
        key = (tuple(relevant_ops(genotype)), stem)
        if key not in trained:
            trained[key] = retrain(pre, splits, root / name, genotype, stem)
        return trained[key]

    rows = []
    for seed in seeds:
        found = search_seed(pre, splits, root / f"search_{seed}", seed, search_overrides)
        derived = found.pop("genotype")
        target = gflops(derived, RETRAIN_STEM)
        found["derived"] = scored(f"derived_{seed}", derived, RETRAIN_STEM)
        found["random"] = [scored(f"random_{seed}_{k}", g, matched_stem(g, target)) for k, g in enumerate(randoms)]
        rows.append(found)
    result: dict[str, Any] = {
        "planted_operation": PLANTED_OPERATION,
        "offset": OFFSET,
        "search": {**SEARCH, **(search_overrides or {})},
        "train": TRAIN,
        "chance_dice": round(chance_dice(pre, splits), 4),
        "seeds": rows,
    }
    if control_offset is not None:
        pre_c, splits_c = prepare(root / "control", control_offset)
        control = search_seed(pre_c, splits_c, root / "control_search", seeds[0], search_overrides)
        control.pop("genotype")
        result["control"] = {"offset": control_offset, **control}
    result["seconds"] = round(time.time() - t0, 1)
    return result


def markdown(result: dict[str, Any], variants: Sequence[dict[str, Any]]) -> str:
    """The result as benchmarks/results/planted_search.md."""
    from benchmarks.common import markdown_table

    op = result["planted_operation"]
    rows = []
    for r in result["seeds"]:
        randoms = r["random"]
        rows.append(
            [
                r["seed"],
                f"{r['planted_edges']}/{r['edges']}",
                ", ".join(map(str, r["planted_prob"])),
                r["entropy"],
                r["max_prob"],
                f"{r['derived']['dice']:.3f} ({r['derived']['gflops'] * 1e3:.2f})",
                ", ".join(f"{x['dice']:.3f} ({x['gflops'] * 1e3:.2f})" for x in randoms),
                f"{sum(x['dice'] for x in randoms) / len(randoms):.3f}",
                r["seconds"],
            ]
        )
    text = [
        "# Planted-answer search\n",
        f"White noise; a voxel is foreground when the intensity {result['offset']} voxels along x exceeds 0.5 "
        "(scnas.data.planted). In the reduced space (stem, one encoder_normal cell of 1 node: 2 edges reading "
        f"the stem, output conv) only `{op}` reaches that voxel. Search through scnas.train.search.search with the "
        f"project's sampler, bi-level loop and argmax derivation; settings {json.dumps(result['search'])}. "
        f"Retrain: {json.dumps(result['train'])}, seed 0, the same for every network; Dice on the fold's 2 "
        f"validation volumes ({SIZE}^3). Random genotypes: every edge uniform over the 8 operations, stem matched "
        f"to the derived network's FLOPs at the {PATCH}^3 patch (MFLOPs in brackets). A network and width that "
        "recur (the same operations on the 2 edges at the same stem) are trained once. Calling foreground every "
        f"voxel whose deciding voxel lies inside the volume, the most a network blind to it can expect, scores "
        f"Dice {result['chance_dice']:.3f}.\n",
        markdown_table(
            [
                "seed",
                f"edges won by {op}",
                f"final softmax(alpha) of {op} per edge",
                "entropy (uniform 2.079)",
                "mean max prob",
                "Dice derived (MFLOPs)",
                "Dice random (MFLOPs)",
                "mean random",
                "search (s)",
            ],
            rows,
        ),
        "Random genotypes (the relevant cell's 2 edges): "
        + "; ".join(", ".join(x["ops"]) + f" at stem {x['stem']}" for x in result["seeds"][0]["random"])
        + ".\n",
    ]
    if "control" in result:
        c = result["control"]
        text.append(
            f"Control: the same search (seed {c['seed']}) on the task planted at offset {c['offset']}, which "
            f"`{op}` cannot reach (its taps 0, +-4 plus the stem's +-1 give 0, 1, 3, 4, 5) while conv3, "
            f"sep_dil_conv3_r2 and sep_dil_conv3_r3 can: it chose {', '.join(c['genotype_ops'])}; softmax of "
            f"`{op}` {', '.join(map(str, c['planted_prob']))}, entropy {c['entropy']}, max prob {c['max_prob']}.\n"
        )
    for v in variants:
        text.append(f"Search only, with {json.dumps(v['overrides'])}:\n")
        text.append(
            markdown_table(
                ["seed", f"edges won by {op}", f"softmax(alpha) of {op}", "entropy", "mean max prob"],
                [
                    [
                        r["seed"],
                        f"{r['planted_edges']}/{r['edges']}",
                        ", ".join(map(str, r["planted_prob"])),
                        r["entropy"],
                        r["max_prob"],
                    ]
                    for r in v["seeds"]
                ],
            )
        )
    text.append(f"Wall-clock of the whole run: {result['total_seconds']:.0f} s ({result['machine']}).\n")
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--random", type=int, default=3)
    parser.add_argument("--control-offset", type=int, default=2)
    parser.add_argument("--alpha-lr", type=float, nargs="*", default=[0.03], help="search-only variants")
    parser.add_argument("--root", type=Path, help="keep the run's files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    from benchmarks.common import machine, write_result

    torch.set_num_threads(1)
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        root = args.root or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        result = run(root, args.seeds, args.random, control_offset=args.control_offset)
        variants = []
        for lr in args.alpha_lr:
            pre, splits = prepare(root / "task")
            rows = []
            for seed in args.seeds:
                found = search_seed(pre, splits, root / f"search_lr{lr}_{seed}", seed, {"alpha_lr": lr})
                found.pop("genotype")
                rows.append(found)
            variants.append({"overrides": {"alpha_lr": lr}, "seeds": rows})
    info = machine()
    result.update(
        variants=variants,
        total_seconds=round(time.time() - t0, 1),
        machine=f"{info['cpu_count']} CPUs ({info['cpu']}), torch {info['torch']}, 1 thread",
    )
    write_result("planted_search", result, markdown(result, variants))
    print(markdown(result, variants))


if __name__ == "__main__":
    main()
