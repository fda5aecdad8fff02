import math

import pandas as pd
import pytest

from scnas.errors import ScnasError
from scnas.evaluation.tables import cv_table, task_table, write_tables

BRAIN = "Task01_BrainTumour"
HEART = "Task02_Heart"
LABELS = {BRAIN: {0: "background", 1: "Edema", 2: "Non-Enhancing", 3: "Enhancing"}, HEART: {1: "Left Atrium"}}
MODELS = {"uresnet": "3D U-ResNet", "scnas": "SCNAS", "scnas_transfer": "SCNAS (transfer)"}
NAN = float("nan")


def write_metrics(path, rows):
    """rows: (case, label, dice); hd95 is filled with values (inf included) that must not leak into the table."""
    frame = pd.DataFrame(rows, columns=["case", "label", "dice"])
    frame["label_name"] = "x"
    frame["hd95"] = [math.inf if i % 2 else 3.0 for i in range(len(rows))]
    frame["n_pred"] = 1
    frame["n_ref"] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def metrics(tmp_path):
    brain_u = [
        write_metrics(
            tmp_path / "bu0.csv",
            [("a", 0, 0.99), ("a", 1, 0.8), ("a", 2, 0.6), ("a", 3, 0.7), ("b", 1, 0.9), ("b", 2, NAN), ("b", 3, 0.5)],
        ),
        write_metrics(tmp_path / "bu1.csv", [("c", 1, 0.7), ("c", 2, 0.4), ("c", 3, 0.9)]),
    ]
    brain_s = [write_metrics(tmp_path / "bs0.csv", [("a", 1, 0.5), ("a", 2, 0.5), ("a", 3, 0.5)])]
    heart_u = [
        write_metrics(tmp_path / "hu0.csv", [("h1", 1, 0.9), ("h2", 1, 0.8)]),
        write_metrics(tmp_path / "hu1.csv", [("h3", 1, 0.95)]),
    ]
    heart_s = [write_metrics(tmp_path / "hs0.csv", [("h1", 1, 0.92), ("h2", 1, 0.88)])]
    heart_t = [
        write_metrics(tmp_path / "ht0.csv", [("h1", 1, 0.6), ("h2", 1, 1.0)]),
        write_metrics(tmp_path / "ht1.csv", [("h3", 1, NAN)]),
    ]
    return {
        (BRAIN, "uresnet"): brain_u,
        (BRAIN, "scnas"): brain_s,
        (HEART, "uresnet"): heart_u,
        (HEART, "scnas"): heart_s,
        (HEART, "scnas_transfer"): heart_t,
    }


def test_cv_table_statistics(metrics):
    table = cv_table(metrics, LABELS, MODELS)
    assert list(table.index) == ["3D U-ResNet", "SCNAS", "SCNAS (transfer)"]
    assert list(dict.fromkeys((t, l) for t, l, _ in table.columns)) == [
        (BRAIN, "Edema"),
        (BRAIN, "Non-Enhancing"),
        (BRAIN, "Enhancing"),
        (BRAIN, "Average"),
        (HEART, "Left Atrium"),
    ]

    u = table.loc["3D U-ResNet"]
    assert u[(BRAIN, "Edema", "mean")] == pytest.approx((0.8 + 0.9 + 0.7) / 3)
    assert u[(BRAIN, "Edema", "std")] == pytest.approx(math.sqrt((0.0 + 0.01 + 0.01) / 2))
    assert u[(BRAIN, "Non-Enhancing", "mean")] == pytest.approx(0.5)
    assert u[(BRAIN, "Non-Enhancing", "std")] == pytest.approx(math.sqrt((0.01 + 0.01) / 1))
    assert u[(BRAIN, "Non-Enhancing", "n_cases")] == 2
    assert u[(BRAIN, "Enhancing", "mean")] == pytest.approx(0.7)
    assert u[(BRAIN, "Enhancing", "std")] == pytest.approx(0.2)
    # Average = mean of per-label means (0.8, 0.5, 0.7), not the mean of per-case means (0.7, 0.7, 2/3)
    assert u[(BRAIN, "Average", "mean")] == pytest.approx(2.0 / 3)
    case_means = [0.7, 0.7, 2.0 / 3]
    m = sum(case_means) / 3
    assert u[(BRAIN, "Average", "std")] == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in case_means) / 2))
    assert u[(BRAIN, "Average", "n_cases")] == 3
    assert u[(BRAIN, "Edema", "n_folds")] == 2

    assert u[(HEART, "Left Atrium", "mean")] == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert u[(HEART, "Left Atrium", "n_cases")] == 3 and u[(HEART, "Left Atrium", "n_folds")] == 2
    s = table.loc["SCNAS"]
    assert s[(BRAIN, "Average", "mean")] == pytest.approx(0.5)
    assert math.isnan(s[(BRAIN, "Edema", "std")]) and s[(BRAIN, "Edema", "n_cases")] == 1
    t = table.loc["SCNAS (transfer)"]
    assert t[(HEART, "Left Atrium", "mean")] == pytest.approx(0.8)
    assert t[(HEART, "Left Atrium", "n_cases")] == 2 and t[(HEART, "Left Atrium", "n_folds")] == 2
    assert math.isnan(t[(BRAIN, "Edema", "mean")]) and t[(BRAIN, "Average", "n_folds")] == 0


