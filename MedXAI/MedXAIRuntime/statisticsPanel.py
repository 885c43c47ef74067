"""The Statistics section: relevance statistics per structure, comparisons and relevance-volume curves.

The segments of a segmentation are the structures (label n + 1 for segment n, on the attribution's
grid, :func:`MedXAIBridge.segments.labelMapFromSegmentation`; where segments overlap, the later one
wins). :func:`MedXAILib.statistics.structure_statistics` gives one row per structure (background
first): share of |relevance|, density ratio, rank accuracy, pointing game, top-k Dice/IoU,
boundary-to-interior ratio, ...; with "Compare results" every MedXAI result on the same grid is
measured side by side (:func:`~MedXAILib.statistics.compare_statistics`). Tables become typed table
nodes with units (:func:`MedXAIBridge.statisticsTable.statisticsTableNode`) shown in the view
layout; relevance-volume curves (:func:`~MedXAILib.statistics.relevance_volume_curves`, read like a
dose-volume histogram) become a plot.

Everything but :class:`StatisticsSection` is Qt-free.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from MedXAILib.errors import InputError

from . import analysisNodes

__all__ = [
    "BACKGROUND_NAME",
    "structureNames",
    "uniqueNames",
    "curvesToColumns",
    "labelsForAttribution",
    "comparableResults",
    "computeStatistics",
    "showStatistics",
    "computeCurves",
    "showCurves",
    "StatisticsSection",
]

BACKGROUND_NAME = "(outside all segments)"
CURVE_POINTS = 50


def uniqueNames(names: Sequence[str]) -> list[str]:
    """`names` with repeats numbered (``"liver"``, ``"liver (2)"``) and blanks named ``"unnamed"``.

    Slicer allows segments (and nodes) with equal names; the statistics tables need unique ones.
    """
    out: list[str] = []
    for name in names:
        base = str(name).strip() or "unnamed"
        candidate, n = base, 1
        while candidate in out:
            n += 1
            candidate = f"{base} ({n})"
        out.append(candidate)
    return out


def structureNames(segmentNames: Sequence[str]) -> list[str]:
    """One name per label value for the library: the background first, then the segments (unique)."""
    return uniqueNames([BACKGROUND_NAME, *segmentNames])


def curvesToColumns(curves: Mapping[str, Mapping[str, Sequence[float]]],
                    skip: Sequence[str] = (BACKGROUND_NAME,)) -> dict[str, list]:
    """Relevance-volume curves as table columns: ``threshold``, then per structure its two fractions.

    Columns are ``"volume_fraction · <structure>"`` and ``"relevance_fraction · <structure>"``
    (:data:`MedXAILib.statistics.COMPARE_SEPARATOR`, so the table's units follow the statistics').

    Raises:
        InputError: no curve left, or curves with different thresholds.
    """
    from MedXAILib.analysis.statistics import COMPARE_SEPARATOR

    kept = {name: curve for name, curve in curves.items() if name not in skip}
    if not kept:
        raise InputError("there is no structure to plot: the segmentation has no segment")
    thresholds = [list(curve["threshold"]) for curve in kept.values()]
    if any(t != thresholds[0] for t in thresholds):
        raise InputError("the curves do not share their thresholds")
    columns: dict[str, list] = {"threshold": thresholds[0]}
    for key in ("volume_fraction", "relevance_fraction"):
        for name, curve in kept.items():
            columns[f"{key}{COMPARE_SEPARATOR}{name}"] = list(curve[key])
    return columns


# ------------------------------------------------------------------------------------------------
# Logic


def _attributionOf(p: Any) -> Any:
    node = p.statisticsAttribution or p.outputVolume
    if node is None:
        raise InputError("Select the attribution volume to measure (a MedXAI result).")
    return node


def labelsForAttribution(segmentationNode: Any, attributionNode: Any) -> tuple[np.ndarray, list[str]]:
    """The segments as labels on the attribution's grid, and the structure names (background first).

    Raises:
        InputError: no segmentation, or one without segments.
    """
    from MedXAIBridge import segments

    if segmentationNode is None:
        raise InputError("Select the segmentation whose segments are the structures.")
    labels, names = segments.labelMapFromSegmentation(segmentationNode, attributionNode)
    if not names:
        raise InputError(f"the segmentation '{segmentationNode.GetName()}' has no segment")
    return labels, structureNames(names)


def comparableResults(attributionNode: Any) -> list:
    """The MedXAI attribution results on the same grid as `attributionNode` (it first), by name."""
    from MedXAIBridge import volumes

    reference = volumes.imageVolumeFromNode(attributionNode)
    found = [attributionNode]
    for node in analysisNodes.nodesByAttribute(attributionNode.GetScene(), "vtkMRMLScalarVolumeNode",
                                               analysisNodes.RESULT_ATTRIBUTE, "attribution"):
        if node is attributionNode or node.GetImageData() is None:
            continue
        if volumes.imageVolumeFromNode(node).same_grid(reference):
            found.append(node)
    return found


def computeStatistics(p: Any) -> tuple[dict[str, list], Any]:
    """The statistics table of the section's settings, and the attribution node it measures."""
    from MedXAIBridge import volumes

    from MedXAILib.analysis.statistics import compare_statistics, structure_statistics

    attribution = _attributionOf(p)
    labels, names = labelsForAttribution(p.statisticsSegmentation, attribution)
    volume = volumes.imageVolumeFromNode(attribution)
    top, boundary = float(p.statisticsTopPercent) / 100.0, float(p.statisticsBoundaryMm)
    if not p.statisticsCompareResults:
        return structure_statistics(volume.array, labels, names, volume.affine, top, boundary), attribution
    nodes = comparableResults(attribution)
    keys = uniqueNames([node.GetName() for node in nodes])
    maps = {key: volumes.imageVolumeFromNode(node).array for key, node in zip(keys, nodes)}
    return compare_statistics(maps, labels, names, volume.affine, top_fraction=top, boundary_mm=boundary), attribution


