"""Per-structure relevance statistics: where in the anatomy does an attribution map put its mass?

Given a relevance map and an integer label map on the same grid (label 0 = background), every
structure gets one row of statistics (:func:`structure_statistics`), a relevance-volume curve
(:func:`relevance_volume_curves`, read like a dose-volume histogram), and several maps can be set
side by side (:func:`compare_statistics`). Tables are plain ``dict[str, list]`` columns (the Slicer
bridge turns them into table nodes) and are written as CSV or JSON, atomically.

Two kinds of location measures, named apart so that one name always means one definition:
``share_abs``, ``density_ratio``, ``abs_rank_accuracy``, ``top_dice``, ``top_iou`` and the
centres use |relevance| (negative evidence is still where the model looks); ``share_positive``
and ``peak_distance_mm`` use the positive evidence exactly as the metrics
``relevance_mass_accuracy`` and ``pointing_game`` of :mod:`MedXAILib.evaluation` define them
(Testing/Lib/test_statistics.py checks that they agree). Value measures (sum, mean, max, p95, masses) use the signed map. Ties in |relevance| at
a cut-off (top-K, top fraction) are shared in proportion, so results never depend on voxel order;
a map with no relevance at all therefore scores chance level, not an arbitrary 0 or 1.

Only numpy at import time (SciPy loads on use, for the boundary bands).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..attribution import map3d
from ..errors import InputError, ParameterError
from ..io import json_safe, write_atomic
from ..regions import boundary_band
from ..volume import spacing_of

__all__ = [
    "STATISTIC_UNITS",
    "STATISTIC_COLUMNS",
    "COMPARE_SEPARATOR",
    "structure_statistics",
    "relevance_volume_curves",
    "compare_statistics",
    "write_table_csv",
    "write_table_json",
    "table_to_csv",
    "table_to_json",
    "units_for",
]

#: The columns of :func:`structure_statistics`, in order.
STATISTIC_COLUMNS = (
    "structure", "label", "voxels", "volume_mm3", "sum", "mean", "max", "p95", "positive_mass",
    "negative_mass", "share_abs", "share_positive", "volume_share", "density_ratio", "abs_rank_accuracy",
    "peak_distance_mm", "top_dice", "top_iou", "boundary_interior_ratio", "centre_ras_x", "centre_ras_y",
    "centre_ras_z", "centre_distance_mm",
)

#: Unit of every column MedXAI writes into a statistics, profile or curve table ("" = none: counts
#: of structures, ratios, fractions, and relevance, whose unit is the attributed score's).
STATISTIC_UNITS: dict[str, str] = {
    "structure": "",
    "label": "",
    "voxels": "voxels",
    "volume_mm3": "mm3",
    "sum": "",
    "mean": "",
    "max": "",
    "p95": "",
    "positive_mass": "",
    "negative_mass": "",
    "share_abs": "",
    "share_positive": "",
    "volume_share": "",
    "density_ratio": "",
    "abs_rank_accuracy": "",
    "peak_distance_mm": "mm",
    "top_dice": "",
    "top_iou": "",
    "boundary_interior_ratio": "",
    "centre_ras_x": "mm",
    "centre_ras_y": "mm",
    "centre_ras_z": "mm",
    "centre_distance_mm": "mm",
    # relevance_profile (MedXAILib.boundary)
    "distance_mm": "mm",
    "p5": "",
    "p25": "",
    "p50": "",
    "p75": "",
    # relevance_volume_curves
    "threshold": "",
    "volume_fraction": "",
    "relevance_fraction": "",
}

#: Joins a statistic and a map label in :func:`compare_statistics` column names.
COMPARE_SEPARATOR = " · "


# ------------------------------------------------------------------------------------------------
# Validation


def _labels(labels: Any, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.shape != tuple(shape):
        raise InputError(f"the label map has shape {array.shape} but the attribution map has {tuple(shape)}; "
                         "resample the labels onto the map's grid first (MedXAILib.io.read_label_map)")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError("the label map holds non-integer values; a label map needs integer labels")
    elif array.dtype.kind not in "biu":
        raise InputError(f"the label map must hold integers; got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise InputError(f"labels must be >= 0 (0 = background); found {int(array.min())}")
    return array


def _names(names: Sequence[str], labels: np.ndarray) -> list[str]:
    if isinstance(names, str) or not all(isinstance(n, str) and n.strip() for n in names):
        raise InputError(
            f"names must be a list of non-empty strings, one per label value from 0; got {names!r}"
        )
    names = [n.strip() for n in names]
    top = int(labels.max()) if labels.size else 0
    if len(names) <= top:
        raise InputError(f"the label map holds labels up to {top} but {len(names)} name(s) were given; "
                         f"give one name per label value 0..{top}, background first")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"structure names must be unique; repeated: {', '.join(duplicates)}")
    return names


def _affine(affine: Any) -> np.ndarray:
    array = np.asarray(affine, dtype=np.float64)
    if array.shape != (4, 4) or not np.all(np.isfinite(array)) or abs(np.linalg.det(array[:3, :3])) < 1e-12:
        raise InputError(
            f"the affine must be a finite, non-singular 4x4 IJK -> RAS matrix; got shape {array.shape}"
        )
    return array


def _fraction(value: float, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{what} must be a number; got {value!r}") from None
    if not 0 < value <= 1:
        raise ParameterError(f"{what} must be in (0, 1]; got {value}")
    return value


# ------------------------------------------------------------------------------------------------
# Statistics


class _Ranking:
    """|relevance| sorted once, for top-K counts with ties shared in proportion."""

    def __init__(self, magnitude: np.ndarray):
        self.magnitude = magnitude
        self.ascending = np.sort(magnitude, axis=None)
        self.n = self.ascending.size

    def expected_inside(self, k: int, structure: np.ndarray) -> float:
        """Expected voxels of `structure` among the `k` largest |relevance| (ties drawn at random)."""
        if k <= 0:
            return 0.0
        t = self.ascending[self.n - k]  # the k-th largest value
        above = self.n - int(np.searchsorted(self.ascending, t, side="right"))
        tied = self.n - above - int(np.searchsorted(self.ascending, t, side="left"))
        values = self.magnitude[structure]
        inside_above = int(np.count_nonzero(values > t))
        inside_tied = int(np.count_nonzero(values == t))
        return inside_above + (k - above) * inside_tied / tied


def _peak_distance(peaks: np.ndarray, structure: np.ndarray, spacing: np.ndarray) -> float:
    """Smallest distance (mm) between a peak voxel and a structure voxel (0 when a peak is inside);
    equal to the pointing game's distance (a Euclidean distance transform of the structure at the peak)."""
    if len(peaks) > 8:  # a plateau of maxima: one distance transform instead of one pass per peak
        from scipy import ndimage

        distance = ndimage.distance_transform_edt(~structure, sampling=list(spacing))
        return float(distance[tuple(peaks.astype(int).T)].min())
    voxels = np.argwhere(structure).astype(np.float64)
    best = math.inf
    for peak in peaks:
        best = min(best, float(np.sqrt((((voxels - peak) * spacing) ** 2).sum(axis=1)).min()))
    return best


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return math.nan if numerator == 0 else math.inf
    return float(numerator / denominator)


