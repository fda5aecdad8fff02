"""The config schema, its defaults, the typed dataclasses, and the refusals of bad keys."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from scnas import config as C
from scnas.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _task(**extra):
    return {"tasks": {"T": {"dataset": "T", **extra}}}


def test_repository_configs_validate():
    cfg = C.load(ROOT / "config.yaml")
    assert cfg.preprocess.spacing == (0.7, 0.7, 0.7)
    assert cfg.search.stem_channels == 48 and cfg.search.sampling == "two"
    assert cfg.search.weight_betas == (0.1, 0.001) and cfg.search.alpha_betas == (0.5, 0.999)
    assert cfg.train.lr == 3e-4 and cfg.train.lr_factor == 0.2 and cfg.train.patience == 30
    assert cfg.train.max_epochs == 500 and cfg.train.batch_size == 8 and cfg.train.min_lr == 1e-7
    assert cfg.models_for("Task01_BrainTumour") == ("uresnet", "scnas", "random")
    assert cfg.models_for("Task02_Heart") == ("uresnet", "scnas", "random", "scnas_transfer")
    assert cfg.runs_for("Task01_BrainTumour") == ("uresnet", "scnas", "random_0", "random_1", "random_2")
    assert cfg.train.scnas_stem_channels == "match_flops"
    demo = C.load([ROOT / "config.yaml", ROOT / "config" / "demo.yaml"])
    assert demo.study_tasks == ("DemoBrain", "DemoHeart")
    assert demo.dataset_dir("DemoBrain") == Path(demo.results) / "DemoBrain" / "raw"


def test_defaults_fill_a_partial_config():
    stage = C.task_settings({})
    assert stage.plan.patch_size == (128, 128, 128)
    assert stage.train.augmentation.p_mirror == 0.5
    assert stage.launcher.resources("search").gpus_per_node == 1


def test_every_schema_key_has_a_dataclass_field():
    schema = yaml.safe_load(C.SCHEMA_PATH.read_text())

    def props(section):
        sub = schema["properties"][section]
        if "$ref" in sub:
            sub = schema["$defs"][sub["$ref"].rsplit("/", 1)[-1]]
        return set(sub["properties"])

    pairs = {
        "preprocess": C.PreprocessConfig,
        "plan": C.PlanConfig,
        "train": C.TrainConfig,
        "search": C.SearchConfig,
        "inference": C.InferenceConfig,
        "evaluation": C.EvaluationConfig,
        "launcher": C.LauncherConfig,
    }
    for section, cls in pairs.items():
        assert props(section) == {f.name for f in dataclasses.fields(cls)}, section
    top = set(schema["properties"])
    assert top == {f.name for f in dataclasses.fields(C.Config)} - {"raw", "resolved"}
    aug = set(schema["$defs"]["augmentation"]["properties"])
    assert aug == {f.name for f in dataclasses.fields(C.AugmentationConfig)}


@pytest.mark.parametrize(
    "data, key",
    [
        ({**_task(), "trian": {}}, "'trian'"),
        ({**_task(), "train": {"lr": "fast"}}, "train.lr"),
        ({**_task(), "train": {"betas": [0.9]}}, "train.betas"),
        ({**_task(), "search": {"sampling": "three"}}, "search.sampling"),
        ({**_task(), "search": {"tau": {"start": 0.5, "end": 1.0}}}, "search.tau"),
        ({**_task(), "search": {"tau": {"start": 1.0, "end": 1.0}}}, "search.tau"),
        ({**_task(), "folds": [5]}, "folds"),
        ({"tasks": {"T": {"dataset": "x", "synthetic": {"kind": "brain"}}}}, "tasks.T"),
        ({"tasks": {"T": {"synthetic": {"kind": "liver"}}}}, "tasks.T"),
        (_task(overrides={"train": {"lrr": 1}}), "tasks.T.overrides.train.lrr"),
        (_task(overrides={"train": {"lr": -1}}), "train.lr"),
        ({**_task(), "transfer": {"source_task": "X", "targets": []}}, "transfer"),
        ({**_task(), "run_tasks": ["Nope"]}, "run_tasks"),
        ({}, "tasks"),
    ],
)
def test_bad_config_is_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        C.from_dict(data)
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_task_overrides_merge_over_global_sections():
    cfg = C.from_dict(
        {
            **_task(overrides={"plan": {"patch_size": [64, 64, 32]}, "launcher": {"train": {"gpus_per_node": 2}}}),
            "plan": {"patch_size": [96, 96, 96]},
        }
    )
    assert cfg.settings("T").plan.patch_size == (64, 64, 32)
    assert cfg.settings().plan.patch_size == (96, 96, 96)
    assert cfg.settings("T").launcher.resources("train").gpus_per_node == 2
    assert cfg.settings("T").launcher.resources("train").mem_gb == 64


def test_stage_dict_round_trips():
    cfg = C.load(ROOT / "config.yaml")
    for task in cfg.tasks:
        assert C.task_settings(cfg.settings_dict(task)) == cfg.settings(task)


def test_config_files_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        C.load(bad)
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        C.load(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        C.load(listy)


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {min_lr: 1e-7, lr: 3e-4}\n")
    stage = C.task_settings(C.read_config_source(path))
    assert stage.train.min_lr == 1e-7 and stage.train.lr == 3e-4
    assert C.read_config_source('{"train": {"min_lr": 1e-07}}')["train"]["min_lr"] == 1e-7


@pytest.mark.parametrize(
    "data, key",
    [
        ({"preprocess": {"ct_clip_percentiles": [99.5, 0.5]}}, "preprocess.ct_clip_percentiles"),
        ({"preprocess": {"ct_clip_percentiles": [-1, 50]}}, "preprocess.ct_clip_percentiles"),
        ({"preprocess": {"ct_clip_percentiles": [10, 101]}}, "preprocess.ct_clip_percentiles"),
        ({"train": {"lr": 1e-3, "min_lr": 1e-3}}, "train.min_lr"),
        ({"train": {"min_lr": 1e-2}}, "train.min_lr"),
        ({"preprocess": {"spacing": [float("nan"), 1.0, 1.0]}}, "preprocess.spacing[0]"),
        ({"preprocess": {"spacing": [1.0, float("inf"), 1.0]}}, "preprocess.spacing[1]"),
        ({"preprocess": {"spacing": [1.0, 1.0, 0.0]}}, "preprocess.spacing.2"),
        ({"train": {"lr": float("nan")}}, "train.lr"),
        ({"inference": {"overlap": float("nan")}}, "inference.overlap"),
        ({"inference": {"overlap": 1.0}}, "inference.overlap"),
        ({"train": {"augmentation": {"scaling": [1.4, 0.7]}}}, "train.augmentation.scaling"),
        ({"search": {"augmentation": {"gamma": [0.0, 1.5]}}}, "search.augmentation.gamma"),
        ({"search": {"tau": {"start": 1.0, "end": 2.0}}}, "search.tau"),
    ],
)
def test_values_that_would_spoil_results_are_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        C.task_settings(data)
    message = str(info.value)
    assert f"config key {key}" in message and "\n" not in message


def test_cross_field_rules_apply_to_task_overrides_and_inline_json(tmp_path):
    config = {
        "tasks": {"T": {"dataset": "T", "overrides": {"train": {"min_lr": 0.5}}}},
    }
    with pytest.raises(ConfigError, match=r"tasks\.T\.overrides: config key train\.min_lr"):
        C.from_dict(config)
    with pytest.raises(ConfigError, match="preprocess.spacing.0. is not a finite number|preprocess.spacing"):
        C.task_settings(C.read_config_source('{"preprocess": {"spacing": [.nan, 1, 1]}}'))
    with pytest.raises(ConfigError, match="num_folds"):
        C.from_dict({"num_folds": 1, "tasks": {"T": {"dataset": "T"}}})
    with pytest.raises(ConfigError, match="synthetic.cases"):
        C.from_dict({"num_folds": 5, "tasks": {"T": {"synthetic": {"kind": "heart", "cases": 3}}}})


def test_settings_are_validated_once_per_process(monkeypatch):
    calls = []
    original = C.validate
    monkeypatch.setattr(C, "validate", lambda *a, **k: calls.append(1) or original(*a, **k))
    cfg = C.from_dict({"tasks": {"A": {"dataset": "A"}, "B": {"dataset": "B", "overrides": {"train": {"lr": 1e-3}}}}})
    built = len(calls)
    assert built == 4  # the whole config, then the global sections and each task's merged ones, once
    for _ in range(3):
        assert cfg.settings("B").train.lr == 1e-3 and cfg.settings("A").train.lr == 3e-4
        cfg.settings_dict("A")
    assert len(calls) == built
    C._task_settings_cached.cache_clear()
    data = cfg.settings_dict("B")
    first = C.task_settings(data)
    assert C.task_settings(json.loads(json.dumps(data))) is first
    assert len(calls) == built + 1


def test_snakemake_command_line_strings_are_read_as_the_schema_types():
    """`snakemake --config folds=[0,1] train={lr: 1e-3}` hands nested values over as strings."""
    from scnas.config import coerce_strings, from_dict

    given = {
        "folds": ["0", "2"],
        "train": {"lr": "1e-3", "amp": "false", "scnas_stem_channels": "12", "max_epochs": "3"},
        "search": {"tau": {"start": "4", "end": "0.5"}},
        "tasks": {"T": {"dataset": "007", "nnunet_folds": ["1"]}},
    }
    coerced = coerce_strings(given)
    assert coerced["folds"] == [0, 2]
    assert coerced["train"] == {"lr": 0.001, "amp": False, "scnas_stem_channels": 12, "max_epochs": 3}
    assert coerced["search"]["tau"] == {"start": 4.0, "end": 0.5}
    assert coerced["tasks"]["T"] == {"dataset": "007", "nnunet_folds": [1]}
    assert coerce_strings({"train": {"scnas_stem_channels": "match_flops", "lr": "fast"}})["train"] == {
        "scnas_stem_channels": "match_flops",
        "lr": "fast",
    }
    cfg = from_dict(coerce_strings({**given, "data_root": "/data"}))
    assert cfg.folds == (0, 2) and cfg.settings("T").train.lr == 0.001
