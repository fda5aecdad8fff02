"""Cross-validation splits: deterministic, disjoint, covering; nnU-Net files imported verbatim."""

import json

import pytest

from scnas.data.splits import check_splits, fold_cases, import_splits, load_splits, make_splits, split_for_search
from scnas.errors import DatasetError

CASES = [f"case_{i:03d}" for i in range(23)]


def test_splits_are_deterministic_disjoint_and_cover():
    a = make_splits(CASES, 5, seed=3)
    assert a == make_splits(list(reversed(CASES)), 5, seed=3)
    assert a != make_splits(CASES, 5, seed=4)
    vals = [set(f["val"]) for f in a]
    assert set().union(*vals) == set(CASES)
    assert sum(len(v) for v in vals) == len(CASES)
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
    for fold in a:
        assert set(fold["train"]).isdisjoint(fold["val"])
        assert set(fold["train"]) | set(fold["val"]) == set(CASES)
    check_splits(a, CASES, 5, "made")


def test_nnunet_splits_are_imported_verbatim(tmp_path):
    order = CASES[::-1]
    splits = [{"train": [c for c in order if c not in order[k::5]], "val": order[k::5]} for k in range(5)]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(splits))
    assert import_splits(path, CASES, 5) == splits


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s[:4], "has 4 folds"),
        (lambda s: [{**s[0], "val": s[0]["val"] + ["ghost"]}] + s[1:], "'ghost' is not in the dataset"),
        (lambda s: [{"train": s[0]["train"] + s[0]["val"][:1], "val": s[0]["val"]}] + s[1:], "in both train and val"),
        (lambda s: [{"train": s[0]["train"][1:], "val": s[0]["val"]}] + s[1:], "does not cover"),
        (lambda s: [{"train": s[0]["train"]}] + s[1:], "exactly the keys"),
        (lambda s: {"folds": s}, "must be a list"),
    ],
)
def test_bad_nnunet_splits_are_refused(tmp_path, mutate, message):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(mutate(make_splits(CASES, 5, 0))))
    with pytest.raises(DatasetError, match=message):
        import_splits(path, CASES, 5)


def test_overlapping_validation_folds_are_refused():
    s = make_splits(CASES, 5, 0)
    moved = s[1]["val"][0]
    s[0] = {"train": [c for c in CASES if c not in s[0]["val"] + [moved]], "val": s[0]["val"] + [moved]}
    with pytest.raises(DatasetError, match="validated in folds 0 and 1"):
        check_splits(s, CASES, 5, "x")


def test_search_split_is_four_to_one_and_seeded():
    train = CASES[:20]
    w, a = split_for_search(train, 0.2, seed=1)
    assert len(a) == 4 and len(w) == 16 and set(w) | set(a) == set(train) and not set(w) & set(a)
    assert (w, a) == split_for_search(list(reversed(train)), 0.2, seed=1)
    assert a != split_for_search(train, 0.2, seed=2)[1]


def test_load_splits_reads_back_what_was_written(tmp_path):
    path = tmp_path / "splits_final.json"
    splits = make_splits(CASES, 5, 0)
    path.write_text(json.dumps(splits))
    assert load_splits(path, CASES) == splits == load_splits(path)
    assert fold_cases(load_splits(path, CASES), 2) == (splits[2]["train"], splits[2]["val"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: [{"train": s[0]["train"] + s[0]["val"][:1], "val": s[0]["val"]}] + s[1:], "fold 0: case 'case_"),
        (lambda s: s[:2] + [{**s[2], "val": s[2]["val"] + ["ghost"]}], "fold 2 val: case 'ghost' is not in the"),
        (lambda s: [{**s[0], "train": s[0]["train"] + [3]}] + s[1:], "fold 0 'train': 3 is not a case id"),
        (lambda s: {str(k): fold for k, fold in enumerate(s)}, "must be a list of"),
        (lambda s: s[:3] + [{"train": [], "val": s[3]["val"]}] + s[4:], "fold 3 has no training cases"),
        (lambda s: [{**s[0], "val": s[0]["val"] + s[0]["val"][:1]}] + s[1:], "fold 0 'val' lists case 'case_"),
        (lambda s: [], "holds no folds"),
    ],
    ids=["leak", "unknown-id", "int-id", "dict", "empty-train", "duplicate", "empty"],
)
def test_load_splits_refuses_defects_in_one_line(tmp_path, mutate, message):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(mutate(make_splits(CASES, 5, 0))))
    with pytest.raises(DatasetError, match=message) as info:
        load_splits(path, CASES)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_load_splits_refuses_a_missing_or_broken_file(tmp_path):
    with pytest.raises(DatasetError, match=r"splits file not found \(run `scnas splits` first\)"):
        load_splits(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DatasetError, match="bad.json: not valid JSON"):
        load_splits(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "folds, message",
    [(0, "at least 2 folds"), (-1, "at least 2 folds"), (1, "at least 2 folds"), (24, "at least 24 cases")],
)
def test_impossible_fold_counts_are_refused(folds, message):
    with pytest.raises(DatasetError, match=message):
        make_splits(CASES, folds, 0)


@pytest.mark.parametrize("folds", ["0", "-1"])
def test_cli_splits_refuses_impossible_fold_counts_in_one_line(tmp_path, capsys, folds):
    from scnas.cli import main
    from scnas.data.synthetic import make_synthetic_task

    raw = make_synthetic_task("heart", tmp_path / "raw", cases=3, seed=0, size=24)
    assert main(["splits", "--dataset", str(raw), "--out", str(tmp_path / "s.json"), "--folds", folds]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"scnas splits: error: cross-validation needs at least 2 folds, got {folds}"
    assert not (tmp_path / "s.json").exists()
