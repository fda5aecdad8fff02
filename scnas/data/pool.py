"""The thread pool that runs per-case work (planning, preprocessing) in parallel."""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_cases(
    fn: Callable[[T], R], items: Sequence[T], threads: int = 1, progress: bool = False, desc: str = ""
) -> list[R]:
    """`[fn(x) for x in items]` on `threads` worker threads, with an optional tqdm bar; the first error
    cancels what has not started. Threads, not processes: numpy, zlib and torch release the GIL in the heavy
    parts, and spawned processes cost more than they gain (6 cases of 180x180x120x4 -> 0.7 mm on 2 cores:
    1 thread 11.4 s, 2 threads 9.1 s, 2 processes 24.8 s)."""
    from tqdm import tqdm

    items = list(items)
    results: list = [None] * len(items)
    with tqdm(total=len(items), desc=desc, unit="case", disable=not progress) as bar:
        if threads <= 1 or len(items) <= 1:
            for i, item in enumerate(items):
                results[i] = fn(item)
                bar.update()
            return results
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            try:
                for future in concurrent.futures.as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return results
