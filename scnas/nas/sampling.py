"""Per-edge operation weights drawn from the architecture logits alpha: Algorithm 1 and two baselines.

- "two" (Algorithm 1): z = softmax((alpha + g) / tau), g ~ Gumbel(0, 1); a pair {o1, o2} is drawn
  with probability (z_o1 + z_o2) / (|O| - 1); the pair's weights are renormalised to sum to one
  and every other weight is zero. Only the pair runs, and a weight below SKIP_BELOW (it underflows
  as tau anneals) is skipped too, so an edge then runs a single operation.
- "all" (DARTS): softmax(alpha), every operation runs.
- "one": a hard Gumbel-softmax sample, straight-through (forward one-hot, gradient of the soft z).

Noise and draws use a CPU torch.Generator and the small (edges x |O|) computation runs on the CPU,
so which operations run is known on the host without a device synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SAMPLINGS: tuple[str, ...] = ("two", "all", "one")
SKIP_BELOW = 1e-8


@dataclass(frozen=True)
class EdgeSample:
    """Weights of every edge of a cell type (E x |O|, on alpha's device) and the op indices to run."""

    weights: torch.Tensor
    active: tuple[tuple[int, ...], ...]


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise (float64, CPU) by inverse transform of uniforms."""
    tiny = torch.finfo(torch.float64).tiny
    u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp(tiny, 1.0 - 2.0**-53)
    return -torch.log(-torch.log(u))


def operation_pairs(num_ops: int) -> torch.Tensor:
    """All unordered pairs {o1, o2}, o1 < o2, as a (num_ops * (num_ops - 1) / 2, 2) index tensor."""
    return torch.combinations(torch.arange(num_ops), 2)


def pair_probabilities(z: torch.Tensor) -> torch.Tensor:
    """Algorithm 1's q{o1, o2} = (z_o1 + z_o2) / (|O| - 1) for every pair (last dim), summing to 1."""
    pairs = operation_pairs(z.shape[-1]).to(z.device)
    return (z[..., pairs[:, 0]] + z[..., pairs[:, 1]]) / (z.shape[-1] - 1)


def draw_pairs(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one pair per row of z (E x |O|) with probabilities q; returns (E, 2) op indices."""
    q = pair_probabilities(z.detach().to("cpu", torch.float64))
    index = torch.multinomial(q, 1, generator=generator).squeeze(-1)
    return operation_pairs(z.shape[-1])[index]


def _relaxed_logits(alpha: torch.Tensor, tau: float, generator: torch.Generator | None) -> torch.Tensor:
    if not tau > 0:
        raise ValueError(f"temperature tau must be positive, got {tau}")
    a = alpha.cpu()
    if not torch.isfinite(a).all():
        raise FloatingPointError("architecture logits alpha are not finite: the search diverged")
    return (a + gumbel_noise(a.shape, generator).to(a.dtype)) / tau


def _two(alpha: torch.Tensor, tau: float, generator: torch.Generator | None) -> torch.Tensor:
    logits = _relaxed_logits(alpha, tau, generator)
    pairs = draw_pairs(logits.softmax(-1), generator)
    chosen = torch.zeros(logits.shape, dtype=torch.bool).scatter_(-1, pairs, True)
    return logits.masked_fill(~chosen, float("-inf")).softmax(-1)


def _one(alpha: torch.Tensor, tau: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard Gumbel-softmax per row, straight-through: one-hot forward, gradient of the soft sample."""
    soft = _relaxed_logits(alpha, tau, generator).softmax(-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft, hard.bool()


def sample_two(alpha: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 1: alpha (|O|,) for one edge, or (E, |O|) for E edges -> weights of the same shape, exactly
    two non-zero per edge, summing to one.

    The renormalised pair weights z_o1 / (z_o1 + z_o2) equal a softmax over the pair's logits, which is
    how they are computed (no 0 / 0 when both underflow at small tau). Differentiable w.r.t. alpha.
    """
    rows = alpha.reshape(-1, alpha.shape[-1])
    return _two(rows, tau, generator).reshape(alpha.shape).to(alpha.device)


def sample_edges(
    sampling: str, alpha: torch.Tensor, tau: float, generator: torch.Generator | None = None
) -> EdgeSample:
    """Weights for all edges of one cell type under `sampling`, and the operations each edge runs."""
    if sampling == "two":
        weights = _two(alpha, tau, generator)
        run = weights.detach() > SKIP_BELOW
    elif sampling == "all":
        weights = alpha.softmax(-1)
        run = torch.ones(alpha.shape, dtype=torch.bool)
    elif sampling == "one":
        weights, run = _one(alpha, tau, generator)
    else:
        raise ValueError(f"unknown sampling {sampling!r}; expected one of {', '.join(SAMPLINGS)}")
    active = tuple(tuple(row.nonzero().flatten().tolist()) for row in run)
    return EdgeSample(weights=weights.to(alpha.device), active=active)
