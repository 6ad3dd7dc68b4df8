"""SynthTalk speech: real eSpeak NG audio whose phoneme times line up with the waveform."""

import ctypes
import sys

import numpy as np
import pytest

espeakng_loader = pytest.importorskip("espeakng_loader")

from emotivetalk_core.synth import speech  # noqa: E402
from emotivetalk_core.synth.speech import (  # noqa: E402
    SpeechUnavailable, Voice, available_languages, synthesize,
)

VOWELS = {"a", "a#", "A:", "@", "aI", "oU", "3:"}


def _rms(utterance, start: float, end: float) -> float:
    segment = utterance.waveform[int(start * utterance.sample_rate):int(end * utterance.sample_rate)]
    return float(np.sqrt(np.mean(segment.astype(np.float64) ** 2)))


def _median_f0(utterance, low_hz: float = 60.0, high_hz: float = 400.0) -> float:
    """Median autocorrelation pitch over the loud, clearly periodic 40 ms frames."""
    rate, wave = utterance.sample_rate, utterance.waveform.astype(np.float64)
    size, hop = int(0.04 * rate), int(0.01 * rate)
    frames = np.stack([wave[i:i + size] for i in range(0, wave.size - size, hop)])
    frames -= frames.mean(axis=1, keepdims=True)
    energy = np.sqrt((frames ** 2).mean(axis=1))
    voiced = frames[energy > 0.3 * energy.max()]
    spectrum = np.fft.rfft(voiced, n=2 * size, axis=1)
    autocorrelation = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :size]
    shortest, longest = int(rate / high_hz), int(rate / low_hz)
    lags = shortest + np.argmax(autocorrelation[:, shortest:longest], axis=1)
    periodic = autocorrelation[np.arange(len(lags)), lags] > 0.5 * autocorrelation[:, 0]
    assert periodic.sum() >= 20, "too few voiced frames to estimate a pitch"
    return float(np.median(rate / lags[periodic]))


def test_hello_world_is_real_timed_speech():
    utterance = synthesize("hello world")
    assert utterance.sample_rate == 16000
    assert utterance.waveform.dtype == np.float32 and utterance.waveform.ndim == 1
    assert 0.5 <= utterance.duration <= 2.0
    assert np.abs(utterance.waveform).max() <= 1.0
    assert _rms(utterance, 0.0, utterance.duration) > 0.02
    starts = [phoneme.start for phoneme in utterance.phonemes]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    for phoneme, following in zip(utterance.phonemes, utterance.phonemes[1:]):
        assert phoneme.end == following.start
    assert 0.0 <= starts[0] and utterance.phonemes[-1].end <= utterance.duration
    assert {"h", "l", "w"} <= {phoneme.symbol for phoneme in utterance.phonemes}
    assert any(phoneme.stress == 2 for phoneme in utterance.phonemes)
    assert len(utterance.words) == 2
    (first_start, first_end), (second_start, second_end) = utterance.words
    assert 0.0 <= first_start < first_end <= second_start < second_end <= utterance.duration


def test_closed_lips_are_quieter_than_the_vowels_around_them():
    # m and p are said with closed lips: if the phoneme times line up with the audio, their
    # segments carry less energy than the neighbouring vowels (p is silent until its release).
    utterance = synthesize("mama papa")
    phonemes = utterance.phonemes
    symbols = [phoneme.symbol for phoneme in phonemes]
    assert symbols.count("m") == 2 and symbols.count("p") == 2, symbols
    for index, phoneme in enumerate(phonemes):
        if phoneme.symbol not in ("m", "p"):
            continue
        neighbours = [phonemes[i] for i in (index - 1, index + 1)
                      if 0 <= i < len(phonemes) and phonemes[i].symbol in VOWELS]
        assert neighbours, symbols
        margin = 0.9 if phoneme.symbol == "m" else 0.5
        for vowel in neighbours:
            closed, open_ = _rms(utterance, phoneme.start, phoneme.end), _rms(utterance, vowel.start, vowel.end)
            assert closed < margin * open_, (phoneme, vowel, closed, open_)


def test_rate_changes_duration():
    sentence = "We were away a year ago, and we will be early."
    slow = synthesize(sentence, Voice(rate=120))
    fast = synthesize(sentence, Voice(rate=300))
    assert fast.duration < 0.6 * slow.duration
    assert fast.phonemes[-1].end <= fast.duration


def test_pitch_raises_the_fundamental():
    sentence = "We were away a year ago, and we will be early."
    low = _median_f0(synthesize(sentence, Voice(pitch=20)))
    high = _median_f0(synthesize(sentence, Voice(pitch=90)))
    assert 60 < low < high < 400
    assert high > 1.4 * low, (low, high)


def test_english_and_german_both_speak():
    assert {"en", "de"} <= set(available_languages())
    english = synthesize("Guten Morgen", Voice("en"))
    german = synthesize("Guten Morgen", Voice("de"))
    for utterance in (english, german):
        assert utterance.duration > 0.3 and _rms(utterance, 0.0, utterance.duration) > 0.02
    assert [p.symbol for p in german.phonemes][:2] == ["g", "u:"]
    assert [p.symbol for p in english.phonemes] != [p.symbol for p in german.phonemes]


def test_language_switches_are_not_phonemes():
    # A Russian voice reads "hello" in English, and eSpeak reports the switch as phoneme "(en)".
    symbols = [phoneme.symbol for phoneme in synthesize("hello", Voice("ru")).phonemes]
    assert "h" in symbols and not any(symbol.startswith("(") for symbol in symbols), symbols


def test_same_call_twice_is_bitwise_equal():
    voice = Voice("en", "f3", rate=170, pitch=60)   # f3 breathes: its noise must be seeded too
    first = synthesize("She sells sea shells by the sea shore.", voice)
    synthesize("Something else in between.", Voice("de", rate=300))
    second = synthesize("She sells sea shells by the sea shore.", voice)
    assert first.waveform.tobytes() == second.waveform.tobytes()
    assert first.phonemes == second.phonemes and first.words == second.words


def test_deterministic_while_someone_else_holds_the_library():
    reference = synthesize("hello world")
    # Another user of the wheel in this process: its instance is initialised and stays loaded.
    other = ctypes.CDLL(espeakng_loader.get_library_path())
    other.espeak_Initialize(speech._AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
                            speech._INITIALIZE_DONT_EXIT)
    try:
        assert synthesize("hello world").waveform.tobytes() == reference.waveform.tobytes()
    finally:
        other.espeak_Terminate()
        speech._unload(other)


@pytest.mark.parametrize("field, value", [
    ("rate", 79), ("rate", 451), ("pitch", -1), ("pitch", 101), ("pitch_range", 101),
    ("volume", 201), ("word_gap", -1), ("rate", 160.0), ("pitch", True),
])
def test_bad_voice_parameters_name_the_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        Voice(**{field: value})


def test_bad_text_language_and_variant():
    with pytest.raises(ValueError, match="text"):
        synthesize("   ")
    with pytest.raises(ValueError, match="nothing eSpeak can speak"):
        synthesize("...")
    with pytest.raises(ValueError, match="'xx'.*en"):
        synthesize("hello", Voice("xx"))
    with pytest.raises(ValueError, match="variant 'nope'"):
        synthesize("hello", Voice("en", "nope"))


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(speech, "_install", None)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(SpeechUnavailable, match="espeakng-loader"):
        synthesize("hello")
