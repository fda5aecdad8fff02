"""Adapters to the peers the benchmarks compare against: nnU-Net v2, batchgeneratorsv2, MONAI, SimpleITK.

Each adapter calls the peer's own public function the way the peer itself uses it (nnU-Net's resampling
as its preprocessor calls it, the training transforms as nnUNetTrainer builds them, PlainConvUNet as
nnU-Net's planner configures it), so a benchmark measures the peer as its users run it. The peers live in
the `bench` extra (`pip install -c envs/constraints-cpu.txt -e '.[bench]'`); `missing` names what is absent.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
from typing import Any, Callable, Sequence

import numpy as np
import torch

PEERS = {"nnunetv2": "nnunetv2", "batchgeneratorsv2": "batchgeneratorsv2", "monai": "monai"}
NNUNET_ROTATION_DEG = 30.0  # nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size, 3D
NNUNET_MIN_FEATURE_MAP = 4  # the planner stops pooling an axis below 4 voxels
NNUNET_MAX_FEATURES_PER_32 = 320 / 32  # 3D U-Net: 32 features in the first stage, at most 320


def missing(*packages: str) -> str | None:
    """None when every package imports, else a one-line reason naming the absent ones."""
    absent = [p for p in packages if importlib.util.find_spec(PEERS.get(p, p)) is None]
    if not absent:
        return None
    return f"{', '.join(absent)} not installed (pip install -c envs/constraints-cpu.txt -e '.[bench]')"


def _quiet_nnunet_paths() -> None:
    """nnunetv2 prints a warning at import when its three folders are unset; in-process use needs none."""
    scratch = os.path.join(tempfile.gettempdir(), "scnas-bench-nnunet")
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(name, scratch)


def nnunet_resample(
    data: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float], order: int
) -> np.ndarray:
    """(C, X, Y, Z) image resampled by nnU-Net's preprocessor at spline `order` (its default is 3)."""
    _quiet_nnunet_paths()
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    return resample_data_or_seg_to_shape(
        data, new_shape, spacing, new_spacing, is_seg=False, order=order, force_separate_z=None
    )


def nnunet_resample_label(
    label: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
) -> np.ndarray:
    """(X, Y, Z) label map resampled as nnU-Net's preprocessor does (one-hot, order 1, >= 0.5 per label)."""
    _quiet_nnunet_paths()
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    out = resample_data_or_seg_to_shape(
        label[None], new_shape, spacing, new_spacing, is_seg=True, order=1, force_separate_z=None
    )
    return out[0]


def sitk_linear(data: np.ndarray, spacing: Sequence[float], new_shape: Sequence[int]) -> np.ndarray:
    """(C, X, Y, Z) image resampled with SimpleITK's linear interpolator onto the grid of the same box, on
    one thread like every other contender."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    spacing = np.asarray(spacing, dtype=np.float64)
    new_spacing = np.asarray(data.shape[1:]) * spacing / np.asarray(new_shape)
    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin((0.5 * new_spacing - 0.5 * spacing).tolist())
    f.SetOutputSpacing(new_spacing.tolist())
    f.SetSize([int(n) for n in new_shape])
    f.SetInterpolator(sitk.sitkLinear)
    out = []
    for channel in data:
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel.transpose(2, 1, 0)))
        image.SetSpacing(spacing.tolist())
        out.append(sitk.GetArrayFromImage(f.Execute(image)).transpose(2, 1, 0))
    return np.stack(out)


def nnunet_training_transforms(patch_size: Sequence[int], low_resolution: bool = True) -> Any:
    """batchgeneratorsv2's composed training transforms as nnUNetTrainer builds them for a 3D patch
    (rotation +-30 degrees, mirroring of all three axes, no deep supervision); `low_resolution=False`
    drops SimulateLowResolutionTransform, the one transform this project does not have."""
    _quiet_nnunet_paths()
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    angle = NNUNET_ROTATION_DEG / 360 * 2 * math.pi
    composed = nnUNetTrainer.get_training_transforms(
        tuple(patch_size), (-angle, angle), None, (0, 1, 2), False, use_mask_for_norm=[False]
    )
    if not low_resolution:
        composed.transforms = [
            t
            for t in composed.transforms
            if not (isinstance(t, RandomTransform) and type(t.transform).__name__ == "SimulateLowResolutionTransform")
        ]
    return composed


def nnunet_transforms_off(composed: Any) -> Any:
    """The same composition with every random transform's probability at 0 and no mirror axis."""
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    for t in composed.transforms:
        if isinstance(t, RandomTransform):
            t.apply_probability = 0.0
        elif isinstance(t, SpatialTransform):
            t.p_rotation = t.p_scaling = t.p_elastic_deform = 0.0
        elif isinstance(t, MirrorTransform):
            t.allowed_axes = ()
    return composed


