"""Where a study stands, from its results folder alone: per task, model and fold what is done, running
(its SLURM job, the epoch reached and the time left) or failed (the last line of the rule's log).

Fast and light: it reads file names, small logs and lock files, asks `squeue` once when SLURM jobs are
involved, and imports neither torch nor matplotlib.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from scnas.errors import ScnasError
from scnas.layout import (
    CHECKPOINT,
    FOLD_DIR,
    GENOTYPE,
    MANIFEST,
    PREDICTIONS,
    RANDOM_RUN,
    SEARCH,
    SEARCH_LOG,
    SUMMARY,
    TRAINING_LOG,
    Layout,
)
from scnas.locking import LOCK_NAME

MODEL_ORDER = ("uresnet", "scnas", "scnas_transfer")
EPOCH_LINE = re.compile(r"\bepoch (\d+)/(\d+)\b")
SUBMITTED = re.compile(r"submitted SLURM job (\d+)")
JOB_FILE = re.compile(r"^(\d+)_(?:submission\.sh|submitted\.pkl|\d+_log\.(?:out|err))$")
ERROR_LINE = re.compile(r"^scnas [\w-]+: (error: .*|interrupted)$")
TAIL_BYTES = 64 * 1024
ACTIVE_SLURM = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"})


@dataclass(frozen=True)
class StageFiles:
    """A stage of a fold: the file that marks it done, the folder it locks, its rule log."""

    name: str
    output: Path
    lock_dir: Path
    log: Path


@dataclass(frozen=True)
class FoldStatus:
    task: str
    run: str
    fold: int
    state: str  # done | running | failed | stopped | waiting | not started
    stage: str  # the stage done last (state done) or the one under way / failed / next
    detail: str = ""
    log: str = ""

    @property
    def cell(self) -> str:
        """The word in the status grid: "done", "train 3/20", "failed", ..."""
        if self.state == "done":
            return "done"
        if self.state == "running":
            epoch = re.search(r"epoch (\d+/\d+)", self.detail)
            return f"{self.stage} {epoch.group(1)}" if epoch else self.stage
        if self.state == "waiting":
            return f"{self.stage}ed" if self.stage != "search" else "searched"
        return {"not started": "-", "failed": "FAILED", "stopped": "stopped"}.get(self.state, self.state)


def fold_stages(layout: Layout, task: str, run: str, fold: int) -> list[StageFiles]:
    """The stages of one fold in order: search for the search folder; train, predict, evaluate otherwise."""
    if run == SEARCH:
        folder = Path(layout.search(task, fold))
        return [StageFiles("search", folder / GENOTYPE, folder, Path(layout.log(task, f"search_fold_{fold}.log")))]
    folder = Path(layout.fold(task, run, fold))
    log = lambda stage: Path(layout.log(task, f"{stage}_{run}_fold_{fold}.log"))  # noqa: E731
    return [
        StageFiles("train", folder / CHECKPOINT, folder, log("train")),
        StageFiles("predict", folder / PREDICTIONS / MANIFEST, folder / PREDICTIONS, log("predict")),
        StageFiles("evaluate", folder / SUMMARY, folder, log("evaluate")),
    ]


def _tail(path: Path) -> list[str]:
    """The last lines of a (possibly large) log, carriage-return progress bars split into lines."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def lock_holder(folder: Path) -> str | None:
    """ "pid N on HOST" when a live process on this machine holds the stage's folder lock, else None.
    The lock file is only read, never locked: a status query must not make a starting stage fail."""
    try:
        line = (folder / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    m = re.match(r"pid (\d+) on (\S+)", line)
    if not m or m.group(2) != socket.gethostname():
        return None
    try:
        cmdline = Path(f"/proc/{m.group(1)}/cmdline").read_bytes()
    except OSError:
        return None
    return line if b"scnas" in cmdline or b"snakemake" in cmdline else None


def slurm_job(stage: StageFiles, lines: Sequence[str]) -> str | None:
    """The SLURM job of the stage's latest attempt: the rule log names it; else the newest job log."""
    for line in reversed(lines):
        m = SUBMITTED.search(line)
        if m:
            return m.group(1)
    ref_dir = stage.lock_dir.parent if stage.name == "predict" else stage.lock_dir
    logs = ref_dir.parent / "logs" / ref_dir.name
    try:
        ids = {m.group(1) for p in logs.iterdir() if (m := JOB_FILE.match(p.name))}
    except OSError:
        return None
    return max(ids, key=int) if ids else None


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """job id -> state for the jobs squeue still knows (one call); {} without SLURM."""
    ids = sorted(set(job_ids), key=int)
    if not ids or shutil.which("squeue") is None:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {i: s for i, _, s in (line.strip().partition("|") for line in out.splitlines()) if s}


def _epoch_seconds(stage: StageFiles) -> list[float]:
    name = SEARCH_LOG if stage.name == "search" else TRAINING_LOG
    try:
        with open(stage.lock_dir / name, newline="") as f:
            return [float(row["seconds"]) for row in csv.DictReader(f) if row.get("seconds")]
    except (OSError, ValueError, KeyError):
        return []


def progress_detail(stage: StageFiles, lines: Sequence[str], job_lines: Sequence[str]) -> str:
    """ "epoch 3/20, about 4.0 min left" from the newest epoch line and the epochs' mean duration."""
    for line in reversed([*lines, *job_lines]):
        m = EPOCH_LINE.search(line)
        if m and "%|" not in line:
            done, total = int(m.group(1)), int(m.group(2))
            seconds = _epoch_seconds(stage)[-5:]
            if seconds and total > done:
                left = (total - done) * sum(seconds) / len(seconds)
                early = " at most" if stage.name == "train" else ""
                return f"epoch {done}/{total}, about {_duration(left)} left{early}"
            return f"epoch {done}/{total}"
    return ""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _job_lines(stage: StageFiles, job: str) -> list[str]:
    ref_dir = stage.lock_dir.parent if stage.name == "predict" else stage.lock_dir
    return _tail(ref_dir.parent / "logs" / ref_dir.name / f"{job}_0_log.err")


def fold_status(layout: Layout, task: str, run: str, fold: int, jobs: dict[str, str]) -> FoldStatus:
    """The state of one fold; `jobs` holds the SLURM states (slurm_states) of the jobs it may run in."""
    stages = fold_stages(layout, task, run, fold)
    done = [s for s in stages if s.output.is_file()]
    if len(done) == len(stages):
        return FoldStatus(task, run, fold, "done", stages[-1].name)
    current = next(s for s in stages if not s.output.is_file())
    lines = _tail(current.log)
    holder = lock_holder(current.lock_dir)
    job = slurm_job(current, lines) if current.log.is_file() else None
    job_state = jobs.get(job or "")
    log = str(current.log) if current.log.is_file() else ""
    if holder or job_state in ACTIVE_SLURM:
        where = f"SLURM job {job} {job_state}" if job_state in ACTIVE_SLURM else holder or ""
        detail = progress_detail(current, lines, _job_lines(current, job) if job else [])
        return FoldStatus(task, run, fold, "running", current.name, ", ".join(x for x in (where, detail) if x), log)
    if lines and ERROR_LINE.match(lines[-1]):
        state = "stopped" if lines[-1].endswith("interrupted") else "failed"
        return FoldStatus(task, run, fold, state, current.name, _shorten(lines[-1]), log)
    if lines and not done and current.log.is_file():
        last = _shorten(lines[-1])
        return FoldStatus(task, run, fold, "stopped", current.name, f"no result and no process; last line: {last}", log)
    if done:
        return FoldStatus(task, run, fold, "waiting", done[-1].name)
    return FoldStatus(task, run, fold, "not started", current.name)


def _shorten(line: str, limit: int = 240) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def task_folds(task_dir: Path) -> list[int]:
    """The folds in play: those with a fold folder or a rule log; all of splits_final.json before any."""
    seen = {int(m.group(1)) for p in task_dir.glob("*/fold_*") if (m := FOLD_DIR.match(p.name))}
    seen |= {
        int(m.group(1)) for p in task_dir.glob("logs/*_fold_*.log") if (m := re.search(r"_fold_(\d+)\.log$", p.name))
    }
    if seen:
        return sorted(seen)
    try:
        splits = json.loads((task_dir / "splits_final.json").read_text())
    except (OSError, ValueError):
        return []
    return list(range(len(splits))) if isinstance(splits, list) else []


def task_run_names(task_dir: Path) -> list[str]:
    """The search and model folders of a task: those present, and those whose rule logs exist."""
    names = {p.name for p in task_dir.iterdir() if p.is_dir() and any(FOLD_DIR.match(c.name) for c in _dirs(p))}
    logs = task_dir / "logs"
    if logs.is_dir():
        for p in logs.iterdir():
            if m := re.match(r"^(?:train|predict|evaluate)_(.+)_fold_\d+\.log$", p.name):
                names.add(m.group(1))
            elif re.match(r"^search_fold_\d+\.log$", p.name):
                names.add(SEARCH)

    def key(run: str) -> tuple[int, int, str]:
        if run == SEARCH:
            return 0, 0, run
        m = RANDOM_RUN.match(run)
        if m:
            return 1 + len(MODEL_ORDER), int(m.group(1)), run
        return 1 + (MODEL_ORDER.index(run) if run in MODEL_ORDER else len(MODEL_ORDER)), 0, run

    return sorted(names, key=key)


def _dirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def data_state(layout: Layout, task: str) -> str:
    """The task's data stages in words: "prepared", "preprocess failed: ...", "not started"."""
    steps = [
        ("check", Path(layout.check(task))),
        ("splits", Path(layout.splits(task))),
        ("preprocess", Path(layout.plans(task))),
    ]
    missing = [(name, path) for name, path in steps if not path.is_file()]
    if not missing:
        tables = " and its CV table" if Path(layout.cv_table(task) + ".md").is_file() else ""
        return f"data prepared{tables}"
    for name, _ in missing:
        lines = _tail(Path(layout.log(task, f"{name}.log")))
        if lines and ERROR_LINE.match(lines[-1]):
            return f"{name} failed: {_shorten(lines[-1])}"
    return f"waiting for {missing[0][0]}"


def study_status(results: str | os.PathLike) -> dict[str, tuple[str, list[int], list[FoldStatus]]]:
    """task -> (data state, folds, the status of every search and model fold)."""
    root = Path(results)
    if not root.is_dir():
        raise ScnasError(f"{root}: results folder not found (give the study's folder with --results)")
    layout = Layout(str(root))
    tasks = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and any((p / n).exists() for n in ("check.json", "splits_final.json", "logs", "raw"))
    )
    if not tasks:
        raise ScnasError(f"{root}: holds no task folder (RESULTS/TASK/check.json or logs/); is it a results folder?")
    plan = {t: (task_folds(root / t), task_run_names(root / t)) for t in tasks}
    jobs = []
    for task, (folds, runs) in plan.items():
        for run in runs:
            for fold in folds:
                for stage in fold_stages(layout, task, run, fold):
                    if not stage.output.is_file() and stage.log.is_file():
                        job = slurm_job(stage, _tail(stage.log))
                        if job:
                            jobs.append(job)
                        break
    states = slurm_states(jobs)
    return {
        task: (
            data_state(layout, task),
            folds,
            [fold_status(layout, task, run, fold, states) for run in runs for fold in folds],
        )
        for task, (folds, runs) in plan.items()
    }


