"""Study configuration: config.yaml validated by the JSON schema, then turned into typed dataclasses.

The schema (scnas/resources/config.schema.yaml) is the one source of keys, types and defaults; the
dataclasses mirror it (a test keeps the two in step). Code below the CLI receives these dataclasses,
never raw dicts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from scnas.errors import ConfigError
from scnas.layout import RANDOM

SCHEMA_PATH = Path(__file__).parent / "resources" / "config.schema.yaml"
SECTIONS = ("preprocess", "plan", "train", "search", "inference", "evaluation", "launcher")
MODELS = ("uresnet", "scnas", RANDOM, "scnas_transfer")


@dataclass(frozen=True)
class SyntheticSpec:
    kind: Literal["brain", "heart", "lung"]
    cases: int
    seed: int
    size: int


@dataclass(frozen=True)
class TaskConfig:
    name: str
    dataset: str | None = None
    synthetic: SyntheticSpec | None = None
    splits_file: str | None = None
    models: tuple[str, ...] | None = None
    overrides: dict = field(default_factory=dict)
    nnunet_folds: tuple[int, ...] = ()


@dataclass(frozen=True)
class TransferConfig:
    source_task: str | None
    source_fold: int
    targets: tuple[str, ...]


@dataclass(frozen=True)
class PreprocessConfig:
    spacing: tuple[float, float, float]
    ct_clip_percentiles: tuple[float, float]
    label_interpolation: Literal["linear", "nearest"]
    foreground_samples: int
    threads: int


@dataclass(frozen=True)
class PlanConfig:
    patch_size: tuple[int, int, int]
    fit_to_median_shape: bool
    gpu_memory_gb: float | None


@dataclass(frozen=True)
class AugmentationConfig:
    p_rotation: float
    rotation_deg: float
    p_scaling: float
    scaling: tuple[float, float]
    p_elastic: float
    elastic_alpha: tuple[float, float]
    elastic_sigma: tuple[float, float]
    p_noise: float
    noise_variance: tuple[float, float]
    p_blur: float
    blur_sigma: tuple[float, float]
    p_brightness: float
    brightness: tuple[float, float]
    p_contrast: float
    contrast: tuple[float, float]
    p_low_resolution: float
    low_resolution_scale: tuple[float, float]
    p_gamma: float
    gamma: tuple[float, float]
    p_gamma_invert: float
    p_mirror: float


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    schedule: Literal["plateau", "poly"]
    lr_factor: float
    patience: int
    max_epochs: int
    min_lr: float
    iterations_per_epoch: int | Literal["auto"]
    foreground_fraction: float
    amp: bool
    deep_supervision: bool
    val_dice_every: int
    uresnet_channels: int
    scnas_stem_channels: int | Literal["match_flops"]
    upsample_before_reduce: bool
    augmentation: AugmentationConfig


@dataclass(frozen=True)
class TauConfig:
    start: float
    end: float


@dataclass(frozen=True)
class SearchConfig:
    stem_channels: int
    batch_size: int
    weight_lr: float
    weight_betas: tuple[float, float]
    alpha_lr: float
    alpha_betas: tuple[float, float]
    lr_factor: float
    patience: int
    warmup_epochs: int
    epochs: int
    extra_epochs: int
    extra_alpha_lr_factor: float
    iterations_per_epoch: int | Literal["auto"]
    arch_fraction: float
    sampling: Literal["two", "all", "one"]
    tau: TauConfig
    foreground_fraction: float
    amp: bool
    augmentation: AugmentationConfig


@dataclass(frozen=True)
class InferenceConfig:
    overlap: float
    mode: Literal["gaussian", "constant"]
    mirror: bool
    batch_size: int
    amp: bool


@dataclass(frozen=True)
class EvaluationConfig:
    hd_percentile: float


@dataclass(frozen=True)
class Resources:
    """What one heavy job asks the scheduler for; unset keys fall back to `launcher.default`."""

    nodes: int | None = None
    gpus_per_node: int | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    sbatch_extra: dict | None = None
    setup: tuple[str, ...] | None = None

    def over(self, base: "Resources") -> "Resources":
        """These resources with every unset key taken from `base`."""
        return Resources(
            **{
                f.name: getattr(base, f.name) if getattr(self, f.name) is None else getattr(self, f.name)
                for f in dataclasses.fields(self)
            }
        )

    @property
    def processes_per_node(self) -> int:
        return self.gpus_per_node if self.gpus_per_node else (self.tasks_per_node or 1)


@dataclass(frozen=True)
class LauncherConfig:
    executor: Literal["inprocess", "local", "slurm"]
    max_requeues: int
    poll_s: float
    default: Resources
    search: Resources
    train: Resources
    predict: Resources

    def resources(self, rule: str) -> Resources:
        """The resources of one heavy rule (search, train or predict), defaults filled in."""
        return getattr(self, rule).over(self.default)


@dataclass(frozen=True)
class TaskSettings:
    """The settings of one task: global sections with that task's overrides merged in."""

    seed: int
    preprocess: PreprocessConfig
    plan: PlanConfig
    train: TrainConfig
    search: SearchConfig
    inference: InferenceConfig
    evaluation: EvaluationConfig
    launcher: LauncherConfig


