"""Model specs for a task: which network a model name means, with its width resolved, and its cost.

A spec is JSON-able (checkpoints and jobs name architectures, not classes); `build_model` turns it into
a network.
"""

from __future__ import annotations

import os
from typing import Any

from scnas.config import MODELS, TrainConfig
from scnas.data.plans import Plans
from scnas.errors import ScnasError
from scnas.models.factory import build_model


def uresnet_spec(plans: Plans, train: TrainConfig) -> dict[str, Any]:
    """The U-ResNet baseline at the configured width."""
    return {
        "arch": "uresnet",
        "in_channels": int(plans.num_channels),
        "num_classes": plans.num_classes,
        "base_channels": train.uresnet_channels,
        "combine_levels": train.deep_supervision,
    }


def model_spec(model: str, plans: Plans, train: TrainConfig, genotype: str | os.PathLike | None) -> dict[str, Any]:
    """The architecture of `model` for this task, with the stem width resolved (match_flops)."""
    baseline = uresnet_spec(plans, train)
    if model == "uresnet":
        return baseline
    if model not in MODELS:
        raise ScnasError(f"model {model!r}: unknown (known: {', '.join(MODELS)})")
    if genotype is None:
        raise ScnasError(f"model {model}: needs a genotype file (--genotype)")
    from scnas.nas.genotype import genotype_to_dict, load_genotype

    spec = {
        "arch": "genotype",
        "in_channels": baseline["in_channels"],
        "num_classes": baseline["num_classes"],
        "genotype": genotype_to_dict(load_genotype(genotype)),
    }
    if not train.upsample_before_reduce:  # absent means the paper's form, so older specs keep their fingerprints
        spec["upsample_before_reduce"] = False
    stem = train.scnas_stem_channels
    if stem == "match_flops":
        from scnas.models.flops import count_gflops, match_width

        shape = input_shape(plans)
        target = count_gflops(build_model(baseline), shape)
        stem, _ = match_width(lambda c: build_model({**spec, "stem_channels": c}), target, shape, lo=4, hi=256)
    return {**spec, "stem_channels": int(stem)}


def input_shape(plans: Plans) -> tuple[int, ...]:
    """(1, C, *patch): one training patch."""
    return (1, int(plans.num_channels), *plans.patch_size)


def flops_report(spec: dict[str, Any], plans: Plans, train: TrainConfig) -> dict[str, Any]:
    """GFLOPs of one forward pass at the task's patch size, for this model and the U-ResNet baseline."""
    from scnas.models.flops import count_gflops

    shape = input_shape(plans)
    own = count_gflops(build_model(spec), shape)
    base = own if spec["arch"] == "uresnet" else count_gflops(build_model(uresnet_spec(plans, train)), shape)
    return {"gflops": own, "uresnet_gflops": base, "patch_size": list(plans.patch_size)}
