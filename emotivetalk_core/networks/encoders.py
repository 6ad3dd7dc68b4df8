"""Visual encoders: Lip Encoder, Exp Encoder, Identity Encoder and Face Processor.

Figure panel (b) draws a frozen **Lip Encoder** (target l_v of the lip stream) and a frozen **Exp
Encoder** (target e_v of the expression stream, and Di-CTE's unconditional condition from the
portrait), a trainable **Identity Encoder** inside Di-CTE; panel (a) draws a **Face Processor**
making ETHD's face mask. The paper names no networks, so these are small CNNs whose weights live
in our checkpoints: inference needs torch only (docs/ARCHITECTURE.md, "Visual encoders: torch
only at inference").

All four share :class:`ConvTrunk` and one input convention: images ``[B, 3, H, W]``, floats in
0..1, a face-centred square of any size, resized internally to the config's ``image_size``.
Every class takes the ``encoders`` config dict (``image_size``, ``channels``, ``lip_dim``,
``exp_dim``, ``id_dim``) and reads the keys it needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..media.image import check_images

# The mouth region of a face-centred square: the lower half, middle half of the width, as
# fractions of the side (top, bottom, left, right). A square, so resizing it to ``image_size``
# keeps the mouth's aspect; it holds the lips, chin and jaw line, which move with speech, and
# excludes eyes and brows, which carry emotion the lip stream must not learn.
MOUTH_BOX = (0.5, 1.0, 0.25, 0.75)


def _group_count(channels: int) -> int:
    """GroupNorm groups: up to 8, always a divisor of ``channels``."""
    return math.gcd(8, channels)


class ConvTrunk(nn.Module):
    """Shared CNN trunk: one stride-2 stage per entry of ``channels``; returns every stage's map."""

    def __init__(self, channels: list[int], in_channels: int = 3):
        super().__init__()
        stages = []
        for width in channels:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
                    nn.GroupNorm(_group_count(width), width),
                    nn.SiLU(),
                    nn.Conv2d(width, width, 3, padding=1),
                    nn.GroupNorm(_group_count(width), width),
                    nn.SiLU(),
                )
            )
            in_channels = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def prepare(images: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Resize to ``size`` x ``size`` and map 0..1 to -1..1, in the network's dtype."""
    if images.shape[-2:] != (size, size):
        # Antialiased, so a large portrait does not alias into the small network input; in
        # float32, since antialiased resizing has no half-precision CPU kernel.
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images.to(dtype) * 2 - 1


def crop_fraction(images: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """Crop ``(top, bottom, left, right)`` given as fractions of the height and width."""
    height, width = images.shape[-2:]
    top, bottom, left, right = box
    return images[..., round(top * height) : round(bottom * height), round(left * width) : round(right * width)]


class _EmbeddingEncoder(nn.Module):
    """Trunk, global average pool, linear head: one embedding per image."""

    def __init__(self, config: dict, out_dim: int):
        super().__init__()
        self.config = dict(config)
        self.image_size = config["image_size"]
        self.trunk = ConvTrunk(config["channels"])
        self.head = nn.Linear(config["channels"][-1], out_dim)

    def region(self, images: torch.Tensor) -> torch.Tensor:
        """The part of the face this encoder looks at: all of it unless a subclass says otherwise."""
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        x = prepare(self.region(images), self.image_size, self.head.weight.dtype)
        return self.head(self.trunk(x)[-1].mean(dim=(-2, -1)))


class LipEncoder(_EmbeddingEncoder):
    """Lip Encoder (figure panel (b), frozen, gives l_v): ``[B, 3, H, W]`` -> ``[B, lip_dim]``.

    Looks only at :data:`MOUTH_BOX` (the lower-centre square of the face), cropped at the input
    resolution before resizing so a large portrait keeps its mouth detail.
    """

    def __init__(self, config: dict):
        super().__init__(config, config["lip_dim"])

    def region(self, images: torch.Tensor) -> torch.Tensor:
        return crop_fraction(images, MOUTH_BOX)


class ExpEncoder(_EmbeddingEncoder):
    """Exp Encoder (figure panels (a), (b), frozen, gives e_v and the reference expression):
    ``[B, 3, H, W]`` -> ``[B, exp_dim]``."""

    def __init__(self, config: dict):
        super().__init__(config, config["exp_dim"])


class IdentityEncoder(_EmbeddingEncoder):
    """Identity Encoder (figure panel (b), inside Di-CTE, trained with it):
    ``[B, 3, H, W]`` -> ``[B, id_dim]``."""

    def __init__(self, config: dict):
        super().__init__(config, config["id_dim"])


class FaceProcessor(nn.Module):
    """Face Processor (figure panel (a)): face mask probabilities ``[B, 1, H, W]`` at the input
    resolution, 1 = face.

    A 1x1 logit head on every trunk stage, summed at ``image_size`` (coarse stages say where the
    face is, fine ones sharpen its outline), upsampled to the input size, then a sigmoid.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.image_size = config["image_size"]
        self.trunk = ConvTrunk(config["channels"])
        self.heads = nn.ModuleList(nn.Conv2d(width, 1, 1) for width in config["channels"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        size = (self.image_size, self.image_size)
        x = prepare(images, self.image_size, self.heads[0].weight.dtype)
        logits = sum(
            F.interpolate(head(feature), size=size, mode="bilinear", align_corners=False)
            for head, feature in zip(self.heads, self.trunk(x), strict=True)
        )
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)
