"""Genotype: the derived architecture (one operation per edge, per cell type) and its JSON file.

{"format": "scnas-genotype", "version": 1, "num_nodes": 4, "operations": [...],
 "cells": {"encoder_normal": [[0, 2, "conv3"], ...], ...}, "source": {...optional metadata...}}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from scnas.errors import ScnasError
from scnas.io import write_text
from scnas.nas.cells import CELL_TYPES, NUM_NODES, cell_edges
from scnas.nas.operations import OPERATIONS

GENOTYPE_FORMAT = "scnas-genotype"
GENOTYPE_VERSION = 1
_KEYS = ("format", "version", "num_nodes", "operations", "cells", "source")

Edge = tuple[int, int, str]


class GenotypeError(ScnasError):
    """A genotype (file) is malformed: unknown operation or cell type, wrong edges, version or format."""


@dataclass(frozen=True)
class Genotype:
    """Per cell type the 14 edges (from, to, op) in canonical order; validated on construction."""

    cells: Mapping[str, tuple[Edge, ...]]
    operations: tuple[str, ...] = OPERATIONS
    num_nodes: int = NUM_NODES
    version: int = GENOTYPE_VERSION
    edge_ops: Mapping[str, Mapping[tuple[int, int], str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        operations = _operations(self.operations)
        num_nodes = _positive_int(self.num_nodes, "num_nodes")
        version = _version(self.version)
        if not isinstance(self.cells, Mapping):
            raise GenotypeError("'cells' must map each cell type to its edges")
        unknown = sorted(set(self.cells) - set(CELL_TYPES), key=str)
        if unknown:
            raise GenotypeError(f"unknown cell type {unknown[0]!r} (expected {', '.join(CELL_TYPES)})")
        missing = [t for t in CELL_TYPES if t not in self.cells]
        if missing:
            raise GenotypeError(f"missing cell type {missing[0]!r}")
        edge_ops = {t: _cell_edges(t, self.cells[t], operations, num_nodes) for t in CELL_TYPES}
        object.__setattr__(self, "operations", operations)
        object.__setattr__(self, "num_nodes", num_nodes)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "edge_ops", edge_ops)
        canonical = {t: tuple((i, j, ops[i, j]) for i, j in cell_edges(num_nodes)) for t, ops in edge_ops.items()}
        object.__setattr__(self, "cells", canonical)

    def to_dict(self, source: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": GENOTYPE_FORMAT,
            "version": self.version,
            "num_nodes": self.num_nodes,
            "operations": list(self.operations),
            "cells": {t: [list(edge) for edge in self.cells[t]] for t in CELL_TYPES},
        }
        if source is not None:
            data["source"] = dict(source)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "Genotype":
        """Validate a parsed genotype file; raises GenotypeError with a one-line reason."""
        if not isinstance(data, dict):
            raise GenotypeError("not a genotype: the top level must be a JSON object")
        if data.get("format") != GENOTYPE_FORMAT:
            raise GenotypeError(f"format tag is {data.get('format')!r}, expected {GENOTYPE_FORMAT!r}")
        _version(data.get("version"))
        extra = sorted(set(data) - set(_KEYS))
        if extra:
            raise GenotypeError(f"unknown key {extra[0]!r} (allowed: {', '.join(_KEYS)})")
        for key in ("num_nodes", "operations", "cells"):
            if key not in data:
                raise GenotypeError(f"missing key {key!r}")
        if "source" in data and not isinstance(data["source"], dict):
            raise GenotypeError("'source' must be an object")
        return cls(
            cells=data["cells"], operations=data["operations"], num_nodes=data["num_nodes"], version=data["version"]
        )


def genotype_to_dict(genotype: Genotype) -> dict[str, Any]:
    """The genotype file's content (no source metadata), e.g. to embed in a model spec."""
    return genotype.to_dict()


def genotype_from_dict(data: Any) -> Genotype:
    """Validate an embedded genotype dict; raises GenotypeError with a one-line reason."""
    return Genotype.from_dict(data)