@dataclass(frozen=True)
class Config:
    seed: int
    results: str
    data_root: str
    num_folds: int
    folds: tuple[int, ...]
    models: tuple[str, ...]
    random_draws: int
    tasks: dict[str, TaskConfig]
    run_tasks: tuple[str, ...] | None
    transfer: TransferConfig
    preprocess: PreprocessConfig
    plan: PlanConfig
    train: TrainConfig
    search: SearchConfig
    inference: InferenceConfig
    evaluation: EvaluationConfig
    launcher: LauncherConfig
    raw: dict = field(repr=False, compare=False, default_factory=dict)
    resolved: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def study_tasks(self) -> tuple[str, ...]:
        """The tasks this study runs."""
        return self.run_tasks if self.run_tasks is not None else tuple(self.tasks)

    def task(self, name: str) -> TaskConfig:
        if name not in self.tasks:
            raise ConfigError(f"config key tasks: no task named {name!r} (known: {', '.join(self.tasks)})")
        return self.tasks[name]

    def settings(self, task: str | None = None) -> TaskSettings:
        """One task's settings (global sections with its overrides), or the global ones; built once."""
        if task is not None:
            self.task(task)
        return self.resolved[task]

    def settings_dict(self, task: str | None = None) -> dict:
        """`settings(task)` as plain JSON-able data, for handing to a CLI stage or a job."""
        return dataclass_to_dict(self.settings(task))

    def _resolve_settings(self, task: str | None) -> TaskSettings:
        sections = {s: copy.deepcopy(self.raw[s]) for s in SECTIONS}
        if task is not None:
            for section, values in self.task(task).overrides.items():
                sections[section] = deep_merge(sections[section], values)
        merged = {"seed": self.seed, **sections}
        validated = validate(merged, where=f"tasks.{task}.overrides" if task else "")
        return _build(TaskSettings, validated, "")

    def dataset_dir(self, task: str) -> Path:
        """The MSD folder of `task`: its configured path, or where the synth rule writes it."""
        t = self.task(task)
        if t.synthetic is not None:
            return Path(self.results) / task / "raw"
        path = Path(os.path.expanduser(t.dataset))
        return path if path.is_absolute() else Path(self.data_root) / path

    def models_for(self, task: str) -> tuple[str, ...]:
        """The models trained and tabulated for `task`: scnas_transfer only on transfer targets."""
        return tuple(
            m
            for m in (self.task(task).models or self.models)
            if m != "scnas_transfer" or (task in self.transfer.targets and self.transfer.source_task)
        )

    def runs_for(self, task: str) -> tuple[str, ...]:
        """The model folders of `task`: its models, with `random` expanded to random_0 .. random_{K-1}."""
        return tuple(
            run
            for m in self.models_for(task)
            for run in ([f"{RANDOM}_{k}" for k in range(self.random_draws)] if m == RANDOM else [m])
        )

    def reference_folds(self, task: str) -> tuple[int, ...]:
        """The folds the nnU-Net reference runs on: the task's nnunet_folds among the folds being run."""
        return tuple(k for k in self.task(task).nnunet_folds if k in self.folds)


