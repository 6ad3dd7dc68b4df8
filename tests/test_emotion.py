"""Emotion timeline: parsing, validation, crossfades, intensity, video loop/trim, the per-frame plan."""

import json
from collections import Counter

import pytest
import torch

from emotivetalk_core.configs import EMOTION_LABELS
from emotivetalk_core.emotion import (EmotionSource, EmotionTimeline, Keyframe, parse_timeline, plan, single,
                                      to_json)

D = 4
REFERENCE = torch.tensor([0.0, 0.0, 0.0, 1.0])  # the portrait's own expression code
LABEL_CODES = {
    "happy": torch.tensor([1.0, 0.0, 0.0, 0.0]),
    "sad": torch.tensor([0.0, 1.0, 0.0, 0.0]),
    "neutral": torch.tensor([0.0, 0.0, 0.5, 0.0]),
    "angry": torch.tensor([0.0, 0.0, 1.0, 0.0]),
}
TEXT_CODE = torch.tensor([2.0, 2.0, 0.0, 0.0])
IMAGE_CODE = torch.tensor([0.0, 3.0, 3.0, 0.0])


def clip_codes(length: int) -> torch.Tensor:
    """Clip frame j has code [j, 10, 0, 0], so a plan row tells which clip frame it took."""
    codes = torch.zeros(length, D)
    codes[:, 0] = torch.arange(length, dtype=torch.float32)
    codes[:, 1] = 10.0
    return codes


class CountingResolver:
    """A resolver with fixed codes that records every call."""

    def __init__(self, clip_lengths: dict[str, int] | None = None):
        self.clip_lengths = clip_lengths or {}
        self.calls = Counter()
        self.video_requests = []

    def label(self, name):
        self.calls["label", name] += 1
        return LABEL_CODES[name].clone()

    def text(self, prompt):
        self.calls["text", prompt] += 1
        return TEXT_CODE.clone()

    def image(self, path):
        self.calls["image", path] += 1
        return IMAGE_CODE.clone()

    def video(self, path, num_frames, fps):
        self.calls["video", path] += 1
        self.video_requests.append((path, num_frames, fps))
        return clip_codes(self.clip_lengths[path])


def label(name: str) -> EmotionSource:
    return EmotionSource("label", name)


def guided(expression_plan) -> torch.Tensor:
    """Di-CTE's guidance rule e_u + I (e_c - e_u), applied in code space: what the plan asks for."""
    p = expression_plan
    return p.baseline + p.intensity[:, None] * (p.condition - p.baseline)


# --- parsing --------------------------------------------------------------------------------

def test_compact_form_reads_defaults_intensity_and_blend():
    timeline = parse_timeline(" 0:neutral, 3.5:HAPPY@0.8~0.5 ,8:sad~1.25")
    assert [(k.time, k.source, k.intensity, k.blend) for k in timeline.keyframes] == [
        (0.0, label("neutral"), 1.0, 0.0),
        (3.5, label("happy"), 0.8, 0.5),
        (8.0, label("sad"), 1.0, 1.25),
    ]
    assert timeline.neutralise_portrait is False


def test_compact_form_sorts_keyframes_by_time():
    timeline = parse_timeline("8:sad,0:neutral,3:happy")
    assert [k.source.value for k in timeline.keyframes] == ["neutral", "happy", "sad"]


def test_json_file_with_all_four_source_kinds(tmp_path, monkeypatch):
    folder = tmp_path / "emotions"
    folder.mkdir()
    (folder / "angry.png").write_bytes(b"png placeholder")
    (folder / "clip.mp4").write_bytes(b"mp4 placeholder")
    spec = {"keyframes": [
        {"time": 0, "label": "happy", "intensity": 0.8, "blend": 0.5},
        {"time": 3, "text": "speak seriously"},
        {"time": 6, "image": "angry.png"},
        {"time": 9, "video": "clip.mp4", "intensity": 1.5},
    ], "neutralise_portrait": True}
    (folder / "timeline.json").write_text(json.dumps(spec))
    monkeypatch.chdir(tmp_path)  # relative paths must follow the JSON file, not the working directory

    timeline = parse_timeline("emotions/timeline.json")

    assert timeline.neutralise_portrait is True
    assert [(k.time, k.source.kind, k.intensity, k.blend) for k in timeline.keyframes] == [
        (0.0, "label", 0.8, 0.5), (3.0, "text", 1.0, 0.0), (6.0, "image", 1.0, 0.0), (9.0, "video", 1.5, 0.0),
    ]
    assert timeline.keyframes[1].source.value == "speak seriously"
    assert timeline.keyframes[2].source.value == str(folder.absolute() / "angry.png")
    assert timeline.keyframes[3].source.value == str(folder.absolute() / "clip.mp4")


