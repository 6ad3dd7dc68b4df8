"""MP4 output and video input: a streaming H.264 + AAC writer, a frame reader and a probe.

:class:`VideoWriter` encodes frames as they arrive (decoded frames never pile up in memory), writes
the speech as AAC interleaved with the video, stores the generation settings as container
metadata, and only ever leaves a complete file at its destination. :func:`read_video_frames` /
:func:`iter_video_frames` decode a video (e.g. an emotion reference clip) to RGB floats, optionally
resampled to a target fps by timestamp and resized. :func:`probe` reports frame count, rates and
the exact durations of both tracks.

Audio/video sync. Both tracks start at time 0 (x264's B-frame delay and AAC's encoder priming are
hidden by mp4 edit lists, which FFmpeg writes and every mainstream player honours). The video track
lasts ``frames / fps`` exactly (fractional fps use the time base ``1/fps``) and the audio track
lasts ``samples / sample_rate`` exactly (the last AAC packet carries its true sample count, so the
encoder's padding is not counted). The writer never cuts or pads the audio: the pipeline pads it
to ``frame_samples(N, fps)`` (within one sample of ``N / fps``), so the two durations agree to a
sample. A mismatch of more than one frame is logged as a warning, not "fixed".

PyAV (and torch, for resizing) are imported inside the functions that use them.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Iterator, Mapping
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


def read_metadata(path: str | Path) -> dict[str, str]:
    """The container metadata stored by :class:`VideoWriter` (muxer-written keys left out)."""
    import av

    path = _existing_file(path)
    try:
        with av.open(str(path)) as container:
            return {key: value for key, value in container.metadata.items() if key not in _MUXER_KEYS}
    except av.FFmpegError as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def read_video_frames(path: str | Path, fps=None, size: tuple[int, int] | None = None) -> np.ndarray:
    """All frames of the first video stream as RGB float32 ``[M, H, W, 3]`` in 0..1.

    See :func:`iter_video_frames` for ``fps`` and ``size``. Raises ValueError when the stream
    decodes to no frames.
    """
    frames = list(iter_video_frames(path, fps=fps, size=size))
    if not frames:
        raise ValueError(f"{path}: the video stream decoded to no frames")
    return np.stack(frames)


def iter_video_frames(path: str | Path, fps=None, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Decode the first video stream frame by frame to RGB float32 ``[H, W, 3]`` in 0..1.

    The YUV matrix and range are taken from the stream's tags (untagged: BT.601 limited, FFmpeg's
    default) and a display rotation (phone clips) is applied in steps of 90 degrees.

    ``fps``: resample by timestamp. Output frame ``k`` is the source frame on screen at the centre
    of its interval, ``(k + 1/2) / fps`` seconds after the first frame, i.e. the source frame whose
    own display interval contains that instant (the nearest source frame centre; on an exact tie
    the later frame). Same-rate input is returned unchanged; halving the rate keeps frames
    1, 3, 5, ...; output frames continue while their centre lies before the end of the last source
    frame. Frames without timestamps cannot be resampled (ValueError).

    ``size``: ``(height, width)``, resized (after rotation) with antialiased bilinear filtering.

    The file is opened (and checked: FileNotFoundError if missing, ValueError if it has no video
    stream or is not a media file) before this returns; decoding happens as frames are consumed.
    """
    path = _existing_file(path)
    target_fps = None if fps is None else _exact_fps(fps)
    size = None if size is None else _checked_size(size)
    container = _open_video(path)
    return _decode_frames(container, path, target_fps, size)


def frames_at(frames, source_fps: float, fps: float, limit: int):
    """Frames held in memory (``[M, ...]`` tensor or array at ``source_fps``) resampled to ``fps``
    as :func:`iter_video_frames` resamples a file: frame ``k`` is the source frame on screen at
    ``(k + 1/2) / fps``, while that centre lies inside the video; at most ``limit`` frames (at
    least one)."""
    source, rate = exact_rate(source_fps, "source_fps"), exact_rate(fps, "fps")
    centres = [(k + Fraction(1, 2)) / rate for k in range(max(1, limit))]
    shown = [math.floor(centre * source) for centre in centres if centre * source < len(frames)]
    return frames[shown or [0]]


def probe(path: str | Path) -> dict:
    """Frame count, rate, size and exact track durations of a video file, without decoding.

    Returns ``{"frames", "fps", "width", "height", "duration", "audio_duration",
    "audio_sample_rate"}``: ``frames`` counts the video packets (one frame each), ``fps`` is the
    stream's average rate as a Fraction (None if unknown), ``width``/``height`` are as stored
    (before any display rotation), durations are float seconds from the first timestamp to the end
    of the last packet of the first video / audio stream (edit lists applied, so encoder delay and
    AAC padding are not counted). The audio entries are None without an audio stream.
    """
    import av

    path = _existing_file(path)
    container = _open_video(path)
    try:
        with container:
            return _probe_streams(container)
    except av.FFmpegError as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def _probe_streams(container) -> dict:
    # Stream objects are only valid while the container is open: read everything here.
    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    extents = _packet_extents(container, [stream for stream in (video, audio) if stream is not None])
    frames, video_seconds = extents[video.index]
    return {
        "frames": frames,
        "fps": Fraction(video.average_rate) if video.average_rate else None,
        "width": video.codec_context.width,
        "height": video.codec_context.height,
        "duration": float(video_seconds),
        "audio_duration": None if audio is None else float(extents[audio.index][1]),
        "audio_sample_rate": None if audio is None else audio.codec_context.sample_rate,
    }


