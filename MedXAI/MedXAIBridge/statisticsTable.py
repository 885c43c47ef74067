"""Relevance statistics and boundary profiles as MRML table and plot nodes (Qt-free).

- :func:`statisticsTableNode`: a table from :func:`MedXAILib.statistics.structure_statistics`
  (or :func:`~MedXAILib.statistics.compare_statistics`) with typed columns and unit labels;
- :func:`profilePlotChartNode`: a plot chart of a :func:`MedXAILib.boundary.relevance_profile`,
  one line per statistic (mean and percentiles) against the signed distance to the surface.

Every call creates NEW nodes in the given scene and modifies no existing node.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import slicer

from MedXAILib.errors import InputError
from MedXAILib.analysis.statistics import COMPARE_SEPARATOR, STATISTIC_UNITS

from .tables import tableNodeFromColumns

__all__ = ["statisticsTableNode", "profilePlotChartNode", "PROFILE_SERIES"]

#: Profile columns drawn by :func:`profilePlotChartNode`, with their colours (RGB 0..1) and line styles.
PROFILE_SERIES = (
    ("mean", (0.84, 0.15, 0.16), "solid"),
    ("p5", (0.62, 0.78, 0.94), "dot"),
    ("p25", (0.25, 0.55, 0.85), "dash"),
    ("p50", (0.12, 0.47, 0.71), "solid"),
    ("p75", (0.25, 0.55, 0.85), "dash"),
    ("p95", (0.62, 0.78, 0.94), "dot"),
)
_LINE_STYLES = {"solid": "LineStyleSolid", "dash": "LineStyleDash", "dot": "LineStyleDot"}


def _unitsFor(columns: Sequence[str], units: Optional[Mapping[str, str]]) -> dict[str, str]:
    """The units of the table's columns; ``"<column> · <map>"`` takes its column's unit."""
    found = {}
    for column in columns:
        base = column.split(COMPARE_SEPARATOR, 1)[0]
        for key in (column, base):
            if units and key in units:
                found[column] = str(units[key])
                break
    return found


def statisticsTableNode(scene, table: Mapping[str, Sequence], name: str,
                        units: Optional[Mapping[str, str]] = STATISTIC_UNITS):
    """A NEW ``vtkMRMLTableNode`` holding a statistics table, one typed column per entry.

    Args:
        scene: the ``vtkMRMLScene`` to add the node to (take it from a node: ``node.GetScene()``).
        table: columns as returned by ``structure_statistics``, ``compare_statistics`` or
            ``relevance_profile`` (any ``dict[str, list]`` of equal-length columns).
        name: the node name.
        units: column -> unit label (default :data:`MedXAILib.statistics.STATISTIC_UNITS`); units
            of columns not in the table are ignored, and comparison columns
            ``"<column> · <map>"`` take their column's unit.

    Returns:
        The table node: names -> string column, integers and booleans -> int columns, other
        numbers -> double columns (NaN kept); unit labels set per column.

    Raises:
        InputError: no scene, an empty or ragged table (see
            :func:`MedXAIBridge.tables.tableNodeFromColumns`).
    """
    if not isinstance(table, Mapping):
        raise InputError(f"a statistics table is a dict of column name -> list; got {type(table).__name__}")
    node = tableNodeFromColumns(scene, name, table, units=_unitsFor(list(table), units))
    node.SetAttribute("MedXAI.Result", "statistics")
    return node


def profilePlotChartNode(scene, profileTable: Mapping[str, Sequence], name: str):
    """A NEW ``vtkMRMLPlotChartNode`` showing a relevance profile across a structure's surface.

    A new table node (``"<name> table"``) holds the profile; one line plot series per statistic
    of :data:`PROFILE_SERIES` present in it (``mean``, ``p5`` .. ``p95``) plots it against
    ``distance_mm`` (negative inside the structure, positive outside).

    Args:
        scene: the ``vtkMRMLScene`` to add the nodes to.
        profileTable: columns from :func:`MedXAILib.boundary.relevance_profile`.
        name: the chart name (also the prefix of the table and series node names).

    Returns:
        The chart node; its series nodes reference the table node.

    Raises:
        InputError: no scene, no ``distance_mm`` column, or none of the statistics to plot.
    """
    if scene is None:
        raise InputError("no scene was given to create the plot in")
    if not isinstance(profileTable, Mapping) or "distance_mm" not in profileTable:
        raise InputError("a profile needs a 'distance_mm' column (MedXAILib.boundary.relevance_profile)")
    present = [series for series in PROFILE_SERIES if series[0] in profileTable]
    if not present:
        raise InputError("the profile has none of the columns " + ", ".join(s[0] for s in PROFILE_SERIES))
    tableNode = statisticsTableNode(scene, profileTable, f"{name} table")
    tableNode.SetAttribute("MedXAI.Result", "profile")
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle("signed distance to the surface (mm; < 0 inside)")
    chart.SetYAxisTitle("relevance")
    for column, colour, style in present:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {column}")
        series.SetAndObserveTableNodeID(tableNode.GetID())
        series.SetXColumnName("distance_mm")
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)  # scatter + lines = x-y line plot
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetLineStyle(getattr(slicer.vtkMRMLPlotSeriesNode, _LINE_STYLES[style]))
        series.SetColor(*colour)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetAttribute("MedXAI.Result", "profile")
    return chart