def structure_statistics(
    attribution_map: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    affine: np.ndarray,
    top_fraction: float = 0.05,
    boundary_mm: float = 2.0,
) -> dict[str, list]:
    """One row of relevance statistics per structure, background (label 0) included.

    Rows follow `names`: row ``i`` is label ``i`` named ``names[i]`` (a named label absent from the
    map gets 0 voxels and NaN statistics). With ``a`` the signed map, ``S`` the structure's voxels,
    ``N`` all voxels:

    - ``voxels``, ``volume_mm3`` (voxels x voxel volume from the affine);
    - ``sum``, ``mean``, ``max``, ``p95`` of ``a`` over S; ``positive_mass`` = sum of ``max(a, 0)``
      and ``negative_mass`` = sum of ``min(a, 0)`` (<= 0; the two add up to ``sum``);
    - ``share_abs`` = sum_S |a| / sum_N |a|: the structure's share of the map's |relevance|
      (Arras, Osman & Samek 2022, "CLEVR-XAI: a benchmark dataset for the ground truth evaluation
      of neural network explanations", Information Fusion 81:14-40, define their relevance mass
      accuracy on positive relevance: that is ``share_positive``);
    - ``share_positive`` = sum_S max(a, 0) / sum_N max(a, 0): the relevance mass accuracy of
      Arras et al. 2022, the metric ``relevance_mass_accuracy`` (NaN for a map without positive
      relevance);
    - ``volume_share`` = |S| / |N|: the chance level of both shares and of ``abs_rank_accuracy``;
    - ``density_ratio`` = share_abs / volume_share: > 1 when the structure holds more relevance
      than its volume share (for a small structure it is large even when most relevance lies
      elsewhere: read it with ``abs_rank_accuracy`` and ``peak_distance_mm``);
    - ``abs_rank_accuracy``: of the K = |S| voxels with the largest |a|, the fraction inside S
      (Arras et al.'s relevance rank accuracy on |a|; the metric ``relevance_rank_accuracy``
      ranks the signed map); chance level is ``volume_share``;
    - ``peak_distance_mm``: distance (mm, between voxel centres) from the voxel of the largest a
      (the positive peak) to S, 0 inside: the distance of the pointing game of Zhang et al. 2018,
      "Top-down neural attention by excitation backprop", IJCV 126:1084-1102 (the metric
      ``pointing_game`` counts a hit when it is within its tolerance); with tied maxima, the
      closest; NaN for a map with no relevance;
    - ``top_dice``, ``top_iou``: Dice and IoU of S with the ``round(top_fraction * N)`` voxels of
      largest |a| (at least one);
    - ``boundary_interior_ratio``: mean |a| over the voxels within `boundary_mm` of S's surface
      (either side, :func:`MedXAILib.regions.boundary_band`) over mean |a| over S's interior
      (deeper than `boundary_mm`); NaN without interior voxels, inf with an interior free of
      relevance;
    - ``centre_ras_x/y/z``: the |a|-weighted centroid of S in RAS mm; ``centre_distance_mm``: its
      distance to S's (unweighted) centroid (NaN when S holds no relevance).

    Args:
        attribution_map: (I, J, K) relevance ((C, I, J, K) is summed over channels).
        labels: integer (I, J, K) label map on the same grid (0 = background).
        names: one name per label value, starting with label 0.
        affine: the grid's 4x4 IJK -> RAS matrix (mm).
        top_fraction: fraction of all voxels in the top set for ``top_dice`` / ``top_iou``.
        boundary_mm: band half-width for ``boundary_interior_ratio``.

    Returns:
        Columns :data:`STATISTIC_COLUMNS` as lists (units in :data:`STATISTIC_UNITS`).

    Raises:
        InputError: shapes differ, non-integer or negative labels, too few or repeated names, a
            bad affine or a non-finite map.
        ParameterError: `top_fraction` outside (0, 1] or a negative `boundary_mm`.
    """

    a = map3d(attribution_map)
    lab = _labels(labels, a.shape)
    names = _names(names, lab)
    affine = _affine(affine)
    top_fraction = _fraction(top_fraction, "top_fraction")
    try:
        boundary_mm = float(boundary_mm)
    except (TypeError, ValueError):
        boundary_mm = math.nan
    if not math.isfinite(boundary_mm) or boundary_mm < 0:
        raise ParameterError(f"boundary_mm must be a finite width >= 0 mm; got {boundary_mm}")
    spacing = spacing_of(affine)
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    magnitude = np.abs(a)
    total_abs = float(magnitude.sum())
    n_all = a.size
    ranking = _Ranking(magnitude)
    n_top = min(max(int(round(top_fraction * n_all)), 1), n_all)
    positive_total = float(np.clip(a, 0.0, None).sum())
    # the positive peak(s), as the pointing game takes them (none for a map without relevance)
    peaks = np.argwhere(a == a.max()).astype(np.float64) if n_all and np.any(a != 0) else np.zeros((0, 3))

    def ras(ijk: np.ndarray) -> np.ndarray:
        return affine[:3, :3] @ ijk + affine[:3, 3]

    table: dict[str, list] = {column: [] for column in STATISTIC_COLUMNS}
    for label, name in enumerate(names):
        structure = lab == label
        count = int(np.count_nonzero(structure))
        values = a[structure]
        row: dict[str, Any] = {"structure": name, "label": label, "voxels": count,
                               "volume_mm3": count * voxel_mm3}
        if count:
            row.update(sum=float(values.sum()), mean=float(values.mean()), max=float(values.max()),
                       p95=float(np.percentile(values, 95)), positive_mass=float(values[values > 0].sum()),
                       negative_mass=float(values[values < 0].sum()))
        else:
            row.update({k: math.nan for k in ("sum", "mean", "max", "p95")},
                       positive_mass=0.0, negative_mass=0.0)
        mass = float(magnitude[structure].sum())
        share = mass / total_abs if total_abs > 0 else math.nan
        row["share_abs"] = share
        row["share_positive"] = (float(np.clip(values, 0.0, None).sum()) / positive_total
                                 if count and positive_total > 0 else math.nan)
        row["volume_share"] = count / n_all if n_all else math.nan
        row["density_ratio"] = share / (count / n_all) if count and total_abs > 0 else math.nan
        row["abs_rank_accuracy"] = ranking.expected_inside(count, structure) / count if count else math.nan
        row["peak_distance_mm"] = _peak_distance(peaks, structure, spacing) if count and len(peaks) else math.nan
        overlap = ranking.expected_inside(n_top, structure)
        row["top_dice"] = 2 * overlap / (n_top + count)
        row["top_iou"] = overlap / (n_top + count - overlap)
        if 0 < count < n_all:
            band = boundary_band(structure, spacing, boundary_mm, boundary_mm)
            interior = structure & ~band
            band_mean = float(magnitude[band].mean()) if band.any() else math.nan
            row["boundary_interior_ratio"] = (_ratio(band_mean, float(magnitude[interior].mean()))
                                              if interior.any() else math.nan)
        else:
            row["boundary_interior_ratio"] = math.nan
        if count and mass > 0:
            # np.nonzero lists voxels in C order, the order of magnitude[structure]
            ijk = np.stack(np.nonzero(structure), axis=1).astype(np.float64)
            weights = magnitude[structure]
            centre = ras(weights @ ijk / weights.sum())
            centroid = ras(ijk.mean(axis=0))
            x, y, z = (float(v) for v in centre)
            row.update(centre_ras_x=x, centre_ras_y=y, centre_ras_z=z,
                       centre_distance_mm=float(np.linalg.norm(centre - centroid)))
        else:
            row.update(centre_ras_x=math.nan, centre_ras_y=math.nan, centre_ras_z=math.nan,
                       centre_distance_mm=math.nan)
        for column in STATISTIC_COLUMNS:
            table[column].append(row[column])
    return table


