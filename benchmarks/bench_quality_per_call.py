"""synth_quality_per_call: judged quality of the shipped model against the UNet passes it costs.

    python benchmarks/bench_quality_per_call.py [--checkpoint default] [--seed 1] [--clips 32]
        [--configs euler:25,dpmpp_2m:6,...] [--reference EARLIER.jsonl] [--out quality_per_call.jsonl]
        [--plot docs/quality_per_call.png]
    python benchmarks/bench_quality_per_call.py --plot-only quality_per_call.jsonl --plot docs/quality_per_call.png

A config is ``sampler:steps[:sigma][@reference/lip/expression]``: a sampler of
``GenerationSettings``, its steps, when given ``guidance_sigma_min`` (the guidance ends at that
noise level; later steps run one pass) and the guidance strengths (``@1/1/1``: one pass per step,
how a distilled student samples: run it with ``--checkpoint fast`` and append its lines to the
teacher's). Every other setting is the model's own (guidance 2, 4, 2; a student's 1, 1, 1). Each config generates the same
held-out SynthTalk clips (``synth evaluate``'s world, clip i asks for emotion i mod 5 by label,
its own seed) and the SynthTalk judge reads them. Per config one JSON line: the UNet passes per
ETHD window (counted on the model: one pass = one window's frames through the UNet once), and
lip_sync (pooled, best offset), lip_sync_within_clip, emotion_accuracy, emotion_strength (the
judged strength of the asked emotion), identity_error and grain as ``synth evaluate`` defines
them; beside them the goal against the reference (the run's first config, or ``--reference``'s
first line): the metrics more than 0.02 worse, and whether every metric holds at a quarter of the
reference's passes or fewer. Lines are written as each config finishes, so a long run keeps what
it measured; ``--out`` must be a new file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_CONFIGS = "euler:25,euler:12,euler:6,dpmpp_2m:6,dpmpp_2m:8:2.0,heun:4,dpmpp_2m:4"
METRICS = ("lip_sync", "lip_sync_within_clip", "emotion_accuracy", "emotion_strength", "identity_error", "grain")
LOWER_IS_BETTER = ("identity_error", "grain")
# The goal (issue 14): the reference's judged quality (every metric within 0.02, or better) at a
# quarter of its UNet passes or fewer.
TOLERANCE, PASS_SHARE = 0.02, 0.25


def verdict(result: dict, reference: dict) -> dict:
    """``result``'s goal beside it: the metrics more than TOLERANCE worse than ``reference``'s, and
    whether it keeps them all at PASS_SHARE of the reference's passes or fewer."""
    worse = [name for name in METRICS
             if (result[name] - reference[name]) * (1 if name in LOWER_IS_BETTER else -1) > TOLERANCE]
    passes = PASS_SHARE * reference["unet_passes_per_window"]
    return {"reference": reference["config"], "worse_than_reference": worse,
            "goal": f"every metric within {TOLERANCE} of {reference['config']} or better, at <= {passes:g} UNet passes per window",
            "goal_met": not worse and result["unet_passes_per_window"] <= passes}


def parse_config(text: str) -> dict:
    schedule, _, strengths = text.partition("@")
    parts = schedule.split(":")
    if len(parts) not in (2, 3) or (strengths and len(strengths.split("/")) != 3):
        raise SystemExit(f"--configs: expected sampler:steps[:sigma][@reference/lip/expression], got {text!r}")
    settings = {"sampler": parts[0]}
    if len(parts) == 3:
        settings["guidance_sigma_min"] = float(parts[2])
    if strengths:  # e.g. a distilled student's one pass: @1/1/1
        settings.update(zip(("reference_strength", "lip_strength", "expression_strength"), map(float, strengths.split("/"))))
    return {"name": text, "steps": int(parts[1]), "settings": settings}


def measure(generator, clips, judge, config: dict, seed: int) -> dict:
    from emotivetalk_core.synth import evaluate as ev
    from emotivetalk_core.synth.judge import emotion_strength, judge_frames, judged_emotion

    generator.steps, generator.settings = config["steps"], config["settings"]
    passes = [0]

    def count(module, args, kwargs):  # ETHD is called with keyword arguments, one sample per window pass
        passes[0] += kwargs["sample"].shape[0]

    handle = generator.pipeline.model.ethd.register_forward_pre_hook(count, with_kwargs=True)
    start, windows, rows = time.perf_counter(), 0, []
    try:
        for clip in clips:
            frames = generator(clip.portrait, clip.clip.waveform, ev._single(ev.route_source("label", clip)),
                               ev._generation_seed(seed, clip))
            windows += len(generator.spans(len(frames)))
            judged = judge_frames(judge, frames)
            rows.append({"mouth": judged["mouth_open"], "right": judged_emotion(judged)[0] == clip.requested,
                         "strength": emotion_strength(judged, clip.requested),
                         "identity": float(ev.identity_error(frames, clip.portrait).mean()),
                         "grain": ev.grain(frames, clip.clip.frames.rgb)["grain"]})
    finally:
        handle.remove()
    sync = ev.lip_sync([row["mouth"] for row in rows], [clip.clip.performance.params["mouth_open"] for clip in clips])
    return {"config": config["name"], "unet_passes_per_window": passes[0] / windows, "lip_sync": sync["pooled"],
            "lip_sync_within_clip": sync["within_clip"], "emotion_accuracy": float(np.mean([r["right"] for r in rows])),
            "emotion_strength": float(np.mean([r["strength"] for r in rows])),
            "identity_error": float(np.mean([r["identity"] for r in rows])),
            "grain": float(np.mean([r["grain"] for r in rows if r["grain"] is not None])),
            "clips": len(clips), "seconds": round(time.perf_counter() - start, 1)}