def test_json_text_resolves_files_against_base_dir(tmp_path):
    (tmp_path / "face.png").write_bytes(b"png placeholder")
    timeline = parse_timeline('{"keyframes": [{"time": 0, "image": "face.png"}]}', base_dir=tmp_path)
    assert timeline.keyframes[0].source == EmotionSource("image", str(tmp_path / "face.png"))


def test_bad_compact_syntax_quotes_the_entry_and_shows_the_syntax():
    with pytest.raises(ValueError) as error:
        parse_timeline("0:happy,3.5-sad")
    assert "'3.5-sad'" in str(error.value)
    assert "TIME:LABEL[@INTENSITY][~BLEND]" in str(error.value)


def test_unknown_label_is_named_with_the_valid_labels():
    with pytest.raises(ValueError) as error:
        parse_timeline("0:happy,2:hapy")
    message = str(error.value)
    assert "'hapy'" in message
    assert all(name in message for name in EMOTION_LABELS)


def test_negative_intensity_is_rejected_naming_the_keyframe():
    with pytest.raises(ValueError) as error:
        parse_timeline("0:neutral,2:happy@-0.5")
    message = str(error.value)
    assert "intensity" in message and "-0.5" in message and "'happy'" in message


@pytest.mark.parametrize("entry, words", [
    ({"time": 0, "label": "happy", "blend": -1}, ["blend", "-1"]),
    ({"time": -2, "label": "happy"}, ["time", "-2"]),
    ({"time": 0, "label": "happy", "intensity": float("inf")}, ["intensity", "inf"]),
    ({"time": 0, "label": "happy", "intensity": True}, ["intensity", "True"]),
])
def test_keyframe_values_are_validated(entry, words):
    with pytest.raises(ValueError) as error:
        parse_timeline(json.dumps({"keyframes": [entry]}))
    assert all(word in str(error.value) for word in words)


def test_missing_media_file_is_named(tmp_path):
    (tmp_path / "timeline.json").write_text(json.dumps({"keyframes": [{"time": 0, "video": "gone.mp4"}]}))
    with pytest.raises(ValueError) as error:
        parse_timeline(str(tmp_path / "timeline.json"))
    assert str(tmp_path / "gone.mp4") in str(error.value)


def test_missing_json_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nowhere.json"):
        parse_timeline(str(tmp_path / "nowhere.json"))


@pytest.mark.parametrize("spec, words", [
    ('{"keyframes": [{"time": 0, "label": "happy", "intesity": 2}]}', ["intesity", "allowed"]),
    ('{"keyframes": [{"time": 0, "label": "happy", "text": "smile"}]}', ["exactly one"]),
    ('{"keyframes": [{"label": "happy"}]}', ['"time"']),
    ('{"keyframes": [{"time": 0, "label": "happy"}], "neutralize": true}', ["neutralize"]),
    ('{"keyframes": [{"time": 0, "label": "happy"}', ["not valid JSON", '"keyframes"']),
    ("", ["empty"]),
])
def test_json_and_empty_errors_explain_the_problem(spec, words):
    with pytest.raises(ValueError) as error:
        parse_timeline(spec)
    assert all(word in str(error.value) for word in words)


def test_two_keyframes_at_one_time_are_rejected():
    with pytest.raises(ValueError, match="3.0 s"):
        parse_timeline("0:neutral,3:happy,3:sad")


def test_to_json_round_trips(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"mp4 placeholder")
    timeline = EmotionTimeline((
        Keyframe(0.0, label("happy"), 0.8, 0.5),
        Keyframe(1.0 / 3.0, EmotionSource("text", "speak seriously"), 1.25),
        Keyframe(2.0, EmotionSource("video", str(tmp_path / "clip.mp4")), 0.3, 0.1),
    ), neutralise_portrait=True)
    assert parse_timeline(to_json(timeline)) == timeline
    compact = parse_timeline("0:neutral,3.5:happy@0.8~0.5,8:sad")
    assert parse_timeline(to_json(compact)) == compact


