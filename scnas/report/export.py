"""Copy a study's small outputs into a folder a repository can hold (`scnas export`), in the results layout.

Kept: tables, genotypes, search logs and summaries, per-fold metrics, summaries, model.json and training
logs, the plans, splits and dataset check, figures, rule logs, the nnU-Net reference's records and
progress plot, and the config files given; left out: checkpoints, predictions, preprocessed cases and
nnU-Net's data folders. Paths of the machine that ran the study are written relative: the results folder
as its name, each data root given as DATA_ROOT, so the copies say where things were in the study, not
on whose disk. Beside them: STUDY.json (the commit and settings that made the results, when and
where) and, per task, searches.md (how each fold's search ended and how far the folds agree).

A study run in parts in different places (a results folder per fold, on machines that do not keep
them) is assembled with merge: each part adds its folds to the folder, which must come from the same
settings (config files, dataset check, splits, plans, random genotypes), and the tables, searches.md and
the figures spanning folds are drawn anew from the folder's small outputs.
"""

from __future__ import annotations

import datetime
import fnmatch
import logging
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from scnas.errors import ScnasError, describe_os_error
from scnas.io import read_json, write_json, write_text
from scnas.layout import FOLD_DIR, LOGS, NNUNET, NNUNET_FOLDERS, SEARCH, Layout
from scnas.report.figures import REPORT

log = logging.getLogger("scnas.report")

KEEP = (
    "cv_table*",
    "*/check.json",
    "*/splits_final.json",
    "*/preprocessed/plans.json",
    f"*/{SEARCH}/fold_*/*.json",
    f"*/{SEARCH}/fold_*/*.csv",
    "*/*/genotype.json",
    "*/*/fold_*/metrics.csv",
    "*/*/fold_*/summary.json",
    "*/*/fold_*/model.json",
    "*/*/fold_*/training_log.csv",
    "*/*/fold_*/predictions/predictions.json",
    "*/report/*.png",
    "*/report/*/*.png",
    "*/report/*/*/*.png",
    "*/logs/*.log",
    "*/cv_table*",
    f"*/{NNUNET}/{NNUNET_FOLDERS}/prepared.json",
    f"*/{NNUNET}/{NNUNET_FOLDERS}/nnUNet_results/*/*/fold_*/progress.png",
    f"*/{NNUNET}/{NNUNET_FOLDERS}/nnUNet_results/*/*/fold_*/training_log_*.txt",
)
"""Glob patterns, relative to the results folder, of what is exported."""


SHARED = ("check.json", "splits_final.json", "preprocessed/plans.json", "random_*/genotype.json")
"""Per task, what every part of a study must hold alike (relative to the task folder)."""

REDRAWN = ("cv_table*", "*/cv_table*", "*/report/*.png", "*/report/*/*.png", "*/report/*/*/*.png")
"""What a merge draws anew rather than copies (a part's overlays, which need the images, excepted)."""

FOLD_NAME = re.compile(r"(?:^|_)fold_(\d+)$")


def fold_of(rel: Path) -> int | None:
    """The fold an exported file belongs to (a fold_K folder on its path, or a name ending in fold_K), or
    None for what spans the folds (tables, plans, splits, figures of every fold)."""
    for part in rel.parts[:-1]:
        m = FOLD_DIR.match(part)
        if m:
            return int(m.group(1))
    m = FOLD_NAME.search(Path(rel.name).stem)
    return int(m.group(1)) if m else None


def _matches(rel: str, pattern: str) -> bool:
    """fnmatch whose * does not cross folders."""
    parts, pats = rel.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pats))


def files_to_export(results: Path) -> list[Path]:
    """The files of `results` matching KEEP (each * within one folder), relative to it, sorted."""
    out = []
    for path in results.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(results).as_posix()
        if any(_matches(rel, pattern) for pattern in KEEP):
            out.append(Path(rel))
    return sorted(out)


