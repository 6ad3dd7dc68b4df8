"""Re-create the demo assets in emotivetalk_core/assets/ (they are committed; this documents them).

- portrait.png: a 256x256 face-centred crop of scikit-image's ``astronaut`` photo (NASA, public
  domain; ``skimage.data.astronaut()``).
- speech.wav: 16 kHz mono speech synthesised with espeak-ng (``apt-get install espeak-ng``).

    python scripts/make_demo_assets.py
"""

import subprocess
import tempfile
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "emotivetalk_core" / "assets"
SENTENCE = "Hello! I am a talking head. My lips follow the speech, and my face can show any emotion you ask for."


def portrait() -> None:
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()[0:256, 96:352]).save(ASSETS / "portrait.png", optimize=True)


def speech() -> None:
    import sys

    sys.path.insert(0, str(ASSETS.parents[1]))
    import soundfile

    from emotivetalk_core.audio import load_audio

    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), SENTENCE], check=True)
        waveform = load_audio(raw)
    soundfile.write(ASSETS / "speech.wav", (waveform / np.abs(waveform).max() * 0.9).astype(np.float32), 16000, subtype="PCM_16")


if __name__ == "__main__":
    ASSETS.mkdir(exist_ok=True)
    portrait()
    speech()
