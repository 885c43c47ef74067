"""``medxai demo``: the main job on the built-in default data and models."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="explain a built-in phantom with the built-in demo models")
    parser.add_argument("--out", default="medxai-out", help="output folder (default ./medxai-out)")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(Path(args.out), quiet=args.quiet)