def relevance_volume_curves(
    attribution_map: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    n_points: int = 50,
) -> dict[str, dict[str, list]]:
    """Relevance-volume curves per structure, read like a dose-volume histogram.

    For ``n_points`` thresholds ``t_i = i / (n_points - 1) * max_N |a|`` (shared by all structures,
    so curves are comparable), structure S gets:

    - ``volume_fraction(t) = |{v in S : |a_v| >= t}| / |S|`` (1 at t = 0, like a cumulative DVH),
    - ``relevance_fraction(t) = sum_{v in S, |a_v| >= t} |a_v| / sum_N |a|``: the share of the whole
      map's |relevance| held by that sub-volume (``share_abs`` at t = 0).

    Both are non-increasing in t. A structure whose relevance fraction stays high while its
    volume fraction drops holds concentrated relevance. An absent structure has NaN volume
    fractions; a map with no relevance has NaN relevance fractions.

    Args:
        attribution_map: (I, J, K) relevance ((C, I, J, K) is summed over channels).
        labels: integer (I, J, K) label map on the same grid (0 = background).
        names: one name per label value, starting with label 0.
        n_points: thresholds per curve (>= 2).

    Returns:
        ``{name: {"threshold": [...], "volume_fraction": [...], "relevance_fraction": [...]}}`` for
        every label 0 .. len(names) - 1.

    Raises:
        InputError: see :func:`structure_statistics`.
        ParameterError: ``n_points < 2``.
    """
    a = map3d(attribution_map)
    lab = _labels(labels, a.shape)
    names = _names(names, lab)
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise ParameterError(f"n_points must be an integer >= 2; got {n_points!r}")
    magnitude = np.abs(a)
    total = float(magnitude.sum())
    thresholds = np.linspace(0.0, float(magnitude.max()) if a.size else 0.0, int(n_points))
    curves: dict[str, dict[str, list]] = {}
    for label, name in enumerate(names):
        values = np.sort(magnitude[lab == label])
        # suffix sums: mass[j] = sum of values[j:], the mass of the voxels at or above values[j]
        mass = np.concatenate([np.cumsum(values[::-1])[::-1], [0.0]])
        first = np.searchsorted(values, thresholds, side="left")  # first voxel with |a| >= t
        count = values.size - first
        volume = count / values.size if values.size else np.full(thresholds.shape, math.nan)
        relevance = mass[first] / total if total > 0 else np.full(thresholds.shape, math.nan)
        curves[name] = {"threshold": [float(t) for t in thresholds],
                        "volume_fraction": [float(v) for v in volume],
                        "relevance_fraction": [float(r) for r in relevance]}
    return curves


