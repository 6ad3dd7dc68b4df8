"""The log-mel encoder: weight-less and deterministic, the light-weight encoder of the ``tiny``
configuration (and of the SynthTalk default model)."""

from __future__ import annotations

import numpy as np
import torch

from .base import SpeechEncoder
from .timing import SAMPLE_RATE

_LOGMEL_WINDOW = 400  # 25 ms
_LOGMEL_HOP = 160  # 10 ms
_LOGMEL_FLOOR = 1e-10
LOGMEL_NORMALISATION = f"ln(max(mel_power, {_LOGMEL_FLOOR:g}))"


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int = _LOGMEL_WINDOW, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[n_mels, n_fft // 2 + 1]`` triangular filters on the HTK mel scale, 0 Hz to Nyquist."""
    bin_hz = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    empty = np.flatnonzero(bank.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(
            f"{n_mels} mel bands are too many for a {n_fft}-point FFT at {sample_rate} Hz: "
            f"bands {empty.tolist()} contain no FFT bin"
        )
    return bank.astype(np.float32)


class LogMelSpeechEncoder(SpeechEncoder):
    """Log-mel spectrogram: 25 ms Hann windows every 10 ms, centred (frame i at ``i * 0.01`` s).

    Weight-less and deterministic: the light-weight encoder of the ``tiny`` configuration.
    """

    def __init__(self, n_mels: int, layers: int = 1):
        super().__init__()
        if layers != 1:
            raise ValueError(f"the log-mel encoder has exactly one feature layer, got layers={layers}")
        self.n_mels = int(n_mels)
        self.num_layers = 1
        self.dim = self.n_mels
        # Non-persistent: derived from n_mels, so the state dict (and the weights hash) stay empty.
        self.register_buffer("window", torch.hann_window(_LOGMEL_WINDOW, dtype=torch.float32), persistent=False)
        self.register_buffer("filterbank", torch.from_numpy(mel_filterbank(self.n_mels)), persistent=False)

    def features(self, waveform: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        # A float32 island in a half-precision model: the STFT has no bf16/fp16 CPU kernel, and
        # powers spanning 1e-10..1e2 lose their low bits in half precision before the log.
        waveform = waveform.to(self.window.device, torch.float32)
        # Zero padding, not reflection: a reflected click at the start would appear twice.
        spectrum = torch.stft(waveform, n_fft=_LOGMEL_WINDOW, hop_length=_LOGMEL_HOP, window=self.window.float(),
                              center=True, pad_mode="constant", return_complex=True)
        mel = self.filterbank.float() @ spectrum.abs().square()  # [n_mels, F]
        log_mel = torch.log(mel.clamp_min(_LOGMEL_FLOOR))
        return log_mel.T.unsqueeze(1), 0.0, _LOGMEL_HOP / SAMPLE_RATE

    def fingerprint(self) -> dict:
        return {
            "architecture": f"logmel-{self.n_mels}",
            "normalisation": LOGMEL_NORMALISATION,
            "weights_sha256": "",
            "source": "built-in",
        }
