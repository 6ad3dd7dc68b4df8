"""Talking-head test videos made from a real photo, for preprocessing and end-to-end training tests.

:func:`make_talking_video` writes an mp4 (H.264 + AAC through the pack's own ``VideoWriter``) of
scikit-image's astronaut portrait: a real face, so OpenCV's detector finds it. The face sits off
the frame's centre and drifts slowly, and a dark mouth opening grows and shrinks with the
envelope of a speech-like audio track, so lip targets change with the audio. Nothing is
downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emotivetalk_core.media.video_writer import VideoWriter

# The astronaut's Haar face box (x0, y0, x1, y1) and the middle of her lips (x, y), in the 512x512 photo.
ASTRONAUT_FACE = (177.0, 67.0, 270.0, 160.0)
ASTRONAUT_LIPS = (226.0, 140.0)
_BACKGROUND_TOP, _BACKGROUND_BOTTOM = np.array([180.0, 190.0, 205.0]), np.array([90.0, 100.0, 120.0])


def mead_path(root: str | Path, identity: str = "M003", emotion: str = "angry", level: int = 2, index: int = 1) -> Path:
    """Where MEAD keeps a frontal video: ``root/M003/video/front/angry/level_2/001.mp4``."""
    return Path(root) / identity / "video" / "front" / emotion / f"level_{level}" / f"{index:03d}.mp4"


def speech_envelope(times: np.ndarray, seed: int = 0) -> np.ndarray:
    """A syllable-like envelope in 0..1: bursts at about 4 per second, with pauses between phrases."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi)
    syllables = np.clip(np.sin(2 * np.pi * 3.7 * times + phase), 0, None) ** 1.5
    phrases = np.clip(np.sin(2 * np.pi * 0.45 * times + phase / 2) * 1.5 + 0.5, 0, 1)
    return syllables * phrases


def make_talking_video(
    path: str | Path,
    seconds: float = 2.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    face_offset: tuple[float, float] = (0.15, 0.05),
    face_fraction: float = 0.3,
    drift: float = 0.04,
    audio: str | None = "speech",
    face: bool = True,
    hidden: tuple[float, float] | None = None,
    sample_rate: int = 48000,
    seed: int = 0,
) -> dict:
    """Write a talking-head mp4 and return what is in it.

    ``size`` is (width, height), even. The face box's side is ``face_fraction`` of the height; its
    centre sits ``face_offset`` (fractions of width and height) from the frame's centre and drifts
    on a slow ellipse of radius ``drift`` x width. ``audio``: ``"speech"`` (harmonics of a 150 Hz
    voice under :func:`speech_envelope`), ``"silent"`` (an audio track of zeros) or None (no audio
    stream). ``face=False`` leaves the face out: background and a moving plain block only;
    ``hidden=(start, stop)`` leaves it out between those seconds (the person turned away).

    Returns ``{"centres": [N, 2] face-box centres in pixels per source frame, "side": face box side,
    "envelope": [N] mouth opening per source frame}``.
    """
    import cv2
    from skimage import data

    width, height = size
    frames = round(seconds * fps)
    times = (np.arange(frames) + 0.5) / fps
    envelope = speech_envelope(times, seed)
    zoom = face_fraction * height / (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0])
    turn = 2 * np.pi * times / max(seconds, 1e-9) * 0.5
    centres = np.stack(
        [
            width * (0.5 + face_offset[0]) + drift * width * np.sin(turn),
            height * (0.5 + face_offset[1]) + 0.5 * drift * width * (1 - np.cos(turn)),
        ],
        axis=1,
    )
    photo = data.astronaut()
    face_centre = np.array([(ASTRONAUT_FACE[0] + ASTRONAUT_FACE[2]) / 2, (ASTRONAUT_FACE[1] + ASTRONAUT_FACE[3]) / 2])
    background = _background(width, height)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sound = _audio(audio, seconds, sample_rate, seed)
    # Lossless (crf 0): x264's output varies from run to run (threads, timing), which lossy frames
    # would carry into the tests that read these videos (face detection on the crops above all).
    with VideoWriter(path, fps=fps, width=width, height=height, audio=sound, sample_rate=sample_rate, crf=0) as writer:
        for index in range(frames):
            if face and not (hidden and hidden[0] <= times[index] < hidden[1]):
                portrait = _open_mouth(photo, envelope[index])
                shift = centres[index] - zoom * face_centre
                matrix = np.array([[zoom, 0, shift[0]], [0, zoom, shift[1]]])
                warped = cv2.warpAffine(portrait, matrix, (width, height), flags=cv2.INTER_LINEAR)
                inside = cv2.warpAffine(np.ones(photo.shape[:2], np.float32), matrix, (width, height))[..., None]
                frame = inside * warped + (1 - inside) * background
            else:
                frame = background.copy()
                x = int(width * (0.3 + 0.2 * np.sin(turn[index])))
                frame[height // 3 : height // 3 + height // 4, x : x + width // 5] = (120, 60, 40)
            writer.write(np.clip(frame, 0, 255).astype(np.uint8)[None])
    return {"centres": centres, "side": zoom * (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0]), "envelope": envelope}


def write_garbage(path: str | Path, size: int = 4096, seed: int = 0) -> Path:
    """A file with a video name and random bytes: what a broken download looks like."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def _open_mouth(photo: np.ndarray, opening: float) -> np.ndarray:
    """The photo with a dark mouth opening of height proportional to ``opening`` (0..1)."""
    import cv2

    if opening < 0.05:
        return photo
    portrait = photo.copy()
    # The opening hangs from the lip line, as a dropping jaw opens it.
    half_height = 1 + 8 * opening
    centre = (round(ASTRONAUT_LIPS[0] * 16), round((ASTRONAUT_LIPS[1] + half_height) * 16))
    axes = (15 * 16, round(half_height * 16))
    cv2.ellipse(portrait, centre, axes, 0, 0, 360, (45, 15, 20), -1, cv2.LINE_AA, shift=4)
    return portrait


def _background(width: int, height: int) -> np.ndarray:
    rows = np.linspace(0, 1, height)[:, None, None]
    return np.broadcast_to((1 - rows) * _BACKGROUND_TOP + rows * _BACKGROUND_BOTTOM, (height, width, 3)).astype(np.float32)


def _audio(kind: str | None, seconds: float, sample_rate: int, seed: int) -> np.ndarray | None:
    if kind is None:
        return None
    samples = round(seconds * sample_rate)
    if kind == "silent":
        return np.zeros(samples, np.float32)
    if kind != "speech":
        raise ValueError(f"audio must be 'speech', 'silent' or None, got {kind!r}")
    times = np.arange(samples) / sample_rate
    pitch = 150 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * times))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    noise = np.random.default_rng(seed).normal(0, 0.05, samples)
    return (0.25 * speech_envelope(times, seed) * (voice + noise)).astype(np.float32)
