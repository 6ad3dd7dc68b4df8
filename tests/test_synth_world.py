"""SynthTalk's world: seeded identities, visible emotions, a mouth that follows eSpeak's phonemes,
clips whose audio and frames line up, and shards that training reads back."""

import hashlib

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from emotivetalk_core.media import audio as audio_lib  # noqa: E402
from emotivetalk_core.synth import dataset, texts, world  # noqa: E402
from emotivetalk_core.synth.render import render  # noqa: E402
from emotivetalk_core.synth.speech import Phoneme, Voice, available_languages, available_variants, synthesize  # noqa: E402
from emotivetalk_core.train.shards import ClipDataset, clip_emotion, read_shard_info, target_statistics  # noqa: E402

PER_FRAME = audio_lib.SAMPLE_RATE // world.FPS  # 640 samples per frame at 16 kHz and 25 fps
TEXT = "Hello mama, apple boat, every number."


def portrait(who: world.Identity, label: str = "neutral", intensity: float = 1.0) -> np.ndarray:
    """One still frame, float ``[S, S, 3]`` in 0..255."""
    return render(who, world.still(who, world.Emotion(label, intensity)).params, world.SIZE).rgb[0].astype(np.float64)


def pixel_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def frame_rms(waveform: np.ndarray) -> np.ndarray:
    return np.sqrt((waveform.reshape(-1, PER_FRAME).astype(np.float64) ** 2).mean(axis=1))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hand_phonemes() -> list[Phoneme]:
    """Two seconds of hand-timed speech: closed, open, wide, rounded, with pauses."""
    symbols = ("m", "a", "i", "_", "u:", "O", "b", "aI", "p", "_:")
    phonemes, start = [], 0.2
    for k in range(14):
        length = 0.1 + 0.04 * (k % 3)
        phonemes.append(Phoneme(symbols[k % len(symbols)], start, start + length))
        start += length
    return phonemes


@pytest.fixture(scope="module")
def speaker() -> world.Identity:
    return world.identity(11)


@pytest.fixture(scope="module")
def clip(speaker):
    return dataset.make_clip(speaker, world.Emotion("happy", 1.0), TEXT, seed=5, lead=0.3, tail=0.4)


# --- identities ------------------------------------------------------------------------------

def test_an_identity_is_a_function_of_its_seed():
    assert world.identity(7) == world.identity(7)
    assert world.identity(7) != world.identity(8)
    assert world.identity(7).seed == 7
    first = render(world.identity(7), world.still(world.identity(7), world.Emotion("sad")).params, world.SIZE)
    again = render(world.identity(7), world.still(world.identity(7), world.Emotion("sad")).params, world.SIZE)
    assert first.rgb.tobytes() == again.rgb.tobytes() and first.mask.tobytes() == again.mask.tobytes()


def test_different_seeds_are_visibly_different_people():
    faces = [portrait(world.identity(seed)) for seed in range(12)]
    closest = min(pixel_difference(faces[i], faces[j]) for i in range(12) for j in range(i + 1, 12))
    # Two people differ by at least ~8 grey levels on average over the whole frame (measured: 19.5).
    assert closest > 8.0, closest
    voices = {world.identity(seed).voice for seed in range(12)}
    assert len(voices) == 12


def test_every_identity_has_a_voice_espeak_has():
    languages, variants = set(available_languages()), set(available_variants()) | {""}
    for seed in range(40):
        voice = world.identity(seed).voice
        assert voice.language in world.LANGUAGES and voice.language in languages, voice
        assert voice.variant in variants, voice
    assert set(world.LANGUAGES) <= languages


