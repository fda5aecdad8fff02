"""Training patches from memory-mapped preprocessed cases, with nnU-Net's foreground oversampling.

The draws of an epoch derive from (seed, epoch) alone, so a resumed run sees the same patches, and
they are made for the GLOBAL batch and then sliced per rank: a run on N processes samples exactly the
patches a 1-process run with N times the batch would.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from scnas.data.plans import load_plans
from scnas.data.store import PreprocessedCase, load_preprocessed


@dataclass(frozen=True)
class PatchDraw:
    case: int
    start: tuple[int, int, int]


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """The random stream of one epoch: independent of how many epochs ran before (resume-safe)."""
    return np.random.default_rng([seed, epoch, stream])


class PatchSampler:
    """Draws patch locations over a set of preprocessed cases and reads the patches (padded when needed)."""

    def __init__(self, cases: Sequence[PreprocessedCase], patch_size: Sequence[int], foreground_fraction: float):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch_size)
        self.foreground_fraction = float(foreground_fraction)

    @classmethod
    def from_dir(
        cls, preprocessed: Path, case_ids: Sequence[str], patch_size: Sequence[int], foreground_fraction: float
    ) -> "PatchSampler":
        """A sampler over cases of a preprocessed folder; each must have been made by the folder's plans."""
        plans = load_plans(preprocessed)
        cases = [load_preprocessed(Path(preprocessed), c, plans=plans) for c in case_ids]
        return cls(cases, patch_size, foreground_fraction)

    def draw(self, rng: np.random.Generator) -> PatchDraw:
        """One patch location: uniform inside the case, or centred on a random voxel of a random present
        foreground class with probability `foreground_fraction` (nnU-Net's oversampling)."""
        idx = int(rng.integers(len(self.cases)))
        case = self.cases[idx]
        shape = case.image.shape[1:]
        present = [lab for lab, locs in sorted(case.foreground.items()) if len(locs)]
        if present and rng.random() < self.foreground_fraction:
            locs = case.foreground[present[int(rng.integers(len(present)))]]
            centre = locs[int(rng.integers(len(locs)))]
            start = tuple(int(c) - p // 2 for c, p in zip(centre, self.patch))
            start = tuple(int(np.clip(s, min(0, n - p), max(0, n - p))) for s, n, p in zip(start, shape, self.patch))
        else:
            start = tuple(int(rng.integers(min(0, n - p), max(0, n - p) + 1)) for n, p in zip(shape, self.patch))
        return PatchDraw(idx, start)

    def read(self, draw: PatchDraw) -> tuple[np.ndarray, np.ndarray]:
        """The patch (C, *patch) float32 and its labels (*patch) int64; outside the volume: image 0, label 0."""
        case = self.cases[draw.case]
        shape = case.image.shape[1:]
        src = tuple(slice(max(s, 0), min(s + p, n)) for s, p, n in zip(draw.start, self.patch, shape))
        dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, draw.start))
        image = np.zeros((case.image.shape[0], *self.patch), dtype=np.float32)
        label = np.zeros(self.patch, dtype=np.int64)
        image[(slice(None), *dst)] = case.image[(slice(None), *src)]
        if case.label is not None:
            label[dst] = case.label[src]
        return image, label

    def batches(
        self,
        seed: int,
        epoch: int,
        iterations: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        stream: int = 0,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The epoch's batches for this rank: the global batch's draws, rank's contiguous slice read."""
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} processes")
        per_rank = global_batch // world_size
        rng = epoch_rng(seed, epoch, stream)
        for _ in range(iterations):
            draws = [self.draw(rng) for _ in range(global_batch)]
            mine = [self.read(d) for d in draws[rank * per_rank : (rank + 1) * per_rank]]
            yield np.stack([m[0] for m in mine]), np.stack([m[1] for m in mine])


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run `iterator` in a background thread, `depth` items ahead (patch reads overlap GPU compute)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)
        q.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
