"""Synthetic MSD-format tasks (brain tumour, heart, lung) that look like the real ones, for demos and tests.

Anatomy is drawn in world coordinates on a canonical RAS grid whose field of view in millimetres is
about the same for every case, so cases with different spacings and shapes look alike after
resampling; each case is then stored in its own orientation (RAS, LPS, PIR, ...) with a non-zero
origin, as scanners do. Every array is a function of (seed, case index) alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from scnas.data.nifti import save_nifti
from scnas.errors import ScnasError
from scnas.io import write_json

Kind = Literal["brain", "heart", "lung"]

_ORIENTATIONS = ("RAS", "LPS", "RAS", "PIR", "RAS", "LAS")
_THROUGH_PLANE_MM = (1.0, 2.0, 2.5, 3.0)
_MIN_EDGE = 8
_MIN_LABEL_VOXELS = 10


@dataclass(frozen=True)
class _Spec:
    """What dataset.json says about a kind; `z_fov` is the through-plane field of view over the in-plane one."""

    name: str
    description: str
    modalities: tuple[str, ...]
    labels: tuple[str, ...]
    z_fov: float


_SPECS: dict[str, _Spec] = {
    "brain": _Spec(
        "SyntheticBrainTumour",
        "Synthetic multi-modal MRI of gliomas (edema, non-enhancing and enhancing tumour), skull-stripped",
        ("FLAIR", "T1w", "T1gd", "T2w"),
        ("background", "edema", "non-enhancing tumor", "enhancing tumour"),
        0.9,
    ),
    "heart": _Spec(
        "SyntheticHeart",
        "Synthetic cardiac MRI; the left atrium among the other blood pools",
        ("MRI",),
        ("background", "left atrium"),
        0.8,
    ),
    "lung": _Spec(
        "SyntheticLung",
        "Synthetic chest CT in Hounsfield units with a small lung tumour",
        ("CT",),
        ("background", "cancer"),
        0.9,
    ),
}


def make_synthetic_task(
    kind: Kind,
    out: str | Path,
    cases: int,
    seed: int,
    size: int = 48,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    progress: bool = False,
) -> Path:
    """Write an MSD task folder (dataset.json, imagesTr/, labelsTr/) of `cases` synthetic cases; returns it.

    dataset.json is removed first and written last, so a half-generated task never looks complete.
    """
    spec = _spec(kind)
    if cases < 1:
        raise ScnasError(f"synthetic {kind} task: cases must be at least 1, got {cases}")
    out = Path(out)
    (out / "dataset.json").unlink(missing_ok=True)
    indices = range(cases)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"synth {kind}", unit="case")
    training = []
    for index in indices:
        case_id = f"{kind}_{index:03d}"
        image, label, affine = synthetic_case(kind, seed, index, size=size, shape=shape, spacing=spacing)
        image_rel, label_rel = f"./imagesTr/{case_id}.nii.gz", f"./labelsTr/{case_id}.nii.gz"
        save_nifti(out / image_rel, image if len(spec.modalities) > 1 else image[0], affine)
        save_nifti(out / label_rel, label, affine)
        training.append({"image": image_rel, "label": label_rel})
    write_json(
        out / "dataset.json",
        {
            "name": spec.name,
            "description": spec.description,
            "reference": "scnas.data.synthetic",
            "tensorImageSize": "4D" if len(spec.modalities) > 1 else "3D",
            "modality": {str(i): m for i, m in enumerate(spec.modalities)},
            "labels": {str(i): n for i, n in enumerate(spec.labels)},
            "numTraining": cases,
            "numTest": 0,
            "training": training,
            "test": [],
        },
    )
    return out


def synthetic_case(
    kind: Kind,
    seed: int,
    index: int,
    size: int = 48,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case as stored: image (C, X, Y, Z) in the task's dtype, label (X, Y, Z) uint8, and its affine."""
    spec = _spec(kind)
    if size < 16:
        raise ScnasError(f"synthetic {kind} task: size must be at least 16 voxels, got {size}")
    if shape is not None and (len(shape) != 3 or min(shape) < _MIN_EDGE):
        raise ScnasError(f"synthetic {kind} task: shape must be 3 edges of at least {_MIN_EDGE}, got {shape}")
    if spacing is not None and (len(spacing) != 3 or not all(s > 0 for s in spacing)):
        raise ScnasError(f"synthetic {kind} task: spacing must be 3 positive numbers, got {spacing}")
    rng = np.random.default_rng([seed, index])
    codes = _ORIENTATIONS[index % len(_ORIENTATIONS)]
    grid, canonical_affine = _canonical_grid(rng, spec, size, shape, spacing, codes)
    image, label = _GENERATORS[kind](grid, rng)
    return _reorient(image, label, canonical_affine, codes)


