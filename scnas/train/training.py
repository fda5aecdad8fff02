"""Train one model on one fold with the paper's retrain recipe (U-ResNet baseline and SCNAS networks).

Adam (lr 3e-4, betas 0.9/0.999), Jaccard loss, lr x 0.2 after 30 epochs without training-loss
improvement (or nnU-Net's poly schedule, `train.schedule: poly`), stop at 500 epochs or once lr < 1e-7.
The fold's model is its final checkpoint (no model selection on the fold's validation cases); it records
the provenance of the run, and a rerun with identical settings reuses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scnas.config import TaskSettings, TrainConfig, dataclass_to_dict, steps_per_epoch
from scnas.data.augment import augment_batch, spatial_read_size
from scnas.data.plans import Plans
from scnas.data.sampler import PatchSampler, epoch_rng, prefetch
from scnas.fingerprint import Provenance, fingerprint
from scnas.io import write_json
from scnas.layout import CHECKPOINT, MODEL_INFO, TRAINING_LOG
from scnas.models.factory import build_model, describe
from scnas.models.spec import flops_report, model_spec
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
)
from scnas.train.loop import finish, fold_inputs, output_lock, reusable, run_epochs
from scnas.train.loss import jaccard_loss

log = logging.getLogger("scnas.train")


@dataclass(frozen=True)
class TrainRequest:
    preprocessed: Path
    splits: Path
    fold: int
    out_dir: Path
    model: str
    settings: TaskSettings
    genotype: Path | None = None


def fold_fingerprint(train_ids: list[str], val_ids: list[str]) -> str:
    """The fingerprint of one fold's split: other folds' cases do not enter it."""
    return fingerprint({"train": sorted(train_ids), "val": sorted(val_ids)})


def training_provenance(req: TrainRequest, spec: dict, plans: Plans, split: str) -> Provenance:
    """What a fold's model depends on: the training settings, the resolved model, plans, split, seed, fold."""
    settings = dataclass_to_dict(req.settings.train)
    del settings["upsample_before_reduce"]  # the model spec says it where it matters (genotype networks)
    if settings["schedule"] == "plateau":  # the default, so that models trained before the key keep their fingerprints
        del settings["schedule"]
    return Provenance.of(
        {
            "stage": "train",
            "seed": req.settings.seed,
            "fold": req.fold,
            "train": settings,
            "model": spec,
            "plans": plans.fingerprint,
            "split": split,
        }
    )


POLY_EXPONENT = 0.9


def poly_factor(epoch: int, max_epochs: int) -> float:
    """nnU-Net's poly schedule: the lr's factor at `epoch` (0-based), 1 at the first, near 0 at the last."""
    return (1 - epoch / max_epochs) ** POLY_EXPONENT


def lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    """The epoch-wise lr schedule `train.schedule` names."""
    if cfg.schedule == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: poly_factor(epoch, cfg.max_epochs))
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.patience
    )


