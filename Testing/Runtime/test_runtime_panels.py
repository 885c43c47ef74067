"""The Qt-free helpers of the Boundary, Statistics, Evaluate and Counterfactual panels and the relevance plugin.

Values are checked against analytic cases or against an independent computation with numpy; the
static check at the end proves that every ``ui.<name>`` the panels use exists in MedXAI.ui.
"""

from __future__ import annotations

import ast
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import runtime_paths

from MedXAILib.errors import InputError, TargetError
from MedXAIRuntime import boundaryPanel, counterfactualPanel, evaluatePanel, layouts, relevanceMeasures, statisticsPanel
from MedXAIRuntime.counterfactualPanel import CounterfactualGoal

UI = runtime_paths.MODULE_DIR / "Resources" / "UI" / "MedXAI.ui"


# ------------------------------------------------------------------------------------------------
# Boundary


def test_boundary_target_carries_band_score_and_structure():
    mask = np.zeros((6, 6, 6), bool)
    mask[2:4, 2:4, 2:4] = True
    target = boundaryPanel.boundaryTarget(2, 1.5, 3.0, "margin", mask)
    assert (target.region, target.class_index, target.score, target.band_mm) == ("boundary", 2, "margin", (1.5, 3.0))
    assert target.mask.dtype == bool and target.mask.sum() == 8
    assert boundaryPanel.boundaryTarget(1, 2, 2, "logit").mask is None
    with pytest.raises(TargetError, match="score"):
        boundaryPanel.boundaryTarget(1, 2, 2, "probability")
    with pytest.raises(TargetError, match="0 mm on both sides"):
        boundaryPanel.boundaryTarget(1, 0.0, 0.0)
    with pytest.raises(TargetError, match="band_mm"):
        boundaryPanel.boundaryTarget(1, -1.0, 2.0)


def test_band_label_map_counts_layers_with_anisotropic_spacing():
    # A slab filling the lower half of K: its surface is the plane between k = 9 and k = 10. With
    # 2 mm voxels along K, a 4 mm band holds round(4 / 2) = 2 layers on each side; along I (0.5 mm,
    # no surface there) nothing changes.
    structure = np.zeros((4, 3, 20), bool)
    structure[:, :, :10] = True
    labels = boundaryPanel.bandLabelMap(structure, (0.5, 1.0, 2.0), innerMm=4.0, outerMm=2.0)
    profile = labels[0, 0]
    assert list(profile) == [0] * 8 + [1, 1] + [2] + [0] * 9
    assert np.all(labels == labels[:1, :1])  # the same along I and J


def test_uncertain_outline_is_relative_to_the_maximum():
    values = np.array([0.0, 0.2, 0.5, 0.9, 1.0]).reshape(1, 5, 1, 1)
    np.testing.assert_array_equal(boundaryPanel.uncertainOutlineMask(values, 0.5).ravel(),
                                  [False, False, True, True, True])
    assert boundaryPanel.uncertainOutlineMask(values, 0.0) is None
    assert boundaryPanel.uncertainOutlineMask(np.zeros((2, 2, 2)), 0.5) is None
    with pytest.raises(InputError):
        boundaryPanel.uncertainOutlineMask(values, 1.5)


def test_uncertainty_maps_are_the_library_maps():
    from MedXAILib.analysis.boundary import UNCERTAINTY_MAPS

    assert set(boundaryPanel.UNCERTAINTY_MAPS) == set(UNCERTAINTY_MAPS)


# ------------------------------------------------------------------------------------------------
# Statistics


def test_structure_names_put_the_background_first_and_are_unique():
    assert statisticsPanel.uniqueNames(["liver", "liver", " ", "liver"]) == ["liver", "liver (2)", "unnamed",
                                                                            "liver (3)"]
    names = statisticsPanel.structureNames(["tumour", statisticsPanel.BACKGROUND_NAME])
    assert names[0] == statisticsPanel.BACKGROUND_NAME and len(set(names)) == 3


