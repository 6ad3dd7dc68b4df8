"""Real synthetic speech with timed phonemes: eSpeak NG through ctypes on the espeakng-loader wheel.

:func:`synthesize` speaks a text and returns the 16 kHz waveform with the phonemes eSpeak actually
rendered and the time each one starts on that waveform, so a procedural face can shape its mouth
(visemes) in step with the audio. Phoneme symbols are eSpeak's ASCII mnemonics (``h @ l oU``,
``m``, ``p``, ``_:`` for a pause); the stress mark eSpeak puts before a stressed vowel (``'oU``)
is split off into :attr:`Phoneme.stress`.

eSpeak NG is a global C state machine, and some of its state survives every API call: the phase
of its pitch flutter advances with all audio ever generated, so the same text spoken twice in one
process differs. Each synthesis therefore runs on a freshly loaded, initialised and afterwards
unloaded instance of the library (about a millisecond), with its noise generator seeded: the
result depends on the text and :class:`Voice` only, bit for bit, in any process. One module-level
lock serialises all of it. The wheel is imported on first use only; this module imports without it.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..media.audio import SAMPLE_RATE, to_speech_rate

_INSTALL_HINT = (
    "SynthTalk speech needs eSpeak NG: pip install -r requirements-dev.txt "
    "(it brings the espeakng-loader wheel)"
)

# Constants of eSpeak NG 1.52's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
# Without it a missing data folder makes espeak_Initialize call exit(), ending the whole process.
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_EE_OK = 0
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7

# eSpeak keeps its data path in a fixed buffer (160 bytes on Windows, 230 elsewhere) and fails to
# initialise, without saying why, when the path does not fit.
_MAX_DATA_PATH = 160 if os.name == "nt" else 230

_NOISE_SEED = 1

_STRESS_MARKS = {"'": 2, ",": 1}

_LOCK = threading.Lock()
_install: _Install | None = None
_private_library: str | None = None


class SpeechUnavailable(RuntimeError):
    """eSpeak NG (the espeakng-loader wheel) is not installed or cannot be loaded."""


@dataclass(frozen=True)
class Phoneme:
    symbol: str          # eSpeak's phoneme mnemonic without its stress mark: "h", "@", "oU", "m", "_:"
    start: float         # seconds from the start of the returned waveform
    end: float           # seconds: the next phoneme's start, or the end of the audio
    stress: int = 0      # 2 primary ("'" in eSpeak), 1 secondary (","), 0 unstressed or not a vowel

    @property
    def is_pause(self) -> bool:
        """eSpeak's pauses are "_" (short), "_:" (clause end) and "_!", "_|" and the like."""
        return self.symbol.startswith("_")


@dataclass(frozen=True)
class Utterance:
    waveform: np.ndarray                     # float32 mono in [-1, 1]
    sample_rate: int                         # always 16000
    phonemes: tuple[Phoneme, ...]
    words: tuple[tuple[float, float], ...]   # (start, end) seconds of each spoken word

    @property
    def duration(self) -> float:
        return self.waveform.shape[0] / self.sample_rate


@dataclass(frozen=True)
class Voice:
    language: str = "en"     # an eSpeak language name, see available_languages()
    variant: str = ""        # an eSpeak variant ("f3", "m2", "klatt"), see available_variants(); "" = none
    rate: int = 160          # words per minute, 80..450
    pitch: int = 50          # 0..100
    pitch_range: int = 50    # 0..100
    volume: int = 100        # 0..200
    word_gap: int = 0        # extra pause between words, units of 10 ms, 0..100

    def __post_init__(self):
        for name, low, high in (
            ("rate", 80, 450), ("pitch", 0, 100), ("pitch_range", 0, 100),
            ("volume", 0, 200), ("word_gap", 0, 100),
        ):
            _check_int(name, getattr(self, name), low, high)
        if not isinstance(self.language, str) or not self.language.strip():
            raise ValueError(f"language must be a non-empty string, got {self.language!r}")
        if not isinstance(self.variant, str):
            raise ValueError(f"variant must be a string, got {self.variant!r}")


def _check_int(name: str, value, low: int, high: int) -> None:
    # bool is an int subclass: Voice(pitch=True) is a mistake, not pitch 1.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")