class _Training:
    """One fold's training epochs, as the shared loop runs them."""

    def __init__(self, req: TrainRequest, spec: dict, plans: Plans, train_ids, val_ids, ctx: DistContext):
        self.cfg = cfg = req.settings.train
        self.ctx, self.device = ctx, ctx.device
        self.seed = req.settings.seed * 1000 + req.fold
        self.n_labels = len(plans.labels)
        torch.manual_seed(self.seed)
        self.model = build_model(spec).to(self.device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
        self.scheduler = lr_scheduler(self.optimizer, cfg)
        self.precision = Precision(self.device, cfg.amp)
        self.net = self.model
        if ctx.world_size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        patch, fg = plans.patch_size, cfg.foreground_fraction
        self.sampler = PatchSampler.from_dir(req.preprocessed, train_ids, patch, fg)
        self.val_sampler = (
            PatchSampler.from_dir(req.preprocessed, val_ids, patch, fg) if cfg.val_dice_every and val_ids else None
        )
        self.pool = batch_sum_reducer(ctx)
        self.steps = steps_per_epoch(cfg.iterations_per_epoch, len(train_ids), cfg.batch_size)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def stop_reason(self, epoch: int) -> str | None:
        return f"lr {self.lr:.3g} fell below {self.cfg.min_lr:.3g}" if self.lr < self.cfg.min_lr else None

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, ctx, device = self.cfg, self.ctx, self.device
        lr = self.lr
        self.net.train()
        generator = torch_generator(device, self.seed, epoch, ctx.rank)
        read = spatial_read_size(self.sampler.patch, cfg.augmentation)
        batches = prefetch(
            self.sampler.batches(self.seed, epoch, self.steps, cfg.batch_size, ctx.rank, ctx.world_size, read_size=read)
        )
        total = torch.zeros((), device=device, dtype=torch.float64)
        for batch in progress(batches, self.steps, f"epoch {epoch + 1}/{cfg.max_epochs}", ctx.is_main):
            x, y = to_device(batch, device)
            x, y = augment_batch(x, y, cfg.augmentation, generator, self.sampler.patch)
            with self.precision.autocast():
                loss = jaccard_loss(self.net(x), y, reduce_sums=self.pool)
            self.optimizer.zero_grad(set_to_none=True)
            self.precision.backward(loss)
            self.precision.step(self.optimizer)
            total += loss.detach()
        epoch_loss = float(ctx.all_reduce_mean(total / self.steps))
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(epoch_loss)
        else:
            self.scheduler.step()
        row: dict[str, Any] = {"train_loss": round(epoch_loss, 6), "lr": lr}
        if self.val_sampler is not None and (epoch + 1) % cfg.val_dice_every == 0:
            row["val_patch_dice"] = round(
                patch_dice(self.model, self.val_sampler, self.seed, device, self.precision, self.n_labels), 4
            )
        return row

    def state_dict(self) -> dict[str, Any]:
        return {
            "state_dict": cpu_state(self.model.state_dict()),
            "optimizer": cpu_state(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])


def _describe_row(row: dict[str, Any]) -> str:
    val = f"  val patch Dice {row['val_patch_dice']:.3f}" if "val_patch_dice" in row else ""
    return f"loss {row['train_loss']:.4f}  lr {row['lr']:.3g}{val}"


DEAD_LOSS = 1 - 1e-4


def warn_if_stuck_at_no_foreground(history: list[dict[str, Any]], where: Path) -> None:
    """Warn once when a training that had learned something falls to a Jaccard loss of ~1 and stays there.

    There the network scores every voxel background and the loss's gradient vanishes with the foreground
    probabilities (benchmarks/NOTES.md): the rest of the budget is wasted unless the lr is lowered.
    """
    if len(history) < 2 or history[-1]["train_loss"] < DEAD_LOSS or history[-2]["train_loss"] < DEAD_LOSS:
        return
    if len(history) > 2 and history[-3]["train_loss"] >= DEAD_LOSS:
        return
    lowest = min(row["train_loss"] for row in history)
    if lowest < 0.99:
        log.warning(
            "%s: the training loss fell to %.4f and is back at 1 since epoch %d: the network predicts no "
            "foreground anywhere, where the Jaccard loss has no gradient left; rerun with a lower train.lr",
            where,
            lowest,
            history[-2]["epoch"],
        )


def train(req: TrainRequest, ctx: DistContext | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse when final with identical settings) one fold; returns a short summary."""
    ctx = ctx or init_distributed()
    out = Path(req.out_dir)
    plans, train_ids, val_ids = fold_inputs(ctx, out, "training output folder", req.preprocessed, req.splits, req.fold)
    spec = model_spec(req.model, plans, req.settings.train, req.genotype)
    provenance = training_provenance(req, spec, plans, fold_fingerprint(train_ids, val_ids))
    final_path = out / CHECKPOINT
    with output_lock(ctx, out, "training", [CHECKPOINT, MODEL_INFO, TRAINING_LOG]):
        if final_path.exists() and reusable(
            load_checkpoint(final_path).get("provenance"), provenance, final_path, "training"
        ):
            log.info("%s exists with identical settings: fold already trained", final_path)
            return {"checkpoint": str(final_path), "skipped": True}
        configure_device(ctx.device)
        stage = _Training(req, spec, plans, train_ids, val_ids, ctx)
        if ctx.is_main:
            report = flops_report(spec, plans, req.settings.train)
            write_json(out / MODEL_INFO, {"model": req.model, "spec": spec, **report})
            ratio = report["gflops"] / report["uresnet_gflops"]
            if spec["arch"] != "uresnet" and not 0.9 <= ratio <= 1.1:
                log.warning(
                    "%s costs %.2fx the U-ResNet's FLOPs: the comparison is not at equal cost "
                    "(set train.scnas_stem_channels: match_flops)",
                    req.model,
                    ratio,
                )
            log.info(
                "%s: %.2f GFLOPs per forward pass at patch %s (U-ResNet baseline: %.2f GFLOPs); %d iterations of "
                "batch %d per epoch",
                describe(spec),
                report["gflops"],
                list(plans.patch_size),
                report["uresnet_gflops"],
                stage.steps,
                req.settings.train.batch_size,
            )
        history = run_epochs(
            stage,
            out_dir=out,
            provenance=provenance,
            epochs=req.settings.train.max_epochs,
            ctx=ctx,
            device=ctx.device,
            log_name=TRAINING_LOG,
            checked=("train_loss",),
            describe=_describe_row,
            after_epoch=lambda history: warn_if_stuck_at_no_foreground(history, out),
        )
        if ctx.is_main:
            save_checkpoint(
                final_path,
                {
                    "format": MODEL_FORMAT,
                    "version": MODEL_VERSION,
                    "provenance": provenance.to_dict(),
                    "model": spec,
                    "state_dict": cpu_state(stage.model.state_dict()),
                    "plans": plans.to_dict(),
                    "inference": dataclass_to_dict(req.settings.inference),
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
        finish(out, ctx)
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