def test_frames_are_32_px_with_the_face_in_the_mask():
    assert world.SIZE == dataset.SIZE == 32 and world.FPS == 25
    who = world.identity(3)
    frames = render(who, world.still(who, world.Emotion("neutral"), num_frames=4).params, world.SIZE)
    assert frames.rgb.shape == (4, 32, 32, 3) and frames.rgb.dtype == np.uint8
    assert frames.mask.shape == (4, 32, 32) and frames.mask.dtype == np.uint8
    assert (frames.mask[:, 14:18, 14:18] == 255).all()  # the face covers the middle
    assert (frames.mask[:, :2, :2] == 0).all() and (frames.mask[:, :2, -2:] == 0).all()  # not the corners
    assert (frames.rgb == frames.rgb[0]).all()  # a still face does not move
    params = world.still(who, world.Emotion("neutral")).params
    del params["blink"]
    with pytest.raises(ValueError, match="blink"):
        render(who, params, world.SIZE)


def test_identity_seeds_of_a_world_are_stable_and_never_shared():
    assert dataset.identity_seed(1, 0) == dataset.identity_seed(1, 0)
    seeds = [dataset.identity_seed(world_seed, index) for world_seed in range(8) for index in range(100)]
    assert len(set(seeds)) == len(seeds)
    assert world.identity(dataset.identity_seed(1, 0)) != world.identity(dataset.identity_seed(2, 0))


# --- emotions --------------------------------------------------------------------------------

def test_emotion_labels_and_intensities_are_checked():
    assert world.EMOTION_NAMES == ("neutral", "happy", "sad", "angry", "surprised")
    with pytest.raises(ValueError, match="joy.*neutral"):
        world.Emotion("joy")
    for bad in (-0.1, 2.1):
        with pytest.raises(ValueError, match="intensity"):
            world.Emotion("sad", bad)
    assert world.Emotion("neutral").face() == dict.fromkeys(world.EXPRESSION_PARAMETERS, 0.0)
    assert world.Emotion("happy", 0.5).face()["smile"] == 0.5 * world.EMOTIONS["happy"]["face"]["smile"]


