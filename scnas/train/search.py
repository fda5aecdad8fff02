"""SCNAS stochastic bi-level search on one fold (paper section 2.2 and the implementation details).

The fold's training cases are split 4:1 into a weight set and an architecture set. Each iteration
takes an Adam step on the operation weights (weight-set batch) and then one on the architecture logits
alpha (architecture-set batch), each with a freshly sampled architecture (Algorithm 1 for
sampling="two"). The Gumbel temperature anneals exponentially from tau.start to tau.end over the
epochs; the weights' lr drops x0.1 after a 20-epoch plateau of the training loss (alpha's lr stays, but
for the optional extra epochs at tau.end, where it can decay so that the logits settle). Optional warm-up
epochs before the schedule take the weight steps only.
Outputs: genotype.json (written last, with the search's provenance), alpha_history.json, search_log.csv.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scnas.config import SearchConfig, TaskSettings, dataclass_to_dict, steps_per_epoch
from scnas.data.augment import augment_batch, spatial_read_size
from scnas.data.plans import Plans
from scnas.data.sampler import PatchSampler, prefetch
from scnas.data.splits import split_for_search
from scnas.fingerprint import Provenance
from scnas.io import read_json, write_json
from scnas.layout import ALPHA_HISTORY, GENOTYPE, SEARCH_LOG, SEARCH_SUMMARY
from scnas.nas import SearchNetwork, diagnostics
from scnas.nas.genotype import save_genotype
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
)
from scnas.train.loop import finish, fold_inputs, output_lock, reusable, run_epochs
from scnas.train.loss import jaccard_loss
from scnas.train.training import fold_fingerprint

log = logging.getLogger("scnas.search")

SPLIT = "search_split.json"


@dataclass(frozen=True)
class SearchRequest:
    preprocessed: Path
    splits: Path
    fold: int
    out_dir: Path
    settings: TaskSettings
    task: str = ""


def temperature(cfg: SearchConfig, epoch: int) -> float:
    """Exponential annealing: tau.start through the warm-up and at the schedule's first epoch, tau.end at its
    last and after it."""
    epoch -= cfg.warmup_epochs
    if epoch < 0:
        return cfg.tau.start
    if cfg.epochs == 1 or epoch >= cfg.epochs - 1:
        return cfg.tau.end
    return cfg.tau.start * (cfg.tau.end / cfg.tau.start) ** (epoch / (cfg.epochs - 1))


def alpha_lr(cfg: SearchConfig, epoch: int) -> float:
    """alpha's lr at `epoch`: search.alpha_lr through the schedule, x extra_alpha_lr_factor per extra epoch."""
    return cfg.alpha_lr * cfg.extra_alpha_lr_factor ** max(0, epoch - cfg.warmup_epochs - cfg.epochs + 1)


def alpha_snapshot(net: SearchNetwork) -> dict[str, list[list[float]]]:
    """softmax(alpha) per cell type, for the alpha history plots."""
    return {
        name: torch.softmax(a.detach().float().cpu(), dim=-1).tolist()
        for name, a in zip(net.cell_types, net.arch_parameters())
    }


def search_provenance(req: SearchRequest, plans: Plans, split: str) -> Provenance:
    """What a fold's genotype depends on: the search settings, plans, split, seed and fold."""
    settings = dataclass_to_dict(req.settings.search)
    if not settings["extra_epochs"]:  # absent means none, so searches made before the key keep their fingerprints
        del settings["extra_epochs"]
    if settings["extra_alpha_lr_factor"] == 1.0 or not settings.get("extra_epochs"):  # likewise: no decay
        del settings["extra_alpha_lr_factor"]
    if not settings["warmup_epochs"]:
        del settings["warmup_epochs"]
    return Provenance.of(
        {
            "stage": "search",
            "seed": req.settings.seed,
            "fold": req.fold,
            "search": settings,
            "plans": plans.fingerprint,
            "split": split,
        }
    )


