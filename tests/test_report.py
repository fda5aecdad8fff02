"""The figures and the report, drawn from a small real study built here: a 4-channel, 3-label synthetic
brain task, searched and trained for two epochs on two folds, predicted and evaluated."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BIN, NO_AUG, REPO, cli_env
from PIL import Image

from scnas.cli import main
from scnas.config import task_settings
from scnas.errors import ScnasError
from scnas.layout import Layout
from scnas.nas.cells import CELL_TYPES, cell_edges
from scnas.nas.genotype import Genotype, load_genotype, random_genotype
from scnas.nas.operations import OPERATIONS
from scnas.report.cells import PNG_DPI, genotype_graph
from scnas.report.dot import DOT_MISSING
from scnas.report.figures import Figures
from scnas.report.style import DPI

TASK = "Brain"
FOLDS = (0, 1)
RUNS = ("uresnet", "scnas", "random_0", "random_1")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason=DOT_MISSING)


def _settings():
    small = {"batch_size": 2, "iterations_per_epoch": 2, "amp": False, "augmentation": NO_AUG}
    return task_settings(
        {
            "preprocess": {"spacing": [2.0, 2.0, 2.0]},
            "plan": {"patch_size": [16, 16, 16]},
            "search": {**small, "epochs": 3, "stem_channels": 4},
            "train": {**small, "max_epochs": 2, "uresnet_channels": 4, "scnas_stem_channels": 4, "val_dice_every": 1},
            "inference": {"mirror": False},
        }
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """RESULTS/Brain as the stages lay it out: check.json, splits, search of folds 0-1, four model folders
    (U-ResNet, SCNAS, two random draws) trained, predicted and evaluated on folds 0-1, and the CV tables."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: a second thread only waits, and under load it costs 20x
    try:
        return _build_study(tmp_path_factory.mktemp("report"))
    finally:
        torch.set_num_threads(threads)


def _build_study(root: Path) -> Path:
    from scnas.data.dataset import parse_dataset
    from scnas.data.preprocess import preprocess_dataset
    from scnas.data.splits import fold_cases, make_splits, write_splits
    from scnas.data.synthetic import make_synthetic_task
    from scnas.evaluation.metrics import evaluate_cases
    from scnas.evaluation.study import find_metrics, write_study_tables
    from scnas.inference.predict import predict_files
    from scnas.io import write_json
    from scnas.nas.genotype import save_genotype
    from scnas.train.search import SearchRequest, search
    from scnas.train.training import TrainRequest, train

    results = root / "results"
    layout = Layout(str(results))
    raw = make_synthetic_task("brain", root / "raw", cases=6, seed=4, size=24)
    dataset = parse_dataset(raw)
    settings = _settings()
    write_json(layout.check(TASK), {"dataset": str(raw), "labels": {str(k): v for k, v in dataset.labels.items()}})
    splits = make_splits(dataset.case_ids, 3, 0)
    write_splits(layout.splits(TASK), splits)
    pre = Path(layout.preprocessed(TASK))
    preprocess_dataset(dataset, settings.preprocess, settings.plan, pre, progress=False)
    for draw in (0, 1):
        save_genotype(layout.random_genotype(TASK, draw), random_genotype(0, draw))
    for fold in FOLDS:
        search(SearchRequest(pre, Path(layout.splits(TASK)), fold, Path(layout.search(TASK, fold)), settings, TASK))
        _, val = fold_cases(splits, fold, "splits")
        for run in RUNS:
            genotype = {"uresnet": None, "scnas": layout.genotype(TASK, fold)}.get(run)
            if run.startswith("random"):
                genotype = layout.random_genotype(TASK, run[-1])
            model = "random" if run.startswith("random") else run
            folder = Path(layout.fold(TASK, run, fold))
            train(
                TrainRequest(
                    pre, Path(layout.splits(TASK)), fold, folder, model, settings, Path(genotype) if genotype else None
                )
            )
            images = [dataset.case(c).image for c in val]
            predict_files(
                layout.checkpoint(TASK, run, fold), images, layout.predictions(TASK, run, fold), settings.inference
            )
            pairs = [(c, folder / "predictions" / f"{c}.nii.gz", dataset.case(c).label) for c in val]
            evaluate_cases(pairs, dataset.labels, folder)
    found = find_metrics(results)
    write_study_tables({k: v for k, v in found.items() if k[0] == TASK}, Path(layout.cv_table(TASK)))
    write_study_tables(found, Path(layout.cv_table()))
    return results


