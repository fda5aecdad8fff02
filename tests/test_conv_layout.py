"""Convolutions computed in the channels-last layout on the CPU: the function of torch's own, against float64."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scnas.models.factory import build_model
from scnas.nas.conv import Conv3d, contiguous_convs, conv3d
from scnas.nas.genotype import genotype_to_dict, random_genotype

CASES = [  # (c_in, c_out, kernel, stride, padding, dilation, groups, spatial)
    (3, 3, 3, 1, 1, 1, 1, (12, 10, 9)),
    (4, 4, 3, 1, 3, 3, 1, (11, 9, 8)),  # the fused separable convolution, dilation 3
    (4, 6, 3, 2, 1, 1, 1, (9, 8, 7)),  # reduction, odd sides
    (1, 8, 3, 1, 1, 1, 1, (8, 8, 8)),  # a stem: one input channel
    (8, 16, 2, 2, 0, 1, 1, (8, 6, 4)),  # the U-ResNet's downsampling
    (8, 3, 1, 1, 0, 1, 1, (8, 6, 4)),  # 1x1x1: left to torch
    (6, 6, 3, 1, 2, 2, 6, (8, 6, 4)),  # depthwise: left to torch
]


def _run(fn, x, weight, grad):
    x, weight = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    y = fn(x, weight)
    y.backward(grad)
    return y.detach(), x.grad, weight.grad


@pytest.mark.parametrize("case", CASES)
def test_channels_last_convolution_is_torchs_to_float_rounding(case, monkeypatch):
    c_in, c_out, k, stride, padding, dilation, groups, spatial = case
    layouts, real = [], F.conv3d

    def recording(a, *rest):
        layouts.append(a.is_contiguous(memory_format=torch.channels_last_3d) and not a.is_contiguous())
        return real(a, *rest)

    monkeypatch.setattr(F, "conv3d", recording)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c_in, *spatial, generator=g)
    weight = torch.randn(c_out, c_in // groups, k, k, k, generator=g) / (c_in * k**3) ** 0.5
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out = real(x, weight, **args)
    grad = torch.randn(out.shape, generator=g)
    ours = _run(lambda a, w: conv3d(a, w, **args), x, weight, grad)
    with contiguous_convs():
        theirs = _run(lambda a, w: conv3d(a, w, **args), x, weight, grad)
    assert layouts == [k > 1 and groups == 1 and c_in > 1, False]  # ours, then torch's inside contiguous_convs
    want = _run(lambda a, w: real(a, w, **args), x.double(), weight.double(), grad.double())
    for got, torchs, ref in zip(ours, theirs, want):
        assert got.dtype == torch.float32 and got.is_contiguous()
        # output, input and weight gradients as close to float64 as torch's own float32 result is
        error, torch_error = (got.double() - ref).abs().max(), (torchs.double() - ref).abs().max()
        assert error <= 4 * torch_error + 1e-6, (error, torch_error)
    if k == 1 or groups > 1:
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))  # the same call


def test_the_module_is_an_nn_conv3d_with_its_state_dict():
    torch.manual_seed(0)
    ours, theirs = Conv3d(4, 5, 3, padding=1, bias=True), nn.Conv3d(4, 5, 3, padding=1, bias=True)
    theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, nn.Conv3d) and list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(1, 4, 7, 6, 5)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    circular = Conv3d(2, 2, 3, padding=1, padding_mode="circular")
    plain = nn.Conv3d(2, 2, 3, padding=1, padding_mode="circular")
    plain.load_state_dict(circular.state_dict())
    assert torch.equal(circular(x[:, :2]), plain(x[:, :2]))


@pytest.mark.parametrize(
    "spec",
    [
        {"arch": "uresnet", "in_channels": 1, "num_classes": 3, "base_channels": 4},
        {
            "arch": "genotype",
            "in_channels": 1,
            "num_classes": 3,
            "stem_channels": 8,
            "genotype": genotype_to_dict(random_genotype(0, 1)),
        },
    ],
    ids=["uresnet", "genotype"],
)
def test_a_networks_training_step_is_the_same_in_either_layout(spec):
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    results = []
    for layout in (contiguous_convs, contextlib.nullcontext):
        torch.manual_seed(0)
        model = build_model(spec)
        with layout():
            out = model(x)
            out.square().mean().backward()
        results.append((out.detach(), [p.grad for p in model.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-3, atol=5e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=5e-5)