def synthesize(text: str, voice: Voice = Voice()) -> Utterance:
    """Speak ``text`` with ``voice``: the 16 kHz waveform, its timed phonemes and word spans.

    Deterministic: the same text and voice give bitwise the same result in any process.
    """
    _check_text(text)
    with _LOCK:
        install = _get_install()
        voice_name = install.voice_name(voice)
        recording = _Recording()
        with _fresh_espeak(install.library_path, install.data_path, recording) as (lib, rate):
            _speak(lib, voice_name, voice, text)
    samples = recording.samples()
    waveform = np.clip(to_speech_rate(samples.astype(np.float32) / 32768.0, rate), -1.0, 1.0)
    # Times come from eSpeak's own sample counter, so they do not depend on the resampler.
    # Events at or past eSpeak's last sample (it marks every clause end there) cover no audio.
    phoneme_events = [(sample, name) for sample, name in recording.phonemes if sample < samples.size]
    word_events = [sample for sample in recording.words if sample < samples.size]
    duration = waveform.shape[0] / SAMPLE_RATE
    phonemes = _phoneme_segments(phoneme_events, rate, duration)
    if all(phoneme.is_pause for phoneme in phonemes):
        raise ValueError(f"text {text!r} has nothing eSpeak can speak")
    words = _word_spans(word_events, phonemes, rate, duration)
    return Utterance(waveform=waveform, sample_rate=SAMPLE_RATE, phonemes=phonemes, words=words)


def available_languages() -> list[str]:
    """The language names this eSpeak NG install speaks (e.g. "de", "en", "en-us"), sorted."""
    with _LOCK:
        return sorted(_get_install().voice_files)


def available_variants() -> list[str]:
    """The voice variants (``Voice.variant``) this install has, e.g. "f3", "m2", "klatt"."""
    with _LOCK:
        return sorted(_get_install().variants)


def _check_text(text) -> None:
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("text must not be empty")
    if "\0" in text:
        # eSpeak reads a NUL-terminated C string: whatever follows it would be silently dropped.
        raise ValueError("text must not contain NUL characters")


def _phoneme_segments(events, rate: int, duration: float) -> tuple[Phoneme, ...]:
    """Phonemes from (sample, mnemonic) events: each ends where the next starts.

    Zero-length ones (a short pause can share its instant with the next phoneme) are dropped:
    they cover no audio. So are language switches, which eSpeak reports as phonemes named
    "(en)", "(cmn)" and so on where a voice reads a word in another language: they are no sound,
    and the phoneme before one keeps sounding until the next real one.
    """
    spoken = [event for event in events if not event[1].startswith("(")]
    ordered = sorted(spoken, key=lambda event: event[0])
    starts = [min(sample / rate, duration) for sample, _ in ordered]
    ends = starts[1:] + [duration]
    segments = []
    for (_, mnemonic), start, end in zip(ordered, starts, ends):
        if end > start:
            symbol, stress = _split_stress(mnemonic)
            segments.append(Phoneme(symbol=symbol, start=start, end=end, stress=stress))
    return tuple(segments)


def _split_stress(mnemonic: str) -> tuple[str, int]:
    stress = _STRESS_MARKS.get(mnemonic[:1], 0)
    return (mnemonic[1:], stress) if stress else (mnemonic, 0)


def _word_spans(word_starts, phonemes, rate: int, duration: float) -> tuple[tuple[float, float], ...]:
    """(start, end) of each word: it ends at the next word or at the first pause inside it.

    eSpeak reports where words start only; ending a word at a following pause keeps the silence
    after the last word of a clause out of it.
    """
    starts = sorted(min(sample / rate, duration) for sample in word_starts)
    pauses = [phoneme.start for phoneme in phonemes if phoneme.is_pause]
    spans = []
    for index, start in enumerate(starts):
        limit = starts[index + 1] if index + 1 < len(starts) else duration
        end = min([pause for pause in pauses if start < pause < limit] + [limit])
        if end > start:
            spans.append((start, end))
    return tuple(spans)


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    # espeak_EVENT of speak_lib.h. Every integer there is an int (never a long, which is 32-bit on
    # Windows and 64-bit on Linux), the enum is int-sized, and ctypes pads before the pointer the
    # way the C compiler does: 40 bytes on 64-bit systems, 36 on 32-bit ones.
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),   # milliseconds, truncated
        ("sample", ctypes.c_int),           # the same instant in output samples: exact
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _VoiceEntry(ctypes.Structure):
    # espeak_VOICE of speak_lib.h, as espeak_ListVoices returns it.
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),     # (priority byte, NUL-terminated name)* then a NUL
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