def compare_statistics(
    maps: Mapping[str, np.ndarray],
    labels: np.ndarray,
    names: Sequence[str],
    affine: np.ndarray,
    columns: Sequence[str] = ("share_abs", "share_positive", "density_ratio", "abs_rank_accuracy",
                              "peak_distance_mm", "top_dice"),
    top_fraction: float = 0.05,
    boundary_mm: float = 2.0,
) -> dict[str, list]:
    """Several relevance maps (methods, models, targets) side by side, one row per structure.

    Args:
        maps: ``{map label: (I, J, K) relevance}``, all on the labels' grid.
        labels, names, affine, top_fraction, boundary_mm: as :func:`structure_statistics`.
        columns: statistics to compare (any of :data:`STATISTIC_COLUMNS` but ``structure`` and
            ``label``).

    Returns:
        Columns ``structure``, ``label``, then ``"<column> · <map label>"`` for every column and,
        within it, every map in the order given.

    Raises:
        InputError: no map, or a map on another grid (see :func:`structure_statistics`).
        UnknownNameError: a column that is not a statistic (with the closest name).
    """
    from ..errors import UnknownNameError

    if not maps:
        raise InputError("compare_statistics needs at least one map")
    columns = list(columns)
    valid = [c for c in STATISTIC_COLUMNS if c not in ("structure", "label")]
    for column in columns:
        if column not in valid:
            close = difflib.get_close_matches(column, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; choose from {', '.join(valid)}"
            raise UnknownNameError(f"unknown statistic '{column}'{hint}")
    tables = {str(key): structure_statistics(value, labels, names, affine, top_fraction, boundary_mm)
              for key, value in maps.items()}
    first = next(iter(tables.values()))
    out: dict[str, list] = {"structure": list(first["structure"]), "label": list(first["label"])}
    for column in columns:
        for key, table in tables.items():
            out[f"{column}{COMPARE_SEPARATOR}{key}"] = list(table[column])
    return out


# ------------------------------------------------------------------------------------------------
# Writing


def units_for(table: Mapping[str, Sequence]) -> dict[str, str]:
    """:data:`STATISTIC_UNITS` of the table's columns (``"<column> · <map>"`` takes its column's unit)."""
    units = {}
    for column in table:
        base = column.split(COMPARE_SEPARATOR, 1)[0]
        if base in STATISTIC_UNITS:
            units[column] = STATISTIC_UNITS[base]
    return units


def _check_table(table: Mapping[str, Sequence]) -> dict[str, list]:
    if not isinstance(table, Mapping) or not table:
        raise InputError("a table needs at least one column (a dict of column name -> list)")
    columns = {}
    for key, values in table.items():
        listlike = hasattr(values, "__len__") and not isinstance(values, (str, bytes))
        if not isinstance(key, str) or not key or not listlike:
            raise InputError(f"column {key!r}: tables map non-empty names to lists of values")
        columns[key] = list(values)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise InputError(f"all columns must have the same length; got {sorted(lengths)}")
    return columns



def table_to_csv(table: Mapping[str, Sequence]) -> str:
    """CSV text of a table: a header of column names, then one line per row (NaN as ``nan``)."""
    columns = _check_table(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in zip(*columns.values()):
        writer.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else json_safe(v) for v in row])
    return buffer.getvalue()


