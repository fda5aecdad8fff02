"""Draw a task's (or a whole study's) figures into the Figures layout, from the results folder alone.

Each function draws one part (search, training, overlays, summary); what to draw defaults to what the
results folder holds, and the Snakemake rules name it exactly (folds, model folders) so that every
declared output is written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from scnas.errors import ScnasError
from scnas.layout import CHECKPOINT, GENOTYPE, METRICS, SEARCH, Layout
from scnas.nas.genotype import load_genotype
from scnas.report.figures import Figures
from scnas.report.readers import fold_folders, read_json_file, run_label, task_runs

log = logging.getLogger("scnas.report")


def _task_dir(results: str | os.PathLike, task: str) -> Path:
    path = Path(results) / task
    if not path.is_dir():
        raise ScnasError(f"{path}: no results for task {task!r}")
    return path


def _folds_with(folder: Path, name: str, folds: Sequence[int] | None, what: str) -> list[int]:
    """The folds of `folder` holding `name`; the requested ones must all hold it."""
    found = {k: p for k, p in fold_folders(folder).items() if (p / name).is_file()}
    if folds is None:
        return sorted(found)
    missing = [k for k in folds if k not in found]
    if missing:
        raise ScnasError(f"{folder / f'fold_{missing[0]}' / name}: not found (needed for the {what})")
    return list(folds)


def genotype_label(path: Path) -> str:
    from scnas.report.cells import genotype_title

    data = read_json_file(path, "genotype")
    return genotype_title(data.get("source") if isinstance(data, dict) else None, path.parent.name)


def default_comparison(results: str | os.PathLike, task: str, folds: Sequence[int]) -> tuple[Path, Path] | None:
    """The two genotypes to set side by side: the task's own first fold and the genotype transferred to it,
    else its first two folds, else none."""
    from scnas.report.summary import source_search

    layout = Layout(str(results))
    own = [Path(layout.genotype(task, k)) for k in folds]
    transfer = fold_folders(Path(results) / task / "scnas_transfer")
    for folder in transfer.values():
        if (folder / "model.json").is_file() and own:
            spec = read_json_file(folder / "model.json", "model info").get("spec") or {}
            source = source_search(Path(results), spec.get("genotype") or {})
            if source is not None and source[0] != task:
                return own[0], Path(layout.genotype(*source))
        break
    return (own[0], own[1]) if len(own) >= 2 else None


def draw_search(
    results: str | os.PathLike,
    task: str,
    folds: Sequence[int] | None = None,
    compare: tuple[Path, Path] | None = None,
    out: str | os.PathLike | None = None,
    auto_compare: bool = True,
    cells: bool = True,
) -> list[str]:
    """Per searched fold its cell diagram and dynamics; across folds their agreement; two genotypes side
    by side (`compare`, or default_comparison when auto_compare). cells=False leaves out what Graphviz
    draws (the diagrams and the comparison)."""
    from scnas.report.cells import genotype_graph, genotype_title, render
    from scnas.report.search import plot_agreement, plot_search

    search_dir = _task_dir(results, task) / SEARCH
    folds = _folds_with(search_dir, GENOTYPE, folds, "search figures")
    if not folds:
        raise ScnasError(f"{search_dir}: no finished search (fold_K/genotype.json)")
    figures = Figures(str(out or results))
    written: list[str] = []
    genotypes = []
    for k in folds:
        path = search_dir / f"fold_{k}" / GENOTYPE
        genotype = load_genotype(path)
        genotypes.append(genotype)
        source = read_json_file(path, "genotype").get("source")
        title = genotype_title(source, f"{task} fold {k}")
        if cells:
            prefix = Path(figures.cells(task, k)).with_suffix("")
            written += map(str, render(genotype_graph([genotype], [""], f"{title}: searched cells"), prefix))
        written.append(
            plot_search(
                search_dir / f"fold_{k}",
                figures.dynamics(task, k),
                genotype.operations,
                f"{task} fold {k}: search dynamics",
            )
        )
    if len(folds) > 1:
        written.append(
            plot_agreement(
                genotypes,
                [f"fold {k}" for k in folds],
                figures.agreement(task),
                f"{task}: operation chosen per edge, over {len(folds)} folds",
            )
        )
    if compare is None and auto_compare:
        compare = default_comparison(results, task, folds)
    if compare is not None and cells:
        pair = [load_genotype(p) for p in compare]
        titles = [genotype_label(Path(p)) for p in compare]
        if titles[0] == titles[1]:
            titles = [f"{t} ({n})" for t, n in zip(titles, ("first", "second"))]
        heading = f"{titles[0]} vs {titles[1]}: thick edges agree, dashed edges differ"
        prefix = Path(figures.comparison(task)).with_suffix("")
        written += map(str, render(genotype_graph(pair, titles, heading), prefix))
    return written


def draw_training(
    results: str | os.PathLike,
    task: str,
    runs: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    out: str | os.PathLike | None = None,
    done: str = CHECKPOINT,
) -> list[str]:
    """Every trained fold's curves, and one figure with every fold of every model. A fold counts as
    trained when it holds `done` (an export, which has no checkpoints, names another file)."""
    from scnas.report.training import plot_training_fold, plot_training_task

    task_dir = _task_dir(results, task)
    runs = list(runs) if runs is not None else task_runs(task_dir)
    figures = Figures(str(out or results))
    written = []
    chosen: dict[str, dict[int, Path]] = {}
    for run in runs:
        ks = _folds_with(task_dir / run, done, folds, "training curves")
        chosen[run] = {k: task_dir / run / f"fold_{k}" for k in ks}
        for k, folder in chosen[run].items():
            written.append(
                plot_training_fold(folder, figures.training(task, run, k), f"{task}: {run_label(run)}, fold {k}")
            )
    if not any(chosen.values()):
        raise ScnasError(f"{task_dir}: no trained fold (MODEL/fold_K/{done})")
    written.append(plot_training_task(chosen, figures.training_task(task), f"{task}: training loss of every fold"))
    return written


def _evaluated_folds(task_dir: Path, runs: Sequence[str]) -> list[int]:
    return sorted({k for run in runs for k, p in fold_folders(task_dir / run).items() if (p / METRICS).is_file()})


def draw_overlays(
    results: str | os.PathLike,
    task: str,
    folds: Sequence[int] | None = None,
    dataset: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> list[str]:
    """Per evaluated fold the best, median and worst validation case, every model's prediction."""
    from scnas.report.overlays import plot_overlays

    task_dir = _task_dir(results, task)
    folds = list(folds) if folds is not None else _evaluated_folds(task_dir, task_runs(task_dir))
    if not folds:
        raise ScnasError(f"{task_dir}: no evaluated fold (MODEL/fold_K/{METRICS})")
    figures = Figures(str(out or results))
    return [plot_overlays(task_dir, k, figures.overlays(task, k), dataset, f"{task} fold {k}") for k in folds]


