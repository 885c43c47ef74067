"""``medxai counterfactual``: generate a counterfactual volume and write it with the input's geometry.

Same contracts as ``medxai explain``: exit code 2 with one line on stderr and nothing written for
bad input, 130 for Ctrl-C (nothing written), progress as a bar or JSON lines. The output folder
receives counterfactual.nrrd, difference.nrrd, the predicted label maps of a segmenter
(prediction_before.nrrd, prediction_after.nrrd) and summary.json, all or none of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ..counterfactual.catalog import GENERATORS, GOAL_KINDS
from ..errors import InputError
from ..io import write_atomic
from . import common

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "counterfactual", help="generate a counterfactual volume",
        description="Change the image as little as possible so that the model's output meets a goal (or, with "
                    "the inpaint generator, replace a structure), and write the changed volume, the difference "
                    "and the predictions before and after.")
    common.add_input_arguments(parser)
    parser.add_argument("--generator", default="gradient_search",
                        help=f"generator: {', '.join(GENERATORS.names())} (default gradient_search)")
    parser.add_argument("--goal", required=True, choices=GOAL_KINDS, help="what the change must achieve")
    parser.add_argument("--class", dest="class_index", type=int, metavar="C",
                        help="the output class of the goal")
    parser.add_argument("--target-probability", type=float, metavar="P",
                        help="class_probability goal: the probability to reach (default: flip the decision)")
    parser.add_argument("--target-volume-ml", type=float, metavar="V",
                        help="structure_volume goal: the volume to reach")
    parser.add_argument("--region", metavar="MASK",
                        help="label map: change only its non-zero voxels (resampled onto the image); inpaint: the "
                             "structure to replace")
    parser.add_argument("--bounds", metavar="LOW,HIGH",
                        help="intensity bounds of the counterfactual (default: the image's own range), "
                             "e.g. -1024,3071")
    parser.add_argument("--param", action="append", default=[], metavar="K=V",
                        help="generator parameter; repeatable")
    common.add_run_arguments(parser)
    parser.add_argument("--out", required=True, metavar="FOLDER", help="output folder (created if missing)")
    parser.add_argument("--json", metavar="SUMMARY", help="also write the JSON summary here")
    common.declare_io(parser, ("image", "model", "region", "param"),
                      [common.OutputOption("out", folder=True), common.OutputOption("json", (".json",))])
    parser.set_defaults(handler=run)



def run(args: argparse.Namespace) -> int:
    from ..counterfactual import Goal, generate_counterfactual
    from ..io import read_label_map
    from ..params import make_params

    bounds = _bounds(args.bounds)
    info = GENERATORS.get(args.generator)  # unknown names fail before anything heavy runs
    params = make_params(info.params, common.parse_params(args.param))
    if args.class_index is None and not args.target_structure:
        raise InputError("give the class: --class C or --target-structure NAME")
    if info.needs_region and not args.region:
        raise InputError(f"the {info.name} generator needs --region MASK (the structure to replace)")
    image = common.read_input(args)
    model = common.model_from_args(args)  # --target-structure sets args.class_index
    goal = Goal(args.goal, args.class_index, target_probability=args.target_probability,
                target_volume_ml=args.target_volume_ml)
    region = read_label_map(args.region, reference=image).array[0] != 0 if args.region else None
    result = generate_counterfactual(image, model, goal, info.name, region=region, params=params,
                                     bounds=bounds, monitor=common.monitor_from_args(args), seed=args.seed)
    written = args.outputs.final_paths(result.save(common.staged(args, args.out), overwrite=True))
    if args.json:
        _write_json(common.staged(args, args.json), result.summary_json([str(p) for p in written]))
    code = common.finish(args, warnings=result.warnings)
    if not (args.quiet or args.progress_json):
        print(result.outcome_line())
    return code


def _bounds(text: Optional[str]) -> Optional[tuple[float, float]]:
    # parsed here, not by argparse, so a malformed value gives the one-line error of every bad input
    if text is None:
        return None
    try:
        return common.floats(2, "--bounds")(text)  # type: ignore[return-value]
    except argparse.ArgumentTypeError as exc:
        raise InputError(str(exc)) from None


def _write_json(path: Path, text: str) -> Path:
    return write_atomic(path, text + "\n")
