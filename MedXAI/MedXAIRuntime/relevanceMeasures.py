"""What the MedXAI Segment Statistics plugin measures, without Qt or Slicer (tested with pytest).

Segment Statistics computes its measurements one segment at a time on the scalar volume the user
selects. When that volume is a MedXAI attribution result (:func:`isAttributionNode`), the plugin
(:mod:`MedXAIRuntime.segmentStatisticsPlugin`) reports for each segment S the relevance measures of
:func:`MedXAILib.statistics.structure_statistics` with S as the structure and the rest of the volume
as the background (:func:`relevanceMeasures`): the share of |relevance| and of positive relevance
(relevance mass accuracy) in S, its density ratio, the rank accuracy of |relevance| (Arras et al.
2022), the distance from the map's maximum to S (the pointing game's distance, Zhang et al. 2018),
top-k Dice, the boundary-to-interior ratio, and the signed sum, mean and masses. Keys, titles,
descriptions and units are in :data:`MEASUREMENTS`; each key names one definition, the same as in
MedXAILib (the metric ``pointing_game`` counts a hit when this distance is within its tolerance).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from MedXAILib.errors import InputError

__all__ = [
    "PLUGIN_KEYS",
    "DEFAULT_KEYS",
    "MEASUREMENTS",
    "REST_NAME",
    "relevanceMeasures",
    "measurementInfo",
    "isAttributionNode",
]

REST_NAME = "(rest of the volume)"

#: key -> (title, description); keys are columns of MedXAILib.statistics.STATISTIC_COLUMNS.
MEASUREMENTS: dict[str, tuple[str, str]] = {
    "share_abs": ("Relevance share",
                  "Share of the map's total |relevance| inside the segment; chance level is its share of the volume."),
    "share_positive": ("Positive relevance share",
                       "Share of the map's positive relevance inside the segment: relevance mass accuracy (Arras, "
                       "Osman & Samek 2022, Information Fusion 81:14-40); chance level is its share of the volume."),
    "density_ratio": ("Relevance density ratio",
                      "Relevance share divided by the segment's share of the volume: above 1 when the segment holds "
                      "more relevance than its size."),
    "abs_rank_accuracy": ("Rank accuracy of |relevance|",
                          "Of the K voxels with the largest |relevance| (K = the segment's voxel count), the fraction "
                          "inside the segment (Arras et al. 2022, on |relevance|); chance level is the segment's "
                          "volume share."),
    "peak_distance_mm": ("Distance of the maximum",
                         "Distance from the voxel of the map's largest (positive) relevance to the segment, 0 inside: "
                         "the pointing game's distance (Zhang et al. 2018, IJCV 126:1084-1102)."),
    "top_dice": ("Top-k Dice",
                 "Dice coefficient of the segment with the voxels of largest |relevance| (top fraction of the "
                 "volume, 5 % by default)."),
    "boundary_interior_ratio": ("Boundary / interior relevance",
                                "Mean |relevance| within 2 mm of the segment's surface (either side) over the mean "
                                "|relevance| of its interior."),
    "sum": ("Relevance sum", "Sum of the signed relevance over the segment."),
    "mean": ("Relevance mean", "Mean signed relevance over the segment."),
    "positive_mass": ("Positive relevance", "Sum of the positive relevance over the segment."),
    "negative_mass": ("Negative relevance", "Sum of the negative relevance over the segment (<= 0)."),
    "centre_distance_mm": ("Relevance centre offset",
                           "Distance from the |relevance|-weighted centre of the segment to its centroid."),
}
PLUGIN_KEYS = tuple(MEASUREMENTS)
DEFAULT_KEYS = ("share_abs", "density_ratio", "abs_rank_accuracy", "peak_distance_mm")


def relevanceMeasures(attribution: np.ndarray, mask: np.ndarray, affine: np.ndarray, name: str = "segment",
                      keys: Optional[Sequence[str]] = None, topFraction: float = 0.05,
                      boundaryMm: float = 2.0) -> dict[str, Any]:
    """The relevance measures of one segment (`mask`) in an attribution map on the same grid.

    Args:
        attribution: (I, J, K) map ((C, I, J, K) is summed over channels).
        mask: boolean (I, J, K) segment.
        affine: the grid's IJK -> RAS matrix (mm).
        name: the segment's name (only used for the statistics' row name).
        keys: measurements to return (default :data:`PLUGIN_KEYS`).
        topFraction, boundaryMm: as :func:`MedXAILib.statistics.structure_statistics`.

    Returns:
        ``{key: value}``: floats (NaN where undefined).

    Raises:
        InputError: an unknown key, an empty mask, or a map and mask on different grids.
    """
    from MedXAILib.analysis.statistics import structure_statistics

    keys = list(PLUGIN_KEYS if keys is None else keys)
    unknown = [k for k in keys if k not in MEASUREMENTS]
    if unknown:
        raise InputError(f"unknown relevance measurement(s) {', '.join(unknown)}; use {', '.join(PLUGIN_KEYS)}")
    structure = np.asarray(mask, dtype=bool)
    if not structure.any():
        raise InputError(f"the segment '{name}' has no voxel on the attribution's grid")
    names = [REST_NAME, name if name.strip() and name.strip() != REST_NAME else "segment"]
    table = structure_statistics(attribution, structure.astype(np.uint8), names, affine, topFraction, boundaryMm)
    out: dict[str, Any] = {}
    for key in keys:
        value = table[key][1]
        out[key] = float(value)
    return out


def measurementInfo(key: str) -> Optional[dict[str, str]]:
    """``name``, ``title``, ``description`` and ``units`` of a key (None for an unknown key), as Segment Statistics wants."""
    from MedXAILib.analysis.statistics import STATISTIC_UNITS

    if key not in MEASUREMENTS:
        return None
    title, description = MEASUREMENTS[key]
    return {"name": title, "title": title, "description": description, "units": STATISTIC_UNITS.get(key, "")}


def isAttributionNode(node: Any) -> bool:
    """Whether a volume node is a MedXAI attribution result (the plugin measures only those)."""
    from MedXAILib.attribution import PROVENANCE_KEY

    if node is None:
        return False
    kind = node.GetAttribute("MedXAI.Result")
    if kind is not None:  # uncertainty maps, counterfactuals and differences carry provenance too
        return kind == "attribution"
    return bool(node.GetAttribute(PROVENANCE_KEY))
