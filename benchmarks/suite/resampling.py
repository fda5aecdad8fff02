"""Resampling 1 mm -> 0.7 mm: scnas.data.resample against nnU-Net's resampling and SimpleITK linear.

The image is a smooth analytic function of the physical position (a product of cosines, 16 mm
wavelength, one phase per channel), sampled at the voxel centres of both grids in float64; each tool's
accuracy is its error against the function on the output grid (the voxels whose centre lies between the
first and last input centres, where no tool extrapolates). The label map is two ellipsoids, compared with
the ellipsoids evaluated on the output grid. Agreement: at equal order (linear) ours must equal nnU-Net
order 1 and SimpleITK linear to 1e-4, and our label map must equal nnU-Net's except where two labels'
interpolated one-hot scores tie (0.5 each): ours gives a tie to the smaller label, nnU-Net to the larger.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from benchmarks import peers
from benchmarks.timing import Options, Section, Timing, time_interleaved
from scnas.data.resample import effective_spacing, resample_image, resample_label, target_shape

SPACING = 1.0
TARGET = 0.7
WAVELENGTH_MM = 16.0
IMAGE_TOLERANCE = 1e-4
TIE = 1e-6  # interpolated one-hot scores this close count as a tie
FULL = ((240, 240, 155), 4)
QUICK = ((24, 24, 16), 1)


def centres(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Physical position (mm) of the voxel centres along each axis, box corner at 0."""
    return [(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)]


def analytic_image(shape: Sequence[int], spacing: Sequence[float], channels: int) -> np.ndarray:
    """(channels, *shape) float64: cos(k x + p) cos(k y + 2p) cos(k z + 3p), p = channel / 2."""
    k = 2 * np.pi / WAVELENGTH_MM
    x, y, z = centres(shape, spacing)
    return np.stack(
        [
            np.cos(k * x + p)[:, None, None] * np.cos(k * y + 2 * p)[None, :, None] * np.cos(k * z + 3 * p)[None, None]
            for p in (c / 2 for c in range(channels))
        ]
    )


def analytic_label(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """int16 map of two ellipsoids (labels 1 and 2) placed relative to the box."""
    extent = np.asarray(shape) * np.asarray(spacing)
    grid = np.meshgrid(*centres(shape, spacing), indexing="ij")
    out = np.zeros(tuple(shape), dtype=np.int16)
    for value, centre, radii in ((1, (0.35, 0.4, 0.5), (0.2, 0.15, 0.3)), (2, (0.68, 0.6, 0.45), (0.15, 0.22, 0.2))):
        r = sum(((g - c * e) / (a * e)) ** 2 for g, c, a, e in zip(grid, centre, radii, extent))
        out[r < 1] = value
    return out


def interior(shape: Sequence[int], new_shape: Sequence[int]) -> tuple[slice, ...]:
    """Output voxels whose centre lies between the first and last input voxel centres on every axis."""
    box = []
    for n, m in zip(shape, new_shape):
        src = (np.arange(m) + 0.5) * n / m - 0.5
        inside = np.flatnonzero((src >= 0) & (src <= n - 1))
        box.append(slice(int(inside[0]), int(inside[-1]) + 1))
    return tuple(box)


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2 * float((x & y).sum()) / max(1, int(x.sum() + y.sum()))


def run(opts: Options) -> Section:
    section = Section("resampling", "Resampling 1 mm -> 0.7 mm (image and label map)")
    reason = peers.missing("nnunetv2")
    if reason:
        section.skipped = reason
        return section
    shape, channels = QUICK if opts.quick else FULL
    spacing = (SPACING,) * 3
    new_shape = target_shape(shape, spacing, (TARGET,) * 3)
    new_spacing = effective_spacing(shape, spacing, new_shape)
    image = analytic_image(shape, spacing, channels).astype(np.float32)
    truth = analytic_image(new_shape, new_spacing, channels)
    label = analytic_label(shape, spacing)
    label_truth = analytic_label(new_shape, new_spacing)
    case = f"{'x'.join(map(str, shape))}x{channels}, {SPACING} -> {TARGET} mm"

    image_tools = {
        "ours (trilinear)": lambda: resample_image(image, new_shape),
        "nnU-Net order 1": lambda: peers.nnunet_resample(image, new_shape, spacing, new_spacing, 1),
        "nnU-Net order 3 (its default)": lambda: peers.nnunet_resample(image, new_shape, spacing, new_spacing, 3),
        "SimpleITK linear": lambda: peers.sitk_linear(image, spacing, new_shape),
    }
    label_tools = {
        "ours (one-hot linear, argmax)": lambda: resample_label(label, new_shape),
        "nnU-Net (one-hot order 1)": lambda: peers.nnunet_resample_label(label, new_shape, spacing, new_spacing),
    }
    outputs = {name: f() for name, f in image_tools.items()}
    ours = outputs["ours (trilinear)"]
    for peer in ("nnU-Net order 1", "SimpleITK linear"):
        diff = float(np.abs(ours - outputs[peer]).max())
        section.check(f"image: max |ours - {peer}|", diff, f"<= {IMAGE_TOLERANCE:g}", diff <= IMAGE_TOLERANCE)
    labels = {name: f() for name, f in label_tools.items()}
    differ = labels["ours (one-hot linear, argmax)"] != labels["nnU-Net (one-hot order 1)"]
    scores = np.stack([resample_image((label == v)[None].astype(np.float32), new_shape)[0][differ] for v in (0, 1, 2)])
    top = np.sort(scores, axis=0)
    untied = int((top[-1] - top[-2] > TIE).sum())
    section.check(
        "label map: voxels differing from nnU-Net's, and those not at a tie",
        f"{int(differ.sum())} ({differ.mean():.3%}), {untied}",
        "0 outside ties",
        untied == 0,
    )

    inner = (slice(None), *interior(shape, new_shape))
    for name, out in outputs.items():
        err = out[inner].astype(np.float64) - truth[inner]
        section.measurements.append(
            {
                "what": f"image accuracy against the analytic function: {name}",
                "rms_error": float(np.sqrt(np.mean(err**2))),
                "max_error": float(np.abs(err).max()),
            }
        )
    for name, out in labels.items():
        section.measurements.append(
            {
                "what": f"label accuracy against the analytic ellipsoids: {name}",
                "voxels_correct": float((out == label_truth).mean()),
                "dice_1": dice(out, label_truth, 1),
                "dice_2": dice(out, label_truth, 2),
            }
        )

    times = time_interleaved({**image_tools, **label_tools}, opts.repeats, opts.warmup)
    t = {name: v["median_s"] for name, v in times.items()}
    ours_label = "ours (trilinear)"
    section.timings += [
        Timing(case, ours_label, "nnU-Net order 1", t[ours_label], t["nnU-Net order 1"], note="equal order"),
        Timing(case, ours_label, "nnU-Net order 3", t[ours_label], t["nnU-Net order 3 (its default)"], note="defaults"),
        Timing(case, ours_label, "SimpleITK linear", t[ours_label], t["SimpleITK linear"], note="equal order"),
        Timing(
            f"its label map ({'x'.join(map(str, shape))}, labels 0-2)",
            "ours (one-hot linear)",
            "nnU-Net one-hot order 1",
            t["ours (one-hot linear, argmax)"],
            t["nnU-Net (one-hot order 1)"],
            note="defaults",
        ),
    ]
    section.notes.append(
        f"One thread; median of {opts.repeats} interleaved runs after {opts.warmup} warm-up. nnU-Net resamples "
        "with skimage's resize (mode edge, no anti-aliasing) as its preprocessor does; isotropic spacing, so "
        "no separate z."
    )
    return section
