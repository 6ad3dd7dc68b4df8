"""The pack's own ComfyUI types, and the node-side objects some of them carry.

Most own types are core objects as they are (EMOTIVETALK_MODEL is ``bundles.EmotiveTalkModel``,
EMOTIVETALK_REFERENCE is ``pipeline.Reference``, EMOTIVETALK_LIP and EMOTIVETALK_EXPRESSION are
tensors). Three carry a little more than the core object, because a value that travels between
nodes must hold everything the next node needs: the A/V offset, the fps, and emotion sources
that are tensors rather than files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._core import emotion, pipeline

MODEL = "EMOTIVETALK_MODEL"
VAID = "EMOTIVETALK_VAID"
AUDIO_PREPARED = "EMOTIVETALK_AUDIO"
LIP = "EMOTIVETALK_LIP"
AUDIO_EXP = "EMOTIVETALK_AUDIO_EXP"
EMOTION = "EMOTIVETALK_EMOTION"
EXPRESSION = "EMOTIVETALK_EXPRESSION"
REFERENCE = "EMOTIVETALK_REFERENCE"
CROP = "EMOTIVETALK_CROP"

CATEGORY = "EmotiveTalk"


def checked_images(image, where: str) -> torch.Tensor:
    """A ComfyUI IMAGE ``[B, H, W, 3 or 4]`` with at least one image and finite pixels, or an
    error naming the node input (``where``) and what it expected."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise ValueError(f"{where}: expected a ComfyUI IMAGE [images, height, width, 3], got {shape}")
    if 0 in image.shape[:3]:
        raise ValueError(f"{where}: the IMAGE {tuple(image.shape)} holds no pixels (an empty batch or a 0-pixel side)")
    if not torch.isfinite(image).all():
        raise ValueError(f"{where}: the IMAGE has NaN or infinite pixels; check the node that made it")
    return image


def checked_number(value: float, where: str) -> float:
    """A finite float widget value (a NaN typed into a workflow's JSON would make every frame NaN)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: must be a finite number, got {value}")
    return value


@dataclass
class PreparedSpeech(pipeline.PreparedAudio):
    """EMOTIVETALK_AUDIO: the core's PreparedAudio plus the A/V offset chosen with it (frames)."""

    av_offset: int = 0


@dataclass(frozen=True)
class SpeechFeatures:
    """EMOTIVETALK_AUDIO_EXP: speech features ``[N, L, D]`` for Di-CTE and their frame rate
    (the emotion timeline is in seconds)."""

    features: torch.Tensor
    fps: float

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]


@dataclass(frozen=True)
class EmotionInput:
    """EMOTIVETALK_EMOTION: a core EmotionTimeline plus the tensors its image/video sources name.

    ComfyUI hands images and videos over as tensors, while the library's EmotionSource names a
    file. A tensor source gets a key (``comfy-image:<id>``) as its value, and the tensors travel
    here under that key; :class:`nodes.stages.TensorEmotionResolver` looks them up. Nothing is
    written to disk.
    """

    timeline: emotion.EmotionTimeline
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> IMAGE [B, H, W, 3]
    videos: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict)  # key -> (frames, fps)
    # prompt -> networks.text.TextEmbedding, made by a connected CLIP (EmotiveTalk Emotion Text)
    texts: dict = field(default_factory=dict)

