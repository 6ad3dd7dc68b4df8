"""Fuzzing the four places where a user's files and text enter: the audio loader, the image loader,
the emotion-timeline parser and model-file loading. Each gets generated inputs (valid files with
bytes changed, cut or inserted; random bytes; text and JSON of every shape) and must either
return what it promises or raise one of its documented errors, never anything else.

The suite runs a short, derandomised profile (the same inputs on every machine); the full run
(docs/RELIABILITY.md) is ``EMOTIVETALK_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/test_fuzz.py -q``.
"""

import atexit
import io
import json
import math
import os
import shutil
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from emotivetalk_core.checkpoints import CheckpointError, load_model_file, save_model_file
from emotivetalk_core.emotion import EmotionTimeline, parse_timeline
from emotivetalk_core.media.audio import load_audio
from emotivetalk_core.media.image import load_image

EXAMPLES = int(os.environ.get("EMOTIVETALK_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_FOLDER = Path(tempfile.mkdtemp(prefix="emotivetalk-fuzz-"))
atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)
_NAME = "fuzzed-input"  # errors must name the file


def _wav(channels: int, rate: int, width: int) -> bytes:
    samples = (np.sin(np.arange(800) / 7.0) * 0.5 * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}" if width > 1 else np.int16)
    if width == 1:
        samples = (samples // 256 + 128).astype(np.uint8)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes(np.repeat(samples[:, None], channels, axis=1).tobytes())
    return buffer.getvalue()


def _image(kind: str) -> bytes:
    pixels = (np.indices((12, 9)).sum(0) * 9 % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([pixels, pixels[::-1], 255 - pixels], -1)).save(buffer, format=kind)
    return buffer.getvalue()


def _model_file() -> bytes:
    path = _FOLDER / "valid.safetensors"
    save_model_file(path, {"part": ({"w": torch.arange(6.0).view(2, 3), "b": torch.ones(2)}, {"width": 3})},
                    info={"trained": False})
    return path.read_bytes()


SEEDS = {
    "audio": [_wav(1, 16000, 2), _wav(2, 44100, 2), _wav(1, 8000, 1), _wav(3, 22050, 4)],
    "image": [_image("PNG"), _image("JPEG"), _image("BMP"), _image("GIF"), _image("TIFF"), _image("WEBP")],
    "model": [_model_file()],
}


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed file with a few bytes overwritten, cut, inserted or duplicated; or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["overwrite", "cut", "insert", "repeat", "header"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "overwrite" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "header" and len(data) > 8:  # lengths and counts live in the first bytes
            at = draw(st.integers(0, min(63, len(data) - 4)))
            data[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f"]))
        elif action == "cut":
            data = data[:at]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif action == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


def _written(data: bytes, suffix: str) -> Path:
    path = _FOLDER / f"{_NAME}{suffix}"
    path.write_bytes(data)
    return path


@FUZZ
@given(mutated(SEEDS["audio"]), st.sampled_from([".wav", ".mp3", ".bin"]))
def test_the_audio_loader_returns_speech_or_a_value_error(data, suffix):
    try:
        speech = load_audio(_written(data, suffix))
    except ValueError as error:
        assert _NAME in str(error)  # the file is named
        return
    assert speech.dtype == np.float32 and speech.ndim == 1 and speech.size > 0 and np.isfinite(speech).all()


@FUZZ
@given(mutated(SEEDS["image"]), st.sampled_from([".png", ".jpg", ".img"]))
def test_the_image_loader_returns_an_image_or_a_value_error(data, suffix):
    try:
        image = load_image(_written(data, suffix))
    except ValueError as error:
        assert _NAME in str(error)
        return
    assert image.ndim == 4 and image.shape[:2] == (1, 3) and image.numel() > 0
    assert torch.isfinite(image).all() and 0 <= image.min() and image.max() <= 1


@FUZZ
@given(mutated(SEEDS["model"]))
def test_model_file_loading_returns_tensors_or_a_checkpoint_error(data):
    try:
        states, configs, info = load_model_file(_written(data, ".safetensors"))
    except CheckpointError as error:
        assert _NAME in str(error)
        return
    assert set(states) == set(configs) and isinstance(info, dict)
    assert all(isinstance(tensor, torch.Tensor) for state in states.values() for tensor in state.values())


_LABELS = st.sampled_from(["neutral", "happy", "Sad", "angry", "surprised", "joy", "", "happy:2", "x"])
_NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20), st.booleans(),
                     st.none(), st.text(max_size=4))
_KEYFRAME = st.dictionaries(
    st.sampled_from(["time", "label", "text", "image", "video", "intensity", "blend", "emotion"]),
    st.one_of(_NUMBERS, _LABELS, st.lists(_NUMBERS, max_size=2)), max_size=5)
_JSON = st.one_of(
    st.fixed_dictionaries({"keyframes": st.lists(_KEYFRAME, max_size=4)},
                          optional={"neutralise_portrait": _NUMBERS, "extra": _NUMBERS}),
    st.recursive(st.one_of(_NUMBERS, _LABELS), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)),
)
_COMPACT_ENTRY = st.tuples(st.one_of(st.floats(allow_nan=True), st.integers(-5, 100)), _LABELS,
                           st.sampled_from(["", "*0.5", "*-1", "*nan", "*", "~2", "~", "*1~1", "~x"]))
_COMPACT = st.lists(_COMPACT_ENTRY, min_size=1, max_size=4).map(
    lambda entries: ",".join(f"{time}:{label}{tail}" for time, label, tail in entries))


@FUZZ
@given(st.one_of(st.text(max_size=60), _COMPACT, _JSON.map(lambda value: json.dumps(value, allow_nan=True))))
def test_the_timeline_parser_returns_a_timeline_or_a_value_error(spec):
    try:
        timeline = parse_timeline(spec, base_dir=_FOLDER)
    except ValueError:
        return
    assert isinstance(timeline, EmotionTimeline) and timeline.keyframes
    for keyframe in timeline.keyframes:
        assert all(math.isfinite(value) and value >= 0 for value in (keyframe.time, keyframe.intensity, keyframe.blend))
