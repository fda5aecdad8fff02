"""Search diagnostics: entropy, largest probability, argmax changes and genotype stability, hand-worked."""

from __future__ import annotations

import math

import pytest

from scnas.config import steps_per_epoch
from scnas.nas import diagnostics as D


def test_uniform_and_one_hot_distributions_give_the_textbook_figures():
    uniform = [[1 / 8] * 8 for _ in range(14)]
    one_hot = [[1.0 if k == e % 8 else 0.0 for k in range(8)] for e in range(14)]
    assert D.cell_figures(uniform, None) == {
        "entropy": pytest.approx(math.log(8)),
        "max_prob": 0.125,
        "argmax_changes": 0,
    }
    figures = D.cell_figures(one_hot, uniform)
    assert figures["entropy"] == 0 and figures["max_prob"] == 1.0
    assert figures["argmax_changes"] == sum(1 for e in range(14) if e % 8 != 0)  # uniform's argmax is op 0


def test_two_edge_example_by_hand():
    probs = [[0.5, 0.5, 0, 0, 0, 0, 0, 0], [0.7, 0.1, 0.1, 0.1, 0, 0, 0, 0]]
    previous = [[0.4, 0.6, 0, 0, 0, 0, 0, 0], [0.7, 0.1, 0.1, 0.1, 0, 0, 0, 0]]
    h1 = math.log(2)
    h2 = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    figures = D.cell_figures(probs, previous)
    assert figures["entropy"] == pytest.approx((h1 + h2) / 2, abs=1e-6)
    assert figures["max_prob"] == pytest.approx(0.6)
    assert figures["argmax_changes"] == 1


def test_genotype_stability_and_convergence():
    assert D.stable_since(["a", "b", "c", "c", "c"]) == 3
    assert D.stable_since(["a"]) == 1 and D.stable_since([]) == 0
    assert D.converged(["a"] * 18 + ["b"] * 2)  # the last 10 % (2 of 20) agree
    assert not D.converged(["a"] * 19 + ["b"])
    assert not D.converged(["a"])  # one epoch shows nothing
    assert D.converged(["x"] * 90 + ["y"] * 10) and not D.converged(["x"] * 91 + ["y"] * 9)


def test_auto_epochs_are_one_pass_over_the_cases():
    assert steps_per_epoch("auto", 41, 4) == 11
    assert steps_per_epoch("auto", 3, 8) == 1
    assert steps_per_epoch(250, 41, 4) == 250


def test_the_summary_tells_a_decided_search_from_a_near_uniform_one():
    history = [{"genotype": "g"}] * 4
    near = [{"diagnostics": {"a": {"entropy": 2.0, "max_prob": 0.21, "argmax_changes": 0}}}]
    sharp = [{"diagnostics": {"a": {"entropy": 0.7, "max_prob": 0.8, "argmax_changes": 0}}}]
    assert D.summary(history, near, 40, 40)["converged"] and not D.summary(history, near, 40, 40)["decisive"]
    assert D.summary(history, sharp, 40, 40)["decisive"]
