"""Decoding every supported container to 16 kHz mono, and the frame-count rules."""

from fractions import Fraction

import numpy as np
import pytest

from emotivetalk_core.media.audio import frame_count, frame_samples, load_audio, pad_to_frames

DURATION = 1.37
TRUE_SAMPLES = round(DURATION * 16000)  # 21920


def _chirp(t):
    # A sweep rather than a steady tone: any misalignment (untrimmed priming) lowers the
    # correlation with the reference instead of hiding behind the tone's periodicity.
    return np.sin(2 * np.pi * (200 * t + 600 * t**2))


def _stereo(rate):
    t = np.arange(round(DURATION * rate)) / rate
    # Channels differ in level, so averaging (0.4 * chirp) is told apart from a
    # sum or an energy-preserving 1/sqrt(2) downmix.
    return np.stack([0.6 * _chirp(t), 0.2 * _chirp(t)]).astype(np.float32)


def _reference():
    return 0.4 * _chirp(np.arange(TRUE_SAMPLES) / 16000)


def _write_av(path, codec, sample_format, rate, with_video=False):
    import av

    samples = _stereo(rate)
    with av.open(str(path), "w") as container:
        if with_video:
            video = container.add_stream("mpeg4", rate=25)
            video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream(codec, rate=rate)
        audio.layout, audio.format = "stereo", sample_format
        block = audio.codec_context.frame_size or 4096
        for start in range(0, samples.shape[1], block):
            chunk = samples[:, start:start + block]
            if sample_format == "s16":  # packed integer: interleave and scale
                chunk = (chunk.T.reshape(1, -1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=sample_format, layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
        if with_video:
            for index in range(round(DURATION * 25)):
                picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
                picture.pts = index
                container.mux(video.encode(picture))
            container.mux(video.encode(None))


def _write_ogg(path, rate):
    import soundfile

    soundfile.write(str(path), _stereo(rate).T, rate, format="OGG", subtype="VORBIS")


CASES = {
    "wav": (lambda p: _write_av(p, "pcm_s16le", "s16", 44100), True),
    "flac": (lambda p: _write_av(p, "flac", "s16", 44100), True),
    "mp3": (lambda p: _write_av(p, "libmp3lame", "fltp", 44100), False),
    "ogg": (lambda p: _write_ogg(p, 48000), False),
    "m4a": (lambda p: _write_av(p, "aac", "fltp", 48000), False),
    "mp4": (lambda p: _write_av(p, "aac", "fltp", 44100, with_video=True), False),
}


@pytest.mark.parametrize("extension", sorted(CASES))
def test_decodes_to_16k_mono_with_the_true_duration(tmp_path, extension):
    write, lossless = CASES[extension]
    path = tmp_path / f"tone.{extension}"
    write(path)

    audio = load_audio(path)

    assert audio.dtype == np.float32 and audio.ndim == 1
    # Far inside one 25 fps frame (640 samples): mp3/AAC/Vorbis priming and AAC's trailing
    # padding (1024 samples at 48 kHz = 341 here) are trimmed, not tolerated.
    assert abs(audio.shape[0] - TRUE_SAMPLES) <= 8, audio.shape
    reference = _reference()
    n = min(audio.shape[0], TRUE_SAMPLES)
    if lossless:
        # The first and last few samples carry the resampler's edge transient (abrupt start/end).
        np.testing.assert_allclose(audio[10:n - 10], reference[10:n - 10], atol=1e-3)
    else:
        assert np.corrcoef(audio[:n], reference[:n])[0, 1] > 0.98
        assert np.std(audio[:n]) == pytest.approx(np.std(reference[:n]), rel=0.1)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "speech.wav"
    with pytest.raises(FileNotFoundError, match="speech.wav"):
        load_audio(path)


def test_video_without_audio_is_rejected(tmp_path):
    import av

    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        for index in range(3):
            picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            picture.pts = index
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
    with pytest.raises(ValueError, match=r"silent\.mp4 has no audio stream.*video"):
        load_audio(path)


def test_undecodable_file_is_rejected(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("not audio at all\n" * 20)
    with pytest.raises(ValueError, match=r"notes\.mp3"):
        load_audio(path)


@pytest.mark.parametrize(
    ("num_samples", "fps", "expected"),
    [
        (16000, 25, 25),
        (16001, 25, 26),
        (15999, 25, 25),
        (0, 25, 0),
        (4480, 25, 7),  # 4480 / 16000 * 25 is 7.000000000000001 in floats
        (132800, 30.0, 249),  # 249.00000000000003 in floats
        (16000, 29.97, 30),
        (1_600_000, 29.97, 2997),  # 100 s at 29.97 fps is exactly 2997 frames
        (1_600_001, 29.97, 2998),
        (1_600_000, Fraction(30000, 1001), 2998),  # 2997.0029...
        (16000, "30000/1001", 30),
    ],
)
def test_frame_count_is_exact(num_samples, fps, expected):
    assert frame_count(num_samples, fps) == expected


def test_frame_count_rejects_bad_rates():
    with pytest.raises(ValueError, match="fps"):
        frame_count(100, 0)
    with pytest.raises(ValueError, match="fps"):
        frame_count(100, -25.0)
    with pytest.raises(ValueError, match="sample_rate"):
        frame_count(100, 25, sample_rate=0)


@pytest.mark.parametrize("fps", [25, 30, 29.97, Fraction(30000, 1001), 24])
def test_padding_and_frame_count_are_inverse(fps):
    for num_frames in (1, 7, 25, 31, 250):
        samples = frame_samples(num_frames, fps)
        assert frame_count(samples, fps) == num_frames
        assert frame_count(samples + 1, fps) == num_frames + 1


def test_pad_to_frames_appends_silence_and_never_cuts():
    waveform = np.ones(16001, np.float32)
    padded = pad_to_frames(waveform, frame_count(16001, 30), 30, 16000)
    assert padded.shape == (16533,)  # 31 frames * 16000 / 30 = 16533.3 -> 16533
    assert np.all(padded[:16001] == 1) and np.all(padded[16001:] == 0)
    assert pad_to_frames(waveform, 10, 30, 16000) is waveform


def test_audio_with_more_than_eight_channels_is_averaged_not_a_crash(tmp_path):
    """PyAV crashed the whole process (a segfault, ComfyUI with it) reading planar frames of more
    than 8 channels; found by fuzzing (tests/test_fuzz.py)."""
    import wave

    channels = np.stack([np.full(1600, (k - 4.5) / 10) for k in range(10)], axis=1)  # mean 0 ...
    channels[:, 9] += 0.5  # ... but for the last channel: the mean is 0.05
    with wave.open(str(tmp_path / "ten.wav"), "wb") as file:
        file.setnchannels(10)
        file.setsampwidth(2)
        file.setframerate(16000)
        file.writeframes((channels * 32767).round().astype("<i2").tobytes())
    speech = load_audio(tmp_path / "ten.wav")
    assert speech.shape == (1600,)
    np.testing.assert_allclose(speech, 0.05, atol=1e-3)