def format_status(status: dict[str, tuple[str, list[int], list[FoldStatus]]], results: str) -> str:
    """The status as text: a grid per task (rows: search and models, columns: folds), then the running
    and failed folds with their details, then a tally."""
    out = [f"results: {results}"]
    everything: list[FoldStatus] = []
    for task, (data, folds, rows) in status.items():
        everything += rows
        out += ["", f"{task}  ({data})"]
        runs = list(dict.fromkeys(r.run for r in rows))
        if not runs:
            continue
        cells = {(r.run, r.fold): r.cell for r in rows}
        width = max(10, *(len(c) for c in cells.values())) + 2
        name_width = max(len(r) for r in runs) + 4
        out.append(" " * name_width + "".join(f"fold_{k}".ljust(width) for k in folds).rstrip())
        for run in runs:
            out.append(f"  {run}".ljust(name_width) + "".join(cells[run, k].ljust(width) for k in folds).rstrip())
    for state, heading in (("running", "running"), ("failed", "failed"), ("stopped", "stopped")):
        chosen = [r for r in everything if r.state == state]
        if chosen:
            out += ["", f"{heading}:"]
            for r in chosen:
                where = f" [{r.log}]" if r.log and state != "running" else ""
                out.append(f"  {r.task} {r.run} fold_{r.fold} ({r.stage}): {r.detail}{where}")
    counts = {s: sum(r.state == s for r in everything) for s in ("done", "running", "waiting", "failed", "stopped")}
    counts["not started"] = sum(r.state == "not started" for r in everything)
    out += ["", ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" (of {len(everything)} folds)"]
    return "\n".join(out)
