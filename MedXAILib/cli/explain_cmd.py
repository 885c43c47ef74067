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
    parser.add_argument("--out", required=True, help=f"attribution file ({', '.join(common.OUTPUT_SUFFIXES)}): one "
                        "map per input channel (channel names in the header under MedXAI.Channels)")
    parser.add_argument("--out-sum", metavar="SUM", help="also write the channel sum as a one-channel volume (what a "
                        "viewer shows by default); for a one-channel input it equals --out")
    parser.add_argument("--json", metavar="SUMMARY", help="also write a JSON summary (provenance, prediction, stats)")
    common.declare_io(parser, (*common.MODEL_INPUTS, "param"), [common.OutputOption("out", common.OUTPUT_SUFFIXES),
                                                    common.OutputOption("out_sum", common.OUTPUT_SUFFIXES),
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
    if args.out_sum:
        written += attribution.save_sum(common.staged(args, args.out_sum))
    if args.json:
        write_summary(attribution, common.staged(args, args.json), args.outputs.final_paths(written))
    warnings = list(attribution.provenance["diagnostics"].get("warnings", []))
    channels = attribution.provenance.get("channels") or {}
    code = common.finish(args, written, warnings)
    if len(channels.get("names", [])) > 1 and not (args.quiet or args.progress_json):
        # which channel decided, or why this map cannot say
        shares = ", ".join(f"{n} {100 * v:.1f} %" for n, v in zip(channels["names"], channels["shares"]))
        print(f"share of |relevance| per channel: {shares} ({channels['note']})")
    return code
