"""nnU-Net v2 as the study's reference: planned, preprocessed, trained and predicted by nnU-Net itself,
on the study's folds, at the study's batch size and number of training iterations.

    nnunet_reference.py prepare --dataset DIR --splits FILE --work DIR --batch-size B [--processes N]
    nnunet_reference.py train --work DIR --fold K --epochs E --iterations I --seed S --out PREDICTIONS

`prepare` converts the task to nnU-Net's raw format (MSD: `scnas convert`; an nnU-Net v2 dataset is
linked), runs nnUNetv2_plan_and_preprocess for 3d_fullres, sets the plan's batch size to the study's and
hands nnU-Net the study's splits (splits_final.json). `train` trains one fold with nnU-Net's trainer for
E epochs of I iterations (nnU-Net's recipe otherwise: SGD 1e-2 with poly decay, its augmentation, deep
supervision), resuming nnU-Net's own checkpoint after a crash, validates it with nnU-Net's predictor
(Gaussian sliding window, mirroring) and copies the predictions, with a predictions.json, into PREDICTIONS,
where `scnas evaluate` scores them like every other model. Needs nnunetv2 (the `study` extra); not part
of the scnas package. Every failure is one line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
VAL_ITERATIONS = 5
"""nnU-Net's per-epoch pseudo-Dice on validation batches is only logged; 5 instead of its 50 saves time."""


class NnunetError(Exception):
    pass


def _env(work: Path, augmentation_processes: int) -> None:
    """nnU-Net reads its folders from the environment when first imported; 0 augmentation processes runs
    its augmentation in the training process (planning needs at least 1)."""
    os.environ.update(
        nnUNet_raw=str(work / "nnUNet_raw"),
        nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
        nnUNet_results=str(work / "nnUNet_results"),
        nnUNet_n_proc_DA=str(augmentation_processes),
        nnUNet_def_n_proc="1",
    )


def _require_nnunet() -> None:
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise NnunetError(
            "nnunetv2 is not installed: pip install -c envs/constraints-cpu.txt -e '.[study]' (the nnU-Net "
            "reference runs only where tasks.TASK.nnunet_folds is set)"
        ) from None


def dataset_name(source: Path) -> str:
    """nnU-Net's DatasetNNN_Name for a task folder: Task04_Hippocampus -> Dataset004_Hippocampus."""
    if re.fullmatch(r"Dataset\d{3}_\w+", source.name):
        return source.name
    match = re.fullmatch(r"Task(\d+)_(\w+)", source.name)
    number, name = (int(match.group(1)), match.group(2)) if match else (999, re.sub(r"\W", "", source.name) or "Task")
    return f"Dataset{number:03d}_{name.replace('_', '')}"


