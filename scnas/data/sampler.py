"""Training patches from memory-mapped preprocessed cases, with nnU-Net's foreground oversampling.

The draws of an epoch derive from (seed, epoch) alone, so a resumed run sees the same patches, and
they are made for the GLOBAL batch and then sliced per rank: a run on N processes samples exactly the
patches a 1-process run with N times the batch would. For training, each patch is read with the
region around it that spatial augmentation samples from, padded outside the scan as nnU-Net's loader
pads (image 0, label -1).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from scnas.data.augment import PAD_LABEL
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

    def read(
        self, draw: PatchDraw, size: Sequence[int] | None = None, pad_label: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The region of `size` (default: the patch) around the drawn patch, which starts size // 2 - patch // 2
        voxels in (batchgenerators' centre crop): (C, *size) float32 and labels (*size) int16, the store's
        label type; outside the volume the image is 0 and the label `pad_label`."""
        size = self.patch if size is None else tuple(int(s) for s in size)
        image = np.empty((self.cases[draw.case].image.shape[0], *size), dtype=np.float32)
        label = np.empty(size, dtype=np.int16)
        self._read_into(draw, size, pad_label, image, label)
        return image, label

    def _read_into(
        self, draw: PatchDraw, size: tuple[int, ...], pad_label: int, image: np.ndarray, label: np.ndarray
    ) -> None:
        """read() into given arrays, each voxel written once: the part inside the volume copied, the slabs
        outside it filled."""
        case = self.cases[draw.case]
        shape = case.image.shape[1:]
        origin = tuple(s - (r // 2 - p // 2) for s, r, p in zip(draw.start, size, self.patch))
        src = tuple(slice(max(o, 0), min(o + r, n)) for o, r, n in zip(origin, size, shape))
        dst = tuple(slice(sl.start - o, sl.stop - o) for sl, o in zip(src, origin))
        for axis, (inside, r) in enumerate(zip(dst, size)):
            for outside in (slice(0, inside.start), slice(inside.stop, r)):
                index = tuple(outside if a == axis else slice(None) for a in range(3))
                image[(slice(None), *index)] = 0
                label[index] = pad_label
        image[(slice(None), *dst)] = case.image[(slice(None), *src)]
        label[dst] = case.label[src] if case.label is not None else 0

    def batches(
        self,
        seed: int,
        epoch: int,
        iterations: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        stream: int = 0,
        read_size: Sequence[int] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The epoch's batches for this rank: the global batch's draws, rank's contiguous slice read as regions
        of `read_size` (default: the patch) with labels PAD_LABEL outside the scan, for augment_batch; each
        sample read straight into the batch arrays."""
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} processes")
        per_rank = global_batch // world_size
        size = self.patch if read_size is None else tuple(int(s) for s in read_size)
        channels = self.cases[0].image.shape[0]
        rng = epoch_rng(seed, epoch, stream)
        for _ in range(iterations):
            draws = [self.draw(rng) for _ in range(global_batch)]
            images = np.empty((per_rank, channels, *size), dtype=np.float32)
            labels = np.empty((per_rank, *size), dtype=np.int16)
            for i, d in enumerate(draws[rank * per_rank : (rank + 1) * per_rank]):
                self._read_into(d, size, PAD_LABEL, images[i], labels[i])
            yield images, labels


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
