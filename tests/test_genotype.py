"""Genotype JSON (round trip, one-line refusals) and the network a genotype describes."""

import json
import math

import pytest
import torch
import torch.nn as nn

from scnas.errors import ScnasError
from scnas.models.genotype_network import GenotypeNetwork
from scnas.nas import (
    CELL_TYPES,
    MACRO,
    OPERATIONS,
    Genotype,
    GenotypeError,
    cell_edges,
    genotype_from_dict,
    genotype_to_dict,
    load_genotype,
    save_genotype,
)
from scnas.nas.operations import AvgPool, ConvBlock, FactorizedReduce, MaxPool, SepDilConv

EDGES = cell_edges()


pytestmark = pytest.mark.usefixtures("one_thread")


def _cells(pattern=OPERATIONS):
    """Every cell type cycles through `pattern` (shifted per type), so all operations appear."""
    return {
        t: tuple((i, j, pattern[(e + 3 * n) % len(pattern)]) for e, (i, j) in enumerate(EDGES))
        for n, t in enumerate(CELL_TYPES)
    }


def _write(tmp_path, data, name="genotype.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_round_trip_and_file_layout(tmp_path):
    genotype = Genotype(cells=_cells())
    path = tmp_path / "search" / "genotype.json"
    save_genotype(path, genotype, source={"task": "Task01_BrainTumour", "fold": 0})
    assert load_genotype(path) == genotype
    data = json.loads(path.read_text())
    assert data["format"] == "scnas-genotype"
    assert data["version"] == 1
    assert data["num_nodes"] == 4
    assert data["operations"] == list(OPERATIONS)
    assert data["source"] == {"task": "Task01_BrainTumour", "fold": 0}
    assert data["cells"]["reduction"][0] == [0, 2, genotype.cells["reduction"][0][2]]
    assert list(tmp_path.joinpath("search").iterdir()) == [path]


def test_dict_round_trip_for_model_specs():
    genotype = Genotype(cells=_cells())
    data = genotype_to_dict(genotype)
    assert "source" not in data
    assert genotype_from_dict(json.loads(json.dumps(data))) == genotype
    data["cells"]["reduction"][0][2] = "conv9"
    with pytest.raises(GenotypeError, match="unknown operation 'conv9'"):
        genotype_from_dict(data)


def test_edges_in_any_order_load_canonically(tmp_path):
    data = Genotype(cells=_cells()).to_dict()
    data["cells"]["expansion"] = data["cells"]["expansion"][::-1]
    loaded = load_genotype(_write(tmp_path, data))
    assert [(i, j) for i, j, _ in loaded.cells["expansion"]] == list(EDGES)
    assert loaded == Genotype(cells=_cells())


def _bad(data: dict, edit) -> dict:
    edit(data)
    return data


BAD_FILES = {
    "unknown op": (lambda d: d["cells"]["reduction"][2].__setitem__(2, "conv5"), "unknown operation 'conv5'"),
    "unknown listed op": (lambda d: d["operations"].append("sep_conv7"), "unknown operation 'sep_conv7'"),
    "edge count": (lambda d: d["cells"]["decoder_normal"].pop(), "has 13 edges, expected 14"),
    "endpoints": (lambda d: d["cells"]["expansion"][0].__setitem__(1, 6), "edge (0, 6)"),
    "backward edge": (lambda d: d["cells"]["expansion"][4].__setitem__(0, 3), "edge (3, 3)"),
    "duplicate": (lambda d: d["cells"]["expansion"].__setitem__(1, [0, 2, "zero"]), "lists edge (0, 2) twice"),
    "edge shape": (lambda d: d["cells"]["expansion"].__setitem__(1, [1, 2]), "expected [from, to, op]"),
    "missing type": (lambda d: d["cells"].pop("expansion"), "missing cell type 'expansion'"),
    "unknown type": (lambda d: d["cells"].__setitem__("bottleneck", []), "unknown cell type 'bottleneck'"),
    "future version": (lambda d: d.__setitem__("version", 2), "version 2 is newer"),
    "format tag": (lambda d: d.__setitem__("format", "darts-genotype"), "format tag is 'darts-genotype'"),
    "unknown key": (lambda d: d.__setitem__("normal", []), "unknown key 'normal'"),
    "missing cells": (lambda d: d.pop("cells"), "missing key 'cells'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_genotype_files_are_refused_in_one_line(tmp_path, case):
    edit, message = BAD_FILES[case]
    path = _write(tmp_path, _bad(Genotype(cells=_cells()).to_dict(), edit))
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    assert message in text
    assert isinstance(info.value, ScnasError)


@pytest.mark.parametrize("content,message", [('{"format": ', "not valid JSON"), ("[1, 2]", "top level")])
def test_unparsable_files_are_refused(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(GenotypeError, match=message) as info:
        load_genotype(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(GenotypeError, match="not found"):
        load_genotype(tmp_path / "nope.json")


HAND = {
    "encoder_normal": [
        "conv3",
        "zero",
        "sep_dil_conv3_r2",
        "identity",
        "max_pool3",
        "zero",
        "avg_pool3",
        "sep_dil_conv3_r4",
        "conv3",
        "identity",
        "zero",
        "sep_dil_conv3_r3",
        "conv3",
        "avg_pool3",
    ],
    "reduction": [
        "identity",
        "max_pool3",
        "avg_pool3",
        "conv3",
        "identity",
        "sep_dil_conv3_r3",
        "zero",
        "conv3",
        "max_pool3",
        "sep_dil_conv3_r2",
        "identity",
        "zero",
        "avg_pool3",
        "conv3",
    ],
    # node 2 of the decoder-normal cell has only zero inputs: it must output zeros.
    "decoder_normal": [
        "zero",
        "zero",
        "conv3",
        "sep_dil_conv3_r4",
        "identity",
        "avg_pool3",
        "conv3",
        "zero",
        "max_pool3",
        "conv3",
        "identity",
        "sep_dil_conv3_r2",
        "zero",
        "conv3",
    ],
    "expansion": [
        "sep_dil_conv3_r3",
        "conv3",
        "identity",
        "zero",
        "avg_pool3",
        "conv3",
        "max_pool3",
        "identity",
        "sep_dil_conv3_r2",
        "zero",
        "conv3",
        "sep_dil_conv3_r4",
        "identity",
        "max_pool3",
    ],
}


def _expected_type(op, stride):
    return {
        "conv3": ConvBlock,
        "sep_dil_conv3_r2": SepDilConv,
        "sep_dil_conv3_r3": SepDilConv,
        "sep_dil_conv3_r4": SepDilConv,
        "max_pool3": MaxPool,
        "avg_pool3": AvgPool,
        "identity": FactorizedReduce if stride == 2 else nn.Identity,
    }[op]


def test_genotype_network_has_the_genotype_structure_and_runs():
    genotype = Genotype(cells={t: tuple((i, j, op) for (i, j), op in zip(EDGES, ops)) for t, ops in HAND.items()})
    torch.manual_seed(0)
    net = GenotypeNetwork(genotype, in_channels=2, num_classes=3, stem_channels=12)
    for plan, cell in zip(MACRO, net.cells):
        ops = HAND[plan.cell_type]
        assert set(cell.edges) == {f"{i}->{j}" for (i, j), op in zip(EDGES, ops) if op != "zero"}
        for (i, j), op in zip(EDGES, ops):
            if op == "zero":
                continue
            stride = 2 if plan.cell_type == "reduction" and i < 2 else 1
            module = cell.edges[f"{i}->{j}"]
            assert type(module) is _expected_type(op, stride), (plan.name, i, j, op)
            if op == "conv3":
                assert module[1].stride == (stride,) * 3
            if op.startswith("sep_dil"):
                assert module[1].dilation == (int(op[-1]),) * 3 and module[1].stride == (stride,) * 3
            if op.endswith("pool3"):
                assert module.stride in (stride, (stride,) * 3)
    assert not any("zero" in type(m).__name__.lower() for m in net.modules())

    outputs = {}
    for plan, cell in zip(MACRO, net.cells):
        cell.register_forward_hook(lambda m, i, o, name=plan.name: outputs.__setitem__(name, o))
    spatial = (17, 16, 24)
    with torch.no_grad():
        logits = net(torch.randn(2, 2, *spatial))
    assert logits.shape == (2, 3, *spatial)
    for plan in MACRO:
        size = tuple(math.ceil(n / 2**plan.level) for n in spatial)
        assert outputs[plan.name].shape == (2, 12 * 2**plan.level, *size)
        width = 12 * 2**plan.level // 4
        first_node = outputs[plan.name][:, :width]
        assert (first_node == 0).all() == (plan.cell_type == "decoder_normal")
    assert torch.isfinite(logits).all()


def test_genotype_network_any_input_channels_and_trains():
    genotype = Genotype(cells=_cells())
    for channels in (1, 4):
        net = GenotypeNetwork(genotype, in_channels=channels, num_classes=2, stem_channels=8)
        logits = net(torch.randn(1, channels, 16, 16, 16))
        logits.mean().backward()
        assert all(p.grad is not None for p in net.stem.parameters())
    with pytest.raises(ValueError, match="at least num_nodes"):
        GenotypeNetwork(genotype, 1, 2, 2)


def test_genotype_constructed_in_code_is_validated():
    cells = _cells()
    cells["reduction"] = cells["reduction"][:-1]
    with pytest.raises(GenotypeError, match="13 edges"):
        Genotype(cells=cells)


def test_random_genotypes_are_seeded_uniform_draws_and_the_cli_writes_them(tmp_path):
    from collections import Counter

    from scipy import stats

    from scnas.cli import main
    from scnas.nas.genotype import load_genotype, random_genotype

    assert random_genotype(0, 1) == random_genotype(0, 1)
    assert random_genotype(0, 1) != random_genotype(0, 2) != random_genotype(1, 1)
    counts = Counter(op for k in range(200) for edges in random_genotype(7, k).cells.values() for _, _, op in edges)
    assert set(counts) == set(OPERATIONS)
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3
    out = tmp_path / "random_2" / "genotype.json"
    assert main(["random-genotype", "--seed", "5", "--draw", "2", "--out", str(out)]) == 0
    assert load_genotype(out) == random_genotype(5, 2)