def draw_summary(
    results: str | os.PathLike, task: str, out: str | os.PathLike | None = None, html: bool = True
) -> list[str]:
    """Per-case Dice box plots, the cost per model, and (html) the task's CV table as HTML."""
    from scnas.report.summary import plot_costs, plot_dice_boxes, table_html

    task_dir = _task_dir(results, task)
    figures = Figures(str(out or results))
    layout = Layout(str(results))
    drawn = [
        plot_dice_boxes(task_dir, figures.dice(task), f"{task}: Dice per validation case, all folds"),
        plot_costs(task_dir, figures.costs(task), f"{task}: cost per model"),
    ]
    if html:
        drawn.append(table_html(layout.cv_table(task), figures.table(task), f"{task}: cross-validation Dice"))
    return drawn


def draw_study_table(results: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    from scnas.report.summary import table_html

    return table_html(Layout(str(results)).cv_table(), Figures(str(out or results)).table(), "Cross-validation Dice")


def study_tasks(results: str | os.PathLike) -> list[str]:
    """The tasks of a results folder with something to draw (a search or a trained model)."""
    root = Path(results)
    if not root.is_dir():
        raise ScnasError(f"{root}: results folder not found")
    tasks = [p.name for p in sorted(root.iterdir()) if p.is_dir() and ((p / SEARCH).is_dir() or _has_runs(p))]
    if not tasks:
        raise ScnasError(f"{root}: holds no task with a search or a trained model to draw")
    return tasks


def _has_runs(task_dir: Path) -> bool:
    try:
        return bool(task_runs(task_dir))
    except ScnasError:
        return False


def draw_study(
    results: str | os.PathLike, tasks: Sequence[str] | None = None, out: str | os.PathLike | None = None
) -> list[str]:
    """Everything the results folder allows: each part is drawn when its inputs exist."""
    written: list[str] = []
    for task in tasks or study_tasks(results):
        task_dir = _task_dir(results, task)
        if _folds_with(task_dir / SEARCH, GENOTYPE, None, ""):
            written += draw_search(results, task, out=out)
        runs = task_runs(task_dir)
        if any((p / CHECKPOINT).is_file() for r in runs for p in fold_folders(task_dir / r).values()):
            written += draw_training(
                results, task, runs=[r for r in runs if _folds_with(task_dir / r, CHECKPOINT, None, "")], out=out
            )
        if _evaluated_folds(task_dir, runs):
            written += draw_overlays(results, task, out=out)
            if Path(Layout(str(results)).cv_table(task) + ".md").is_file():
                written += draw_summary(results, task, out=out)
    if Path(Layout(str(results)).cv_table() + ".md").is_file():
        written.append(draw_study_table(results, out))
    return written
