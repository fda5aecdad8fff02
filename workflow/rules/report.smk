# The study's figures, drawn from the results folder by `scnas plot` into RESULTS/TASK/report/ (layout:
# scnas/report/figures.py; which figures: scnas/report/targets.py) and marked for `snakemake --report`.
# Per task one job each draws the search, training, overlay and summary figures (a job per figure would
# spend more on starting Python than on drawing); the rules are made per task, so that each names
# exactly the folds and models it draws.
from scnas.report.dot import DOT_MISSING, have_dot
from scnas.report.targets import StudyFigures

FIGS = StudyFigures(CFG, L, TASKS, dot=have_dot())
if not FIGS.dot:
    print(f"scnas: the report leaves out the cell diagrams: {DOT_MISSING}", file=sys.stderr)

# One figure rule's outputs, those with a caption marked for the report (category: the task).
marked = lambda figures, category: [  # noqa: E731
    (report(f.path, caption=f"../report/{f.caption}.rst", category=category, subcategory=f.section, labels=f.labels()))
    if f.caption
    else f.path
    for f in figures
]


report: "../report/workflow.rst"


for _task in TASKS:
    _folds = " ".join(map(str, CFG.folds))
    _runs = CFG.runs_for(_task)

    if FIGS.searched_folds(_task):

        rule:
            name:
                f"report_search_{_task}"
            input:
                [L.genotype(_task, k) for k in FIGS.searched_folds(_task)] + FIGS.comparison(_task),
            output:
                marked(FIGS.search(_task), _task),
            params:
                results=lambda wc: RES,
                task=_task,
                folds=" ".join(map(str, FIGS.searched_folds(_task))),
                compare=(
                    "--compare " + " ".join(map(repr, FIGS.comparison(_task)))
                    if FIGS.comparison(_task)
                    else "--no-compare"
                ),
                cells="" if FIGS.dot else "--no-cells",
            log:
                L.log(_task, "report_search.log"),
            localrule: True
            conda:
                ENV
            shell:
                "scnas plot search --results {params.results:q} --task {params.task} --folds {params.folds}"
                " {params.compare} {params.cells} > {log:q} 2>&1"

    rule:
        name:
            f"report_training_{_task}"
        input:
            [L.checkpoint(_task, run, k) for run in _runs for k in CFG.folds],
        output:
            marked(FIGS.training(_task), _task),
        params:
            results=lambda wc: RES,
            task=_task,
            runs=" ".join(_runs),
            folds=_folds,
        log:
            L.log(_task, "report_training.log"),
        localrule: True
        conda:
            ENV
        shell:
            "scnas plot training --results {params.results:q} --task {params.task} --runs {params.runs}"
            " --folds {params.folds} > {log:q} 2>&1"

    rule:
        name:
            f"report_overlays_{_task}"
        input:
            [L.summary(_task, run, k) for run in _runs for k in CFG.folds],
        output:
            marked(FIGS.overlays(_task), _task),
        params:
            results=lambda wc: RES,
            task=_task,
            folds=_folds,
            dataset=dataset_dir(_task),
        log:
            L.log(_task, "report_overlays.log"),
        localrule: True
        conda:
            ENV
        shell:
            "scnas plot overlays --results {params.results:q} --task {params.task} --folds {params.folds}"
            " --dataset {params.dataset:q} > {log:q} 2>&1"

    rule:
        name:
            f"report_summary_{_task}"
        input:
            [L.summary(_task, run, k) for run in _runs for k in CFG.folds]
            + [L.genotype(_task, k) for k in FIGS.searched_folds(_task)]
            + FIGS.transfer_source(_task)
            + [L.cv_table(_task) + ".md"],
        output:
            marked(FIGS.summary(_task), _task),
        params:
            results=lambda wc: RES,
            task=_task,
        log:
            L.log(_task, "report_summary.log"),
        localrule: True
        conda:
            ENV
        shell:
            "scnas plot summary --results {params.results:q} --task {params.task} > {log:q} 2>&1"


rule report_table:
    input:
        L.cv_table() + ".md",
    output:
        marked([FIGS.study_table()], "Study"),
    params:
        results=lambda wc: RES,
    log:
        L.log(None, "report_table.log"),
    localrule: True
    conda:
        ENV
    shell:
        "scnas plot summary --results {params.results:q} > {log:q} 2>&1"