def steps_per_epoch(iterations: int | str, cases: int, batch_size: int) -> int:
    """Steps in one epoch: a fixed count, or (`auto`) one pass over `cases` at the batch size, as the paper
    counts epochs."""
    return int(iterations) if iterations != "auto" else max(1, math.ceil(cases / batch_size))


def deep_merge(base: Mapping, update: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@lru_cache(maxsize=1)
def _schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _validator():
    import jsonschema
    from jsonschema import Draft202012Validator, validators

    base = Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    cls = validators.extend(base, {"properties": set_defaults})
    return cls(_schema(), format_checker=jsonschema.FormatChecker())


def validate(data: Mapping, where: str = "") -> dict:
    """Validate `data` against the schema (a partial config is fine) and fill in the defaults.

    Raises ConfigError naming the first offending key. `data` is not modified.
    """
    instance = copy.deepcopy(dict(data))
    prefix = f"{where}: " if where else ""
    try:
        _check_finite(instance, "")
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None
    errors = sorted(_validator().iter_errors(instance), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"{prefix}config key {key}: {_describe(err)}")
    for name, task in instance.get("tasks", {}).items():
        for section, values in task.get("overrides", {}).items():
            _check_keys(values, _section_schema(section), f"tasks.{name}.overrides.{section}")
    try:
        _check_semantics(instance)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None
    return instance


def coerce_strings(data: Any, schema: dict | None = None) -> Any:
    """`data` with the strings that stand where the schema wants a number, integer or boolean read as one
    ("3" -> 3, "1e-3" -> 0.001, "true" -> True): Snakemake's `--config key=[0, 1]` hands nested values over
    as strings. Anything that does not read as the wanted type is left for validation to name."""
    schema = _resolve(_schema() if schema is None else schema)
    if isinstance(data, Mapping):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: coerce_strings(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in data.items()}
    if isinstance(data, list):
        items = schema.get("items", {})
        return [coerce_strings(v, items if isinstance(items, dict) else {}) for v in data]
    if not isinstance(data, str):
        return data
    options = [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]
    wanted = {t for o in options for t in ([o["type"]] if isinstance(o.get("type"), str) else o.get("type", []))}
    named = {str(o["const"]) for o in options if "const" in o} | {str(e) for o in options for e in o.get("enum", [])}
    if "string" in wanted or data in named:
        return data
    for kind, parse in (("integer", int), ("number", float), ("boolean", _boolean)):
        if kind in wanted:
            try:
                return parse(data)
            except ValueError:
                continue
    return data


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError(text)


def _section_schema(section: str) -> dict:
    return _resolve(_schema()["properties"][section])


def _resolve(sub: dict) -> dict:
    while True:
        if "$ref" in sub:
            sub = _schema()["$defs"][sub["$ref"].rsplit("/", 1)[-1]]
        elif "allOf" in sub and len(sub["allOf"]) == 1:
            sub = sub["allOf"][0]
        else:
            return sub


def _check_keys(values: Any, schema: dict, where: str) -> None:
    """Reject unknown keys in an overrides block early (the merged config is validated later)."""
    if not isinstance(values, Mapping) or "properties" not in schema:
        return
    for key, value in values.items():
        if key not in schema["properties"]:
            raise ConfigError(f"config key {where}.{key}: unknown key (allowed: {', '.join(schema['properties'])})")
        _check_keys(value, _resolve(schema["properties"][key]), f"{where}.{key}")


_POSITIVE_RANGES = ("scaling", "brightness", "contrast", "gamma")


def _check_finite(value: Any, where: str) -> None:
    """NaN and infinity pass JSON schema's number checks; no setting can mean them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {where or '(top level)'}: {value} is not a finite number")
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _check_finite(sub, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _check_finite(sub, f"{where}[{i}]")


def _check_semantics(cfg: dict) -> None:
    """Relations between keys that JSON schema cannot express: every entrance (config files, --config
    JSON, command-line flags turned into settings) passes through here."""
    pre = cfg.get("preprocess", {})
    if "ct_clip_percentiles" in pre:
        lo, hi = pre["ct_clip_percentiles"]
        if not 0 <= lo < hi <= 100:
            raise ConfigError(
                f"config key preprocess.ct_clip_percentiles: need 0 <= low < high <= 100, got [{lo}, {hi}]"
            )
    train = cfg.get("train", {})
    if "min_lr" in train and "lr" in train and not train["min_lr"] < train["lr"]:
        raise ConfigError(
            f"config key train.min_lr: {train['min_lr']} must be below train.lr {train['lr']} "
            "(training would stop before its first epoch)"
        )
    for section in ("train", "search"):
        for name, value in cfg.get(section, {}).get("augmentation", {}).items():
            if not (isinstance(value, list) and len(value) == 2):
                continue
            where = f"config key {section}.augmentation.{name}"
            if value[0] > value[1]:
                raise ConfigError(f"{where}: the range [{value[0]}, {value[1]}] is reversed")
            if name in _POSITIVE_RANGES and value[0] <= 0:
                raise ConfigError(f"{where}: factors must be positive, got [{value[0]}, {value[1]}]")
            if value[0] < 0:
                raise ConfigError(f"{where}: must not be negative, got [{value[0]}, {value[1]}]")
    tau = cfg.get("search", {}).get("tau")
    if tau and not tau["end"] < tau["start"]:
        raise ConfigError(
            f"config key search.tau: the schedule must decrease (end {tau['end']} is not below start {tau['start']})"
        )
    if "folds" in cfg and "num_folds" in cfg:
        bad = [k for k in cfg["folds"] if k >= cfg["num_folds"]]
        if bad:
            raise ConfigError(f"config key folds: fold {bad[0]} does not exist with num_folds={cfg['num_folds']}")
    for name, task in (cfg.get("tasks") or {}).items():
        folds = (task.get("nnunet_folds") or []) if isinstance(task, Mapping) else []
        reference = [k for k in folds if k >= cfg.get("num_folds", 5)]
        if reference:
            raise ConfigError(
                f"config key tasks.{name}.nnunet_folds: fold {reference[0]} does not exist with "
                f"num_folds={cfg.get('num_folds', 5)}"
            )
        synthetic = task.get("synthetic") if isinstance(task, Mapping) else None
        if synthetic and "num_folds" in cfg and synthetic.get("cases", 10) < cfg["num_folds"]:
            raise ConfigError(
                f"config key tasks.{name}.synthetic.cases: {synthetic['cases']} cases cannot fill "
                f"num_folds={cfg['num_folds']} folds"
            )
    tasks = cfg.get("tasks")
    for name in cfg.get("run_tasks") or []:
        if tasks is not None and name not in tasks:
            raise ConfigError(f"config key run_tasks: task {name!r} is not in tasks")
    transfer = cfg.get("transfer")
    if transfer and tasks:
        names = [transfer["source_task"], *transfer["targets"]] if transfer["source_task"] else transfer["targets"]
        for name in names:
            if name not in tasks:
                raise ConfigError(f"config key transfer: task {name!r} is not in tasks")
        if transfer["targets"] and not transfer["source_task"]:
            raise ConfigError("config key transfer.source_task: targets are set but no source task")
        if transfer["source_task"] and transfer["source_fold"] >= cfg.get("num_folds", 5):
            raise ConfigError(f"config key transfer.source_fold: fold {transfer['source_fold']} does not exist")


def _describe(err) -> str:
    if err.validator == "additionalProperties":
        allowed = ", ".join(err.schema.get("properties", {})) or "none"
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        return f"unknown key {', '.join(map(repr, extra))} (allowed: {allowed})"
    if err.validator == "oneOf" and isinstance(err.instance, dict) and "dataset" in json.dumps(err.schema):
        return "a task needs exactly one of 'dataset' or 'synthetic'"
    return err.message


def _build(cls: type, data: Any, where: str) -> Any:
    """Turn validated, default-filled data into dataclass `cls` (recursively)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in ("raw", "resolved") or f.name not in data:
            continue
        kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}{f.name}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{where}.")
    if origin is tuple:
        return tuple(value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in args:
            if arg is type(None):
                continue
            if dataclasses.is_dataclass(arg):
                return _build(arg, value, f"{where}.")
            if typing.get_origin(arg) is tuple:
                return tuple(value)
        return value
    return value


def load(sources: list[str | os.PathLike | Mapping] | str | os.PathLike | Mapping) -> Config:
    """Load one or more config files (or mappings), later ones merged over earlier, then validate."""
    if not isinstance(sources, list):
        sources = [sources]
    merged: dict = {}
    for src in sources:
        merged = deep_merge(merged, read_config_source(src))
    return from_dict(merged)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-7` as a string; accept JSON-style floats like YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def read_config_source(src: str | os.PathLike | Mapping) -> dict:
    """A mapping, a YAML/JSON file, or inline JSON/YAML text starting with '{'."""
    if isinstance(src, Mapping):
        return dict(src)
    text_src = str(src)
    if text_src.lstrip().startswith("{"):
        try:
            data = yaml.load(text_src, Loader=_Loader)
        except yaml.YAMLError as e:
            raise ConfigError(f"inline config: not valid JSON/YAML ({e.__class__.__name__})") from None
        return data
    path = Path(text_src)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, not {type(data).__name__}")
    return data


def from_dict(data: Mapping) -> Config:
    """Validate a (possibly partial) config mapping and build the typed Config."""
    validated = validate(data)
    if not validated["tasks"]:
        raise ConfigError("config key tasks: no task is configured")
    tasks = {
        name: TaskConfig(
            name=name,
            dataset=t.get("dataset"),
            synthetic=_build(SyntheticSpec, t["synthetic"], "") if "synthetic" in t else None,
            splits_file=t.get("splits_file"),
            models=tuple(t["models"]) if "models" in t else None,
            overrides=t.get("overrides", {}),
            nnunet_folds=tuple(t.get("nnunet_folds", ())),
        )
        for name, t in validated["tasks"].items()
    }
    cfg = _build(Config, {**validated, "tasks": {}}, "")
    cfg = dataclasses.replace(cfg, tasks=tasks, raw=validated)
    for name in (None, *tasks):  # every task's merged sections, validated now and once
        cfg.resolved[name] = cfg._resolve_settings(name)
    return cfg


def task_settings(data: Mapping) -> TaskSettings:
    """A TaskSettings from a mapping holding (some of) seed and the sections; defaults fill the rest.

    Built once per process for equal data: the launcher, the job target and the stage all ask for it.
    """
    unknown = set(data) - {"seed", *SECTIONS}
    if unknown:
        raise ConfigError(
            f"config key {sorted(unknown)[0]}: not a stage setting (allowed: seed, {', '.join(SECTIONS)})"
        )
    try:
        key = json.dumps(data, sort_keys=True, allow_nan=False)
    except ValueError:
        return _task_settings(data)
    return _task_settings_cached(key)


@lru_cache(maxsize=32)
def _task_settings_cached(key: str) -> TaskSettings:
    return _task_settings(json.loads(key))


def _task_settings(data: Mapping) -> TaskSettings:
    return _build(TaskSettings, validate(dict(data)), "")


def dataclass_to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {
            f.name: dataclass_to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.name not in ("raw", "resolved") and getattr(obj, f.name) is not None
        }
    if isinstance(obj, (list, tuple)):
        return [dataclass_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dataclass_to_dict(v) for k, v in obj.items()}
    return obj
