"""``medxai train-demo``: train the demo models (the same as ``python -m MedXAILib.training``)."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    from ..training.cli import add_arguments

    parser = sub.add_parser("train-demo", help="train the demo segmenter and lesion classifiers on phantoms (CPU, "
                                               "minutes, deterministic)")
    add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..training.cli import run as train

    return train(args)
