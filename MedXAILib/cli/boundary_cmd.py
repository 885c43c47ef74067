"""``medxai boundary``: saliency of a segmentation boundary, its relevance profile and its uncertainty."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..methods import METHODS
from . import common

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "boundary", help="explain a segmentation boundary (band saliency, profile, uncertainty)",
        description="Explain a segmenter's decision at the surface of a structure: the target is the class "
        "score (by default the margin over the strongest competing class) summed over a band of "
        "INNER mm inside and OUTER mm outside the predicted structure (or --target-mask). Optionally "
        "writes the relevance profile across the surface and test-time-flip / MC-dropout uncertainty maps.")
    common.add_input_arguments(parser)
    target = parser.add_argument_group("target")
    target.add_argument("--target-class", type=int, metavar="C",
                        help="output class of the structure (or name it with --target-structure)")
    target.add_argument("--target-mask", metavar="MASK",
                        help="the structure as a label map (non-zero voxels, resampled onto the image); "
                             "default: the voxels predicted as the class")
    target.add_argument("--band-mm", type=common.floats(2, "--band-mm"), default=(2.0, 2.0),
                        metavar="INNER,OUTER", help="band thickness in mm inside and outside the surface "
                        "(default 2,2)")
    target.add_argument("--score", choices=("margin", "logit", "probability"), default="margin",
                        help="margin: class logit minus the strongest other logit (default); logit; "
                             "probability")
    target.add_argument("--target-mean", action="store_true",
                        help="average the score over the band (default sum)")
    parser.add_argument("--method", default="integrated_gradients", help="method name (see 'medxai methods')")
    parser.add_argument("--param", action="append", default=[], metavar="K=V",
                        help="method parameter; repeatable")
    common.add_run_arguments(parser)
    parser.add_argument("--out", required=True, metavar="SALIENCY",
                        help=f"attribution file ({', '.join(common.OUTPUT_SUFFIXES)})")
    profile = parser.add_argument_group("relevance profile across the surface")
    profile.add_argument("--profile", metavar="PROFILE.csv",
                         help="relevance statistics per signed-distance bin (CSV)")
    profile.add_argument("--profile-png", metavar="P.png", help="plot of the profile (needs matplotlib)")
    profile.add_argument("--profile-bin-mm", type=float, default=1.0, metavar="MM",
                         help="bin width (default 1)")
    profile.add_argument("--profile-max-mm", type=float, default=10.0, metavar="MM",
                         help="profile range -MM..+MM (default 10)")
    uncertainty = parser.add_argument_group("uncertainty of the structure")
    uncertainty.add_argument("--uncertainty", metavar="UNCERTAINTY",
                             help="3-channel volume: ensemble-mean probability, predictive entropy (nats), "
                                  "variance")
    uncertainty.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                             help="test-time flips along each axis (default on)")
    uncertainty.add_argument("--mc-dropout", type=int, default=0, metavar="N",
                             help="Monte-Carlo dropout samples per transform (default 0: off)")
    parser.add_argument("--json", metavar="SUMMARY",
                        help="also write a JSON summary (provenance, band, profile, uncertainty in the band)")
    images = common.OUTPUT_SUFFIXES
    common.declare_io(parser, (*common.MODEL_INPUTS, "param"),
                      [common.OutputOption("out", images), common.OutputOption("uncertainty", images),
                       common.OutputOption("profile", (".csv",)), common.OutputOption("profile_png", (".png",)),
                       common.OutputOption("json", (".json",))])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..attribution import PROVENANCE_KEY
    from ..io import to_json, write_atomic
    from ..analysis.boundary import (UNCERTAINTY_MAPS, boundary_uncertainty, plot_profile, predicted_structure,
                                     relevance_profile)
    from ..regions import boundary_band
    from ..engine import explain
    from ..io import read_label_map, write_image
    from ..provenance import library_versions, timestamp
    from ..analysis.statistics import write_table_csv
    from ..target import Target
    from .summary import summary_of

    if not args.uncertainty and (args.flips is not None or args.mc_dropout):
        raise InputError("--flips/--no-flips and --mc-dropout shape the uncertainty maps; "
                         "add --uncertainty FILE")
    if args.mc_dropout < 0:
        raise InputError(f"--mc-dropout must be >= 0; got {args.mc_dropout}")
    if args.profile_bin_mm <= 0 or args.profile_max_mm <= 0:
        raise InputError("--profile-bin-mm and --profile-max-mm must be > 0")
    METHODS.get(args.method)  # unknown names fail before anything heavy runs
    params = common.parse_params(args.param)
    image = common.read_input(args)
    model = common.model_from_args(args)
    if args.target_class is None:
        raise InputError("give the structure: --target-class C or --target-structure NAME")
    mask = None
    if args.target_mask:
        mask = read_label_map(args.target_mask, reference=image).array[0] != 0
    target = Target(class_index=args.target_class, region="boundary", band_mm=tuple(args.band_mm), mask=mask,
                    score=args.score, reduction="mean" if args.target_mean else "sum")
    monitor = common.monitor_from_args(args)
    with monitor.stage(0.0, 0.6 if args.uncertainty else 0.95):
        attribution = explain(image, model, args.method, target, params, seed=args.seed, monitor=monitor)

    want_profile = bool(args.profile or args.profile_png or args.json)
    structure = band = profile = None
    if want_profile:
        monitor.update(0.6 if args.uncertainty else 0.95, "Relevance profile across the surface")
        structure = mask if mask is not None else predicted_structure(image, model, args.target_class)
        band = boundary_band(structure, image.spacing, *args.band_mm)
        profile = relevance_profile(attribution.summed, structure, image.spacing, args.profile_bin_mm,
                                    args.profile_max_mm)
    maps = None
    if args.uncertainty:
        with monitor.stage(0.62, 0.98):
            maps = boundary_uncertainty(image, model, args.target_class, flips=args.flips is not False,
                                        n_dropout=args.mc_dropout, monitor=monitor, seed=args.seed)

    finals = [Path(p) for p in (args.out, args.profile, args.profile_png, args.uncertainty) if p]
    attribution.save(common.staged(args, args.out))
    if args.profile:
        write_table_csv(profile, common.staged(args, args.profile))
    if args.profile_png:
        name = attribution.provenance.get("target_name") or f"class {args.target_class}"
        plot_profile(profile, common.staged(args, args.profile_png),
                     f"{attribution.provenance.get('method_title', args.method)} of the '{name}' {args.score} in the "
                     f"band, {'the given structure' if mask is not None else 'the predicted structure'}",
                     tuple(args.band_mm))
    if maps is not None:
        ensemble = maps["probability"].meta["ensemble"]
        provenance = {"kind": "boundary_uncertainty", "channels": list(UNCERTAINTY_MAPS),
                      "ensemble": ensemble, "model": model.describe(),
                      "input": attribution.provenance["input"],
                      "versions": library_versions(), "device": str(model.device), "created": timestamp()}
        volume = image.with_array(np.concatenate([maps[name].array for name in UNCERTAINTY_MAPS]),
                                  channel_names=list(UNCERTAINTY_MAPS), meta={})
        metadata = {PROVENANCE_KEY: to_json(provenance, indent=None, sort_keys=True),
                    "MedXAI.Channels": ",".join(UNCERTAINTY_MAPS)}
        write_image(volume, common.staged(args, args.uncertainty), metadata=metadata)
    if args.json:
        data = summary_of(attribution, finals)
        relevance = np.abs(attribution.summed)
        total = float(relevance.sum())
        data["boundary"] = {
            "band_mm": list(args.band_mm), "structure": "mask" if mask is not None else "predicted",
            "structure_voxels": int(structure.sum()), "band_voxels": int(band.sum()),
            "band_share_abs": float(relevance[band].sum() / total) if total > 0 else None,
            "profile": profile,
        }
        if maps is not None:
            in_band = {f"mean_{name}_in_band": float(maps[name].array[0][band].mean())
                       for name in UNCERTAINTY_MAPS}
            data["uncertainty"] = {"ensemble": maps["probability"].meta["ensemble"], **in_band}
        write_atomic(common.staged(args, args.json), to_json(data) + "\n")
    monitor.check()
    monitor.update(1.0, "Boundary saliency written")
    return common.finish(args, warnings=attribution.provenance["diagnostics"].get("warnings", []))