def save_genotype(path: str | os.PathLike, genotype: Genotype, source: Mapping[str, Any] | None = None) -> None:
    """Write the genotype JSON atomically, one edge per line; `source` is free metadata (task, fold, ...)."""
    write_text(path, format_genotype(genotype.to_dict(source)))


def format_genotype(data: dict[str, Any]) -> str:
    """Genotype JSON laid out for reading: each `[from, to, "op"]` edge on a line of its own."""
    lines = ["{"]
    items = list(data.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if key == "cells":
            lines.append('  "cells": {')
            cells = list(value.items())
            for m, (cell, edges) in enumerate(cells):
                body = ",\n".join(f"      {json.dumps(edge)}" for edge in edges)
                lines.append(f"    {json.dumps(cell)}: [\n{body}\n    ]" + ("," if m < len(cells) - 1 else ""))
            lines.append("  }" + comma)
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    return "\n".join(lines) + "\n}\n"


def load_genotype(path: str | os.PathLike) -> Genotype:
    """Read and validate a genotype file; any problem is one GenotypeError line naming the file."""
    try:
        with open(path) as f:
            data = json.load(f)
        return Genotype.from_dict(data)
    except FileNotFoundError:
        raise GenotypeError(f"{path}: genotype file not found") from None
    except json.JSONDecodeError as err:
        raise GenotypeError(f"{path}: not valid JSON ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GenotypeError(f"{path}: cannot read genotype ({err})") from None
    except GenotypeError as err:
        raise GenotypeError(f"{path}: {err}") from None


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GenotypeError(f"{what} must be a positive integer, got {value!r}")
    return value


def _version(value: Any) -> int:
    version = _positive_int(value, "version")
    if version > GENOTYPE_VERSION:
        raise GenotypeError(
            f"version {version} is newer than this scnas reads (up to {GENOTYPE_VERSION}); upgrade scnas"
        )
    return version


def _operations(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise GenotypeError("'operations' must be a list of operation names")
    for name in value:
        if name not in OPERATIONS:
            raise GenotypeError(f"unknown operation {name!r} in 'operations' (known: {', '.join(OPERATIONS)})")
    if len(set(value)) != len(value):
        raise GenotypeError("'operations' lists an operation twice")
    return tuple(value)


def _cell_edges(cell_type: str, edges: Any, operations: tuple[str, ...], num_nodes: int) -> dict[tuple[int, int], str]:
    expected = cell_edges(num_nodes)
    if isinstance(edges, (str, bytes)) or not isinstance(edges, (list, tuple)):
        raise GenotypeError(f"cell {cell_type!r}: edges must be a list of [from, to, op]")
    if len(edges) != len(expected):
        raise GenotypeError(
            f"cell {cell_type!r} has {len(edges)} edges, expected {len(expected)} for {num_nodes} nodes"
        )
    ops: dict[tuple[int, int], str] = {}
    for n, edge in enumerate(edges):
        if (
            not isinstance(edge, (list, tuple))
            or len(edge) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) for v in edge[:2])
            or not isinstance(edge[2], str)
        ):
            raise GenotypeError(f"cell {cell_type!r} edge #{n} is {edge!r}, expected [from, to, op]")
        i, j, op = edge
        if (i, j) not in expected:
            raise GenotypeError(f"cell {cell_type!r} has edge ({i}, {j}), which a {num_nodes}-node cell does not have")
        if (i, j) in ops:
            raise GenotypeError(f"cell {cell_type!r} lists edge ({i}, {j}) twice")
        if op not in operations:
            raise GenotypeError(
                f"cell {cell_type!r} edge ({i}, {j}) has unknown operation {op!r} (known: {', '.join(operations)})"
            )
        ops[i, j] = op
    return ops


def random_genotype(seed: int, draw: int, num_nodes: int = NUM_NODES) -> Genotype:
    """The random-genotype control: every edge's operation uniform over the candidates (zero included),
    drawn from (seed, draw) alone, so draw k is the same genotype wherever it is made."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, draw]))
    edges = cell_edges(num_nodes)
    cells = {t: tuple((i, j, OPERATIONS[int(rng.integers(len(OPERATIONS)))]) for i, j in edges) for t in CELL_TYPES}
    return Genotype(cells=cells, num_nodes=num_nodes)
