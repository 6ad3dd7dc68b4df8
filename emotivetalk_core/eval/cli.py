"""Command line: ``python -m emotivetalk_core.eval --generated DIR --truth DIR --inception F ...``.

Computes every metric whose network file is given: ``--inception`` FID, ``--i3d`` FVD,
``--syncnet`` Sync-C and Sync-D (on the generated videos and their own audio; no ground truth
needed), ``--expression`` E-FID. Every argument, weight file header and video is checked before
any network is built; bad input exits with status 2 and one line on stderr naming the culprit, a
traceback only with ``--debug``. docs/EVALUATION.md describes the metrics and the weight files.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import math
import sys
from pathlib import Path

from ..command_line import Parser, UsageError, run_reporting_errors

# flag -> (network kind, the metrics it gives)
NETWORK_FLAGS = {
    "--inception": ("inception", "FID"),
    "--i3d": ("i3d", "FVD"),
    "--syncnet": ("syncnet", "Sync-C/Sync-D"),
    "--expression": ("expression", "E-FID"),
}
_NEEDS_TRUTH = ("inception", "i3d", "expression")
# JSON key -> (label, the samples it counts)
_ROWS = {"fid": ("FID", "frames"), "fvd": ("FVD", "clips"), "e_fid": ("E-FID", "frames"),
         "sync_c": ("Sync-C", None), "sync_d": ("Sync-D", None)}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m emotivetalk_core.eval",
                    description="FID, FVD, Sync-C/Sync-D and E-FID of generated talking-head videos against the "
                                "ground truth, with the standard networks read from local safetensors files "
                                "(docs/EVALUATION.md).")
    parser.add_argument("--generated", required=True, type=Path, help="a generated video, or a folder of them")
    parser.add_argument("--truth", type=Path,
                        help="the ground-truth video, or a folder of them paired by file name "
                             "(needed for FID, FVD and E-FID)")
    for flag, (_, metric) in NETWORK_FLAGS.items():
        parser.add_argument(flag, type=Path, metavar="FILE.safetensors", help=f"the network for {metric}")
    parser.add_argument("--fps", type=float, default=25.0,
                        help="frame rate both sides are resampled to for FID, FVD and E-FID (default: %(default)g); "
                             "Sync always reads 25 fps, SyncNet's rate")
    parser.add_argument("--frame-step", type=int, default=1,
                        help="FID and E-FID use every k-th frame of each video (default: %(default)s, every frame)")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per network call (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _checked_arguments(args) -> dict[str, tuple[str, Path]]:
    """``{kind: (flag, path)}`` of the networks given, after the checks that need no file."""
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise UsageError(f"--fps must be a positive number, got {args.fps:g}")
    if args.frame_step < 1:
        raise UsageError(f"--frame-step must be at least 1, got {args.frame_step}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if importlib.util.find_spec("scipy") is None:
        raise UsageError("the metrics need SciPy (the matrix square root, the MFCC's DCT): pip install scipy")
    given = {kind: (flag, getattr(args, flag[2:])) for flag, (kind, _) in NETWORK_FLAGS.items()
             if getattr(args, flag[2:]) is not None}
    if not given:
        choices = ", ".join(f"{flag} ({metric})" for flag, (_, metric) in NETWORK_FLAGS.items())
        raise UsageError(f"give at least one network file: {choices}; docs/EVALUATION.md says how to make them")
    if args.truth is None and any(kind in given for kind in _NEEDS_TRUTH):
        needing = ", ".join(flag for kind, (flag, _) in given.items() if kind in _NEEDS_TRUTH)
        raise UsageError(f"--truth is required with {needing}: those metrics compare the generated videos with "
                         "the ground truth (only --syncnet works without it)")
    return given


def _checked_device(name: str) -> str:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available; use --device cpu")
    return name


def _load_networks(given: dict[str, tuple[str, Path]], widths: dict[str, float], device: str) -> dict:
    from .weights import load_network

    networks = {}
    for kind, (flag, path) in given.items():
        module = importlib.import_module(f"{__package__}.{kind}")
        networks[kind] = load_network(module.build(widths[kind]), path, flag, device)
    return networks


def _run(argv: list[str]) -> int:
    from .videos import check_readable, pair_videos
    from .weights import check_weight_file

    args = build_parser().parse_args(argv)
    given = _checked_arguments(args)
    widths = {kind: check_weight_file(path, kind, flag) for kind, (flag, path) in given.items()}
    truth = args.truth if any(kind in given for kind in _NEEDS_TRUTH) else None
    pairs = pair_videos(args.generated, truth)
    check_readable(pairs, need_audio="syncnet" in given)
    device = _checked_device(args.device)
    networks = _load_networks(given, widths, device)

    from .evaluate import evaluate

    results = evaluate(pairs, networks, fps=args.fps, frame_step=args.frame_step, batch_size=args.batch_size,
                       device=device, progress=not args.quiet)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0


def format_table(results: dict) -> str:
    """The metrics as a small table, with the samples each Frechet distance was computed from."""
    lines = [f"{results['videos']} video(s)", f"{'metric':<8} {'value':>10}  samples (generated / truth)"]
    for key, (label, unit) in _ROWS.items():
        if key not in results:
            continue
        samples = results["samples"].get(key)
        detail = f"{samples[0]} / {samples[1]} {unit}" if samples else "mean over the generated videos"
        lines.append(f"{label:<8} {results[key]:>10.4f}  {detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad input (one line on stderr), 1 an unexpected failure."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_reporting_errors(lambda: _run(argv), (UsageError, ValueError, OSError), debug)
