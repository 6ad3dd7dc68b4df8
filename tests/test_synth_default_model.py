"""The shipped default model on held-out SynthTalk people and sentences, through the full
pipeline and the frozen judge (a short ``synth evaluate``: one clip per emotion, by label).

What it checks is what the model does, with a margin that holds on any machine: the lips move
with the speech (near the issue's goals, well above the portrait-repeated floor), the requested
emotion shows, the portrait's identity holds and frames are clean. The 64-clip figures, where every
goal is met (lip_sync 0.852), are in BENCHMARKS.md. This run of 5 clips, at the default guidance
(2, 4, 2), read lip_sync 0.83 (within a clip 0.85; floors 0.07 and -0.03), emotion 4 of 5,
identity 0.042, grain 0.025 (the model before it: lip_sync 0.82, within 0.84, emotion 4 of 5,
identity 0.043, grain 0.025; an earlier one at guidance (2, 1, 1): lip_sync 0.32).
"""

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


def _entry(report, name):
    entry = report[name]
    if name in GOALS:
        assert entry["goal"] == "{} {}".format(*GOALS[name])
    return entry


def test_lips_move_with_the_speech(report):
    for name in ("lip_sync", "lip_sync_within_clip"):
        entry = _entry(report, name)
        # 0.1 under the goal (met over 64 clips): 5 clips read 0.83 and 0.85, and a few clips
        # vary more than many; the floor (the portrait repeated) is near 0.
        assert entry["value"] >= float(GOALS[name][1]) - 0.1, entry
        assert entry["value"] > entry["floor"] + 0.3, entry


def test_the_emotion_asked_for_by_label_is_shown(report):
    entry = _entry(report, "emotion_accuracy.label")
    # 3 of 5 or more (chance is 1 in 5): this run reads 4 of 5, and a clip near the judge's
    # boundary between two emotions may flip with the float rounding of another machine.
    assert entry["value"] >= 0.6, entry


def test_the_portrait_holds_and_frames_are_clean(report):
    entry = _entry(report, "identity_error")
    assert entry["met"], entry
    grain = _entry(report, "grain")
    assert grain["value"] < 0.045, grain  # the goal (0.03) is met over 64 clips (0.017); 5 clips read higher