def assert_figure(path: str | Path, size: tuple[int, int] | None = None) -> Image.Image:
    """A valid PNG (of `size` pixels when given) that is not blank: many colours, not one flat tone."""
    image = Image.open(path)
    image.verify()
    image = Image.open(path)
    assert image.format == "PNG"
    if size is not None:
        assert image.size == size, (path, image.size, size)
    rgb = image.convert("RGB")
    assert np.asarray(rgb, dtype=np.float32).std() > 10, f"{path} looks blank"
    assert len(rgb.getcolors(maxcolors=1 << 24)) > 20, f"{path} has almost no colours"
    return image


def inches(width: float, height: float) -> tuple[int, int]:
    return round(width * DPI), round(height * DPI)


@pytest.fixture(scope="module")
def drawn(study, tmp_path_factory) -> Figures:
    """Every figure of the study, drawn once by `scnas plot study` into a folder of its own."""
    out = tmp_path_factory.mktemp("figures")
    assert main(["plot", "study", "--results", str(study), "--out", str(out)]) == 0
    return Figures(str(out))


# ---------------------------------------------------------------------------------------------- cells


def _hand_genotype() -> Genotype:
    """Encoder normal: node 0 fed by identity and conv3, every other edge zero; the other cells random."""
    base = random_genotype(7, 0)
    cells = dict(base.cells)
    ops = {(0, 2): "identity", (1, 2): "conv3"}
    cells["encoder_normal"] = tuple((i, j, ops.get((i, j), "zero")) for i, j in cell_edges())
    return Genotype(cells=cells)


def _drawn_edges(source: str) -> set[tuple[str, str, int, int, str]]:
    return {
        (m.group(1), m.group(2), int(m.group(3)), int(m.group(4)), m.group(5))
        for m in re.finditer(r'id="(\w):(\w+):(\d+)-(\d+):(\w+)"', source)
    }


def test_the_cell_diagram_holds_exactly_the_non_zero_edges():
    genotype = _hand_genotype()
    source = genotype_graph([genotype], [""]).source
    expected = {("a", cell, i, j, op) for cell in CELL_TYPES for i, j, op in genotype.cells[cell] if op != "zero"}
    assert _drawn_edges(source) == expected
    encoder = {e for e in _drawn_edges(source) if e[1] == "encoder_normal"}
    assert encoder == {("a", "encoder_normal", 0, 2, "identity"), ("a", "encoder_normal", 1, 2, "conv3")}
    # nodes 1-3 of the encoder cell have no input left and are drawn dashed; node 0 is fed
    assert re.search(r"a_encoder_normal_2 \[[^]]*style=filled", source)
    for node in (3, 4, 5):
        assert re.search(rf"a_encoder_normal_{node} \[[^]]*style=dashed", source)
    # every intermediate node feeds the concatenated output
    assert len(re.findall(r"a_\w+_[2-5] -> a_\w+_out", source)) == 4 * len(CELL_TYPES)


def test_two_genotypes_side_by_side_mark_the_edges_they_share():
    a, b = _hand_genotype(), random_genotype(7, 1)
    source = genotype_graph([a, b], ["A", "B"]).source
    drawn = _drawn_edges(source)
    for prefix, mine, other in (("a", a, b), ("b", b, a)):
        for cell in CELL_TYPES:
            for i, j, op in mine.cells[cell]:
                if op == "zero":
                    assert (prefix, cell, i, j, op) not in drawn
                    continue
                line = next(x for x in source.splitlines() if f'id="{prefix}:{cell}:{i}-{j}:{op}"' in x)
                shared = other.edge_ops[cell][i, j] == op
                assert ("penwidth=4" in line) == shared and ("style=dashed" in line) == (not shared), line