def test_a_still_is_a_face_at_rest_showing_the_emotion():
    who = world.identity(4)
    still = world.still(who, world.Emotion("angry", 1.5), num_frames=3)
    assert still.num_frames == 3 and still.emotion == world.Emotion("angry", 1.5)
    for name in ("mouth_open", "mouth_width", "blink", "head_x", "head_y", "head_tilt"):
        assert (still.params[name] == 0).all(), name
    for name, value in world.Emotion("angry", 1.5).face().items():
        np.testing.assert_allclose(still.params[name], value, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("seed", [0, 3, 21, 58])
def test_the_five_emotions_look_different_on_one_face(seed):
    who = world.identity(seed)
    faces = {label: portrait(who, label) for label in world.EMOTION_NAMES}
    for i, a in enumerate(world.EMOTION_NAMES):
        for b in world.EMOTION_NAMES[i + 1:]:
            # Measured: at least 1.23 grey levels over the whole 32 px frame on 200 identities
            # (brows, mouth corners and eyes are a few pixels each).
            assert pixel_difference(faces[a], faces[b]) > 0.8, (seed, a, b)
    for label in world.EMOTION_NAMES[1:]:
        # Intensity 0 of any emotion is the neutral face, and the face moves away from it as it grows.
        assert portrait(who, label, 0.0).tobytes() == faces["neutral"].tobytes(), label
        away = [pixel_difference(portrait(who, label, k), faces["neutral"]) for k in (0.0, 0.5, 1.0)]
        assert away[0] == 0.0 < away[1] < away[2], (seed, label, away)


def test_with_intensity_scales_the_expression_linearly():
    who = world.identity(9)
    phonemes = hand_phonemes()
    sad = world.perform(phonemes, 60, who, world.Emotion("sad", 1.0), seed=3)
    before = {name: values.copy() for name, values in sad.params.items()}
    none, double = world.with_intensity(sad, 0.0), world.with_intensity(sad, 2.0)
    assert none.emotion == world.Emotion("sad", 0.0) and double.emotion == world.Emotion("sad", 2.0)
    preset = world.EMOTIONS["sad"]["face"]
    for name in world.FRAME_PARAMETERS:
        if name in preset:
            np.testing.assert_allclose(sad.params[name] - none.params[name], preset[name], atol=1e-5, err_msg=name)
            np.testing.assert_allclose(double.params[name] - none.params[name], 2 * preset[name], atol=1e-5, err_msg=name)
        else:  # mouth, blinks, head motion, and the expression parameters sad leaves alone: kept exactly
            assert none.params[name].tobytes() == sad.params[name].tobytes() == double.params[name].tobytes(), name
    # The original is untouched.
    assert all(before[name].tobytes() == sad.params[name].tobytes() for name in before)
    # Intensity 0 is the neutral performance (same seed: same drift, blinks and head motion).
    neutral = world.perform(phonemes, 60, who, world.Emotion("neutral"), seed=3)
    for name in world.FRAME_PARAMETERS:
        np.testing.assert_allclose(none.params[name], neutral.params[name], atol=1e-6, err_msg=name)
    # Changing the intensity afterwards equals performing at that intensity.
    weak = world.perform(phonemes, 60, who, world.Emotion("sad", 0.5), seed=3)
    strong = world.perform(phonemes, 60, who, world.Emotion("sad", 1.5), seed=3)
    for name in world.FRAME_PARAMETERS:
        np.testing.assert_allclose(world.with_intensity(weak, 1.5).params[name], strong.params[name], atol=1e-6, err_msg=name)
    # No clipping of parameters: the intensity itself is bounded.
    happy = world.with_intensity(world.still(who, world.Emotion("happy")), 2.0)
    assert happy.params["smile"][0] == pytest.approx(2.0) and happy.params["blush"][0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="intensity"):
        world.with_intensity(sad, 2.5)
    # A portrait at intensity 0 through with_intensity renders as the neutral portrait.
    zero = world.with_intensity(world.still(who, world.Emotion("surprised")), 0.0)
    assert render(who, zero.params, world.SIZE).rgb.tobytes() == \
        render(who, world.still(who, world.Emotion("neutral")).params, world.SIZE).rgb.tobytes()


def test_emotion_colours_the_voice_as_the_presets_say():
    # Loudness follows the volume factor and speaking time the inverse of the rate factor, for
    # every emotion, on the same person and text.
    for seed in (11, 40):
        who = world.identity(seed)
        loudness, duration = {}, {}
        for label in world.EMOTION_NAMES:
            waveform, phonemes = dataset.speak(who, world.Emotion(label), TEXT, seed=1, lead=0.0, tail=0.0)
            spoken = [p for p in phonemes if not p.is_pause]
            loudness[label] = float(np.sqrt(np.mean(waveform.astype(np.float64) ** 2)))
            duration[label] = spoken[-1].end - spoken[0].start
        by_volume = sorted(world.EMOTION_NAMES, key=lambda label: world.EMOTIONS[label]["voice"][3])
        by_slowness = sorted(world.EMOTION_NAMES, key=lambda label: -world.EMOTIONS[label]["voice"][2])
        assert sorted(world.EMOTION_NAMES, key=loudness.get) == by_volume, (seed, loudness)
        assert sorted(world.EMOTION_NAMES, key=duration.get) == by_slowness, (seed, duration)
        assert loudness["angry"] > 1.6 * loudness["sad"], (seed, loudness)
        assert duration["sad"] > 1.15 * duration["angry"], (seed, duration)


# --- visemes and the mouth --------------------------------------------------------------------

@pytest.mark.parametrize("symbols, expected", [
    (("m", "b", "p", "'m"), "closed"),
    (("a", "a#", "A:", "aI", "aU", "V", "'a"), "open"),
    (("i", "i:", "I", "j", "e", "eI"), "wide"),
    (("u", "u:", "U", "w", "o", "oU", ",u:"), "rounded"),
    (("O", "O:", "0"), "round_open"),
    (("@", "3:", "E"), "mid"),
    (("f", "v"), "labiodental"),
    (("s", "z"), "teeth"),
    (("S", "Z", "tS", "dZ"), "protruded"),
    (("t", "d", "k", "n", "l", "r", "h"), "consonant"),
    (("_", "_:", "_!", ""), "rest"),
])
def test_viseme_classes(symbols, expected):
    assert {symbol: world.viseme(symbol) for symbol in symbols} == dict.fromkeys(symbols, expected)


def test_viseme_shapes():
    opening = {name: target[0] for name, target in world.VISEMES.items()}
    width = {name: target[1] for name, target in world.VISEMES.items()}
    assert opening["rest"] == opening["closed"] == 0.0
    assert opening["open"] == max(opening.values()) and opening["open"] > 2 * opening["wide"]
    assert width["wide"] == max(width.values()) and width["rounded"] == min(width.values()) < 0


def test_held_phonemes_shape_the_mouth():
    def track(*symbols, articulation=1.0):
        phonemes = [Phoneme(symbol, 0.2 + 0.4 * k, 0.6 + 0.4 * k) for k, symbol in enumerate(symbols)]
        return world.mouth_track(phonemes, 10 * len(symbols) + 10, articulation)

    opening, width, speaking = track("m", "a", "i", "u:", "aI")
    middle = [10, 20, 30, 40]  # the middle frame of each held phoneme
    assert opening[middle[0]] == pytest.approx(0.0, abs=1e-6)                      # m: lips shut
    assert opening[middle[1]] == pytest.approx(world.VISEMES["open"][0], abs=1e-3)  # a: wide open
    assert width[middle[2]] == pytest.approx(world.VISEMES["wide"][1], abs=1e-3)    # i: spread
    assert width[middle[3]] == pytest.approx(world.VISEMES["rounded"][1], abs=1e-3)  # u: rounded
    assert (speaking[5:55] == 1).all() and (speaking[:4] == 0).all() and (speaking[-4:] == 0).all()
    assert (opening[:3] == 0).all() and (opening[-3:] == 0).all()  # at rest in silence
    # A diphthong moves from its first vowel to its second: open, then wide.
    assert opening[46] > 2 * opening[53] and width[53] > width[46] + 0.5
    # Articulation scales how far this person opens the mouth.
    wide_open, _, _ = track("m", "a", "i", "u:", "aI", articulation=1.15)
    np.testing.assert_allclose(wide_open, 1.15 * opening, rtol=1e-5, atol=1e-7)


def test_a_performance_is_a_function_of_its_seed():
    who, phonemes = world.identity(2), hand_phonemes()
    first = world.perform(phonemes, 80, who, world.Emotion("angry", 0.7), seed=4)
    again = world.perform(phonemes, 80, who, world.Emotion("angry", 0.7), seed=4)
    other = world.perform(phonemes, 80, who, world.Emotion("angry", 0.7), seed=5)
    assert set(first.params) == set(world.FRAME_PARAMETERS)
    for name in world.FRAME_PARAMETERS:
        assert first.params[name].dtype == np.float32 and first.params[name].shape == (80,)
        assert first.params[name].tobytes() == again.params[name].tobytes(), name
    # The seed draws life (blinks, head motion, drift); the mouth comes from the phonemes only.
    for name in ("mouth_open", "mouth_width"):
        assert first.params[name].tobytes() == other.params[name].tobytes(), name
    for name in ("blink", "head_x", "head_tilt", "smile"):
        assert not np.array_equal(first.params[name], other.params[name]), name
    # 3.2 s of life holds at least one full blink, and the head moves a little, not a lot.
    assert first.params["blink"].max() == 1.0 and first.params["blink"].min() == 0.0
    assert 0 < np.abs(first.params["head_x"]).max() < 0.1
    assert render(who, first.params, world.SIZE).rgb.tobytes() == render(who, again.params, world.SIZE).rgb.tobytes()


# --- clips -----------------------------------------------------------------------------------

def test_a_clip_is_a_function_of_its_seed(clip, speaker):
    again = dataset.make_clip(speaker, world.Emotion("happy", 1.0), TEXT, seed=5, lead=0.3, tail=0.4)
    assert again.waveform.tobytes() == clip.waveform.tobytes()
    assert again.frames.rgb.tobytes() == clip.frames.rgb.tobytes()
    assert again.frames.mask.tobytes() == clip.frames.mask.tobytes()
    for name in world.FRAME_PARAMETERS:
        assert again.performance.params[name].tobytes() == clip.performance.params[name].tobytes(), name
    # Another seed: the same sentence under other room noise, with other blinks and head motion.
    other = dataset.make_clip(speaker, world.Emotion("happy", 1.0), TEXT, seed=6, lead=0.3, tail=0.4)
    assert other.num_frames == clip.num_frames
    assert not np.array_equal(other.waveform, clip.waveform)
    assert np.abs(other.waveform - clip.waveform).max() < 20 * dataset.ROOM_NOISE
    assert not np.array_equal(other.frames.rgb, clip.frames.rgb)


def test_a_clip_is_as_long_as_its_audio_rounded_up_to_whole_frames(clip, speaker):
    spoken, _ = dataset.speak(speaker, world.Emotion("happy", 1.0), TEXT, seed=5, lead=0.3, tail=0.4)
    frames = clip.num_frames
    assert frames - 1 < len(spoken) / PER_FRAME <= frames
    assert len(clip.waveform) == frames * PER_FRAME and clip.waveform.dtype == np.float32
    assert clip.frames.rgb.shape == (frames, world.SIZE, world.SIZE, 3)
    assert clip.frames.mask.shape == (frames, world.SIZE, world.SIZE)
    assert clip.performance.lip_target().shape == (frames, 2)
    assert clip.performance.exp_target().shape == (frames, 6)
    assert len(clip.performance.speaking) == frames
    # The clip's audio is what was spoken, then room noise (never digital silence) up to the frame.
    assert clip.waveform[:len(spoken)].tobytes() == spoken.tobytes()
    padding = clip.waveform[len(spoken):]
    if padding.size:
        assert np.all(padding != 0)
    # lead and tail are the silences around the utterance.
    utterance = synthesize(TEXT, world.voice_for(speaker.voice, world.Emotion("happy", 1.0)))
    assert len(spoken) == round(0.3 * 16000) + len(utterance.waveform) + round(0.4 * 16000)


def test_the_mouth_rests_in_silence_and_moves_with_speech(clip):
    mouth = clip.performance.params["mouth_open"]
    speaking = clip.performance.speaking > 0.5
    frames = clip.num_frames
    spoken = np.flatnonzero(speaking)
    # The lead: 0.3 s before the first phoneme, less the ~50 ms the lips anticipate it.
    lead = np.arange(frames) < int((0.3 - 0.06) * world.FPS)
    tail = np.arange(frames) > spoken[-1] + 2
    assert lead.sum() >= 6 and tail.sum() >= 6
    assert not speaking[lead].any() and spoken[0] >= lead.sum()
    assert np.abs(mouth[lead]).max() < 1e-3 and np.abs(mouth[tail]).max() < 1e-3
    assert speaking.sum() > 0.5 * frames
    assert mouth[speaking].mean() > 0.2 and np.percentile(mouth[speaking], 90) > 0.5
    # The audio agrees: speaking frames are loud, silent ones are room noise.
    rms = frame_rms(clip.waveform)
    silent = lead | tail
    assert np.median(rms[speaking]) > 20 * rms[silent].max()
    assert 0.5 * dataset.ROOM_NOISE < np.median(rms[silent]) < 2 * dataset.ROOM_NOISE
    # The lip target is the true mouth.
    assert clip.performance.lip_target()[:, 0].tobytes() == mouth.tobytes()


def test_the_rendered_mouth_opens_when_the_true_mouth_does(speaker):
    # Without life nothing else moves, so every change in the frames is the mouth.
    clip = dataset.make_clip(speaker, world.Emotion("neutral"), TEXT, seed=5, life=False)
    mouth = clip.performance.params["mouth_open"]
    rgb = clip.frames.rgb.astype(np.float64)
    change = np.abs(rgb - rgb[0]).mean(axis=(1, 2, 3))
    assert mouth[0] == 0.0
    rest = (mouth == 0) & (clip.performance.params["mouth_width"] == 0)
    assert rest.sum() >= 10
    assert (change[rest] == 0).all()  # a mouth at rest is the rest frame, pixel for pixel
    assert change.max() > 0.5
    r = np.corrcoef(change, mouth)[0, 1]
    assert r > 0.9, r
    # The mouth is in the lower middle of the frame: nothing changes in the upper half.
    assert (clip.frames.rgb[:, :14] == clip.frames.rgb[0, :14]).all()


# --- texts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("language", world.LANGUAGES)
def test_sentences_are_seeded_real_words_espeak_speaks(language):
    words = set(texts.WORDS[{"en-us": "en"}.get(language, language)])
    made = [texts.sentence(np.random.default_rng(seed), language) for seed in range(6)]
    assert made == [texts.sentence(np.random.default_rng(seed), language) for seed in range(6)]
    assert len(set(made)) == 6
    for text in made:
        assert text and text[0].isupper() and text[-1] in ".!?"
        spoken = [word.strip(",.!?") for word in text.split()]
        assert 3 <= len(spoken) <= 10
        assert {spoken[0][0].lower() + spoken[0][1:], *spoken[1:]} <= words, text
        assert ("," in text) == (len(spoken) >= 6), text
    utterance = synthesize(made[0], Voice(language))
    assert utterance.duration > 0.5 and sum(not p.is_pause for p in utterance.phonemes) >= 6


# --- shards ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    (out / "notes.txt").write_text("mine")
    calls = []
    paths = dataset.write_shards(out, world_seed=3, people=2, clips=5, workers=1,
                                 progress=lambda done, total: calls.append((done, total)))
    return out, paths, calls


def test_write_shards_writes_one_shard_per_person(shards):
    out, paths, calls = shards
    assert [path.name for path in paths] == ["person-00000.safetensors", "person-00001.safetensors"]
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt", *[path.name for path in paths]]
    assert (out / "notes.txt").read_text() == "mine"
    assert calls == [(0, 2), (1, 2), (2, 2)]
    identities = set()
    for path in paths:
        info = read_shard_info(path)
        assert (info["fps"], info["sample_rate"], info["size"]) == (25, 16000, 32)
        assert info["targets"] == dataset.TARGETS == {"tool": "synthtalk-world", "lip_dim": 2, "exp_dim": 6}
        assert info["emotion"] is None
        identities.add(info["identity"])
        clips = info["clips"]
        assert len(clips) == 5
        # Five clips show every emotion once, each clip labelled with its own.
        assert sorted(clip_emotion(clip, info) for clip in clips) == sorted(world.EMOTION_NAMES)
        for clip in clips:
            if clip["emotion"] == "neutral":
                assert clip["intensity"] == 1.0
            else:
                assert 0.5 <= clip["intensity"] <= 1.5
    assert len(identities) == 2


def test_shards_hold_the_clips_of_person_clips(shards):
    from safetensors import safe_open

    _, paths, _ = shards
    made = dataset.person_clips(3, 1, 5)
    info = read_shard_info(paths[1])
    assert [clip["emotion"] for clip in info["clips"]] == [clip.emotion.label for clip in made]
    with safe_open(str(paths[1]), framework="np") as handle:
        for entry, clip in zip(info["clips"], made):
            name = entry["name"]
            frames = handle.get_tensor(f"{name}.frames")
            audio = handle.get_tensor(f"{name}.audio")
            assert frames.shape == (entry["frames"], 32, 32, 3) and frames.dtype == np.uint8
            assert audio.dtype == np.float32 and len(audio) == entry["frames"] * PER_FRAME
            assert frames.tobytes() == clip.frames.rgb.tobytes()
            assert audio.tobytes() == clip.waveform.tobytes()
            assert handle.get_tensor(f"{name}.lip_target").tobytes() == clip.performance.lip_target().tobytes()
            assert handle.get_tensor(f"{name}.exp_target").tobytes() == clip.performance.exp_target().tobytes()
            assert entry["intensity"] == round(clip.emotion.intensity, 4)
    # Person 1 is not person 0, nor person 1 of another world.
    assert made[0].identity == world.identity(dataset.identity_seed(3, 1))
    assert made[0].identity != world.identity(dataset.identity_seed(3, 0))


def test_the_training_reader_reads_the_shards(shards):
    out, paths, _ = shards
    window = 8
    data = ClipDataset(out, window=window, labels=world.EMOTION_NAMES, reference="video")
    infos = {path: read_shard_info(path) for path in paths}
    expected_windows = sum(clip["frames"] // window for info in infos.values() for clip in info["clips"])
    assert len(data) == expected_windows
    seen = set()
    for index, where in enumerate(data.windows):
        info = read_shard_info(data.paths[where.shard])
        label = next(clip["emotion"] for clip in info["clips"] if clip["name"] == where.clip)
        assert where.emotion == label
        if (where.shard, where.clip) in seen:
            continue
        seen.add((where.shard, where.clip))
        item = data[index]
        assert item["frames"].shape == (window, 3, 32, 32) and 0 <= item["frames"].min() <= item["frames"].max() <= 1
        assert item["mask"].shape == (window, 1, 32, 32)
        assert item["audio"].shape == (window * PER_FRAME,)
        assert item["lip_target"].shape == (window, 2) and item["exp_target"].shape == (window, 6)
        assert int(item["emotion"]) == world.EMOTION_NAMES.index(label)
    assert len(seen) == 10  # every clip of both people gives windows
    statistics = target_statistics(out)
    assert statistics["lip_target"][0].shape == (2,) and statistics["exp_target"][0].shape == (6,)
    assert 0.05 < float(statistics["lip_target"][0][0]) < 0.6  # people talk: the mean mouth opening


def test_write_shards_keeps_shards_already_there(shards):
    out, paths, _ = shards
    before = {path.name: (path.stat().st_mtime_ns, digest(path)) for path in paths}
    calls = []
    again = dataset.write_shards(out, world_seed=3, people=2, clips=5, progress=lambda *call: calls.append(call))
    assert {path.name: (path.stat().st_mtime_ns, digest(path)) for path in paths} == before  # not rewritten
    assert again == paths and calls == [(2, 2)]
    assert (out / "notes.txt").read_text() == "mine"
    assert not list(out.glob("*.partial"))


def test_an_interrupted_run_resumes_with_the_same_shards(shards, tmp_path):
    import shutil

    _, paths, _ = shards
    kept = tmp_path / paths[0].name
    shutil.copy2(paths[0], kept)
    stamp = kept.stat().st_mtime_ns
    resumed = dataset.write_shards(tmp_path, world_seed=3, people=2, clips=5)
    assert [path.name for path in resumed] == [path.name for path in paths]
    assert kept.stat().st_mtime_ns == stamp and digest(kept) == digest(paths[0])
    # The missing person is written again, bit for bit as the first run wrote it.
    assert digest(resumed[1]) == digest(paths[1])


def test_a_shard_of_another_world_or_size_is_refused_not_reused(shards, tmp_path):
    import shutil

    from emotivetalk_core.train.shards import ShardError

    _, paths, _ = shards
    shutil.copy2(paths[0], tmp_path / paths[0].name)
    before = digest(tmp_path / paths[0].name)
    for request in ({"world_seed": 4, "clips": 5}, {"world_seed": 3, "clips": 2}):
        with pytest.raises(ShardError, match="world-3/person-00000.*give an empty folder"):
            dataset.write_shards(tmp_path, people=1, **request)
    (tmp_path / "person-00001.safetensors").write_bytes(b"not a shard")
    with pytest.raises(ShardError, match="person-00001.safetensors exists and is not a SynthTalk shard"):
        dataset.write_shards(tmp_path, world_seed=3, people=2, clips=5)
    assert digest(tmp_path / paths[0].name) == before
    assert (tmp_path / "person-00001.safetensors").read_bytes() == b"not a shard"
