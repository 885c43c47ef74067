"""``medxai train-demo``: train the demo models (the same as ``python -m MedXAILib.demo.training``)."""

from __future__ import annotations

import argparse

from . import common

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    from ..demo.training.cli import add_arguments

    parser = sub.add_parser("train-demo", help="train the demo segmenter and lesion classifiers on phantoms (CPU, "
                                               "minutes, deterministic)")
    add_arguments(parser)
    common.declare_io(parser, (), [common.OutputOption("out", folder=True)])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..demo.training.cli import run as train
    from ..demo.training.demo_models import default_model_dir

    if args.out is None:  # the default folder is guarded and staged like a given one
        args.out = str(default_model_dir())
        args.outputs = common.guard_outputs(args)
    with args.outputs:
        args.out = str(common.staged(args, args.out))
        code = train(args)
        if code == common.EXIT_OK:
            args.outputs.commit()
        return code
