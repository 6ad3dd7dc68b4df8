"""The speech encoder a configuration names, loaded; and the check that it is the one a V-AID was
trained with.

V-AID checkpoints record their encoder's fingerprint and call :func:`check_speech_encoder`, as
features of another encoder are meaningless to a V-AID trained on these.
"""

from __future__ import annotations

from pathlib import Path

from .base import SpeechEncoder
from .logmel import LogMelSpeechEncoder
from .wav2vec2 import Wav2Vec2SpeechEncoder

_EXAMPLE_FILES = {"base": "wav2vec2-base-960h", "large": "wav2vec2-large-960h-lv60-self"}


def load_speech_encoder(config_speech: dict, source: str | Path | None = None, **kwargs) -> SpeechEncoder:
    """The encoder a configuration's ``speech`` entry names.

    ``{"kind": "logmel", "n_mels", "layers"}`` needs no file (``source`` is ignored);
    ``{"kind": "wav2vec2", "architecture", "layers"}`` loads ``source`` (a ComfyUI
    ``models/audio_encoders`` file or a Hugging Face folder) and checks it is that architecture.
    ``kwargs`` go to :class:`Wav2Vec2SpeechEncoder` (chunking).
    """
    kind = config_speech.get("kind")
    if kind == "logmel":
        return LogMelSpeechEncoder(config_speech["n_mels"], config_speech.get("layers", 1))
    if kind != "wav2vec2":
        raise ValueError(f"unknown speech encoder kind {kind!r}; expected 'logmel' or 'wav2vec2'")
    architecture = config_speech.get("architecture")
    if source is None:
        example = _EXAMPLE_FILES.get(architecture, "wav2vec2-base-960h")
        raise ValueError(
            f"this model needs a wav2vec2-{architecture or 'base'} speech encoder file, e.g. {example}.safetensors: "
            "put it in ComfyUI's models/audio_encoders folder and select it"
        )
    encoder = Wav2Vec2SpeechEncoder.load(source, config_speech["layers"], **kwargs)
    loaded = encoder.fingerprint()["architecture"]
    if architecture is not None and loaded != f"wav2vec2-{architecture}":
        raise ValueError(
            f"{source} is a {loaded} model but this configuration needs wav2vec2-{architecture} "
            f"(e.g. {_EXAMPLE_FILES.get(architecture, 'wav2vec2-base-960h')})"
        )
    return encoder


_CHECKED_FIELDS = ("architecture", "normalisation", "weights_sha256")


def check_speech_encoder(expected: dict, actual: dict, needed_file_hint: str) -> None:
    """Raise ``ValueError`` unless ``actual`` (the loaded encoder's fingerprint) matches ``expected``
    (the one a V-AID checkpoint recorded) in architecture, normalisation and weights hash."""
    absent = [field for field in _CHECKED_FIELDS if field not in expected]
    if absent:
        raise ValueError(f"the checkpoint's speech-encoder fingerprint lacks {absent}: {expected}")
    differences = [
        f"{field}: needs {expected[field]!r}, got {actual.get(field)!r}"
        for field in _CHECKED_FIELDS
        if expected[field] != actual.get(field)
    ]
    if differences:
        raise ValueError(
            f"this checkpoint was trained with the speech encoder {expected.get('source', '?')!r} "
            f"({expected['architecture']}) but {actual.get('source', '?')!r} ({actual.get('architecture')}) "
            f"is loaded; {'; '.join(differences)}. {needed_file_hint}"
        )