def _packet_extents(container, streams) -> dict[int, tuple[int, Fraction]]:
    """Per stream index: (packets, seconds from the stream's start to the end of its last packet).

    The start is the stream's ``start_time``, which honours edit lists: AAC priming packets are
    timed before it and must not count. Without a ``start_time``, the earliest packet starts it.
    """
    indices = [stream.index for stream in streams]
    counts = dict.fromkeys(indices, 0)
    earliest = dict.fromkeys(indices)
    ends = dict.fromkeys(indices)
    for packet in container.demux(streams):
        if packet.pts is None or packet.size == 0:
            continue
        index = packet.stream.index
        counts[index] += 1
        earliest[index] = packet.pts if earliest[index] is None else min(earliest[index], packet.pts)
        end = packet.pts + packet.duration
        ends[index] = end if ends[index] is None else max(ends[index], end)
    extents = {}
    for stream in streams:
        start = stream.start_time if stream.start_time is not None else earliest[stream.index]
        end = ends[stream.index]
        extents[stream.index] = (counts[stream.index], Fraction(0) if end is None else (end - start) * stream.time_base)
    return extents


def _open_video(path: Path):
    """An open input container with at least one video stream (ValueError otherwise)."""
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise ValueError(f"cannot open {path} as a media file: {error}") from error
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams}) or ["none"]
        container.close()
        raise ValueError(f"{path} has no video stream (streams found: {', '.join(kinds)})")
    return container


def _decode_frames(container, path: Path, fps: Fraction | None, size) -> Iterator[np.ndarray]:
    import av

    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = container.decode(stream)
        if fps is not None:
            frames = _frames_at_centres(frames, stream, fps, path)
        try:
            for frame in frames:
                yield _frame_to_rgb(frame, size)
        except av.FFmpegError as error:
            raise ValueError(f"cannot decode video from {path}: {error}") from error


def _frames_at_centres(frames, stream, fps: Fraction, path: Path):
    """For k = 0, 1, ...: the source frame displayed at ``(k + 1/2) / fps`` (see iter_video_frames)."""
    k = 0
    origin = shown = None
    for frame in frames:
        start = _frame_seconds(frame, path)
        if origin is None:
            origin = start
        # All centres before `start` fall in the interval of the frame shown until now.
        while shown is not None and (k + Fraction(1, 2)) / fps < start - origin:
            yield shown
            k += 1
        shown = frame
    if shown is None:
        return
    end = _frame_seconds(shown, path) - origin + _frame_length(shown, stream, path)
    while (k + Fraction(1, 2)) / fps < end:
        yield shown
        k += 1


def _frame_seconds(frame, path: Path) -> Fraction:
    if frame.pts is None or frame.time_base is None:
        raise ValueError(f"{path}: frames without timestamps cannot be resampled to a target fps")
    return frame.pts * frame.time_base


def _frame_length(frame, stream, path: Path) -> Fraction:
    """How long the last frame is displayed: its own duration, else one period of the stream rate."""
    if frame.duration:
        return frame.duration * frame.time_base
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise ValueError(f"{path}: the last frame has no duration and the stream no frame rate")
    return 1 / Fraction(rate)


def _frame_to_rgb(frame, size) -> np.ndarray:
    """RGB float32 in 0..1, converted with the frame's own YUV range, rotated for display, resized."""
    # The range is passed explicitly because PyAV < 17 read an unspecified source range as limited,
    # which washes out full-range (phone) clips; PyAV >= 17 takes it from the frame either way.
    rgb = frame.to_ndarray(format="rgb24", src_color_range=frame.color_range)
    # frame.rotation is counter-clockwise; np.rot90 with k > 0 turns counter-clockwise too.
    quarter_turns = round(frame.rotation / 90) % 4
    if quarter_turns:
        rgb = np.rot90(rgb, quarter_turns)
    image = np.ascontiguousarray(rgb, dtype=np.float32) / np.float32(255)
    return image if size is None or size == image.shape[:2] else _resize(image, size)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    resized = F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0).clamp_(0, 1).contiguous().numpy()


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


def _checked_size(size) -> tuple[int, int]:
    if len(size) != 2:
        raise ValueError(f"size must be (height, width), got {size!r}")
    return _positive_int(size[0], "size height"), _positive_int(size[1], "size width")


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, expected a video file")
    return path
