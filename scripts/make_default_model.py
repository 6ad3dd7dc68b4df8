"""Write the shipped default model from a SynthTalk run and the held-out evaluation of its weights.

    python -m emotivetalk_core synth train --out RUN
    python scripts/make_default_model.py half RUN/emotivetalk_synthtalk.safetensors --out RUN/half.safetensors
        [--dicte-window 25]   # a run from before the vaid stage recorded Di-CTE's window
    python -m emotivetalk_core synth evaluate --checkpoint RUN/half.safetensors --seed 1 --json > REPORT.json
    python scripts/make_default_model.py ship RUN/half.safetensors --report REPORT.json

The ``fast`` model is the default model's distilled student, shipped the same way:

    python -m emotivetalk_core.train distill --config CONFIG   # init.teacher: the shipped default model
    python scripts/make_default_model.py half RUN/export/distill.safetensors --out STUDENT.safetensors
    python -m emotivetalk_core synth evaluate --checkpoint STUDENT.safetensors --seed 1 --json > REPORT.json
    python scripts/make_default_model.py ship STUDENT.safetensors --report REPORT.json

``half`` stores the run in float16 (half the file; the loaders compute in the dtype they are
asked for). ``ship`` copies the weights unchanged into
``emotivetalk_core/weights/emotivetalk_default.safetensors`` (a student: ``emotivetalk_fast``),
keeping how they were trained (the run's command, seed and plan, which ``synth train`` wrote; a
student's distillation config and teacher digest) and adding the held-out report. It refuses a
report of other weights (its checkpoint digest), of the training world, of fewer than 64 clips,
or with a goal left unmeasured: the shipped figures are those of the shipped weights; and a
student of another teacher than the shipped default model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotivetalk_core.bundles import DEFAULT_MODEL_PATH, SHIPPED_MODELS, file_digest  # noqa: E402
from emotivetalk_core.checkpoints import load_model_file, save_model_file  # noqa: E402

SCRIPT = "scripts/make_default_model.py"
MIN_CLIPS = 64


def _synthtalk_run(model: Path) -> tuple[dict, dict, dict, dict]:
    states, configs, info = load_model_file(model)
    if not info.get("trained") or not info.get("synthtalk"):
        raise SystemExit(f"{model} is not a SynthTalk-trained model (its info has no 'synthtalk' run)")
    return states, configs, info, info["synthtalk"]


def half(model: Path, out: Path, dicte_window: int | None = None) -> Path:
    """The run's weights in float16, its info unchanged. ``dicte_window`` records the window Di-CTE
    trained on in a run from before the vaid stage recorded it (SynthTalk's recipe then: 25)."""
    states, configs, info, _ = _synthtalk_run(model)
    if dicte_window is not None:
        if dicte_window < 2:
            raise SystemExit(f"--dicte-window must be at least 2 frames, got {dicte_window}")
        recorded = configs["dicte"].get("window")
        if recorded not in (None, dicte_window):
            raise SystemExit(f"{model} records Di-CTE's window {recorded}, not {dicte_window}")
        configs = {**configs, "dicte": {**configs["dicte"], "window": dicte_window}}
    halved = {name: ({key: tensor.half() if tensor.is_floating_point() else tensor for key, tensor in state.items()},
                     configs[name]) for name, state in states.items()}
    return save_model_file(_new(out, model), halved, info)


def ship(model: Path, report: dict, out: Path | None = None) -> Path:
    """``model``'s weights unchanged, with the held-out ``report`` of exactly those weights, in
    ``out`` (default: the shipped ``default`` model's file, or ``fast``'s for a distilled student)."""
    states, configs, info, run = _synthtalk_run(model)
    out = out or SHIPPED_MODELS["fast" if info.get("distilled") else "default"]
    settings = report["settings"]
    if settings["checkpoint_sha256"] != file_digest(model)["sha256"]:
        raise SystemExit(f"the report measured {settings['checkpoint']}, not {model}: evaluate the file you ship")
    if settings["seed"] == run["world_seed"]:
        raise SystemExit(f"the report measured world {run['world_seed']}, the one {model} was trained in: evaluate another seed")
    unmeasured = [name for name, entry in report.items() if isinstance(entry, dict) and entry.get("met", False) is None]
    if settings["clips"] < MIN_CLIPS or unmeasured:
        raise SystemExit(f"the report is partial ({settings['clips']} clips, unmeasured: {unmeasured or 'none'}): "
                         f"evaluate at least {MIN_CLIPS} clips with every measure")
    note = (f"EmotiveTalk trained in SynthTalk (32 px procedural faces with eSpeak NG speech) by "
            f"'{run['command']}'; a demonstration model, not for real faces")
    shipped = {**info, "note": note, "config": "synthtalk", "script": SCRIPT, "held_out": report}
    if info.get("distilled"):
        shipped = {**shipped, **_student(info)}
    return save_model_file(_new(out, model), {name: (states[name], configs[name]) for name in states}, shipped)


def _student(info: dict) -> dict:
    """A distilled student's note and training config, once its teacher is the shipped default model."""
    distilled, teacher = info["distilled"], file_digest(DEFAULT_MODEL_PATH)
    if distilled["teacher"]["sha256"] != teacher["sha256"]:
        raise SystemExit(f"this student was distilled from {distilled['teacher']['name']} (sha256 "
                         f"{distilled['teacher']['sha256'][:12]}), not the shipped default model ({teacher['sha256'][:12]})")
    note = (f"the default model distilled (python -m emotivetalk_core.train distill, its distill_config) into "
            f"{distilled['steps']} {distilled['sampler']} steps of one UNet pass from {distilled['teacher_steps']} guided "
            f"steps of four; a demonstration model, not for real faces")
    return {"note": note, "distill_config": info["config"]}


def _new(out: Path, model: Path) -> Path:
    if out.resolve() == model.resolve():
        raise SystemExit(f"--out {out} is the model read: give another file")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    halve = commands.add_parser("half", help="a float16 copy of a SynthTalk run's model file")
    halve.add_argument("model", type=Path)
    halve.add_argument("--out", type=Path, required=True)
    halve.add_argument("--dicte-window", type=int, default=None,
                       help="record Di-CTE's training window in a model from before it was recorded")
    shipping = commands.add_parser("ship", help="the default model: weights of MODEL with its held-out report")
    shipping.add_argument("model", type=Path)
    shipping.add_argument("--report", type=Path, required=True, help="synth evaluate --json of MODEL on a held-out world")
    shipping.add_argument("--out", type=Path, default=None,
                          help="default: the shipped default model's file, or the 'fast' model's for a distilled student")
    args = parser.parse_args()
    if args.command == "half":
        path = half(args.model, args.out, args.dicte_window)
    else:
        path = ship(args.model, json.loads(args.report.read_text()), args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
