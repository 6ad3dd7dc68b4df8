"""Audio decoding and the audio/video frame-count rules.

Everything downstream works on 16 kHz mono float32 waveforms. :func:`frame_count` is the single
rule that says how many video frames a waveform drives; :func:`pad_to_frames` is its inverse, so
``frame_count(len(pad_to_frames(w, n, fps)), fps) == n`` for every waveform with at most ``n``
frames. Both compute with exact fractions: a float ``fps`` is read as the decimal it prints as
(``29.97`` is 2997/100; pass ``Fraction(30000, 1001)`` for exact NTSC).

PyAV is imported inside :func:`load_audio` only (the package is imported at ComfyUI start-up).
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from numbers import Rational, Real
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Source rates accepted (Hz): narrow-band telephone speech (8 kHz) with room below, up to what
# studio interfaces record. Outside it the file is mislabelled or not speech.
SOURCE_RATES = (4000, 384000)

# Samples handed to the resampler per call: bounds its scratch memory on long files.
_RESAMPLE_BLOCK = 1 << 16


def exact_rate(value, name: str = "fps") -> Fraction:
    """``value`` (int, float, Fraction or a string like "30000/1001") as an exact positive Fraction.

    A float goes through its shortest decimal repr, so 29.97 becomes 2997/100 rather than the
    binary double 29.969999999999998863131622783839702606201171875.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if isinstance(value, Rational):
        rate = Fraction(value)
    elif isinstance(value, Real):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        rate = Fraction(repr(float(value)))
    elif isinstance(value, str):
        rate = Fraction(value)
    else:
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if rate <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return rate