def showStatistics(p: Any, table: Mapping[str, Sequence], attributionNode: Any):
    """A NEW table node with `table`; ``p.statisticsTable`` becomes it."""
    from MedXAIBridge.statisticsTable import statisticsTableNode

    what = "comparison" if p.statisticsCompareResults else "statistics"
    node = statisticsTableNode(attributionNode.GetScene(), table,
                               f"{attributionNode.GetName()} · {what} per {p.statisticsSegmentation.GetName()}")
    node.SetNodeReferenceID("MedXAI.Attribution", attributionNode.GetID())
    p.statisticsTable = node
    return node


def computeCurves(p: Any) -> tuple[dict[str, list], Any]:
    """The relevance-volume curves of the selected attribution as table columns (background left out)."""
    from MedXAIBridge import volumes

    from MedXAILib.analysis.statistics import relevance_volume_curves

    attribution = _attributionOf(p)
    labels, names = labelsForAttribution(p.statisticsSegmentation, attribution)
    curves = relevance_volume_curves(volumes.imageVolumeFromNode(attribution).array, labels, names, CURVE_POINTS)
    return curvesToColumns(curves), attribution


def showCurves(columns: Mapping[str, Sequence], attributionNode: Any):
    """NEW table and chart nodes: volume fraction against |relevance| threshold, one line per structure."""
    from MedXAILib.analysis.statistics import COMPARE_SEPARATOR

    scene = attributionNode.GetScene()
    name = f"{attributionNode.GetName()} · relevance-volume curves"
    table = analysisNodes.tableNode(scene, f"{name} table", columns)
    prefix = "volume_fraction" + COMPARE_SEPARATOR
    series = [c for c in columns if c.startswith(prefix)]
    return analysisNodes.plotChartNode(scene, table, "threshold", series, name, xTitle="|relevance| threshold",
                                       yTitle="fraction of the structure's volume",
                                       seriesNames=[c[len(prefix):] for c in series])


# ------------------------------------------------------------------------------------------------
# The Qt part


class StatisticsSection:
    """Connects the Statistics section of MedXAI.ui to the functions above (the widget is the `host`)."""

    def __init__(self, host: Any):
        self.host = host
        ui = host.ui
        ui.statisticsAttributionSelector.addAttribute("vtkMRMLScalarVolumeNode", analysisNodes.RESULT_ATTRIBUTE,
                                                      "attribution")
        ui.statisticsTableSelector.addAttribute("vtkMRMLTableNode", analysisNodes.RESULT_ATTRIBUTE, "statistics")
        ui.statisticsApplyButton.connect("clicked(bool)", self.onApply)
        ui.statisticsCurvesButton.connect("clicked(bool)", self.onCurves)

    def updateGUI(self, p: Any) -> None:
        ui = self.host.ui
        ready = not self.host.busy() and (p.statisticsAttribution or p.outputVolume) is not None \
            and p.statisticsSegmentation is not None
        ui.statisticsApplyButton.enabled = ready
        ui.statisticsCurvesButton.enabled = ready

    def onApply(self) -> None:
        import slicer

        from . import layouts

        p = self.host.parameterNode()
        try:
            with slicer.util.WaitCursor():
                table, attribution = computeStatistics(p)
                node = showStatistics(p, table, attribution)
                layouts.showTableInLayout(node)
        except Exception as error:
            self.host.showError("The statistics could not be computed.", error)
            return
        self.host.setStatus(f"Statistics: {node.GetName()}")

    def onCurves(self) -> None:
        import slicer

        from . import layouts

        p = self.host.parameterNode()
        try:
            with slicer.util.WaitCursor():
                columns, attribution = computeCurves(p)
                chart = showCurves(columns, attribution)
                layouts.showChartInLayout(chart)
        except Exception as error:
            self.host.showError("The relevance-volume curves could not be computed.", error)
            return
        self.host.setStatus(f"Curves: {chart.GetName()}")
