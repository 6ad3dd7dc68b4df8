"""media.video_writer and media.video_reader: streamed H.264 + AAC mp4 writing, metadata, cancellation,
frame reading, probing."""

import gc
import json
import logging
import struct
import weakref
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from emotivetalk_core.media.audio import frame_samples
from emotivetalk_core.media.video_reader import frames_at, iter_video_frames, probe, read_metadata, read_video_frames
from emotivetalk_core.media.video_writer import VideoWriter

SR = 16000
W, H = 64, 48


def _tone(num_samples, freq=440.0, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(num_samples) / SR)).astype(np.float32)


def _gradient_frames(n):
    """Smooth horizontal/vertical ramps in R/G; frame k has blue level k/n, so frames differ."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    return np.stack(
        [np.stack([xx / W, yy / H, np.full_like(xx, k / n)], axis=-1) for k in range(n)]
    ).astype(np.float32)


def _grey_frames(levels):
    return np.stack([np.full((H, W, 3), level, np.uint8) for level in levels])


def _write(path, frames, fps, audio=None, chunk=8, **kwargs):
    with VideoWriter(path, fps, frames.shape[2], frames.shape[1], audio=audio, **kwargs) as out:
        for start in range(0, frames.shape[0], chunk):
            out.write(frames[start:start + chunk])


def _decoded_audio(path):
    with av.open(str(path)) as container:
        return np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])


def _frame_levels(frames):
    """Grey level index (level / 10) of each decoded uniform frame."""
    return [round(float(frame.mean()) * 255 / 10) for frame in frames]


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)], ids=["25", "30000/1001"])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "torch"])
def test_streamed_mp4_keeps_every_frame_and_the_whole_audio(tmp_path, fps, as_tensor):
    n = 37
    num_samples = frame_samples(n, fps, SR)  # the length media.audio.pad_to_frames gives 37 frames
    frames = _gradient_frames(n)
    path = tmp_path / "out.mp4"
    _write(path, torch.from_numpy(frames) if as_tensor else frames, fps, audio=_tone(num_samples))

    info = probe(path)
    assert info["frames"] == n
    assert info["fps"] == fps
    assert (info["width"], info["height"]) == (W, H)
    assert info["duration"] == pytest.approx(n / fps, abs=1e-6)
    assert info["audio_duration"] == pytest.approx(num_samples / SR, abs=1e-6)
    assert abs(info["audio_duration"] - info["duration"]) < 1 / fps
    assert info["audio_sample_rate"] == SR

    # Not cut: the tone is still there in the last 0.1 s of the declared audio.
    decoded = _decoded_audio(path)
    assert decoded.shape[0] >= num_samples
    tail = decoded[num_samples - SR // 10:num_samples]
    assert np.sqrt(np.mean(tail**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)

    back = read_video_frames(path)
    assert back.shape == frames.shape and back.dtype == np.float32
    assert np.abs(back - frames).mean() < 0.02
    # Each decoded frame is closest to the frame written at its index.
    errors = np.abs(back[:, None] - frames[None]).mean(axis=(2, 3, 4))
    assert (errors.argmin(axis=1) == np.arange(n)).all()


def test_silent_video_has_no_audio_track(tmp_path):
    path = tmp_path / "silent.mp4"
    _write(path, _grey_frames([100] * 5), 25)
    info = probe(path)
    assert info["frames"] == 5
    assert info["audio_duration"] is None and info["audio_sample_rate"] is None


def test_metadata_round_trip(tmp_path):
    settings = json.dumps({"seed": 42, "timeline": [[0, "happy"], [1.5, "sad"]], "note": "héllo ✓\nline 2"})
    metadata = {
        "comment": "EmotiveTalk",
        "title": "portrait.png + speech.wav",
        "emotivetalk_settings": settings,
        "emotivetalk_model_hashes": "vaid=ab12 ethd=cd34",
    }
    path = tmp_path / "tagged.mp4"
    _write(path, _grey_frames([50, 60]), 25, audio=_tone(SR * 2 // 25), metadata=metadata)
    assert read_metadata(path) == metadata
    assert json.loads(read_metadata(path)["emotivetalk_settings"])["seed"] == 42


def test_metadata_keys_the_muxer_overwrites_are_refused(tmp_path):
    with pytest.raises(ValueError, match="encoder"):
        VideoWriter(tmp_path / "x.mp4", 25, W, H, metadata={"encoder": "mine"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("width,height", [(63, 48), (64, 47)])
def test_odd_sizes_are_refused_before_creating_a_file(tmp_path, width, height):
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "odd.mp4", 25, width, height)
    assert list(tmp_path.iterdir()) == []


def test_an_exception_inside_the_writer_leaves_no_file_and_propagates(tmp_path):
    path = tmp_path / "cancelled.mp4"
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(path, 25, W, H, audio=_tone(SR)) as out:
            out.write(_grey_frames([10] * 60))  # past x264's lookahead, so packets reach the file
            partial = list(tmp_path.iterdir())
            assert len(partial) == 1 and partial[0].name.startswith(".cancelled.mp4.")
            assert not path.exists()
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_cancelled_rewrite_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous result")
    with pytest.raises(ValueError, match="shape"):
        with VideoWriter(path, 25, W, H) as out:
            out.write(_grey_frames([10]))
            out.write(np.zeros((1, H, W + 2, 3), np.float32))
    assert sorted(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == b"previous result"


def test_closing_without_frames_fails_and_leaves_nothing(tmp_path):
    writer = VideoWriter(tmp_path / "empty.mp4", 25, W, H)
    with pytest.raises(ValueError, match="no frames"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
    writer.close()  # already discarded: a no-op
    with pytest.raises(ValueError, match="closed"):
        writer.write(_grey_frames([1]))


def test_float_frames_are_clipped_and_non_finite_frames_refused(tmp_path):
    path = tmp_path / "clip.mp4"
    over = np.full((2, H, W, 3), 1.4, np.float32)
    over[1] = -0.3
    _write(path, over, 25)
    back = read_video_frames(path)
    assert back[0].mean() > 0.97 and back[1].mean() < 0.03
    with pytest.raises(ValueError, match="NaN"):
        with VideoWriter(tmp_path / "nan.mp4", 25, W, H) as out:
            out.write(np.full((1, H, W, 3), np.nan, np.float32))
    assert sorted(tmp_path.iterdir()) == [path]


def test_audio_and_video_of_different_lengths_are_written_whole_with_a_warning(tmp_path, caplog):
    path = tmp_path / "mismatch.mp4"
    with caplog.at_level(logging.WARNING, logger="emotivetalk_core.media.video_writer"):
        _write(path, _grey_frames([80] * 5), 25, audio=_tone(SR))  # 1 s of audio for 0.2 s of video
    assert "pad_to_frames" in caplog.text
    info = probe(path)
    assert info["frames"] == 5
    assert info["audio_duration"] == pytest.approx(1.0, abs=1e-6)


def test_writer_keeps_no_reference_to_written_frames(tmp_path):
    with VideoWriter(tmp_path / "mem.mp4", 25, W, H) as out:
        for make_chunk in (lambda: np.random.default_rng(0).random((4, H, W, 3), dtype=np.float32),
                           lambda: torch.rand(4, H, W, 3)):
            chunk = make_chunk()
            ref = weakref.ref(chunk)
            out.write(chunk)
            del chunk
            gc.collect()
            assert ref() is None, "the writer still holds a written chunk"


@pytest.fixture(scope="module")
def fifty_fps_video(tmp_path_factory):
    """20 frames at 50 fps; frame k is uniform grey at level 10 * k."""
    path = tmp_path_factory.mktemp("ref") / "ref50.mp4"
    _write(path, _grey_frames([10 * k for k in range(20)]), 50, crf=10)
    return path


RESAMPLED = [
    (50, list(range(20))),
    (25, [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]),  # centres 0.02, 0.06, ... start frames 1, 3, ...
    (100, [k // 2 for k in range(40)]),
    (Fraction(30000, 1001), [0, 2, 4, 5, 7, 9, 10, 12, 14, 15, 17, 19]),
]


@pytest.mark.parametrize("fps,expected", [(None, list(range(20))), *RESAMPLED])
def test_reading_resamples_by_timestamp(fifty_fps_video, fps, expected):
    frames = read_video_frames(fifty_fps_video, fps=fps)
    assert frames.dtype == np.float32 and frames.shape[1:] == (H, W, 3)
    assert _frame_levels(frames) == expected


@pytest.mark.parametrize("fps,expected", RESAMPLED)
def test_frames_in_memory_are_resampled_as_a_file_is(fps, expected):
    """An emotion video that arrives as a ComfyUI IMAGE batch drives the same frames as its file."""
    frames = torch.arange(20)
    assert frames_at(frames, 50, fps, 1000).tolist() == expected
    assert frames_at(frames.numpy(), 50, fps, 1000).tolist() == expected
    assert frames_at(frames, 50, fps, 3).tolist() == expected[:3]  # at most the frames the speech needs


def test_reading_resizes_with_antialiasing(tmp_path):
    half = np.zeros((1, H, W, 3), np.uint8)
    half[:, :, W // 2:] = 255
    path = tmp_path / "half.mp4"
    _write(path, half, 25, crf=10)
    small = read_video_frames(path, size=(12, 16))
    assert small.shape == (1, 12, 16, 3)
    assert small[0, :, :7].max() < 0.05 and small[0, :, 9:].min() > 0.95
    assert 0.2 < small[0, :, 7:9].mean() < 0.8  # the edge is filtered, not point-sampled
    assert small.min() >= 0 and small.max() <= 1


def test_iterating_decodes_lazily(fifty_fps_video):
    frames = iter_video_frames(fifty_fps_video, fps=25)
    first = next(frames)
    assert first.shape == (H, W, 3)
    assert _frame_levels([first]) == [1]
    frames.close()


def test_display_rotation_is_applied(tmp_path):
    image = np.zeros((1, H, W, 3), np.uint8)
    image[0, :8, :8] = 255  # white marker at the top-left
    path = tmp_path / "rotated.mp4"
    _write(path, image, 25, crf=10)
    # Give the track the matrix FFmpeg writes for "rotate=90" (turn 90 degrees clockwise for display):
    # x' = -y + H, y' = x, which sends the top-left corner to the top-right.
    data = bytearray(path.read_bytes())
    tkhd = data.index(b"tkhd")
    assert data[tkhd + 4] == 0, "expected a version 0 track header"
    struct.pack_into(">9i", data, tkhd + 44, 0, 1 << 16, 0, -(1 << 16), 0, 0, H << 16, 0, 1 << 30)
    path.write_bytes(bytes(data))

    frame = read_video_frames(path)[0]
    assert frame.shape == (W, H, 3)
    assert frame[:8, -8:].mean() > 0.9
    assert frame[:8, :8].mean() < 0.1


def test_full_range_video_is_decoded_with_its_own_range(tmp_path):
    path = tmp_path / "full_range.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "5"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.color_range = av.video.reformatter.ColorRange.JPEG
        frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), 40, np.uint8), format="rgb24")
        frame = frame.reformat(format="yuv420p", dst_color_range=av.video.reformatter.ColorRange.JPEG)
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    level = read_video_frames(path)[0].mean() * 255
    assert level == pytest.approx(40, abs=2)  # read as limited range it would come out near 28


def test_missing_files_are_named(tmp_path):
    missing = tmp_path / "nowhere.mp4"
    for function in (read_video_frames, probe, read_metadata):
        with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
            function(missing)


def test_files_without_video_are_refused(tmp_path):
    audio_only = tmp_path / "speech.m4a"
    with av.open(str(audio_only), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(_tone(SR // 2)[None], format="flt", layout="mono")
        frame.sample_rate = SR
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(ValueError, match="no video stream"):
        read_video_frames(audio_only)
    with pytest.raises(ValueError, match="no video stream"):
        probe(audio_only)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(ValueError, match="notes.mp4"):
        read_video_frames(text)
