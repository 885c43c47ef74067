"""``medxai demo``: the main job on the built-in default data and models."""

from __future__ import annotations

import argparse

from . import common

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="explain a built-in phantom with the built-in demo models")
    parser.add_argument("--out", default="medxai-out", help="output folder (default ./medxai-out)")
    parser.add_argument("--quiet", action="store_true")
    common.declare_io(parser, (), [common.OutputOption("out", folder=True)])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import open_hint, run_demo

    code = run_demo(common.staged(args, args.out), quiet=args.quiet)
    if code == common.EXIT_OK:
        args.outputs.commit()
        if not args.quiet:
            print(open_hint(args.out), flush=True)
    return code
