"""``medxai compare``: explain an image with several methods, grade the maps and rank the methods."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InputError
from ..evaluation.metrics import METRICS
from . import common
from .evaluate_cmd import cost_text, long_run_monitor, parse_metric_list, parse_scoped_params

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand and its options to `sub`."""
    parser = sub.add_parser("compare", help="compare attribution methods with quality metrics",
                            description="Explain the image with each method, grade every map with the same "
                            "metrics, and rank the methods (mean rank over the metrics that have a better "
                            "direction). Writes comparison.csv, comparison.json and plots into --out.")
    common.add_input_arguments(parser)
    parser.add_argument("--methods", required=True, metavar="A,B,C", help="comma-separated method names "
                        "(see 'medxai methods')")
    parser.add_argument("--param", action="append", default=[], metavar="METHOD.K=V",
                        help="method parameter, e.g. integrated_gradients.n_steps=16; repeatable")
    parser.add_argument("--metrics", metavar="A,B", help="comma-separated metrics (default: every one that "
                        f"applies): {', '.join(METRICS.names())}")
    parser.add_argument("--metric-param", action="append", default=[], metavar="METRIC.K=V",
                        help="metric parameter, e.g. deletion.n_steps=10; repeatable")
    parser.add_argument("--mask", metavar="MASK", help="ground-truth label map for localisation metrics (non-zero "
                        "voxels; resampled onto the image)")
    common.add_target_arguments(parser)
    common.add_run_arguments(parser)
    parser.add_argument("--save-maps", action="store_true", help="also write each method's map as <method>.nrrd")
    parser.add_argument("--out", required=True, metavar="FOLDER", help="folder for the table, JSON and plots "
                        "(created if missing; files of the same names are replaced)")
    common.declare_io(parser, (*common.MODEL_INPUTS, "mask", "param"), [common.OutputOption("out", folder=True)])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Compare the methods, write the folder and print the ranking (or a ``done`` JSON record)."""
    from ..evaluation import compare_methods
    from ..io import read_label_map
    from ..methods import METHODS

    methods = [METHODS.get(m).name for m in args.methods.replace(" ", "").split(",") if m]
    if not methods:
        raise InputError("--methods needs at least one method name")
    metrics = parse_metric_list(args.metrics)
    metric_params = parse_scoped_params(args.metric_param, "--metric-param")
    method_params = parse_scoped_params(args.param, "--param", "integrated_gradients.n_steps=16")
    image = common.read_input(args)
    mask = read_label_map(args.mask, reference=image).array[0] != 0 if args.mask else None
    model = common.model_from_args(args)
    target = common.target_from_args(args, image)
    announce = _compare_cost(methods, method_params, metrics, metric_params, mask is not None, image)
    result = compare_methods(image, model, methods, target, metrics, mask, method_params or None,
                             long_run_monitor(args, announce), args.seed, metric_params or None)
    result.write(common.staged(args, args.out), maps=args.save_maps)
    written = args.outputs.commit()
    ranking = [{"method": m, "mean_rank": r} for m, r in result.ranking]
    if args.progress_json:
        from ..io import to_json

        print(to_json({"done": True, "outputs": [str(p) for p in written], "warnings": [],
                       "ranking": ranking}, indent=None), flush=True)
        return common.EXIT_OK
    graded = result.info.get("graded", {}).get(result.methods[0], {})
    target = graded.get("target") or {}
    print(f"graded for '{graded.get('target_name') or target.get('class_index')}' ({target.get('region')}, "
          f"{target.get('score')}) with model {(graded.get('model') or {}).get('id')}")
    for metric, separation in result.separation.items():
        if not separation["separates"]:
            print(f"note: {separation['note']}")
    print(f"ranking (mean rank over {len(result.ranked_metrics)} metrics; lower is better):")
    for position, (method, rank) in enumerate(result.ranking, start=1):
        print(f"  {position}. {method:<24} {rank:.2f}")
    return common.finish(args, written)


def _compare_cost(methods: list[str], method_params: dict, metrics: Any, metric_params: dict, has_mask: bool,
                  image: Any) -> str:
    from ..evaluation.metrics import estimate_passes, method_passes, parse_metric_params, resolve_metrics
    from ..methods import METHODS
    from ..params import make_params

    infos = resolve_metrics(metrics, has_mask, True)
    parsed = parse_metric_params(infos, metric_params or None)
    total = {"passes": 0, "forward_passes": 0, "explanations": 0}
    per_method = {}
    for name in methods:
        info = METHODS.get(name)
        given = next((v for k, v in method_params.items() if METHODS.get(k).name == name), None)
        passes = method_passes(name, make_params(info.params, given), image.shape)
        per_method[name] = passes
        estimate = estimate_passes(infos, parsed, passes)
        total["forward_passes"] += estimate["forward_passes"]
        total["explanations"] += estimate["explanations"] + 1  # the map itself, then its re-runs
        total["passes"] += estimate["passes"] + (passes or 1)
    return cost_text("compare", total, per_method)
