"""E-FID's network: Deep3DFaceRecon's coefficient regressor (ResNet-50 + 7 linear heads), plain torch.

The layout is Deep3DFaceRecon_pytorch's ``ReconNetWrapper('resnet50')`` (``net_recon`` in its
``epoch_20.pth``): a torchvision-style ResNet-50 (stride on the 3x3 conv, "v1.5") without its fc,
under ``backbone.``, then ``final_layers.0..6``: 1x1 convolutions giving the 257 coefficients
identity 80 | expression 64 | texture 80 | angles 3 | lighting 27 | translation 2 + 1.
:class:`ExpressionNet` takes RGB in 0..1 at 224x224 (Deep3DFaceRecon feeds ``image / 255.``, no
other normalisation) and :data:`EXPRESSION` picks coefficients 80..143.

``width`` scales the ResNet's channel counts (1 = the standard network; the heads keep their
sizes so the expression slice is the same); smaller widths are for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KIND = "expression"
INPUT_SIZE = 224
HEADS = (80, 64, 80, 3, 27, 2, 1)
EXPRESSION = slice(80, 144)
LAYERS = (3, 4, 6, 3)  # ResNet-50


def build(width: float = 1.0) -> ExpressionNet:
    return ExpressionNet(width)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """torchvision's ResNet-50 up to the global average pool, ``[B, 3, H, W]`` -> ``[B, 2048 * width, 1, 1]``."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        base = max(1, round(64 * width))
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        channels = base
        for index, blocks in enumerate(LAYERS):
            planes = base * 2 ** index
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(channels, planes, stride=2 if block == 0 and index > 0 else 1))
                channels = planes * Bottleneck.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
        self.out_channels = channels

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1)


class ExpressionNet(nn.Module):
    """RGB ``[B, 3, 224, 224]`` in 0..1 -> the 257 3DMM coefficients ``[B, 257]``."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.backbone = ResNet50(width)
        self.final_layers = nn.ModuleList(nn.Conv2d(self.backbone.out_channels, size, 1) for size in HEADS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return torch.cat([layer(features) for layer in self.final_layers], dim=1).flatten(1)
