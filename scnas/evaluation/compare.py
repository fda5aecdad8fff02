"""Paired comparisons of two models on the same validation cases (Wilcoxon signed-rank, two-sided).

The statistic is each case's mean Dice over the foreground labels (NaN labels left out), so a case
counts once whatever its label count. Cases pair by fold and id (in cross-validation each case is
validated in one fold). The random control's draws are averaged per case (cases that every draw has) before
pairing, so the control is one model, not three times the cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from scnas.errors import ScnasError
from scnas.evaluation.tables import DEFAULT_MODEL_NAMES
from scnas.layout import model_of

COMPARISONS: tuple[tuple[str, str], ...] = (
    ("scnas", "uresnet"),
    ("scnas", "random"),
    ("random", "uresnet"),
    ("uresnet", "nnunet"),
)
"""(model, against): the searched network against the baseline and against chance, chance against the
baseline, and the baseline against nnU-Net v2 trained on the same folds."""


@dataclass(frozen=True)
class Comparison:
    """`a` against `b` over `n` paired cases: means, median of a - b, cases where a is higher, p-value."""

    a: str
    b: str
    n: int
    mean_a: float
    mean_b: float
    median_difference: float
    a_higher: int
    p_value: float

    def sentence(self, names: Mapping[str, str]) -> str:
        name_a, name_b = names.get(self.a, self.a), names.get(self.b, self.b)
        return (
            f"{name_a} vs {name_b}: {100 * self.mean_a:.2f} vs {100 * self.mean_b:.2f} over {self.n} cases, "
            f"median difference {100 * self.median_difference:+.2f} points, {name_a} higher in {self.a_higher} "
            f"of {self.n}, p = {_format_p(self.p_value)}"
        )


def case_means(paths: Sequence[str | Path], metric: str = "dice") -> pd.Series:
    """Per (fold folder, case id), the mean of `metric` over the case's foreground labels, from the folds'
    metrics.csv files (each in its fold_K folder)."""
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(path, usecols=["case", "label", metric])
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ScnasError(f"{path}: not a readable metrics CSV ({str(e).splitlines()[0]})") from None
        frame["fold"] = Path(path).parent.name
        frames.append(frame[frame["label"] != 0])
    values = pd.concat(frames, ignore_index=True)
    values["case"] = values["case"].astype(str)
    values[metric] = pd.to_numeric(values[metric], errors="coerce")
    values = values[np.isfinite(values[metric])]
    return values.groupby(["fold", "case"])[metric].mean()


def pooled_case_means(draws: Sequence[pd.Series]) -> pd.Series:
    """The per-case mean over draws, for the cases that every draw has."""
    table = pd.concat(list(draws), axis=1, join="inner")
    return table.mean(axis=1)


def compare(a: pd.Series, b: pd.Series, name_a: str, name_b: str) -> Comparison | None:
    """Wilcoxon signed-rank test of a against b on their common cases; None with fewer than 2 of them."""
    from scipy.stats import wilcoxon

    common = a.index.intersection(b.index)
    if len(common) < 2:
        return None
    x, y = a[common].to_numpy(float), b[common].to_numpy(float)
    diff = x - y
    if not np.any(diff):
        p = 1.0
    else:
        p = float(wilcoxon(x, y, zero_method="wilcox", alternative="two-sided").pvalue)
    return Comparison(
        name_a,
        name_b,
        int(len(common)),
        float(x.mean()),
        float(y.mean()),
        float(np.median(diff)),
        int((diff > 0).sum()),
        p,
    )


def model_case_means(found: Mapping[tuple[str, str], Sequence[Path]], task: str) -> dict[str, pd.Series]:
    """Per model of `task` (random draws pooled into "random"), its per-case mean Dice."""
    runs: dict[str, list[pd.Series]] = {}
    for (t, run), paths in found.items():
        if t == task:
            runs.setdefault(model_of(run), []).append(case_means(paths))
    return {model: series[0] if len(series) == 1 else pooled_case_means(series) for model, series in runs.items()}


def comparisons(found: Mapping[tuple[str, str], Sequence[Path]], task: str) -> list[Comparison]:
    """The COMPARISONS whose two models both have results for `task`."""
    means = model_case_means(found, task)
    out = []
    for a, b in COMPARISONS:
        if a in means and b in means:
            result = compare(means[a], means[b], a, b)
            if result is not None:
                out.append(result)
    return out


def comparison_notes(
    found: Mapping[tuple[str, str], Sequence[Path]], names: Mapping[str, str] | None = None
) -> list[str]:
    """One note per task with paired comparisons, for the CV table."""
    names = {**DEFAULT_MODEL_NAMES, **(names or {})}
    notes = []
    for task in dict.fromkeys(t for t, _ in found):
        results = comparisons(found, task)
        if results:
            notes.append(
                f"{task}: paired comparisons on each case's mean Dice over labels (Wilcoxon signed-rank, "
                "two-sided; the random draws averaged per case): " + "; ".join(r.sentence(names) for r in results) + "."
            )
    return notes


def _format_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"
