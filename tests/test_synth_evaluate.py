"""SynthTalk evaluation: the measures behind every held-out figure, on frames whose answer is known."""

import numpy as np
import pytest

from emotivetalk_core.synth import evaluate as ev
from emotivetalk_core.synth import world


def test_lip_sync_finds_the_offset_and_separates_pooled_from_within_clip():
    rng = np.random.default_rng(0)
    truth = [np.clip(rng.normal(0.4, 0.3, 60), 0, 1) for _ in range(6)]
    late = [np.concatenate([t[:2], t[:-2]]) for t in truth]  # the judged mouth two frames late
    result = ev.lip_sync(late, truth)
    assert result["offset"] == 2 and result["pooled"] > 0.99 and result["within_clip"] > 0.99
    # Three frames late is outside +-2: the best in range is far worse.
    later = [np.concatenate([t[:3], t[:-3]]) for t in truth]
    assert ev.lip_sync(later, truth)["pooled"] < 0.5
    # A mouth that only follows each clip's loudness (its mean) looks fine pooled, not within clips.
    loud = [t + 3.0 * k for k, t in enumerate(truth)]
    means = [np.full_like(t, t.mean()) for t in loud]
    assert ev.lip_sync(means, loud)["pooled"] > 0.95 and ev.lip_sync(means, loud)["within_clip"] == 0.0


def test_pearson_of_a_still_series_is_zero_not_nan():
    assert ev.pearson(np.zeros(10), np.arange(10.0)) == 0.0
    assert ev.pearson(np.arange(10.0), 2 * np.arange(10.0) + 1) == pytest.approx(1.0)


def test_grain_measures_speckle_on_flat_areas_not_colour_error_or_edges():
    truth = np.full((4, 32, 32, 3), 120, np.uint8)
    truth[:, :, 16:] = 200  # one hard edge: not flat near it
    flat = ev.flat_mask(truth)
    assert flat[:, :, :13].all() and not flat[:, :, 14:18].any() and flat[:, :, 19:].all()
    shifted = (truth.astype(int) + 10).astype(np.uint8)  # a colour error, no speckle
    assert ev.grain(shifted, truth)["grain"] < 1e-3
    assert ev.grain(shifted, truth)["flat_error"] == pytest.approx(10 / 255, abs=1e-6)
    rng = np.random.default_rng(1)
    speckled = np.clip(truth + rng.normal(0, 8, truth.shape), 0, 255).astype(np.uint8)
    measured = ev.grain(speckled, truth)["grain"]
    assert 0.8 * 8 / 255 < measured < 8 / 255  # the 5x5 mean removes a little of the noise
    edges = np.zeros_like(truth)
    edges[:, :, ::2] = 255  # nothing flat: grain is not measured rather than perfect
    assert ev.grain(edges, edges) == {"grain": None, "flat_error": None}


def test_identity_error_and_drift_slope():
    portrait = np.full((32, 32, 3), 100, np.uint8)
    frames = np.stack([np.full((32, 32, 3), 100 + k // 25, np.uint8) for k in range(1500)])  # +1 level per second
    error = ev.identity_error(frames, portrait)
    assert error[0] == 0 and error[-1] == pytest.approx(59 / 255)
    assert ev.drift_slope(error) == pytest.approx(60 / 255, rel=0.02)  # per minute
    assert ev.drift_slope(np.full(100, 0.05)) == pytest.approx(0.0, abs=1e-12)


def test_held_out_clips_ask_every_emotion_with_an_independent_voice():
    clips = ev.held_out_clips(seed=11, count=10, size=world.SIZE)
    assert [clip.requested for clip in clips] == list(world.EMOTION_NAMES) * 2
    assert len({clip.who.seed for clip in clips}) == 10
    assert any(clip.speech_emotion != clip.requested for clip in clips)
    for clip in clips:
        assert clip.portrait.shape == (world.SIZE, world.SIZE, 3)
        assert clip.clip.num_frames * 640 == len(clip.clip.waveform)
    again = ev.held_out_clips(seed=11, count=2, size=world.SIZE)
    assert again[1].clip.waveform.tobytes() == clips[1].clip.waveform.tobytes()


def test_report_marks_each_goal_met_not_met_or_not_measured(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    measures = {name: (0.0, None, None) for name in ev.GOALS if name != "drift_per_minute"}
    measures.update({"lip_sync": (0.9, 0.99, 0.1), "grain": (0.05, 0.0, 0.02), "intensity_monotone": (True, True, False)})

    class Pipeline:
        class model:
            info = {"trained": True}

    class Generate:
        pipeline = Pipeline
        steps = 12
        guidance = {"reference": 2.0, "lip": 4.0, "expression": 2.0}

    report = ev._report(measures, str(checkpoint), 3, 64, 8, 0.0, Generate, ("label",))
    assert report["lip_sync"] == {"value": 0.9, "ceiling": 0.99, "floor": 0.1, "goal": ">= 0.85", "met": True}
    assert report["grain"]["met"] is False and report["intensity_monotone"]["met"] is True
    assert report["drift_per_minute"]["met"] is None  # no take: not measured, so not met
    assert report["settings"]["routes"] == ["label"]
    assert report["settings"]["checkpoint_sha256"] == __import__("hashlib").sha256(b"weights").hexdigest()
    # The sampling the figures were made with: a report stays readable after the defaults change.
    assert report["settings"]["guidance"] == Generate.guidance and report["settings"]["steps"] == 12
    assert report["all_goals_met"] is False
    text = ev.format_report(report)
    assert "NOT met" in text and "not measured" in text
    everything = {name: (1.0 if op in (">=",) else True if op == "==" else 0.0, None, None) for name, (op, _) in ev.GOALS.items()}
    assert ev._report(everything, str(checkpoint), 3, 64, 8, 60.0, Generate, ev.ROUTES)["all_goals_met"] is True