def plot(results: list[dict], path: Path) -> None:
    """One panel per metric: UNet passes per window (x) against the metric (y), a dot per config."""
    from PIL import Image, ImageDraw

    panel_w, panel_h, margin = 360, 240, 48
    image = Image.new("RGB", (3 * panel_w, 2 * panel_h), "white")
    draw = ImageDraw.Draw(image)
    xs = [r["unet_passes_per_window"] for r in results]
    x_lo, x_hi = 0.0, max(xs) * 1.05
    for index, metric in enumerate(METRICS):
        left, top = (index % 3) * panel_w, (index // 3) * panel_h
        ys = [r[metric] for r in results]
        y_lo, y_hi = min(ys), max(ys)
        pad = max((y_hi - y_lo) * 0.15, 0.01)
        y_lo, y_hi = y_lo - pad, y_hi + pad
        box = (left + margin, top + 24, left + panel_w - 12, top + panel_h - margin)
        draw.rectangle(box, outline="black")
        draw.text((left + margin, top + 6), metric, fill="black")
        draw.text((box[0], box[3] + 6), f"{x_lo:g}", fill="black")
        draw.text((box[2] - 30, box[3] + 6), f"{x_hi:.0f}", fill="black")
        draw.text((box[0] + 60, box[3] + 22), "UNet passes per window", fill="black")
        draw.text((left + 4, box[1]), f"{y_hi:.3f}", fill="black")
        draw.text((left + 4, box[3] - 10), f"{y_lo:.3f}", fill="black")

        def at(x: float, y: float) -> tuple[float, float]:
            return (box[0] + (x - x_lo) / (x_hi - x_lo) * (box[2] - box[0]),
                    box[3] - (y - y_lo) / (y_hi - y_lo) * (box[3] - box[1]))

        baseline = results[0][metric]  # the first config is the reference (the library's default)
        for band in (baseline - 0.02, baseline + 0.02):
            if y_lo < band < y_hi:
                draw.line([at(x_lo, band), at(x_hi, band)], fill=(200, 200, 200))
        for result in results:
            x, y = at(result["unet_passes_per_window"], result[metric])
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill="black" if result is results[0] else (30, 90, 200))
            draw.text((x + 5, y - 6), result["config"], fill=(80, 80, 80))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--seed", type=int, default=1, help="held-out world (not the training world)")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated sampler:steps[:sigma][@ref/lip/exp]; the first is the reference")
    parser.add_argument("--reference", type=Path, help="an earlier run whose first line is the reference (e.g. the teacher's, "
                                                       "for a student measured alone); default: this run's first config")
    parser.add_argument("--out", type=Path, default=Path("quality_per_call.jsonl"), help="JSON lines, one per config (a new file)")
    parser.add_argument("--plot", type=Path, help="write the curves as a PNG")
    parser.add_argument("--plot-only", type=Path, help="only plot an earlier run's JSON lines")
    args = parser.parse_args()
    if args.plot_only:
        plot([json.loads(line) for line in args.plot_only.read_text().splitlines()], args.plot or Path("quality_per_call.png"))
        return
    configs = [parse_config(text) for text in args.configs.split(",")]
    if args.out.exists():
        raise SystemExit(f"--out {args.out} exists: give a new file (a run's lines are never written over)")
    reference = json.loads(args.reference.read_text().splitlines()[0]) if args.reference else None

    from emotivetalk_core.synth import evaluate as ev
    from emotivetalk_core.synth.judge import load_judge

    if args.seed == ev.trained_world_seed(args.checkpoint):
        raise SystemExit(f"--seed {args.seed} is the world the model trained in; use a held-out seed")
    generator = ev.Generator(args.checkpoint, configs[0]["steps"])
    clips = ev.held_out_clips(args.seed, args.clips, generator.size)
    judge = load_judge()
    # Warm-up, so the first config's seconds do not carry one-off costs (numba compiles librosa's kernels).
    generator.steps = 1
    generator(clips[0].portrait, clips[0].clip.waveform, ev._single(ev.route_source("label", clips[0])), 0)
    results = []
    with args.out.open("x") as out:
        for config in configs:
            result = measure(generator, clips, judge, config, args.seed)
            reference = reference or result
            results.append({**result, **verdict(result, reference)})
            out.write(json.dumps(results[-1]) + "\n")
            out.flush()
            print(json.dumps(results[-1]), flush=True)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
