"""Command line: ``python -m emotivetalk_core {generate,demo,synth}``.

Bad input exits with status 2 and one line on stderr saying what is wrong and what to do, before
any model loads; a traceback only with ``--debug``. Ctrl-C exits with 130 and SIGTERM with 143,
one line each; an unfinished video is never left behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from .command_line import Parser, UsageError, run_reporting_errors, terminate_as_interrupt

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_PORTRAIT = ASSETS / "portrait.png"
DEMO_SPEECH = ASSETS / "speech.wav"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m emotivetalk_core", description="EmotiveTalk: talking-head video from one portrait and speech.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    generate = commands.add_parser("generate", help="portrait + speech (+ emotion) -> mp4")
    generate.add_argument("--image", required=True, type=Path, help="portrait image (a face-centred square works best)")
    generate.add_argument("--audio", required=True, type=Path, help="speech: wav, flac, mp3, ogg, m4a or a video's audio track")
    generate.add_argument("--out", required=True, type=Path, help="output .mp4 (H.264 + AAC)")
    _add_emotion_arguments(generate)
    _add_common_arguments(generate)

    demo = commands.add_parser("demo", help="the bundled SynthTalk portrait and speech on the default model")
    demo.add_argument("--out", type=Path, default=Path("emotivetalk_demo.mp4"), help="output .mp4 (default: %(default)s)")
    demo.add_argument("--side-by-side", type=Path, default=None,
                      help="also this mp4: the portrait, then one column per emotion (default: OUT_emotions.mp4)")
    _add_emotion_arguments(demo, default_label="happy")
    _add_common_arguments(demo, steps_help="denoising steps (default: 12, or a distilled model's own)")

    from .synth.cli import add_commands

    add_commands(commands)
    return parser


def _add_emotion_arguments(parser, default_label: str | None = None) -> None:
    from .emotion import DEFAULT_INTENSITY

    source = parser.add_mutually_exclusive_group()
    source.add_argument("--emotion", default=default_label, help="an emotion label, e.g. happy, angry, sad, surprised, neutral")
    source.add_argument("--emotion-text", help="a text prompt, e.g. 'speak seriously'")
    source.add_argument("--emotion-image", type=Path, help="an image whose facial expression to use")
    source.add_argument("--emotion-video", type=Path, help="a video whose expressions to follow frame by frame")
    source.add_argument("--timeline", help="keyframes '0:neutral,3.5:happy@0.8~0.5,8:sad' (time:label@intensity~blend) or a JSON file")
    parser.add_argument("--intensity", type=float, default=DEFAULT_INTENSITY, help="0 = the portrait's own expression, 1 = as requested, >1 exaggerated")
    parser.add_argument("--neutralise", action="store_true", help="start from a neutral face instead of the portrait's expression")


def _add_common_arguments(parser, steps_help: str | None = None) -> None:
    """Generation flags; their defaults are GenerationSettings' (None: the model's own, resolved once it loads)."""
    from .settings import GUIDED_SAMPLING, SAMPLERS, GenerationSettings  # the one owner of every generation setting

    defaults = GenerationSettings()
    guided = {name: f"{value:g}" for name, value in GUIDED_SAMPLING.items()}
    own = "default: the model's, {}; a distilled model's own (1 for the 'fast' model)"
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=None,
                        help=steps_help or f"denoising steps (default: the model's, {guided['steps']}; a distilled model's own, "
                                           f"6 for the 'fast' model)")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default=defaults.sampler)
    parser.add_argument("--fps", type=float, default=defaults.fps)
    parser.add_argument("--width", type=int, default=defaults.width,
                        help="a multiple of the model's step (64 for SVD, 4 for the default model); 0 = its native size (default)")
    parser.add_argument("--height", type=int, default=defaults.height,
                        help="a multiple of the model's step (64 for SVD, 4 for the default model); 0 = its native size (default)")
    parser.add_argument("--motion", type=int, default=None, help="SVD motion bucket (default: the model's)")
    parser.add_argument("--noise-aug", type=float, default=None, help="noise augmentation of the portrait (default: the model's)")
    parser.add_argument("--reference-strength", type=float, default=None,
                        help=f"guidance toward the portrait ({own.format(guided['reference_strength'])})")
    parser.add_argument("--lip-strength", type=float, default=None,
                        help=f"guidance toward the lip stream ({own.format(guided['lip_strength'])})")
    parser.add_argument("--expression-strength", type=float, default=None,
                        help=f"guidance toward the driven expression ({own.format(guided['expression_strength'])})")
    parser.add_argument("--guidance-sigma-min", type=float, default=defaults.guidance_sigma_min,
                        help="noise level below which steps run one pass with every condition instead of the guidance "
                             "(fewer UNet passes; default: %(default)s, guide every step)")
    parser.add_argument("--av-offset", type=int, default=defaults.av_offset, help="frames; > 0 moves the mouth later than the audio")
    parser.add_argument("--lip-context", type=int, default=None, help="lip frames either side each frame sees (default: the model's)")
    parser.add_argument("--window", type=int, default=None, help="frames per ETHD window (default: the model's clip length)")
    parser.add_argument("--overlap", type=int, default=None, help="window overlap in frames (default: 25%% of the window)")
    parser.add_argument("--checkpoint", default="default", help="EmotiveTalk model file, or a shipped model: 'default' or 'fast' (its distilled student, one UNet pass per step)")
    parser.add_argument("--base", type=Path, default=None, help="base SVD (svd_xt.safetensors or a diffusers folder) for an adapter-only checkpoint")
    parser.add_argument("--speech-encoder", type=Path, default=None, help="wav2vec2 file or folder, if the model uses one")
    parser.add_argument("--text-encoder", type=Path, default=None,
                        help="transformers text-model folder for --emotion-text, if the model was trained with one")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="the networks' precision (default: %(default)s; bfloat16 halves the memory on GPUs and CPUs, "
                             "float16 is for GPUs without bfloat16)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _timeline(args):
    from .emotion import EmotionSource, parse_timeline, single

    if args.timeline is not None:
        timeline = parse_timeline(args.timeline)
    elif args.emotion_text:
        timeline = single(EmotionSource("text", args.emotion_text), args.intensity)
    elif args.emotion_image:
        timeline = single(EmotionSource("image", str(_existing(args.emotion_image, "--emotion-image"))), args.intensity)
    elif args.emotion_video:
        timeline = single(EmotionSource("video", str(_existing(args.emotion_video, "--emotion-video"))), args.intensity)
    else:
        timeline = single(EmotionSource("label", args.emotion or "neutral"), args.intensity)
    if args.neutralise:
        timeline.neutralise_portrait = True
    return timeline


def _check_text_encoder(args, timeline) -> None:
    """--text-encoder is a transformers folder, and given when the model needs one for a text emotion."""
    from .bundles import resolve_model_file
    from .checkpoints import read_metadata

    if args.text_encoder is not None and not (args.text_encoder / "config.json").is_file():
        raise UsageError(f"--text-encoder {args.text_encoder}: not a transformers model folder (no config.json)")
    record = read_metadata(resolve_model_file(args.checkpoint))[0].get("mapping", {}).get("text_encoder")
    if record and args.text_encoder is None and any(k.source.kind == "text" for k in timeline.keyframes):
        raise UsageError(f"--emotion-text needs --text-encoder: this model reads emotion text with the pretrained "
                         f"text encoder {record['name']} it was trained with (give its transformers folder)")


def _existing(path: Path, flag: str) -> Path:
    if not path.is_file():
        raise UsageError(f"{flag}: file not found: {path}")
    return path


def _settings(args):
    from .settings import GenerationSettings, SettingError

    settings = GenerationSettings(
        fps=args.fps, width=args.width, height=args.height, steps=args.steps, sampler=args.sampler, seed=args.seed,
        motion=args.motion, noise_aug=args.noise_aug, reference_strength=args.reference_strength,
        lip_strength=args.lip_strength, expression_strength=args.expression_strength,
        guidance_sigma_min=args.guidance_sigma_min, av_offset=args.av_offset,
        lip_context=args.lip_context, window=args.window, overlap=args.overlap,
    )
    try:
        settings.validate()
    except SettingError as error:  # the library names the setting; a user typed its flag
        raise UsageError(f"--{error.setting.replace('_', '-')}: {error}") from error
    return settings


def _checked_out(out: Path, inputs: dict[str, Path | None], flag: str = "--out") -> Path:
    """``out`` if a video can be written there: refused before any work when it is empty, not an
    .mp4, a folder, in a missing or read-only folder, or one of the inputs (it would be replaced)."""
    if not str(out).strip() or out.name in ("", ".", ".."):
        raise UsageError(f"{flag}: give a file name ending in .mp4")
    for input_flag, path in inputs.items():
        if path is not None and path.exists() and out.exists() and out.samefile(path):
            raise UsageError(f"{flag} {out} is the {input_flag} file {path}: writing the video would destroy it; "
                             f"give another output name")
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"{flag} {out}: the video is written as H.264 + AAC in an mp4 container; name it .mp4")
    if out.is_dir():
        raise UsageError(f"{flag} {out} is a folder: give a file name ending in .mp4")
    if not out.parent.is_dir():
        raise UsageError(f"{flag}: folder not found: {out.parent}")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"{flag}: cannot write in {out.parent} (no permission): choose another folder")
    return out


def _checked_device(name: str) -> None:
    from .pipeline import check_device

    try:
        check_device(name)
    except ValueError as error:
        raise UsageError(f"--device {error}") from None


def _run(args) -> Path:
    if args.command == "synth":
        from .synth.cli import run

        return run(args)
    import torch

    from .media.image import load_image
    from .pipeline import EmotiveTalkPipeline, load_prepared_audio
    from .settings import preview_steps

    image = DEMO_PORTRAIT if args.command == "demo" else _existing(args.image, "--image")
    audio = DEMO_SPEECH if args.command == "demo" else _existing(args.audio, "--audio")
    settings, timeline = _settings(args), _timeline(args)
    inputs = {"--image": image, "--audio": audio, "--emotion-image": args.emotion_image,
              "--emotion-video": args.emotion_video, "--timeline": _timeline_file(args.timeline)}
    _checked_out(args.out, inputs)
    side_by_side_out = _side_by_side_path(args, inputs) if args.command == "demo" else None
    _checked_device(args.device)
    _check_text_encoder(args, timeline)
    # Read the inputs before loading models, so a bad file fails in a second, not after a load.
    portrait, audio = load_image(image), load_prepared_audio(audio, settings.fps)
    _check_keyframes_within(timeline, audio.num_frames / settings.fps)
    pipeline = EmotiveTalkPipeline.from_files(args.checkpoint, base=args.base, speech_source=args.speech_encoder,
                                              device=args.device, dtype=getattr(torch, args.dtype),
                                              text_encoder=args.text_encoder)
    if args.command == "demo" and settings.steps is None:
        settings = replace(settings, steps=preview_steps(pipeline.model.info))
    progress = None if args.quiet else _progress_bar()
    result = pipeline.generate_to_file(portrait, audio, args.out, settings, timeline, progress=progress)
    print(f"wrote {result.path} ({result.num_frames} frames at {settings.fps:g} fps, {result.seconds:.2f} s)")
    if args.command == "demo":
        from .demo import side_by_side

        made = side_by_side(pipeline, portrait, audio, settings, side_by_side_out, progress=None if args.quiet else _progress_bar())
        print(f"wrote {made['path']} (the portrait, then {', '.join(made['labels'])})")
    if not pipeline.trained:
        print("note: the model is UNTRAINED (random weights): the video shows noise, not a talking head", file=sys.stderr)
    return result.path


def _side_by_side_path(args, inputs: dict[str, Path | None]) -> Path:
    """The demo's second video: ``--side-by-side``, or OUT_emotions.mp4 beside ``--out``, which
    the user never named and so must not already exist (it would be written over)."""
    path = args.side_by_side or args.out.with_name(args.out.stem + "_emotions.mp4")
    if path.resolve() == args.out.resolve():
        raise UsageError(f"--side-by-side {path} is --out too: give two files")
    if args.side_by_side is None and path.exists():
        raise UsageError(f"{path} exists (the demo's side-by-side video goes there): move it or name another "
                         f"with --side-by-side")
    return _checked_out(path, inputs, "--side-by-side")


def _timeline_file(spec: str | None) -> Path | None:
    """The JSON file a ``--timeline`` names, if it names one (an input the output must not replace)."""
    return Path(spec.strip()) if spec and spec.strip().lower().endswith(".json") else None


def _check_keyframes_within(timeline, seconds: float) -> None:
    late = [keyframe.time for keyframe in timeline.keyframes if keyframe.time >= seconds]
    if late:
        raise UsageError(f"--timeline: keyframe at {late[0]:g} s starts after the speech ends ({seconds:.2f} s) and "
                         f"would never show; move it before {seconds:.2f} s or remove it")


def _progress_bar():
    """``progress(done, total)`` drawing one tqdm bar over windows x steps."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="sampling (windows x steps)", unit="call")
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    return update


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad input (one line on stderr), 1 an unexpected failure."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def run() -> int:
        _run(build_parser().parse_args(argv))
        return 0

    # Bad input: files, values, model files.
    with terminate_as_interrupt():
        return run_reporting_errors(run, (UsageError, ValueError, OSError), debug)
