"""Refusals of the command line: each before any model loads, exit 2, one line naming the flag, the
value and what to do; inputs are never written over; Ctrl-C and SIGTERM end cleanly."""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from emotivetalk_core import pipeline as pipeline_module
from emotivetalk_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "emotivetalk_core" / "assets" / "portrait.png"


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    import soundfile

    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    t = np.arange(8000) / 16000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    return path


@pytest.fixture
def no_models(monkeypatch):
    """Loading a model fails the test: every refusal here must come first."""

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(pipeline_module.EmotiveTalkPipeline, "from_files", classmethod(load))


def _refused(capsys, argv, *phrases):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


def _generate(speech, out, *extra, image=PORTRAIT):
    return ["generate", "--image", str(image), "--audio", str(speech), "--out", str(out), "--steps", "1", "--quiet", *extra]


def test_the_output_never_replaces_an_input(capsys, tmp_path, speech, no_models):
    audio = tmp_path / "voice.wav"
    audio.write_bytes(speech.read_bytes())
    image = tmp_path / "face.png"
    image.write_bytes(PORTRAIT.read_bytes())
    clip = tmp_path / "acting.mp4"
    clip.write_bytes(b"an emotion video")
    timeline = tmp_path / "plan.json"
    timeline.write_text(json.dumps({"keyframes": [{"time": 0, "label": "happy"}]}))
    before = {path: path.read_bytes() for path in (audio, image, clip, timeline)}
    # The same file by another spelling of its path is the same file.
    _refused(capsys, _generate(audio, tmp_path / "." / "voice.wav", image=image), "--audio", "voice.wav", "destroy")
    _refused(capsys, _generate(audio, image, image=image), "--image", "face.png")
    _refused(capsys, _generate(audio, clip, "--emotion-video", str(clip), image=image), "--emotion-video", "acting.mp4")
    _refused(capsys, _generate(audio, timeline, "--timeline", str(timeline), image=image), "--timeline", "plan.json")
    assert {path: path.read_bytes() for path in before} == before


@pytest.mark.parametrize("out, phrases", [
    ("", ["--out", ".mp4"]),
    ("talk.avi", ["--out", "talk.avi", "name it .mp4"]),
    ("missing/talk.mp4", ["--out", "folder not found", "missing"]),
])
def test_unusable_output_names_are_refused_first(capsys, tmp_path, speech, no_models, out, phrases):
    _refused(capsys, _generate(speech, tmp_path / out if out else out), *phrases)


def test_a_folder_as_output_is_refused(capsys, tmp_path, speech, no_models):
    (tmp_path / "film.mp4").mkdir()
    _refused(capsys, _generate(speech, tmp_path / "film.mp4"), "--out", "is a folder")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root (and Windows ACLs) ignore the mode bits")
def test_a_read_only_folder_is_refused_first(capsys, tmp_path, speech, no_models):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        _refused(capsys, _generate(speech, locked / "talk.mp4"), "--out", "no permission")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("flags, phrases", [
    (["--width", "65536"], ["--width", "0..4096", "65536"]),
    (["--fps", "1e-6"], ["--fps", "1..120"]),
    (["--fps", "nan"], ["--fps", "finite"]),
    (["--steps", "10000"], ["--steps", "1..500", "10000"]),
    (["--steps", "0"], ["--steps", "1..500"]),
    (["--window", "1"], ["--window", "2..1000", "got 1"]),
    (["--window", "0"], ["--window", "2..1000", "got 0"]),
    (["--overlap", "0"], ["--overlap", "1..999", "got 0"]),
    (["--window", "8", "--overlap", "8"], ["--overlap", "less than the window (8 frames)"]),
    (["--seed", "-1"], ["--seed", "0..", "-1"]),
    (["--reference-strength", "nan"], ["--reference-strength", "nan"]),
    (["--lip-strength", "-1"], ["--lip-strength", "0.0..30.0"]),
    (["--noise-aug", "inf"], ["--noise-aug"]),
    (["--motion", "5000"], ["--motion", "0..1023"]),
    (["--av-offset", "9999"], ["--av-offset", "-250..250"]),
    (["--device", "tpu"], ["--device", "'tpu'", "cpu"]),
    (["--timeline", ""], ["timeline is empty"]),
    (["--timeline", "0:happy,9:sad"], ["--timeline", "9 s", "after the speech ends (0.52 s)"]),
])
def test_bad_values_are_refused_before_models_load(capsys, tmp_path, speech, no_models, flags, phrases):
    _refused(capsys, _generate(speech, tmp_path / "o.mp4", *flags), *phrases)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_install_cannot_use_is_refused(capsys, tmp_path, speech, no_models):
    _refused(capsys, _generate(speech, tmp_path / "o.mp4", "--device", "cuda"), "--device 'cuda'", "use cpu")


def test_ctrl_c_prints_one_line_exits_130_and_keeps_the_older_file(capsys, tmp_path, speech, monkeypatch):
    out = tmp_path / "talk.mp4"
    out.write_bytes(b"yesterday's video")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_module, "sample_latents", interrupted)
    assert main(_generate(speech, out)) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert out.read_bytes() == b"yesterday's video" and sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM cannot be caught on Windows")
def test_sigterm_while_writing_leaves_no_partial_file(capsys, tmp_path, speech, monkeypatch):
    from emotivetalk_core.media import video_writer

    write = video_writer.VideoWriter.write

    def write_then_terminated(self, frames):
        write(self, frames)
        os.kill(os.getpid(), signal.SIGTERM)  # as a service manager or `kill` would, mid-video

    monkeypatch.setattr(video_writer.VideoWriter, "write", write_then_terminated)
    previous = signal.getsignal(signal.SIGTERM)
    assert main(_generate(speech, tmp_path / "talk.mp4")) == 143
    assert capsys.readouterr().err.strip() == "terminated"
    assert list(tmp_path.iterdir()) == []  # neither the video nor a hidden .partial
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is the caller's again


def test_a_text_encoder_that_is_no_model_folder_is_refused(capsys, speech, tmp_path, no_models):
    _refused(capsys, _generate(speech, tmp_path / "out.mp4", "--emotion-text", "speak seriously",
                               "--text-encoder", str(tmp_path)), "--text-encoder", "no config.json")


def test_emotion_text_on_a_model_trained_with_a_text_encoder_needs_one(capsys, speech, tmp_path, no_models):
    from emotivetalk_core.checkpoints import read_metadata, save_model_file
    from emotivetalk_core.configs import get_config
    from emotivetalk_core.networks.mapping import Mapping

    config = {**get_config("tiny")["mapping"], "text_encoder": {"kind": "pretrained", "name": "clip-l-text", "dim": 4, "probes": {}}}
    model = save_model_file(tmp_path / "model.safetensors", {"mapping": (Mapping(config).state_dict(), config)}, {})
    assert read_metadata(model)[0]["mapping"]["text_encoder"]["name"] == "clip-l-text"
    _refused(capsys, _generate(speech, tmp_path / "out.mp4", "--emotion-text", "speak seriously", "--checkpoint", str(model)),
             "--text-encoder", "clip-l-text")
