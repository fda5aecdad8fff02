"""Algorithm 1 (sample_two) and the baseline samplers, against independent numpy/scipy references."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from scnas.nas import sample_edges, sample_two
from scnas.nas.sampling import SKIP_BELOW, draw_pairs, gumbel_noise

ALPHA = torch.tensor([0.9, -0.4, 0.3, 0.0, -1.0, 0.6, -0.2, 0.1])
PAIRS = list(itertools.combinations(range(8), 2))


def _pair_of(weights: torch.Tensor) -> tuple[int, ...]:
    return tuple(torch.nonzero(weights).flatten().tolist())


def _pair_counts(weights: torch.Tensor) -> np.ndarray:
    """Rows with exactly two non-zero weights -> counts per pair (in PAIRS order)."""
    index = {pair: n for n, pair in enumerate(PAIRS)}
    counts = np.zeros(len(PAIRS))
    for row in weights:
        counts[index[_pair_of(row)]] += 1
    return counts


def test_gumbel_noise_is_standard_gumbel():
    g = gumbel_noise((50000,), torch.Generator().manual_seed(0)).numpy()
    assert stats.kstest(g, "gumbel_r").pvalue > 1e-3
    assert stats.kstest(g, "norm").pvalue < 1e-6


def test_sample_two_has_two_nonzero_weights_summing_to_one():
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        w = sample_two(ALPHA, tau=1.0, generator=gen)
        assert w.shape == (8,)
        assert len(_pair_of(w)) == 2
        assert (w >= 0).all()
        assert w.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_pair_weights_are_renormalised_relaxed_weights():
    """Replay the same Gumbel noise and check z_o1 / (z_o1 + z_o2) in float64 numpy."""
    for seed in range(20):
        tau = 0.7
        w = sample_two(ALPHA, tau, generator=torch.Generator().manual_seed(seed))
        g = gumbel_noise((1, 8), torch.Generator().manual_seed(seed))[0].numpy()
        logits = (ALPHA.double().numpy() + g) / tau
        z = np.exp(logits - logits.max())
        z /= z.sum()
        a, b = _pair_of(w)
        assert w[a].item() == pytest.approx(z[a] / (z[a] + z[b]), rel=1e-5)
        assert w[b].item() == pytest.approx(z[b] / (z[a] + z[b]), rel=1e-5)


def test_pair_draw_given_z_follows_algorithm_1():
    """Conditioned on z, the pair {o1, o2} is drawn with q = (z_o1 + z_o2) / (|O| - 1)."""
    z = torch.softmax(torch.tensor([1.5, 0.2, -0.3, 0.8, -1.2, 0.0, 0.4, -0.6], dtype=torch.float64), 0)
    n = 28000
    pairs = draw_pairs(z.expand(n, 8), torch.Generator().manual_seed(7))
    index = {pair: k for k, pair in enumerate(PAIRS)}
    counts = np.bincount([index[tuple(p)] for p in pairs.tolist()], minlength=len(PAIRS))
    zn = z.numpy()
    expected = np.array([(zn[a] + zn[b]) / 7 for a, b in PAIRS])
    assert expected.sum() == pytest.approx(1.0)
    assert stats.chisquare(counts, n * expected).pvalue > 1e-3
    assert stats.chisquare(counts, np.full(len(PAIRS), n / len(PAIRS))).pvalue < 1e-6


def test_pair_frequencies_match_expected_q_over_gumbel_noise():
    """P({o1, o2}) = E_g[(z_o1 + z_o2)] / (|O| - 1); E_g[z] by float64 Monte-Carlo with numpy's RNG."""
    tau = 1.0
    n = 20000
    weights = sample_two(ALPHA.expand(n, 8), tau, generator=torch.Generator().manual_seed(3))
    counts = _pair_counts(weights)
    rng = np.random.default_rng(0)
    logits = (ALPHA.double().numpy() + rng.gumbel(size=(1_000_000, 8))) / tau
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    mean_z = (z / z.sum(axis=1, keepdims=True)).mean(axis=0)
    expected = np.array([(mean_z[a] + mean_z[b]) / 7 for a, b in PAIRS])
    assert stats.chisquare(counts, n * expected / expected.sum()).pvalue > 1e-3
    # The scalar function draws the same way as the vectorised one.
    gen = torch.Generator().manual_seed(3)
    single = torch.stack([sample_two(ALPHA, tau, gen) for _ in range(3000)])
    assert stats.chisquare(_pair_counts(single), 3000 * expected / expected.sum()).pvalue > 1e-3


