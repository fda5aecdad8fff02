"""The macro-structure the networks compute, traced through their data flow, against the paper's wiring.

The paper (section 2.1, footnote 1; DESIGN.md "Search space"): stem -> [red, enc, red, enc, red] -> inter
-> [exp, dec, exp, dec, exp, dec] -> out. Every cell takes the outputs of the two previous cells (s0 the
older, s1 the newer); the first reduction takes the stem twice. In the decoder the previous cell's output
is summed, before entering the cell, with the output of the encoder at that output's level: the last
encoder cell there (enc1 at level 1, enc2 at level 2, red3 at level 3, inter being the cell between the
two paths) or the stem at level 0.
"""

from dataclasses import replace
from itertools import combinations

import pytest
import torch

import scnas.nas.cells as cells
from scnas.models.genotype_network import GenotypeNetwork
from scnas.nas import CELL_TYPES, OPERATIONS, Genotype, SearchNetwork, cell_edges

RED, ENC, DEC, EXP = "reduction", "encoder_normal", "decoder_normal", "expansion"

# name: (cell type, level it reads at, level it writes, s0's sources, s1's sources summed)
PAPER = {
    "red1": (RED, 0, 1, {"stem"}, {"stem"}),
    "enc1": (ENC, 1, 1, {"stem"}, {"red1"}),
    "red2": (RED, 1, 2, {"red1"}, {"enc1"}),
    "enc2": (ENC, 2, 2, {"enc1"}, {"red2"}),
    "red3": (RED, 2, 3, {"red2"}, {"enc2"}),
    "inter": (ENC, 3, 3, {"enc2"}, {"red3"}),
    "exp1": (EXP, 2, 2, {"red3"}, {"inter", "red3"}),
    "dec1": (DEC, 2, 2, {"inter"}, {"exp1", "enc2"}),
    "exp2": (EXP, 1, 1, {"exp1"}, {"dec1", "enc2"}),
    "dec2": (DEC, 1, 1, {"dec1"}, {"exp2", "enc1"}),
    "exp3": (EXP, 0, 0, {"exp2"}, {"dec2", "enc1"}),
    "dec3": (DEC, 0, 0, {"dec2"}, {"exp3", "stem"}),
    "out": (None, None, 0, {"dec3"}, set()),
}
ORDER = tuple(PAPER)[:-1]
STEM = 8
IN_CHANNELS = 2
SIZE = (9, 10, 11)
LEVEL_SIZES = [(9, 10, 11), (5, 5, 6), (3, 3, 3), (2, 2, 2)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _sources(tensor: torch.Tensor, produced: dict[str, torch.Tensor]) -> set[str] | str:
    """The one set of (at most 3) earlier outputs whose sum is `tensor`; a description when there is none."""
    same = [name for name, t in produced.items() if t.shape == tensor.shape]
    found = [
        set(names)
        for k in (1, 2, 3)
        for names in combinations(same, k)
        if torch.allclose(sum(produced[n] for n in names), tensor, rtol=1e-5, atol=1e-6)
    ]
    return found[0] if len(found) == 1 else f"{len(found)} decompositions of a {tuple(tensor.shape)} tensor"


def _level(shape: torch.Size) -> int | str:
    spatial = tuple(shape[2:])
    return LEVEL_SIZES.index(spatial) if spatial in LEVEL_SIZES else f"size {spatial}"


def _genotype_cell_type(cell: cells.Cell) -> str:
    """Each cell type of _marked_genotype() cuts (zero) exactly one edge: the type's index."""
    missing = [k for k, (i, j) in enumerate(cell_edges()) if cells.edge_key(i, j) not in cell.edges]
    return CELL_TYPES[missing[0]] if len(missing) == 1 else f"cuts edges {missing}"


def _marked_genotype() -> Genotype:
    ops = [op for op in OPERATIONS if op != "zero"]
    return Genotype(
        cells={
            t: tuple((i, j, "zero" if e == n else ops[(e + n) % len(ops)]) for e, (i, j) in enumerate(cell_edges()))
            for n, t in enumerate(CELL_TYPES)
        }
    )


def trace(network: cells.CellNetwork) -> dict[str, tuple]:
    """Run the network once and record, per executed cell in order, what actually entered and left it.

    Cells are named by execution position (the k-th cell run is the paper's k-th); the type comes from
    the edge sample a search cell receives or from the edges a derived cell holds; s0 and s1 are the
    inputs of the cell's two preprocessing blocks, decomposed into sums of earlier outputs.
    """
    produced: dict[str, torch.Tensor] = {}
    rows: dict[str, list] = {}
    running: list[str] = []
    handles = []
    image = torch.randn(1, IN_CHANNELS, *SIZE)

    def stem_hook(_module, args, output):
        assert torch.equal(args[0], image), "the stem does not read the image"
        produced["stem"] = output.detach().clone()

    def cell_pre(cell, args):
        name = ORDER[len(rows)] if len(rows) < len(ORDER) else f"extra cell {len(rows)}"
        running.append(name)
        sample = args[3] if len(args) > 3 else None
        if sample is None:
            cell_type = _genotype_cell_type(cell)
        else:
            cell_type = next((t for t in CELL_TYPES if network.last_sample[t] is sample), "unknown sample")
        rows[name] = [cell_type, None, None, None, None]

    def cell_post(cell, _args, output):
        name = running.pop()
        level = _level(output.shape)
        width_ok = isinstance(level, int) and output.shape[1] == STEM * 2**level
        rows[name][2] = level if width_ok else f"{output.shape[1]} channels at {level}"
        produced[name] = output.detach().clone()

    def pre_hook(slot):
        def hook(_module, args):
            row = rows[running[-1]]
            row[1] = LEVEL_SIZES.index(tuple(args[1])) if tuple(args[1]) in LEVEL_SIZES else args[1]
            row[3 + slot] = _sources(args[0], produced)

        return hook

    def out_pre(_module, args):
        rows["out"] = [None, None, _level(args[0].shape), _sources(args[0], produced), set()]

    handles.append(network.stem.register_forward_hook(stem_hook))
    for cell in network.cells:
        handles += [cell.register_forward_pre_hook(cell_pre), cell.register_forward_hook(cell_post)]
        handles += [cell.pre0.register_forward_pre_hook(pre_hook(0)), cell.pre1.register_forward_pre_hook(pre_hook(1))]
    handles.append(network.out.register_forward_pre_hook(out_pre))
    try:
        with torch.no_grad():
            logits = network.eval()(image)
    finally:
        for h in handles:
            h.remove()
    assert logits.shape == (1, network.num_classes, *SIZE)
    return {name: tuple(row) for name, row in rows.items()}


def _networks():
    torch.manual_seed(0)
    return {
        "search": SearchNetwork(IN_CHANNELS, 3, STEM, sampling="two", seed=1),
        "derived": GenotypeNetwork(_marked_genotype(), IN_CHANNELS, 3, STEM),
    }


def test_the_level_sizes_used_here_are_ceil_halvings():
    assert cells.level_sizes(SIZE) == LEVEL_SIZES


@pytest.mark.parametrize("kind", ["search", "derived"])
def test_networks_compute_the_papers_macro_structure(kind):
    traced = trace(_networks()[kind])
    for name, expected in PAPER.items():
        assert traced.get(name) == expected, name
    assert list(traced) == list(PAPER)


def _feed_exp1_inter_twice(macro):
    return tuple(replace(p, inputs=("inter", "inter")) if p.name == "exp1" else p for p in macro)


def _dec2_skip_from_red1(macro):
    return tuple(replace(p, skip="red1") if p.name == "dec2" else p for p in macro)


def _enc2_reads_red1(macro):
    return tuple(replace(p, inputs=("red1", "red2")) if p.name == "enc2" else p for p in macro)


def _dec3_without_skip(macro):
    return tuple(replace(p, skip=None) if p.name == "dec3" else p for p in macro)


def _dec2_as_encoder_type(macro):
    return tuple(replace(p, cell_type=ENC) if p.name == "dec2" else p for p in macro)


@pytest.mark.parametrize(
    "rewire, cell",
    [
        (_feed_exp1_inter_twice, "exp1"),
        (_dec2_skip_from_red1, "dec2"),
        (_enc2_reads_red1, "enc2"),
        (_dec3_without_skip, "dec3"),
        (_dec2_as_encoder_type, "dec2"),
    ],
)
def test_a_rewired_macro_structure_is_caught(monkeypatch, rewire, cell):
    monkeypatch.setattr(cells, "MACRO", rewire(cells.MACRO))
    for kind, network in _networks().items():
        traced = trace(network)
        wrong = [name for name in PAPER if traced.get(name) != PAPER[name]]
        assert wrong == [cell], kind
