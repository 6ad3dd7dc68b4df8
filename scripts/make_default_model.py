"""Write the shipped default model: emotivetalk_core/weights/emotivetalk_default.safetensors.

A tiny EmotiveTalk (config ``tiny``) with seeded random weights, in one self-contained file, so
the whole method runs end to end on a CPU out of the box. It is UNTRAINED and its metadata says
so; a model trained on SynthTalk by the pack's own training code replaces it later.

    python scripts/make_default_model.py [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotivetalk_core.configs import get_config  # noqa: E402
from emotivetalk_core.models import DEFAULT_MODEL_PATH, build_emotivetalk_model, build_vaid_model, save_full_model  # noqa: E402

SEED = 20250611
INFO = {
    "trained": False,
    "note": "tiny randomly initialised model (config 'tiny', seed %d); a placeholder until a SynthTalk-trained model replaces it" % SEED,
    "config": "tiny",
    "seed": SEED,
    "script": "scripts/make_default_model.py",
}


def make(out: Path) -> Path:
    torch.manual_seed(SEED)
    config = get_config("tiny")
    model = build_emotivetalk_model(config)
    vaid = build_vaid_model(config)
    # fp16 halves the file; the loaders compute in the dtype they are asked for.
    model.ethd.half(), model.vae.half(), model.image_encoder.half()
    for name in ("lip_projector", "dicte", "lip_encoder", "exp_encoder", "identity_encoder", "face_processor", "mapping"):
        getattr(vaid, name).half()
    return save_full_model(out, model, vaid, config, INFO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    path = make(parser.parse_args().out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
