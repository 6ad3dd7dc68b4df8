"""Video input: a frame reader (resampled by timestamp, resized) and a probe.

:func:`read_video_frames` / :func:`iter_video_frames` decode a video (e.g. an emotion reference
clip) to RGB floats, optionally resampled to a target fps by timestamp and resized;
:func:`frames_at` resamples frames already in memory the same way. :func:`probe` reports frame
count, rates and the exact durations of both tracks; :func:`read_metadata` the container metadata
:class:`.video_writer.VideoWriter` stored.

PyAV (and torch, for resizing) are imported inside the functions that use them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from .audio import exact_rate
# The writer's rules, which reading follows: the keys its muxer owns, the frame rates an mp4 time
# base can hold, positive sizes.
from .video_writer import _MUXER_KEYS, _exact_fps, _positive_int


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
    # Frame k is shown while its centre lies inside the video: at most `limit` of them, at least one.
    shown = []
    for k in range(max(1, limit)):
        position = (k + Fraction(1, 2)) / rate * source
        if position >= len(frames):
            break
        shown.append(math.floor(position))
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