def test_default_model_names_and_order(metrics):
    table = cv_table(metrics, LABELS)
    assert list(table.index) == ["3D U-ResNet", "SCNAS", "SCNAS (transfer)"]
    reordered = cv_table(metrics, LABELS, {"scnas": "Ours", "uresnet": "Baseline"})
    assert list(reordered.index) == ["Ours", "Baseline", "SCNAS (transfer)"]


def test_paper_average_is_mean_of_label_means(tmp_path):
    path = write_metrics(tmp_path / "m.csv", [("x", 1, 0.7074), ("x", 2, 0.5669), ("x", 3, 0.7323)])
    table = cv_table({(BRAIN, "uresnet"): [path]}, LABELS)
    write_tables(table, tmp_path / "t")
    assert "| 3D U-ResNet | 70.74 | 56.69 | 73.23 | 66.89 |" in (tmp_path / "t.md").read_text()


def test_write_tables_markdown_latex_csv(metrics, tmp_path):
    table = cv_table(metrics, LABELS, MODELS)
    write_tables(table, tmp_path / "cv_table", notes=["Synthetic data; not the paper's numbers."])

    md = (tmp_path / "cv_table.md").read_text().splitlines()
    assert md[0] == f"|  | {BRAIN} |  |  |  | {HEART} |"
    assert md[2] == "| Label | Edema | Non-Enhancing | Enhancing | Average | Left Atrium |"
    assert md[3] == "| 3D U-ResNet | 80.00 ± 10.00 | 50.00 ± 14.14 | 70.00 ± 20.00 | 66.67 ± 1.92 | 88.33 ± 7.64 |"
    assert md[4] == "| SCNAS | 50.00 | 50.00 | 50.00 | 50.00 | 90.00 ± 2.83 |"
    assert md[5] == "| SCNAS (transfer) | - | - | - | - | 80.00 ± 28.28 |"
    assert "Synthetic data; not the paper's numbers." in md
    assert any("3D U-ResNet: Task01_BrainTumour 3 cases / 2 folds" in line for line in md)

    tex = (tmp_path / "cv_table.tex").read_text()
    assert r"\begin{tabular}{l|cccc|c}" in tex
    assert r"& \multicolumn{4}{c|}{Task01\_BrainTumour} & \multicolumn{1}{c}{Task02\_Heart} \\" in tex
    assert r"Label & Edema & Non-Enhancing & Enhancing & Average & Left Atrium \\" in tex
    assert r"3D U-ResNet & 80.00 $\pm$ 10.00 & 50.00 $\pm$ 14.14 & 70.00 $\pm$ 20.00 & 66.67 $\pm$ 1.92" in tex
    assert r"SCNAS (transfer) & - & - & - & - & 80.00 $\pm$ 28.28 \\" in tex
    assert "Task01_BrainTumour" not in tex.split(r"\end{tabular}")[0]

    csv = pd.read_csv(tmp_path / "cv_table.csv")
    assert list(csv.columns) == ["task", "model", "label", "metric", "mean", "std", "n_cases", "n_folds"]
    row = csv[(csv.task == BRAIN) & (csv.model == "3D U-ResNet") & (csv.label == "Average")].iloc[0]
    assert row["mean"] == pytest.approx(2.0 / 3) and row["n_cases"] == 3 and row["n_folds"] == 2
    missing = csv[(csv.task == BRAIN) & (csv.model == "SCNAS (transfer)")]
    assert len(missing) == 4 and (missing.n_folds == 0).all() and missing["mean"].isna().all()
    assert len(csv) == 3 * 5


