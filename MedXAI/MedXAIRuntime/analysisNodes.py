"""Result nodes of the Boundary, Statistics, Evaluate and Counterfactual panels (MRML only, no Qt).

Every function creates NEW nodes and never modifies the nodes it reads (DESIGN.md). Volumes on the
input grid (uncertainty maps, counterfactual and difference volumes) are made with the Bridge's
:func:`MedXAIBridge.results.createAttributionNode`, so they get the input's geometry, its parent
transform, the subject-hierarchy "MedXAI" folder, a reference to the input and their provenance;
their ``MedXAI.Result`` attribute then says what they are (:data:`RESULT_KINDS`), which keeps them
out of the attribution selectors. Tables get typed columns and units; plots are plot series over a
table. The scene is always taken from a node or passed in, so all of this runs under slicer-core.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from MedXAILib.errors import InputError

__all__ = [
    "RESULT_ATTRIBUTE",
    "INPUT_REFERENCE",
    "RESULT_KINDS",
    "createVolumeResult",
    "removeTaggedNodes",
    "nodesByAttribute",
    "tableNode",
    "columnsFromTableNode",
    "plotChartNode",
    "finiteOrNone",
]

RESULT_ATTRIBUTE = "MedXAI.Result"  # MedXAIBridge.results.RESULT_ATTRIBUTE
INPUT_REFERENCE = "MedXAI.InputVolume"  # set by MedXAIBridge.results.createAttributionNode
#: Values of ``MedXAI.Result`` for the volumes these panels create.
RESULT_KINDS = ("uncertainty", "counterfactual", "difference")


def createVolumeResult(volume: Any, inputVolumeNode: Any, name: str, kind: str,
                       provenance: Optional[Mapping[str, Any]] = None, attributes: Optional[Mapping[str, str]] = None):
    """A NEW scalar volume node holding `volume` (an ImageVolume on the input's grid) as a `kind` result.

    Raises:
        InputError: an unknown kind, or no input volume.
        GeometryError: `volume` is not on the input volume's grid.
    """
    from MedXAIBridge import results

    from MedXAILib.attribution import Attribution

    if kind not in RESULT_KINDS:
        raise InputError(f"unknown result kind {kind!r}; use one of {', '.join(RESULT_KINDS)}")
    if inputVolumeNode is None:
        raise InputError("no input volume was given for the result")
    array = np.asarray(volume.array, dtype=np.float32)
    node = results.createAttributionNode(
        Attribution(array=array, affine=np.asarray(volume.affine), provenance=dict(provenance or {})),
        inputVolumeNode, name=name)
    node.SetAttribute(RESULT_ATTRIBUTE, kind)
    node.SetAttribute("MedXAI.Method", kind)
    for key, value in (attributes or {}).items():
        node.SetAttribute(key, str(value))
    return node


def nodesByAttribute(scene: Any, className: str, attribute: str, value: Optional[str] = None) -> list:
    """Nodes of `className` in `scene` whose `attribute` is set (to `value`, when given)."""
    from MedXAIBridge.nodes import nodesByClass

    found = []
    for node in nodesByClass(scene, className):
        current = node.GetAttribute(attribute)
        if current is not None and (value is None or current == value):
            found.append(node)
    return found


def removeTaggedNodes(scene: Any, className: str, attribute: str, value: str) -> int:
    """Remove the nodes of `className` tagged ``attribute == value`` (an overlay being replaced); returns how many."""
    old = nodesByAttribute(scene, className, attribute, value)
    for node in old:
        scene.RemoveNode(node)
    return len(old)


def finiteOrNone(value: Any) -> Any:
    """A table cell: numpy scalars unwrapped, non-finite floats as None (shown as NaN / empty)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def tableNode(scene: Any, name: str, columns: Mapping[str, Sequence], units: Optional[Mapping[str, str]] = None):
    """A NEW typed table node from ``{column: values}``, with column units (default: the statistics units).

    Booleans become integer columns (0/1, which Slicer tables show and plot); units default to
    :data:`MedXAILib.statistics.STATISTIC_UNITS` for the columns it knows.
    """
    from MedXAIBridge import tables

    from MedXAILib.analysis.statistics import units_for

    converted = {}
    for key, values in columns.items():
        values = list(values)
        if values and all(isinstance(v, (bool, np.bool_)) for v in values):
            values = [int(v) for v in values]
        converted[key] = values
    if units is None:
        units = {k: v for k, v in units_for(converted).items() if v}
    else:
        units = {k: v for k, v in units.items() if k in converted and v}
    return tables.tableNodeFromColumns(scene, name, converted, units=units)


def columnsFromTableNode(node: Any) -> dict[str, list]:
    """The columns of a table node as ``{name: values}`` (numbers as floats/ints, the rest as text)."""
    if node is None or node.GetTable() is None:
        raise InputError("no table was given")
    table = node.GetTable()
    out: dict[str, list] = {}
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        values = []
        for r in range(table.GetNumberOfRows()):
            if column.IsNumeric():
                values.append(column.GetTuple1(r) if column.GetNumberOfComponents() == 1 else column.GetValue(r))
            else:
                values.append(column.GetValue(r))
        out[column.GetName()] = values
    return out


def plotChartNode(scene: Any, table: Any, xColumn: str, yColumns: Sequence[str], name: str,
                  xTitle: str = "", yTitle: str = "", seriesNames: Optional[Sequence[str]] = None):
    """A NEW plot chart node with one line series per `yColumns` entry over `table` (x: `xColumn`).

    Raises:
        InputError: a column that the table does not have.
    """
    import slicer

    have = {table.GetTable().GetColumn(c).GetName() for c in range(table.GetTable().GetNumberOfColumns())}
    missing = [c for c in [xColumn, *yColumns] if c not in have]
    if missing:
        raise InputError(f"the table '{table.GetName()}' has no column(s) {', '.join(missing)}")
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle(xTitle or xColumn)
    chart.SetYAxisTitle(yTitle)
    for index, column in enumerate(yColumns):
        label = seriesNames[index] if seriesNames and index < len(seriesNames) else column
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", label)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(xColumn)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetUniqueColor()
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart
