"""The panels' logic on real MRML nodes (slicer-core): result nodes, tables, plots, outlines and view layers.

Inputs are made the Slicer way (``Testing/Bridge/mrmlTesting.py``: ``updateVolumeFromArray`` and
an oblique, anisotropic IJK -> RAS matrix); values read back from the nodes are compared with the
library run directly on the arrays. The parameter node is a plain namespace with the fields of
``MedXAIParameterNode`` (its wrapper needs Slicer's Python; ``slicer_module_harness.py`` runs the
real one).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

import runtime_paths

sys.path.insert(0, str(runtime_paths.ROOT / "Testing" / "Bridge"))
import mrmlTesting  # noqa: E402  (the Bridge tests' scene and volume helpers; needs slicer-core)

from MedXAILib import ImageVolume  # noqa: E402
from MedXAILib.attribution import Attribution  # noqa: E402
from MedXAIRuntime import (  # noqa: E402
    analysisNodes,
    boundaryPanel,
    counterfactualPanel,
    evaluatePanel,
    layouts,
    statisticsPanel,
)
from MedXAILib.runs import RunResult  # noqa: E402

pytestmark = pytest.mark.mrml

SHAPE = (16, 14, 10)


def parameters(**changes) -> SimpleNamespace:
    p = SimpleNamespace(
        inputVolume=None, outputVolume=None, opacity=0.5,
        boundarySegmentation=None, boundarySegmentId="", boundaryClass=1, boundaryInnerMm=2.0, boundaryOuterMm=3.0,
        boundaryScore="margin", boundaryBinMm=1.0, boundaryMaxMm=6.0, boundaryFlips=True, boundaryDropoutSamples=0,
        boundaryUncertaintyMap="entropy", boundaryUncertaintyLevel=0.5, boundaryProfileTable=None,
        boundaryUncertaintyVolume=None, statisticsAttribution=None, statisticsSegmentation=None,
        statisticsTopPercent=5.0, statisticsBoundaryMm=2.0, statisticsCompareResults=False, statisticsTable=None,
        evaluateTable=None, counterfactualVolume=None)
    for key, value in changes.items():
        setattr(p, key, value)
    return p


@pytest.fixture
def scene():
    scene = mrmlTesting.newScene()
    yield scene
    scene.Clear(True)


@pytest.fixture
def setup(scene):
    """An oblique input, a two-segment segmentation on it, and an attribution result."""
    from MedXAIBridge import results, segments

    affine = mrmlTesting.obliqueAffine(spacing=(1.2, 0.8, 2.0))
    rng = np.random.default_rng(1)
    image = rng.normal(size=SHAPE).astype(np.float32) * 100 + 40
    inputNode = mrmlTesting.addVolumeNode(scene, image, affine, "CT")
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:10, 3:9, 3:7] = 1
    labels[11:14, 2:5, 1:3] = 2
    segmentation = segments.segmentationNodeFromLabelMap(scene, labels, inputNode, ["tumour", "vessel"], "anatomy")
    attribution = rng.normal(size=SHAPE).astype(np.float32)
    attribution[labels == 1] += 3.0
    resultNode = results.createAttributionNode(
        Attribution(array=attribution[np.newaxis], affine=affine, provenance={"method": "saliency"}), inputNode)
    ids = [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(2)]
    return SimpleNamespace(affine=affine, image=image, inputNode=inputNode, labels=labels, segmentation=segmentation,
                           segmentIds=ids, attribution=attribution, resultNode=resultNode)


def _compositeNodes(scene, names):
    import slicer

    nodes = {}
    for name in names:
        node = slicer.vtkMRMLSliceCompositeNode()
        node.SetLayoutName(name)
        scene.AddNode(node)
        nodes[name] = node
    return nodes


# ------------------------------------------------------------------------------------------------
# Boundary


def test_profile_from_nodes_equals_the_library_on_the_arrays(setup):
    from MedXAILib.analysis.boundary import relevance_profile
    from MedXAILib.volume import spacing_of

    p = parameters(boundarySegmentation=setup.segmentation, boundarySegmentId=setup.segmentIds[0])
    profile = boundaryPanel.computeProfile(p, setup.resultNode)
    reference = relevance_profile(setup.attribution, setup.labels == 1, spacing_of(setup.affine), 1.0, 6.0)
    assert profile["distance_mm"] == reference["distance_mm"] and profile["voxels"] == reference["voxels"]
    np.testing.assert_allclose(profile["mean"], reference["mean"], rtol=1e-6, equal_nan=True)

    chart = boundaryPanel.showProfile(p, setup.resultNode, profile)
    table = p.boundaryProfileTable
    assert table is not None and chart.GetNumberOfPlotSeriesNodes() == 6
    columns = analysisNodes.columnsFromTableNode(table)
    np.testing.assert_allclose(columns["distance_mm"], reference["distance_mm"])
    assert table.GetColumnUnitLabel("distance_mm") == "mm"
    with pytest.raises(Exception, match="segment"):
        boundaryPanel.computeProfile(parameters(), setup.resultNode)


def test_uncertainty_nodes_overlay_and_outlines(setup, scene):
    from MedXAIBridge import segments
    from MedXAILib.volume import spacing_of

    probability = np.zeros(SHAPE, np.float32)
    probability[4:10, 3:9, 3:7] = 0.9
    entropy = np.zeros(SHAPE, np.float32)
    entropy[4, 3:9, 3:7] = 0.69  # the structure's first layer is uncertain
    maps = {"probability": probability, "entropy": entropy, "variance": entropy / 10}
    volumes = {k: ImageVolume(v[np.newaxis], setup.affine) for k, v in maps.items()}
    p = parameters(inputVolume=setup.inputNode)
    nodes = boundaryPanel.showUncertainty(p, RunResult(volumes=volumes, data={"class_index": 1}), setup.inputNode)
    assert p.boundaryUncertaintyVolume is nodes["entropy"]
    assert nodes["entropy"].GetAttribute(analysisNodes.RESULT_ATTRIBUTE) == "uncertainty"
    np.testing.assert_allclose(mrmlTesting.ijkArray(nodes["variance"]), maps["variance"])
    np.testing.assert_allclose(mrmlTesting.ijkToRasOf(nodes["entropy"]), setup.affine, atol=1e-9)
    assert boundaryPanel.uncertaintyNodeFor(nodes["entropy"], "probability") is nodes["probability"]
    assert boundaryPanel.uncertaintyNodeFor(nodes["probability"], "probability") is nodes["probability"]

    composites = _compositeNodes(scene, ["Red", "Yellow"])
    for _ in range(2):  # shown twice: the outlines are replaced, not added
        shown = boundaryPanel.showBoundaryOverlay(p, setup.inputNode, setup.resultNode, nodes["entropy"])
    assert shown["views"] == 2
    assert composites["Red"].GetForegroundVolumeID() == setup.resultNode.GetID()
    assert composites["Red"].GetBackgroundVolumeID() == setup.inputNode.GetID()
    outlines = analysisNodes.nodesByAttribute(scene, "vtkMRMLSegmentationNode", boundaryPanel.OUTLINE_ATTRIBUTE)
    assert len(outlines) == 2
    # without a segment, the structure is the ensemble's predicted one (probability >= 0.5)
    labels, names = segments.labelMapFromSegmentation(shown["band"], setup.inputNode)
    expected = boundaryPanel.bandLabelMap(probability >= 0.5, spacing_of(setup.affine), 2.0, 3.0)
    np.testing.assert_array_equal(labels, expected)
    assert names == list(boundaryPanel.BAND_LABELS)
    uncertain, _ = segments.labelMapFromSegmentation(shown["uncertain"], setup.inputNode)
    np.testing.assert_array_equal(uncertain > 0, entropy >= 0.5 * entropy.max())
    assert not shown["band"].GetDisplayNode().GetVisibility2DFill()

    # the selected segment wins over the predicted structure
    p.boundarySegmentation, p.boundarySegmentId = setup.segmentation, setup.segmentIds[1]
    shown = boundaryPanel.showBoundaryOverlay(p, setup.inputNode, None, nodes["entropy"])
    labels, _ = segments.labelMapFromSegmentation(shown["band"], setup.inputNode)
    np.testing.assert_array_equal(labels, boundaryPanel.bandLabelMap(setup.labels == 2, spacing_of(setup.affine),
                                                                     2.0, 3.0))
    assert composites["Yellow"].GetForegroundVolumeID() == nodes["entropy"].GetID()
    with pytest.raises(Exception, match="Nothing to show"):
        boundaryPanel.showBoundaryOverlay(p, setup.inputNode, None, None)


# ------------------------------------------------------------------------------------------------
# Statistics


def test_statistics_table_equals_the_library_and_compares_results_on_the_same_grid(setup, scene):
    from MedXAIBridge import results
    from MedXAILib.analysis.statistics import structure_statistics

    p = parameters(statisticsAttribution=setup.resultNode, statisticsSegmentation=setup.segmentation)
    table, attribution = statisticsPanel.computeStatistics(p)
    names = [statisticsPanel.BACKGROUND_NAME, "tumour", "vessel"]
    reference = structure_statistics(setup.attribution, setup.labels, names, setup.affine, 0.05, 2.0)
    assert table["structure"] == names and attribution is setup.resultNode
    for column in ("share_abs", "density_ratio", "abs_rank_accuracy", "volume_mm3"):
        np.testing.assert_allclose(table[column], reference[column], rtol=1e-6)
    assert table["share_abs"][1] > table["share_abs"][2]  # relevance was put into the tumour
    node = statisticsPanel.showStatistics(p, table, attribution)
    assert p.statisticsTable is node and node.GetAttribute("MedXAI.Result") == "statistics"
    assert node.GetTable().GetNumberOfRows() == 3 and node.GetColumnUnitLabel("volume_mm3") == "mm3"

    second = results.createAttributionNode(
        Attribution(array=-setup.attribution[np.newaxis], affine=setup.affine, provenance={"method": "x"}),
        setup.inputNode, name="negated")
    other = mrmlTesting.addVolumeNode(scene, np.ones((4, 4, 4), np.float32), np.eye(4), "elsewhere")
    other.SetAttribute("MedXAI.Result", "attribution")
    assert statisticsPanel.comparableResults(setup.resultNode) == [setup.resultNode, second]
    p.statisticsCompareResults = True
    compared, _ = statisticsPanel.computeStatistics(p)
    key = f"share_abs · {setup.resultNode.GetName()}"
    np.testing.assert_allclose(compared[key], reference["share_abs"], rtol=1e-6)
    np.testing.assert_allclose(compared["share_abs · negated"], reference["share_abs"], rtol=1e-6)  # |a| is the same

    columns, _ = statisticsPanel.computeCurves(p)
    chart = statisticsPanel.showCurves(columns, setup.resultNode)
    assert chart.GetNumberOfPlotSeriesNodes() == 2  # tumour and vessel; the background is left out
    assert [chart.GetNthPlotSeriesNode(i).GetName() for i in range(2)] == ["tumour", "vessel"]
    with pytest.raises(Exception, match="segmentation"):
        statisticsPanel.computeStatistics(parameters(statisticsAttribution=setup.resultNode))


# ------------------------------------------------------------------------------------------------
# Counterfactual and evaluation


def test_counterfactual_nodes_and_comparison_views(setup, scene):
    change = np.zeros(SHAPE, np.float32)
    change[5:8, 4:7, 4:6] = -50.0
    data = {"before": {"task": "classification", "probabilities": [0.3, 0.7], "predicted_class": 1},
            "after": {"task": "classification", "probabilities": [0.8, 0.2], "predicted_class": 0},
            "metrics": {"validity": {"reached": True}},
            "provenance": {"generator": "gradient_search", "generator_title": "Gradient search",
                           "goal": {"kind": "class_probability", "class_index": 1}}}
    result = RunResult(volumes={"counterfactual": ImageVolume((setup.image + change)[np.newaxis], setup.affine),
                                 "difference": ImageVolume(change[np.newaxis], setup.affine)}, data=data)
    setup.inputNode.GetDisplayNode().SetAutoWindowLevel(False)
    setup.inputNode.GetDisplayNode().SetWindowLevel(400.0, 40.0)
    p = parameters(inputVolume=setup.inputNode)
    assert layouts.setComparisonLayers(scene, setup.inputNode, None, None) == 0  # no comparison views yet
    node, difference = counterfactualPanel.showCounterfactual(p, result, setup.inputNode)
    assert p.counterfactualVolume is node and node.GetAttribute("MedXAI.Result") == "counterfactual"
    assert difference.GetAttribute("MedXAI.Result") == "difference"
    np.testing.assert_allclose(mrmlTesting.ijkArray(node), setup.image + change, rtol=1e-6)
    np.testing.assert_allclose(mrmlTesting.ijkArray(difference), change)
    assert node.GetDisplayNode().GetWindow() == pytest.approx(400.0)  # read like the input
    assert counterfactualPanel.summaryOf(node)["after"]["predicted_class"] == 0
    assert node.GetNodeReference("MedXAI.InputVolume") is setup.inputNode

    views = _compositeNodes(scene, [v.layoutName for v in layouts.COMPARISON_VIEWS] + ["Red"])
    assert counterfactualPanel.showComparison(p, node) == 3
    assert views["MedXAIOriginal"].GetBackgroundVolumeID() == setup.inputNode.GetID()
    assert views["MedXAICounterfactual"].GetBackgroundVolumeID() == node.GetID()
    assert views["MedXAICounterfactual"].GetForegroundVolumeID() is None
    assert views["MedXAIDifference"].GetForegroundVolumeID() == difference.GetID()
    assert views["MedXAIDifference"].GetLinkedControl() and views["Red"].GetBackgroundVolumeID() is None
    with pytest.raises(Exception, match="counterfactual"):
        counterfactualPanel.showComparison(p, None)


def test_evaluation_tables_and_curves(setup):
    scores = {"deletion": {"value": 0.2, "higher_is_better": False, "seconds": 0.5,
                           "fractions": [0.0, 0.5, 1.0], "curve": [2.0, 1.0, 0.5]},
              "sparseness": {"value": 0.6, "higher_is_better": None, "seconds": 0.1}}
    p = parameters()
    table, chart = evaluatePanel.showScores(p, RunResult(data={"scores": scores}),
                                            setup.resultNode)
    assert p.evaluateTable is table and table.GetTable().GetNumberOfRows() == 2
    assert table.GetName() == f"{setup.resultNode.GetName()} · evaluation"
    assert table.GetAttribute("MedXAI.Result") == "evaluation" and chart.GetNumberOfPlotSeriesNodes() == 1
    comparison = {"table": {"method": ["saliency", "input_x_gradient"], "deletion": [0.3, 0.1]},
                  "ranking": [{"method": "input_x_gradient", "mean_rank": 1.0}, {"method": "saliency", "mean_rank": 2.0}],
                  "curves": {"saliency": {"deletion": {"fractions": [0, 1], "curve": [1, 0.3]}},
                             "input_x_gradient": {"deletion": {"fractions": [0, 1], "curve": [1, 0.1]}}}}
    table, chart = evaluatePanel.showComparison(p, RunResult(data=comparison), setup.inputNode)
    columns = analysisNodes.columnsFromTableNode(table)
    assert columns["method"] == ["saliency", "input_x_gradient"] and columns["mean_rank"] == [2.0, 1.0]
    assert chart.GetNumberOfPlotSeriesNodes() == 2


def test_table_and_plot_helpers_refuse_bad_input(scene):
    with pytest.raises(Exception):
        analysisNodes.tableNode(scene, "t", {"a": [1, 2], "b": [1]})
    table = analysisNodes.tableNode(scene, "t", {"x": [0.0, 1.0], "hit": [True, False]})
    assert analysisNodes.columnsFromTableNode(table)["hit"] == [1, 0]
    with pytest.raises(Exception, match="no column"):
        analysisNodes.plotChartNode(scene, table, "x", ["y"], "chart")
    with pytest.raises(Exception, match="kind"):
        analysisNodes.createVolumeResult(None, None, "n", "attribution")
