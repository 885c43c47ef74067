"""The ``train-demo`` command line: ``python -m MedXAILib.demo.training`` and ``medxai train-demo``.

:func:`add_arguments` adds the options to any argparse parser (the ``medxai`` sub-command uses it)
and :func:`run` executes parsed arguments; both import nothing heavy, so the ``medxai`` parser stays
fast to build.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``train-demo`` (shared by ``python -m MedXAILib.demo.training`` and ``medxai``)."""
    parser.add_argument("--out", default=None, help="output folder (default: Resources/Models of the source tree)")
    parser.add_argument("--seed", type=int, default=0, help="0-9: training phantoms and initial weights (default 0)")
    parser.add_argument("--models", default=None, metavar="NAMES",
                        help="comma-separated subset of phantom_segmenter, lesion_classifier_ct, "
                             "lesion_classifier_petct (default: all)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply training steps and phantoms (e.g. 0.05 for a smoke test; default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def run(args: argparse.Namespace) -> int:
    """Train with parsed arguments; returns the exit code (2 on bad arguments)."""
    from .demo_models import default_model_dir, train_all

    log = (lambda *_: None) if args.quiet else (lambda text: print(text, flush=True))
    out = Path(args.out) if args.out else default_model_dir()
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if not args.scale > 0:
        sys.stderr.write("train-demo: --scale must be > 0\n")
        return 2
    started = time.perf_counter()
    try:
        train_all(out, seed=args.seed, models=models, scale=args.scale, log=log)
    except ValueError as exc:
        sys.stderr.write(f"train-demo: error: {exc}\n")
        return 2
    log(f"Done in {time.perf_counter() - started:.0f} s; specs, weights, cards and metrics are in {out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m MedXAILib.demo.training",
        description="Train the demo models (a phantom segmenter and two lesion classifiers) on synthetic "
                    "phantoms, deterministically, on CPU in minutes."))
    return run(parser.parse_args(argv))
