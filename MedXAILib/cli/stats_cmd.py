"""``medxai stats``: relevance statistics per structure of a label map, for one or several maps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from . import common

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "stats", help="relevance statistics per structure of a label map",
        description="Statistics of attribution maps per structure of a label map (label 0 = background): "
        "volume, relevance sum/mean/max, share of |relevance| (relevance mass accuracy), density ratio, "
        "relevance rank accuracy, pointing game, top-fraction Dice/IoU, boundary/interior ratio, "
        "relevance centroid. One map gives the full table; several maps give a comparison table.")
    parser.add_argument("--attribution", action="append", required=True, metavar="ATTR",
                        help="attribution file (e.g. from 'medxai explain'); repeat to compare maps on one "
                             "grid (columns are labelled with the file names)")
    parser.add_argument("--labels", required=True, metavar="LABELS",
                        help="integer label map (resampled onto the attribution grid, nearest neighbour)")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--names", metavar="A,B,C",
                       help="one name per label value from 0 (background first); "
                            "default: background, label 1, ...")
    names.add_argument("--names-from", metavar="MODEL", help="take the names from a model's class names "
                       "(spec JSON, bundle, TorchScript metadata)")
    parser.add_argument("--trust-bundle", action="store_true", help="allow a bundle's config to run code "
                        "(for --names-from)")
    parser.add_argument("--top-fraction", type=float, default=0.05, metavar="F",
                        help="fraction of voxels in the top set for top_dice/top_iou (default 0.05)")
    parser.add_argument("--boundary-mm", type=float, default=2.0, metavar="MM",
                        help="band half-width for boundary_interior_ratio (default 2)")
    parser.add_argument("--out", required=True, metavar="TABLE.csv", help="the statistics table (CSV)")
    parser.add_argument("--json", metavar="TABLE.json", help="also write the table as JSON with units")
    parser.add_argument("--curves", metavar="CURVES.json",
                        help="relevance-volume curves per map and structure (JSON)")
    parser.add_argument("--curve-points", type=int, default=50, metavar="N",
                        help="thresholds per curve (default 50)")
    parser.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress or 'wrote' lines")
    common.declare_io(parser, ("attribution", "labels", "names_from"),
                      [common.OutputOption("out", (".csv",)), common.OutputOption("json", (".json",)),
                       common.OutputOption("curves", (".json",))])
    parser.set_defaults(handler=run)



def map_labels(paths: list[str]) -> list[str]:
    """Readable, unique labels for the maps: file names without their image suffix."""
    labels = []
    for path in paths:
        name = Path(path).name
        for suffix in common.OUTPUT_SUFFIXES:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        label, n = name or "map", 2
        while label in labels:
            label, n = f"{name} ({n})", n + 1
        labels.append(label)
    return labels


def _names(args: argparse.Namespace, top_label: int) -> list[str]:
    if args.names:
        return [n.strip() for n in args.names.split(",")]
    if args.names_from:
        from ..model import load_model

        model = load_model(args.names_from, trust_bundle=args.trust_bundle, device="cpu")
        if not model.class_names:
            raise InputError(f"the model {args.names_from} declares no class names; use --names")
        return list(model.class_names)
    return ["background"] + [f"label {v}" for v in range(1, top_label + 1)]


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import GeometryError
    from ..io import json_safe, read_image, read_label_map, write_atomic
    from ..analysis.statistics import (compare_statistics, relevance_volume_curves, structure_statistics,
                              table_to_json, write_table_csv)

    if not 0 < args.top_fraction <= 1:
        raise InputError(f"--top-fraction must be in (0, 1]; got {args.top_fraction}")
    if args.curve_points < 2:
        raise InputError(f"--curve-points must be at least 2; got {args.curve_points}")
    monitor = common.monitor_from_args(args)
    monitor.update(0.0, "Reading the attribution maps")
    volumes = [read_image(path) for path in args.attribution]
    first = volumes[0]
    for path, volume in zip(args.attribution[1:], volumes[1:]):
        if not volume.same_grid(first):
            raise GeometryError(f"{path} is not on the grid of {args.attribution[0]}; compare maps of one "
                                "image (or resample them first)")
    monitor.update(0.2, "Reading the label map")
    labels = read_label_map(args.labels, reference=first).array[0].astype(np.int64)
    names = _names(args, int(labels.max()))
    maps = {label: volume.array.sum(axis=0) for label, volume in zip(map_labels(args.attribution), volumes)}
    monitor.update(0.4, "Computing the statistics")
    if len(maps) == 1:
        table = structure_statistics(next(iter(maps.values())), labels, names, first.affine,
                                     args.top_fraction, args.boundary_mm)
    else:
        table = compare_statistics(maps, labels, names, first.affine, top_fraction=args.top_fraction,
                                   boundary_mm=args.boundary_mm)
    write_table_csv(table, common.staged(args, args.out))
    if args.json:
        write_atomic(common.staged(args, args.json), table_to_json(table))
    if args.curves:
        monitor.update(0.8, "Computing the relevance-volume curves")
        curves = {label: relevance_volume_curves(m, labels, names, args.curve_points)
                  for label, m in maps.items()}
        text = json.dumps({"definition": "per map and structure: threshold t on |relevance| (shared by all "
                           "structures of a map), volume_fraction = share of the structure's voxels with "
                           "|a| >= t, relevance_fraction = share of the map's total |relevance| held by them",
                           "maps": json_safe(curves)}, indent=1, allow_nan=False) + "\n"
        write_atomic(common.staged(args, args.curves), text)
    monitor.check()
    monitor.update(1.0, f"Statistics of {len(names)} structures written")
    return common.finish(args)

