"""Operations, cells and the search network: shapes, which operations run, where gradients go."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

import scnas.nas.search_network as search_network
from scnas.nas import CELL_TYPES, MACRO, OPERATIONS, OPS, SearchNetwork, cell_edges, sample_edges
from scnas.nas.cells import level_channels
from scnas.nas.conv import Conv3d
from scnas.nas.operations import AvgPool, FactorizedReduce
from scnas.nas.search_network import MixedEdge

ZERO = OPERATIONS.index("zero")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_operation_table_order():
    assert tuple(OPS) == OPERATIONS
    assert len(OPERATIONS) == 8


@pytest.mark.parametrize("name", OPERATIONS)
@pytest.mark.parametrize("stride", [1, 2])
def test_operation_shapes_odd_and_even(name, stride):
    op = OPS[name](6, 6, stride)
    x = torch.randn(2, 6, 7, 8, 5)
    y = op(x)
    assert y.shape == (2, 6, *(math.ceil(n / stride) for n in (7, 8, 5)))
    if name == "zero":
        assert not y.any()


def test_operations_are_leakyrelu_conv_instancenorm():
    conv = OPS["conv3"](4, 4, 2)
    assert [type(m) for m in conv] == [nn.LeakyReLU, Conv3d, nn.InstanceNorm3d]  # an nn.Conv3d (scnas.nas.conv)
    assert conv[1].stride == (2, 2, 2) and conv[1].kernel_size == (3, 3, 3)
    assert conv[2].affine
    for rate in (2, 3, 4):
        sep = OPS[f"sep_dil_conv3_r{rate}"](4, 4, 1)
        assert [type(m) for m in sep] == [nn.LeakyReLU, nn.Conv3d, nn.Conv3d, nn.InstanceNorm3d]
        assert sep[1].dilation == (rate,) * 3 and sep[1].groups == 4
        assert sep[2].kernel_size == (1, 1, 1)
    assert isinstance(OPS["identity"](4, 4, 1), nn.Identity)
    assert isinstance(OPS["identity"](4, 4, 2), FactorizedReduce)


@pytest.mark.parametrize("stride", [1, 2])
def test_avg_pool_counts_only_voxels_inside(stride):
    """Against a numpy mean over in-bounds 3x3x3 neighbours, including inputs smaller than the kernel."""
    for shape in [(2, 2, 1), (4, 3, 5)]:
        x = torch.randn(1, 2, *shape, dtype=torch.float64)
        y = AvgPool(stride)(x).numpy()
        a = x.numpy()
        out = [range(0, n, stride) for n in shape]
        ref = np.zeros((1, 2, *(len(r) for r in out)))
        for p, i in enumerate(out[0]):
            for q, j in enumerate(out[1]):
                for r, k in enumerate(out[2]):
                    ref[..., p, q, r] = a[
                        ..., max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, max(k - 1, 0) : k + 2
                    ].mean(axis=(-3, -2, -1))
        np.testing.assert_allclose(y, ref, rtol=1e-12)


def _cell_output_shapes(net, x):
    shapes = {}
    hooks = [
        cell.register_forward_hook(lambda m, i, o, name=plan.name: shapes.__setitem__(name, tuple(o.shape)))
        for plan, cell in zip(MACRO, net.cells)
    ]
    with torch.no_grad():
        logits = net(x)
    for h in hooks:
        h.remove()
    return logits, shapes


@pytest.mark.parametrize("sampling", ["two", "all", "one"])
@pytest.mark.parametrize("batch,spatial", [(2, (16, 17, 24)), (1, (31, 32, 17))])
def test_every_cell_has_the_documented_shape(sampling, batch, spatial):
    stem = 8
    torch.manual_seed(0)
    net = SearchNetwork(in_channels=3, num_classes=5, stem_channels=stem, sampling=sampling)
    logits, shapes = _cell_output_shapes(net, torch.randn(batch, 3, *spatial))
    assert logits.shape == (batch, 5, *spatial)
    assert [p.cell_type for p in MACRO].count("encoder_normal") == 3
    for plan in MACRO:
        size = tuple(math.ceil(n / 2**plan.level) for n in spatial)
        assert shapes[plan.name] == (batch, stem * 2**plan.level, *size), plan.name
    assert [p.level for p in MACRO] == [1, 1, 2, 2, 3, 3, 2, 2, 1, 1, 0, 0]


def test_parameters_split_into_alphas_and_weights():
    net = SearchNetwork(2, 2, 4)
    arch = net.arch_parameters()
    assert len(arch) == 4
    assert all(a.shape == (14, 8) for a in arch)
    assert all(a.abs().max() < 0.01 for a in arch)
    weights = net.weight_parameters()
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in weights)
    assert len(arch) + len(weights) == len(list(net.parameters()))
    assert len(cell_edges()) == 14


def test_stem_width_sets_the_channels_of_every_level():
    """A multiple of num_nodes doubles exactly per level (the paper's); another width rounds each level to
    the nearest multiple of num_nodes, which moves the FLOPs in finer steps."""
    assert [level_channels(16, k) for k in range(4)] == [16, 32, 64, 128]
    assert [level_channels(14, k) for k in range(4)] == [16, 28, 56, 112]
    assert [level_channels(13, k) for k in range(4)] == [12, 28, 52, 104]
    assert [level_channels(10, k, num_nodes=4) for k in range(4)] == [12, 20, 40, 80]
    net = SearchNetwork(1, 2, 13)
    assert net.stem[0].out_channels == net.out.in_channels == 12
    assert [cell.node_width for cell in net.cells] == [7, 7, 13, 13, 26, 26, 13, 13, 7, 7, 3, 3]
    assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
    with pytest.raises(ValueError, match="at least num_nodes"):
        SearchNetwork(1, 2, 3)
    with pytest.raises(ValueError, match="unknown sampling"):
        SearchNetwork(1, 2, 8, sampling="both")


def _count_op_calls(net):
    """(cell index, edge index) -> Counter of op indices called in the next forward."""
    calls: dict[tuple[int, int], Counter] = {}
    hooks = []
    for c, cell in enumerate(net.cells):
        for e, (i, j) in enumerate(cell_edges()):
            edge = cell.edges[f"{i}->{j}"]
            assert isinstance(edge, MixedEdge)
            for k, op in enumerate(edge.ops):
                counter = calls.setdefault((c, e), Counter())
                hooks.append(op.register_forward_hook(lambda m, i, o, counter=counter, k=k: counter.update([k])))
    return calls, hooks


@pytest.mark.parametrize("sampling,per_edge", [("two", 2), ("all", 8), ("one", 1)])
def test_only_selected_operations_run(sampling, per_edge):
    torch.manual_seed(1)
    net = SearchNetwork(2, 2, 4, sampling=sampling, seed=3)
    calls, hooks = _count_op_calls(net)
    with torch.no_grad():
        net(torch.randn(1, 2, 16, 16, 16))
    for (c, e), counter in calls.items():
        active = net.last_sample[MACRO[c].cell_type].active[e]
        assert len(active) == per_edge
        assert counter == Counter(k for k in active if k != ZERO)  # each selected op once, zero never evaluated


def test_zero_weight_operations_are_skipped():
    torch.manual_seed(2)
    net = SearchNetwork(2, 2, 4, sampling="two", seed=0, tau=1e-4)
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.copy_(3.0 * torch.randn_like(alpha))
    calls, hooks = _count_op_calls(net)
    with torch.no_grad():
        net(torch.randn(1, 2, 16, 16, 16))
    singles = 0
    for (c, e), counter in calls.items():
        sample = net.last_sample[MACRO[c].cell_type]
        weights = sample.weights[e]
        assert counter == Counter(k for k in range(8) if k != ZERO and weights[k] > 1e-8)
        assert (weights > 0).sum() <= 2
        singles += len(sample.active[e]) == 1
    assert singles > 0.9 * len(calls)


def test_gradients_reach_sampled_alphas_and_sampled_operations_only():
    torch.manual_seed(4)
    net = SearchNetwork(2, 3, 4, sampling="two", seed=5)
    x = torch.randn(1, 2, 16, 16, 16)
    target = torch.randint(0, 3, (1, 16, 16, 16))
    nn.functional.cross_entropy(net(x), target).backward()
    for t, alpha in zip(CELL_TYPES, net.arch_parameters()):
        sampled = torch.zeros(14, 8, dtype=torch.bool)
        for e, ops in enumerate(net.last_sample[t].active):
            sampled[e, list(ops)] = True
        assert ((alpha.grad != 0) == sampled).all(), t
    for plan, cell in zip(MACRO, net.cells):
        active = net.last_sample[plan.cell_type].active
        for e, (i, j) in enumerate(cell_edges()):
            for k, op in enumerate(cell.edges[f"{i}->{j}"].ops):
                for p in op.parameters():
                    assert (p.grad is not None) == (k in active[e]), (plan.name, e, OPERATIONS[k])
        assert all(p.grad is not None for p in cell.pre0.parameters())
    assert all(p.grad is not None for p in net.stem.parameters())
    assert all(p.grad is not None for p in net.out.parameters())


def test_straight_through_one_sample_gives_alpha_gradient():
    torch.manual_seed(4)
    net = SearchNetwork(2, 2, 4, sampling="one", seed=5)
    net(torch.randn(1, 2, 16, 16, 16)).square().mean().backward()
    for t, alpha in zip(CELL_TYPES, net.arch_parameters()):
        for e, ops in enumerate(net.last_sample[t].active):
            if ops != (ZERO,):
                assert (alpha.grad[e] != 0).all()


def test_cells_of_one_type_share_one_draw_per_forward(monkeypatch):
    net = SearchNetwork(2, 2, 4, sampling="two", seed=0)
    owner = {id(edge): plan.cell_type for plan, cell in zip(MACRO, net.cells) for edge in cell.edges.values()}
    storages: dict[str, set] = {t: set() for t in CELL_TYPES}
    original = MixedEdge.forward

    def spy(self, x, weights, active):
        storages[owner[id(self)]].add(weights.untyped_storage().data_ptr())
        return original(self, x, weights, active)

    monkeypatch.setattr(MixedEdge, "forward", spy)
    state = net.sampler_state()
    with torch.no_grad():
        net(torch.randn(1, 2, 16, 16, 16))
    assert all(len(ptrs) == 1 for ptrs in storages.values())
    assert len(set.union(*storages.values())) == 4
    # Four draws of 14 edges each: the generator advanced exactly as four sample_edges calls would.
    replay = torch.Generator()
    replay.set_state(state)
    for t in CELL_TYPES:
        expected = sample_edges("two", net.alphas[t].detach(), net.tau, replay)
        assert expected.active == net.last_sample[t].active
    assert torch.equal(replay.get_state(), net.sampler_state())


def test_sampler_is_seeded_and_resumable():
    x = torch.randn(1, 2, 16, 16, 16)
    a = SearchNetwork(2, 2, 4, seed=9)
    b = SearchNetwork(2, 2, 4, seed=9)
    with torch.no_grad():
        a(x)
        b(x)
        assert all(a.last_sample[t].active == b.last_sample[t].active for t in CELL_TYPES)
        state = a.sampler_state()
        a(x)
        first = {t: a.last_sample[t].active for t in CELL_TYPES}
        a.load_sampler_state(state)
        a(x)
        assert {t: a.last_sample[t].active for t in CELL_TYPES} == first


def test_genotype_is_argmax_of_alpha_zero_allowed():
    net = SearchNetwork(2, 2, 4)
    rng = np.random.default_rng(0)
    choice = {t: rng.integers(0, 8, size=14) for t in CELL_TYPES}
    with torch.no_grad():
        for t, alpha in zip(CELL_TYPES, net.arch_parameters()):
            alpha[torch.arange(14), torch.as_tensor(choice[t])] += 1.0
    with torch.no_grad():
        net.alphas["reduction"][3] = -1.0
        net.alphas["reduction"][3, ZERO] = 2.0
    geno = net.genotype()
    for t in CELL_TYPES:
        expected = [OPERATIONS[k] for k in choice[t]]
        if t == "reduction":
            expected[3] = "zero"
        assert [op for _, _, op in geno.cells[t]] == expected
        assert [(i, j) for i, j, _ in geno.cells[t]] == list(cell_edges())


def _pair(sampling, recompute_min, monkeypatch):
    """Two search networks with the same weights and sampler, recomputing and not."""
    monkeypatch.setattr(search_network, "RECOMPUTE_MIN_ELEMENTS", recompute_min)
    torch.manual_seed(0)
    kept = SearchNetwork(2, 3, 8, sampling=sampling, seed=4, recompute=False)
    recomputing = SearchNetwork(2, 3, 8, sampling=sampling, seed=4)
    recomputing.load_state_dict(kept.state_dict())
    return kept, recomputing


def _saved_bytes(net, x):
    """Bytes of the distinct storages autograd keeps for the backward pass of one forward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    return sum(storages.values())


@pytest.mark.parametrize("sampling", ["two", "all", "one"])
def test_recomputation_keeps_the_function_and_its_gradients(sampling, monkeypatch):
    kept, recomputing = _pair(sampling, 0, monkeypatch)
    x = torch.randn(2, 2, 16, 12, 10)
    target = torch.randint(0, 3, (2, 16, 12, 10))
    outputs = []
    for net in (kept, recomputing):
        logits = net(x)
        nn.functional.cross_entropy(logits, target).backward()
        outputs.append(logits.detach())
    assert [s.active for s in kept.last_sample.values()] == [s.active for s in recomputing.last_sample.values()]
    assert torch.equal(outputs[0], outputs[1])
    grads = [{n: p.grad for n, p in net.named_parameters()} for net in (kept, recomputing)]
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        other = grads[1][name]
        assert (grad is None) == (other is None), name
        assert grad is None or torch.equal(grad, other), name


def test_recomputation_keeps_a_third_for_the_backward_pass(monkeypatch):
    kept, recomputing = _pair("two", 0, monkeypatch)
    x = torch.randn(1, 2, 16, 16, 16)
    assert _saved_bytes(recomputing, x) < 0.4 * _saved_bytes(kept, x)


def test_small_regions_run_as_usual(monkeypatch):
    kept, recomputing = _pair("two", search_network.RECOMPUTE_MIN_ELEMENTS, monkeypatch)
    x = torch.randn(1, 2, 16, 16, 16)
    assert _saved_bytes(recomputing, x) == _saved_bytes(kept, x)


def test_recomputing_network_has_the_same_parameter_names():
    kept = SearchNetwork(2, 3, 8, recompute=False)
    recomputing = SearchNetwork(2, 3, 8)
    assert list(kept.state_dict()) == list(recomputing.state_dict())
    assert all(isinstance(cell.pre0, search_network.RecomputedPreprocess) for cell in recomputing.cells)