def table_to_json(table: Mapping[str, Sequence], units: Optional[Mapping[str, str]] = None) -> str:
    """JSON text ``{"columns": [...], "units": {...}, "rows": [{column: value}, ...]}`` (NaN as null)."""
    columns = _check_table(table)
    units = units_for(columns) if units is None else {k: str(v) for k, v in units.items() if k in columns}
    rows = [{key: json_safe(value) for key, value in zip(columns, row)} for row in zip(*columns.values())]
    text = json.dumps({"columns": list(columns), "units": units, "rows": rows}, indent=1, allow_nan=False)
    return text + "\n"


def write_table_csv(table: Mapping[str, Sequence], path: str | os.PathLike) -> Path:
    """Write a table as UTF-8 CSV (see :func:`table_to_csv`), atomically; returns the path.

    Raises:
        InputError: a malformed table or an unwritable path.
    """
    return write_atomic(Path(path), table_to_csv(table))


def write_table_json(table: Mapping[str, Sequence], path: str | os.PathLike,
                     units: Optional[Mapping[str, str]] = None) -> Path:
    """Write a table as JSON (see :func:`table_to_json`), atomically; returns the path.

    Args:
        table: the columns.
        path: the JSON file.
        units: column -> unit; default :func:`units_for` the table (from :data:`STATISTIC_UNITS`).
            Units of columns not in the table are left out.

    Raises:
        InputError: a malformed table or an unwritable path.
    """
    return write_atomic(Path(path), table_to_json(table, units))