def test_task_table_is_the_restriction(metrics, tmp_path):
    table = cv_table(metrics, LABELS, MODELS)
    brain = task_table(table, BRAIN)
    assert list(brain.index) == ["3D U-ResNet", "SCNAS"]
    pd.testing.assert_frame_equal(brain, table.loc[["3D U-ResNet", "SCNAS"], [BRAIN]])
    heart = task_table(table, HEART)
    assert list(heart.index) == ["3D U-ResNet", "SCNAS", "SCNAS (transfer)"]
    assert list(dict.fromkeys(l for _, l, _ in heart.columns)) == ["Left Atrium"]
    write_tables(heart, tmp_path / "heart")
    md = (tmp_path / "heart.md").read_text().splitlines()
    assert md[0] == f"|  | {HEART} |" and md[2] == "| Label | Left Atrium |"
    assert r"\begin{tabular}{l|c}" in (tmp_path / "heart.tex").read_text()


def test_hd_metric_table(metrics):
    table = cv_table(metrics, LABELS, MODELS, metric="hd95")
    u = table.loc["3D U-ResNet"]
    assert u[(HEART, "Left Atrium", "mean")] == pytest.approx(3.0)
    assert u[(HEART, "Left Atrium", "n_cases")] == 2


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ScnasError, match="nope.csv: metrics file not found"):
        cv_table({(HEART, "scnas"): [tmp_path / "nope.csv"]}, LABELS)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"case": ["a"], "label": [1]}).to_csv(bad, index=False)
    with pytest.raises(ScnasError, match="bad.csv: missing column"):
        cv_table({(HEART, "scnas"): [bad]}, LABELS)
    with pytest.raises(ScnasError, match="Task09_Spleen"):
        cv_table({("Task09_Spleen", "scnas"): [bad]}, LABELS)
    text = tmp_path / "text.csv"
    pd.DataFrame({"case": ["a"], "label": ["one"], "dice": [0.5]}).to_csv(text, index=False)
    with pytest.raises(ScnasError, match="text.csv: column 'label' must hold whole numbers"):
        cv_table({(HEART, "scnas"): [text]}, LABELS)


def finished(results, task, model, fold, rows):
    """A fold's metrics.csv with the summary.json an evaluation writes beside it (holding its SHA-256)."""
    import hashlib
    import json

    path = write_metrics(results / task / model / f"fold_{fold}" / "metrics.csv", rows)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name("summary.json").write_text(json.dumps({"metrics_sha256": digest}))
    return path


def test_study_reads_only_finished_evaluations(tmp_path, caplog):
    from scnas.evaluation.study import find_metrics, parse_metrics_paths

    done = finished(tmp_path, HEART, "uresnet", 0, [("h1", 1, 0.9)])
    unfinished = write_metrics(tmp_path / HEART / "uresnet" / "fold_1" / "metrics.csv", [("h2", 1, 0.8)])
    rewritten = finished(tmp_path, HEART, "scnas", 0, [("h1", 1, 0.9)])
    write_metrics(rewritten, [("h1", 1, 0.1)])

    assert parse_metrics_paths([done]) == {(HEART, "uresnet"): [done]}
    for path, why in ((unfinished, "no summary.json"), (rewritten, "its summary.json was written for other metrics")):
        with pytest.raises(ScnasError) as info:
            parse_metrics_paths([done, path])
        assert str(info.value).startswith(f"{path}: incomplete evaluation: {why}")

    with caplog.at_level("WARNING", logger="scnas.evaluation.study"):
        assert find_metrics(tmp_path) == {(HEART, "uresnet"): [done]}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and any(str(unfinished) in w for w in warned) and any(str(rewritten) in w for w in warned)
    with pytest.raises(ScnasError, match="no finished"):
        find_metrics(tmp_path, models=["scnas"])


