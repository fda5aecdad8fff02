"""The paper's human-designed baseline: a 3D U-ResNet with attention gates and combined segmentation maps.

Architecture (channels for base_channels=c; every convolution is followed by InstanceNorm (affine) and
LeakyReLU(0.01) unless stated; residual blocks are post-activation: conv3-IN-LReLU-conv3-IN, plus the
input (through a 1x1x1 conv + IN where the width changes), then LReLU, as in Yu et al. 2017):

    encoder  level 0: conv3 (in -> c) + residual block (c)                   full resolution
             level l = 1..3: conv3 stride 2 (c*2^(l-1) -> c*2^l) + residual block (c*2^l)
    decoder  level l = 2..0, from the level-(l+1) decoder output g (the bottleneck for l = 2):
               up   = trilinear upsampling of g to the skip's exact size, conv3 (c*2^(l+1) -> c*2^l)
               skip = attention gate (Oktay et al. 2018) on the encoder output x of level l, gated by g:
                      a = sigmoid(psi(relu(theta(x) + upsample(phi(g))))), skip = a * x
                      (theta, phi: 1x1x1 convs to c*2^l / 2 channels; psi: 1x1x1 conv to one channel)
               out  = residual block (concat(up, skip): 2*c*2^l -> c*2^l)
    output   1x1x1 segmentation conv on every decoder level (2, 1, 0); coarser maps are upsampled
             (trilinear) and summed element-wise into the next finer one (Kayalibay et al. 2017).
             With combine_levels=False only the full-resolution map is used.

Any spatial size works (odd sizes included) because every upsampling targets the skip's exact shape;
training needs the coarsest level, ceil(size / 8) per axis, to hold more than one voxel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEGATIVE_SLOPE = 0.01
LEVELS = 4


def _conv_norm_act(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
    )


def _upsample(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


class ResidualBlock(nn.Module):
    """Two 3x3x3 convolutions with an identity (or 1x1x1 projection) shortcut, post-activation."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(cin, cout, 3, padding=1, bias=False),
            nn.InstanceNorm3d(cout, affine=True),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.InstanceNorm3d(cout, affine=True),
        )
        self.shortcut = (
            nn.Identity()
            if cin == cout
            else nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), nn.InstanceNorm3d(cout, affine=True))
        )
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


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
    """Upsample the coarser decoder output, gate the skip with it, and merge both in a residual block."""

    def __init__(self, channels: int):
        super().__init__()
        self.up = _conv_norm_act(2 * channels, channels)
        self.gate = AttentionGate(channels, 2 * channels)
        self.block = ResidualBlock(2 * channels, channels)

    def forward(self, g: Tensor, skip: Tensor) -> Tensor:
        up = self.up(_upsample(g, skip.shape[2:]))
        return self.block(torch.cat([up, self.gate(skip, g)], dim=1))


class UResNet(nn.Module):
    """3D U-ResNet: (B, in_channels, X, Y, Z) -> logits (B, num_classes, X, Y, Z); see the module docstring."""

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 32, combine_levels: bool = True):
        super().__init__()
        widths = [base_channels * 2**level for level in range(LEVELS)]
        self.combine_levels = combine_levels
        self.encoder = nn.ModuleList(
            [nn.Sequential(_conv_norm_act(in_channels, widths[0]), ResidualBlock(widths[0], widths[0]))]
        )
        for level in range(1, LEVELS):
            self.encoder.append(
                nn.Sequential(
                    _conv_norm_act(widths[level - 1], widths[level], stride=2),
                    ResidualBlock(widths[level], widths[level]),
                )
            )
        self.decoder = nn.ModuleList([DecoderLevel(widths[level]) for level in range(LEVELS - 1)])
        head_levels = range(LEVELS - 1) if combine_levels else range(1)
        self.heads = nn.ModuleList([nn.Conv3d(widths[level], num_classes, 1) for level in head_levels])
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, a=NEGATIVE_SLOPE)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
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
