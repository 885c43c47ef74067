"""``medxai methods``: every registered method with its family, paper and parameters."""

from __future__ import annotations

import argparse
import json

from ..methods import METHODS
from ..params import param_specs
from . import common
from .common import EXIT_OK

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("methods", help="list the attribution methods and their parameters")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    common.declare_io(parser, (), [])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    entries = []
    for info in METHODS:
        specs = param_specs(info.params)
        entries.append({"name": info.name, "title": info.title, "family": info.family, "tasks": list(info.tasks),
                        "summary": info.summary, "reference": info.reference,
                        "parameters": [{"name": s.name, "type": s.type.__name__, "default": s.default,
                                        "range": s.range, "choices": s.choices, "unit": s.unit, "help": s.help}
                                       for s in specs]})
        if not args.json:
            print(f"{info.name}  [{info.family}; {', '.join(info.tasks)}]  {info.title}")
            print(f"    {info.summary}")
            print(f"    Reference: {info.reference}")
            for spec in specs:
                print(f"    --param {spec.describe()}")
            print()
    if args.json:
        print(json.dumps(entries, indent=2))
    return EXIT_OK
