import itertools

import numpy as np
import pytest
import torch

from scnas.inference.sliding_window import gaussian_weights, sliding_window, window_starts


def pointwise_model(in_channels=2, num_classes=3, seed=0):
    """A network of 1x1x1 convolutions only: its output at a voxel depends on that voxel alone."""
    torch.manual_seed(seed)
    return (
        torch.nn.Sequential(
            torch.nn.Conv3d(in_channels, 8, 1),
            torch.nn.Tanh(),
            torch.nn.Conv3d(8, num_classes, 1),
        )
        .double()
        .eval()
    )


class CountingPredictor:
    def __init__(self, model):
        self.model = model
        self.batch_sizes = []

    def __call__(self, x):
        self.batch_sizes.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize("shape", [(10, 9, 7), (16, 16, 16), (37, 23, 19), (16, 40, 11)])
@pytest.mark.parametrize("overlap", [0.5, 0.25])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("mirror_axes", [(), (0, 1, 2)])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_pointwise_model_equals_whole_volume_forward(shape, overlap, mode, mirror_axes, batch_size):
    model = pointwise_model()
    image = torch.randn((2, *shape), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(image[None])[0]
    predictor = CountingPredictor(model)
    got = sliding_window(
        image, predictor, (16, 16, 16), overlap=overlap, mode=mode, batch_size=batch_size, mirror_axes=mirror_axes
    )
    assert got.shape == (3, *shape) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)
    assert max(predictor.batch_sizes) <= batch_size
    padded = [max(s, 16) for s in shape]
    num_windows = int(np.prod([len(s) for s in window_starts(padded, (16, 16, 16), overlap)]))
    assert sum(predictor.batch_sizes) == num_windows * 2 ** len(mirror_axes)


def test_batched_input_and_anisotropic_patch():
    model = pointwise_model(in_channels=1, num_classes=2)
    image = torch.randn((2, 1, 21, 13, 30), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(image)
    got = sliding_window(image, model, (8, 16, 12), overlap=0.5, batch_size=3, mirror_axes=(2,))
    assert got.shape == (2, 2, 21, 13, 30)
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)


def test_weighting_is_the_gaussian_average_of_window_scores():
    """A predictor that returns a constant per window exposes the weights: the result is their weighted mean."""
    patch = (8, 8, 8)
    shape = (20, 8, 8)
    image = torch.zeros((1, *shape))
    calls = []

    def predictor(x):
        values = torch.arange(len(calls), len(calls) + x.shape[0], dtype=torch.float32)
        calls.extend(values.tolist())
        return values.view(-1, 1, 1, 1, 1).expand(-1, 1, *patch).clone()

    got = sliding_window(image, predictor, patch, overlap=0.5, batch_size=1)[0].double()
    starts = window_starts(shape, patch, 0.5)[0]
    w = torch.from_numpy(gaussian_weights(patch)).float().double()
    num = torch.zeros(shape, dtype=torch.float64)
    den = torch.zeros(shape, dtype=torch.float64)
    for value, s in zip(calls, starts):
        num[s : s + 8] += value * w
        den[s : s + 8] += w
    torch.testing.assert_close(got, num / den, atol=1e-5, rtol=1e-5)
    assert len(set(torch.round(got[:, 4, 4], decimals=4).tolist())) > len(starts)


def test_mirroring_averages_flipped_predictions():
    """With a non-equivariant predictor, mirroring gives the mean over all flips of flipped-back outputs."""
    patch = (6, 6, 6)
    ramp = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1, 1)

    def predictor(x):
        return x + ramp

    image = torch.randn((1, 6, 6, 6), generator=torch.Generator().manual_seed(3))
    got = sliding_window(image, predictor, patch, mirror_axes=(0, 1))
    expected = image + (ramp[0] + ramp[0].flip(1)) / 2
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("patch", [(16, 16, 16), (7, 10, 13), (64, 48, 32)])
def test_gaussian_weights_symmetric_positive_peak_at_centre(patch):
    w = gaussian_weights(patch)
    assert w.shape == patch
    assert (w > 0).all()
    for axis in range(3):
        np.testing.assert_allclose(w, np.flip(w, axis), rtol=1e-12)
    assert w.max() == pytest.approx(1.0)
    centre = tuple(slice((n - 1) // 2, n // 2 + 1) for n in patch)
    assert (w[centre] == w.max()).all()
    profile = w[:, patch[1] // 2, patch[2] // 2]
    assert (np.diff(profile[: (patch[0] + 1) // 2]) > 0).all()
    sigma = patch[0] / 8
    expected = np.exp(-0.5 * ((np.arange(patch[0]) - (patch[0] - 1) / 2) / sigma) ** 2)
    np.testing.assert_allclose(profile / profile.max(), expected / expected.max(), rtol=1e-9)


@pytest.mark.parametrize("shape", [(16, 16, 16), (17, 40, 100), (31, 33, 64)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_windows_cover_every_voxel_with_nnunet_steps(shape, overlap):
    patch = (16, 16, 16)
    starts = window_starts(shape, patch, overlap)
    covered = np.zeros(shape, dtype=bool)
    for s in itertools.product(*starts):
        covered[tuple(slice(a, a + p) for a, p in zip(s, patch))] = True
    assert covered.all()
    for axis_starts, size, p in zip(starts, shape, patch):
        assert axis_starts[0] == 0 and axis_starts[-1] == size - p
        assert all(0 < b - a <= p * (1 - overlap) + 0.5 for a, b in zip(axis_starts, axis_starts[1:]))


def test_window_starts_examples():
    assert window_starts((160, 160, 128), (64, 64, 64), 0.5) == [[0, 32, 64, 96]] * 2 + [[0, 32, 64]]
    assert window_starts((100,), (64,), 0.5) == [[0, 18, 36]]
    assert window_starts((64,), (64,), 0.5) == [[0]]


def test_num_classes_and_invalid_arguments():
    model = pointwise_model(in_channels=1, num_classes=2)
    image = torch.randn((1, 8, 8, 8), dtype=torch.float64)
    assert sliding_window(image, model, (8, 8, 8), num_classes=2).shape == (2, 8, 8, 8)
    with pytest.raises(ValueError, match="channels"):
        sliding_window(image, model, (8, 8, 8), num_classes=3)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(image, model, (8, 8, 8), overlap=1.0)
    with pytest.raises(ValueError, match="mirror_axes"):
        sliding_window(image, model, (8, 8, 8), mirror_axes=(3,))
    with pytest.raises(ValueError, match="mode"):
        sliding_window(image, model, (8, 8, 8), mode="triangle")
    with pytest.raises(ValueError, match="predictor returned shape"):
        sliding_window(image, lambda x: x[:, :, :4], (8, 8, 8))
