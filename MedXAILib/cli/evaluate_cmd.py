"""``medxai evaluate``: grade an attribution volume with explanation quality metrics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import GeometryError, InputError
from ..evaluation.metrics import METRICS, resolve_metrics
from . import common

__all__ = ["register", "run", "parse_metric_list", "parse_scoped_params", "long_run_monitor", "cost_text"]


def parse_metric_list(text: Optional[str]) -> Optional[list[str]]:
    """``"a,b"`` -> registered metric names (unknown ones raise with the closest name); None stays None."""
    if text is None:
        return None
    names = [n for n in text.replace(" ", "").split(",") if n]
    if not names:
        raise InputError("--metrics needs at least one metric name")
    return [METRICS.get(n).name for n in names]


def parse_scoped_params(
    pairs: Sequence[str], option: str, example: str = "deletion.n_steps=10"
) -> dict[str, dict[str, str]]:
    """``["deletion.n_steps=10", ...]`` -> ``{"deletion": {"n_steps": "10"}}``.

    Raises:
        InputError: a pair is not ``NAME.PARAM=VALUE`` (the message shows `option` and `example`).
    """
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        scope, dot, name = key.strip().partition(".")
        if not (sep and dot and scope and name):
            raise InputError(f"{option} needs NAME.PARAM=VALUE (e.g. {example}); got {pair!r}")
        out.setdefault(scope, {})[name.strip()] = value.strip()
    return out


def cost_text(command: str, estimate: dict[str, Any], methods: dict[str, Optional[int]]) -> str:
    """One line announcing the cost of a run in model passes, before any work.

    Args:
        command: ``evaluate`` or ``compare``.
        estimate: ``{"passes", "forward_passes", "explanations"}`` summed over the run.
        methods: ``{method: passes of one explanation or None}`` for the methods run or re-run.
    """
    unknown = [m for m, n in methods.items() if n is None]
    parts = [f"{estimate['forward_passes']} forward passes for the metrics"]
    if estimate.get("explanations"):
        parts.append(f"{estimate['explanations']} explanations")
    known = ", ".join(f"{m} {n} pass{'es' if n != 1 else ''} each" for m, n in methods.items() if n is not None)
    return (f"{command}: about {estimate['passes']} model passes ({'; '.join(parts)}"
            + (f"; {known}" if known else "") + ")"
            + (f"; {', '.join(unknown)}: cost depends on the image, not counted" if unknown else "")
            + ". A pass of a 3D network takes from a fraction of a second (GPU) to seconds (CPU).")


def long_run_monitor(args: argparse.Namespace, announce: str) -> Any:
    """The run's monitor; says what the run will cost first. Off a terminal (a log, a pipe), plain progress
    lines on stdout instead of nothing, so a long run is never silent (stderr keeps the one-line error
    contract)."""
    from ..monitor import Monitor
    from . import progress

    if args.progress_json or args.quiet:
        return common.monitor_from_args(args)
    print(announce, flush=True)
    if sys.stderr.isatty():
        return common.monitor_from_args(args)
    return Monitor(progress.plain_lines(sys.stdout), min_interval_s=0.5)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand and its options to `sub`."""
    names = ", ".join(METRICS.names())
    parser = sub.add_parser("evaluate", help="grade an attribution volume with quality metrics",
                            description="Grade an attribution volume (e.g. from 'medxai explain') with explanation "
                            "quality metrics: faithfulness, localisation against a mask, robustness, complexity "
                            "and randomisation sanity checks.")
    common.add_input_arguments(parser)
    parser.add_argument("--attribution", required=True, metavar="ATTR",
                        help="attribution volume on the image grid (its provenance names the method)")
    parser.add_argument("--metrics", metavar="A,B",
                        help=f"comma-separated metrics (default: every one that applies): {names}")
    parser.add_argument("--mask", metavar="MASK", help="ground-truth label map for localisation metrics (non-zero "
                        "voxels; resampled onto the image)")
    parser.add_argument("--method", help="the method that made the map, re-run by robustness and randomisation "
                        "metrics (default: the attribution's provenance)")
    parser.add_argument("--param", action="append", default=[], metavar="K=V",
                        help="that method's parameter (default: the provenance's); repeatable")
    parser.add_argument("--metric-param", action="append", default=[], metavar="METRIC.K=V",
                        help="metric parameter, e.g. deletion.n_steps=10; repeatable")
    common.add_target_arguments(parser)
    parser.add_argument("--ignore-provenance", action="store_true",
                        help="grade a map whose provenance names another model, image grid or target than the ones "
                             "given (refused otherwise); the record says it was not checked")
    common.add_run_arguments(parser)
    parser.add_argument("--out", metavar="METRICS.json", help="write the results as JSON (default: print them)")
    common.declare_io(parser, (*common.MODEL_INPUTS, "attribution", "mask", "param"), [common.OutputOption("out", (".json",))])
    parser.set_defaults(handler=run)


