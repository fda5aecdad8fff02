"""`scnas export`: a study's small outputs copied in the results layout, nothing heavy; searches.md figures."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, REPO, cli_env

from scnas.evaluation.searches import agreement, decided_edges, operation_counts, search_report
from scnas.nas.genotype import Genotype, random_genotype, save_genotype


def _changed(genotype: Genotype, edges: int) -> Genotype:
    """`genotype` with the first `edges` edges of its encoder cell set to an operation they do not have."""
    cells = {t: list(e) for t, e in genotype.cells.items()}
    for k in range(edges):
        i, j, op = cells["encoder_normal"][k]
        cells["encoder_normal"][k] = (i, j, "conv3" if op != "conv3" else "identity")
    return Genotype(cells={t: tuple(e) for t, e in cells.items()}, num_nodes=genotype.num_nodes)


def test_agreement_counts_shared_edges_by_hand():
    a = random_genotype(0, 0)
    assert agreement([a, a]) == (1.0, 1.0)
    b, c = _changed(a, 7), _changed(a, 14)
    pairwise, unanimous = agreement([a, b, c])
    # a-b share 49 of 56 edges, a-c 42, b-c 49 (edges 0..6 changed alike in both, 7..13 only in c)
    assert pairwise == pytest.approx((49 + 42 + 49) / 3 / 56)
    assert unanimous == pytest.approx(42 / 56)


def test_decided_edges_and_operation_counts_by_hand():
    probs = {
        "encoder_normal": [[0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]],  # margins 0.1, 0.1, 0.85
        "reduction": [[0.34, 0.33, 0.33]],
    }
    assert decided_edges(probs) == 3 and decided_edges(probs, margin=0.2) == 1
    a = random_genotype(0, 0)
    b = _changed(a, 14)  # every encoder edge made conv3 (or identity where it was conv3)
    counts, mean = operation_counts([a]), operation_counts([a, b])
    assert sum(counts.values()) == 56 and sum(mean.values()) == pytest.approx(56)
    was_conv = sum(op == "conv3" for op in a.edge_ops["encoder_normal"].values())
    assert mean["conv3"] == pytest.approx(counts["conv3"] + (14 - 2 * was_conv) / 2)


def _study(root: Path) -> Path:
    task = root / "results" / "T"
    fold = task / "uresnet" / "fold_0"
    (fold / "predictions").mkdir(parents=True)
    for name, text in {
        "metrics.csv": "case,label,dice\n",
        "summary.json": "{}",
        "model.json": "{}",
        "training_log.csv": "epoch,train_loss,lr,seconds\n",
        "checkpoint_final.pt": "weights",
        "predictions/predictions.json": "{}",
        "predictions/c1.nii.gz": "image",
    }.items():
        (fold / name).write_text(text)
    (task / "preprocessed").mkdir()
    (task / "preprocessed" / "plans.json").write_text("{}")
    (task / "preprocessed" / "c1.npz").write_text("data")
    (task / "report" / "training").mkdir(parents=True)
    (task / "report" / "training" / "uresnet_fold_0.png").write_bytes(b"png")
    (task / "logs").mkdir()
    (task / "logs" / "train_uresnet_fold_0.log").write_text(f"wrote {task.resolve()}/uresnet/fold_0/metrics.csv\n")
    (task / "check.json").write_text(json.dumps({"dataset": str(root / "data" / "T")}))
    (task / "cv_table.md").write_text("| |")
    genotypes = [random_genotype(0, 0), _changed(random_genotype(0, 0), 14)]
    for k, genotype in enumerate(genotypes):
        search = task / "search" / f"fold_{k}"
        search.mkdir(parents=True)
        save_genotype(search / "genotype.json", genotype)
        final = {c: {"entropy": 1.0 + k, "max_prob": 0.5, "argmax_changes": 0} for c in genotype.cells}
        summary = {
            "epochs": 20,
            "weight_steps": 500,
            "alpha_steps": 500,
            "final": final,
            "genotype_stable_since_epoch": 15,
            "converged": k == 0,
            "mean_max_prob": 0.5,
        }
        (search / "search_summary.json").write_text(json.dumps(summary))
        (search / "search_log.csv").write_text("epoch,seconds\n1,2\n")
        (search / "checkpoint_latest.pt").write_text("state")
    (root / "study.yaml").write_text("seed: 0\n")
    return root / "results"


def test_export_copies_the_small_outputs_only(tmp_path):
    results = _study(tmp_path)
    out = tmp_path / "studies" / "t"
    done = subprocess.run(
        [
            str(BIN / "scnas"),
            "export",
            "--results",
            str(results),
            "--out",
            str(out),
            "--configs",
            str(tmp_path / "study.yaml"),
            "--note",
            "fold 0",
            "--data-root",
            str(tmp_path / "data"),
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert copied == [
        "STUDY.json",
        "T/check.json",
        "T/cv_table.md",
        "T/logs/train_uresnet_fold_0.log",
        "T/preprocessed/plans.json",
        "T/report/training/uresnet_fold_0.png",
        "T/search/fold_0/genotype.json",
        "T/search/fold_0/search_log.csv",
        "T/search/fold_0/search_summary.json",
        "T/search/fold_1/genotype.json",
        "T/search/fold_1/search_log.csv",
        "T/search/fold_1/search_summary.json",
        "T/searches.md",
        "T/uresnet/fold_0/metrics.csv",
        "T/uresnet/fold_0/model.json",
        "T/uresnet/fold_0/predictions/predictions.json",
        "T/uresnet/fold_0/summary.json",
        "T/uresnet/fold_0/training_log.csv",
        "config/study.yaml",
    ]
    study = json.loads((out / "STUDY.json").read_text())
    assert study["note"] == "fold 0" and study["configs"] == ["study.yaml"] and study["results"] == "results"
    # no path of the machine that ran it: the results folder by its name, the data under DATA_ROOT
    assert json.loads((out / "T" / "check.json").read_text()) == {"dataset": "DATA_ROOT/T"}
    assert (
        out / "T" / "logs" / "train_uresnet_fold_0.log"
    ).read_text() == "wrote results/T/uresnet/fold_0/metrics.csv\n"
    assert not any(str(tmp_path) in p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert study["code"]["commit"] == head
    report = (out / "T" / "searches.md").read_text()
    assert "| 0 | 20 | 500 / 500 | yes | 15 | 1.000 |" in report and "| 1 | 20 | 500 / 500 | NO |" in report
    assert "75.0 % of the 56 edges share their operation" in report
    assert "| Operation | fold 0 | fold 1 |" in report and "| 0 | 20 | 500 / 500 | yes | 15 | 1.000 | 0.500 (" in report
    (results / "T" / "logs" / "train_uresnet_fold_0.log").unlink()  # a rerun that no longer writes it
    again = subprocess.run(
        [str(BIN / "scnas"), "export", "--results", str(results), "--out", str(out), "--note", "fold 1"],
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0
    study = json.loads((out / "STUDY.json").read_text())
    assert study["note"] == "fold 1" and [e["note"] for e in study["earlier_exports"]] == ["fold 0"]
    assert not (out / "T" / "logs").exists() and (out / "T" / "cv_table.md").is_file()
    assert (out / "config" / "study.yaml").is_file()  # outside the task folders: kept


def test_the_code_state_leaves_the_exports_own_folder_out(tmp_path):
    from scnas.report.export import git_state

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "STUDY.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    (tmp_path / "studies" / "STUDY.json").write_text('{"new": 1}')
    assert git_state(tmp_path, exclude=tmp_path / "studies")["modified"] is False
    assert git_state(tmp_path)["modified"] is True
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path, exclude=tmp_path / "studies")["modified"] is True


def test_export_refuses_what_it_cannot_use_in_one_line(tmp_path):
    for args, message in (
        (["--results", str(tmp_path / "none")], "results folder not found"),
        (["--results", str(tmp_path), "--configs", str(tmp_path / "x.yaml")], "config file not found"),
        (["--results", str(tmp_path)], "nothing to export"),
    ):
        done = subprocess.run(
            [str(BIN / "scnas"), "export", *args, "--out", str(tmp_path / "out")],
            env=cli_env(),
            capture_output=True,
            text=True,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1 and message in lines[0], done.stderr
    assert search_report(tmp_path) == ""