class _Search:
    """One fold's search epochs, as the shared loop runs them."""

    def __init__(self, req: SearchRequest, plans: Plans, weight_ids, arch_ids, ctx: DistContext):
        self.cfg = cfg = req.settings.search
        self.ctx, self.device = ctx, ctx.device
        self.seed = req.settings.seed * 1000 + req.fold
        torch.manual_seed(self.seed)
        self.net = SearchNetwork(
            int(plans.num_channels), plans.num_classes, cfg.stem_channels, sampling=cfg.sampling, seed=self.seed
        ).to(self.device)
        self.w_params, self.a_params = self.net.weight_parameters(), self.net.arch_parameters()
        self.w_opt = torch.optim.Adam(self.w_params, lr=cfg.weight_lr, betas=tuple(cfg.weight_betas))
        self.a_opt = torch.optim.Adam(self.a_params, lr=cfg.alpha_lr, betas=tuple(cfg.alpha_betas))
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.w_opt, mode="min", factor=cfg.lr_factor, patience=cfg.patience
        )
        self.precision = Precision(self.device, cfg.amp)
        patch = plans.patch_size
        self.w_sampler = PatchSampler.from_dir(req.preprocessed, weight_ids, patch, cfg.foreground_fraction)
        self.a_sampler = PatchSampler.from_dir(req.preprocessed, arch_ids, patch, cfg.foreground_fraction)
        self.steps = steps_per_epoch(cfg.iterations_per_epoch, len(weight_ids), cfg.batch_size)
        self.alphas: list[dict[str, Any]] = []
        self.genotypes: list[str] = []

    def stop_reason(self, epoch: int) -> str | None:
        """After the warm-up and the schedule's epochs, stop at the first epoch whose genotype history is stable."""
        if epoch >= self.cfg.warmup_epochs + self.cfg.epochs and diagnostics.converged(self.genotypes):
            return f"the genotype is stable after {epoch} epochs"
        return None

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, ctx, device, net = self.cfg, self.ctx, self.device, self.net
        net.tau = temperature(cfg, epoch)
        for group in self.a_opt.param_groups:
            group["lr"] = alpha_lr(cfg, epoch)
        net.load_sampler_state(torch_generator(torch.device("cpu"), self.seed, epoch, 1).get_state())
        generator = torch_generator(device, self.seed, epoch, ctx.rank)
        args = (self.seed, epoch, self.steps, cfg.batch_size, ctx.rank, ctx.world_size)
        read = spatial_read_size(self.w_sampler.patch, cfg.augmentation)
        pairs = zip(
            prefetch(self.w_sampler.batches(*args, stream=0, read_size=read)),
            prefetch(self.a_sampler.batches(*args, stream=1, read_size=read)),
        )
        w_total = torch.zeros((), device=device, dtype=torch.float64)
        a_total = torch.zeros((), device=device, dtype=torch.float64)
        net.train()
        warmup = epoch < cfg.warmup_epochs
        label = f"search epoch {epoch + 1}/{cfg.warmup_epochs + cfg.epochs}" + (
            f" (+{cfg.extra_epochs})" if cfg.extra_epochs else ""
        )
        for w_batch, a_batch in progress(pairs, self.steps, label + (" (warm-up)" if warmup else ""), ctx.is_main):
            w_total += self._step(w_batch, self.w_params, self.w_opt, generator)
            a_total += self._step(a_batch, self.a_params, None if warmup else self.a_opt, generator)
        w_loss = float(ctx.all_reduce_mean(w_total / self.steps))
        a_loss = float(ctx.all_reduce_mean(a_total / self.steps))
        lr = self.w_opt.param_groups[0]["lr"]
        self.scheduler.step(w_loss)
        probs = alpha_snapshot(net)
        figures = diagnostics.epoch_figures(probs, self.alphas[-1]["softmax_alpha"] if self.alphas else None)
        self.alphas.append({"epoch": epoch + 1, "tau": net.tau, "softmax_alpha": probs, "diagnostics": figures})
        genotype = json.dumps(net.genotype().to_dict()["cells"], separators=(",", ":"))
        self.genotypes.append(genotype)
        return {
            "tau": round(net.tau, 6),
            "weight_loss": round(w_loss, 6),
            "arch_loss": round(a_loss, 6),
            "weight_lr": lr,
            "alpha_lr": 0.0 if warmup else self.a_opt.param_groups[0]["lr"],
            "steps": self.steps,
            "alpha_steps": 0 if warmup else self.steps,
            "mean_entropy": round(sum(f["entropy"] for f in figures.values()) / len(figures), 4),
            "mean_max_prob": round(sum(f["max_prob"] for f in figures.values()) / len(figures), 4),
            "argmax_changes": sum(f["argmax_changes"] for f in figures.values()),
            "genotype": genotype,
        }

    def _step(
        self, batch, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer | None, generator
    ) -> torch.Tensor:
        """One Adam step on `params` (the weights or the alphas) with a freshly sampled architecture; with no
        optimizer (the warm-up's alpha batches) only the loss, on the same draws."""
        x, y = to_device(batch, self.device)
        x, y = augment_batch(x, y, self.cfg.augmentation, generator, self.w_sampler.patch)
        if optimizer is None:
            with torch.no_grad(), self.precision.autocast():
                return jaccard_loss(self.net(x), y, reduce_sums=batch_sum_reducer(self.ctx)).detach()
        with self.precision.autocast():
            loss = jaccard_loss(self.net(x), y, reduce_sums=batch_sum_reducer(self.ctx))
        optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss, inputs=params)
        average_gradients(params, self.ctx)
        self.precision.step(optimizer)
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {
            "state_dict": cpu_state(self.net.state_dict()),
            "weight_optimizer": cpu_state(self.w_opt.state_dict()),
            "alpha_optimizer": cpu_state(self.a_opt.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "alpha_history": self.alphas,
            "genotypes": self.genotypes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["state_dict"])
        self.w_opt.load_state_dict(state["weight_optimizer"])
        self.a_opt.load_state_dict(state["alpha_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.alphas = list(state["alpha_history"])
        self.genotypes = list(state["genotypes"])


def _describe_row(row: dict[str, Any]) -> str:
    return (
        f"tau {row['tau']:.3f}  weight loss {row['weight_loss']:.4f}  arch loss {row['arch_loss']:.4f}  "
        f"lr {row['weight_lr']:.3g}  entropy {row['mean_entropy']:.3f}  max p {row['mean_max_prob']:.3f}  "
        f"argmax changes {row['argmax_changes']}"
    )


def _genotype_provenance(path: Path) -> Any:
    try:
        return read_json(path).get("source", {}).get("provenance")
    except (OSError, ValueError, AttributeError):
        return None


def search(req: SearchRequest, ctx: DistContext | None = None) -> dict[str, Any]:
    """Run (or resume, or reuse when done with identical settings) the architecture search of one fold."""
    ctx = ctx or init_distributed()
    out = Path(req.out_dir)
    cfg = req.settings.search
    plans, train_ids, val_ids = fold_inputs(ctx, out, "search output folder", req.preprocessed, req.splits, req.fold)
    provenance = search_provenance(req, plans, fold_fingerprint(train_ids, val_ids))
    seed = req.settings.seed * 1000 + req.fold
    weight_ids, arch_ids = split_for_search(train_ids, cfg.arch_fraction, seed)
    genotype_path = out / GENOTYPE
    with output_lock(ctx, out, "search", [GENOTYPE, SEARCH_LOG, ALPHA_HISTORY, SPLIT, SEARCH_SUMMARY]):
        if genotype_path.exists() and reusable(
            _genotype_provenance(genotype_path), provenance, genotype_path, "searching"
        ):
            log.info("%s exists with identical settings: search already done", genotype_path)
            return {"genotype": str(genotype_path), "skipped": True}
        configure_device(ctx.device)
        stage = _Search(req, plans, weight_ids, arch_ids, ctx)
        if ctx.is_main:
            write_json(out / SPLIT, {"weight_cases": weight_ids, "arch_cases": arch_ids})
            log.info(
                "search on %d weight-set and %d architecture-set cases, sampling=%s, stem %d, %d warm-up and %d "
                "epochs (+ up to %d until stable) of %d weight and %d alpha steps (batch %d)",
                len(weight_ids),
                len(arch_ids),
                cfg.sampling,
                cfg.stem_channels,
                cfg.warmup_epochs,
                cfg.epochs,
                cfg.extra_epochs,
                stage.steps,
                stage.steps,
                cfg.batch_size,
            )
        history = run_epochs(
            stage,
            out_dir=out,
            provenance=provenance,
            epochs=cfg.warmup_epochs + cfg.epochs + cfg.extra_epochs,
            ctx=ctx,
            device=ctx.device,
            log_name=SEARCH_LOG,
            checked=("weight_loss", "arch_loss"),
            describe=_describe_row,
            after_epoch=lambda _: write_json(out / ALPHA_HISTORY, stage.alphas),
        )
        if ctx.is_main:
            steps = sum(int(row["steps"]) for row in history)
            alpha_steps = sum(int(row.get("alpha_steps", row["steps"])) for row in history)
            result = diagnostics.summary(history, stage.alphas, weight_steps=steps, alpha_steps=alpha_steps)
            write_json(out / SEARCH_SUMMARY, result)
            if not result["converged"]:
                log.warning(
                    "the genotype was still changing in the last %d%% of the epochs (stable since epoch %d of %d): "
                    "the search has not converged; search longer (search.epochs, or search.extra_epochs to continue "
                    "at tau.end until it is stable)",
                    round(100 * diagnostics.STABLE_FRACTION),
                    result["genotype_stable_since_epoch"],
                    len(history),
                )
            if not result["decisive"]:
                log.warning(
                    "softmax(alpha) is still near uniform (mean largest probability %.3f, uniform %.3f): the genotype "
                    "is an argmax of small differences; search longer or raise search.alpha_lr",
                    result["mean_max_prob"],
                    1 / 8,
                )
            save_genotype(
                genotype_path,
                stage.net.genotype(),
                source={
                    "task": req.task,
                    "fold": req.fold,
                    "epochs": len(history),
                    "sampling": cfg.sampling,
                    "stem_channels": cfg.stem_channels,
                    "provenance": provenance.to_dict(),
                },
            )
            log.info("wrote %s", genotype_path)
        finish(out, ctx)
    return {"genotype": str(genotype_path), "epochs": len(history)}