# --- crossfades -----------------------------------------------------------------------------

def test_crossfade_between_labels_is_linear_over_the_window_after_the_keyframe():
    # At 10 fps, sad at 1 s with blend 0.5 s: frame 10 (t = 1.0) still happy, 15 (1.5 s) fully sad.
    timeline = parse_timeline("0:happy,1:sad~0.5")
    p = plan(timeline, 20, 10.0, CountingResolver(), REFERENCE)
    happy, sad = LABEL_CODES["happy"], LABEL_CODES["sad"]
    for frame, share in [(0, 0.0), (9, 0.0), (10, 0.0), (11, 0.2), (12, 0.4), (14, 0.8), (15, 1.0), (19, 1.0)]:
        torch.testing.assert_close(p.condition[frame], (1 - share) * happy + share * sad)
    torch.testing.assert_close(p.intensity, torch.ones(20))


def test_crossfade_with_different_intensities_is_linear_in_the_guided_target():
    # happy@0.5 -> sad@1 over 1..2 s. Halfway (frame 15): intensity 0.75 and the condition is the
    # intensity-weighted mean (0.25 happy + 0.5 sad) / 0.75, so the guided target is the plain
    # halfway mix of both keyframes' targets.
    p = plan(parse_timeline("0:happy@0.5,1:sad~1"), 25, 10.0, CountingResolver(), REFERENCE)
    happy, sad = LABEL_CODES["happy"], LABEL_CODES["sad"]
    torch.testing.assert_close(p.intensity[[5, 12, 15, 20]], torch.tensor([0.5, 0.6, 0.75, 1.0]))
    torch.testing.assert_close(p.condition[15], (0.25 * happy + 0.5 * sad) / 0.75)
    happy_target = REFERENCE + 0.5 * (happy - REFERENCE)
    sad_target = sad
    for frame, share in [(5, 0.0), (12, 0.2), (15, 0.5), (20, 1.0)]:
        torch.testing.assert_close(guided(p)[frame], (1 - share) * happy_target + share * sad_target)


def test_before_the_first_keyframe_the_portrait_keeps_its_own_expression():
    # happy from 2 s, blending in over 1 s: intensity 0 before 2 s, then a linear fade of intensity
    # while the condition stays happy (the start state has no say in the condition).
    p = plan(parse_timeline("2:happy~1"), 40, 10.0, CountingResolver(), REFERENCE)
    torch.testing.assert_close(p.intensity[:21], torch.zeros(21))
    torch.testing.assert_close(p.intensity[[22, 25, 30, 39]], torch.tensor([0.2, 0.5, 1.0, 1.0]))
    torch.testing.assert_close(p.condition[:21], REFERENCE.expand(21, -1))
    torch.testing.assert_close(p.condition[21:], LABEL_CODES["happy"].expand(19, -1))
    torch.testing.assert_close(guided(p)[:21], REFERENCE.expand(21, -1))


def test_a_cut_lands_on_the_first_frame_at_or_after_the_keyframe_time():
    # 0.28 s * 25 fps is 7.000000000000001 in floats; the cut must still be frame 7. 0.5 s is
    # frame 12.5: the first frame at or after it is 13.
    p = plan(parse_timeline("0:happy,0.28:sad,0.5:angry"), 15, 25.0, CountingResolver(), REFERENCE)
    expected = ["happy"] * 7 + ["sad"] * 6 + ["angry"] * 2
    torch.testing.assert_close(p.condition, torch.stack([LABEL_CODES[name] for name in expected]))


