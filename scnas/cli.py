"""The `scnas` command: one subcommand per pipeline stage, the same functions the Snakemake rules call.

Every stage validates its input first and fails with one line naming the file, case or key, exit 1,
never a traceback (run with -v, or set SCNAS_DEBUG=1, for one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from scnas import __version__
from scnas.errors import ScnasError, describe_os_error
from scnas.layout import MANIFEST

log = logging.getLogger("scnas")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


# ---------------------------------------------------------------------------------------------- config


def settings_from_args(args: argparse.Namespace, flags: dict | None = None):
    """The task's settings: --config files/inline JSON merged, --task's overrides applied, then the
    command-line `flags` (as {"section": {"key": value}}), all validated by the config's rules."""
    from scnas import config as cfgmod

    sources = args.config or []
    merged: dict = {}
    for src in sources:
        merged = cfgmod.deep_merge(merged, cfgmod.read_config_source(src))
    if merged.get("tasks"):
        settings = cfgmod.from_dict(merged).settings(args.task)
        if not flags:
            return settings
        merged = cfgmod.dataclass_to_dict(settings)
    return cfgmod.task_settings(cfgmod.deep_merge(merged, flags or {}))


def launcher_config(args: argparse.Namespace, settings):
    if getattr(args, "launcher", None):
        from scnas import config as cfgmod

        return cfgmod.task_settings({"launcher": cfgmod.read_config_source(args.launcher)}).launcher
    return settings.launcher


# ---------------------------------------------------------------------------------------------- stages


def cmd_synth(args: argparse.Namespace) -> None:
    from scnas.data.synthetic import make_synthetic_task
    from scnas.io import ensure_output_dir

    ensure_output_dir(args.out, "synthetic task folder", create=False)
    out = make_synthetic_task(
        args.kind,
        Path(args.out),
        cases=args.cases,
        seed=args.seed,
        size=args.size,
        shape=tuple(args.shape) if args.shape else None,
        spacing=tuple(args.spacing) if args.spacing else None,
        progress=True,
    )
    log.info("wrote synthetic %s task with %d cases to %s", args.kind, args.cases, out)


def cmd_check(args: argparse.Namespace) -> None:
    from scnas.data.check import check_dataset
    from scnas.io import ensure_output_dir, write_json

    if args.report:
        report = Path(args.report)
        if report.is_dir():
            raise ScnasError(f"{report}: --report is a folder; give the JSON file to write")
        ensure_output_dir(report.parent, "report folder", create=False)
    dataset, problems = check_dataset(Path(args.dataset), threads=args.threads, progress=True)
    if len(problems) == 1:
        raise ScnasError(problems[0])
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        raise ScnasError(f"{args.dataset}: {len(problems)} problems found (listed above)")
    log.info(
        "%s: %s dataset, %d cases, %d channels (%s), labels %s: all good",
        args.dataset,
        dataset.format,
        len(dataset.cases),
        dataset.num_channels,
        ", ".join(dataset.modalities),
        dataset.labels,
    )
    if args.report:
        write_json(
            args.report,
            {
                "dataset": str(args.dataset),
                "format": dataset.format,
                "name": dataset.name,
                "cases": list(dataset.case_ids),
                "modalities": list(dataset.modalities),
                "labels": {str(k): v for k, v in dataset.labels.items()},
            },
        )


def cmd_splits(args: argparse.Namespace) -> None:
    from scnas.data.dataset import parse_dataset
    from scnas.data.splits import import_splits, make_splits, write_splits

    dataset = parse_dataset(Path(args.dataset))
    if args.nnunet:
        splits = import_splits(args.nnunet, dataset.case_ids, args.folds)
        log.info("imported nnU-Net splits from %s", args.nnunet)
    else:
        splits = make_splits(dataset.case_ids, args.folds, args.seed)
    write_splits(args.out, splits)
    log.info("wrote %d folds to %s", len(splits), args.out)


def cmd_preprocess(args: argparse.Namespace) -> None:
    from scnas.data.check import validate_dataset
    from scnas.data.preprocess import preprocess_dataset
    from scnas.io import ensure_output_dir

    settings = settings_from_args(args, {"preprocess": {"spacing": list(args.spacing)}} if args.spacing else None)
    threads = args.threads or settings.preprocess.threads
    dataset = validate_dataset(Path(args.dataset), case_ids=args.case, threads=threads)
    out = ensure_output_dir(args.out, "preprocessed folder", create=False)
    fits = None
    if settings.plan.gpu_memory_gb is not None:  # the patch that fits: the memory model needs torch
        from scnas.models.memory import budget_for

        fits = budget_for(settings, dataset.num_channels, len(dataset.labels))
    run = preprocess_dataset(
        dataset, settings.preprocess, settings.plan, out, case_ids=args.case, threads=threads, fits=fits
    )
    log.info(
        "preprocessed %d cases into %s, kept %d already done (spacing %s, patch %s, plans %s)",
        len(run.written),
        out,
        len(run.kept),
        list(run.plans.target_spacing),
        list(run.plans.patch_size),
        run.plans.fingerprint,
    )


