"""Train one model on one fold with the paper's retrain recipe (U-ResNet baseline and SCNAS networks).

Adam (lr 3e-4, betas 0.9/0.999), Jaccard loss, lr x 0.2 after 30 epochs without training-loss
improvement, stop at 500 epochs or once lr < 1e-7. A checkpoint is written every epoch and the run
resumes from it when started again; the fold's model is its final checkpoint (no model selection on
the fold's validation cases).
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

from scnas.config import StageConfig, TrainConfig, dataclass_to_dict
from scnas.data.augment import augment_batch
from scnas.data.sampler import PatchSampler, epoch_rng, prefetch
from scnas.data.splits import fold_cases, load_splits
from scnas.errors import ScnasError
from scnas.io import read_json, write_json
from scnas.models.factory import build_model, describe
from scnas.train.checkpoint import MODEL_FORMAT, MODEL_VERSION, load_checkpoint, save_checkpoint
from scnas.train.distributed import DistContext, init_distributed
from scnas.train.engine import (
    Precision,
    batch_sum_reducer,
    configure_device,
    cpu_state,
    progress,
    to_device,
    torch_generator,
    write_csv_log,
)
from scnas.train.loss import jaccard_loss

log = logging.getLogger("scnas.train")

LATEST = "checkpoint_latest.pt"
FINAL = "checkpoint_final.pt"


@dataclass(frozen=True)
class RetrainRequest:
    preprocessed: Path
    splits: Path
    fold: int
    out_dir: Path
    model: str
    stage: StageConfig
    genotype: Path | None = None


def num_classes(plans: dict) -> int:
    values = sorted(int(k) for k in plans["labels"])
    if values != list(range(len(values))):
        raise ScnasError(
            f"plans: label values {values} are not 0..{len(values) - 1}; renumber the labels in dataset.json"
        )
    return len(values)


def model_spec(model: str, plans: dict, train: TrainConfig, genotype: Path | None) -> dict[str, Any]:
    """The architecture of `model` for this task, with the stem width resolved (match_flops)."""
    in_ch, n_cls = int(plans["num_channels"]), num_classes(plans)
    uresnet = {
        "arch": "uresnet",
        "in_channels": in_ch,
        "num_classes": n_cls,
        "base_channels": train.uresnet_channels,
        "combine_levels": train.deep_supervision,
    }
    if model == "uresnet":
        return uresnet
    if model not in ("scnas", "scnas_transfer"):
        raise ScnasError(f"model {model!r}: unknown (known: uresnet, scnas, scnas_transfer)")
    if genotype is None:
        raise ScnasError(f"model {model}: needs a genotype file (--genotype)")
    from scnas.nas.genotype import genotype_to_dict, load_genotype

    spec = {
        "arch": "genotype",
        "in_channels": in_ch,
        "num_classes": n_cls,
        "genotype": genotype_to_dict(load_genotype(genotype)),
    }
    stem = train.scnas_stem_channels
    if stem == "match_flops":
        from scnas.models.flops import count_gflops, match_width

        target = count_gflops(build_model(uresnet), (1, in_ch, *plans["patch_size"]))
        stem, _ = match_width(
            lambda c: build_model({**spec, "stem_channels": c}),
            target,
            (1, in_ch, *plans["patch_size"]),
            lo=4,
            hi=256,
            step=4,
        )
    return {**spec, "stem_channels": int(stem)}


def flops_report(spec: dict, plans: dict, train: TrainConfig) -> dict[str, Any]:
    """GFLOPs of one forward pass at the task's patch size, for this model and the U-ResNet baseline."""
    from scnas.models.flops import count_gflops

    shape = (1, int(plans["num_channels"]), *plans["patch_size"])
    own = count_gflops(build_model(spec), shape)
    base_spec = {
        "arch": "uresnet",
        "in_channels": spec["in_channels"],
        "num_classes": spec["num_classes"],
        "base_channels": train.uresnet_channels,
        "combine_levels": train.deep_supervision,
    }
    base = own if spec["arch"] == "uresnet" else count_gflops(build_model(base_spec), shape)
    return {"gflops": own, "uresnet_gflops": base, "patch_size": list(plans["patch_size"])}