def prepare(dataset: Path, splits: Path, work: Path, batch_size: int, processes: int) -> dict:
    from scnas.data.convert import convert_dataset
    from scnas.data.dataset import NNUNET, parse_dataset

    name = dataset_name(dataset)
    raw = work / "nnUNet_raw" / name
    parsed = parse_dataset(dataset)
    if not raw.exists():
        raw.parent.mkdir(parents=True, exist_ok=True)
        if parsed.format == NNUNET:
            raw.symlink_to(dataset.resolve(), target_is_directory=True)
        else:
            convert_dataset(dataset, raw, "nnunetv2")
    binary = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    number = str(int(name[7:10]))
    command = [str(binary), "-d", number, "-c", CONFIGURATION, "-np", str(processes), "-npfp", str(processes)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise NnunetError(f"nnUNetv2_plan_and_preprocess failed (exit {done.returncode}): {tail[0]}")
    preprocessed = work / "nnUNet_preprocessed" / name
    plans_path = preprocessed / f"{PLANS}.json"
    plans = json.loads(plans_path.read_text())
    planned_batch = plans["configurations"][CONFIGURATION]["batch_size"]
    plans["configurations"][CONFIGURATION]["batch_size"] = batch_size
    plans_path.write_text(json.dumps(plans, indent=2))
    folds = json.loads(splits.read_text())
    cases = set(parsed.case_ids)
    unknown = sorted({c for fold in folds for part in ("train", "val") for c in fold[part]} - cases)
    if unknown:
        raise NnunetError(f"{splits}: case {unknown[0]} is not in {dataset}")
    shutil.copyfile(splits, preprocessed / "splits_final.json")
    configuration = plans["configurations"][CONFIGURATION]
    record = {
        "dataset": name,
        "plans": str(plans_path),
        "patch_size": configuration["patch_size"],
        "spacing": configuration["spacing"],
        "batch_size": batch_size,
        "planned_batch_size": planned_batch,
        "splits": str(splits.resolve()),
    }
    (work / "prepared.json.partial").write_text(json.dumps(record, indent=2))
    os.replace(work / "prepared.json.partial", work / "prepared.json")
    return record


def reference_trainer(epochs: int, iterations: int):
    """nnU-Net's default trainer, for `epochs` epochs of `iterations` training iterations."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainer_budget(nnUNetTrainer):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = VAL_ITERATIONS

    return nnUNetTrainer_budget


def train(work: Path, fold: int, epochs: int, iterations: int, seed: int, out: Path, threads: int) -> dict:
    import random

    import numpy as np
    import torch

    from scnas.fingerprint import Provenance
    from scnas.io import write_json

    prepared = json.loads((work / "prepared.json").read_text())
    name = prepared["dataset"]
    preprocessed = work / "nnUNet_preprocessed" / name
    plans = json.loads(Path(prepared["plans"]).read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    torch.set_num_threads(threads)
    random.seed(seed + fold)
    np.random.seed(seed + fold)
    torch.manual_seed(seed + fold)
    trainer_class = reference_trainer(epochs, iterations)
    folder = work / "nnUNet_results" / name / f"{trainer_class.__name__}__{PLANS}__{CONFIGURATION}" / f"fold_{fold}"
    final, latest = folder / "checkpoint_final.pth", folder / "checkpoint_latest.pth"
    plans["continue_training"] = final.is_file() or latest.is_file()  # nnU-Net >= 2.7 reads it (its logger)
    trainer = trainer_class(plans, CONFIGURATION, fold, dataset_json, torch.device("cpu"))
    if Path(trainer.output_folder) != folder:
        raise NnunetError(f"nnU-Net trains fold {fold} into {trainer.output_folder}, expected {folder}")
    if final.is_file():
        trainer.load_checkpoint(str(final))
    else:
        if latest.is_file():
            trainer.load_checkpoint(str(latest))
        trainer.run_training()
    trainer.perform_actual_validation(save_probabilities=False)
    validation = folder / "validation"
    _, val_cases = trainer.do_split()
    out.mkdir(parents=True, exist_ok=True)
    names = {}
    for case in val_cases:
        source = validation / f"{case}.nii.gz"
        if not source.is_file():
            raise NnunetError(f"{source}: nnU-Net wrote no prediction for case {case}")
        shutil.copyfile(source, out / f"{case}.nii.gz")
        names[case] = f"{case}.nii.gz"
    write_run_records(trainer, prepared, out.parent)
    nnunet_summary = validation / "summary.json"
    mean_dice = json.loads(nnunet_summary.read_text())["foreground_mean"]["Dice"] if nnunet_summary.is_file() else None
    provenance = Provenance.of(
        {
            "stage": "nnunet_reference",
            "dataset": name,
            "fold": fold,
            "seed": seed,
            "epochs": epochs,
            "iterations_per_epoch": iterations,
            "batch_size": plans["configurations"][CONFIGURATION]["batch_size"],
            "splits": prepared["splits"],
        }
    )
    record = {
        "checkpoints": [str(final)],
        "cases": names,
        "nnunet_foreground_mean_dice": mean_dice,
        "provenance": provenance.to_dict(),
    }
    write_json(out / "predictions.json", record)
    return record


def write_run_records(trainer, prepared: dict, fold_dir: Path) -> None:
    """training_log.csv (epoch, nnU-Net's training loss, lr, seconds) and model.json (network size), as the
    study's own trainings write them, for the curves and the cost table."""
    import numpy as np

    from scnas.io import write_json, write_text
    from scnas.models.flops import count_gflops

    log = trainer.logger.get_checkpoint()
    rows = ["epoch,train_loss,lr,seconds"]
    for epoch, (loss, lr, start, end) in enumerate(
        zip(log["train_losses"], log["lrs"], log["epoch_start_timestamps"], log["epoch_end_timestamps"]), start=1
    ):
        rows.append(f"{epoch},{float(loss):.6f},{float(lr):.6g},{end - start:.2f}")
    write_text(fold_dir / "training_log.csv", "\n".join(rows) + "\n")
    network = trainer.network
    channels = len(trainer.dataset_json["channel_names"])
    features = trainer.configuration_manager.network_arch_init_kwargs.get("features_per_stage") or [None]
    write_json(
        fold_dir / "model.json",
        {
            "model": "nnunet",
            "spec": {
                "arch": "nnunet",
                "network": trainer.configuration_manager.network_arch_class_name,
                "base_channels": features[0],
                "features_per_stage": list(features),
            },
            "gflops": count_gflops(network, (channels, *prepared["patch_size"])),
            "parameters": int(sum(np.prod(p.shape) for p in network.parameters())),
            "patch_size": list(prepared["patch_size"]),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--splits", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--processes", type=int, default=1)
    t = sub.add_parser("train")
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--fold", type=int, required=True)
    t.add_argument("--epochs", type=int, required=True)
    t.add_argument("--iterations", type=int, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    work = args.work.resolve()
    _env(work, 1 if args.command == "prepare" else 0)
    try:
        _require_nnunet()
        if args.command == "prepare":
            record = prepare(args.dataset, args.splits, work, args.batch_size, args.processes)
        else:
            record = train(work, args.fold, args.epochs, args.iterations, args.seed, args.out, args.threads)
            record = {k: record[k] for k in ("nnunet_foreground_mean_dice",)}
    except Exception as e:  # noqa: BLE001 - one line for the log's last line, whatever failed
        from scnas.errors import ScnasError

        known = isinstance(e, (NnunetError, ScnasError))
        if not known and not isinstance(e, OSError):
            traceback.print_exc()
        print(f"nnunet_reference: error: {e if known else f'{type(e).__name__}: {e}'}", file=sys.stderr)
        return 1
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
