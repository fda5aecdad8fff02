"""How the costs grow: with the patch edge (32^3 -> 128^3 where a step stays within the time and memory
budget), and from 1 to 2 gloo ranks.

Patch growth, one thread: the training step of the three FLOPs-matched networks (benchmarks.suite.
training_step, widths matched at every size), augmentation per sample against nnU-Net's, and the two-op
search step (stem 16, own process, with its peak RSS). A size is skipped, with its prediction, when the
previous size's cost scaled by the voxel count passes the budget.
Ranks: the U-ResNet training step (DDP, the Jaccard loss pooled over the ranks as scnas.train.training
does) and the two-op search step (gradients averaged with scnas.train.engine.average_gradients), one
process per rank, one thread each, on one global batch of 2 split over the ranks. Check: after the first
step, rank 0's gradients equal those of one process holding the whole batch: relative L2 difference
<= 5e-4 for the U-ResNet, <= 5e-3 for the search network, whose instance norms over the few voxels of
its coarsest cells magnify float32 rounding (in float64 its difference is 1e-15).
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from benchmarks import peers, search_step
from benchmarks.suite import augmentation, training_step
from benchmarks.timing import Options, Section, Timing, time_interleaved

FULL = {
    "edges": [32, 48, 64, 96, 128],
    "budget_s": 60.0,
    "uresnet": 32,
    "search_edges": [32, 48, 64, 96],
    "search_gib": 6.0,
}
QUICK = {"edges": [16, 24], "budget_s": 5.0, "uresnet": 8, "search_edges": [], "search_gib": 1.0}
RANKS_FULL = {"train_patch": 64, "search_patch": 32, "uresnet": 32, "stem": 16, "steps": 3}
RANKS_QUICK = {"train_patch": 16, "search_patch": 16, "uresnet": 4, "stem": 8, "steps": 1}
GLOBAL_BATCH = 2
AUG_BATCHES = 2  # batches of 2 samples per timed augmentation run
GRAD_TOLERANCE = {"train": 5e-4, "search": 5e-3}


def _predicted(last: tuple[int, float] | None, edge: int) -> float:
    return 0.0 if last is None else last[1] * (edge / last[0]) ** 3


def patch_growth(opts: Options, section: Section) -> None:
    size = QUICK if opts.quick else FULL
    repeats = min(opts.repeats, 3)
    last: dict[str, tuple[int, float]] = {}
    ours = augmentation.ours_augment(augmentation.default_cfg(), seed=2)
    for edge in size["edges"]:
        patch = (edge,) * 3
        builders, info = training_step.matched_networks(patch, size["uresnet"], opts.genotype)
        steps = {}
        for name, build in builders.items():
            guess = _predicted(last.get(name), edge)
            if guess > size["budget_s"]:
                section.measurements.append({"what": f"training step {edge}^3: {name}", "skipped_predicted_s": guess})
                continue
            torch.manual_seed(0)
            steps[name] = training_step.training_step(build(), patch)
        if steps:
            times = time_interleaved(steps, repeats, 1)
            for name, v in times.items():
                last[name] = (edge, v["median_s"])
                section.measurements.append(
                    {"what": f"training step {edge}^3: {name}", "width": info[name]["width"], "step_s": v["median_s"]}
                )
        aug_ok = peers.missing("nnunetv2", "batchgeneratorsv2") is None
        if aug_ok and _predicted(last.get("aug"), edge) <= size["budget_s"]:
            samples = 2 * AUG_BATCHES
            _, ours_s, peer_s = augmentation.per_sample_seconds(ours, 1, patch, samples, repeats, 1)
            last["aug"] = (edge, samples * max(ours_s, peer_s))
            section.timings.append(
                Timing(
                    f"augmentation, 1x{edge}^3",
                    "augment_batch",
                    "nnU-Net v2",
                    ours_s,
                    peer_s,
                    unit="s/sample",
                    note=f"{samples} samples per run",
                )
            )
    last_search: tuple[int, float, float] | None = None
    for edge in size["search_edges"]:
        if last_search is not None:
            grow = (edge / last_search[0]) ** 3
            if last_search[1] * grow > 2 * size["budget_s"] or last_search[2] * grow > size["search_gib"]:
                section.measurements.append(
                    {
                        "what": f"search step two {edge}^3, stem 16",
                        "skipped_predicted_s": last_search[1] * grow,
                        "skipped_predicted_gib": last_search[2] * grow,
                    }
                )
                break
        cfg_search = {"device": "cpu", "sampling": "two", "patch": edge, "stem": 16, "batch": 1, "tau": 1.0}
        r = search_step.run_worker({**cfg_search, "threads": 1, "warmup": 1, "steps": repeats})
        if r["status"] != "ok":
            section.measurements.append({"what": f"search step two {edge}^3, stem 16", "status": r["status"]})
            break
        last_search = (edge, r["median_seconds"], r["step_rss_gib"])
        section.measurements.append(
            {
                "what": f"search step two {edge}^3, stem 16",
                "step_s": r["median_seconds"],
                "step_rss_gib": r["step_rss_gib"],
            }
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, cfg: dict[str, Any], out: str) -> None:
    """One rank: the first step's gradients and the times of the following steps, to out/rank<k>.pt."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from scnas.train.distributed import init_distributed
    from scnas.train.engine import average_gradients, batch_sum_reducer
    from scnas.train.loss import jaccard_loss

    ctx = init_distributed(prefer_cuda=False)
    generator = torch.Generator().manual_seed(1)
    edge, classes = cfg["patch"], cfg["classes"]
    x = torch.randn((GLOBAL_BATCH, cfg["in_channels"], edge, edge, edge), generator=generator)
    y = torch.randint(0, classes, (GLOBAL_BATCH, edge, edge, edge), generator=generator)
    share = GLOBAL_BATCH // world
    x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
    torch.manual_seed(0)
    pool = batch_sum_reducer(ctx)
    if cfg["kind"] == "train":
        from scnas.models.uresnet import UResNet

        model = UResNet(cfg["in_channels"], classes, base_channels=cfg["width"])
        net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
        params = list(model.parameters())
    else:
        from scnas.nas import SearchNetwork

        model = net = SearchNetwork(cfg["in_channels"], classes, cfg["width"], sampling="two", seed=0)
        params = model.weight_parameters()
    optimizer = torch.optim.Adam(params, lr=1e-3)
    seconds, first = [], None
    for _ in range(cfg["steps"] + 2):
        ctx.barrier()
        start = time.perf_counter()
        loss = jaccard_loss(net(x), y, reduce_sums=pool)
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        if cfg["kind"] == "search":
            average_gradients(params, ctx)
        if first is None:
            first = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in params])
        optimizer.step()
        ctx.barrier()
        seconds.append(time.perf_counter() - start)
    torch.save({"grad": first, "seconds": seconds[2:]}, Path(out) / f"rank{rank}.pt")
    ctx.close()


