"""The search finds a planted answer: on a task only sep_dil_conv3_r4 can solve (scnas.data.planted) it
selects that operation on every edge of the reduced space on 3 seeds, the derived network beats random
genotypes at matched FLOPs, and on a control task that operation cannot reach it is not selected.

About 3 minutes on one CPU thread (3 searches of 500 weight + 500 alpha steps, a control search, four
short retrainings); `python -m tests.sanity.planted` writes the measured figures to benchmarks/results.
"""

from __future__ import annotations

import math

import pytest
import torch

from scnas.data.planted import OFFSET, PLANTED_OPERATION, planted_case
from scnas.models.genotype_network import GenotypeNetwork
from scnas.nas import CELL_TYPES, OPERATIONS, cell_edges
from scnas.nas.cells import CellPlan
from scnas.nas.genotype import Genotype

from .planted import MACRO, NUM_NODES, run

SEEDS = (0, 1, 2)
REACH_2 = {"conv3", "sep_dil_conv3_r2", "sep_dil_conv3_r3"}
"""The operations that, composed with the stem's +-1, single out a voxel 2 away; the pools only blur it
with its neighbours, and sep_dil_conv3_r4 (0, +-3, +-4, +-5 with the stem) misses it."""


def test_the_label_is_the_thresholded_intensity_offset_voxels_along_x():
    image, label = planted_case(seed=3, index=1, size=12, offset=5, threshold=0.5)
    for x, y, z in [(0, 0, 0), (6, 11, 3), (2, 5, 9)]:
        assert label[x, y, z] == (image[x + 5, y, z] > 0.5)
    assert not label[7:].any()


def _reach_along_x(op: str) -> set[int]:
    """The x-offsets d at which the reduced-space network with `op` on both edges depends on its input:
    where the gradient of its logit at the centre of a 15^3 input with respect to input voxel centre + d
    is non-zero for one of 4 random inputs. InstanceNorm is replaced by the identity, since its
    statistics over the whole patch couple every voxel (weakly, and with nothing about any one voxel)."""
    torch.manual_seed(0)
    net = GenotypeNetwork(_uniform(op), 1, 2, 8, macro=MACRO).double().eval()
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.InstanceNorm3d):
                setattr(module, name, torch.nn.Identity())
    reach = set()
    for _ in range(4):
        x = torch.randn(1, 1, 15, 15, 15, dtype=torch.float64, requires_grad=True)
        net(x)[0, 1, 7, 7, 7].backward()
        reach |= {d - 7 for d in range(15) if x.grad[0, 0, d, 7, 7] != 0}
    return reach


@pytest.mark.parametrize("op", [op for op in OPERATIONS if op != "zero"])
def test_only_the_planted_operation_reaches_the_deciding_voxel(op):
    reach = _reach_along_x(op)
    expected = {"identity": 1, "sep_dil_conv3_r2": 3, "sep_dil_conv3_r3": 4, "sep_dil_conv3_r4": 5}.get(op, 2)
    assert max(reach) == expected
    assert (OFFSET in reach) == (op == PLANTED_OPERATION)


def test_the_reduced_macro_structure_is_checked():
    with pytest.raises(ValueError, match="not the stem or an earlier cell"):
        GenotypeNetwork(_uniform("identity"), 1, 2, 8, macro=(CellPlan("a", "encoder_normal", 0, ("stem", "b")),))
    with pytest.raises(ValueError, match="must output level 0"):
        GenotypeNetwork(_uniform("identity"), 1, 2, 8, macro=(CellPlan("a", "reduction", 1, ("stem", "stem")),))


def _uniform(op: str) -> Genotype:
    cells = {t: tuple((i, j, op) for i, j in cell_edges(NUM_NODES)) for t in CELL_TYPES}
    return Genotype(cells=cells, num_nodes=NUM_NODES)


@pytest.mark.slow
def test_the_search_recovers_the_planted_operation(tmp_path):
    result = run(tmp_path, SEEDS, random_draws=3, control_offset=2)
    uniform_entropy = math.log(len(OPERATIONS))
    for row in result["seeds"]:
        assert row["edges"] == 2
        assert row["genotype_ops"] == [PLANTED_OPERATION] * row["edges"], row["seed"]
        assert min(row["planted_prob"]) > 1.3 / len(OPERATIONS), row["seed"]
        assert row["entropy"] < uniform_entropy
        assert row["alpha_steps"] == 500
        derived, randoms = row["derived"], row["random"]
        assert derived["dice"] > 0.9
        for other in randoms:
            assert PLANTED_OPERATION not in other["ops"]
            assert abs(other["gflops"] / derived["gflops"] - 1) < 0.1
            assert other["dice"] < derived["dice"] - 0.3
            assert other["dice"] < result["chance_dice"] + 0.03
    control = result["control"]
    assert PLANTED_OPERATION not in control["genotype_ops"]
    assert set(control["genotype_ops"]) <= REACH_2
