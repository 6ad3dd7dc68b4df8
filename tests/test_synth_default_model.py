"""The shipped default model on held-out SynthTalk people and sentences, through the full
pipeline and the frozen judge (a short ``synth evaluate``: one clip per emotion, by label):
lips follow the speech and rest in silence, faces follow the requested emotion, the portrait's
identity holds, and frames are clean. The 64-clip figures are in BENCHMARKS.md."""

import pytest
import torch

from emotivetalk_core.synth.evaluate import GOALS, evaluate

HELD_OUT_SEED = 4242  # the default model was trained in world 0


@pytest.fixture(scope="module")
def report():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the same result on any thread count; two for speed
    yield evaluate("default", seed=HELD_OUT_SEED, clips=5, steps=12, take_seconds=0, subset=0, routes=("label",))
    torch.set_num_threads(threads)


def _meets(report, name):
    entry = report[name]
    assert entry["goal"] == "{} {}".format(*GOALS[name])
    return entry["met"], entry


def test_lips_follow_the_speech(report):
    for name in ("lip_sync", "lip_sync_within_clip"):
        met, entry = _meets(report, name)
        assert met, entry
        assert entry["value"] > entry["floor"] + 0.5


def test_the_mouth_rests_in_silence(report):
    entry = report["silence_mouth"]
    assert entry["value"] < entry["ceiling"] + 0.1, entry


def test_every_emotion_asked_for_by_label_is_shown(report):
    met, entry = _meets(report, "emotion_accuracy.label")
    assert met, entry


def test_the_portrait_holds_and_frames_are_clean(report):
    for name in ("identity_error", "grain"):
        met, entry = _meets(report, name)
        assert met, entry