def frame_count(num_samples: int, fps, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames driven by ``num_samples`` audio samples: ``ceil(num_samples * fps / sample_rate)``.

    A partial last frame counts (the audio is padded to cover it, see :func:`pad_to_frames`).
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    frames = Fraction(int(num_samples)) * exact_rate(fps, "fps") / exact_rate(sample_rate, "sample_rate")
    return math.ceil(frames)


def frame_samples(num_frames: int, fps, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples covering ``num_frames`` video frames: ``floor(num_frames * sample_rate / fps)``.

    This is the largest sample count :func:`frame_count` maps to ``num_frames``. The ceiling would
    cover the last frame to the final fraction of a sample but, whenever ``num_frames * sample_rate
    / fps`` is not whole (30 fps at 16 kHz), :func:`frame_count` would then count one frame more.
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    samples = Fraction(int(num_frames)) * exact_rate(sample_rate, "sample_rate") / exact_rate(fps, "fps")
    return math.floor(samples)


def pad_to_frames(waveform: np.ndarray, num_frames: int, fps, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``waveform`` followed by silence up to :func:`frame_samples` ``(num_frames, fps, sample_rate)``.

    Never cuts: a waveform already that long is returned unchanged (a caller that wants fewer
    frames than the audio drives simply encodes fewer).
    """
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be 1-D (mono), got shape {waveform.shape}")
    target = frame_samples(num_frames, fps, sample_rate)
    if waveform.shape[0] >= target:
        return waveform
    return np.pad(waveform, (0, target - waveform.shape[0]))


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file FFmpeg reads (wav, flac, mp3, ogg, m4a, mp4, ...).

    Returns float32 mono at ``sample_rate``: channels are averaged, encoder priming and trailing
    padding are removed where the container records them (see :func:`_trim_to_stream`), and the
    result is resampled with FFmpeg's swresample.
    """
    return _load_timed(path, sample_rate)[0]


def load_audio_on_video_timeline(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """:func:`load_audio` of a video file, shifted so sample 0 is heard with the first video frame.

    A container's audio and video streams each carry a start time, and they differ (an audio
    track muxed 0.2 s late, a camera that starts recording sound first): an audio stream that
    starts after the video gets that much silence in front, one that starts before loses its
    lead. Without this, every lip target of such a file would sit that far from its speech.
    """
    speech, audio_start = _load_timed(path, sample_rate)
    shift = round((audio_start - video_start_seconds(path)) * sample_rate)
    if shift >= 0:
        return np.concatenate([np.zeros(shift, np.float32), speech])
    if -shift >= speech.shape[0]:
        raise ValueError(f"{path}: the audio ends {-shift / sample_rate - speech.shape[0] / sample_rate:.2f} s "
                         "before the first video frame")
    return speech[-shift:]


def video_start_seconds(path: str | Path) -> float:
    """When the first video stream of ``path`` starts on the container's clock (0 when unrecorded)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        if stream.start_time is None or stream.time_base is None:
            return 0.0
        return float(stream.start_time * stream.time_base)


def _load_timed(path: str | Path, sample_rate: int) -> tuple[np.ndarray, float]:
    """:func:`load_audio`'s samples and the time of the first one on the container's clock."""
    import av

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"audio file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, expected an audio or video file")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                kinds = sorted({stream.type for stream in container.streams}) or ["none"]
                raise ValueError(f"{path} has no audio stream (streams found: {', '.join(kinds)})")
            stream = container.streams.audio[0]
            if stream.codec_context is None:  # FFmpeg found no decoder for what the header says
                raise ValueError(f"{path}: its audio codec cannot be decoded (a damaged header or an unknown codec); "
                                 "re-export it as WAV, FLAC or MP3")
            if stream.rate:  # before decoding: a 1 Hz stream would fail inside the resampler
                check_source_rate(stream.rate, str(path))
            mono, source_rate, start = _decode_mono(stream, container)
    except av.FFmpegError as error:
        raise ValueError(f"cannot decode audio from {path}: {error}") from error
    checked_speech(mono, source_rate, str(path))
    logger.debug("decoded %s: %d samples at %d Hz", path, mono.size, source_rate)
    speech = mono if source_rate == sample_rate else resample(mono, source_rate, sample_rate)
    if speech.size == 0:
        raise ValueError(f"{path}: the audio is too short ({mono.size} sample(s) at {source_rate} Hz is less than one at {sample_rate} Hz)")
    return speech, start


def _decode_mono(stream, container) -> tuple[np.ndarray, int, float]:
    """All samples of ``stream`` at its own rate, channels averaged, trimmed to the stream extent,
    and the time in seconds of the first sample kept (0 when the stream records none)."""
    import av

    to_float = None
    blocks: list[np.ndarray] = []
    first_pts = None
    max_frame = 0
    for frame in container.decode(stream):
        if to_float is None:
            # Fixed layout and rate from the first frame: a mid-stream change is converted rather
            # than concatenated with mismatched shapes.
            source_rate = frame.sample_rate
            # Packed (interleaved) float, one plane: PyAV reads planar frames of more than 8
            # channels past their plane table and crashes the process (a fuzzed 9-channel WAV).
            to_float = av.AudioResampler(format="flt", layout=frame.layout.name, rate=source_rate)
            first_pts = frame.pts
        max_frame = max(max_frame, frame.samples)
        blocks.extend(_channel_mean(converted) for converted in to_float.resample(frame))
    if to_float is None:
        return np.zeros(0, np.float32), stream.rate or SAMPLE_RATE, 0.0
    blocks.extend(_channel_mean(converted) for converted in to_float.resample(None))
    mono = np.concatenate(blocks).astype(np.float32, copy=False)
    mono = _trim_to_stream(mono, stream, source_rate, first_pts, max_frame)
    return mono, source_rate, _first_sample_seconds(stream, first_pts)


def _channel_mean(frame) -> np.ndarray:
    """Mono samples of a packed float frame (``[1, samples * channels]``, interleaved)."""
    return frame.to_ndarray().reshape(frame.samples, frame.layout.nb_channels).mean(axis=1)


def _trim_to_stream(mono: np.ndarray, stream, rate: int, first_pts, max_frame: int) -> np.ndarray:
    """Drop encoder priming before the stream's start and padding after its recorded duration.

    FFmpeg already skips the priming that LAME headers, Ogg pre-skip and MP4 edit lists declare,
    but it keeps AAC's trailing padding (up to one codec frame). Priming the decoder did not skip
    shows as a first frame timed before ``stream.start_time``. The tail is trimmed to
    ``stream.duration`` only when the excess is at most one codec frame: a larger gap means the
    duration is an estimate (e.g. a header-less CBR mp3), and cutting real audio is worse than
    keeping a few milliseconds of padding.
    """
    time_base = stream.time_base
    if time_base is None:
        return mono
    start_pts = stream.start_time if stream.start_time is not None else first_pts
    if first_pts is not None and start_pts is not None and first_pts < start_pts:
        lead = round((start_pts - first_pts) * time_base * rate)
        logger.debug("dropping %d priming samples", lead)
        mono = mono[lead:]
    if stream.duration:
        expected = round(stream.duration * time_base * rate)
        excess = mono.shape[0] - expected
        if 0 < excess <= max_frame:
            logger.debug("dropping %d padding samples after the recorded duration", excess)
            mono = mono[:expected]
    return mono


def _first_sample_seconds(stream, first_pts) -> float:
    """When the first sample :func:`_trim_to_stream` keeps is heard: the stream's start, or the
    first decoded frame's time when that is later (priming before the start is dropped)."""
    times = [pts for pts in (stream.start_time, first_pts) if pts is not None]
    if stream.time_base is None or not times:
        return 0.0
    return float(max(times) * stream.time_base)


# Full scale of integer PCM: samples are divided by it (uint8 is offset binary, centred on 128).
_PCM_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.uint8): 128.0}


def pcm_to_float(samples) -> np.ndarray:
    """Samples as float32 in -1..1: integer PCM (int16, int32, uint8) is scaled from its full
    scale, not read as values up to 32767; float stays as it is."""
    samples = np.asarray(samples)
    if samples.dtype.kind == "f":
        return samples.astype(np.float32, copy=False)
    if samples.dtype not in _PCM_SCALE:
        raise ValueError(f"audio samples of type {samples.dtype} are not PCM audio: expected float, int16, int32 or uint8")
    centre = 128.0 if samples.dtype == np.uint8 else 0.0
    return ((samples.astype(np.float64) - centre) / _PCM_SCALE[samples.dtype]).astype(np.float32)


def check_source_rate(sample_rate, source: str) -> None:
    low, high = SOURCE_RATES
    if not low <= sample_rate <= high:
        raise ValueError(f"{source}: sample rate {sample_rate:g} Hz is outside {low}..{high} Hz; "
                         f"the file is mislabelled or not speech: re-export it (16 or 48 kHz)")


def checked_speech(mono: np.ndarray, sample_rate, source: str) -> np.ndarray:
    """``mono`` if it is usable speech: samples, all finite, at a rate in :data:`SOURCE_RATES`.
    ``source`` names it in the error (a file, or a node input)."""
    check_source_rate(sample_rate, source)
    if mono.size == 0:
        raise ValueError(f"{source} has no samples")
    bad = np.flatnonzero(~np.isfinite(mono))
    if bad.size:
        raise ValueError(f"{source}: {bad.size} audio samples are NaN or infinite (the first at "
                         f"{bad[0] / sample_rate:.3f} s); the audio is corrupt: re-export or re-record it")
    return mono


def resample(mono: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling with swresample (delay-compensated, flushed to the exact length)."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    out: list[np.ndarray] = []
    for start in range(0, mono.shape[0], _RESAMPLE_BLOCK):
        block = np.ascontiguousarray(mono[None, start:start + _RESAMPLE_BLOCK])
        frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
        frame.sample_rate = source_rate
        out.extend(converted.to_ndarray().reshape(-1) for converted in resampler.resample(frame))
    out.extend(converted.to_ndarray().reshape(-1) for converted in resampler.resample(None))
    # A few samples can resample to none at all.
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)


def to_speech_rate(waveform, sample_rate: int) -> np.ndarray:
    """Any in-memory audio (``[T]``, ``[C, T]`` or ComfyUI's ``[1, C, T]``) -> float32 mono 16 kHz.

    Channels are averaged, then resampled with the same resampler as :func:`load_audio`.
    """
    if hasattr(waveform, "detach"):  # a torch tensor (bfloat16 has no numpy type: widen it first)
        waveform = waveform.detach().cpu()
        waveform = (waveform.float() if waveform.is_floating_point() else waveform).numpy()
    mono = pcm_to_float(waveform)
    while mono.ndim > 1:
        mono = mono.mean(axis=0)
    exact_rate(sample_rate, "sample_rate")
    checked_speech(mono, sample_rate, "the audio")
    return mono if int(sample_rate) == SAMPLE_RATE else resample(mono, int(sample_rate), SAMPLE_RATE)
