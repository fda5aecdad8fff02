"""Where a study's figures go, next to the results they show (the Snakemake rules and `scnas plot study`
use these paths):

    RESULTS/{task}/report/search/fold_{k}/cells.svg, cells.png  the fold's genotype
    RESULTS/{task}/report/search/fold_{k}/dynamics.png          its search dynamics
    RESULTS/{task}/report/search/agreement.png                  the operations chosen across folds
    RESULTS/{task}/report/search/comparison.svg, .png           two genotypes side by side
    RESULTS/{task}/report/training/{run}_fold_{k}.png           one fold's training curves
    RESULTS/{task}/report/training/all_folds.png                every fold of every model
    RESULTS/{task}/report/overlays/fold_{k}.png                 best, median and worst case of a fold
    RESULTS/{task}/report/dice.png, costs.png, cv_table.html
    RESULTS/report/cv_table.html                                the study's table

Like scnas.layout, every method takes plain strings, so the paths double as Snakemake patterns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

REPORT = "report"


@dataclass(frozen=True)
class Figures:
    root: str

    def _p(self, *parts: object) -> str:
        return os.path.join(self.root, *map(str, parts))

    def folder(self, task: str) -> str:
        return self._p(task, REPORT)

    def cells(self, task: str, fold: int | str, ext: str = "png") -> str:
        return self._p(task, REPORT, "search", f"fold_{fold}", f"cells.{ext}")

    def dynamics(self, task: str, fold: int | str) -> str:
        return self._p(task, REPORT, "search", f"fold_{fold}", "dynamics.png")

    def agreement(self, task: str) -> str:
        return self._p(task, REPORT, "search", "agreement.png")

    def comparison(self, task: str, ext: str = "png") -> str:
        return self._p(task, REPORT, "search", f"comparison.{ext}")

    def training(self, task: str, run: str, fold: int | str) -> str:
        return self._p(task, REPORT, "training", f"{run}_fold_{fold}.png")

    def training_task(self, task: str) -> str:
        return self._p(task, REPORT, "training", "all_folds.png")

    def overlays(self, task: str, fold: int | str) -> str:
        return self._p(task, REPORT, "overlays", f"fold_{fold}.png")

    def dice(self, task: str) -> str:
        return self._p(task, REPORT, "dice.png")

    def costs(self, task: str) -> str:
        return self._p(task, REPORT, "costs.png")

    def table(self, task: str | None = None) -> str:
        return self._p(task, REPORT, "cv_table.html") if task else self._p(REPORT, "cv_table.html")
