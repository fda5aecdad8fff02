"""A segmentation task with a planted answer, to show that the architecture search finds what is best.

The image is white noise (i.i.d. N(0, 1) voxels) and a voxel is foreground when the intensity OFFSET
voxels further along x exceeds a threshold, so no intensity other than that one voxel's says anything
about a label. In a network made of the stem (a 3x3x3 convolution, reach 1 voxel), one cell of one
node whose two edges both read the stem through 1x1x1 blocks, and the 1x1x1 output convolution, a
voxel sees at most 1 + r voxels away along an axis (InstanceNorm's statistics over the whole patch
aside, which say nothing about one voxel), r being the reach of the edge's operation: 0 for identity,
1 for the 3x3x3 convolution and the pools, 2, 3 and 4 for the dilated separable convolutions. At an
offset of 5 only sep_dil_conv3_r4 (taps at 0 and +-4, composed with the stem's +-1) reaches the voxel
that decides the label; every other operation leaves the labels at chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scnas.data.nifti import save_nifti
from scnas.errors import ScnasError
from scnas.io import write_json

PLANTED_OPERATION = "sep_dil_conv3_r4"
OFFSET = 5
THRESHOLD = 0.5
"""N(0, 1) above 0.5: about 31 % of the voxels are foreground."""


def planted_case(
    seed: int, index: int, size: int = 32, offset: int = OFFSET, threshold: float = THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """One case: noise image (size^3, float32) and its label (uint8), the last `offset` x-slices background."""
    if size <= offset or offset < 1:
        raise ScnasError(f"planted task: need 1 <= offset < size, got offset {offset} and size {size}")
    rng = np.random.default_rng([seed, index])
    image = rng.standard_normal((size, size, size), dtype=np.float32)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[:-offset] = image[offset:] > threshold
    return image, label


def make_planted_task(
    out: str | Path,
    cases: int,
    seed: int,
    size: int = 32,
    offset: int = OFFSET,
    threshold: float = THRESHOLD,
) -> Path:
    """Write an MSD task folder (dataset.json last, 1 mm isotropic, RAS) of `cases` planted cases; returns it."""
    if cases < 1:
        raise ScnasError(f"planted task: cases must be at least 1, got {cases}")
    out = Path(out)
    (out / "dataset.json").unlink(missing_ok=True)
    training = []
    for index in range(cases):
        case_id = f"planted_{index:03d}"
        image, label = planted_case(seed, index, size, offset, threshold)
        image_rel, label_rel = f"./imagesTr/{case_id}.nii.gz", f"./labelsTr/{case_id}.nii.gz"
        save_nifti(out / image_rel, image, np.eye(4))
        save_nifti(out / label_rel, label, np.eye(4))
        training.append({"image": image_rel, "label": label_rel})
    write_json(
        out / "dataset.json",
        {
            "name": "PlantedOffset",
            "description": f"White noise; foreground where the intensity {offset} voxels along x exceeds {threshold}",
            "reference": "scnas.data.planted",
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "planted"},
            "numTraining": cases,
            "numTest": 0,
            "training": training,
            "test": [],
        },
    )
    return out
