"""Which figures a study's workflow draws, and how the Snakemake report files them (category = task,
subcategory = section, labels figure/model/fold), from the study's config: workflow/rules/report.smk
turns these into rules and `report(...)` outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from scnas.config import Config
from scnas.layout import Layout
from scnas.report.figures import Figures


@dataclass(frozen=True)
class Figure:
    """One output of a figure rule; `caption` names workflow/report/CAPTION.rst, None: not in the report."""

    path: str
    caption: str | None = None
    section: str = ""
    name: str = ""
    model: str = "-"
    fold: str = "-"

    def labels(self) -> dict[str, str]:
        return {"figure": self.name, "model": self.model, "fold": self.fold}


@dataclass(frozen=True)
class StudyFigures:
    """The figures of the study that `cfg` describes, in `layout`'s results folder."""

    cfg: Config
    layout: Layout
    tasks: Sequence[str]
    dot: bool

    @property
    def figures(self) -> Figures:
        return Figures(self.layout.root)

    def searched_folds(self, task: str) -> list[int]:
        """The searched folds of `task`: all for scnas, and the source fold of a transfer."""
        folds = list(self.cfg.folds) if "scnas" in self.cfg.models_for(task) else []
        transfer = self.cfg.transfer
        transferred = any("scnas_transfer" in self.cfg.models_for(t) for t in self.tasks)
        if task == transfer.source_task and transferred and transfer.source_fold not in folds:
            folds.append(transfer.source_fold)
        return sorted(folds)

    def transfer_source(self, task: str) -> list[str]:
        """The genotype transferred to `task`, if any (its search's wall-clock enters the cost figure)."""
        if "scnas_transfer" not in self.cfg.models_for(task):
            return []
        return [self.layout.genotype(self.cfg.transfer.source_task, self.cfg.transfer.source_fold)]

    def comparison(self, task: str) -> list[str]:
        """The two genotypes set side by side: the task's own first fold and the one transferred to it,
        else its first two folds (as scnas.report.study.default_comparison picks them)."""
        folds = self.searched_folds(task)
        source = self.transfer_source(task)
        if folds and source and self.cfg.transfer.source_task != task:
            return [self.layout.genotype(task, folds[0]), source[0]]
        return [self.layout.genotype(task, k) for k in folds[:2]] if len(folds) >= 2 else []

    def search(self, task: str) -> list[Figure]:
        f, folds = self.figures, self.searched_folds(task)
        out: list[Figure] = []
        for k in folds:
            if self.dot:
                out += [
                    Figure(f.cells(task, k), "cells", "Search", "cells", "SCNAS", str(k)),
                    Figure(f.cells(task, k, "svg")),
                ]
            out.append(Figure(f.dynamics(task, k), "dynamics", "Search", "search dynamics", "SCNAS", str(k)))
        if len(folds) > 1:
            out.append(Figure(f.agreement(task), "agreement", "Search", "agreement across folds", "SCNAS", "all"))
        if self.dot and self.comparison(task):
            out += [
                Figure(f.comparison(task), "cells", "Search", "comparison of two genotypes", "SCNAS", "2 genotypes"),
                Figure(f.comparison(task, "svg")),
            ]
        return out

    def training(self, task: str) -> list[Figure]:
        f = self.figures
        out = [
            Figure(f.training(task, run, k), "training", "Training", "training curves", run, str(k))
            for run in self.cfg.runs_for(task)
            for k in self.cfg.folds
        ]
        return out + [Figure(f.training_task(task), "training", "Training", "all folds", "all", "all")]

    def overlays(self, task: str) -> list[Figure]:
        return [
            Figure(self.figures.overlays(task, k), "overlays", "Segmentation overlays", "overlays", "all", str(k))
            for k in self.cfg.folds
        ]

    def summary(self, task: str) -> list[Figure]:
        f = self.figures
        return [
            Figure(f.dice(task), "dice", "Summary", "Dice per case", "all", "all"),
            Figure(f.costs(task), "costs", "Summary", "cost per model", "all", "all"),
            Figure(f.table(task), "table", "Summary", "CV table", "all", "all"),
        ]

    def study_table(self) -> Figure:
        return Figure(self.figures.table(), "table", "Tables", "CV table", "all", "all")

    def targets(self) -> list[str]:
        """Every figure of the study (plain paths, for `rule all`)."""
        parts = [
            part(task) for task in self.tasks for part in (self.search, self.training, self.overlays, self.summary)
        ]
        return [fig.path for part in parts for fig in part] + [self.study_table().path]