@needs_dot
def test_cell_diagrams_render_as_svg_and_png_of_the_svg_size(study, drawn, tmp_path):
    genotype = study / TASK / "search" / "fold_0" / "genotype.json"
    svg = html.unescape(Path(drawn.cells(TASK, 0, "svg")).read_text())
    kept = {(c, i, j, op) for c in CELL_TYPES for i, j, op in load_genotype(genotype).cells[c] if op != "zero"}
    assert {e[1:] for e in _drawn_edges(svg)} == kept
    width_pt, height_pt = (float(v) for v in re.search(r'width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups())
    image = assert_figure(drawn.cells(TASK, 0))
    assert abs(image.size[0] - width_pt * PNG_DPI / 72) <= 2 and abs(image.size[1] - height_pt * PNG_DPI / 72) <= 2
    assert_figure(drawn.comparison(TASK))

    other = study / TASK / "search" / "fold_1" / "genotype.json"
    assert main(["plot", "genotype", str(genotype), str(other), "--out", str(tmp_path), "--name", "pair"]) == 0
    assert "Brain fold 0 vs Brain fold 1" in html.unescape((tmp_path / "pair.svg").read_text())
    assert_figure(tmp_path / "pair.png")


# ---------------------------------------------------------------------------------------------- search


def test_search_figures(study, drawn):
    from scnas.report.search import win_counts

    search_dir = study / TASK / "search"
    for k in FOLDS:
        assert_figure(drawn.dynamics(TASK, k), inches(4.2 * 4, 12.5))
    assert_figure(drawn.agreement(TASK), inches(4.2 * 4, 6.6))

    genotypes = [load_genotype(search_dir / f"fold_{k}" / "genotype.json") for k in FOLDS]
    counts = win_counts(genotypes)
    for cell in CELL_TYPES:
        reference = np.zeros((14, len(OPERATIONS)), int)
        for g in genotypes:
            for row, (i, j) in enumerate(cell_edges()):
                reference[row, OPERATIONS.index(g.edge_ops[cell][i, j])] += 1
        np.testing.assert_array_equal(counts[cell], reference)
    same = win_counts([genotypes[0], genotypes[0], genotypes[0]])
    assert all((table.max(1) == 3).all() for table in same.values())


def test_a_decaying_alpha_lr_is_drawn_beside_the_temperature(study, tmp_path, monkeypatch):
    from scnas.report import search as figure

    folder = tmp_path / "fold_0"
    shutil.copytree(study / TASK / "search" / "fold_0", folder)
    log = pd.read_csv(folder / "search_log.csv")
    drawn_lrs = []

    def keep(fig, out):
        drawn_lrs.extend(ax.lines[0].get_ydata().tolist() for ax in fig.axes if "learning rate" in ax.get_ylabel())
        return str(out)

    monkeypatch.setattr(figure.style, "save_png", keep)
    figure.plot_search(folder, tmp_path / "constant.png", OPERATIONS)
    assert drawn_lrs == []  # a constant alpha lr is not worth an axis
    log["alpha_lr"] = [0.05 * 0.5**e for e in range(len(log))]
    log.to_csv(folder / "search_log.csv", index=False)
    figure.plot_search(folder, tmp_path / "decayed.png", OPERATIONS)
    assert drawn_lrs == [log["alpha_lr"].tolist()]


def test_a_damaged_alpha_history_is_one_line_naming_the_file(study, tmp_path):
    from scnas.report.search import plot_search

    folder = tmp_path / "fold_0"
    shutil.copytree(study / TASK / "search" / "fold_0", folder)
    history = json.loads((folder / "alpha_history.json").read_text())
    history[1]["softmax_alpha"]["reduction"][3][0] += 0.5
    (folder / "alpha_history.json").write_text(json.dumps(history))
    with pytest.raises(
        ScnasError, match=r"alpha_history.json: epoch entry #1: softmax_alpha\['reduction'\] row 3 sums"
    ):
        plot_search(folder, tmp_path / "x.png", OPERATIONS)
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------- training


def test_training_curves(drawn):
    for run in RUNS:
        for k in FOLDS:
            assert_figure(drawn.training(TASK, run, k), inches(8, 7.5))
    assert_figure(drawn.training_task(TASK), inches(5.2 * 3, 3.8 * 2 + 0.8))


# ---------------------------------------------------------------------------------------------- overlays


def test_overlays_pick_best_median_worst_and_slice_the_largest_lesion():
    from scnas.report.overlays import lesion_slices, pick_cases

    reference = np.zeros((20, 16, 12), np.int16)
    reference[2:4, 2:4, 2:4] = 1  # small lesion
    reference[10:15, 6:9, 7:9] = 2  # the largest: 5 x 3 x 2 voxels
    reference[12, 7, 6] = 3  # touching it: one lesion of several labels
    x, y, z = lesion_slices(reference)
    assert 10 <= x < 15 and 6 <= y < 9 and z in (7, 8)
    assert lesion_slices(np.zeros((6, 8, 10), np.int16)) == (3, 4, 5)

    metrics = {
        "uresnet": pd.DataFrame({"case": ["a", "a", "b", "b", "c", "c"], "dice": [0.9, 0.7, 0.2, np.nan, 0.5, 0.5]}),
        "scnas": pd.DataFrame({"case": ["a", "a", "b", "b", "c", "c"], "dice": [0.8, 0.8, 0.4, 0.4, 0.6, 0.6]}),
    }
    assert pick_cases(metrics) == [("best", "a"), ("median", "c"), ("worst", "b")]
    assert pick_cases({"m": pd.DataFrame({"case": ["a", "b"], "dice": [0.1, 0.9]})}) == [("best", "b"), ("worst", "a")]


def test_volumes_are_shown_in_their_own_grid_turned_to_ras(tmp_path):
    from scnas.report.overlays import _canonical

    affine = np.array([[0, 0, -2.0, 10], [-1.5, 0, 0, 5], [0, 3.0, 0, -7], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    image = rng.random((2, 5, 6, 7)).astype(np.float32)
    label = rng.integers(0, 3, (5, 6, 7)).astype(np.int16)
    (turned_image, turned_label), spacing = _canonical([image, label], affine)
    reference = nib.as_closest_canonical(nib.Nifti1Image(np.moveaxis(image, 0, -1), affine))
    np.testing.assert_array_equal(np.moveaxis(turned_image, 0, -1), np.asarray(reference.dataobj))
    np.testing.assert_array_equal(
        turned_label, np.asarray(nib.as_closest_canonical(nib.Nifti1Image(label, affine)).dataobj)
    )
    assert spacing == tuple(float(s) for s in reference.header.get_zooms()[:3])


def test_overlay_figure_of_a_fold(study, drawn, tmp_path):
    from scnas.report.overlays import PANEL_IN, plot_overlays

    # 4 channels + reference + U-ResNet, SCNAS and one random draw; 2 validation cases x 3 orientations
    for k in FOLDS:
        assert_figure(drawn.overlays(TASK, k), inches(PANEL_IN * 8, PANEL_IN * 6 + 0.9))
    with pytest.raises(ScnasError, match="no model has an evaluated fold 2"):
        plot_overlays(study / TASK, 2, tmp_path / "fold_2.png")


# ---------------------------------------------------------------------------------------------- summary


def test_costs_come_from_the_stage_outputs(study):
    from scnas.models.factory import build_model
    from scnas.report.summary import task_costs

    costs = task_costs(study / TASK)
    assert list(costs) == ["uresnet", "scnas", "random"]
    for run, model in (("uresnet", "uresnet"), ("scnas", "scnas"), ("random_1", "random")):
        folder = study / TASK / run / "fold_1"
        spec = json.loads((folder / "model.json").read_text())["spec"]
        trainable = sum(p.numel() for p in build_model(spec).parameters())
        assert trainable in costs[model].params
        seconds = pd.read_csv(folder / "training_log.csv")["seconds"].sum()
        assert any(abs(s - seconds) < 1e-9 for s in costs[model].train_s)
    assert len(costs["random"].params) == 2 and len(costs["random"].train_s) == 4
    searched = [pd.read_csv(study / TASK / "search" / f"fold_{k}" / "search_log.csv")["seconds"].sum() for k in FOLDS]
    assert costs["scnas"].search_s == pytest.approx(searched) and costs["uresnet"].search_s == []


def test_summary_figures_and_tables(study, drawn):
    # three labels and their mean; three models (the random draws pooled)
    assert_figure(drawn.dice(TASK), inches(max(3.2, 0.9 * 3 + 1.4) * 4, 4.6))
    assert_figure(drawn.costs(TASK), inches(max(3.4, 0.85 * 3 + 1.2) * 4, 4.4))
    for page, table in ((drawn.table(TASK), study / TASK / "cv_table.md"), (drawn.table(), study / "cv_table.md")):
        text = html.unescape(Path(page).read_text())
        for line in table.read_text().splitlines():
            if line.startswith("|"):
                cells = [c.strip() for c in line.strip("|").split("|")]
                assert set(cells) == {"---"} or all(f">{c}<" in text for c in cells), line
            elif line.strip():
                assert line.strip() in text


# ---------------------------------------------------------------------------------------------- CLI


def test_plot_study_draws_every_figure_the_results_allow(study, drawn):
    written = sorted(str(p) for p in Path(drawn.root).rglob("*.*"))
    expected = [drawn.dynamics(TASK, k) for k in FOLDS] + [drawn.agreement(TASK)]
    expected += [drawn.training(TASK, r, k) for r in RUNS for k in FOLDS] + [drawn.training_task(TASK)]
    expected += [drawn.overlays(TASK, k) for k in FOLDS] + [drawn.dice(TASK), drawn.costs(TASK)]
    expected += [drawn.table(TASK), drawn.table()]
    if shutil.which("dot"):
        expected += [drawn.cells(TASK, k, ext) for k in FOLDS for ext in ("png", "svg")]
        expected += [drawn.comparison(TASK, ext) for ext in ("png", "svg")]
    assert written == sorted(expected)
    assert not list(study.glob(f"{TASK}/report")), "--out leaves the results folder alone"


def test_the_snakemake_report_embeds_every_figure(study, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(study, results)  # keeping the times: the stages' outputs stay newer than their inputs
    config = {
        "data_root": str(study.parent),
        "results": str(results),
        "run_tasks": [TASK],
        "num_folds": 3,
        "folds": list(FOLDS),
        "models": ["uresnet", "scnas", "random"],
        "random_draws": 2,
        "tasks": {TASK: {"dataset": "raw"}},
        "transfer": {"source_task": None, "targets": []},
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(config))
    # the stages ran outside Snakemake here: only missing outputs (the figures) are made
    args = ["--cores", "2", "--configfile", str(path), "--rerun-triggers", "mtime"]
    run = lambda *extra: subprocess.run(  # noqa: E731
        [str(BIN / "snakemake"), *args, *extra], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600
    )
    done = run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(re.findall(r"rule (report_\w+):", done.stdout + done.stderr)) == {
        f"report_{part}_{TASK}" for part in ("search", "training", "overlays", "summary")
    } | {"report_table"}
    report = tmp_path / "report.html"
    made = run("--report", str(report))
    assert made.returncode == 0, made.stdout + made.stderr
    page = report.read_text()
    embedded = json.loads(re.search(r"var results = (\{.*?\});\s*\n", page, re.S).group(1))
    figures = Figures(str(results))
    expected = [figures.dynamics(TASK, k) for k in FOLDS] + [figures.agreement(TASK)]
    expected += [figures.training(TASK, r, k) for r in RUNS for k in FOLDS] + [figures.training_task(TASK)]
    expected += [figures.overlays(TASK, k) for k in FOLDS] + [figures.dice(TASK), figures.costs(TASK)]
    if shutil.which("dot"):
        expected += [figures.cells(TASK, k) for k in FOLDS] + [figures.comparison(TASK)]
    assert sorted(embedded) == sorted(expected + [figures.table(TASK), figures.table()])
    for path, item in embedded.items():
        kind = "text/html" if path.endswith(".html") else "image/png"
        assert item["mime_type"] == kind and item["data_uri"].startswith(f"data:{kind}"), path
        assert item["caption"].strip() and set(item["labels"]) == {"figure", "model", "fold"}
    categories = json.loads(re.search(r"var categories = (\{.*?\});", page, re.S).group(1))
    assert set(categories[TASK]) == {"Search", "Training", "Segmentation overlays", "Summary"}
    assert categories["Study"] == {"Tables": [figures.table()]}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plot", "genotype", "nope.json", "--out", "x"], "nope.json: genotype file not found"),
        (["plot", "genotype", "a.json", "b.json", "c.json", "--out", "x"], "give one genotype, or two"),
        (["plot", "training", "--results", "nowhere", "--task", "T"], "nowhere: results folder not found"),
        (["plot", "search", "--results", "{study}", "--task", "Nope"], "Nope: no results for task 'Nope'"),
        (["plot", "search", "--results", "{study}", "--task", TASK, "--folds", "2"], "fold_2/genotype.json: not found"),
        (["plot", "overlays", "--results", "{study}", "--task", TASK, "--dataset", "{study}"], "dataset.json"),
        (["status", "--results", "nowhere"], "nowhere: results folder not found"),
    ],
)
def test_bad_input_is_one_line(study, tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{study}", str(study)) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"scnas {argv[0]}: error: ") and message in err[0], err


def test_without_graphviz_the_diagram_says_how_to_install_it(study, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    genotype = study / TASK / "search" / "fold_0" / "genotype.json"
    assert main(["plot", "genotype", str(genotype), "--out", str(tmp_path / "figs")]) == 1
    assert capsys.readouterr().err.strip() == f"scnas plot: error: {DOT_MISSING}"
    assert main(["plot", "search", "--results", str(study), "--task", TASK, "--no-cells", "--out", str(tmp_path)]) == 0
    assert not list(tmp_path.rglob("cells.*")) and list(tmp_path.rglob("dynamics.png"))


def test_status_of_a_finished_study_is_fast_and_imports_no_torch(study):
    code = (
        "import sys; from scnas.cli import main; rc = main(['status', '--results', sys.argv[1]]);"
        " heavy = [m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules];"
        " print('HEAVY', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(study)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    grid = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.startswith("  ")}
    assert grid["search"] == ["done", "done"] and all(grid[r] == ["done", "done"] for r in RUNS)
    assert f"{len(FOLDS) * (len(RUNS) + 1)} done" in out.stdout


# ---------------------------------------------------------------------------------------------- export


def _part(study: Path, root: Path, fold: int) -> Path:
    """The study as if only `fold` had run (in a results folder of its own), with its own tables."""
    from scnas.evaluation.study import find_metrics, write_study_tables

    part = root / f"results-fold{fold}"
    shutil.copytree(study, part)
    for other in {k for k in FOLDS if k != fold}:
        for path in sorted(part.rglob(f"*fold_{other}*"), reverse=True):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    layout = Layout(str(part))
    write_study_tables(find_metrics(part), Path(layout.cv_table(TASK)))
    write_study_tables(find_metrics(part), Path(layout.cv_table()))
    return part


def test_a_study_run_in_parts_merges_into_the_export_of_the_whole(study, tmp_path, monkeypatch):
    from scnas.report.export import export_study

    whole, merged = tmp_path / "whole", tmp_path / "merged"
    export_study(study, whole, [])
    config = tmp_path / "study.yaml"
    config.write_text("seed: 0\n")
    export_study(_part(study, tmp_path, 0), merged, [config], note="fold 0")
    assert not (merged / TASK / "search" / "fold_1").exists()
    (merged / TASK / "uresnet" / "fold_1" / "old.log").parent.mkdir(parents=True)
    (merged / TASK / "uresnet" / "fold_1" / "old.log").write_text("an earlier export of fold 1")
    second = _part(study, tmp_path, 1)
    (second / "report").mkdir()
    (second / "report" / "cv_table.html").write_text("<p>the part's own study table</p>")  # not task folders
    (second / "logs").mkdir()
    (second / "logs" / "cv_table.log").write_text("the part's study table's log")
    export_study(second, merged, [config], note="fold 1", merge=True)
    # the tables of the two parts together are those of the whole study, to the byte
    tables = sorted(p.name for p in (whole / TASK).glob("cv_table*"))
    assert len(tables) == 8 and tables == sorted(p.name for p in (merged / TASK).glob("cv_table*"))
    for name in tables:
        assert (merged / TASK / name).read_text() == (whole / TASK / name).read_text(), name
        assert (merged / name).read_text() == (whole / name).read_text(), name
    for k in FOLDS:
        for run in RUNS:
            assert (merged / TASK / run / f"fold_{k}" / "metrics.csv").read_bytes() == (
                study / TASK / run / f"fold_{k}" / "metrics.csv"
            ).read_bytes()
    assert not (merged / TASK / "uresnet" / "fold_1" / "old.log").exists()
    assert (merged / TASK / "searches.md").read_text() == (whole / TASK / "searches.md").read_text()
    # figures spanning the folds drawn from the small outputs; nothing an export leaves out
    figures = Figures(str(merged))
    for path in [figures.agreement(TASK), figures.training_task(TASK), figures.dice(TASK), figures.costs(TASK)]:
        assert_figure(path)
    assert all(Path(figures.training(TASK, r, k)).is_file() for r in RUNS for k in FOLDS)
    assert not list(merged.rglob("*.svg")) and [p.relative_to(merged) for p in merged.rglob("*.html")] == [
        Path("report/cv_table.html")  # the study's table, as a plain export copies it
    ]
    record = json.loads((merged / "STUDY.json").read_text())
    assert record["folds"] == [1] and record["merged"] is True
    assert [(e["note"], e["folds"]) for e in record["earlier_exports"]] == [("fold 0", [0])]
    # a part from other settings (its splits differ) is refused in one line, before anything is written
    (second / TASK / "splits_final.json").write_text("[]")
    before = {p: p.read_bytes() for p in merged.rglob("*") if p.is_file()}
    with pytest.raises(ScnasError, match=r"splits_final.json: differs from the study's .*cannot join it"):
        export_study(second, merged, [config], merge=True)
    config.write_text("seed: 1\n")
    with pytest.raises(ScnasError, match=r"study.yaml: differs from the study's"):
        export_study(_part(study, tmp_path / "again", 1), merged, [config], merge=True)
    assert before == {p: p.read_bytes() for p in merged.rglob("*") if p.is_file()}
    # a merge that fails midway (here: drawing) leaves the study as it was, and no half-merged folder
    config.write_text("seed: 0\n")

    def broken(*args, **kwargs):
        raise ScnasError("drawing failed")

    monkeypatch.setattr("scnas.report.export.redraw", broken)
    with pytest.raises(ScnasError, match="drawing failed"):
        export_study(_part(study, tmp_path / "third", 1), merged, [config], merge=True)
    assert before == {p: p.read_bytes() for p in merged.rglob("*") if p.is_file()}
    assert not list(tmp_path.glob(".merged*"))