def git_state(repo: Path, exclude: Path | None = None) -> dict:
    """The commit checked out in `repo` and whether tracked files differ from it (None outside git), not
    counting those under `exclude` (an export's own folder, which each export changes)."""
    skip = []
    root = Path(repo).resolve()
    if exclude is not None and Path(exclude).resolve().is_relative_to(root):
        skip = ["--", ".", f":(exclude){Path(exclude).resolve().relative_to(root).as_posix()}"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", *skip],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "modified": None}
    return {"commit": commit.stdout.strip(), "modified": bool(status.stdout.strip())}


SOURCE = Path(__file__).resolve().parents[2]
"""The checkout this package runs from (an editable install's repository)."""


TEXT = {".json", ".csv", ".log", ".txt", ".md", ".tex", ".yaml"}


def relative_places(results: Path, data_roots: Sequence[Path] = ()) -> list[tuple[str, str]]:
    """(absolute path, what it is written as), longest first: the data roots as DATA_ROOT, the results folder
    as its name (every spelling of each: as given made absolute, and resolved)."""
    places = {}
    for root in data_roots:
        for spelling in {str(Path(root).absolute()), str(Path(root).resolve())}:
            places[spelling] = "DATA_ROOT"
    for spelling in {str(results.absolute()), str(results.resolve())}:
        places[spelling] = results.name
    return sorted(places.items(), key=lambda item: -len(item[0]))


def _relative(source: Path, places: Sequence[tuple[str, str]]) -> bytes:
    """The bytes `source` is exported as: text with the machine's paths made relative, anything else as is."""
    if source.suffix not in TEXT:
        return source.read_bytes()
    text = source.read_text(errors="replace")
    for path, name in places:
        text = text.replace(path, name)
    return text.encode()


def _copy(source: Path, target: Path, places: Sequence[tuple[str, str]]) -> None:
    data = _relative(source, places)
    if source.suffix in TEXT:
        write_text(target, data.decode())
    else:
        target.write_bytes(data)


def _check_same_settings(
    results: Path, out: Path, files: Sequence[Path], configs: Sequence[Path], places: Sequence[tuple[str, str]]
) -> None:
    """A part joins a study only when what every part shares (SHARED, the config files) is the same."""
    shared = [rel for rel in files if len(rel.parts) > 1 and any(_matches(rel.as_posix(), f"*/{p}") for p in SHARED)]
    pairs = [(results / rel, out / rel) for rel in shared] + [(Path(c), out / "config" / Path(c).name) for c in configs]
    try:
        for source, target in pairs:
            if target.is_file() and _relative(source, places) != target.read_bytes():
                raise ScnasError(
                    f"{source}: differs from the study's {target}: a part run with other settings cannot join it"
                )
    except OSError as e:
        raise ScnasError(describe_os_error(e)) from None


def redraw(out: Path, tasks: Sequence[str]) -> list[Path]:
    """The tables, searches.md and the figures spanning folds, drawn from `out`'s small outputs alone (the
    per-fold figures of search and training are drawn again alike; a fold counts as trained once evaluated)."""
    from scnas.evaluation.searches import search_report
    from scnas.evaluation.study import find_metrics, write_study_tables
    from scnas.layout import GENOTYPE, SUMMARY
    from scnas.report.dot import DOT_MISSING, have_dot
    from scnas.report.readers import fold_folders, task_runs
    from scnas.report.study import draw_search, draw_study_table, draw_summary, draw_training

    if not have_dot():
        log.warning("the merged study's cell diagrams are not drawn again: %s", DOT_MISSING)
    written: list[Path] = []
    for task in tasks:
        task_dir = out / task
        report = search_report(task_dir)
        if report:
            write_text(task_dir / "searches.md", report)
            written.append(task_dir / "searches.md")
        if any((p / GENOTYPE).is_file() for p in fold_folders(task_dir / SEARCH).values()):
            written += map(Path, draw_search(out, task, cells=have_dot()))
        found = find_metrics(out, tasks=[task])
        if not found:
            continue
        written += write_study_tables(found, Path(Layout(str(out)).cv_table(task)))
        runs = [r for r in task_runs(task_dir) if r != NNUNET]
        trained = [r for r in runs if any((p / SUMMARY).is_file() for p in fold_folders(task_dir / r).values())]
        if trained:
            written += map(Path, draw_training(out, task, runs=trained, done=SUMMARY))
        written += map(Path, draw_summary(out, task, html=False))
    found = find_metrics(out)
    if found:
        written += write_study_tables(found, Path(Layout(str(out)).cv_table()))
        written.append(Path(draw_study_table(out)))
    return written


def _remove_stale(folders: Sequence[Path], written: Sequence[Path], folds: set[int] | None = None) -> None:
    """Delete what an earlier export left in `folders` that this one did not write (a rerun's old logs);
    with `folds`, only the files of those folds."""
    keep = {p.resolve() for p in written}
    try:
        for folder in folders:
            for path in sorted(folder.rglob("*"), reverse=True):
                ours = folds is None or fold_of(path.relative_to(folder)) in folds
                if path.is_file() and path.resolve() not in keep and ours:
                    path.unlink()
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
    except OSError as e:
        raise ScnasError(describe_os_error(e)) from None


def export_study(
    results: Path,
    out: Path,
    configs: Sequence[Path],
    repo: Path = SOURCE,
    note: str = "",
    data_roots: Sequence[Path] = (),
    merge: bool = False,
) -> list[Path]:
    """Copy the small outputs of `results` into `out` (replacing what an earlier export wrote there, and
    removing its files that `results` no longer has), with the config files under out/config/, STUDY.json
    and each task's searches.md; returns what was written. Machine paths become relative (`relative_places`).
    With merge, `results` is a part of the study in `out`: its folds replace those folds there, the other
    folds stay, and the tables and the figures spanning folds are drawn anew (`redraw`)."""
    from scnas.evaluation.searches import search_report

    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise ScnasError(f"{results}: results folder not found")
    for config in configs:
        if not Path(config).is_file():
            raise ScnasError(f"{config}: config file not found")
    files = files_to_export(results)
    places = relative_places(results, data_roots)
    if not files:
        raise ScnasError(f"{results}: nothing to export (no tables, metrics or logs found)")
    tops = {rel.parts[0] for rel in files if len(rel.parts) > 1 and (results / rel.parts[0]).is_dir()}
    tasks = sorted(tops - {REPORT, LOGS})  # the study-wide folders beside the tasks'
    folds = {k for k in map(fold_of, files) if k is not None}
    target = out
    if merge:
        _check_same_settings(results, out, files, configs, places)
        files = [
            rel
            for rel in files
            if fold_of(rel) is not None
            or not ((out / rel).is_file() or any(_matches(rel.as_posix(), p) for p in REDRAWN))
        ]
        target = out.with_name(f".{out.name}.merging")  # the merge is made here, then takes out's place
    written = []
    try:
        if merge:
            shutil.rmtree(target, ignore_errors=True)
            if out.is_dir():
                shutil.copytree(out, target)
        target.mkdir(parents=True, exist_ok=True)
        for rel in files:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            _copy(results / rel, target / rel, places)
            written.append(target / rel)
        for config in configs:
            path = target / "config" / Path(config).name
            path.parent.mkdir(parents=True, exist_ok=True)
            _copy(Path(config), path, places)
            written.append(path)
        if merge:
            _remove_stale([target / task for task in tasks], written, folds)
            for path in redraw(target, tasks):
                rel = path.relative_to(target).as_posix()
                if path.name == "searches.md" or any(_matches(rel, pattern) for pattern in KEEP):
                    written.append(path)
                else:
                    path.unlink()  # what an export leaves out (the diagrams' SVG)
        else:
            for task in tasks:
                report = search_report(results / task)
                if report:
                    write_text(out / task / "searches.md", report)
                    written.append(out / task / "searches.md")
            _remove_stale([out / top for top in sorted(tops)], written)
        record = _write_record(target, out, results, configs, repo, note, sorted(folds), merge, len(written) + 1)
        written.append(record)
        if merge:
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if out.is_dir():
                out.rename(old)
            target.rename(out)
            shutil.rmtree(old, ignore_errors=True)
            written = [out / p.relative_to(target) for p in written]
    except OSError as e:
        raise ScnasError(describe_os_error(e)) from None
    finally:
        if merge and target.is_dir():
            shutil.rmtree(target, ignore_errors=True)  # a merge that failed leaves `out` as it was
    return written


def _write_record(
    folder: Path,
    out: Path,
    results: Path,
    configs: Sequence[Path],
    repo: Path,
    note: str,
    folds: list[int],
    merge: bool,
    files: int,
) -> Path:
    """folder/STUDY.json (folder: `out`, or where a merge into it is staged): when, from which results, code
    and machine this export came, after the earlier ones; the code's state does not count `out`, which each
    export changes."""
    import torch

    record = {
        "exported": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "results": results.name,
        "code": git_state(repo, exclude=out),
        "configs": [Path(c).name for c in configs],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "note": note,
        "folds": folds,
        "merged": merge,
        "files": files,
    }
    path = folder / "STUDY.json"
    if path.is_file():
        old = read_json(path)
        record["earlier_exports"] = old.get("earlier_exports", []) + [
            {k: old.get(k) for k in ("exported", "code", "note", "folds") if k in old}
        ]
    write_json(path, record)
    return path