def _spec(kind: str) -> _Spec:
    if kind not in _SPECS:
        raise ScnasError(f"synthetic task kind must be one of {sorted(_SPECS)}, got {kind!r}")
    return _SPECS[kind]


class _Grid:
    """Voxel centres of the canonical (RAS) grid in units of half the in-plane field of view."""

    def __init__(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray]):
        self.axes = axes
        self.shape = tuple(len(a) for a in axes)

    def box(self, center: np.ndarray, reach: np.ndarray) -> tuple[slice, slice, slice]:
        return tuple(
            slice(int(np.searchsorted(a, c - r)), int(np.searchsorted(a, c + r, side="right")))
            for a, c, r in zip(self.axes, center, reach)
        )

    def coords(self, box: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        box = box or (slice(None),) * 3
        x, y, z = (a[b] for a, b in zip(self.axes, box))
        return x[:, None, None], y[None, :, None], z[None, None, :]


def _canonical_grid(rng: np.random.Generator, spec: _Spec, size: int, shape, spacing, codes: str):
    """The RAS grid and affine of one case; forced `shape`/`spacing` are those of the stored array axes."""
    from nibabel.orientations import axcodes2ornt

    world_axis = axcodes2ornt(tuple(codes))[:, 0].astype(int)
    if spacing is not None:
        mm = np.empty(3)
        mm[world_axis] = spacing
    else:
        in_plane = round(float(rng.uniform(0.8, 1.2)), 2)
        mm = np.array([in_plane, in_plane, float(rng.choice(_THROUGH_PLANE_MM))])
    if shape is not None:
        n = np.empty(3, dtype=int)
        n[world_axis] = shape
    else:
        fov = size * rng.uniform(0.95, 1.05, 3) * np.array([1.0, 1.0, spec.z_fov])
        n = np.maximum(_MIN_EDGE, np.rint(fov / mm)).astype(int)
    fov = n * mm
    unit = (fov[0] + fov[1]) / 4
    axes = tuple(((np.arange(k) - (k - 1) / 2) * s / unit).astype(np.float32) for k, s in zip(n, mm))
    affine = np.diag([*mm, 1.0])
    affine[:3, 3] = -(n - 1) / 2 * mm + rng.uniform(-40, 40, 3)
    return _Grid(axes), affine


def _reorient(image: np.ndarray, label: np.ndarray, affine: np.ndarray, codes: str):
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(tuple(codes)))
    new_affine = affine @ inv_ornt_aff(transform, label.shape)
    image = np.moveaxis(apply_orientation(np.moveaxis(image, 0, 3), transform), 3, 0)
    return np.ascontiguousarray(image), np.ascontiguousarray(apply_orientation(label, transform)), new_affine


def _field(rng: np.random.Generator, coords, wavelength: tuple[float, float], waves: int = 6) -> np.ndarray:
    """Smooth random field (standard deviation about 1): a sum of plane waves of the given wavelengths."""
    x, y, z = coords
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
    for _ in range(waves):
        direction = rng.normal(size=3)
        k = 2 * np.pi / rng.uniform(*wavelength) * direction / np.linalg.norm(direction)
        phase = float(rng.uniform(0, 2 * np.pi))
        out += np.cos(float(k[0]) * x + float(k[1]) * y + float(k[2]) * z + phase)
    return out * np.float32(np.sqrt(2 / waves))


