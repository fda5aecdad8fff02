"""`make bench`: every benchmark against its peer in one run; agreement first, then interleaved timings.

    python -m benchmarks.run                      # full sizes -> benchmarks/results/<machine>.json and .md
    python -m benchmarks.run --quick              # tiny sizes, seconds per benchmark: agreement, rough times
    python -m benchmarks.run --only resampling augmentation

Each benchmark (benchmarks/suite/) first checks that its outputs agree with the peer's within the
tolerance it states, then times both: warm-up, median of several interleaved repeats, ratio ours / peer
(below 1: this project is faster). Torch runs one thread per contender. A full run writes the machine's
JSON and Markdown (a run with --only merges its sections into them); a quick run writes only with --out.
Exit status 1 when any agreement check fails or a benchmark fails (recorded as a failed check; the
others still run).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import RESULTS, machine, markdown_table
from benchmarks.suite import augmentation, preprocessing, resampling, scaling, search, sliding_window, training_step
from benchmarks.timing import Options, Section
from scnas.io import read_json, write_json, write_text

BENCHMARKS: dict[str, Callable[[Options], Section]] = {
    "resampling": resampling.run,
    "preprocessing": preprocessing.run,
    "augmentation": augmentation.run,
    "sliding_window": sliding_window.run,
    "training_step": training_step.run,
    "search_step": search.run,
    "scaling": scaling.run,
}
ALLOCATOR_ENV = ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def machine_name(info: dict[str, Any]) -> str:
    """A file name for this machine: CPU model, CPU count and torch version."""
    text = f"{info['cpu']}-{info['cpu_count']}cpu-torch{info['torch']}"
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def describe_machine() -> dict[str, Any]:
    """machine() plus the date, the commit and the allocator settings that change step times."""
    info = machine()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        commit = ""
    info.update(
        date=time.strftime("%Y-%m-%d %H:%M"),
        commit=commit or None,
        allocator_env={k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ},
    )
    return info


def _cells(rows: list[list[Any]]) -> list[list[str]]:
    """Table cells with their pipes escaped, so "max |a - b|" stays in one cell."""
    return [[str(v).replace("|", "\\|") for v in row] for row in rows]


def _seconds(value: float, unit: str) -> str:
    text = f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"
    return text + unit[1:] if unit.startswith("s") else f"{value:.3g} {unit}"


def _measurement(row: dict[str, Any]) -> str:
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "what"]
    return f"- {row['what']}: " + ", ".join(parts)


def markdown(sections: list[dict[str, Any]], info: dict[str, Any], quick: bool) -> str:
    """The results page: machine, timings, agreement checks, other measurements and notes."""
    text = [
        "# Speed against the peers (`make bench`)\n",
        f"Machine: {info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch']}, Python {info['python']}; "
        f"one torch thread per contender; {info['date']}"
        + (f", commit {info['commit']}" if info.get("commit") else "")
        + (f", allocator {info['allocator_env']}" if info.get("allocator_env") else "")
        + (". **Quick form: tiny sizes, timings not meaningful.**" if quick else ".")
        + "\n",
        "## Timings\n",
        "Median of interleaved repeats after warm-up; ratio = this project / peer (below 1: this project is faster).\n",
    ]
    rows = [
        [
            s["name"],
            t["case"],
            t["ours"],
            t["peer"],
            _seconds(t["ours_s"], t["unit"]),
            _seconds(t["peer_s"], t["unit"]),
            f"**{t['ratio']:.2f}**",
            t["note"],
        ]
        for s in sections
        for t in s["timings"]
    ]
    text.append(
        markdown_table(
            ["benchmark", "case", "this project", "peer", "ours", "peer", "ours / peer", "note"], _cells(rows)
        )
    )
    text.append("\n## Agreement, checked before timing\n")
    rows = [
        [s["name"], c["what"], c["value"], c["tolerance"], "yes" if c["ok"] else "**NO**"]
        for s in sections
        for c in s["checks"]
    ]
    text.append(markdown_table(["benchmark", "check", "value", "tolerance", "holds"], _cells(rows)))
    for s in sections:
        if s["skipped"]:
            text.append(f"\n**{s['title']}**: skipped: {s['skipped']}\n")
            continue
        if s["measurements"] or s["notes"]:
            text.append(f"\n### {s['title']}\n")
            text += [_measurement(m) for m in s["measurements"]]
            text += [f"\n{n}" for n in s["notes"]]
            text.append("")
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: agreement checks and rough times")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME", help="run only these")
    parser.add_argument("--repeats", type=int, help="timed repeats per contender (default 5, quick 1)")
    parser.add_argument("--warmup", type=int, help="untimed calls first (default 1, quick 0)")
    parser.add_argument("--processes", type=int, default=2, help="workers of both preprocessing commands")
    parser.add_argument(
        "--hippocampus", help=f"the MSD Task04_Hippocampus folder (default {preprocessing.HIPPOCAMPUS})"
    )
    parser.add_argument("--genotype", help="genotype JSON of the searched network (default: a random genotype)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/; quick: none)")
    args = parser.parse_args(argv)
    opts = Options(
        quick=args.quick,
        repeats=args.repeats if args.repeats is not None else (1 if args.quick else 5),
        warmup=args.warmup if args.warmup is not None else (0 if args.quick else 1),
        processes=args.processes,
        hippocampus=args.hippocampus,
        genotype=args.genotype,
    )
    torch.set_num_threads(1)
    info = describe_machine()
    names = args.only or list(BENCHMARKS)
    sections = []
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            section = BENCHMARKS[name](opts).to_dict()
        except Exception as e:  # one broken benchmark must not lose the others' results
            failed = Section(name, name)
            failed.check("runs to the end", f"{type(e).__name__}: {e}", "no error", False)
            section = failed.to_dict()
        state = (
            f"skipped: {section['skipped']}" if section["skipped"] else ("agrees" if section["agrees"] else "DISAGREES")
        )
        print(f"[bench] {name}: {state} ({time.perf_counter() - start:.0f} s)", flush=True)
        sections.append(section)

    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        stem = machine_name(info) + ("-quick" if args.quick else "")
        json_path = out / f"{stem}.json"
        previous = read_json(json_path)["sections"] if args.only and json_path.exists() else []
        ran = {s["name"] for s in sections}
        order = list(BENCHMARKS)
        merged = sorted([s for s in previous if s["name"] not in ran] + sections, key=lambda s: order.index(s["name"]))
        result = {"machine": info, "quick": args.quick, "options": vars(opts), "sections": merged}
        page = markdown(merged, info, args.quick)
        write_json(json_path, result)
        write_text(out / f"{stem}.md", page)
        print(page)
        print(f"wrote {json_path} and {out / f'{stem}.md'}")
    else:
        print(markdown(sections, info, args.quick))
    return 0 if all(s["agrees"] for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
