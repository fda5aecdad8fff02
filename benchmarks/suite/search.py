"""One search step for each sampling, two (Algorithm 1) / all (DARTS's mixed operation) / one, through
benchmarks.search_step: a fresh process per sampling, peak RSS over the steps, median step time.

There is no outside peer: "all" is the reference the paper measures "two" against (at most 0.4x of its
memory). Check: every configuration runs to the end.
"""

from __future__ import annotations

from benchmarks import search_step
from benchmarks.timing import Options, Section, Timing
from scnas.nas.search_network import RECOMPUTE_MIN_ELEMENTS

FULL = {"patch": 64, "stem": 16, "batch": 1}
QUICK = {"patch": 16, "stem": 8, "batch": 1}
PAPER_MEMORY_RATIO = 0.4


def run(opts: Options) -> Section:
    section = Section("search_step", "One search step: two ops per edge vs all (DARTS) vs one")
    size = QUICK if opts.quick else FULL
    base = {**size, "device": "cpu", "tau": 1.0, "threads": 1, "warmup": opts.warmup, "steps": opts.repeats}
    runs = {s: search_step.run_worker({**base, "sampling": s}) for s in ("two", "all", "one")}
    for sampling, r in runs.items():
        section.check(f"sampling {sampling} runs", r["status"], "ok", r["status"] == "ok")
    if not section.agrees:
        return section
    case = f"{size['patch']}^3, stem {size['stem']}, batch {size['batch']}, 4 channels, 4 classes"
    for sampling in ("two", "one"):
        section.timings.append(
            Timing(
                case,
                f"sampling {sampling}",
                "sampling all (DARTS)",
                runs[sampling]["median_seconds"],
                runs["all"]["median_seconds"],
                unit="s/step",
            )
        )
    for sampling, r in runs.items():
        section.measurements.append(
            {"what": f"sampling {sampling}", "step_rss_gib": r["step_rss_gib"], "median_step_s": r["median_seconds"]}
        )
    ratio = runs["two"]["step_rss_gib"] / runs["all"]["step_rss_gib"]
    section.measurements.append(
        {"what": "memory two / all (the paper: at most 0.4)", "ratio": ratio, "holds": ratio <= PAPER_MEMORY_RATIO}
    )
    section.notes.append(
        "A step = weight forward/backward/Adam + alpha forward/backward/Adam with the search loop's Jaccard loss, "
        f"tau 1, one thread; each sampling in its own process (not interleaved), median of {opts.repeats} steps "
        f"after {opts.warmup} warm-up; memory = peak RSS minus the RSS before the first step. The search network "
        "recomputes its cheap intermediates in the backward pass where a region's input holds at least "
        f"{RECOMPUTE_MIN_ELEMENTS} elements (scnas.nas.search_network)."
    )
    return section