def _blob(
    grid: _Grid, rng: np.random.Generator, center, radii, roughness: float, wavelength: tuple[float, float] = (0.3, 0.8)
) -> np.ndarray:
    """Normalised distance to an irregular ellipsoid (< 1 inside) whose radius wobbles by `roughness`."""
    center, radii = np.asarray(center, float), np.asarray(radii, float)
    box = grid.box(center, radii * (1 + 2.5 * roughness))
    x, y, z = grid.coords(box)
    r = np.sqrt(
        ((x - float(center[0])) / float(radii[0])) ** 2
        + ((y - float(center[1])) / float(radii[1])) ** 2
        + ((z - float(center[2])) / float(radii[2])) ** 2
    )
    wobble = np.clip(_field(rng, (x, y, z), wavelength), -2.5, 2.5)
    out = np.full(grid.shape, np.inf, np.float32)
    out[box] = r / (1 + np.float32(roughness) * wobble)
    return out


def _tube(grid: _Grid, start, end, radius: float) -> np.ndarray:
    """Voxels within `radius` of the segment start-end."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    lo, hi = np.minimum(start, end), np.maximum(start, end)
    box = grid.box((lo + hi) / 2, (hi - lo) / 2 + radius)
    rel = [c - float(s) for c, s in zip(grid.coords(box), start)]
    d = [float(v) for v in end - start]
    t = np.clip(sum(r * v for r, v in zip(rel, d)) / sum(v * v for v in d), 0, 1)
    out = np.zeros(grid.shape, bool)
    out[box] = sum((r - t * v) ** 2 for r, v in zip(rel, d)) < radius**2
    return out


def _unit_ball(rng: np.random.Generator, radius: float) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v) * radius * rng.uniform(0, 1) ** (1 / 3)


def _retry(make, rng: np.random.Generator, what: str):
    """Call make(rng) until its labels are all present (a lesion can fall between coarse slices)."""
    for _ in range(50):
        result = make(rng)
        if result is not None:
            return result
    raise ScnasError(f"synthetic task: could not place the {what} in 50 attempts; use a larger size")


# Brain: tissue classes and their mean intensity in FLAIR, T1w, T1gd, T2w. Lesion texture moves all
# four channels together, so that edema vs enhancing tumour overlap in every single channel yet are
# apart in the (FLAIR, T1gd) plane; non-enhancing tumour is dark in T1w and moderately bright in T2.
_WM, _GM, _CSF, _EDEMA, _NET, _ENH = 1, 2, 3, 4, 5, 6
_BRAIN_MEAN = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],
        [0.45, 0.80, 0.75, 0.35],
        [0.55, 0.60, 0.58, 0.50],
        [0.12, 0.20, 0.20, 0.95],
        [0.85, 0.50, 0.55, 0.85],
        [0.76, 0.25, 0.36, 0.70],
        [0.68, 0.52, 0.85, 0.66],
    ],
    np.float32,
)
_BRAIN_TEXTURE = np.array([0.0, 0.04, 0.04, 0.03, 0.15, 0.12, 0.15], np.float32)


def _brain(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    center = rng.normal(0, 0.03, 3)
    semi = np.array([0.70, 0.80, 0.66]) * rng.uniform(0.95, 1.05, 3)
    head = _blob(grid, rng, center, semi, 0.04, (0.8, 2.0))
    inside = head < 1
    tissue = np.where(inside, _WM, 0).astype(np.uint8)
    tissue[inside & (head + 0.05 * _field(rng, grid.coords(), (0.15, 0.4)) > 0.8)] = _GM
    tissue[inside & (head > 0.95)] = _CSF
    for side in (-1, 1):
        ventricle = center + np.array([side * 0.1, 0.05, 0.1]) * semi / 0.7
        tissue[_blob(grid, rng, ventricle, np.array([0.06, 0.22, 0.1]) * rng.uniform(0.8, 1.2, 3), 0.15) < 1] = _CSF

    def tumour(rng: np.random.Generator):
        site = center + semi * _unit_ball(rng, 0.45)
        r_edema = rng.uniform(0.26, 0.4)
        edema_d = _blob(grid, rng, site, r_edema * rng.uniform(0.85, 1.15, 3), 0.2)
        edema = (edema_d < 1) & (head < 0.97)
        core_site = site + _unit_ball(rng, 0.15 * r_edema)
        r_core = r_edema * rng.uniform(0.55, 0.75)
        core_d = _blob(grid, rng, core_site, r_core * rng.uniform(0.85, 1.15, 3), 0.2)
        core = (core_d < 1) & (edema_d < 0.8) & (head < 0.9)
        r_active = r_core * rng.uniform(0.7, 0.95)
        active = _blob(
            grid, rng, core_site + _unit_ball(rng, 0.1 * r_core), r_active * rng.uniform(0.85, 1.15, 3), 0.15
        )
        enhancing = core & (core_d < 0.85) & (active < 1) & (active > rng.uniform(0.0, 0.6))
        parts = (edema & ~core, core & ~enhancing, enhancing)
        if min(int(p.sum()) for p in parts) < _MIN_LABEL_VOXELS:
            return None
        return parts

    parts = _retry(tumour, rng, "brain tumour")
    for cls, part in zip((_EDEMA, _NET, _ENH), parts):
        tissue[part] = cls
    label = np.zeros(grid.shape, np.uint8)
    for value, part in enumerate(parts, start=1):
        label[part] = value

    texture = _field(rng, grid.coords(), (0.1, 0.3)) * _BRAIN_TEXTURE[tissue]
    image = _BRAIN_MEAN[tissue] + texture[..., None]
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.03)
    image *= np.exp(np.float32(0.12) * _field(rng, grid.coords(), (1.5, 3.0)))[..., None]
    gain = (1000 * rng.uniform(0.7, 1.4, 4)).astype(np.float32)
    image = np.maximum(image * gain, 0.01 * gain)
    image[~inside] = 0
    return np.moveaxis(image, 3, 0).astype(np.float32), label


def _heart(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    soft, fat, lung, spine, myocardium, blood = 0.30, 0.75, 0.06, 0.18, 0.32, 0.85
    signal = np.zeros(grid.shape, np.float32)
    torso = _blob(grid, rng, (0.0, -0.05, 0.0), (0.92, 0.64, 10.0) * rng.uniform(0.95, 1.05, 3), 0.03, (0.8, 2.0))
    signal[torso < 1] = fat
    signal[torso < 0.9] = soft
    for side in (-1, 1):
        semi = np.array([0.32, 0.42, 0.85]) * rng.uniform(0.9, 1.1, 3)
        signal[_blob(grid, rng, (side * 0.45, -0.05, 0.05), semi, 0.08) < 1] = lung
    signal[_blob(grid, rng, (0.0, -0.5, 0.0), (0.1, 0.1, 10.0), 0.05) < 1] = spine

    heart, scale = np.array([-0.08, 0.1, 0.0]) + rng.normal(0, 0.04, 3), 1.3 * rng.uniform(0.9, 1.1)

    def jitter(offset) -> np.ndarray:
        return heart + scale * (np.asarray(offset) + rng.normal(0, 0.02, 3))

    def scaled(radii) -> np.ndarray:
        return scale * np.asarray(radii) * rng.uniform(0.85, 1.15, 3)

    lv = _blob(grid, rng, jitter((-0.15, 0.1, -0.15)), scaled((0.23, 0.18, 0.3)), 0.08)
    signal[lv < 1] = myocardium
    pools = [
        lv < 0.74,
        _blob(grid, rng, jitter((0.12, 0.18, -0.15)), scaled((0.16, 0.1, 0.2)), 0.1) < 1,
        _blob(grid, rng, jitter((0.22, -0.02, 0.05)), scaled((0.12, 0.12, 0.14)), 0.1) < 1,
        _tube(grid, jitter((0.0, 0.05, 0.05)), jitter((0.02, 0.02, 0.9)), scale * rng.uniform(0.06, 0.08)),
        _tube(grid, jitter((0.25, 0.05, 0.0)), jitter((0.25, 0.05, 0.9)), scale * rng.uniform(0.04, 0.06)),
        _tube(grid, (-0.12, -0.38, -10.0), (-0.12, -0.38, 10.0), rng.uniform(0.06, 0.08)),
    ]

    def atrium(rng: np.random.Generator):
        site = jitter((-0.04, -0.18, 0.12))
        mask = _blob(grid, rng, site, scaled((0.14, 0.1, 0.11)), 0.12) < 1
        for side in (-1, 1):
            for dz in (-0.05, 0.05):
                tip = site + scale * np.array(
                    [side * rng.uniform(0.2, 0.28), rng.uniform(-0.1, 0.0), dz + rng.normal(0, 0.03)]
                )
                mask |= _tube(grid, site, tip, scale * rng.uniform(0.025, 0.04))
        return mask if mask.sum() >= _MIN_LABEL_VOXELS else None

    la = _retry(atrium, rng, "left atrium")
    in_blood = np.logical_or.reduce([*pools, la])
    signal[in_blood] = blood
    signal += np.where(in_blood, np.float32(0.05), np.float32(0.03)) * _field(rng, grid.coords(), (0.1, 0.3))
    noise = rng.standard_normal((2, *grid.shape), dtype=np.float32) * np.float32(0.03)
    image = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    image *= np.exp(np.float32(0.2) * _field(rng, grid.coords(), (1.5, 3.0))) * np.float32(1000 * rng.uniform(0.6, 1.6))
    return image[None].astype(np.float32), la.astype(np.uint8)


def _lung(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    hu = np.full(grid.shape, -1000.0, np.float32)
    texture_sd = np.zeros(grid.shape, np.float32)
    torso = _blob(grid, rng, (0.0, -0.05, 0.0), (0.92, 0.68, 10.0) * rng.uniform(0.95, 1.05, 3), 0.03, (0.8, 2.0))
    hu[torso < 1] = -100.0
    hu[torso < 0.9] = 40.0
    texture_sd[torso < 1] = 10.0
    z = grid.coords()[2]
    ribs = (
        (torso > 0.88)
        & (torso < 0.95)
        & (np.sin(z * np.float32(2 * np.pi / rng.uniform(0.18, 0.24)) + np.float32(rng.uniform(0, 2 * np.pi))) > 0.3)
    )
    hu[ribs] = 700.0
    lungs = []
    for side in (-1, 1):
        center = np.array([side * 0.42, -0.02, 0.08]) + rng.normal(0, 0.02, 3)
        semi = np.array([0.32, 0.45, 0.85]) * rng.uniform(0.9, 1.1, 3)
        mask = _blob(grid, rng, center, semi, 0.08) < 1
        hu[mask], texture_sd[mask] = -850.0, 25.0
        for _ in range(6):
            tip = center + semi * _unit_ball(rng, 0.9)
            vessel = _tube(grid, center * np.array([0.4, 1.0, 1.0]), tip, rng.uniform(0.012, 0.03)) & mask
            hu[vessel], texture_sd[vessel] = 40.0, 10.0
        lungs.append((center, semi, mask))
    vertebra = _blob(grid, rng, (0.0, -0.52, 0.0), (0.11, 0.1, 10.0), 0.05)
    hu[vertebra < 1] = 700.0
    hu[vertebra < 0.75] = 250.0
    texture_sd[vertebra < 1] = 60.0

    def tumour(rng: np.random.Generator):
        center, semi, mask = lungs[int(rng.integers(2))]
        radii = rng.uniform(0.07, 0.15) * rng.uniform(0.85, 1.15, 3)
        blob = _blob(grid, rng, center + semi * _unit_ball(rng, 0.6), radii, 0.25)
        found = (blob < 1) & mask
        return found if found.sum() >= _MIN_LABEL_VOXELS else None

    label = _retry(tumour, rng, "lung tumour")
    hu[label], texture_sd[label] = 30.0, 15.0
    hu += texture_sd * _field(rng, grid.coords(), (0.08, 0.25))
    hu += np.where(torso < 1, np.float32(10), np.float32(0)) * _field(rng, grid.coords(), (1.5, 3.0))
    hu += rng.standard_normal(grid.shape, dtype=np.float32) * np.float32(15)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return image[None], label.astype(np.uint8)


_GENERATORS = {"brain": _brain, "heart": _heart, "lung": _lung}
