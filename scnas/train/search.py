"""SCNAS stochastic bi-level search on one fold (paper section 2.2 and the implementation details).

The fold's training cases are split 4:1 into a weight set and an architecture set. Each iteration
takes an Adam step on the operation weights (weight-set batch) and then one on the architecture logits
alpha (architecture-set batch), each with a freshly sampled architecture (Algorithm 1 for
sampling="two"). The Gumbel temperature anneals exponentially from tau.start to tau.end over the
epochs; the weights' lr drops x0.1 after a 20-epoch plateau of the training loss (alpha's lr stays).
Outputs: genotype.json (written last), alpha_history.json, search_log.csv, checkpoint_latest.pt.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scnas.config import SearchConfig, StageConfig
from scnas.data.augment import augment_batch
from scnas.data.sampler import PatchSampler, prefetch
from scnas.data.splits import fold_cases, load_splits, split_for_search
from scnas.errors import ScnasError
from scnas.io import read_json, write_json
from scnas.nas import SearchNetwork
from scnas.nas.genotype import save_genotype
from scnas.train.checkpoint import load_checkpoint, save_checkpoint
from scnas.train.distributed import DistContext, init_distributed
from scnas.train.engine import (
    Precision,
    average_gradients,
    batch_sum_reducer,
    configure_device,
    cpu_state,
    progress,
    to_device,
    torch_generator,
    write_csv_log,
)
from scnas.train.loss import jaccard_loss
from scnas.train.retrain import num_classes

log = logging.getLogger("scnas.search")

LATEST = "checkpoint_latest.pt"
GENOTYPE = "genotype.json"


@dataclass(frozen=True)
class SearchRequest:
    preprocessed: Path
    splits: Path
    fold: int
    out_dir: Path
    stage: StageConfig
    task: str = ""


def temperature(cfg: SearchConfig, epoch: int) -> float:
    """Exponential annealing: tau.start at the first epoch, tau.end at the last."""
    if cfg.epochs == 1:
        return cfg.tau.end
    return cfg.tau.start * (cfg.tau.end / cfg.tau.start) ** (epoch / (cfg.epochs - 1))


def alpha_snapshot(net: SearchNetwork) -> dict[str, list[list[float]]]:
    """softmax(alpha) per cell type, for the alpha history plots."""
    return {
        name: torch.softmax(a.detach().float().cpu(), dim=-1).tolist()
        for name, a in zip(net.cell_types, net.arch_parameters())
    }


def search(req: SearchRequest, ctx: DistContext | None = None) -> dict[str, Any]:
    """Run (or resume, or skip when done) the architecture search of one fold."""
    ctx = ctx or init_distributed()
    out = Path(req.out_dir)
    if (out / GENOTYPE).exists():
        log.info("%s exists: search already done", out / GENOTYPE)
        return {"genotype": str(out / GENOTYPE), "skipped": True}
    cfg = req.stage.search
    plans = read_json(Path(req.preprocessed) / "plans.json")
    train_ids, _ = fold_cases(load_splits(req.splits), req.fold, str(req.splits))
    seed = req.stage.seed * 1000 + req.fold
    weight_ids, arch_ids = split_for_search(train_ids, cfg.arch_fraction, seed)
    device = ctx.device
    configure_device(device)

    torch.manual_seed(seed)
    net = SearchNetwork(
        int(plans["num_channels"]), num_classes(plans), cfg.stem_channels, sampling=cfg.sampling, seed=seed
    ).to(device)
    w_params, a_params = net.weight_parameters(), net.arch_parameters()
    w_opt = torch.optim.Adam(w_params, lr=cfg.weight_lr, betas=tuple(cfg.weight_betas))
    a_opt = torch.optim.Adam(a_params, lr=cfg.alpha_lr, betas=tuple(cfg.alpha_betas))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        w_opt, mode="min", factor=cfg.lr_factor, patience=cfg.patience
    )
    precision = Precision(device, cfg.amp)
    history: list[dict[str, Any]] = []
    alphas: list[dict[str, Any]] = []
    start_epoch = 0
    latest = out / LATEST
    if latest.exists():
        state = load_checkpoint(latest, map_location=device)
        net.load_state_dict(state["state_dict"])
        w_opt.load_state_dict(state["weight_optimizer"])
        a_opt.load_state_dict(state["alpha_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        precision.scaler.load_state_dict(state["scaler"])
        history, alphas = list(state["history"]), list(state["alpha_history"])
        start_epoch = int(state["epoch"]) + 1
        log.info("resuming %s from epoch %d", latest, start_epoch)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "search_split.json", {"weight_cases": weight_ids, "arch_cases": arch_ids})
        log.info(
            "search on %d weight-set and %d architecture-set cases, sampling=%s, stem %d, %d epochs",
            len(weight_ids),
            len(arch_ids),
            cfg.sampling,
            cfg.stem_channels,
            cfg.epochs,
        )

    patch = plans["patch_size"]
    w_sampler = PatchSampler.from_dir(req.preprocessed, weight_ids, patch, cfg.foreground_fraction)
    a_sampler = PatchSampler.from_dir(req.preprocessed, arch_ids, patch, cfg.foreground_fraction)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        net.tau = temperature(cfg, epoch)
        net.load_sampler_state(torch_generator(torch.device("cpu"), seed, epoch, 1).get_state())
        generator = torch_generator(device, seed, epoch, ctx.rank)
        args = (seed, epoch, cfg.iterations_per_epoch, cfg.batch_size, ctx.rank, ctx.world_size)
        pairs = zip(prefetch(w_sampler.batches(*args, stream=0)), prefetch(a_sampler.batches(*args, stream=1)))
        w_total = torch.zeros((), device=device, dtype=torch.float64)
        a_total = torch.zeros((), device=device, dtype=torch.float64)
        bar = progress(pairs, cfg.iterations_per_epoch, f"search epoch {epoch + 1}/{cfg.epochs}", ctx.is_main)
        net.train()
        for w_batch, a_batch in bar:
            w_total += _step(net, w_batch, w_params, w_opt, precision, generator, cfg, device, ctx)
            a_total += _step(net, a_batch, a_params, a_opt, precision, generator, cfg, device, ctx)
        w_loss = float(ctx.all_reduce_mean(w_total / cfg.iterations_per_epoch))
        a_loss = float(ctx.all_reduce_mean(a_total / cfg.iterations_per_epoch))
        if not (math.isfinite(w_loss) and math.isfinite(a_loss)):
            raise ScnasError(
                f"{out}: search loss became non-finite at epoch {epoch + 1}; lower search.weight_lr or disable amp"
            )
        lr = w_opt.param_groups[0]["lr"]
        scheduler.step(w_loss)
        history.append(
            {
                "epoch": epoch + 1,
                "tau": round(net.tau, 6),
                "weight_loss": round(w_loss, 6),
                "arch_loss": round(a_loss, 6),
                "weight_lr": lr,
                "seconds": round(time.time() - t0, 2),
                "genotype": json.dumps(net.genotype().to_dict()["cells"], separators=(",", ":")),
            }
        )
        alphas.append({"epoch": epoch + 1, "tau": net.tau, "softmax_alpha": alpha_snapshot(net)})
        if ctx.is_main:
            save_checkpoint(
                latest,
                {
                    "state_dict": cpu_state(net.state_dict()),
                    "weight_optimizer": cpu_state(w_opt.state_dict()),
                    "alpha_optimizer": cpu_state(a_opt.state_dict()),
                    "scheduler": scheduler.state_dict(),
                    "scaler": precision.scaler.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "alpha_history": alphas,
                },
            )
            write_csv_log(out / "search_log.csv", history)
            write_json(out / "alpha_history.json", alphas)
            log.info(
                "search epoch %d/%d  tau %.3f  weight loss %.4f  arch loss %.4f  lr %.3g  %.1fs",
                epoch + 1,
                cfg.epochs,
                net.tau,
                w_loss,
                a_loss,
                lr,
                history[-1]["seconds"],
            )
        ctx.barrier()

    genotype = net.genotype()
    if ctx.is_main:
        save_genotype(
            out / GENOTYPE,
            genotype,
            source={
                "task": req.task,
                "fold": req.fold,
                "epochs": cfg.epochs,
                "sampling": cfg.sampling,
                "stem_channels": cfg.stem_channels,
            },
        )
        log.info("wrote %s", out / GENOTYPE)
    ctx.barrier()
    return {"genotype": str(out / GENOTYPE), "epochs": len(history)}


def _step(
    net: SearchNetwork,
    batch,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    generator: torch.Generator,
    cfg: SearchConfig,
    device: torch.device,
    ctx: DistContext,
) -> torch.Tensor:
    """One Adam step on `params` (the weights or the alphas) with a freshly sampled architecture."""
    x, y = to_device(batch, device)
    x, y = augment_batch(x, y, cfg.augmentation, generator)
    with precision.autocast():
        loss = jaccard_loss(net(x), y, reduce_sums=batch_sum_reducer(ctx))
    optimizer.zero_grad(set_to_none=True)
    precision.backward(loss, inputs=params)
    average_gradients(params, ctx)
    precision.step(optimizer)
    return loss.detach()
