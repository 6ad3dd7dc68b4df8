"""Write the shipped default model from a SynthTalk run and its held-out evaluation.

    python -m emotivetalk_core synth train --out RUN
    python -m emotivetalk_core synth evaluate --checkpoint RUN/emotivetalk_synthtalk.safetensors \
        --seed 1 --clips 64 --json > REPORT.json
    python scripts/make_default_model.py --model RUN/emotivetalk_synthtalk.safetensors --report REPORT.json

The model is stored in float16 (half the file; the loaders compute in the dtype they are asked
for), its info keeping how it was trained (the run's command, seed and plan, which ``synth
train`` wrote) and adding the held-out figures beside their goals, so ``default`` says what it
can do. The run file is refused unless it is a SynthTalk run with a report of another world.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotivetalk_core.checkpoints import load_model_file, save_model_file  # noqa: E402
from emotivetalk_core.models import DEFAULT_MODEL_PATH  # noqa: E402

SCRIPT = "scripts/make_default_model.py"


def held_out(report: dict) -> dict:
    """The report's figures, each ``{value, ceiling, floor[, goal, met]}``, and its settings."""
    return {name: entry for name, entry in report.items() if name != "all_goals_met"} | {
        "all_goals_met": bool(report["all_goals_met"])}


def make(model: Path, report: dict, out: Path) -> Path:
    states, configs, info = load_model_file(model)
    run = info.get("synthtalk")
    if not info.get("trained") or not run:
        raise SystemExit(f"{model} is not a SynthTalk-trained model (its info has no 'synthtalk' run)")
    if report["settings"]["seed"] == run["world_seed"]:
        raise SystemExit(f"the report measured world {run['world_seed']}, the one {model} was trained in: evaluate another seed")
    half = {name: ({key: tensor.half() if tensor.is_floating_point() else tensor for key, tensor in state.items()},
                   configs[name]) for name, state in states.items()}
    note = (f"EmotiveTalk trained in SynthTalk (32 px procedural faces with eSpeak NG speech) by "
            f"'{run['command'] or 'synth train'}', seed {run['seed']}; a demonstration model, not for real faces")
    return save_model_file(out, half, {**info, "note": note, "config": "synthtalk", "script": SCRIPT,
                                       "held_out": held_out(report)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="RUN/emotivetalk_synthtalk.safetensors")
    parser.add_argument("--report", type=Path, required=True, help="synth evaluate --json output of a held-out world")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    args = parser.parse_args()
    path = make(args.model, json.loads(args.report.read_text()), args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
