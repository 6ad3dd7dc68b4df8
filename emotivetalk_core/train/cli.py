"""Command line: ``python -m emotivetalk_core.train {preprocess,base,encoders,vaid,ethd,export}``.

Training commands run the same under ``accelerate launch`` (one process per device)::

    accelerate launch --config_file emotivetalk_core/train/accelerate/ddp.yaml \\
        -m emotivetalk_core.train ethd --config my_ethd.json

Bad input exits with status 2 and one line on stderr saying what is wrong and what to do; a
traceback only with ``--debug``; anything unexpected exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..command_line import Parser, UsageError, run_reporting_errors
from .config import INIT_KEYS, STAGES, TrainingError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m emotivetalk_core.train",
                     description="Train EmotiveTalk: preprocess videos, train each stage, export the inference file.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    commands.add_parser("preprocess", help="talking-head videos -> training shards (see 'preprocess --help')", add_help=False)
    helps = {"base": "SVD's VAE and image encoder from scratch (for a model with no pretrained SVD base)",
             "encoders": "Lip Encoder, Exp Encoder, Face Processor from the preprocessing targets",
             "vaid": "Audio-lip Projector, Di-CTE with Identity Encoder, Mapping",
             "ethd": "ETHD adapters (optionally the whole UNet) on base SVD",
             "distill": "a few-step, one-pass student of a trained model (init.teacher)"}
    for stage in STAGES:
        command = commands.add_parser(stage, help=helps[stage])
        command.add_argument("--config", required=True, type=Path,
                             help="training config JSON: this stage's, or a file with every stage (see TRAINING.md)")
        command.add_argument("--data", type=Path, help="override data.shards: the folder preprocessing wrote")
        command.add_argument("--out", type=Path, help="override the run folder")
        command.add_argument("--steps", type=int, help="override train.steps (total, counting resumed steps)")
        command.add_argument("--seed", type=int, help="override train.seed")
        command.add_argument("--init", action="append", default=[], metavar="KEY=PATH",
                             help=f"override init.KEY ({', '.join(INIT_KEYS)}); repeatable")
        command.add_argument("--resume", help="a checkpoint folder, or 'latest' for the run's newest checkpoint")
        command.add_argument("--debug", action="store_true", help="show tracebacks")
    export = commands.add_parser("export", help="merge stage exports into one inference file the nodes load")
    export.add_argument("--runs", nargs="+", required=True, help="run folders (or their export/<stage>.safetensors files)")
    export.add_argument("--out", required=True, type=Path, help="the inference .safetensors to write")
    export.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _preprocess(argv: list[str]) -> int:
    try:
        from .preprocess import add_arguments, run
    except ImportError as error:
        raise UsageError(f"preprocessing is not available in this install ({error})") from error
    parser = Parser(prog="python -m emotivetalk_core.train preprocess",
                     description="Talking-head videos -> training shards.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _train(args) -> int:
    from .config import apply_overrides, load_config

    config = load_config(args.config, stage=args.command)
    config = apply_overrides(config, data=args.data, out=args.out, steps=args.steps, seed=args.seed, init=args.init)
    # torch and accelerate load only once the config is known to be good
    from .loop import train

    run = train(config, resume=args.resume)
    logging.getLogger(__name__).info("run folder: %s", run)
    return 0


def _export(args) -> int:
    from .export import merge_exports

    path = merge_exports(args.runs, args.out)
    print(f"wrote {path}")
    return 0


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "preprocess":
        return _preprocess(argv[1:])
    args = build_parser().parse_args(argv)
    return _export(args) if args.command == "export" else _train(args)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad input (one line on stderr), 1 an unexpected failure."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("emotivetalk_core").setLevel(logging.DEBUG if debug else logging.INFO)
    # Bad input: files, values, configs.
    return run_reporting_errors(lambda: _run(argv), (UsageError, TrainingError, ValueError, OSError), debug)