def _launch(world: int, cfg: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="scnas-bench-ranks-") as tmp:
        port = _free_port()
        context = mp.get_context("spawn")
        procs = [context.Process(target=_rank_main, args=(r, world, port, cfg, tmp)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"{cfg['kind']} with {world} gloo ranks: a rank exited with {failed[0]}")
        results = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(world)]
    step = [max(s) for s in zip(*(r["seconds"] for r in results))]
    return {"grad": results[0]["grad"], "median_s": statistics.median(step)}


def ranks(opts: Options, section: Section) -> None:
    size = RANKS_QUICK if opts.quick else RANKS_FULL
    steps = min(opts.repeats, size["steps"])
    for kind, patch, width, what in (
        ("train", size["train_patch"], size["uresnet"], f"U-ResNet training step (width {size['uresnet']}, DDP)"),
        ("search", size["search_patch"], size["stem"], f"two-op search step, weights only (stem {size['stem']})"),
    ):
        cfg = {"kind": kind, "patch": patch, "width": width, "in_channels": 1, "classes": 3, "steps": steps}
        one, two = _launch(1, cfg), _launch(2, cfg)
        gap = float((two["grad"] - one["grad"]).norm() / one["grad"].norm())
        section.check(
            f"{what}, {patch}^3: |g(2 ranks) - g(1 process, whole batch)| / |g(1 process)|",
            gap,
            f"<= {GRAD_TOLERANCE[kind]:g}",
            gap <= GRAD_TOLERANCE[kind],
        )
        section.timings.append(
            Timing(
                f"{what}, {patch}^3, global batch {GLOBAL_BATCH}",
                "2 gloo ranks",
                "1 process",
                two["median_s"],
                one["median_s"],
                unit="s/step",
                note="ideal 0.5",
            )
        )


def run(opts: Options) -> Section:
    section = Section("scaling", "Growth with the patch size and from 1 to 2 gloo ranks")
    reason = peers.missing("nnunetv2")
    if reason:
        section.skipped = reason
        return section
    ranks(opts, section)
    patch_growth(opts, section)
    section.notes.append(
        "Patch growth: median of up to 3 interleaved runs after 1 warm-up, one thread; the search step in its own "
        "process. Ranks: the slowest rank's time per step, median over the steps after 2 warm-up steps."
    )
    return section
