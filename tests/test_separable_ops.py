"""The per-axis pooling and resizing kernels and the fused separable convolution against torch's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scnas.nas.operations import SepDilConv, as_written
from scnas.nas.separable import avg_pool3, max_pool3, resize_trilinear

SHAPES = [(2, 3, 9, 8, 7), (1, 2, 5, 2, 1), (1, 1, 1, 1, 1), (2, 4, 16, 12, 10)]


def _forward_backward(fn, x, grad=None):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    grad = torch.randn_like(y, generator=torch.Generator().manual_seed(1)) if grad is None else grad
    y.backward(grad)
    return y.detach(), x.grad, grad


def _reference_avg(x, stride):
    """torch's avg_pool3d with count_include_pad=False, extended to sides under 3 voxels by explicit padding."""
    total = F.avg_pool3d(F.pad(x, (1,) * 6), 3, stride, divisor_override=1)
    return total / F.avg_pool3d(F.pad(torch.ones_like(x), (1,) * 6), 3, stride, divisor_override=1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_equals_torch(shape, stride):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want, want_grad, grad = _forward_backward(lambda t: F.max_pool3d(t, 3, stride, padding=1), x)
    got, got_grad, _ = _forward_backward(lambda t: max_pool3(t, stride), x, grad)
    assert torch.equal(got, want)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)


def test_max_pool_gives_each_output_gradient_to_one_maximal_voxel_on_ties():
    x = torch.zeros(1, 1, 6, 5, 4, dtype=torch.float64)
    x[..., 2:4, 1:3, 1:3] = 1.0  # a plateau of equal maxima in a plateau of zeros
    ones = torch.ones(1, 1, 6, 5, 4, dtype=torch.float64)
    y, x_grad, _ = _forward_backward(lambda t: max_pool3(t, 1), x, ones)
    assert torch.equal(y, F.max_pool3d(x, 3, 1, padding=1))
    assert torch.equal(x_grad, x_grad.round())  # whole output gradients, never split halves
    assert x_grad.sum() == y.numel()
    assert x_grad[x == 1].sum() == (y == 1).sum()  # a window holding a 1 gives its gradient to a 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_avg_pool_equals_torch(shape, stride):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want, want_grad, grad = _forward_backward(lambda t: _reference_avg(t, stride), x)
    got, got_grad, _ = _forward_backward(lambda t: avg_pool3(t, stride), x, grad)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)
    if min(shape[2:]) >= 3:
        torch.testing.assert_close(got, F.avg_pool3d(x, 3, stride, padding=1, count_include_pad=False))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("grow", ["double", "double_some", "odd", "same"])
def test_trilinear_resize_equals_torch(shape, grow):
    spatial = shape[2:]
    size = {
        "double": [2 * n for n in spatial],
        "double_some": [2 * spatial[0], spatial[1], 2 * spatial[2]],
        "odd": [2 * n - 1 if n > 1 else 3 for n in spatial],
        "same": list(spatial),
    }[grow]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want, want_grad, grad = _forward_backward(
        lambda t: F.interpolate(t, size=size, mode="trilinear", align_corners=False), x
    )
    got, got_grad, _ = _forward_backward(lambda t: resize_trilinear(t, size), x, grad)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)


def test_the_kernels_pass_gradcheck():
    x = torch.randn(1, 2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    for fn in (lambda t: max_pool3(t, 1), lambda t: max_pool3(t, 2), lambda t: avg_pool3(t, 2)):
        assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradcheck(lambda t: resize_trilinear(t, (10, 8, 6)), (x,))


@pytest.mark.parametrize("channels", [4, 13, 24])
@pytest.mark.parametrize("stride", [1, 2])
def test_separable_convolution_is_the_same_function_fused_or_not(channels, stride):
    torch.manual_seed(0)
    op = SepDilConv(channels, channels, stride, 3).double()
    x = torch.randn(2, channels, 9, 10, 7, dtype=torch.float64)
    got, got_grad, grad = _forward_backward(op, x)
    got_params = [p.grad.clone() for p in op.parameters()]
    op.zero_grad()
    with as_written():
        want, want_grad, _ = _forward_backward(op, x, grad)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-10)
    for g, p in zip(got_params, op.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-9)