def test_random_draws_make_one_row_of_per_case_means_and_a_note_of_each_draws_mean(tmp_path):
    from scnas.evaluation.study import find_metrics, write_study_tables

    finished(tmp_path, HEART, "uresnet", 0, [("h1", 1, 0.9), ("h2", 1, 0.7)])
    draw_means = [0.5, 0.6, 0.85]
    for k, mean in enumerate(draw_means):
        for fold in (0, 1):
            finished(tmp_path, HEART, f"random_{k}", fold, [(f"c{fold}a", 1, mean - 0.1), (f"c{fold}b", 1, mean + 0.1)])
    written = write_study_tables(find_metrics(tmp_path), tmp_path / "cv_table")
    long = pd.read_csv(written[0])
    assert list(long["model"]) == ["3D U-ResNet", "Random genotype"]
    row = long[long["model"] == "Random genotype"].iloc[0]
    # each of the 4 cases averaged over the 3 draws: mean(draw_means) -+ 0.1
    per_case = [sum(draw_means) / 3 + d for d in (-0.1, 0.1, -0.1, 0.1)]
    assert row["mean"] == pytest.approx(sum(draw_means) / 3)
    assert row["std"] == pytest.approx(pd.Series(per_case).std(ddof=1))
    assert row["n_cases"] == 4 and row["n_folds"] == 2
    markdown = written[1].read_text()
    assert "Random genotype" in markdown and "random_0" not in markdown
    assert "Random genotype: Task02_Heart 4 cases / 2 folds" in markdown
    spread = pd.Series(draw_means).std(ddof=1) * 100
    assert (
        "Random genotype: each case's value is its mean over the 3 random genotypes; the draws' own means, "
        f"Task02_Heart x: 50.00, 60.00, 85.00 (standard deviation across draws {spread:.2f})." in markdown
    )


def test_the_table_reads_the_folds_an_evaluation_wrote_and_agrees_with_their_nnunet_summaries(tmp_path):
    """evaluate_cases' summary.json (nnU-Net's schema, NaN for a label in neither map) marks the fold as
    finished; the table's per-label mean over both folds' cases is that of the summaries' metric_per_case."""
    import json

    import numpy as np

    from scnas.data.nifti import save_nifti
    from scnas.evaluation.metrics import evaluate_cases
    from scnas.evaluation.study import find_metrics, write_study_tables

    labels = {0: "background", 1: "organ", 2: "lesion"}
    shape = (8, 8, 6)
    for fold, shifts in enumerate(([0, 1], [2])):
        folder = tmp_path / HEART / "uresnet" / f"fold_{fold}"
        pairs = []
        for i, shift in enumerate(shifts):
            ref = np.zeros(shape, np.int16)
            ref[2:6, 2:6, 1:5] = 1
            if fold == 1:
                ref[0, 0, 0] = 2
            pred = np.roll(ref, shift, axis=0)
            case = f"f{fold}c{i}"
            save_nifti(tmp_path / f"{case}_ref.nii.gz", ref, np.eye(4))
            save_nifti(tmp_path / f"{case}_pred.nii.gz", pred, np.eye(4))
            pairs.append((case, tmp_path / f"{case}_pred.nii.gz", tmp_path / f"{case}_ref.nii.gz"))
        evaluate_cases(pairs, labels, folder)
    summaries = [json.loads((tmp_path / HEART / "uresnet" / f"fold_{k}" / "summary.json").read_text()) for k in (0, 1)]
    assert np.isnan(summaries[0]["metric_per_case"][0]["metrics"]["2"]["Dice"])

    written = write_study_tables(find_metrics(tmp_path), tmp_path / "cv_table")
    long = pd.read_csv(written[0]).set_index("label")
    for label, name in ((1, "organ"), (2, "lesion")):
        dice = [c["metrics"][str(label)]["Dice"] for s in summaries for c in s["metric_per_case"]]
        finite = [d for d in dice if not np.isnan(d)]
        assert long.loc[name, "mean"] == pytest.approx(np.mean(finite))
        assert long.loc[name, "n_cases"] == len(finite) and long.loc[name, "n_folds"] == 2
