"""Side-by-side timing and agreement records shared by the benchmarks that `benchmarks.run` drives.

Contenders are timed interleaved (A B C, B C A, C A B, ...: each repeat rotates the order, so drift of
the machine's speed and cache effects hit every contender alike), after warm-up calls; the statistic is
the median. A `Check` records one agreement test with its tolerance, decided before any timing; a
`Section` gathers one benchmark's checks, timings and notes; `Options` is what the run asked for.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import torch


@dataclass(frozen=True)
class Options:
    """What a benchmark run asks for: quick (tiny sizes, agreement first) or full sizes, timing repeats,
    the processes of the preprocessing comparison, the real Hippocampus task and a genotype file."""

    quick: bool = False
    repeats: int = 5
    warmup: int = 1
    processes: int = 2
    hippocampus: str | None = None
    genotype: str | None = None


@dataclass
class Check:
    """One agreement test: `value` measured, `tolerance` as stated, `ok` whether it holds."""

    what: str
    value: str
    tolerance: str
    ok: bool


@dataclass
class Timing:
    """Median seconds of `ours` and `peer` (names of the contenders) and the ratio ours / peer."""

    case: str
    ours: str
    peer: str
    ours_s: float
    peer_s: float
    unit: str = "s"
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours_s / self.peer_s if self.peer_s > 0 else float("nan")


@dataclass
class Section:
    """One benchmark's outcome: its checks, its timings, extra measurements and notes, or why it was skipped."""

    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def check(self, what: str, value: float | str, tolerance: str, ok: bool) -> bool:
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        self.checks.append(Check(what, shown, tolerance, bool(ok)))
        return bool(ok)

    @property
    def agrees(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for row, timing in zip(out["timings"], self.timings):
            row["ratio"] = timing.ratio
        out["agrees"] = self.agrees
        return out


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_interleaved(
    contenders: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, Any]]:
    """Per contender: median, min and max seconds of `repeats` calls, interleaved and rotated, after `warmup`."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync()
            start = time.perf_counter()
            contenders[name]()
            _sync()
            seconds[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s), "runs_s": s}
        for name, s in seconds.items()
    }
