"""What every speech encoder is: an ``nn.Module`` with ``encode`` and ``fingerprint``.

``encode(waveform, num_frames, fps) -> [num_frames, num_layers, dim]`` reads the encoder's own
features at the video frame centres (see :mod:`.timing`). ``fingerprint()`` identifies an encoder
(architecture, input normalisation, a hash of the weights by :func:`weights_sha256`, where it was
loaded from), so a V-AID checkpoint can refuse features of another one (:mod:`.load`).
"""

from __future__ import annotations

import abc
import hashlib

import torch
from torch import nn

from .timing import SAMPLE_RATE, interpolate_frames, video_frame_times


class SpeechEncoder(nn.Module, abc.ABC):
    """A frozen speech encoder: features per video frame, ``[num_frames, num_layers, dim]``."""

    num_layers: int
    dim: int

    @abc.abstractmethod
    def features(self, waveform: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """``(features [F, num_layers, dim], first_time, step)``: frame i is at ``first_time + i*step`` s."""

    @abc.abstractmethod
    def fingerprint(self) -> dict:
        """``{"architecture", "normalisation", "weights_sha256", "source"}`` of this encoder."""

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor, num_frames: int, fps: float) -> torch.Tensor:
        """Features at the centre of each of ``num_frames`` video frames at ``fps``.

        ``waveform`` is mono float at 16 kHz, shape ``[T]``. Frames past the end of the audio get
        the last feature frame; pad the audio first (``media.audio.pad_to_frames``) to encode silence.
        """
        waveform = torch.as_tensor(waveform)
        if waveform.dim() != 1:
            raise ValueError(f"waveform must be 1-D mono at {SAMPLE_RATE} Hz, got shape {tuple(waveform.shape)}")
        if waveform.shape[0] == 0:
            raise ValueError("waveform is empty")
        if num_frames < 0:
            raise ValueError(f"num_frames must be >= 0, got {num_frames}")
        features, first_time, step = self.features(waveform.to(torch.float32))
        return interpolate_frames(features, first_time, step, video_frame_times(num_frames, fps))


def weights_sha256(state_dict: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> str:
    """sha256 over (name, shape, float32 bytes) of every tensor, in sorted-name order.

    Casting to float32 first makes an fp16 file and an fp32 copy of the same values hash alike.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        if name in skip:
            continue
        tensor = state_dict[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy())
    return digest.hexdigest()
