"""``medxai explain``: compute an attribution volume and write it with the input's geometry."""

from __future__ import annotations

import argparse

from ..methods import METHODS
from ..params import make_params
from . import common

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("explain", help="compute an attribution volume", description="Compute an attribution "
                            "volume on the input grid and write it with the input's geometry and the provenance.")
    common.add_input_arguments(parser)
    parser.add_argument("--method", default="integrated_gradients", help="method name (see 'medxai methods')")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="method parameter; repeatable")
    common.add_target_arguments(parser)
    common.add_run_arguments(parser)
    parser.add_argument("--out", required=True, help=f"attribution file ({', '.join(common.OUTPUT_SUFFIXES)})")
    parser.add_argument("--json", metavar="SUMMARY", help="also write a JSON summary (provenance, prediction, stats)")
    common.declare_io(parser, (*common.MODEL_INPUTS, "param"), [common.OutputOption("out", common.OUTPUT_SUFFIXES),
                                                    common.OutputOption("json", (".json",))])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..engine import explain
    from .summary import write_summary

    info = METHODS.get(args.method)  # unknown names and bad parameters fail before anything heavy runs
    params = common.parse_params(args.param)
    make_params(info.params, params)
    image = common.read_input(args)
    model = common.model_from_args(args)
    target = common.target_from_args(args, image)
    attribution = explain(image, model, args.method, target, params, seed=args.seed,
                          monitor=common.monitor_from_args(args))
    written = attribution.save(common.staged(args, args.out))
    if args.json:
        write_summary(attribution, common.staged(args, args.json), args.outputs.final_paths(written))
    return common.finish(args, written, attribution.provenance["diagnostics"].get("warnings", []))
