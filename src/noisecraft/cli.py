"""The ``noisecraft`` command: turns arguments into library calls — nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_explain(sub: argparse._SubParsersAction) -> None:
    from .data.toy2d import TOY_MIXTURES
    from .samplers import SAMPLERS

    p = sub.add_parser("explain", help="draw the forward process, reverse sampling and score field")
    p.add_argument("--out", default="outputs/explain", help="folder for the PNGs (default: %(default)s)")
    p.add_argument("--mixture", default="ring", choices=TOY_MIXTURES, help="2-D data (default: %(default)s)")
    p.add_argument("--sampler", default="heun", choices=sorted(SAMPLERS), help="default: %(default)s")
    p.add_argument("--steps", type=_positive_int, default=18, help="sampler steps (default: %(default)s)")
    p.add_argument("--points", type=_positive_int, default=2000, help="samples drawn (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(run=_run_explain)


def _run_explain(args: argparse.Namespace) -> None:
    from .explain import ExplainConfig, explain_toy2d

    config = ExplainConfig(args.mixture, args.sampler, args.steps, num_points=args.points, seed=args.seed)
    for path in explain_toy2d(args.out, config):
        print(path)


def _add_samplers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("samplers", help="list the sampler names")
    p.set_defaults(run=lambda args: print("\n".join(sorted(__import__("noisecraft").SAMPLERS))))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="noisecraft", description="Text-to-image diffusion.")
    parser.add_argument("--version", action="version", version=f"noisecraft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_explain(sub)
    _add_samplers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn expected failures into one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"noisecraft {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
