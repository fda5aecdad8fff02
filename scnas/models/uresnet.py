"""The paper's human-designed baseline: a 3D U-ResNet with attention gates and summed segmentation maps.

Architecture (widths w_l = c * 2^l for base_channels = c; every convolution is followed by InstanceNorm
(affine) and LeakyReLU(0.01) unless stated; residual blocks are post-activation, as in Yu et al. 2017:
conv3-IN-LReLU-conv3-IN plus the input, then LReLU):

    stem     level 0: conv3 (in -> c), the "first convolutional block" of the paper        full resolution
    encoder  level l = 1..3: down = conv 2x2x2 stride 2 (w_(l-1) -> w_l), residual block (w_l)
    decoder  level l = 2, 1, 0, from the level-(l+1) decoder output g (the bottleneck for l = 2):
               up   = transposed conv 2x2x2 stride 2 (w_(l+1) -> w_l), cropped to the skip's size
               skip = attention gate (Oktay et al. 2018) on the encoder output x of level l (the stem
                      for l = 0), gated by g: a = sigmoid(psi(relu(theta(x) + upsample(phi(g))))),
                      skip = a * x (theta, phi: 1x1x1 convs to w_l / 2 channels; psi: to one channel)
               out  = residual block (up + skip) for l = 2, 1; up + skip at level 0
    output   1x1x1 segmentation conv on every decoder level (2, 1, 0); coarser maps are upsampled
             (trilinear) and summed element-wise into the next finer one (Kayalibay et al. 2017).
             With combine_levels=False only the full-resolution map is used.

Cost: at 4 x 128^3 input, 4 classes and c = 32 one forward pass is 426.93 GFLOPs (2 FLOPs per
multiply-add, scnas.models.flops), within 2 % of the paper's 419.59. What fixes that figure: one 32 -> 32
conv3 at 128^3 alone costs 116 GFLOPs and every coarser level halves the cost of its convolutions, so the
paper's budget holds about 3.6 full-resolution conv3 in all. The design therefore mirrors the SCNAS
macro-structure (scnas.nas.cells): only the stem runs at full resolution and the first down-sampling
follows it at once; there is one residual block per coarser level in each path (encoder levels 1 to 3
with the bottleneck, decoder levels 2 and 1, like the cells enc1, enc2, inter, dec1, dec2); the
full-resolution decoder level has no residual block. Encoder features are summed into the decoder (Yu
et al.'s long residual connections; the SCNAS decoder sums them too), not concatenated, so decoder blocks
stay w_l wide. Up-sampling is 3D U-Net's 2x2x2 up-convolution (Cicek et al. 2016), down-sampling its
learnable counterpart of 2x2x2 pooling. Alternatives miss by more than 5 %: residual blocks at full
resolution in both paths with trilinear + conv3 up-sampling and concatenated skips, 1535 GFLOPs; a
residual block at full resolution in either path, 659; concatenated skips into 2 w_l -> w_l blocks, 521;
3x3x3 strided down-sampling, 463.

Any spatial size works (odd sizes included): odd axes are padded by one voxel before a down-sampling
(level sizes are ceil(n / 2)) and every up-sampling is cropped to its skip's size; training needs the
coarsest level, ceil(size / 8) per axis, to hold more than one voxel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scnas.nas.conv import Conv3d

NEGATIVE_SLOPE = 0.01
LEVELS = 4


def _norm_act(channels: int) -> list[nn.Module]:
    return [nn.InstanceNorm3d(channels, affine=True), nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)]


def _upsample(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


class Downsample(nn.Module):
    """2x2x2 stride-2 conv to ceil(n / 2) voxels per axis: odd axes are zero-padded at their far end."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(Conv3d(cin, cout, 2, stride=2, bias=False), *_norm_act(cout))

    def forward(self, x: Tensor) -> Tensor:
        pad = []
        for n in reversed(x.shape[2:]):
            pad += [0, n % 2]
        return self.conv(F.pad(x, pad))


class ResidualBlock(nn.Module):
    """Two 3x3x3 convolutions with an identity shortcut, post-activation."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            Conv3d(channels, channels, 3, padding=1, bias=False),
            *_norm_act(channels),
            Conv3d(channels, channels, 3, padding=1, bias=False),
            nn.InstanceNorm3d(channels, affine=True),
        )
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + x)


class AttentionGate(nn.Module):
    """Additive attention gate: coefficients in (0, 1) from skip features and a coarser gating signal."""

    def __init__(self, skip_channels: int, gate_channels: int):
        super().__init__()
        inter = max(skip_channels // 2, 1)
        self.theta = nn.Conv3d(skip_channels, inter, 1, bias=False)
        self.phi = nn.Conv3d(gate_channels, inter, 1)
        self.psi = nn.Conv3d(inter, 1, 1)

    def coefficients(self, x: Tensor, g: Tensor) -> Tensor:
        """Attention coefficients (B, 1, *x's spatial size) for skip features x gated by g."""
        f = F.relu(self.theta(x) + _upsample(self.phi(g), x.shape[2:]))
        return torch.sigmoid(self.psi(f))

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        return x * self.coefficients(x, g)


class DecoderLevel(nn.Module):
    """Up-sample the coarser decoder output, add the gated skip, and refine in a residual block (if any)."""

    def __init__(self, channels: int, residual: bool):
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose3d(2 * channels, channels, 2, stride=2, bias=False), *_norm_act(channels)
        )
        self.gate = AttentionGate(channels, 2 * channels)
        self.block = ResidualBlock(channels) if residual else nn.Identity()

    def forward(self, g: Tensor, skip: Tensor) -> Tensor:
        x, y, z = skip.shape[2:]
        up = self.up(g)[:, :, :x, :y, :z]
        return self.block(up + self.gate(skip, g))


class UResNet(nn.Module):
    """3D U-ResNet: (B, in_channels, X, Y, Z) -> logits (B, num_classes, X, Y, Z); see the module docstring."""

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 32, combine_levels: bool = True):
        super().__init__()
        widths = [base_channels * 2**level for level in range(LEVELS)]
        self.combine_levels = combine_levels
        self.stem = nn.Sequential(Conv3d(in_channels, widths[0], 3, padding=1, bias=False), *_norm_act(widths[0]))
        self.encoder = nn.ModuleList(
            nn.Sequential(Downsample(widths[level - 1], widths[level]), ResidualBlock(widths[level]))
            for level in range(1, LEVELS)
        )
        self.decoder = nn.ModuleList(DecoderLevel(widths[level], residual=level > 0) for level in range(LEVELS - 1))
        head_levels = range(LEVELS - 1) if combine_levels else range(1)
        self.heads = nn.ModuleList([nn.Conv3d(widths[level], num_classes, 1) for level in head_levels])
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, a=NEGATIVE_SLOPE)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        skips = [x]
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        logits = None
        for level in reversed(range(LEVELS - 1)):
            x = self.decoder[level](x, skips[level])
            if level < len(self.heads):
                seg = self.heads[level](x)
                logits = seg if logits is None else seg + _upsample(logits, seg.shape[2:])
        return logits