def cmd_random_genotype(args: argparse.Namespace) -> None:
    from scnas.io import ensure_output_dir
    from scnas.nas.genotype import random_genotype, save_genotype

    out = Path(args.out)
    ensure_output_dir(out.parent, "genotype folder", create=False)
    save_genotype(out, random_genotype(args.seed, args.draw), source={"random": {"seed": args.seed, "draw": args.draw}})
    log.info("wrote random genotype %d (seed %d) to %s", args.draw, args.seed, out)


def cmd_search(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    _run_heavy(
        args,
        settings,
        "search",
        "scnas.launch.targets:search_target",
        {
            "preprocessed": args.preprocessed,
            "splits": args.splits,
            "fold": args.fold,
            "out_dir": args.out,
            "task": args.task or "",
        },
    )


def cmd_train(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    if args.model != "uresnet" and not args.genotype:
        raise ScnasError(f"--model {args.model}: needs --genotype FILE (a genotype.json from `scnas search`)")
    if args.genotype:
        from scnas.nas.genotype import load_genotype

        load_genotype(args.genotype)
    _run_heavy(
        args,
        settings,
        "train",
        "scnas.launch.targets:train_target",
        {
            "preprocessed": args.preprocessed,
            "splits": args.splits,
            "fold": args.fold,
            "out_dir": args.out,
            "model": args.model,
            "genotype": args.genotype,
        },
    )


def cmd_predict(args: argparse.Namespace) -> None:
    from scnas.inference.predict import check_agreement, model_checkpoints

    settings = settings_from_args(args)
    cases = _dataset_cases(args)
    checkpoints = model_checkpoints(args.model, args.folds)
    if not (args.images or cases):
        raise ScnasError(
            "nothing to predict: give --images FILE_OR_DIR ..., --dataset with --test, or --dataset/--splits/--fold"
        )
    from scnas.data.plans import Plans
    from scnas.io import ensure_output_dir
    from scnas.train.checkpoint import load_model_checkpoint

    ensure_output_dir(args.out, "predictions folder", create=False)
    check_agreement([(str(c), Plans.from_dict(load_model_checkpoint(c)["plans"], str(c))) for c in checkpoints])
    _run_heavy(
        args,
        settings,
        "predict",
        "scnas.launch.targets:predict_target",
        {
            "checkpoint": str(checkpoints[0]) if len(checkpoints) == 1 else [str(c) for c in checkpoints],
            "images": list(args.images or []),
            "cases": cases,
            "out_dir": args.out,
            "save_probabilities": args.save_probabilities,
        },
    )


def _dataset_cases(args: argparse.Namespace) -> dict[str, list[str]]:
    """The cases --fold (a fold's validation cases) or --test (the task's test images) name: case id -> its
    image files, one per channel for an nnU-Net v2 dataset."""
    if args.fold is None and not args.test:
        return {}
    if args.fold is not None and args.test:
        raise ScnasError("--fold and --test exclude each other: predict a fold's validation cases or the test images")
    if not args.dataset:
        raise ScnasError(f"{'--test' if args.test else '--fold'}: also give --dataset")
    if args.test:
        from scnas.data.dataset import list_test_cases

        found = list_test_cases(args.dataset)
        if not found:
            raise ScnasError(
                f"{args.dataset}: no test images (MSD: dataset.json 'test' or imagesTs/; nnU-Net v2: imagesTs/)"
            )
        return {case_id: [str(p) for p in files] for case_id, files in found.items()}
    if Path(args.model).is_dir():
        raise ScnasError(
            f"--fold {args.fold}: the other folds of {args.model} trained on this fold's validation cases; "
            f"give --model {Path(args.model) / f'fold_{args.fold}' / 'checkpoint_final.pt'}"
        )
    if not args.splits:
        raise ScnasError("--fold: also give --splits")
    from scnas.data.dataset import parse_dataset
    from scnas.data.splits import fold_cases, load_splits

    dataset = parse_dataset(Path(args.dataset))
    _, val = fold_cases(load_splits(args.splits, dataset.case_ids), args.fold, args.splits)
    return {c: [str(p) for p in dataset.case(c).images] for c in val}


def cmd_evaluate(args: argparse.Namespace) -> None:
    from scnas.data.dataset import parse_dataset
    from scnas.data.splits import fold_cases, load_splits
    from scnas.evaluation.metrics import evaluate_cases, read_prediction_manifest
    from scnas.io import ensure_output_dir

    settings = settings_from_args(args)
    ensure_output_dir(args.out, "evaluation folder", create=False)
    dataset = parse_dataset(Path(args.dataset))
    pred_dir = Path(args.predictions)
    if args.fold is not None:
        if not args.splits:
            raise ScnasError("--fold: also give --splits")
        _, cases = fold_cases(load_splits(args.splits, dataset.case_ids), args.fold, args.splits)
    elif args.cases:
        cases = args.cases
    else:
        manifest = pred_dir / MANIFEST
        if not manifest.exists():
            raise ScnasError(f"{manifest}: not found; name the cases with --cases or --splits/--fold")
        cases = read_prediction_manifest(manifest)
    pairs = []
    predicted_by = None
    if (pred_dir / MANIFEST).is_file():
        from scnas.io import read_json

        predicted_by = (read_json(pred_dir / MANIFEST).get("provenance") or {}).get("fingerprint")
    for case_id in cases:
        pred = pred_dir / f"{case_id}.nii.gz"
        if not pred.exists():
            raise ScnasError(f"{pred}: prediction for case {case_id} not found")
        pairs.append((case_id, pred, dataset.case(case_id).label))
    from scnas.config import dataclass_to_dict
    from scnas.fingerprint import Provenance

    provenance = Provenance.of(
        {"predictions": predicted_by, "cases": sorted(cases), "evaluation": dataclass_to_dict(settings.evaluation)}
    )
    df = evaluate_cases(
        pairs,
        dataset.labels,
        Path(args.out),
        percentile=settings.evaluation.hd_percentile,
        threads=args.threads,
        provenance=provenance.to_dict(),
    )
    log.info("evaluated %d cases: mean Dice %s", len(cases), df.groupby("label_name")["dice"].mean().round(4).to_dict())


def cmd_table(args: argparse.Namespace) -> None:
    """Write the CV tables to --out PREFIX, by default RESULTS/cv_table where RESULTS is --results or the
    results folder holding every --metrics file; --print also prints the Markdown table."""
    from scnas.evaluation.study import find_metrics, parse_metrics_paths, write_study_tables
    from scnas.io import ensure_output_dir

    if args.metrics:
        found = parse_metrics_paths(args.metrics)
    elif args.results:
        found = find_metrics(Path(args.results), tasks=args.task, models=args.model, folds=args.folds)
    else:
        raise ScnasError("give --results DIR or --metrics FILE ...")
    if args.out:
        prefix = Path(args.out)
    elif args.results:
        prefix = Path(args.results) / "cv_table"
    else:
        roots = sorted({str(p.parents[3]) for paths in found.values() for p in paths})
        if len(roots) > 1:
            raise ScnasError(
                f"--metrics: the files lie in {len(roots)} results folders ({', '.join(roots)}); give --out"
            )
        prefix = Path(roots[0]) / "cv_table"
    ensure_output_dir(prefix.parent, "table folder", create=False)
    written = write_study_tables(found, prefix)
    for path in written:
        log.info("wrote %s", path)
    if args.print:
        print(next(p for p in written if p.suffix == ".md").read_text())


def _run_heavy(args: argparse.Namespace, settings, rule: str, target: str, kwargs: dict) -> None:
    """Hand a heavy stage to the launcher (in-process, local submitit, or SLURM), once its inputs and
    output folder have been checked: nothing is submitted that would fail at its first line."""
    from scnas.config import dataclass_to_dict
    from scnas.io import ensure_output_dir
    from scnas.launch import Job, run_job
    from scnas.layout import job_name

    launcher = launcher_config(args, settings)
    if "preprocessed" in kwargs:
        from scnas.data.plans import load_plans
        from scnas.data.splits import fold_cases, load_splits

        plans = load_plans(kwargs["preprocessed"])
        fold_cases(load_splits(kwargs["splits"], plans.case_ids), kwargs["fold"], kwargs["splits"])
    out = ensure_output_dir(kwargs["out_dir"], f"{rule} output folder", create=False)
    fold_dir = out.parent if rule == "predict" else out
    job = Job(
        name=job_name(rule, out, getattr(args, "task", None) or ""),
        target=target,
        kwargs={**kwargs, "settings": dataclass_to_dict(settings)},
        resources=launcher.resources(rule),
        log_dir=fold_dir.parent / "logs" / fold_dir.name,
        checkpointable=True,
    )
    result = run_job(job, launcher)
    if result is not None:
        log.info("%s finished: %s", rule, json.dumps(result, default=str))


def cmd_export(args: argparse.Namespace) -> None:
    from scnas.report.export import export_study

    written = export_study(
        Path(args.results),
        Path(args.out),
        [Path(c) for c in args.configs],
        note=args.note,
        data_roots=[Path(d) for d in args.data_root],
        merge=args.merge,
    )
    log.info("exported %d files from %s to %s", len(written), args.results, args.out)


def cmd_convert(args: argparse.Namespace) -> None:
    from scnas.data.convert import convert_dataset
    from scnas.io import ensure_output_dir

    ensure_output_dir(args.target, "converted dataset folder", create=False)
    print(convert_dataset(Path(args.source), Path(args.target), args.to))


def cmd_profiles_install(args: argparse.Namespace) -> None:
    from scnas.profiles import install_profiles

    for line in install_profiles(force=args.force):
        print(line)
    print("`snakemake --profile local` and `snakemake --profile slurm` now find them by name")


# ---------------------------------------------------------------------------------------------- figures


def cmd_plot_genotype(args: argparse.Namespace) -> None:
    from scnas.io import ensure_output_dir
    from scnas.nas.genotype import load_genotype
    from scnas.report.cells import genotype_graph, render
    from scnas.report.dot import require_dot
    from scnas.report.study import genotype_label

    if len(args.genotype) > 2:
        raise ScnasError(f"give one genotype, or two to set side by side (got {len(args.genotype)})")
    if args.titles and len(args.titles) != len(args.genotype):
        raise ScnasError(f"--titles: give one title per genotype ({len(args.genotype)})")
    require_dot()
    genotypes = [load_genotype(g) for g in args.genotype]
    titles = args.titles or [genotype_label(Path(g)) for g in args.genotype]
    out = ensure_output_dir(args.out, "figure folder")
    if len(genotypes) == 2:
        heading = f"{titles[0]} vs {titles[1]}: thick edges agree, dashed edges differ"
        graph = genotype_graph(genotypes, titles, heading)
    else:
        graph = genotype_graph(genotypes, [""], f"{titles[0]}: searched cells")
    name = args.name or ("comparison" if len(genotypes) == 2 else "cells")
    for path in render(graph, out / name):
        log.info("wrote %s", path)


def _figures_out(args: argparse.Namespace) -> str:
    from scnas.io import ensure_output_dir

    root = args.out or args.results
    if not Path(args.results).is_dir():
        raise ScnasError(f"{args.results}: results folder not found")
    ensure_output_dir(root, "figure folder", create=False)
    return root


def _report_written(what: str, paths: Sequence[str], started: float) -> None:
    import time

    for path in paths:
        log.info("wrote %s", path)
    log.info("drew %d %s files in %.1f s", len(paths), what, time.monotonic() - started)


def cmd_plot_part(args: argparse.Namespace) -> None:
    """One part of a task's figures (search, training, overlays, summary) into RESULTS/TASK/report/."""
    import time

    from scnas.report import study

    started = time.monotonic()
    out = _figures_out(args)
    if args.action == "search":
        if args.compare and args.no_compare:
            raise ScnasError("--compare and --no-compare exclude each other")
        compare = tuple(Path(p) for p in args.compare) if args.compare else None
        written = study.draw_search(
            args.results,
            args.task,
            args.folds,
            compare,
            out=out,
            auto_compare=not args.no_compare,
            cells=not args.no_cells,
        )
    elif args.action == "training":
        written = study.draw_training(args.results, args.task, args.runs, args.folds, out=out)
    elif args.action == "overlays":
        written = study.draw_overlays(args.results, args.task, args.folds, args.dataset, out=out)
    elif args.task:
        written = study.draw_summary(args.results, args.task, out=out)
    else:
        written = [study.draw_study_table(args.results, out)]
    _report_written(args.action, written, started)


def cmd_plot_study(args: argparse.Namespace) -> None:
    """Every figure the results folder allows, for every task (or those given)."""
    import time

    from scnas.report.study import draw_study

    started = time.monotonic()
    out = _figures_out(args)
    _report_written("study", draw_study(args.results, args.task, out=out), started)


def cmd_status(args: argparse.Namespace) -> None:
    from scnas.report.status import format_status, study_status

    print(format_status(study_status(args.results), args.results))


# ---------------------------------------------------------------------------------------------- parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples kept as written; an option's default appended to its help when it has one
    (an option without one says in its own help what happens when it is left out)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.required or unset or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


def _command(
    sub: argparse._SubParsersAction, name: str, summary: str, example: str, func: Callable | None = None
) -> argparse.ArgumentParser:
    """A subcommand with a one-line description and, under its options, an example: a command per line
    (a line ending in a backslash continues on the next)."""
    p = sub.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.splitlines()),
        formatter_class=HelpFormatter,
    )
    if func is not None:
        p.set_defaults(func=func)
    return p


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument(
            "--config",
            action="append",
            metavar="FILE_OR_JSON",
            help="config file (YAML/JSON) or inline JSON; repeat to layer several, later ones win "
            "(default: none, every key at its default)",
        )
        p.add_argument(
            "--task",
            help="the task whose overrides (tasks.TASK in the config) apply (default: none, the global settings)",
        )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of an error")


