"""Statistics tables and boundary-profile charts as MRML nodes (slicer-core)."""

from __future__ import annotations

import math

import mrmlTesting  # noqa: F401  (skips these tests without slicer-core)
import numpy as np
import pytest

import vtk
from MedXAIBridge.statisticsTable import PROFILE_SERIES, profilePlotChartNode, statisticsTableNode
from MedXAILib.analysis.boundary import relevance_profile
from MedXAILib.errors import InputError
from MedXAILib.analysis.statistics import STATISTIC_COLUMNS, compare_statistics, structure_statistics

pytestmark = pytest.mark.mrml


def _labels() -> np.ndarray:
    labels = np.zeros((12, 10, 8), np.int64)
    labels[2:6, 2:6, 2:6] = 1
    labels[8:11, 6:9, 3:6] = 2
    return labels


def _column(node, name):
    return node.GetTable().GetColumnByName(name)


def test_statistics_table_has_typed_columns_and_units(scene):
    labels = _labels()
    relevance = np.where(labels == 1, 1.0, 0.0)
    table = structure_statistics(relevance, labels, ["background", "liver", "tumour"], np.diag([0.8, 0.8, 2.0, 1]))
    node = statisticsTableNode(scene, table, "Relevance per structure")

    assert node.IsA("vtkMRMLTableNode") and node.GetName() == "Relevance per structure"
    assert [node.GetColumnName(i) for i in range(node.GetNumberOfColumns())] == list(STATISTIC_COLUMNS)
    assert node.GetNumberOfRows() == 3
    assert node.GetColumnType("structure") == vtk.VTK_STRING
    assert node.GetColumnType("label") == vtk.VTK_INT and node.GetColumnType("voxels") == vtk.VTK_INT
    for name in ("volume_mm3", "share_abs", "abs_rank_accuracy", "peak_distance_mm", "top_dice", "centre_distance_mm"):
        assert node.GetColumnType(name) == vtk.VTK_DOUBLE, name
    assert node.GetColumnUnitLabel("volume_mm3") == "mm3" and node.GetColumnUnitLabel("centre_ras_x") == "mm"
    assert node.GetColumnUnitLabel("voxels") == "voxels" and node.GetColumnUnitLabel("share_abs") == ""
    assert node.GetColumnUnitLabel("peak_distance_mm") == "mm"
    assert [_column(node, "structure").GetValue(i) for i in range(3)] == ["background", "liver", "tumour"]
    assert _column(node, "share_abs").GetValue(1) == 1.0 and _column(node, "peak_distance_mm").GetValue(1) == 0
    assert _column(node, "volume_mm3").GetValue(1) == pytest.approx(64 * 0.8 * 0.8 * 2.0)
    assert math.isnan(_column(node, "centre_ras_x").GetValue(2))  # no relevance in the tumour
    assert node.GetAttribute("MedXAI.Result") == "statistics"


def test_comparison_columns_take_their_statistic_units(scene):
    labels = _labels()
    maps = {"IG": np.where(labels == 2, 2.0, 0.1), "Saliency": np.ones(labels.shape)}
    table = compare_statistics(maps, labels, ["bg", "a", "b"], np.eye(4), columns=("share_abs", "centre_distance_mm"))
    node = statisticsTableNode(scene, table, "Comparison")
    assert node.GetNumberOfColumns() == 6
    assert node.GetColumnUnitLabel("centre_distance_mm · IG") == "mm"
    assert node.GetColumnUnitLabel("share_abs · Saliency") == ""
    assert _column(node, "share_abs · Saliency").GetValue(1) == pytest.approx(64 / labels.size)
    plain = statisticsTableNode(scene, table, "No units", units=None)
    assert plain.GetColumnUnitLabel("centre_distance_mm · IG") == ""


def test_profile_chart_plots_mean_and_percentiles_against_distance(scene):
    labels = _labels()
    rng = np.random.default_rng(0)
    profile = relevance_profile(rng.normal(size=labels.shape), labels == 1, (1.0, 1.0, 2.0), bin_mm=1.0, max_mm=4.0)
    before = scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    chart = profilePlotChartNode(scene, profile, "Liver boundary profile")

    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetName() == "Liver boundary profile"
    assert chart.GetNumberOfPlotSeriesNodes() == len(PROFILE_SERIES) == 6
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == before + 1
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [s.GetYColumnName() for s in series] == ["mean", "p5", "p25", "p50", "p75", "p95"]
    assert all(s.GetXColumnName() == "distance_mm" for s in series)
    table = series[0].GetTableNode()
    assert table is not None and all(s.GetTableNodeID() == table.GetID() for s in series)
    assert table.GetNumberOfRows() == 8 and table.GetColumnUnitLabel("distance_mm") == "mm"
    distances = [_column(table, "distance_mm").GetValue(i) for i in range(8)]
    assert distances == profile["distance_mm"]
    assert [_column(table, "voxels").GetValue(i) for i in range(8)] == profile["voxels"]
    assert "distance" in chart.GetXAxisTitle()


def test_refusals(scene):
    with pytest.raises(InputError, match="distance_mm"):
        profilePlotChartNode(scene, {"mean": [1.0]}, "p")
    with pytest.raises(InputError, match="none of the columns"):
        profilePlotChartNode(scene, {"distance_mm": [0.5]}, "p")
    with pytest.raises(InputError, match="scene"):
        profilePlotChartNode(None, {"distance_mm": [0.5], "mean": [1.0]}, "p")
    with pytest.raises(InputError, match="same length"):
        statisticsTableNode(scene, {"structure": ["a", "b"], "voxels": [1]}, "t")