def test_curves_become_columns_with_units_per_structure():
    from MedXAILib.analysis.statistics import relevance_volume_curves, units_for

    labels = np.zeros((4, 4, 4), int)
    labels[:2] = 1
    labels[3, 3, 3] = 2
    attribution = np.arange(64, dtype=float).reshape(4, 4, 4)
    names = statisticsPanel.structureNames(["left", "corner"])
    columns = statisticsPanel.curvesToColumns(relevance_volume_curves(attribution, labels, names, 5))
    assert list(columns) == ["threshold", "volume_fraction · left", "volume_fraction · corner",
                             "relevance_fraction · left", "relevance_fraction · corner"]
    # the corner voxel holds the largest value: it stays above every threshold
    assert columns["volume_fraction · corner"] == [1.0] * 5
    assert columns["relevance_fraction · corner"][0] == pytest.approx(63 / attribution.sum())
    assert units_for(columns)["volume_fraction · left"] == ""
    with pytest.raises(InputError):
        statisticsPanel.curvesToColumns({statisticsPanel.BACKGROUND_NAME: {"threshold": [0.0]}})


# ------------------------------------------------------------------------------------------------
# Evaluate


def test_names_round_trip_through_the_parameter_text():
    assert evaluatePanel.parseNames(" deletion, insertion,,deletion ,sparseness") == ["deletion", "insertion",
                                                                                     "sparseness"]
    assert evaluatePanel.formatNames(["b", "a", "b"]) == "b,a"
    assert evaluatePanel.parseNames("") == []


def test_default_metrics_exist_and_need_neither_mask_nor_method():
    from MedXAILib.evaluation.metrics import METRICS

    for name in evaluatePanel.DEFAULT_METRICS:
        info = METRICS.get(name)
        assert not info.needs_mask and not info.needs_method
    assert [entry[0] for entry in evaluatePanel.metricEntries()] == METRICS.names()


def test_score_and_comparison_tables():
    scores = {"deletion": {"value": 0.25, "higher_is_better": False, "seconds": 1.5,
                           "fractions": [0.0, 0.5, 1.0], "curve": [1.0, 0.4, 0.1]},
              "sparseness": {"value": float("nan"), "higher_is_better": None, "seconds": 0.1,
                             "warning": "constant map"}}
    assert evaluatePanel.scoreRows(scores, {"deletion": "Deletion (AUC)"}) == [
        ("Deletion (AUC)", "0.25 (lower is better)"), ("sparseness", "n/a (descriptive) - constant map")]
    columns = evaluatePanel.scoresColumns(scores)
    assert columns["metric"] == ["deletion", "sparseness"] and math.isnan(columns["value"][1])
    assert columns["higher_is_better"] == ["no", "-"]

    data = {"table": {"method": ["saliency", "integrated_gradients"], "deletion": [0.3, 0.2],
                      "insertion": [0.5, None]},
            "ranking": [{"method": "integrated_gradients", "mean_rank": 1.0}, {"method": "saliency", "mean_rank": 2.0}],
            "curves": {"saliency": {"deletion": {"fractions": [0, 1], "curve": [1, 0.2]}},
                       "integrated_gradients": {"deletion": {"fractions": [0, 1], "curve": [1, 0.1]},
                                                "insertion": {"fractions": [0, 0.5, 1], "curve": [0, 0.5, 1]}}}}
    headers, rows = evaluatePanel.comparisonRows(data)
    assert headers == ["Metric", "saliency", "integrated_gradients"]
    assert rows == [["deletion", "0.3", "0.2"], ["insertion", "0.5", "n/a"],
                    ["Mean rank (lower is better)", "2", "1"]]
    columns = evaluatePanel.comparisonColumns(data)
    assert columns["mean_rank"] == [2.0, 1.0] and math.isnan(columns["insertion"][1])
    curves = evaluatePanel.curveSeries(data["curves"])
    assert curves["deletion"] == {"fraction": [0, 1], "saliency": [1.0, 0.2], "integrated_gradients": [1.0, 0.1]}
    assert curves["insertion"] == {"fraction": [0, 0.5, 1], "integrated_gradients": [0.0, 0.5, 1.0]}
    with pytest.raises(InputError):
        evaluatePanel.comparisonRows({"table": {}})
    assert evaluatePanel.scoreRows({"auroc": {"value": 0.98, "higher_is_better": True, "chance": 0.5}}) == [
        ("auroc", "0.98 (higher is better; chance 0.5)")]
    data["separation"] = {"deletion": {"separates": False}, "insertion": {"separates": True}}
    assert [row[0] for row in evaluatePanel.comparisonRows(data)[1][:2]] == ["deletion (does not separate)",
                                                                           "insertion"]


