"""``medxai evaluate``: grade an attribution volume with explanation quality metrics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import GeometryError, InputError
from ..evaluation.metrics import METRICS
from . import common

__all__ = ["register", "run", "parse_metric_list", "parse_scoped_params"]


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
    target = common.target_from_args(args, image)
    results = evaluate(image, model, attribution, target, metrics, mask, args.method, metric_params or None,
                       common.monitor_from_args(args), args.seed, common.parse_params(args.param) or None)
    if args.out:
        document = {"image": args.image, "attribution": args.attribution, "mask": args.mask, "seed": args.seed,
                    "metrics": results}
        write_atomic(common.staged(args, args.out), to_json(document) + "\n")
    written = args.outputs.commit()
    warnings = [f"{name}: {r['warning']}" for name, r in results.items() if "warning" in r]
    values = {name: r["value"] for name, r in results.items()}
    if args.progress_json:
        for warning in warnings:
            sys.stderr.write(f"medxai: warning: {warning}\n")
        print(to_json({"done": True, "outputs": [str(p) for p in written], "warnings": warnings,
                       "values": values}, indent=None), flush=True)
        return common.EXIT_OK
    width = max(len(n) for n in values)
    for name, value in values.items():
        better = {True: "higher is better", False: "lower is better"}.get(results[name]["higher_is_better"], "")
        print(f"{name:<{width}}  {value:12.6g}  {better}")
    return common.finish(args, written, warnings)
