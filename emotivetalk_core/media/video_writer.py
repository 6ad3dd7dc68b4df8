"""MP4 output: a streaming H.264 + AAC writer that only ever leaves a complete file.

:class:`VideoWriter` encodes frames as they arrive (decoded frames never pile up in memory), writes
the speech as AAC interleaved with the video, stores the generation settings as container
metadata, and only ever leaves a complete file at its destination. Reading video back is
:mod:`.video_reader`'s, which follows the rules kept here: the metadata keys the mp4 muxer owns and
the frame rates an mp4 time base can hold.

Audio/video sync. Both tracks start at time 0 (x264's B-frame delay and AAC's encoder priming are
hidden by mp4 edit lists, which FFmpeg writes and every mainstream player honours). The video track
lasts ``frames / fps`` exactly (fractional fps use the time base ``1/fps``) and the audio track
lasts ``samples / sample_rate`` exactly (the last AAC packet carries its true sample count, so the
encoder's padding is not counted). The writer never cuts or pads the audio: the pipeline pads it
to ``frame_samples(N, fps)`` (within one sample of ``N / fps``), so the two durations agree to a
sample. A mismatch of more than one frame is logged as a warning, not "fixed".

PyAV is imported inside the functions that use it.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np

from .audio import exact_rate

logger = logging.getLogger(__name__)

DEFAULT_CRF = 18
# The most FFmpeg's AAC encoder gives 16 kHz mono (6144 bits per 1024-sample frame); plenty for speech.
_AUDIO_BIT_RATE = 96_000
# use_metadata_tags stores every key verbatim (mdta atoms) instead of only the iTunes set;
# faststart moves the index to the front so browsers (ComfyUI's preview) play before the last byte.
_MOVFLAGS = "use_metadata_tags+faststart"
# Keys the mp4 muxer writes itself: a value stored under them would not survive a round trip.
_MUXER_KEYS = frozenset({"major_brand", "minor_version", "compatible_brands", "encoder"})
# FFmpeg stores rationals (time bases) as two signed 32-bit integers.
_MAX_RATIONAL_TERM = 2**31 - 1
# FFmpeg's AVCOL_SPC_BT709 (PyAV has enums for primaries, transfer and range, not for this one).
_AVCOL_SPC_BT709 = 1


def _exact_fps(value, name: str = "fps") -> Fraction:
    """:func:`audio.exact_rate` (29.97 means 2997/100), limited to what an mp4 time base can hold."""
    rate = exact_rate(value, name)
    if max(rate.numerator, rate.denominator) > _MAX_RATIONAL_TERM:
        raise ValueError(f"{name}={value!r} cannot be an mp4 time base; pass a Fraction such as 30000/1001")
    return rate


class VideoWriter:
    """Streaming mp4 writer: H.264 (libx264, yuv420p, BT.709 limited range) + AAC mono.

    Use it as a context manager::

        with VideoWriter("out.mp4", fps=25, width=512, height=512, audio=wave, metadata=tags) as out:
            for chunk in chunks:          # [n, H, W, 3] float in 0..1 (clipped) or uint8; numpy or torch
                out.write(chunk)

    Frames are converted and encoded one at a time inside :meth:`write`; the writer keeps no
    reference to them. The audio (1-D float32 at ``sample_rate``, given whole: it is small) is
    encoded alongside the video, each chunk taking the samples up to the video time reached, and
    the rest at :meth:`close`; it is never cut. ``metadata`` (str -> str) is stored in the
    container and read back by :func:`read_metadata`; every key survives except the ones the
    muxer writes itself (``major_brand``, ``minor_version``, ``compatible_brands``, ``encoder``),
    which are refused.

    The file is written under a hidden ``.<name>.<random>.partial`` name next to ``path`` and moved
    onto ``path`` only when complete, so a cancelled or crashed run never leaves a truncated mp4
    that looks finished (an existing file at ``path`` stays untouched until then). Leaving the
    ``with`` block through an exception, or calling :meth:`abort`, deletes the partial file and the
    exception propagates. A ``width`` or ``height`` that is not even raises ValueError (yuv420p
    subsamples chroma 2x2; odd sizes are unplayable in many players).
    """

    def __init__(
        self,
        path: str | Path,
        fps,
        width: int,
        height: int,
        audio: np.ndarray | None = None,
        sample_rate: int = 16000,
        metadata: Mapping[str, str] | None = None,
        crf: float = DEFAULT_CRF,
    ):
        self.path = Path(path)
        self.fps = _exact_fps(fps)
        self.width, self.height = _even_size(width, height)
        self.sample_rate = _positive_int(sample_rate, "sample_rate")
        self._audio = None if audio is None else _mono_audio(audio)
        metadata = _checked_metadata(metadata)
        crf = _checked_crf(crf)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"output directory does not exist: {self.path.parent}")
        self.frames_written = 0
        self._audio_sent = 0
        self._finished = False
        self._partial = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.partial")
        self._container = None
        try:
            self._open(metadata, crf)
        except BaseException:
            self.abort()
            raise

    def _open(self, metadata: dict[str, str], crf: float) -> None:
        import av

        self._container = av.open(str(self._partial), "w", format="mp4", options={"movflags": _MOVFLAGS})
        for key, value in metadata.items():
            self._container.metadata[key] = value
        self._video = self._container.add_stream("libx264", rate=self.fps, options={"crf": f"{crf:g}"})
        self._video.width = self.width
        self._video.height = self.height
        self._video.pix_fmt = "yuv420p"
        self._video.codec_context.time_base = 1 / self.fps
        # Tag what _encode_frame converts to, so players do not guess the YUV matrix (and shift colours).
        context = self._video.codec_context
        context.colorspace = _AVCOL_SPC_BT709
        context.color_primaries = av.video.reformatter.ColorPrimaries.BT709
        context.color_trc = av.video.reformatter.ColorTrc.BT709
        context.color_range = av.video.reformatter.ColorRange.MPEG
        self._audio_stream = None
        if self._audio is not None:
            self._audio_stream = self._container.add_stream("aac", rate=self.sample_rate, layout="mono")
            self._audio_stream.bit_rate = _AUDIO_BIT_RATE

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames) -> None:
        """Encode a chunk of frames ``[n, H, W, 3]`` (float 0..1, clipped, or uint8; numpy or torch)."""
        if self._finished:
            raise ValueError(f"{self.path}: the writer is closed")
        if not hasattr(frames, "shape"):
            frames = np.asarray(frames)
        shape = tuple(frames.shape)
        if len(shape) != 4 or shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"frames must have shape [n, {self.height}, {self.width}, 3], got {list(shape)}")
        for index in range(shape[0]):
            self._encode_frame(_to_uint8(frames[index]))
        self._send_audio(self._samples_due(self.frames_written))

    def close(self) -> None:
        """Flush both encoders, finish the mp4 and move it onto ``path``. Calling it again is a no-op.

        If finishing fails, the partial file is deleted and the error propagates.
        """
        if self._finished:
            return
        try:
            self._flush()
            container, self._container = self._container, None
            container.close()
            os.replace(self._partial, self.path)
        except BaseException:
            self.abort()
            raise
        self._finished = True

    def abort(self) -> None:
        """Stop writing and delete the partial file; ``path`` is left as it was. No-op once closed."""
        if self._finished:
            return
        self._finished = True
        container, self._container = self._container, None
        try:
            if container is not None:
                container.close()
        finally:
            self._partial.unlink(missing_ok=True)

    def _encode_frame(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv420p",
            dst_colorspace=av.video.reformatter.Colorspace.ITU709,
            dst_color_range=av.video.reformatter.ColorRange.MPEG,
        )
        frame.pts = self.frames_written
        frame.time_base = self._video.codec_context.time_base
        self._mux(self._video.encode(frame))
        self.frames_written += 1

    def _samples_due(self, frames: int) -> int:
        """Audio samples that play before the end of video frame ``frames``."""
        return math.floor(Fraction(frames) * self.sample_rate / self.fps)

    def _send_audio(self, until: int) -> None:
        """Encode the audio samples ``[sent, until)``; PyAV re-chunks them into AAC frames."""
        import av

        if self._audio is None:
            return
        until = min(until, self._audio.shape[0])
        if until <= self._audio_sent:
            return
        block = np.ascontiguousarray(self._audio[None, self._audio_sent:until])
        frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.time_base = Fraction(1, self.sample_rate)
        frame.pts = self._audio_sent
        self._mux(self._audio_stream.encode(frame))
        self._audio_sent = until

    def _flush(self) -> None:
        if self.frames_written == 0:
            raise ValueError(f"{self.path}: no frames were written")
        self._mux(self._video.encode(None))
        if self._audio is not None:
            self._send_audio(self._audio.shape[0])
            self._mux(self._audio_stream.encode(None))
            self._warn_if_out_of_sync()

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def _warn_if_out_of_sync(self) -> None:
        video_seconds = Fraction(self.frames_written) / self.fps
        audio_seconds = Fraction(self._audio.shape[0], self.sample_rate)
        if abs(audio_seconds - video_seconds) > 1 / self.fps:
            logger.warning(
                "%s: audio lasts %.3f s but the %d frames last %.3f s; pad the audio with "
                "audio.pad_to_frames before writing",
                self.path, float(audio_seconds), self.frames_written, float(video_seconds),
            )


def _to_uint8(frame) -> np.ndarray:
    """One ``[H, W, 3]`` frame (numpy or torch, float 0..1 or uint8) as a uint8 numpy array."""
    if hasattr(frame, "detach"):  # a torch tensor; torch is only present if the caller has one
        frame = frame.detach()
        if frame.is_floating_point():
            frame = frame.float()  # bfloat16/float16 have no (exact) numpy counterpart
        frame = frame.cpu().numpy()
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    if not np.issubdtype(frame.dtype, np.floating):
        raise TypeError(f"frames must be float (0..1) or uint8, got {frame.dtype}")
    if not np.isfinite(frame).all():
        raise ValueError("frames contain NaN or infinite values")
    # Decoders overshoot 0..1 slightly; clipping is the intended treatment, not an error.
    return (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _even_size(width: int, height: int) -> tuple[int, int]:
    width = _positive_int(width, "width")
    height = _positive_int(height, "height")
    if width % 2 or height % 2:
        raise ValueError(
            f"width and height must be even for H.264 yuv420p (chroma is subsampled 2x2), got {width}x{height}"
        )
    return width, height


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _mono_audio(audio) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D (mono), got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError("audio is empty; pass audio=None for a silent video")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite values")
    return audio


def _checked_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata keys and values must be str, got {key!r}: {type(value).__name__}")
        if key in _MUXER_KEYS:
            raise ValueError(f"metadata key {key!r} is written by the mp4 muxer and would be lost")
    return metadata


def _checked_crf(crf) -> float:
    if isinstance(crf, bool) or not isinstance(crf, (int, float)) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be a number in 0..51 (x264's quality scale), got {crf!r}")
    return float(crf)