# ------------------------------------------------------------------------------------------------
# Counterfactual


def test_goals_are_the_library_goal_kinds_and_validate_early():
    from MedXAILib.counterfactual import GOAL_KINDS

    assert tuple(goal.value for goal in CounterfactualGoal) == tuple(GOAL_KINDS)
    flip = counterfactualPanel.goalArguments(CounterfactualGoal.classProbability, 1, 0.0, 50.0)
    assert flip == {"kind": "class_probability", "class_index": 1}  # 0: flip the decision
    assert counterfactualPanel.goalArguments("class_probability", 0, 0.2)["target_probability"] == 0.2
    assert counterfactualPanel.goalArguments(CounterfactualGoal.structureVolume, 2, 0.3, 12.5) == {
        "kind": "structure_volume", "class_index": 2, "target_volume_ml": 12.5}
    assert counterfactualPanel.goalArguments(CounterfactualGoal.removeStructure, 1, 0.3, 5.0) == {
        "kind": "remove_structure", "class_index": 1}
    with pytest.raises(TargetError):
        counterfactualPanel.goalArguments(CounterfactualGoal.structureVolume, 1, 0.0, -1.0)


def test_bounds_and_generator_values():
    assert counterfactualPanel.boundsFromSettings(False, 5, 1) is None
    assert counterfactualPanel.boundsFromSettings(True, -1000, 3000) == (-1000.0, 3000.0)
    with pytest.raises(InputError):
        counterfactualPanel.boundsFromSettings(True, 10, 10)
    values = counterfactualPanel.generatorValues("gradient_search", '{"gradient_search": {"max_steps": 40, '
                                                                    '"step_size": -1}, "inpaint": {"ring_mm": 9}}')
    assert values["max_steps"] == 40 and values["step_size"] == 0.01  # the invalid stored value falls back


def test_metrics_rows_of_a_classifier_and_a_segmenter():
    classifier = {"before": {"task": "classification", "class_names": ["normal", "lesion"], "predicted_class": 1,
                             "probabilities": [0.2, 0.8]},
                  "after": {"task": "classification", "predicted_class": 0, "probabilities": [0.93, 0.07]},
                  "metrics": {"validity": {"quantity": "probability", "before": 0.8, "target": 0.1, "after": 0.07,
                                           "reached": True},
                              "proximity": {"mean_abs": 0.0125, "max_abs": 0.5}, "sparsity": {"changed_fraction": 0.02},
                              "locality": None, "plausibility": {"mean_wasserstein": 0.003}, "seconds": 1.25}}
    rows = counterfactualPanel.metricsRows(classifier, classIndex=1)
    assert rows[0] == ("Goal: probability (target 0.1)", "0.8", "0.07")
    assert ("Goal reached", "", "yes") in rows
    assert ("Predicted class", "lesion (1)", "normal (0)") in rows
    assert ("P(lesion (1))", "0.8", "0.07") in rows
    assert ("Voxels changed above noise", "", "2 %") in rows
    assert not any(row[0] == "Change inside the region" for row in rows)
    segmenter = {"before": {"task": "segmentation", "volumes_ml": [900.0, 12.5]},
                 "after": {"task": "segmentation", "volumes_ml": [912.5, 0.0]}, "metrics": {"locality": 0.97}}
    rows = counterfactualPanel.metricsRows(segmenter)
    assert rows == [("Volume of class 1 (ml)", "12.5", "0"), ("Change inside the region", "", "97 %")]
    petct = {"metrics": {"proximity": {"max_abs": 120.0}, "minimality": {"changed_ml": 18.5, "minimal": False,
                                                                         "changed_share_of_structure": 5.8},
                         "per_channel": [{"channel": "CT", "max_abs": 115.3}, {"channel": "PET", "max_abs": 5.95}]}}
    rows = counterfactualPanel.metricsRows(petct)
    assert ("Volume changed above noise (ml)", "", "18.5") in rows and ("Changed volume / structure volume", "", "5.8") in rows
    assert ("Max |change| in CT (its units)", "", "115.3") in rows and ("Max |change| in PET (its units)", "", "5.95") in rows
    assert not any(row[0] == "Max |change|" for row in rows)  # no number that adds HU and SUV
    assert ("Minimal change", "", "no: spread over too much of the image") in rows


