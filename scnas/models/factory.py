"""Build a network from a JSON-able spec, so checkpoints and jobs name architectures, not classes."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from scnas.errors import ScnasError

ARCHITECTURES = ("uresnet", "genotype")


def build_model(spec: dict[str, Any]) -> nn.Module:
    """spec: {"arch": "uresnet", in_channels, num_classes, base_channels, combine_levels}
    or {"arch": "genotype", in_channels, num_classes, stem_channels, genotype: <genotype JSON>,
    upsample_before_reduce (absent: true, the paper's form)}."""
    arch = spec.get("arch")
    if arch == "uresnet":
        from scnas.models.uresnet import UResNet

        return UResNet(
            spec["in_channels"],
            spec["num_classes"],
            base_channels=spec["base_channels"],
            combine_levels=spec.get("combine_levels", True),
        )
    if arch == "genotype":
        from scnas.models.genotype_network import GenotypeNetwork
        from scnas.nas.genotype import genotype_from_dict

        return GenotypeNetwork(
            genotype_from_dict(spec["genotype"]),
            spec["in_channels"],
            spec["num_classes"],
            spec["stem_channels"],
            upsample_before_reduce=spec.get("upsample_before_reduce", True),
        )
    raise ScnasError(f"model spec: unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")


def describe(spec: dict[str, Any]) -> str:
    if spec.get("arch") == "uresnet":
        return f"3D U-ResNet (first block {spec['base_channels']} channels)"
    return f"SCNAS network from genotype (stem {spec.get('stem_channels')} channels)"
