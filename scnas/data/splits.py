"""Cross-validation splits in nnU-Net's `splits_final.json` format: a list of {"train": [...], "val": [...]}.

Made deterministically from a seed, or imported verbatim from nnU-Net (the paper used nnU-Net's splits)
after checking that they fit the dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from scnas.errors import DatasetError
from scnas.io import write_json

Splits = list[dict[str, list[str]]]


def make_splits(case_ids: Sequence[str], num_folds: int = 5, seed: int = 0) -> Splits:
    """K-fold splits: cases sorted, shuffled with `seed`, dealt into folds of near-equal size."""
    ids = sorted(case_ids)
    if num_folds < 2:
        raise DatasetError(f"cross-validation needs at least 2 folds, got {num_folds}")
    if len(ids) < num_folds:
        raise DatasetError(
            f"{num_folds}-fold cross-validation needs at least {num_folds} cases, the dataset has {len(ids)}"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, num_folds)
    splits = []
    for k in range(num_folds):
        val = sorted(ids[i] for i in folds[k])
        val_set = set(val)
        splits.append({"train": [c for c in ids if c not in val_set], "val": val})
    return splits


def check_folds(splits: object, source: str, case_ids: Sequence[str] | None = None) -> Splits:
    """Refuse splits that are not a non-empty list of {"train", "val"} folds of string case ids, each
    without repeats, with a non-empty train set and no case in both train and val (and, when `case_ids`
    is given, only known cases)."""
    if not isinstance(splits, list) or not all(isinstance(f, dict) for f in splits):
        raise DatasetError(f'{source}: must be a list of {{"train": [...], "val": [...]}} objects')
    if not splits:
        raise DatasetError(f"{source}: holds no folds")
    known = set(case_ids) if case_ids is not None else None
    for k, fold in enumerate(splits):
        if set(fold) != {"train", "val"}:
            raise DatasetError(f"{source}: fold {k} must have exactly the keys 'train' and 'val'")
        for part in ("train", "val"):
            if not isinstance(fold[part], list):
                raise DatasetError(f"{source}: fold {k} '{part}' must be a list of case ids")
            for case in fold[part]:
                if not isinstance(case, str):
                    raise DatasetError(f"{source}: fold {k} '{part}': {json.dumps(case)} is not a case id (a string)")
                if known is not None and case not in known:
                    raise DatasetError(f"{source}: fold {k} {part}: case {case!r} is not in the dataset")
            if len(set(fold[part])) != len(fold[part]):
                twice = sorted(c for c in set(fold[part]) if fold[part].count(c) > 1)[0]
                raise DatasetError(f"{source}: fold {k} '{part}' lists case {twice!r} twice")
        if not fold["train"]:
            raise DatasetError(f"{source}: fold {k} has no training cases")
        overlap = set(fold["train"]) & set(fold["val"])
        if overlap:
            raise DatasetError(f"{source}: fold {k}: case {sorted(overlap)[0]!r} is in both train and val")
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in splits]


def check_splits(splits: object, case_ids: Sequence[str], num_folds: int, source: str) -> Splits:
    """`check_folds`, and `num_folds` folds whose val sets partition the cases, each fold covering them all."""
    if isinstance(splits, list) and len(splits) != num_folds:
        raise DatasetError(f"{source}: has {len(splits)} folds, the config asks for num_folds={num_folds}")
    splits = check_folds(splits, source, case_ids)
    known = set(case_ids)
    seen_val: dict[str, int] = {}
    for k, fold in enumerate(splits):
        if set(fold["train"]) | set(fold["val"]) != known:
            missing = sorted(known - set(fold["train"]) - set(fold["val"]))
            raise DatasetError(f"{source}: fold {k} does not cover case {missing[0]!r}")
        for case in fold["val"]:
            if case in seen_val:
                raise DatasetError(f"{source}: case {case!r} is validated in folds {seen_val[case]} and {k}")
            seen_val[case] = k
    if set(seen_val) != known:
        missing = sorted(known - set(seen_val))
        raise DatasetError(f"{source}: case {missing[0]!r} is never in a validation fold")
    return splits


def import_splits(path: str | os.PathLike, case_ids: Sequence[str], num_folds: int) -> Splits:
    """Read an nnU-Net splits_final.json and check it against the dataset; the content is kept verbatim."""
    return check_splits(_read_splits(path), case_ids, num_folds, str(path))


def write_splits(path: str | os.PathLike, splits: Splits) -> None:
    write_json(path, splits)


def load_splits(path: str | os.PathLike, case_ids: Sequence[str] | None = None) -> Splits:
    """Read a splits file and check it (see `check_folds`): every reader of splits goes through here."""
    return check_folds(_read_splits(path, " (run `scnas splits` first)"), str(path), case_ids)


def _read_splits(path: str | os.PathLike, hint: str = "") -> object:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: splits file not found{hint}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise DatasetError(f"{path}: not valid JSON ({where})") from None


def fold_cases(splits: Splits, fold: int, source: str = "splits") -> tuple[list[str], list[str]]:
    """(train, val) case ids of `fold`."""
    if not 0 <= fold < len(splits):
        raise DatasetError(f"{source}: fold {fold} does not exist ({len(splits)} folds)")
    return list(splits[fold]["train"]), list(splits[fold]["val"])


def split_for_search(train_cases: Sequence[str], arch_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split a fold's training cases into a weight set and an architecture set (paper: 4:1), seeded."""
    ids = sorted(train_cases)
    if len(ids) < 2:
        raise DatasetError(f"architecture search needs at least 2 training cases, the fold has {len(ids)}")
    n_arch = min(len(ids) - 1, max(1, int(round(len(ids) * arch_fraction))))
    order = np.random.default_rng(seed).permutation(len(ids))
    arch = sorted(ids[i] for i in order[:n_arch])
    arch_set = set(arch)
    return [c for c in ids if c not in arch_set], arch