def retrain(req: RetrainRequest, ctx: DistContext | None = None) -> dict[str, Any]:
    """Train (or resume, or skip when already final) one fold; returns a short summary."""
    ctx = ctx or init_distributed()
    out = Path(req.out_dir)
    final_path = out / FINAL
    if final_path.exists():
        log.info("%s exists: fold already trained", final_path)
        return {"checkpoint": str(final_path), "skipped": True}
    cfg = req.stage.train
    plans = read_json(Path(req.preprocessed) / "plans.json")
    train_ids, val_ids = fold_cases(load_splits(req.splits), req.fold, str(req.splits))
    spec = model_spec(req.model, plans, cfg, req.genotype)
    device = ctx.device
    configure_device(device)
    seed = req.stage.seed * 1000 + req.fold

    torch.manual_seed(seed)
    model = build_model(spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.patience
    )
    precision = Precision(device, cfg.amp)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    latest = out / LATEST
    if latest.exists():
        state = load_checkpoint(latest, map_location=device)
        if json.dumps(state.get("model"), sort_keys=True) != json.dumps(spec, sort_keys=True):
            raise ScnasError(f"{latest}: was written for another model or config; delete it to start this fold again")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        precision.scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        log.info("resuming %s from epoch %d", latest, start_epoch)

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        report = flops_report(spec, plans, cfg)
        write_json(out / "model.json", {"model": req.model, "spec": spec, **report})
        log.info(
            "%s: %.2f GFLOPs per forward pass at patch %s (U-ResNet baseline: %.2f GFLOPs)",
            describe(spec),
            report["gflops"],
            plans["patch_size"],
            report["uresnet_gflops"],
        )
    net = model
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    sampler = PatchSampler.from_dir(req.preprocessed, train_ids, plans["patch_size"], cfg.foreground_fraction)
    val_sampler = (
        PatchSampler.from_dir(req.preprocessed, val_ids, plans["patch_size"], cfg.foreground_fraction)
        if cfg.val_dice_every and val_ids
        else None
    )
    pool = batch_sum_reducer(ctx)
    for epoch in range(start_epoch, cfg.max_epochs):
        lr = optimizer.param_groups[0]["lr"]
        if lr < cfg.min_lr:
            log.info("lr %.3g fell below %.3g: stopping at epoch %d", lr, cfg.min_lr, epoch)
            break
        t0 = time.time()
        net.train()
        generator = torch_generator(device, seed, epoch, ctx.rank)
        batches = prefetch(
            sampler.batches(seed, epoch, cfg.iterations_per_epoch, cfg.batch_size, ctx.rank, ctx.world_size)
        )
        total = torch.zeros((), device=device, dtype=torch.float64)
        bar = progress(batches, cfg.iterations_per_epoch, f"epoch {epoch + 1}/{cfg.max_epochs}", ctx.is_main)
        for batch in bar:
            x, y = to_device(batch, device)
            x, y = augment_batch(x, y, cfg.augmentation, generator)
            with precision.autocast():
                loss = jaccard_loss(net(x), y, reduce_sums=pool)
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)
            precision.step(optimizer)
            total += loss.detach()
        epoch_loss = float(ctx.all_reduce_mean(total / cfg.iterations_per_epoch))
        if not math.isfinite(epoch_loss):
            raise ScnasError(
                f"{out}: training loss became {epoch_loss} at epoch {epoch + 1}; lower train.lr or disable amp"
            )
        scheduler.step(epoch_loss)
        row = {"epoch": epoch + 1, "train_loss": round(epoch_loss, 6), "lr": lr, "seconds": round(time.time() - t0, 2)}
        if val_sampler is not None and (epoch + 1) % cfg.val_dice_every == 0:
            row["val_patch_dice"] = round(
                patch_dice(model, val_sampler, seed, device, precision, len(plans["labels"])), 4
            )
        history.append(row)
        if ctx.is_main:
            save_checkpoint(
                latest,
                {
                    "model": spec,
                    "state_dict": cpu_state(model.state_dict()),
                    "optimizer": cpu_state(optimizer.state_dict()),
                    "scheduler": scheduler.state_dict(),
                    "scaler": precision.scaler.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "torch_rng": torch.get_rng_state(),
                },
            )
            write_csv_log(out / "training_log.csv", history)
            log.info(
                "epoch %d/%d  loss %.4f  lr %.3g  %.1fs%s",
                epoch + 1,
                cfg.max_epochs,
                epoch_loss,
                lr,
                row["seconds"],
                f"  val patch Dice {row['val_patch_dice']:.3f}" if "val_patch_dice" in row else "",
            )
        ctx.barrier()

    if ctx.is_main:
        save_checkpoint(
            final_path,
            {
                "format": MODEL_FORMAT,
                "version": MODEL_VERSION,
                "model": spec,
                "state_dict": cpu_state(model.state_dict()),
                "plans": plans,
                "inference": dataclass_to_dict(req.stage.inference),
                "trained": {
                    "model": req.model,
                    "fold": req.fold,
                    "epochs": len(history),
                    "final_train_loss": history[-1]["train_loss"] if history else None,
                    "train_cases": train_ids,
                },
            },
        )
        log.info("wrote %s", final_path)
    ctx.barrier()
    return {"checkpoint": str(final_path), "epochs": len(history)}


@torch.no_grad()
def patch_dice(
    model: torch.nn.Module,
    sampler: PatchSampler,
    seed: int,
    device: torch.device,
    precision: Precision,
    n_classes: int,
    patches: int = 16,
) -> float:
    """Mean foreground Dice on a fixed set of validation patches: for the curves only, never for selection."""
    model.eval()
    rng = epoch_rng(seed, 0, stream=99)
    inter = torch.zeros(n_classes, device=device)
    denom = torch.zeros(n_classes, device=device)
    for _ in range(patches):
        image, label = sampler.read(sampler.draw(rng))
        x = torch.from_numpy(image[None]).to(device)
        y = torch.from_numpy(label[None]).to(device)
        with precision.autocast():
            pred = model(x).argmax(1)
        for c in range(1, n_classes):
            p, t = pred == c, y == c
            inter[c] += (p & t).sum()
            denom[c] += p.sum() + t.sum()
    model.train()
    dice = [(2 * inter[c] / denom[c]).item() for c in range(1, n_classes) if denom[c] > 0]
    return sum(dice) / len(dice) if dice else float("nan")
