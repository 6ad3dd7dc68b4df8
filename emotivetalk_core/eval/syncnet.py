"""Sync-C / Sync-D: SyncNet (Chung & Zisserman 2016), ``syncnet_v2`` as syncnet_python evaluates it.

:class:`SyncNet` is syncnet_python's ``S`` (SyncNetModel.py) with the same module names, so
``syncnet_v2.model`` loads as it is (docs/EVALUATION.md). Its video stream takes 5 consecutive
224x224 BGR frames in 0..255 (``cv2.imread`` values, no normalisation), its audio stream 20 MFCC
frames (13 coefficients at 100 Hz: 0.2 s, the same 5 frames at 25 fps).

:func:`sync_scores` is syncnet_python's ``calc_pdist`` + ``evaluate``: for each offset in
``-vshift..vshift`` the mean over frames of the distance between the video embedding and the
audio embedding that many frames away (zero vectors past either end), then Sync-D = the smallest
mean distance, Sync-C = the median mean distance minus it, and the offset at the minimum.

:func:`mfcc` is python_speech_features' ``mfcc`` with its defaults, ported to numpy (float64) on
the 16-bit sample values syncnet_python reads from its WAV.

``width`` scales every channel count and the embedding size (1 = the standard network).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KIND = "syncnet"
FPS = 25
SAMPLE_RATE = 16000
FRAME_SIZE = 224
WINDOW = 5  # video frames per embedding
MFCC_PER_FRAME = 4  # 100 Hz MFCC over 25 fps video
VSHIFT = 15  # offsets searched either side, syncnet_python's run_syncnet default
EMBEDDING = 1024


def build(width: float = 1.0) -> SyncNet:
    return SyncNet(width)


class SyncNet(nn.Module):
    """syncnet_python's ``S``: ``forward_aud`` [B, 1, 13, 20] and ``forward_lip`` [B, 3, 5, 224, 224]
    -> embeddings [B, 1024 * width]."""

    def __init__(self, width: float = 1.0):
        super().__init__()

        def c(channels: int) -> int:
            return max(1, round(channels * width))

        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, c(64), kernel_size=3, padding=1), nn.BatchNorm2d(c(64)), nn.ReLU(),
            nn.MaxPool2d(kernel_size=1, stride=1),
            nn.Conv2d(c(64), c(192), kernel_size=3, padding=1), nn.BatchNorm2d(c(192)), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            nn.Conv2d(c(192), c(384), kernel_size=3, padding=1), nn.BatchNorm2d(c(384)), nn.ReLU(),
            nn.Conv2d(c(384), c(256), kernel_size=3, padding=1), nn.BatchNorm2d(c(256)), nn.ReLU(),
            nn.Conv2d(c(256), c(256), kernel_size=3, padding=1), nn.BatchNorm2d(c(256)), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c(256), c(512), kernel_size=(5, 4)), nn.BatchNorm2d(c(512)), nn.ReLU(),
        )
        self.netfcaud = _head(c(512), c(EMBEDDING))
        self.netfclip = _head(c(512), c(EMBEDDING))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, c(96), kernel_size=(5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(c(96)), nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(c(96), c(256), kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(c(256)), nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(c(256), c(256), kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c(256)), nn.ReLU(),
            nn.Conv3d(c(256), c(256), kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c(256)), nn.ReLU(),
            nn.Conv3d(c(256), c(256), kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c(256)), nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(c(256), c(512), kernel_size=(1, 6, 6)), nn.BatchNorm3d(c(512)), nn.ReLU(),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def _head(features: int, embedding: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, features), nn.BatchNorm1d(features), nn.ReLU(), nn.Linear(features, embedding))


def sync_scores(video_embeddings, audio_embeddings, vshift: int = VSHIFT) -> dict:
    """``{"offset", "sync_d", "sync_c"}`` of one video from its per-frame embeddings ``[N, D]``.

    ``offset`` is syncnet_python's AV offset, ``vshift - argmin``: k when the video embedding of
    frame i is closest to the audio embedding of frame i - k (the mouth k frames behind the sound).
    """
    video = torch.as_tensor(video_embeddings, dtype=torch.float32)
    audio = torch.as_tensor(audio_embeddings, dtype=torch.float32)
    if video.ndim != 2 or video.shape != audio.shape or len(video) == 0:
        raise ValueError(f"embeddings must both be [N, D] with N > 0, got {list(video.shape)} and {list(audio.shape)}")
    window = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))
    # distances[i, j]: video frame i against audio frame i + j - vshift (pairwise_distance adds
    # its eps of 1e-6 to the difference, as in calc_pdist).
    distances = torch.stack([F.pairwise_distance(video[i:i + 1].expand(window, -1), padded[i:i + window])
                             for i in range(len(video))])
    mean = distances.mean(dim=0)
    smallest, index = torch.min(mean, 0)
    return {"offset": vshift - int(index), "sync_d": float(smallest), "sync_c": float(torch.median(mean) - smallest)}


def mfcc(speech: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """13 MFCCs at 100 Hz ``[frames, 13]`` of float speech in -1..1, as syncnet_python computes them.

    syncnet_python reads 16-bit PCM with ``scipy.io.wavfile`` and passes the integer sample values
    to ``python_speech_features.mfcc`` with its defaults: 25 ms frames every 10 ms (no window
    function, zero-padded at the end), pre-emphasis 0.97, a 512-point power spectrum, 26 mel
    filters on 0..8000 Hz, log, orthonormal DCT-II, lifter 22, and c0 replaced by the log frame
    energy. The samples are quantised to 16 bits here the same way.
    """
    from scipy.fft import dct

    pcm = np.clip(np.round(np.asarray(speech, np.float64) * 32768.0), -32768, 32767)
    emphasised = np.append(pcm[0], pcm[1:] - 0.97 * pcm[:-1])
    frame_length, step, nfft = round(0.025 * sample_rate), round(0.01 * sample_rate), 512
    count = 1 if len(emphasised) <= frame_length else 1 + math.ceil((len(emphasised) - frame_length) / step)
    padded = np.concatenate([emphasised, np.zeros((count - 1) * step + frame_length - len(emphasised))])
    frames = padded[np.arange(frame_length)[None, :] + step * np.arange(count)[:, None]]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    tiny = np.finfo(float).eps
    energy = power.sum(axis=1)
    energy[energy == 0] = tiny
    bands = power @ _mel_filterbank(26, nfft, sample_rate).T
    bands[bands == 0] = tiny
    cepstra = dct(np.log(bands), type=2, axis=1, norm="ortho")[:, :13]
    cepstra *= 1 + 11.0 * np.sin(np.pi * np.arange(13) / 22)  # lifter L = 22: 1 + (L / 2) sin(pi n / L)
    cepstra[:, 0] = np.log(energy)
    return cepstra


def _mel_filterbank(filters: int, nfft: int, sample_rate: int) -> np.ndarray:
    """python_speech_features' ``get_filterbanks``: triangles between FFT bins of mel-spaced points."""
    high_mel = 2595 * np.log10(1 + (sample_rate / 2) / 700.0)
    hertz = 700 * (10 ** (np.linspace(0, high_mel, filters + 2) / 2595.0) - 1)
    bins = np.floor((nfft + 1) * hertz / sample_rate)
    bank = np.zeros((filters, nfft // 2 + 1))
    for j in range(filters):
        rising = np.arange(int(bins[j]), int(bins[j + 1]))
        falling = np.arange(int(bins[j + 1]), int(bins[j + 2]))
        bank[j, rising] = (rising - bins[j]) / (bins[j + 1] - bins[j])
        bank[j, falling] = (bins[j + 2] - falling) / (bins[j + 2] - bins[j + 1])
    return bank


def windows(frame_count: int, speech_samples: int) -> int:
    """Embeddings syncnet_python computes: ``min(frames, floor(samples / 640)) - 5`` (its
    ``lastframe``; one fewer than the 5-frame windows that fit, kept for identical numbers)."""
    return min(frame_count, speech_samples // (SAMPLE_RATE // FPS)) - WINDOW