def test_overlapping_blends_crossfade_from_the_current_mix():
    # sad at 1 s (blend 1 s) is half-way at frame 15 when angry cuts in over 1.5..2.5 s.
    p = plan(parse_timeline("0:happy,1:sad~1,1.5:angry~1"), 30, 10.0, CountingResolver(), REFERENCE)
    happy, sad, angry = (LABEL_CODES[name] for name in ("happy", "sad", "angry"))
    # Frame 20: sad's ramp 1.0 and angry's 0.5 -> weights happy 0, sad 0.5, angry 0.5.
    torch.testing.assert_close(p.condition[20], 0.5 * sad + 0.5 * angry)
    # Frame 17: sad's ramp 0.7, angry's 0.2 -> happy 0.3 * 0.8, sad 0.7 * 0.8, angry 0.2.
    torch.testing.assert_close(p.condition[17], 0.24 * happy + 0.56 * sad + 0.2 * angry)
    torch.testing.assert_close(p.condition[25], angry)


# --- intensity and baseline ------------------------------------------------------------------

@pytest.mark.parametrize("intensity", [0.0, 1.0, 2.0])
def test_label_intensity_is_guidance_from_the_portrait_toward_the_source(intensity):
    p = plan(single(label("happy"), intensity), 6, 25.0, CountingResolver(), REFERENCE)
    torch.testing.assert_close(p.intensity, torch.full((6,), intensity))
    torch.testing.assert_close(p.baseline, REFERENCE.expand(6, -1))
    expected = REFERENCE + intensity * (LABEL_CODES["happy"] - REFERENCE)  # 0 own, 1 happy, 2 exaggerated
    torch.testing.assert_close(guided(p), expected.expand(6, -1))
    assert not p.from_video.any() and p.uses_dicte


@pytest.mark.parametrize("intensity", [0.0, 0.5, 2.0])
def test_video_intensity_blends_the_portrait_and_video_codes(tmp_path, intensity):
    p = plan(single(EmotionSource("video", "clip.mp4"), intensity), 4, 25.0,
             CountingResolver({"clip.mp4": 4}), REFERENCE)
    torch.testing.assert_close(p.video_codes, REFERENCE + intensity * (clip_codes(4) - REFERENCE))
    torch.testing.assert_close(p.video_weight, torch.ones(4))
    assert p.from_video.all() and not p.uses_dicte
    torch.testing.assert_close(p.combine(), p.video_codes)


def test_neutralise_portrait_makes_neutral_the_baseline_for_labels_and_videos():
    neutral = LABEL_CODES["neutral"]
    resolver = CountingResolver({"clip.mp4": 10})
    timeline = parse_timeline("0:happy@0.5")
    timeline.neutralise_portrait = True
    p = plan(timeline, 5, 10.0, resolver, REFERENCE)
    torch.testing.assert_close(p.baseline, neutral.expand(5, -1))
    torch.testing.assert_close(guided(p)[0], neutral + 0.5 * (LABEL_CODES["happy"] - neutral))

    video = plan(single(EmotionSource("video", "clip.mp4"), 0.0, neutralise_portrait=True), 5, 10.0, resolver,
                 REFERENCE)
    torch.testing.assert_close(video.video_codes, neutral.expand(5, -1))
    unneutralised = plan(parse_timeline("0:happy@0.5"), 5, 10.0, resolver, REFERENCE)
    torch.testing.assert_close(unneutralised.baseline, REFERENCE.expand(5, -1))


# --- video sources ------------------------------------------------------------------------------

def test_short_video_ping_pongs_over_its_span():
    # Clip of 3 frames from 0.2 s (frame 2) over 10 frames at 10 fps: 8 frames to fill.
    resolver = CountingResolver({"clip.mp4": 3})
    timeline = EmotionTimeline((Keyframe(0.0, label("happy")), Keyframe(0.2, EmotionSource("video", "clip.mp4"))))
    p = plan(timeline, 10, 10.0, resolver, REFERENCE)
    assert resolver.video_requests == [("clip.mp4", 8, 10.0)]
    assert p.from_video.tolist() == [False, False] + [True] * 8
    assert p.video_codes[2:, 0].tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    torch.testing.assert_close(p.video_codes[:2], REFERENCE.expand(2, -1))


def test_long_video_is_trimmed_to_its_span():
    # The clip plays from 0 s until sad cuts in at 0.5 s: 5 of its 20 frames are used.
    resolver = CountingResolver({"clip.mp4": 20})
    timeline = EmotionTimeline((Keyframe(0.0, EmotionSource("video", "clip.mp4")), Keyframe(0.5, label("sad"))))
    p = plan(timeline, 10, 10.0, resolver, REFERENCE)
    assert resolver.video_requests == [("clip.mp4", 5, 10.0)]
    assert p.video_codes[:5, 0].tolist() == [0, 1, 2, 3, 4]
    assert p.video_weight.tolist() == [1.0] * 5 + [0.0] * 5