def apply_per_sample(transforms: Any, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a batchgeneratorsv2 composition on each sample of image (B, C, X, Y, Z), label (B, X, Y, Z)."""
    images, labels = [], []
    for x, y in zip(image, label):
        out = transforms(image=x.clone(), segmentation=y[None].clone())
        images.append(out["image"])
        labels.append(out["segmentation"][0])
    return torch.stack(images), torch.stack(labels)


def bgv2_gamma(image: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """batchgeneratorsv2's GammaTransform at a pinned gamma (nnU-Net's retain_stats), on (C, X, Y, Z)."""
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform

    t = GammaTransform(BGContrast((gamma, gamma)), float(invert), False, 1, 1)
    return t(image=image.clone())["image"]


def bgv2_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """batchgeneratorsv2's ContrastTransform (preserve_range) at a pinned factor, on (C, X, Y, Z)."""
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform

    t = ContrastTransform(BGContrast((factor, factor)), True, False, 1)
    return t(image=image.clone())["image"]


def bgv2_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """batchgeneratorsv2's MultiplicativeBrightnessTransform at a pinned factor, on (C, X, Y, Z)."""
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast

    t = MultiplicativeBrightnessTransform(BGContrast((factor, factor)), False, 1)
    return t(image=image.clone())["image"]


def bgv2_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """batchgeneratorsv2's separable Gaussian blur (reflect padding, truncate 6) of (C, X, Y, Z), all axes."""
    from batchgeneratorsv2.transforms.noise.gaussian_blur import blur_dimension

    out = image
    for axis in range(image.ndim - 1):
        out = blur_dimension(out, sigma, axis)
    return out


def bgv2_low_resolution(image: torch.Tensor, scale: float) -> torch.Tensor:
    """batchgeneratorsv2's SimulateLowResolutionTransform of every channel at a pinned scale, on (C, X, Y, Z)."""
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform

    t = SimulateLowResolutionTransform((scale, scale), False, True, None, None, 1)
    return t(image=image.clone())["image"]


def bgv2_scaling(image: torch.Tensor, label: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """batchgeneratorsv2's SpatialTransform as nnU-Net configures it, scaling only, at a pinned factor, on
    image (C, X, Y, Z) and label (X, Y, Z); padding labels (-1) become background as nnU-Net's pipeline ends."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    t = SpatialTransform(
        tuple(image.shape[1:]),
        0,
        False,
        p_elastic_deform=0,
        p_rotation=0,
        p_scaling=1,
        scaling=(factor, factor),
        p_synchronize_scaling_across_axes=1,
        bg_style_seg_sampling=False,
        border_mode_seg="constant",
        padding_value_seg=-1,
    )
    out = t(image=image.clone(), segmentation=label[None].clone())
    return out["image"], out["segmentation"][0].clamp_min(0)


def monai_sliding_window(
    image: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    patch_size: Sequence[int],
    overlap: float,
    batch_size: int,
    mode: str,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MONAI's sliding_window_inference of one (C, *spatial) image -> (K, *spatial), sigma 1/8 of the patch;
    `weights` replaces MONAI's importance map (roi_weight_map)."""
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        out = sliding_window_inference(
            image[None],
            tuple(patch_size),
            batch_size,
            predictor,
            overlap=overlap,
            mode=mode,
            sigma_scale=0.125,
            roi_weight_map=weights,
        )
    return torch.as_tensor(out)[0]


def plain_conv_unet(in_channels: int, num_classes: int, base: int, patch_size: Sequence[int]) -> torch.nn.Module:
    """nnU-Net's PlainConvUNet as its planner configures one for `patch_size` (isotropic spacing): first
    stage stride 1, then 2x pooling while every axis stays >= 4 voxels, features base * 2^stage up to
    10 * base (320 at base 32), two 3x3x3 conv + InstanceNorm + LeakyReLU per stage, no deep supervision."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    pools = 0
    while all(n / 2 ** (pools + 1) >= NNUNET_MIN_FEATURE_MAP for n in patch_size):
        pools += 1
    stages = pools + 1
    cap = int(round(NNUNET_MAX_FEATURES_PER_32 * base))
    return PlainConvUNet(
        input_channels=in_channels,
        n_stages=stages,
        features_per_stage=[min(base * 2**s, cap) for s in range(stages)],
        conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * stages,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * pools,
        n_conv_per_stage=[2] * stages,
        num_classes=num_classes,
        n_conv_per_stage_decoder=[2] * (stages - 1),
        conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