# ------------------------------------------------------------------------------------------------
# Layout


def test_comparison_layout_has_three_linked_views_in_their_own_group():
    root = ET.fromstring(layouts.comparisonLayoutXml("Coronal"))
    views = root.findall("./item/view")
    assert root.get("type") == "horizontal" and [v.get("singletontag") for v in views] == [
        "MedXAIOriginal", "MedXAICounterfactual", "MedXAIDifference"]
    for view in views:
        properties = {p.get("name"): p.text for p in view.findall("property")}
        assert view.get("class") == "vtkMRMLSliceNode" and properties["orientation"] == "Coronal"
        assert properties["viewgroup"] == str(layouts.COMPARISON_VIEW_GROUP) != "0"
    assert layouts.COMPARISON_LAYOUT_ID >= 100  # built-in layout IDs are below 100
    with pytest.raises(ValueError):
        layouts.comparisonLayoutXml("Oblique")


# ------------------------------------------------------------------------------------------------
# The relevance plugin's measurements


def test_relevance_measures_of_a_map_inside_the_segment():
    # All relevance in the segment: share 1, density = N / |S|, rank accuracy 1, the maximum inside.
    affine = np.diag([2.0, 1.0, 1.5, 1.0])
    mask = np.zeros((10, 8, 6), bool)
    mask[2:6, 2:5, 1:4] = True
    attribution = np.where(mask, 1.0 + np.arange(mask.size).reshape(mask.shape) / mask.size, 0.0)
    values = relevanceMeasures.relevanceMeasures(attribution, mask, affine, "tumour")
    assert values["share_abs"] == pytest.approx(1.0)
    assert values["density_ratio"] == pytest.approx(mask.size / mask.sum())
    assert values["abs_rank_accuracy"] == pytest.approx(1.0) and values["peak_distance_mm"] == 0.0
    assert values["share_positive"] == pytest.approx(1.0)
    assert values["sum"] == pytest.approx(attribution.sum()) and values["negative_mass"] == 0.0
    assert set(values) == set(relevanceMeasures.PLUGIN_KEYS)