def _heavy(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--launcher",
        metavar="FILE_OR_JSON",
        help="where the job runs: a file or inline JSON over the config's launcher section, e.g. "
        '{"executor": "slurm"} (default: the config\'s launcher section; without one, in this process)',
    )


_DATASET_HELP = "the dataset folder (holds dataset.json)"
_EX = "results/Task02_Heart"
_EX_FOLD = f"--preprocessed {_EX}/preprocessed --splits {_EX}/splits_final.json --fold 0 \\\n    "


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scnas",
        description=__doc__.splitlines()[0],
        epilog="Run `scnas COMMAND --help` for a command's options and an example.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"scnas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub, "synth", "generate a synthetic MSD-format task", "scnas synth --kind heart --out data/Synth", cmd_synth
    )
    p.add_argument(
        "--kind",
        required=True,
        choices=["brain", "heart", "lung"],
        help="brain: 4 MRI channels, 3 tumour labels; heart: 1 MRI channel, the left atrium; lung: CT, a tumour",
    )
    p.add_argument("--cases", type=int, default=10, help="number of cases")
    p.add_argument("--out", required=True, help="task folder to write (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed and sizes give the same task")
    p.add_argument("--size", type=int, default=48, help="approximate edge length in voxels, varied per case")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="exact shape of every case (default: varied per case around --size)",
    )
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="exact spacing (mm) of every case (default: varied per case, as scans vary)",
    )
    _common(p, config=False)

    p = _command(
        sub,
        "check",
        "validate a dataset folder, reporting every problem in it",
        f"scnas check --dataset data/Task02_Heart --threads 4 --report {_EX}/check.json",
        cmd_check,
    )
    p.add_argument("--dataset", required=True, help=_DATASET_HELP)
    p.add_argument("--threads", type=int, default=1, help="cases read in parallel")
    p.add_argument("--report", help="JSON summary to write when the dataset is valid (default: none)")
    _common(p, config=False)

    p = _command(
        sub,
        "convert",
        "write a dataset in the other format: MSD task to nnU-Net v2 raw dataset, or back",
        "scnas convert data/Task02_Heart nnUNet_raw/Dataset002_Heart --to nnunetv2",
        cmd_convert,
    )
    p.add_argument("source", help="the dataset folder to read (MSD task or nnU-Net v2 raw dataset)")
    p.add_argument("target", help="the dataset folder to write")
    p.add_argument(
        "--to",
        required=True,
        choices=["nnunetv2", "msd"],
        help="format to write: nnunetv2 (one image file per channel, labels by name) or msd (Decathlon)",
    )
    _common(p, config=False)

    p = _command(
        sub,
        "splits",
        "write cross-validation splits (or import nnU-Net's splits_final.json)",
        f"scnas splits --dataset data/Task02_Heart --out {_EX}/splits_final.json",
        cmd_splits,
    )
    p.add_argument("--dataset", required=True, help=_DATASET_HELP)
    p.add_argument("--out", required=True, help="splits_final.json to write (nnU-Net's format)")
    p.add_argument("--folds", type=int, default=5, help="number of folds")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle that deals the cases into folds")
    p.add_argument(
        "--nnunet",
        metavar="SPLITS_JSON",
        help="use this nnU-Net splits_final.json verbatim, once checked against the dataset (default: new splits)",
    )
    _common(p, config=False)

    p = _command(
        sub,
        "preprocess",
        "reorient, crop, resample and normalise every case; plan the patch size",
        f"scnas preprocess --dataset data/Task02_Heart --out {_EX}/preprocessed \\\n"
        "    --config config.yaml --task Task02_Heart",
        cmd_preprocess,
    )
    p.add_argument("--dataset", required=True, help=_DATASET_HELP)
    p.add_argument("--out", required=True, help="preprocessed folder to write (plans.json and the cases' arrays)")
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="target spacing in mm (default: preprocess.spacing of the config, 0.7 mm as in the paper)",
    )
    p.add_argument("--case", action="append", help="only this case; repeat for several (default: every case)")
    p.add_argument("--threads", type=int, help="cases in parallel (default: preprocess.threads of the config)")
    _common(p)

    p = _command(
        sub,
        "random-genotype",
        "draw a random genotype: the control a searched one must beat",
        f"scnas random-genotype --draw 0 --out {_EX}/random_0/genotype.json",
        cmd_random_genotype,
    )
    p.add_argument("--seed", type=int, default=0, help="the study's seed")
    p.add_argument("--draw", type=int, required=True, help="which draw: 0, 1, ... (each a different genotype)")
    p.add_argument("--out", required=True, help="genotype.json to write")
    _common(p, config=False)

    p = _command(
        sub,
        "search",
        "search the cell architecture on one fold's training cases, writing genotype.json",
        f"scnas search {_EX_FOLD}--out {_EX}/search/fold_0 --config config.yaml --task Task02_Heart",
        cmd_search,
    )
    p.add_argument("--preprocessed", required=True, help="the preprocessed folder (from `scnas preprocess`)")
    p.add_argument("--splits", required=True, help="splits_final.json (from `scnas splits`)")
    p.add_argument("--fold", type=int, required=True, help="the fold whose training cases the search uses")
    p.add_argument("--out", required=True, help="search folder to write (genotype.json, alphas, logs)")
    _common(p)
    _heavy(p)

    p = _command(
        sub,
        "train",
        "train a model on one fold: the 3D U-ResNet, or the network of a genotype",
        f"scnas train --model scnas --genotype {_EX}/search/fold_0/genotype.json \\\n    {_EX_FOLD}"
        f"--out {_EX}/scnas/fold_0",
        cmd_train,
    )
    p.add_argument(
        "--model",
        required=True,
        choices=["uresnet", "scnas", "random", "scnas_transfer"],
        help="uresnet: the baseline; the others: the network of --genotype (searched, random or transferred)",
    )
    p.add_argument(
        "--genotype",
        help="genotype.json of the network to train; needed by every model but uresnet (default: none)",
    )
    p.add_argument("--preprocessed", required=True, help="the preprocessed folder (from `scnas preprocess`)")
    p.add_argument("--splits", required=True, help="splits_final.json (from `scnas splits`)")
    p.add_argument("--fold", type=int, required=True, help="the fold to train on (its validation cases are held out)")
    p.add_argument("--out", required=True, help="fold folder to write (checkpoint_final.pt, training log)")
    _common(p)
    _heavy(p)

    p = _command(
        sub,
        "predict",
        "segment NIfTI images with a trained fold, or with the ensemble of a model's folds (mean softmax)",
        f"scnas predict --model {_EX}/uresnet --dataset data/Task02_Heart --test \\\n"
        "    --out predictions/Task02_Heart --save-probabilities\n"
        f"scnas predict --model {_EX}/uresnet/fold_0/checkpoint_final.pt --images scans/ --out seg/",
        cmd_predict,
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="CHECKPOINT_OR_MODEL_DIR",
        help="one fold's checkpoint_final.pt, or a model folder RESULTS/TASK/MODEL: the mean of the softmax "
        "probabilities of its folds' final checkpoints (nnU-Net's ensemble)",
    )
    p.add_argument(
        "--folds",
        type=int,
        nargs="+",
        metavar="K",
        help="with a model folder: ensemble only these folds (default: every fold_K; each must have finished)",
    )
    p.add_argument(
        "--images",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="images to segment: NIfTI files, or folders of them; nnU-Net's CASE_XXXX channel files make one "
        "case CASE (default: none; or --dataset with --test or --splits/--fold)",
    )
    p.add_argument(
        "--dataset",
        help="with --test, or with --splits and --fold: the dataset folder whose cases to segment (default: none)",
    )
    p.add_argument(
        "--test",
        action="store_true",
        help="segment the test images of --dataset: MSD's 'test' list (or imagesTs/), nnU-Net v2's imagesTs/",
    )
    p.add_argument("--splits", help="splits_final.json, with --dataset and --fold (default: none)")
    p.add_argument(
        "--fold",
        type=int,
        help="segment this fold's validation cases with this fold's checkpoint (default: none)",
    )
    p.add_argument("--out", required=True, help="folder to write CASE.nii.gz and predictions.json into")
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write CASE.npz (key 'probabilities': float32 (K, X, Y, Z) on the image's grid, as nnU-Net's "
        "--save_probabilities) and CASE.json (that grid's affine, shape and spacing; the label of each K)",
    )
    _common(p)
    _heavy(p)

    p = _command(
        sub,
        "evaluate",
        "score predictions against the reference labels: per-case Dice and HD95, metrics.csv and summary.json",
        f"scnas evaluate --predictions {_EX}/uresnet/fold_0/predictions --dataset data/Task02_Heart \\\n"
        f"    --splits {_EX}/splits_final.json --fold 0 --out {_EX}/uresnet/fold_0",
        cmd_evaluate,
    )
    p.add_argument("--predictions", required=True, help="folder of CASE.nii.gz predictions (from `scnas predict`)")
    p.add_argument("--dataset", required=True, help="the dataset folder holding the reference labels")
    p.add_argument("--splits", help="splits_final.json, with --fold (default: none)")
    p.add_argument(
        "--fold",
        type=int,
        help="score this fold's validation cases (default: the cases of --cases, else those the predictions "
        "folder's predictions.json lists)",
    )
    p.add_argument("--cases", nargs="+", help="score these cases (default: see --fold)")
    p.add_argument("--out", required=True, help="folder to write metrics.csv and summary.json into")
    p.add_argument("--threads", type=int, default=1, help="cases scored in parallel")
    _common(p)

    p = _command(
        sub,
        "table",
        "write the cross-validation tables (Dice with paired tests, HD95, cost) from the folds' metrics",
        "scnas table --results results --print",
        cmd_table,
    )
    p.add_argument(
        "--results", help="tabulate every RESULTS/TASK/MODEL/fold_K/metrics.csv of this folder (default: none)"
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        metavar="CSV",
        help="tabulate these .../TASK/MODEL/fold_K/metrics.csv files instead (default: none)",
    )
    p.add_argument("--task", action="append", help="only this task; repeat for several (default: every task found)")
    p.add_argument("--model", action="append", help="only this model; repeat for several (default: every model)")
    p.add_argument("--folds", type=int, nargs="+", help="only these folds (default: every fold found)")
    p.add_argument(
        "--out",
        metavar="PREFIX",
        help="write PREFIX.csv, .md, .tex (Dice), PREFIX_hd95.* and PREFIX_cost.csv, .md (default: "
        "RESULTS/cv_table, RESULTS the folder of the metrics)",
    )
    p.add_argument("--print", action="store_true", help="also print the Markdown table")
    _common(p, config=False)

    p = _command(
        sub,
        "export",
        "copy a study's small outputs (tables, genotypes, logs, metrics, figures; no checkpoints) to a folder",
        "scnas export --results results-study --out studies/hippocampus --configs config/hippocampus-study.yaml\n"
        "scnas export --results results-part --out studies/hippocampus \\\n"
        "    --configs config/hippocampus-study.yaml --merge",
        cmd_export,
    )
    p.add_argument("--results", required=True, help="the study's results folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to copy into, in the results layout")
    p.add_argument(
        "--configs", nargs="*", default=[], metavar="YAML", help="config files to keep with them (default: none)"
    )
    p.add_argument("--note", default="", help="a line kept in DIR/STUDY.json, e.g. what this part ran (default: none)")
    p.add_argument(
        "--data-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a data folder the study read, written as DATA_ROOT in the copies; repeat for several (default: none)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="RESULTS is a part of the study in DIR (its folds, run elsewhere with the same settings): add its "
        "folds, keep the others, draw the tables and the figures spanning folds anew",
    )
    _common(p, config=False)

    p = _command(
        sub,
        "plot",
        "draw a study's figures: cell diagrams, search dynamics, curves, overlays",
        f"scnas plot study --results results\nscnas plot genotype {_EX}/search/fold_0/genotype.json --out figures",
    )
    plots = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = _command(
        plots,
        "genotype",
        "draw a genotype's four cells as graphs (SVG and PNG), or two genotypes side by side",
        f"scnas plot genotype {_EX}/search/fold_0/genotype.json \\\n"
        f"    {_EX}/search/fold_1/genotype.json --out figures",
        cmd_plot_genotype,
    )
    q.add_argument("genotype", nargs="+", metavar="GENOTYPE_JSON", help="one genotype.json, or two to compare")
    q.add_argument("--out", required=True, metavar="DIR", help="folder to write NAME.svg and NAME.png into")
    q.add_argument("--name", help="file name without extension (default: cells, or comparison for two)")
    q.add_argument("--titles", nargs="+", help="a title per genotype (default: task and fold, from the path)")
    _common(q, config=False)
    parts = {
        "search": "draw each searched fold's cells and dynamics, the folds' agreement, two genotypes compared",
        "training": "draw the training curves of every trained fold, and of all folds per model",
        "overlays": "draw the best, median and worst validation case of every evaluated fold, per model",
        "summary": "draw Dice box plots, cost per model and the CV table (HTML); without --task the study's table",
    }
    for action, text in parts.items():
        per_task = action != "summary"
        task = " --task Task02_Heart" if per_task else ""
        q = _command(plots, action, text, f"scnas plot {action} --results results{task}", cmd_plot_part)
        q.add_argument("--results", default="results", help="the study's results folder")
        task_help = "the task folder under RESULTS" if per_task else "the task folder under RESULTS (default: none)"
        q.add_argument("--task", required=per_task, help=task_help)
        q.add_argument("--out", metavar="DIR", help="write into DIR/TASK/report/ (default: RESULTS/TASK/report/)")
        if per_task:
            q.add_argument("--folds", type=int, nargs="+", help="only these folds (default: every fold found)")
        if action == "search":
            q.add_argument(
                "--compare",
                nargs=2,
                metavar="GENOTYPE_JSON",
                help="the two genotypes to compare (default: the first fold's and the one transferred to the task, "
                "else the first two folds')",
            )
            q.add_argument("--no-compare", action="store_true", help="draw no comparison")
            q.add_argument("--no-cells", action="store_true", help="leave out what Graphviz draws (no `dot` needed)")
        if action == "training":
            q.add_argument(
                "--runs", nargs="+", metavar="MODEL_DIR", help="only these model folders (default: every one)"
            )
        if action == "overlays":
            q.add_argument("--dataset", help="the task's dataset folder (default: the one check.json records)")
        _common(q, config=False)
    q = _command(
        plots,
        "study",
        "draw every figure a results folder allows, into RESULTS/TASK/report/",
        "scnas plot study --results results --task Task02_Heart",
        cmd_plot_study,
    )
    q.add_argument("--results", default="results", help="the study's results folder")
    q.add_argument("--task", action="append", help="only this task; repeat for several (default: every task)")
    q.add_argument("--out", metavar="DIR", help="write into DIR/TASK/report/ (default: RESULTS/TASK/report/)")
    _common(q, config=False)

    p = _command(
        sub,
        "status",
        "show per task, model and fold: done, running (job, epoch, time left) or failed",
        "scnas status --results results",
        cmd_status,
    )
    p.add_argument("--results", default="results", help="the study's results folder")
    _common(p, config=False)

    p = _command(
        sub,
        "profiles",
        "manage the project's Snakemake profiles (local and slurm)",
        "scnas profiles install\nsnakemake --profile slurm",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = _command(
        actions,
        "install",
        "link the profiles into Snakemake's profile folder, so that `snakemake --profile slurm` finds them",
        "scnas profiles install\nsnakemake --profile local",
        cmd_profiles_install,
    )
    q.add_argument(
        "--force",
        action="store_true",
        help="replace a different profile of the same name (a folder is kept as NAME.bak)",
    )
    _common(q, config=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; every failure is one line `scnas CMD: error: ...`, exit 1 (with -v or SCNAS_DEBUG=1
    the traceback comes first)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    setup_logging(verbose)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except KeyboardInterrupt:
        print(f"scnas {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if verbose or os.environ.get("SCNAS_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        print(f"scnas {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 1
    return 0


def error_line(e: Exception) -> str:
    """The one line the CLI prints for an error: ours as is, an OSError as PATH: CAUSE in words, anything
    else as an unexpected error with the first line of its message."""
    if isinstance(e, ScnasError):
        text = str(e)
    elif isinstance(e, OSError):
        text = describe_os_error(e)
    else:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "(no message)"
        text = f"unexpected {type(e).__name__}: {first} (run with -v for the traceback)"
    return " ".join(text.split("\n"))
