"""Paired comparisons (Wilcoxon signed-rank against hand-worked exact p-values) and the cost table."""

import json

import pandas as pd
import pytest
from test_tables import HEART, finished

from scnas.evaluation.compare import case_means, compare, comparison_notes, pooled_case_means

CASES = [f"h{i}" for i in range(6)]


def _series(values):
    return pd.Series(values, index=CASES[: len(values)])


def test_wilcoxon_matches_the_exact_distribution_worked_by_hand():
    """n = 6 distinct differences: all positive gives W- = 0, two-sided p = 2/64; five positive and the
    largest negative gives W- = 6, and 14 of the 64 sign patterns have W- <= 6: p = 28/64."""
    base = [0.5, 0.6, 0.7, 0.55, 0.65, 0.75]
    up = [b + d for b, d in zip(base, (0.01, 0.02, 0.03, 0.04, 0.05, 0.06))]
    result = compare(_series(up), _series(base), "scnas", "uresnet")
    assert result.n == 6 and result.a_higher == 6
    assert result.p_value == pytest.approx(2 / 64)
    assert result.median_difference == pytest.approx(0.035)
    mixed = [b + d for b, d in zip(base, (0.01, 0.02, 0.03, 0.04, 0.05, -0.06))]
    result = compare(_series(mixed), _series(base), "scnas", "uresnet")
    assert result.a_higher == 5
    assert result.p_value == pytest.approx(28 / 64)
    assert compare(_series(base), _series(base), "a", "b").p_value == 1.0
    assert compare(_series(base[:1]), _series(base[:1]), "a", "b") is None


def test_cases_pair_by_id_and_draws_average_over_the_cases_all_have():
    a = pd.Series([0.9, 0.8, 0.7], index=["x", "y", "z"])
    b = pd.Series([0.5, 0.6], index=["z", "x"])
    result = compare(a, b, "a", "b")
    assert result.n == 2 and result.mean_a == pytest.approx(0.8) and result.mean_b == pytest.approx(0.55)
    pooled = pooled_case_means([pd.Series([0.2, 0.4], index=["x", "y"]), pd.Series([0.6], index=["x"])])
    assert pooled.to_dict() == {"x": pytest.approx(0.4)}


def test_case_means_average_the_foreground_labels_per_fold_and_case(tmp_path):
    one = finished(tmp_path, HEART, "uresnet", 0, [("a", 0, 0.99), ("a", 1, 0.8), ("a", 2, 0.6), ("b", 1, 0.5)])
    two = finished(tmp_path, HEART, "uresnet", 1, [("c", 1, float("nan")), ("c", 2, 0.4), ("a", 1, 0.1)])
    assert case_means([one, two]).to_dict() == {
        ("fold_0", "a"): pytest.approx(0.7),
        ("fold_0", "b"): 0.5,
        ("fold_1", "a"): 0.1,
        ("fold_1", "c"): 0.4,
    }


def test_study_tables_hold_the_comparisons_hd95_and_costs(tmp_path):
    from scnas.evaluation.study import find_metrics, write_study_tables

    base = [0.5, 0.6, 0.7, 0.55, 0.65, 0.75]
    for fold, cases in enumerate((CASES[:3], CASES[3:])):
        finished(tmp_path, HEART, "uresnet", fold, [(c, 1, base[CASES.index(c)]) for c in cases])
        better = [(c, 1, base[CASES.index(c)] + 0.01 * (1 + CASES.index(c))) for c in cases]
        finished(tmp_path, HEART, "scnas", fold, better)
        folder = tmp_path / HEART / "scnas" / f"fold_{fold}"
        spec = {"arch": "uresnet", "in_channels": 1, "num_classes": 2, "base_channels": 4, "combine_levels": True}
        (folder / "model.json").write_text(json.dumps({"spec": spec, "gflops": 0.5 + fold, "patch_size": [8, 8, 8]}))
        (folder / "training_log.csv").write_text("epoch,train_loss,lr,seconds\n1,0.9,0.001,30\n2,0.8,0.001,90\n")
    written = write_study_tables(find_metrics(tmp_path), tmp_path / "cv_table")
    names = [p.name for p in written]
    assert names == [
        "cv_table.csv",
        "cv_table.md",
        "cv_table.tex",
        "cv_table_hd95.csv",
        "cv_table_hd95.md",
        "cv_table_hd95.tex",
        "cv_table_cost.csv",
        "cv_table_cost.md",
    ]
    assert all(p.is_file() for p in written)
    dice = (tmp_path / "cv_table.md").read_text()
    assert "SCNAS vs 3D U-ResNet: 66.00 vs 62.50 over 6 cases" in dice and "p = 0.031" in dice
    assert "HD95 (mm" in (tmp_path / "cv_table_hd95.md").read_text()
    cost = pd.read_csv(tmp_path / "cv_table_cost.csv").set_index("model")
    from scnas.models.uresnet import UResNet

    params = sum(p.numel() for p in UResNet(1, 2, base_channels=4).parameters())
    assert cost.loc["SCNAS", "params_m"] == pytest.approx(params / 1e6)
    assert cost.loc["SCNAS", "gflops"] == pytest.approx(1.0)
    assert cost.loc["SCNAS", "train_min_per_fold"] == pytest.approx(2.0)
    assert cost.loc["SCNAS", "train_epochs"] == 2
    assert cost.loc["SCNAS", "loss_change_last_quarter"] == pytest.approx((0.8 - 0.9) / 0.9)
    assert pd.isna(cost.loc["3D U-ResNet", "gflops"])
    assert comparison_notes(find_metrics(tmp_path, models=["uresnet"])) == []


def test_loss_change_compares_the_last_two_quarters_of_the_epochs():
    from scnas.evaluation.costs import loss_change

    assert loss_change([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.45]) == pytest.approx((0.45 - 0.55) / 0.55)
    assert loss_change([0.3] * 12) == 0.0
    assert pd.isna(loss_change([0.5]))
