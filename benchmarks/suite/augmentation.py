"""Training augmentation per sample, one thread: scnas.data.augment.augment_batch against batchgeneratorsv2's
composed transforms as nnUNetTrainer.get_training_transforms builds them.

Both get the same region (scnas.data.augment.spatial_read_size of the patch, where it exists: the margin
rotation and scaling need) and return the patch; ours augments batches of 2, nnU-Net one sample at a
time, each a fresh copy (its transforms write in place; its loader hands them fresh arrays). Timed
with each tool's defaults, nnU-Net v2's transform set on both sides (the notes say where not).
Agreement, before timing, with pinned parameters (each transform alone, its range collapsed to a point
above 1, since batchgeneratorsv2's BGContrast still draws from [low, 1] half the time when low < 1; on
random 2-channel volumes): every transform off returns the input unchanged on both sides; gamma,
inverted gamma, contrast and brightness equal batchgeneratorsv2's to 1e-4; blur and simulated low
resolution (each channel done with probability 1/2 on both sides) leave each channel either unchanged
or equal to batchgeneratorsv2's result to 1e-4; scaling by 1.25 agrees with SpatialTransform's to 1e-3
on the image and on 99 % of the labels.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import torch

from benchmarks import peers
from benchmarks.timing import Options, Section, Timing, time_interleaved

BATCH = 2
TOLERANCE = 1e-4
SPATIAL_TOLERANCE = 1e-3
LABEL_AGREEMENT = 0.99
CHECK_SHAPE = (2, 2, 20, 20, 20)
FULL = [((1, 64, 64, 64), 16), ((4, 128, 128, 128), 4)]  # (channels, *patch), samples per timed call
QUICK = [((1, 16, 16, 16), 2)]


def _augment_module() -> Any:
    from scnas.data import augment

    return augment


def default_cfg() -> Any:
    from scnas.config import task_settings

    return task_settings({}).train.augmentation


def _off(cfg: Any) -> Any:
    return dataclasses.replace(cfg, **{f.name: 0.0 for f in dataclasses.fields(cfg) if f.name.startswith("p_")})


def ours_augment(cfg: Any, seed: int = 0) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    augment = _augment_module()
    takes_patch = "patch_size" in inspect.signature(augment.augment_batch).parameters
    generator = torch.Generator().manual_seed(seed)

    def call(image: torch.Tensor, label: torch.Tensor, patch: tuple[int, ...] | None = None):
        if takes_patch:
            return augment.augment_batch(image, label, cfg, generator, patch)
        return augment.augment_batch(image, label, cfg, generator)

    return call


def read_size(patch: tuple[int, ...], cfg: Any) -> tuple[int, ...]:
    """The region both tools get for `patch`: ours' spatial_read_size where the module has one."""
    size = getattr(_augment_module(), "spatial_read_size", None)
    return tuple(size(patch, cfg)) if size is not None else patch


def _channelwise(section: Section, what: str, ours: torch.Tensor, image: torch.Tensor, theirs: torch.Tensor) -> None:
    """Each channel of `ours` must equal the input's or the peer's (which did every channel)."""
    done = unchanged = 0
    worst = 0.0
    for o, x, t in zip(ours.flatten(0, 1), image.flatten(0, 1), theirs.flatten(0, 1)):
        if torch.equal(o, x):
            unchanged += 1
        else:
            done += 1
            worst = max(worst, float((o - t).abs().max()))
    section.check(
        f"{what}: channels done / untouched {done}/{unchanged}; max |ours - batchgeneratorsv2| on those done",
        worst if done else "none done",
        f"<= {TOLERANCE:g}, at least one done",
        done > 0 and worst <= TOLERANCE,
    )


