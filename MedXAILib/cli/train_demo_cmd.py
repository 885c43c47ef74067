"""``medxai train-demo``: train the demo models (the same as ``python -m MedXAILib.demo.training``)."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    from ..demo.training.cli import add_arguments

    parser = sub.add_parser("train-demo", help="train the demo segmenter and lesion classifiers on phantoms (CPU, "
                                               "minutes, deterministic)")
    add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..demo.training.cli import run as train

    return train(args)
