"""The epoch loop that the search and training share: lock, fingerprinted resume, history, logs, NaN check.

Each epoch ends with a resumable state (checkpoint_latest.pt) that records the run's provenance. A
restarted run resumes it only when the provenance is identical; otherwise it logs the keys that differ,
deletes the stale state and starts afresh. A finished run deletes its resumable state, so a rerun that a
user asks for (a deleted output, `--forcerun`, changed settings) starts from scratch, while a crashed
run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from scnas.data.plans import Plans, load_plans
from scnas.data.splits import fold_cases, load_splits
from scnas.errors import ScnasError
from scnas.fingerprint import Provenance, describe_differences
from scnas.io import ensure_output_dir
from scnas.locking import folder_lock, remove_stale_temporaries
from scnas.train.checkpoint import load_checkpoint, save_checkpoint
from scnas.train.distributed import DistContext
from scnas.train.engine import write_csv_log

log = logging.getLogger("scnas.train")

LATEST = "checkpoint_latest.pt"


class EpochStage(Protocol):
    """What a loop runs: one epoch at a time, with its whole state saved and restored between them."""

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch (0-based) and return its log row (values reduced over ranks)."""

    def stop_reason(self, epoch: int) -> str | None:
        """Why the loop should stop before `epoch`, or None."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@contextlib.contextmanager
def output_lock(ctx: DistContext, folder: Path, what: str, outputs: Sequence[str]) -> Iterator[None]:
    """Rank 0 locks `folder` and clears the temporaries a killed run left of `outputs`; every rank stops
    with the same one-line error when another run holds the folder."""
    with contextlib.ExitStack() as stack:
        error = None
        if ctx.is_main:
            try:
                stack.enter_context(folder_lock(folder, what))
                remove_stale_temporaries(folder, [*outputs, LATEST])
            except ScnasError as e:
                error = str(e)
        error = ctx.broadcast_object(error)
        if error:
            raise ScnasError(error)
        yield


def fold_inputs(
    ctx: DistContext, out_dir: Path, what: str, preprocessed: Path, splits: Path, fold: int
) -> tuple[Plans, list[str], list[str]]:
    """Check the output folder (rank 0), then the plans and the fold's (train, val) cases, all validated."""
    if ctx.is_main:
        ensure_output_dir(out_dir, what)
    ctx.barrier()
    plans = load_plans(preprocessed)
    train_ids, val_ids = fold_cases(load_splits(splits, plans.case_ids), fold, str(splits))
    return plans, train_ids, val_ids


def reusable(stored: Any, current: Provenance, source: Path, what: str) -> bool:
    """Whether an artefact with provenance `stored` may be reused; logs the differing keys when not."""
    try:
        old = Provenance.from_dict(stored, str(source))
    except ScnasError as e:
        log.info("%s; %s afresh", e, what)
        return False
    keys = current.differences(old)
    if keys:
        log.info("%s was made with other settings (%s differ): %s afresh", source, describe_differences(keys), what)
    return not keys


def resume_state(out_dir: Path, provenance: Provenance, device: torch.device, ctx: DistContext) -> dict | None:
    """The resumable state in `out_dir` when it belongs to `provenance`; stale state is deleted."""
    latest = out_dir / LATEST
    if not latest.exists():
        return None
    state = load_checkpoint(latest, map_location=device)
    if reusable(state.get("provenance"), provenance, latest, "starting"):
        return state
    ctx.barrier()
    if ctx.is_main:
        latest.unlink(missing_ok=True)
    return None


def run_epochs(
    stage: EpochStage,
    *,
    out_dir: Path,
    provenance: Provenance,
    epochs: int,
    ctx: DistContext,
    device: torch.device,
    log_name: str,
    checked: Sequence[str],
    describe: Callable[[dict[str, Any]], str],
    after_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run epochs 0..epochs-1 of `stage` (resuming a matching state), saving after each; returns the history.

    `checked` names the row values that must stay finite; `describe` makes the epoch's log line;
    `after_epoch` writes the stage's own per-epoch files (rank 0).
    """
    history: list[dict[str, Any]] = []
    start = 0
    state = resume_state(out_dir, provenance, device, ctx)
    if state is not None:
        stage.load_state_dict(state["stage"])
        history = list(state["history"])
        start = int(state["epoch"]) + 1
        log.info("resuming %s from epoch %d", out_dir / LATEST, start)
    for epoch in range(start, epochs):
        reason = stage.stop_reason(epoch)
        if reason:
            log.info("%s: stopping at epoch %d", reason, epoch)
            break
        t0 = time.time()
        row = {"epoch": epoch + 1, **stage.run_epoch(epoch)}
        bad = [k for k in checked if not math.isfinite(row[k])]
        if bad:
            raise ScnasError(
                f"{out_dir}: {bad[0]} became {row[bad[0]]} at epoch {epoch + 1}; lower the learning rate or disable amp"
            )
        row["seconds"] = round(time.time() - t0, 2)
        history.append(row)
        if ctx.is_main:
            save_checkpoint(
                out_dir / LATEST,
                {"provenance": provenance.to_dict(), "epoch": epoch, "history": history, "stage": stage.state_dict()},
            )
            write_csv_log(out_dir / log_name, history)
            if after_epoch is not None:
                after_epoch(history)
            log.info("epoch %d/%d  %s  %.1fs", epoch + 1, epochs, describe(row), row["seconds"])
        ctx.barrier()
    return history


def finish(out_dir: Path, ctx: DistContext) -> None:
    """After the final output is written: drop the resumable state (a rerun then starts afresh)."""
    ctx.barrier()
    if ctx.is_main:
        (out_dir / LATEST).unlink(missing_ok=True)