class _Recording:
    """What eSpeak hands the synthesis callback: audio chunks, phoneme and word-start events."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.phonemes: list[tuple[int, str]] = []
        self.words: list[int] = []

    def receive(self, wav, count, events) -> int:
        # An exception cannot cross back into C (ctypes would print it and return 0), so this
        # only copies what eSpeak passes; all checking happens after synthesis.
        if wav and count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_PHONEME:
                self.phonemes.append((event.sample, event.id.string.decode("utf-8", "replace")))
            elif event.type == _EVENT_WORD:
                self.words.append(event.sample)
            index += 1
        return 0

    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


@dataclass(frozen=True)
class _Install:
    """What the installed wheel offers: its files, and its voices by language."""

    library_path: str
    data_path: str
    voice_files: dict[str, str]     # language name -> voice file, e.g. "en-gb" -> "gmw/en"
    variants: frozenset[str]

    def voice_name(self, voice: Voice) -> str:
        """The name espeak_SetVoiceByName takes for ``voice``, e.g. "gmw/en+f3"."""
        voice_file = self.voice_files.get(voice.language.lower())
        if voice_file is None:
            raise ValueError(
                f"language {voice.language!r} is not available; some that are: "
                f"{', '.join(_examples(self.voice_files, ('en', 'en-us', 'de', 'fr', 'es', 'it')))} "
                "(all: available_languages())"
            )
        if not voice.variant:
            return voice_file
        if voice.variant not in self.variants:
            # eSpeak would silently speak without an unknown variant.
            raise ValueError(
                f"variant {voice.variant!r} is not available; some that are: "
                f"{', '.join(_examples(self.variants, ('f3', 'm2', 'klatt')))} (all: available_variants())"
            )
        return f"{voice_file}+{voice.variant}"


def _get_install() -> _Install:
    global _install
    if _install is None:
        loader = _import_loader()
        library_path, data_path = loader.get_library_path(), loader.get_data_path()
        if len(_native_path(data_path)) >= _MAX_DATA_PATH:
            raise SpeechUnavailable(
                f"eSpeak NG cannot use its data folder {data_path}: the path is longer than "
                f"{_MAX_DATA_PATH - 1} bytes; install the environment under a shorter path"
            )
        with _fresh_espeak(library_path, data_path, _Recording()) as (lib, _):
            voice_files = _voice_files(lib, Path(data_path))
        if not voice_files:
            raise SpeechUnavailable(f"eSpeak NG found no usable voices in {data_path}. {_INSTALL_HINT}")
        _install = _Install(library_path, data_path, voice_files, _list_variants(Path(data_path)))
    return _install


@contextmanager
def _fresh_espeak(library_path: str, data_path: str, recording: _Recording):
    """A newly loaded, initialised eSpeak NG reporting to ``recording``; unloaded on exit.

    Yields the library and its output sample rate. Loading anew is the only way to reset the
    state eSpeak carries between utterances.
    """
    lib = _load_library(library_path)
    if not _pristine(lib):
        # Someone else in this process holds the wheel's library, so dlopen returned their
        # initialised instance: a private copy of the file loads as an instance of our own.
        _unload(lib)
        lib = _load_library(_get_private_library(library_path))
        if not _pristine(lib):
            _unload(lib)
            raise RuntimeError("could not load an unused instance of eSpeak NG")
    # Referenced until the library is unloaded: eSpeak keeps only the raw function pointer.
    callback = _SynthCallback(recording.receive)
    try:
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, _native_path(data_path),
            _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT,
        )
        if rate <= 0:
            raise SpeechUnavailable(f"eSpeak NG failed to initialise with data {data_path}. {_INSTALL_HINT}")
        lib.espeak_SetSynthCallback(callback)
        yield lib, rate
    finally:
        lib.espeak_Terminate()
        _unload(lib)


def _pristine(lib) -> bool:
    # A never-initialised instance has an all-zero parameter table (espeak_Initialize fills it).
    return lib.espeak_GetParameter(_PARAM_RATE, 1) == 0


def _speak(lib, voice_name: str, voice: Voice, text: str) -> None:
    if lib.espeak_SetVoiceByName(voice_name.encode("utf-8")) != _EE_OK:
        raise ValueError(f"eSpeak NG rejected voice {voice_name!r} for {voice!r}")
    for parameter, value in (
        (_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch), (_PARAM_RANGE, voice.pitch_range),
        (_PARAM_VOLUME, voice.volume), (_PARAM_WORDGAP, voice.word_gap),
    ):
        if lib.espeak_SetParameter(parameter, int(value), 0) != _EE_OK:
            raise RuntimeError(f"eSpeak NG rejected parameter {parameter} = {value}")
    # Breath noise (the "f" and "whisper" variants, among others) comes from eSpeak's own
    # generator, which initialisation seeds from the clock.
    lib.espeak_ng_SetRandSeed(_NOISE_SEED)
    encoded = text.encode("utf-8") + b"\0"
    status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != _EE_OK:
        raise RuntimeError(f"espeak_Synth failed with status {status}")
    lib.espeak_Synchronize()


def _import_loader():
    try:
        import espeakng_loader
    except ImportError as error:
        raise SpeechUnavailable(_INSTALL_HINT) from error
    return espeakng_loader


def _load_library(path: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(path)
    except OSError as error:
        raise SpeechUnavailable(f"cannot load eSpeak NG from {path}: {error}. {_INSTALL_HINT}") from error
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_GetParameter.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.espeak_GetParameter.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceEntry))
    # espeak_ng.h declares the seed a C long: c_long is that type on every platform.
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
    return lib


def _unload(lib: ctypes.CDLL) -> None:
    import _ctypes

    handle = lib._handle
    if os.name == "nt":
        _ctypes.FreeLibrary(handle)
    else:
        _ctypes.dlclose(handle)


def _get_private_library(library_path: str) -> str:
    """A copy of the library file under a private name, made once per process, removed at exit."""
    global _private_library
    if _private_library is None:
        folder = tempfile.mkdtemp(prefix="synthtalk-espeak-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        # A different file name too: Windows hands out an already loaded DLL by its name.
        _private_library = shutil.copy(library_path, Path(folder) / f"synthtalk-{Path(library_path).name}")
    return str(_private_library)


def _native_path(path: str) -> bytes:
    # eSpeak opens files with the narrow-character fopen, which on Windows reads the ANSI code
    # page, not UTF-8.
    return path.encode("mbcs") if os.name == "nt" else os.fsencode(path)


def _voice_files(lib, data_path: Path) -> dict[str, str]:
    """Each language name this install speaks -> the voice file eSpeak prefers for it.

    The preferred voice is the one giving the language its lowest priority number (eSpeak's own
    rule). A voice whose pronunciation dictionary the data folder lacks (the wheel ships some,
    e.g. Faroese) is left out: it would speak nothing but pauses.
    """
    best: dict[str, tuple[int, str]] = {}
    entries = lib.espeak_ListVoices(None)
    index = 0
    while entries and entries[index]:
        entry = entries[index].contents
        identifier = entry.identifier.decode("utf-8")
        if _has_dictionary(data_path, identifier):
            for priority, language in _language_names(entry.languages):
                if language not in best or priority < best[language][0]:
                    best[language] = (priority, identifier)
        index += 1
    return {language: identifier for language, (_, identifier) in best.items()}


def _language_names(address: int | None) -> list[tuple[int, str]]:
    """(priority, name) pairs of an espeak_VOICE ``languages`` list, lower priority preferred."""
    names = []
    while address and ctypes.string_at(address, 1) != b"\0":
        name = ctypes.string_at(address + 1)
        names.append((ctypes.string_at(address, 1)[0], name.decode("utf-8").lower()))
        address += 1 + len(name) + 1
    return names


def _has_dictionary(data_path: Path, identifier: str) -> bool:
    """Whether the data folder holds the dictionary the voice file ``identifier`` loads.

    eSpeak's rule: the file's "dictionary" line, else its first "language" line up to a hyphen.
    """
    try:
        lines = (data_path / "lang" / identifier).read_text("utf-8", errors="replace").splitlines()
    except OSError:
        return False
    dictionary = None
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "dictionary":
            dictionary = words[1]
            break
        if len(words) >= 2 and words[0] == "language" and dictionary is None:
            dictionary = words[1].split("-")[0]
    return dictionary is not None and (data_path / f"{dictionary}_dict").is_file()


def _list_variants(data_path: Path) -> frozenset[str]:
    folder = data_path / "voices" / "!v"
    if not folder.is_dir():
        return frozenset()
    return frozenset(entry.name for entry in folder.iterdir() if entry.is_file())


def _examples(names, preferred: tuple[str, ...]) -> list[str]:
    present = [name for name in preferred if name in names]
    return present or sorted(names)[:6]
