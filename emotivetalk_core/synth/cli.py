"""``python -m emotivetalk_core synth {portrait,judge,evaluate,train}``: SynthTalk from the command line.

Registered on the main command line (``emotivetalk_core/cli.py``), so errors are reported the
same way: bad input exits with status 2 and one line saying what to do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_commands(commands) -> None:
    """Add ``synth`` and its subcommands to the main parser's subcommands."""
    synth = commands.add_parser("synth", help="SynthTalk: the procedural talking-face world, its judge, and the demo model's training")
    sub = synth.add_subparsers(dest="synth_command", required=True, parser_class=type(synth))

    portrait = sub.add_parser("portrait", help="render one SynthTalk portrait (what the demo model animates)")
    portrait.add_argument("--seed", type=int, required=True, help="the person's seed")
    portrait.add_argument("--emotion", default="neutral", help="neutral, happy, sad, angry or surprised (default: neutral)")
    portrait.add_argument("--intensity", type=float, default=1.0, help="0..2 (default: 1)")
    portrait.add_argument("--size", type=int, default=None, help="pixels (default: the world's 32, the demo model's native size)")
    portrait.add_argument("--out", type=Path, required=True, help="PNG to write (never over an existing file)")

    judge = sub.add_parser("judge", help="read a SynthTalk video's mouth, brows, eyes and emotion, frame by frame")
    judge.add_argument("video", type=Path, help="an mp4 of a SynthTalk face")
    judge.add_argument("--json", action="store_true", help="print one JSON object (per-frame values and the judged emotion)")

    train = sub.add_parser("train", help="train the whole EmotiveTalk stack in SynthTalk (the shipped demo model)")
    train.add_argument("--out", type=Path, required=True, help="a new run folder")
    train.add_argument("--minutes", type=float, default=None,
                       help="time budget on 2 CPU cores (default: 86, the shipped model's run; 5 is a smoke run)")
    train.add_argument("--seed", type=int, default=0, help="the run's seed (and its training world's)")
    train.add_argument("--workers", type=int, default=2, help="processes that render the world (default: 2)")

    evaluate = sub.add_parser("evaluate", help="generate held-out SynthTalk clips and measure lips, emotion, identity, seams, drift, grain")
    evaluate.add_argument("--checkpoint", default="default", help="model file, or a shipped model: 'default' or 'fast'")
    evaluate.add_argument("--seed", type=int, required=True, help="the held-out world's seed (not the training seed)")
    evaluate.add_argument("--clips", type=int, default=64, help="held-out clips, each by one emotion route in turn (default: 64)")
    evaluate.add_argument("--subset", type=int, default=8, help="clips that also measure intensity and lip strength 0 (default: 8)")
    evaluate.add_argument("--steps", type=int, default=None, help="ETHD denoising steps (default: 12, the demo's, or a distilled model's own)")
    evaluate.add_argument("--take-seconds", type=float, default=60.0, help="length of the single take that measures drift (default: 60)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    _debug_flag((portrait, judge, train, evaluate))


def _debug_flag(parsers) -> None:
    for parser in parsers:
        parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args) -> int:
    return {"portrait": _portrait, "judge": _judge, "train": _train, "evaluate": _evaluate}[args.synth_command](args)


def _portrait(args) -> int:
    from PIL import Image

    from . import world
    from .render import render

    if args.out.exists():
        raise ValueError(f"--out {args.out} exists: give a new file name (nothing is written over)")
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: a portrait is written as PNG; name it .png")
    size = args.size or world.SIZE
    if not 32 <= size <= 1024:
        raise ValueError(f"--size must be between 32 and 1024 pixels, got {size}")
    who = world.identity(args.seed)
    frame = render(who, world.still(who, world.Emotion(args.emotion, args.intensity)).params, size).rgb[0]
    Image.fromarray(frame).save(args.out)
    print(f"wrote {args.out} ({size}x{size}, person {args.seed}, {args.emotion} at {args.intensity:g})")
    return 0


def _judge(args) -> int:
    from .judge import judge_video, judged_emotion

    if not args.video.is_file():
        raise ValueError(f"video not found: {args.video}")
    params = judge_video(args.video)
    label, strength = judged_emotion(params)
    summary = {"video": str(args.video), "frames": len(params["mouth_open"]), "emotion": label, "strength": strength,
               "mean": {name: float(values.mean()) for name, values in params.items()}}
    if args.json:
        print(json.dumps({**summary, "per_frame": {name: [round(float(v), 4) for v in values] for name, values in params.items()}}))
    else:
        print(f"{summary['frames']} frames; judged emotion: {label} (strength {strength:.2f}); "
              + ", ".join(f"{name} {value:+.2f}" for name, value in summary["mean"].items()))
    return 0


def _train(args) -> int:
    import shlex

    from .training import FULL_MINUTES, train

    minutes = FULL_MINUTES if args.minutes is None else args.minutes
    command = shlex.join(["python", "-m", "emotivetalk_core", "synth", "train", "--out", str(args.out),
                          "--minutes", f"{minutes:g}", "--seed", str(args.seed)])
    path = train(args.out, minutes=minutes, seed=args.seed, workers=args.workers, command=command)
    print(f"wrote {path}")
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate, format_report

    report = evaluate(args.checkpoint, seed=args.seed, clips=args.clips, steps=args.steps, take_seconds=args.take_seconds,
                      subset=args.subset, progress=_progress("synth evaluate"))
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _progress(what: str):
    """Generations done so far, on stderr (stdout holds the report)."""
    def report(done: int, total: int) -> None:
        print(f"[{what}] {done}/{total} generations", file=sys.stderr, flush=True)

    return report