def read_attribution(path: str, image: Any) -> Any:
    """An :class:`Attribution` from a file written by ``medxai explain`` (provenance from its header)."""
    from ..attribution import PROVENANCE_KEY, Attribution
    from ..io import read_image

    volume = read_image(path)
    if not volume.same_grid(image):
        raise GeometryError(f"the attribution {Path(path).name} (shape {volume.shape}) is not on the image grid "
                            f"(shape {image.shape}); evaluate a map computed on this image")
    provenance: dict[str, Any] = {}
    text = volume.meta.get("header", {}).get(PROVENANCE_KEY)
    if text:
        try:
            provenance = json.loads(text)
        except ValueError:
            provenance = {}
    return Attribution(array=volume.array, affine=volume.affine, provenance=provenance)


def run(args: argparse.Namespace) -> int:
    """Grade the attribution; print the values (or a ``done`` JSON record) and write ``--out``."""
    from ..evaluation import evaluate
    from ..io import read_label_map, to_json, write_atomic
    from ..methods import METHODS

    metrics = parse_metric_list(args.metrics)
    metric_params = parse_scoped_params(args.metric_param, "--metric-param")
    for name in metric_params:
        METRICS.get(name)
    if args.method:
        METHODS.get(args.method)
    image = common.read_input(args)
    attribution = read_attribution(args.attribution, image)
    mask = read_label_map(args.mask, reference=image).array[0] != 0 if args.mask else None
    model = common.model_from_args(args)
    # no target options: the map's own target (from its provenance), so a map is graded for what it explains
    target = common.target_from_args(args, image) if _target_given(args) else None
    method = args.method or attribution.provenance.get("method")
    infos = resolve_metrics(metrics, mask is not None, method is not None)
    method_params = common.parse_params(args.param) or None
    announce = _evaluate_cost(infos, metric_params, method, method_params, attribution, image)
    results = evaluate(image, model, attribution, target, metrics, mask, args.method, metric_params or None,
                       long_run_monitor(args, announce), args.seed, method_params,
                       check_provenance=not args.ignore_provenance)
    graded = dict(results.graded)
    graded["image"] = {**graded.get("image", {}), "files": list(args.image)}
    if args.out:
        document = {"image": args.image, "attribution": args.attribution, "mask": args.mask, "seed": args.seed,
                    "model": args.model, "graded": graded, "metrics": results}
        write_atomic(common.staged(args, args.out), to_json(document) + "\n")
    written = args.outputs.commit()
    warnings = [f"{name}: {r['warning']}" for name, r in results.items() if "warning" in r]
    if args.ignore_provenance:
        warnings.append("the attribution's provenance was not checked against the model and target (--ignore-provenance)")
    values = {name: r["value"] for name, r in results.items()}
    if args.progress_json:
        for warning in warnings:
            sys.stderr.write(f"medxai: warning: {warning}\n")
        print(to_json({"done": True, "outputs": [str(p) for p in written], "warnings": warnings,
                       "values": values}, indent=None), flush=True)
        return common.EXIT_OK
    width = max(len(n) for n in values)
    target = graded.get("target") or {}
    print(f"graded: {graded.get('method') or 'unknown method'} for '{graded.get('target_name') or target.get('class_index')}' "
          f"({target.get('region')}, {target.get('score')}) with model {(graded.get('model') or {}).get('id')}")
    for name, value in values.items():
        better = {True: "higher is better", False: "lower is better"}.get(results[name]["higher_is_better"], "")
        chance = results[name].get("chance")
        print(f"{name:<{width}}  {value:12.6g}  {better}" + (f" (chance {chance:.4g})" if chance is not None else ""))
    return common.finish(args, written, warnings)


def _target_given(args: argparse.Namespace) -> bool:
    """Whether any target option was given (else the map's own target applies)."""
    return any(getattr(args, name, None) not in (None, False) for name in (
        "target_class", "target_predicted", "target_mask", "target_box", "target_voxel", "target_component",
        "target_boundary", "target_probability", "target_margin", "target_mean"))


def _evaluate_cost(infos: Any, metric_params: Any, method: Optional[str], method_params: Any, attribution: Any,
                   image: Any) -> str:
    from ..evaluation.metrics import estimate_passes, method_passes, parse_metric_params
    from ..methods import METHODS
    from ..params import make_params

    passes = None
    if method is not None:
        info = METHODS.get(method)
        given = method_params if method_params is not None else (attribution.provenance.get("parameters") or {})
        passes = method_passes(info.name, make_params(info.params, given), image.shape)
    estimate = estimate_passes(infos, parse_metric_params(infos, metric_params or None), passes)
    re_run = {method: passes} if method is not None and estimate["explanations"] else {}
    return cost_text("evaluate", estimate, re_run)
