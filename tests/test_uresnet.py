import pytest
import torch
import torch.nn.functional as F

from scnas.models.uresnet import AttentionGate, DecoderLevel, Downsample, ResidualBlock, UResNet


@pytest.mark.parametrize(
    "size, batch, channels, classes",
    [
        ((16, 16, 16), 1, 1, 2),
        ((17, 17, 17), 2, 4, 4),
        ((24, 24, 24), 1, 4, 2),
        ((33, 33, 33), 2, 1, 4),
        ((17, 24, 33), 1, 1, 4),
        ((20, 9, 16), 2, 4, 2),
    ],
)
def test_output_shape_matches_input_for_any_size(size, batch, channels, classes):
    torch.manual_seed(0)
    model = UResNet(channels, classes, base_channels=4)
    x = torch.randn(batch, channels, *size)
    assert model(x).shape == (batch, classes, *size)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (batch, classes, *size)


def test_widths_start_at_32_and_double_three_times():
    model = UResNet(4, 4)
    assert model.stem[0].out_channels == 32
    downs = [stage[0].conv[0] for stage in model.encoder]
    assert [conv.out_channels for conv in downs] == [64, 128, 256]
    assert [(conv.kernel_size, conv.stride) for conv in downs] == [((2, 2, 2), (2, 2, 2))] * 3
    assert [type(level.block) for level in model.decoder] == [torch.nn.Identity] + [ResidualBlock] * 2
    assert torch.nn.InstanceNorm3d in {type(m) for m in model.modules()}
    assert torch.nn.LeakyReLU in {type(m) for m in model.modules()}


@pytest.mark.parametrize("size", [(8, 9, 10), (7, 7, 7), (16, 5, 2)])
def test_downsampling_pads_odd_axes_at_the_far_end(size):
    torch.manual_seed(8)
    down = Downsample(3, 5).eval()
    x = torch.randn(1, 3, *size)
    padded = torch.zeros(1, 3, *(n + n % 2 for n in size))
    padded[:, :, : size[0], : size[1], : size[2]] = x
    conv, norm = down.conv[0], down.conv[1]
    expected = F.leaky_relu(norm(F.conv3d(padded, conv.weight, stride=2)), 0.01)
    out = down(x)
    assert out.shape[2:] == tuple(-(-n // 2) for n in size)
    torch.testing.assert_close(out, expected)


def test_decoder_adds_the_gated_skip_to_the_cropped_up_convolution():
    torch.manual_seed(9)
    level = DecoderLevel(4, residual=False).eval()
    g, skip = torch.randn(1, 8, 3, 4, 5), torch.randn(1, 4, 5, 8, 9)
    with torch.no_grad():
        up = level.up(g)
        assert up.shape[2:] == (6, 8, 10)
        expected = up[:, :, :5, :8, :9] + skip * level.gate.coefficients(skip, g)
        torch.testing.assert_close(level(g, skip), expected)


def test_attention_coefficients_lie_in_open_unit_interval_and_scale_the_skip():
    torch.manual_seed(1)
    gate = AttentionGate(8, 16)
    x, g = torch.randn(2, 8, 17, 9, 12), torch.randn(2, 16, 9, 5, 6)
    alpha = gate.coefficients(x, g)
    assert alpha.shape == (2, 1, 17, 9, 12)
    assert (alpha > 0).all() and (alpha < 1).all()
    assert alpha.std() > 0
    torch.testing.assert_close(gate(x, g), x * alpha)


def test_attention_gates_act_on_the_network_output():
    torch.manual_seed(2)
    model = UResNet(1, 3, base_channels=4).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        before = model(x)
        model.decoder[0].gate.psi.bias.fill_(-30.0)
        closed = model(x)
    assert not torch.allclose(before, closed, atol=1e-4)


def test_segmentation_maps_are_upsampled_and_summed_across_decoder_levels():
    torch.manual_seed(3)
    model = UResNet(2, 3, base_channels=4).eval()
    assert len(model.heads) == 3
    decoded = {}
    for level, block in enumerate(model.decoder):
        block.register_forward_hook(lambda _m, _i, out, level=level: decoded.__setitem__(level, out))
    x = torch.randn(1, 2, 19, 16, 21)
    with torch.no_grad():
        out = model(x)
        maps = [model.heads[level](decoded[level]) for level in range(3)]

    def up(t, like):
        return F.interpolate(t, size=like.shape[2:], mode="trilinear", align_corners=False)

    expected = maps[0] + up(maps[1] + up(maps[2], maps[1]), maps[0])
    torch.testing.assert_close(out, expected)


def test_zeroing_a_coarse_segmentation_head_changes_the_output():
    torch.manual_seed(4)
    model = UResNet(1, 2, base_channels=4).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        before = model(x)
        model.heads[1].weight.zero_()
        model.heads[1].bias.zero_()
        after = model(x)
    assert not torch.allclose(before, after, atol=1e-4)


def test_single_map_without_level_combination():
    torch.manual_seed(5)
    model = UResNet(1, 2, base_channels=4, combine_levels=False)
    assert len(model.heads) == 1
    assert model(torch.randn(1, 1, 17, 16, 16)).shape == (1, 2, 17, 16, 16)


@pytest.mark.parametrize("combine_levels", [True, False])
def test_gradients_reach_every_parameter(combine_levels):
    torch.manual_seed(6)
    model = UResNet(2, 3, base_channels=4, combine_levels=combine_levels)
    x = torch.randn(2, 2, 16, 16, 16)
    target = torch.randint(0, 3, (2, 16, 16, 16))
    F.cross_entropy(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_overfits_one_tiny_sample():
    torch.manual_seed(7)
    model = UResNet(1, 2, base_channels=4)
    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    target = (((grid - 7.5) ** 2).sum(0) < 25).long().unsqueeze(0)
    image = torch.randn(1, 1, 16, 16, 16) + target.unsqueeze(1).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(image), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    accuracy = (model(image).argmax(1) == target).float().mean()
    assert accuracy > 0.98
