"""Re-create the demo assets in emotivetalk_core/assets/ (they are committed; this documents them).

- portrait.png: a SynthTalk person, neutral and at rest, rendered at 256x256 (the default model
  works at 32 px; a larger portrait is what users feed, and the face detector of the crop and
  paste-back workflow needs a face it can find). The person is from a world the default model
  was not trained in, the first of it OpenCV's face detector finds.
- speech.wav: 16 kHz mono, :data:`SENTENCE` spoken by eSpeak NG (the ``espeakng-loader`` wheel)
  in that person's voice, with a pause, so the demo shows the mouth resting in silence too.

    python scripts/make_demo_assets.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotivetalk_core.synth import world  # noqa: E402
from emotivetalk_core.synth.dataset import identity_seed  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "emotivetalk_core" / "assets"
DEMO_WORLD = 90210  # not a training world: synth train uses its run seed (0 for the default model)
SIZE = 256
SENTENCE = "Hello! I am a talking head. My lips follow your speech."


def demo_person() -> world.Identity:
    """The first person of the demo world with a flat background whose portrait OpenCV's detector finds."""
    import torch

    from emotivetalk_core.media.face_crop import NoFaceFound, locate_face

    for index in range(100):
        who = world.identity(identity_seed(DEMO_WORLD, index))
        if who.background_pattern != "flat":
            continue
        try:
            locate_face(torch.from_numpy(render_portrait(who)).float() / 255)
        except NoFaceFound:
            continue
        return who
    raise SystemExit(f"no detectable person among the first 100 of world {DEMO_WORLD}")


def render_portrait(who: world.Identity) -> np.ndarray:
    from emotivetalk_core.synth.render import render

    return render(who, world.still(who, world.Emotion("neutral")).params, SIZE).rgb[0]


def portrait(who: world.Identity) -> None:
    from PIL import Image

    Image.fromarray(render_portrait(who)).save(ASSETS / "portrait.png", optimize=True)


def speech(who: world.Identity) -> None:
    import soundfile

    from emotivetalk_core.synth.speech import synthesize

    voice = world.voice_for(world.VoiceStyle("en", who.voice.variant, who.voice.pitch, who.voice.pitch_range,
                                             who.voice.rate), world.Emotion("neutral"))
    waveform = synthesize(SENTENCE, voice).waveform
    soundfile.write(ASSETS / "speech.wav", (waveform / np.abs(waveform).max() * 0.9).astype(np.float32), 16000, subtype="PCM_16")


if __name__ == "__main__":
    ASSETS.mkdir(exist_ok=True)
    person = demo_person()
    portrait(person)
    speech(person)
    print(f"wrote {ASSETS / 'portrait.png'} and {ASSETS / 'speech.wav'} (person seed {person.seed})")
