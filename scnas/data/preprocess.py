"""The preprocessing stage: every case of a dataset through scnas.data.transforms into one folder whose
plans.json (written last) and cases all carry the same plans fingerprint.

A run holds a lock next to the folder for its whole duration. A new preprocessing is built in a staging
folder beside it (PARENT/.NAME.partial-FINGERPRINT; a killed run resumes there, keeping the cases it
finished) and swapped in only once complete, so the old folder stays intact until then. A folder whose
plans already have the run's fingerprint is completed in place: cases already there are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

from scnas.config import PlanConfig, PreprocessConfig
from scnas.data.dataset import Case, Dataset
from scnas.data.nifti import load_case_arrays
from scnas.data.plans import (
    PLANS_FILE,
    PatchFit,
    Plans,
    load_plans,
    make_plans,
    plans_provenance,
    save_plans,
)
from scnas.data.pool import map_cases
from scnas.data.store import FINGERPRINT_KEY, is_complete, output_names, sample_foreground, write_case
from scnas.data.transforms import preprocess_arrays
from scnas.errors import DatasetError, ScnasError
from scnas.fingerprint import describe_differences
from scnas.io import read_json
from scnas.locking import is_temporary, remove_stale_temporaries, sibling_lock

log = logging.getLogger("scnas.preprocess")

STAGED_PLANS = ".plans.staged.json"
"""The plans of a staging folder while its cases are written; plans.json is written once they all are."""


@dataclass(frozen=True)
class PreprocessRun:
    """What a preprocess run did: the folder's plans, the cases it wrote and the complete ones it kept."""

    plans: Plans
    written: tuple[str, ...]
    kept: tuple[str, ...]


def preprocess_case(case: Case, plans: Plans, out_dir: Path) -> dict:
    """Preprocess one case into out_dir: <id>.npy, <id>_seg.npy, <id>_fg.npz, then <id>.json; returns
    its properties. Each file is written atomically and a failure leaves none of them."""
    image, affine, label = load_case_arrays(case, plans.num_channels)
    data, seg, properties = preprocess_arrays(image, affine, plans, label)
    del image, label
    properties = {"case_id": case.id, FINGERPRINT_KEY: plans.fingerprint, **properties}
    foreground = sample_foreground(seg, plans.foreground_labels, plans.foreground_samples, case.id)
    write_case(Path(out_dir), case.id, data, seg, foreground, properties)
    return properties


def preprocess_dataset(
    dataset: Dataset,
    preprocess: PreprocessConfig,
    plan: PlanConfig,
    out_dir: str | os.PathLike,
    case_ids: Sequence[str] | None = None,
    threads: int = 1,
    progress: bool = True,
    fits: PatchFit | None = None,
) -> PreprocessRun:
    """Plan `dataset` (all its cases) and preprocess the cases (all, or `case_ids`) into out_dir; `fits`
    decides the patch when plan.gpu_memory_gb is set (scnas.models.memory.budget_for builds it).

    Reuses what has the same fingerprint: a complete folder is left as it is, and `case_ids` are added
    to an existing folder only when its plans have the fingerprint these settings give (else refused).
    """
    out = Path(out_dir)
    provenance = plans_provenance(dataset, preprocess, plan, fits=fits)
    staging = out.parent / f".{out.name}.partial-{provenance.fingerprint}"
    with sibling_lock(out, "scnas preprocess"):
        _recover(out)
        existing = _existing_plans(out, required=case_ids is not None)
        _refuse_foreign(out, [*dataset.case_ids, *(existing.case_ids if existing is not None else ())])
        for folder in (out, staging):
            remove_stale_temporaries(folder)
        same = existing is not None and existing.fingerprint == provenance.fingerprint
        for other in out.parent.glob(f".{out.name}.partial-*"):
            if same or other != staging:
                shutil.rmtree(other)
        if same:
            return _fill(dataset, existing, out, existing.case_ids if case_ids is None else case_ids, threads, progress)
        if existing is not None:
            differ = describe_differences(existing.provenance.differences(provenance))
            if case_ids is not None:
                raise ScnasError(
                    f"{out / PLANS_FILE}: made with other settings ({differ} differ); --case only adds cases "
                    "to a folder preprocessed with the same settings: rerun without --case"
                )
            log.info("%s: replacing its preprocessing (%s differ)", out, differ)
        plans = _staged_plans(staging, provenance.fingerprint)
        if plans is None:
            plans = make_plans(dataset, preprocess, plan, threads=threads, fits=fits)
        save_plans(staging, plans, STAGED_PLANS)
        run = _fill(dataset, plans, staging, plans.case_ids if case_ids is None else case_ids, threads, progress)
        save_plans(staging, plans)
        (staging / STAGED_PLANS).unlink()
        _swap(staging, out)
        return run


def _fill(
    dataset: Dataset, plans: Plans, folder: Path, case_ids: Sequence[str], threads: int, progress: bool
) -> PreprocessRun:
    """Preprocess into `folder` the cases of `case_ids` it does not hold complete for `plans`."""
    kept = [c for c in case_ids if is_complete(folder, c, plans.fingerprint)]
    todo = [dataset.case(c) for c in case_ids if c not in set(kept)]
    if kept:
        log.info("%s: %d cases already preprocessed with these plans, %d to do", folder, len(kept), len(todo))
    map_cases(partial(preprocess_case, plans=plans, out_dir=folder), todo, threads, progress, "preprocess")
    return PreprocessRun(plans, tuple(c.id for c in todo), tuple(kept))


def _existing_plans(out: Path, required: bool) -> Plans | None:
    """The plans of the current folder; None when there are none, or (unless `required`) when unreadable."""
    if not (out / PLANS_FILE).is_file():
        return None
    try:
        return load_plans(out)
    except ScnasError as e:
        if required:
            raise
        log.info("replacing %s: %s", out, e)
        return None


def _staged_plans(staging: Path, fingerprint: str) -> Plans | None:
    """The plans a killed run of the same settings left in `staging` (its cases were made by them)."""
    for path in (staging / STAGED_PLANS, staging / PLANS_FILE):
        try:
            plans = Plans.from_dict(read_json(path), str(path))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ScnasError):
            continue
        if plans.fingerprint == fingerprint:
            return plans
    return None


def _trash(out: Path) -> Path:
    return out.parent / f".{out.name}.old"


def _swap(staging: Path, out: Path) -> None:
    """Put the complete `staging` in place of `out`; the old folder is set aside first and removed last,
    so a crash at any step leaves either folder whole (see `_recover`)."""
    trash = _trash(out)
    if out.exists():
        os.replace(out, trash)
    os.replace(staging, out)
    if trash.exists():
        shutil.rmtree(trash)


def _recover(out: Path) -> None:
    """Finish or undo a swap that a crash interrupted: an old folder set aside is put back if nothing
    replaced it, and removed otherwise."""
    trash = _trash(out)
    if not trash.exists():
        return
    if out.exists():
        shutil.rmtree(trash)
    else:
        os.replace(trash, out)


def _refuse_foreign(out: Path, case_ids: Sequence[str]) -> None:
    """A folder is only written when it holds nothing but preprocessing outputs of these cases and
    temporary files (never a user's files: it may be replaced as a whole)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; give --out a new or preprocessed folder")
    names = set(output_names(case_ids))
    for entry in out.iterdir():
        if entry.is_file() and (entry.name in names or is_temporary(entry.name)):
            continue
        raise DatasetError(
            f"{out}: holds {entry.name!r}, which no `scnas preprocess` writes; give --out a new or preprocessed folder"
        )
