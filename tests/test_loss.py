import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scnas.train.loss import jaccard_loss


def _reference(logits: np.ndarray, target: np.ndarray, smooth: float) -> float:
    """Float64 Jaccard distance: IoU per foreground class pooled over the batch, then averaged."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    ious = []
    for k in range(1, logits.shape[1]):
        p, t = probs[:, k], (target == k).astype(np.float64)
        inter = (p * t).sum()
        ious.append((inter + smooth) / (p.sum() + t.sum() - inter + smooth))
    return 1.0 - float(np.mean(ious))


def test_perfect_prediction_gives_zero():
    target = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 2]]])
    onehot = F.one_hot(target, 4).movedim(-1, 1).float()  # class 3 is absent everywhere
    assert jaccard_loss(onehot, target, from_probabilities=True).item() == 0.0
    assert jaccard_loss(onehot * 1e4, target).item() == 0.0


def test_hand_worked_example():
    probs = torch.tensor([[[0.5, 0.0, 1.0, 0.75], [0.5, 1.0, 0.0, 0.25]]])
    target = torch.tensor([[1, 1, 0, 0]])
    # class 1: intersection 0.5 + 1 = 1.5, union (0.5 + 1 + 0 + 0.25) + 2 - 1.5 = 2.25
    assert jaccard_loss(probs, target, smooth=0.0, from_probabilities=True).item() == pytest.approx(1 - 1.5 / 2.25)


def test_matches_float64_reference_pooled_over_the_batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5, 6, 7)) * 2
    target = rng.integers(0, 4, size=(3, 5, 6, 7))
    target[0][target[0] == 2] = 0  # class 2 absent from one sample only
    got = jaccard_loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(target), smooth=1e-5)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_reference(logits, target, 1e-5), abs=1e-6)
    per_sample = np.mean([_reference(logits[i : i + 1], target[i : i + 1], 1e-5) for i in range(3)])
    assert abs(got.item() - per_sample) > 1e-4


def test_finite_gradient_when_a_class_is_absent():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    target = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # class 2 appears nowhere in the batch
    loss = jaccard_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_empty_foreground_predicted_empty_gives_zero_loss():
    logits = torch.zeros(1, 2, 3, 3, 3)
    logits[:, 0] = 50.0
    target = torch.zeros(1, 3, 3, 3, dtype=torch.long)
    assert jaccard_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_value_lies_between_zero_and_one():
    gen = torch.Generator().manual_seed(1)
    for scale in (0.1, 1.0, 10.0, 100.0):
        logits = torch.randn(2, 5, 6, 6, 6, generator=gen) * scale
        target = torch.randint(0, 5, (2, 6, 6, 6), generator=gen)
        value = jaccard_loss(logits, target).item()
        assert 0.0 <= value <= 1.0


def test_computes_in_float32_under_bfloat16_autocast():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 6, 6, 6)
    target = torch.randint(0, 3, (2, 6, 6, 6))
    expected = jaccard_loss(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = jaccard_loss(logits.bfloat16(), target)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), abs=2e-2)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="K >= 2"):
        jaccard_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match"):
        jaccard_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


def test_reduce_sums_pools_the_batch_over_processes():
    """Two halves whose sums are pooled give the loss of the whole batch (what DDP relies on)."""
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 6, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (4, 6, 6, 6))
    whole = jaccard_loss(logits, target)
    other = {}

    def pool(first_half_sums):
        return first_half_sums + other["sums"]

    def capture(sums):
        other["sums"] = sums.detach()
        return sums

    jaccard_loss(logits[2:], target[2:], reduce_sums=capture)
    pooled = jaccard_loss(logits[:2], target[:2], reduce_sums=pool)
    assert torch.allclose(pooled, whole, atol=1e-6)