def agreement(section: Section) -> None:
    """The pinned-parameter checks of the module docstring."""
    cfg = default_cfg()
    off = _off(cfg)
    names = {f.name for f in dataclasses.fields(cfg)}
    torch.manual_seed(0)
    image = torch.randn(CHECK_SHAPE)
    label = torch.randint(0, 3, CHECK_SHAPE[:1] + CHECK_SHAPE[2:])
    patch = tuple(CHECK_SHAPE[2:])

    out, out_label = ours_augment(off)(image.clone(), label.clone())
    section.check(
        "all transforms off: ours returns its input",
        "exact" if torch.equal(out, image) else "differs",
        "exact",
        torch.equal(out, image) and torch.equal(out_label, label),
    )
    peer_off = peers.nnunet_transforms_off(peers.nnunet_training_transforms(patch))
    theirs, their_label = peers.apply_per_sample(peer_off, image, label)
    section.check(
        "all transforms off: batchgeneratorsv2 returns its input",
        "exact" if torch.equal(theirs, image) else f"max diff {float((theirs - image).abs().max()):.3g}",
        "exact",
        torch.equal(theirs, image) and torch.equal(their_label, label),
    )

    pinned: list[tuple[str, dict[str, Any], Callable[[torch.Tensor], torch.Tensor]]] = [
        ("gamma 1.4", {"p_gamma": 1.0, "gamma": (1.4, 1.4)}, lambda x: peers.bgv2_gamma(x, 1.4, False)),
        ("inverted gamma 1.3", {"p_gamma_invert": 1.0, "gamma": (1.3, 1.3)}, lambda x: peers.bgv2_gamma(x, 1.3, True)),
        ("contrast 1.2", {"p_contrast": 1.0, "contrast": (1.2, 1.2)}, lambda x: peers.bgv2_contrast(x, 1.2)),
        ("brightness 1.1", {"p_brightness": 1.0, "brightness": (1.1, 1.1)}, lambda x: peers.bgv2_brightness(x, 1.1)),
    ]
    for what, change, peer in pinned:
        out, _ = ours_augment(dataclasses.replace(off, **change))(image.clone(), label.clone())
        theirs = torch.stack([peer(x) for x in image])
        diff = float((out - theirs).abs().max())
        section.check(f"{what}: max |ours - batchgeneratorsv2|", diff, f"<= {TOLERANCE:g}", diff <= TOLERANCE)

    per_channel = [("blur sigma 0.8", {"p_blur": 1.0, "blur_sigma": (0.8, 0.8)}, lambda x: peers.bgv2_blur(x, 0.8))]
    if "p_low_resolution" in names:
        per_channel.append(
            (
                "low resolution 0.5",
                {"p_low_resolution": 1.0, "low_resolution_scale": (0.5, 0.5)},
                lambda x: peers.bgv2_low_resolution(x, 0.5),
            )
        )
    else:
        section.notes.append("scnas.data.augment has no simulated low resolution: that check and transform are absent.")
    for what, change, peer in per_channel:
        out, _ = ours_augment(dataclasses.replace(off, **change))(image.clone(), label.clone())
        _channelwise(section, what, out, image, torch.stack([peer(x) for x in image]))

    out, out_label = ours_augment(dataclasses.replace(off, p_scaling=1.0, scaling=(1.25, 1.25)))(
        image.clone(), label.clone()
    )
    pairs = [peers.bgv2_scaling(x, y, 1.25) for x, y in zip(image, label)]
    theirs, their_label = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    diff = float((out - theirs).abs().max())
    section.check(
        "scaling 1.25, image: max |ours - SpatialTransform|",
        diff,
        f"<= {SPATIAL_TOLERANCE:g}",
        diff <= SPATIAL_TOLERANCE,
    )
    same = float((out_label == their_label).float().mean())
    section.check("scaling 1.25, labels equal", f"{same:.2%}", f">= {LABEL_AGREEMENT:.0%}", same >= LABEL_AGREEMENT)


def per_sample_seconds(
    ours: Callable[..., Any], channels: int, patch: tuple[int, ...], samples: int, repeats: int, warmup: int
) -> tuple[tuple[int, ...], float, float]:
    """The region, and the median seconds per sample of ours and of nnU-Net's transforms, interleaved,
    each run augmenting `samples` samples (ours in batches of BATCH) of random data."""
    region = read_size(patch, default_cfg())
    image = torch.randn((BATCH, channels, *region))
    label = torch.randint(0, 3, (BATCH, *region))
    peer = peers.nnunet_training_transforms(patch)

    def run_ours() -> None:
        for _ in range(samples // BATCH):
            ours(image, label, patch)

    def run_peer() -> None:
        for _ in range(samples // BATCH):
            peers.apply_per_sample(peer, image, label)

    times = time_interleaved({"ours": run_ours, "peer": run_peer}, repeats, warmup)
    return region, times["ours"]["median_s"] / samples, times["peer"]["median_s"] / samples


def run(opts: Options) -> Section:
    section = Section("augmentation", "Training augmentation, per sample, one thread")
    reason = peers.missing("nnunetv2", "batchgeneratorsv2")
    if reason:
        section.skipped = reason
        return section
    agreement(section)
    cfg = default_cfg()
    ours = ours_augment(cfg, seed=1)
    torch.manual_seed(1)
    for (channels, *patch), samples in QUICK if opts.quick else FULL:
        patch = tuple(patch)
        region, ours_s, peer_s = per_sample_seconds(ours, channels, patch, samples, opts.repeats, opts.warmup)
        section.timings.append(
            Timing(
                f"{channels}x{'x'.join(map(str, patch))} patch from a {'x'.join(map(str, region))} region",
                "augment_batch (batches of 2)",
                "nnU-Net v2 (batchgeneratorsv2)",
                ours_s,
                peer_s,
                unit="s/sample",
                note=f"{samples} samples per run",
            )
        )
    section.notes.append(
        f"Defaults of both (nnU-Net v2's set; elastic deformation p = {cfg.p_elastic} here, off in nnU-Net v2). "
        f"Median of {opts.repeats} interleaved runs after {opts.warmup} warm-up; random draws differ between "
        "runs, so each run covers several samples."
    )
    return section
