"""The command line: bad input exits 2 with one line; a good run writes the mp4."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emotivetalk_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "emotivetalk_core" / "assets" / "portrait.png"
SMALL = ["--steps", "1", "--quiet"]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    import soundfile

    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    t = np.arange(8000) / 16000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    return path


def _fails_with(capsys, argv, *phrases):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err
    return err


def test_missing_image(capsys, tmp_path, speech):
    _fails_with(capsys, ["generate", "--image", str(tmp_path / "nope.png"), "--audio", str(speech), "--out", str(tmp_path / "o.mp4")],
                "--image", "nope.png")


def test_unreadable_audio(capsys, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    _fails_with(capsys, ["generate", "--image", str(PORTRAIT), "--audio", str(bad), "--out", str(tmp_path / "o.mp4"), *SMALL],
                "bad.wav")


def test_unknown_emotion(capsys, tmp_path, speech):
    _fails_with(capsys, ["generate", "--image", str(PORTRAIT), "--audio", str(speech), "--out", str(tmp_path / "o.mp4"),
                         "--emotion", "grumpy"], "grumpy", "happy")


@pytest.mark.parametrize("fps", ["0", "-5"])
def test_fps_must_be_positive(capsys, tmp_path, speech, fps):
    _fails_with(capsys, ["generate", "--image", str(PORTRAIT), "--audio", str(speech), "--out", str(tmp_path / "o.mp4"),
                         "--fps", fps], "fps")


def test_bad_timeline_and_sizes(capsys, tmp_path, speech):
    base = ["generate", "--image", str(PORTRAIT), "--audio", str(speech), "--out", str(tmp_path / "o.mp4")]
    _fails_with(capsys, [*base, "--timeline", "0:happy,oops"], "oops", "TIME:LABEL")
    _fails_with(capsys, [*base, "--width", "30"], "width", "multiple of 4", "native size 32")
    _fails_with(capsys, [*base, "--checkpoint", str(tmp_path / "missing.safetensors")], "missing.safetensors")
    _fails_with(capsys, [*base, "--steps", "many"], "--steps")


def test_generate_writes_the_video(capsys, tmp_path, speech):
    from emotivetalk_core.media.video_reader import probe

    out = tmp_path / "talk.mp4"
    assert main(["generate", "--image", str(PORTRAIT), "--audio", str(speech), "--out", str(out),
                 "--timeline", "0:neutral,0.2:happy@0.7~0.1", "--seed", "5", *SMALL]) == 0
    info = probe(out)
    assert info["frames"] == 13 and abs(info["audio_duration"] - info["duration"]) <= 1 / 25
    captured = capsys.readouterr()
    assert "UNTRAINED" not in captured.err  # the shipped default model is trained


def test_debug_shows_the_traceback(tmp_path, speech):
    result = subprocess.run([sys.executable, "-m", "emotivetalk_core", "generate", "--image", str(tmp_path / "x.png"),
                             "--audio", str(speech), "--out", str(tmp_path / "o.mp4"), "--debug"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" in result.stderr
    plain = subprocess.run([sys.executable, "-m", "emotivetalk_core", "generate", "--image", str(tmp_path / "x.png"),
                            "--audio", str(speech), "--out", str(tmp_path / "o.mp4")],
                           cwd=ROOT, capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stderr.strip().startswith("error:") and "Traceback" not in plain.stderr


def test_demo_never_writes_over_a_side_by_side_file_it_was_not_given(capsys, tmp_path):
    mine = tmp_path / "demo_emotions.mp4"
    mine.write_bytes(b"my video")
    _fails_with(capsys, ["demo", "--out", str(tmp_path / "demo.mp4")], "demo_emotions.mp4 exists", "--side-by-side")
    _fails_with(capsys, ["demo", "--out", str(tmp_path / "a.mp4"), "--side-by-side", str(tmp_path / "a.mp4")], "give two files")
    _fails_with(capsys, ["demo", "--out", str(tmp_path / "b.mp4"), "--side-by-side", str(tmp_path / "no" / "c.mp4")],
                "--side-by-side", "folder not found")
    assert mine.read_bytes() == b"my video" and sorted(p.name for p in tmp_path.iterdir()) == ["demo_emotions.mp4"]


def test_demo_writes_the_side_by_side_where_it_says(capsys, tmp_path, monkeypatch):
    """The demo hands its side-by-side path (not anything else of that name) to the writer."""
    from types import SimpleNamespace

    from emotivetalk_core import demo, pipeline

    steps = []

    class Pipeline:
        trained = True
        model = SimpleNamespace(info={})  # a model that was not distilled: the demo's 12 steps

        def generate_to_file(self, portrait, audio, out, settings, timeline, progress=None):
            steps.append(settings.steps)
            return SimpleNamespace(path=out, num_frames=audio.num_frames, seconds=audio.num_frames / settings.fps)

    written = []
    monkeypatch.setattr(pipeline.EmotiveTalkPipeline, "from_files", classmethod(lambda cls, *a, **k: Pipeline()))
    monkeypatch.setattr(demo, "side_by_side", lambda pipe, image, audio, settings, out, progress=None:
                        written.append(out) or {"path": out, "labels": ["happy"]})
    assert main(["demo", "--out", str(tmp_path / "demo.mp4"), "--quiet"]) == 0
    assert written == [tmp_path / "demo_emotions.mp4"] and steps == [12]
    assert f"wrote {tmp_path / 'demo_emotions.mp4'}" in capsys.readouterr().out