def test_video_and_label_crossfade_mixes_the_final_codes():
    # happy, then the video from 1 s blending in over 0.5 s (10 fps).
    resolver = CountingResolver({"clip.mp4": 30})
    timeline = EmotionTimeline((Keyframe(0.0, label("happy")),
                                Keyframe(1.0, EmotionSource("video", "clip.mp4"), 1.0, 0.5)))
    p = plan(timeline, 20, 10.0, resolver, REFERENCE)
    torch.testing.assert_close(p.video_weight[[9, 10, 12, 15, 19]], torch.tensor([0.0, 0.0, 0.4, 1.0, 1.0]))
    # The Di-CTE side keeps asking for happy at full intensity while any label share is left ...
    torch.testing.assert_close(p.intensity[:15], torch.ones(15))
    torch.testing.assert_close(p.condition[12], LABEL_CODES["happy"])
    # ... and for the portrait's own expression (intensity 0) where the video has every frame.
    torch.testing.assert_close(p.intensity[15:], torch.zeros(5))
    torch.testing.assert_close(p.condition[15:], REFERENCE.expand(5, -1))
    # Video frames count from the keyframe's frame 10: frame 12 shows clip frame 2.
    assert p.video_codes[12, 0] == 2
    dicte = torch.randn(2, 20, D)
    driven = p.combine(dicte)
    torch.testing.assert_close(driven[:, 12], 0.6 * dicte[:, 12] + 0.4 * p.video_codes[12])
    torch.testing.assert_close(driven[:, 5], dicte[:, 5])
    torch.testing.assert_close(driven[:, 17], p.video_codes[17].expand(2, -1))
    with pytest.raises(ValueError, match="Di-CTE"):
        p.combine()
    with pytest.raises(ValueError, match=r"\[20, 4\]"):
        p.combine(torch.zeros(19, D))


# --- resolving ----------------------------------------------------------------------------------

def test_each_distinct_source_is_resolved_once():
    resolver = CountingResolver({"clip.mp4": 5})
    video = EmotionSource("video", "clip.mp4")
    text = EmotionSource("text", "speak seriously")
    timeline = EmotionTimeline((
        Keyframe(0.0, label("happy")), Keyframe(0.5, label("sad"), 0.5, 0.3), Keyframe(1.0, label("happy"), 2.0),
        Keyframe(1.5, text), Keyframe(2.0, text, 0.5), Keyframe(2.5, EmotionSource("image", "face.png")),
        Keyframe(3.0, video), Keyframe(3.2, label("neutral")), Keyframe(3.5, video, 1.0, 0.2),
        Keyframe(9.0, label("angry")),  # after the last frame: never shown, never resolved
    ), neutralise_portrait=True)
    plan(timeline, 40, 10.0, resolver, REFERENCE)
    assert resolver.calls == Counter({
        ("label", "happy"): 1, ("label", "sad"): 1, ("label", "neutral"): 1,
        ("text", "speak seriously"): 1, ("image", "face.png"): 1, ("video", "clip.mp4"): 1,
    })
    # One decode as long as the longer use: from 3.5 s (frame 35) to the last frame 39.
    assert resolver.video_requests == [("clip.mp4", 5, 10.0)]


def test_a_resolver_giving_the_wrong_shape_is_named():
    class WrongSize(CountingResolver):
        def text(self, prompt):
            return torch.zeros(D + 1)

    with pytest.raises(ValueError, match="text 'smile'.*D = 4"):
        plan(single(EmotionSource("text", "smile")), 3, 25.0, WrongSize(), REFERENCE)


@pytest.mark.parametrize("num_frames, fps, reference, words", [
    (0, 25.0, REFERENCE, "num_frames"),
    (5, 0.0, REFERENCE, "fps"),
    (5, 25.0, REFERENCE[None], "reference_code"),
])
def test_plan_checks_its_inputs(num_frames, fps, reference, words):
    with pytest.raises(ValueError, match=words):
        plan(single(label("happy")), num_frames, fps, CountingResolver(), reference)