def test_relevance_measures_agree_with_numpy_on_a_random_signed_map():
    rng = np.random.default_rng(5)
    attribution = rng.normal(size=(9, 7, 5))
    mask = np.zeros(attribution.shape, bool)
    mask[1:5, 2:6, 1:4] = True
    values = relevanceMeasures.relevanceMeasures(attribution, mask, np.eye(4), "s",
                                                 keys=["share_abs", "abs_rank_accuracy", "peak_distance_mm", "mean"])
    magnitude = np.abs(attribution)
    assert values["share_abs"] == pytest.approx(magnitude[mask].sum() / magnitude.sum())
    k = int(mask.sum())
    top = np.argsort(magnitude, axis=None)[-k:]  # continuous values: no ties
    assert values["abs_rank_accuracy"] == pytest.approx(mask.ravel()[top].mean())
    peak = np.array(np.unravel_index(np.argmax(attribution), attribution.shape))  # the positive maximum
    assert values["peak_distance_mm"] == pytest.approx(np.sqrt(((np.argwhere(mask) - peak) ** 2).sum(1)).min())
    assert values["mean"] == pytest.approx(attribution[mask].mean())
    with pytest.raises(InputError, match="unknown"):
        relevanceMeasures.relevanceMeasures(attribution, mask, np.eye(4), keys=["volume"])
    with pytest.raises(InputError, match="no voxel"):
        relevanceMeasures.relevanceMeasures(attribution, np.zeros_like(mask), np.eye(4))


def test_measurement_info_and_attribution_detection():
    info = relevanceMeasures.measurementInfo("centre_distance_mm")
    assert info["units"] == "mm" and info["name"] and info["description"]
    assert relevanceMeasures.measurementInfo("volume_mm3") is None
    assert set(relevanceMeasures.DEFAULT_KEYS) <= set(relevanceMeasures.PLUGIN_KEYS)

    class Node:
        def __init__(self, **attributes):
            self.attributes = attributes

        def GetAttribute(self, name):
            return self.attributes.get(name)

    assert relevanceMeasures.isAttributionNode(Node(**{"MedXAI.Result": "attribution"}))
    assert not relevanceMeasures.isAttributionNode(Node(**{"MedXAI.Result": "counterfactual",
                                                          "MedXAI.Provenance": "{}"}))
    assert relevanceMeasures.isAttributionNode(Node(**{"MedXAI.Provenance": '{"method": "saliency"}'}))
    assert not relevanceMeasures.isAttributionNode(Node()) and not relevanceMeasures.isAttributionNode(None)


# ------------------------------------------------------------------------------------------------
# Static: the panels only use widgets that MedXAI.ui has


def _uiNamesUsed(source: str) -> set[str]:
    """``ui.<name>`` read in `source`, where ``ui`` is a local name or an attribute (``host.ui``, ``self.host.ui``)."""
    used = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            base = node.value
            if (isinstance(base, ast.Name) and base.id == "ui") or (isinstance(base, ast.Attribute) and base.attr == "ui"):
                used.add(node.attr)
    return used


def test_every_ui_name_the_panels_use_exists_in_the_ui_file():
    root = ET.parse(UI).getroot()
    names = {e.get("name") for e in root.iter() if e.tag in ("widget", "layout") and e.get("name")}
    for module in (boundaryPanel, statisticsPanel, evaluatePanel, counterfactualPanel):
        used = _uiNamesUsed(open(module.__file__, encoding="utf-8").read())
        assert used, module.__name__
        assert used <= names, f"{module.__name__} uses {sorted(used - names)}, which MedXAI.ui lacks"
    assert _uiNamesUsed("def f(host):\n    host.ui.fooButton.enabled = True\n    ui = 1\n    ui.barLabel\n") == {
        "fooButton", "barLabel"}


def test_panel_modules_import_without_torch_monai_scipy_or_qt():
    """What MedXAI.py imports at Slicer start-up must not pull torch, MONAI, SimpleITK, SciPy, Qt or slicer."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(runtime_paths.MODULE_DIR)!r}, {str(runtime_paths.ROOT)!r}]\n"
        "import MedXAIRuntime.jobs, MedXAIRuntime.runners, MedXAIRuntime.analysisNodes, MedXAIRuntime.layouts\n"
        "import MedXAIRuntime.boundaryPanel, MedXAIRuntime.statisticsPanel, MedXAIRuntime.evaluatePanel\n"
        "import MedXAIRuntime.counterfactualPanel, MedXAIRuntime.relevanceMeasures\n"
        "heavy = sorted(m for m in ('torch', 'monai', 'SimpleITK', 'scipy', 'qt', 'slicer', 'vtk') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