def test_small_tau_leaves_one_operation():
    gen = torch.Generator().manual_seed(5)
    hot = torch.stack([sample_two(ALPHA, 1e-3, gen) for _ in range(500)]).max(dim=1).values
    warm = torch.stack([sample_two(ALPHA, 1.0, gen) for _ in range(500)]).max(dim=1).values
    assert hot.mean() > 0.999
    assert warm.mean() < 0.9
    sample = sample_edges("two", ALPHA.expand(500, 8), 1e-4, gen)
    single = sum(len(ops) == 1 for ops in sample.active)
    assert single > 450
    for row, ops in zip(sample.weights, sample.active):
        assert set(ops) == set(torch.nonzero(row > SKIP_BELOW).flatten().tolist())


def test_sample_two_gradient_reaches_only_the_pair():
    for seed in range(10):
        alpha = ALPHA.clone().requires_grad_(True)
        tau = 0.5
        w = sample_two(alpha, tau, torch.Generator().manual_seed(seed))
        a, b = _pair_of(w.detach())
        w[a].backward()
        grad = alpha.grad
        nonzero = set(torch.nonzero(grad).flatten().tolist())
        assert nonzero == {a, b}
        wa, wb = w[a].item(), w[b].item()
        assert grad[a].item() == pytest.approx(wa * wb / tau, rel=1e-3, abs=1e-6)
        assert grad[b].item() == pytest.approx(-wa * wb / tau, rel=1e-3, abs=1e-6)


def test_same_generator_seed_same_draws():
    a = sample_two(ALPHA.expand(14, 8), 1.0, torch.Generator().manual_seed(11))
    b = sample_two(ALPHA.expand(14, 8), 1.0, torch.Generator().manual_seed(11))
    c = sample_two(ALPHA.expand(14, 8), 1.0, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_one_is_hard_gumbel_max_with_soft_gradient():
    n = 20000
    alpha = ALPHA.expand(n, 8).clone().requires_grad_(True)
    w = sample_edges("one", alpha, 1.0, torch.Generator().manual_seed(2)).weights
    assert ((w == 0) | ((w - 1).abs() < 1e-6)).all()
    assert ((w != 0).sum(dim=1) == 1).all()
    counts = (w != 0).sum(dim=0).numpy()
    # Gumbel-max: the hard sample's op follows softmax(alpha) exactly.
    expected = n * torch.softmax(ALPHA.double(), 0).numpy()
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    w[0, int(torch.nonzero(w[0]).item())].backward()
    assert (alpha.grad[0] != 0).all()
    assert (alpha.grad[1:] == 0).all()


def test_sample_all_is_softmax_over_every_operation():
    alpha = ALPHA.expand(14, 8)
    sample = sample_edges("all", alpha, 1.0)
    np.testing.assert_allclose(sample.weights.numpy(), torch.softmax(alpha.double(), -1).numpy(), rtol=1e-6)
    assert all(ops == tuple(range(8)) for ops in sample.active)


def test_sample_one_active_is_its_op():
    sample = sample_edges("one", ALPHA.expand(14, 8), 1.0, torch.Generator().manual_seed(0))
    for row, ops in zip(sample.weights, sample.active):
        assert ops == (int(torch.nonzero(row).item()),)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_edges("three", ALPHA.expand(14, 8), 1.0)
    with pytest.raises(ValueError, match="tau"):
        sample_two(ALPHA, 0.0)
    with pytest.raises(FloatingPointError, match="not finite"):
        sample_two(torch.full((8,), float("nan")), 1.0)
