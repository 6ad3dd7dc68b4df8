"""Time grids: when each speech feature frame and each video frame happens, and reading one at
the other.

An encoder produces features on its own time grid (wav2vec2: one frame per 20 ms; log-mel: one
per 10 ms); :meth:`.base.SpeechEncoder.encode` reads them at the video frame centres
``(j + 0.5) / fps`` by linear interpolation between the two nearest feature frames (by timestamp,
clamped at the ends), so audio and video stay aligned whatever the two rates are.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16000

# Standard wav2vec2 / HuBERT convolutional feature encoder: the default conv grid below. Strides
# are not stored in a weights file, so a file is only accepted when its kernels match these (its
# strides then are these too).
WAV2VEC2_CONV_KERNELS = (10, 3, 3, 3, 3, 2, 2)
WAV2VEC2_CONV_STRIDES = (5, 2, 2, 2, 2, 2, 2)


def conv_receptive_field(kernels=WAV2VEC2_CONV_KERNELS, strides=WAV2VEC2_CONV_STRIDES) -> tuple[int, int]:
    """``(receptive_field, stride)`` in input samples of a stack of unpadded 1-D convolutions."""
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        field += (kernel - 1) * jump
        jump *= stride
    return field, jump


def conv_frame_count(num_samples: int, receptive_field: int = 400, stride: int = 320) -> int:
    """Output frames of the convolution stack for ``num_samples`` inputs: ``floor((T - rf) / stride) + 1``.

    Equal to applying ``floor((L - k) / s) + 1`` layer by layer (the floors compose exactly).
    """
    if num_samples < receptive_field:
        return 0
    return (num_samples - receptive_field) // stride + 1


def conv_frame_times(num_frames: int, receptive_field: int = 400, stride: int = 320,
                     sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Centre, in seconds, of each conv frame: frame k covers samples ``[stride*k, stride*k + rf)``."""
    return (stride * np.arange(num_frames, dtype=np.float64) + receptive_field / 2) / sample_rate


def video_frame_times(num_frames: int, fps: float) -> np.ndarray:
    """Centre, in seconds, of each video frame: ``(j + 0.5) / fps``."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return (np.arange(num_frames, dtype=np.float64) + 0.5) / float(fps)


def interpolate_frames(features: torch.Tensor, first_time: float, step: float, query_times: np.ndarray) -> torch.Tensor:
    """``features`` (frame i at ``first_time + i * step`` s) linearly interpolated at ``query_times``.

    Queries before the first or after the last frame take that frame's value.
    """
    count = features.shape[0]
    if count == 0:
        raise ValueError("cannot interpolate an empty feature sequence")
    position = np.clip((np.asarray(query_times, dtype=np.float64) - first_time) / step, 0.0, count - 1)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, count - 1)
    weight = torch.as_tensor(position - lower, dtype=features.dtype, device=features.device)
    weight = weight.reshape(-1, *([1] * (features.dim() - 1)))
    lower_t = torch.as_tensor(lower, device=features.device)
    upper_t = torch.as_tensor(upper, device=features.device)
    return features[lower_t] * (1 - weight) + features[upper_t] * weight
