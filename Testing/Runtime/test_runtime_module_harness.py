"""MedXAI.py's parameter node and logic on real MRML nodes, with Slicer's own parameterNodeWrapper.

Needs a Slicer source checkout: set ``SLICER_SOURCE_DIR`` (e.g. a clone of Slicer/Slicer at tag
v5.12.0 or v5.10.0; ``Base/Python`` and ``Modules/Scripted/SegmentStatistics`` are used); skipped
otherwise, since tests never download anything. See
``slicer_module_harness.py`` for what runs and docs/developer-guide.md ("Testing").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import runtime_paths

SOURCE = os.environ.get("SLICER_SOURCE_DIR", "")
HAVE_SOURCE = bool(SOURCE) and (Path(SOURCE) / "Base" / "Python" / "slicer" / "parameterNodeWrapper").is_dir()

pytestmark = [
    pytest.mark.mrml,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_SOURCE, reason="set SLICER_SOURCE_DIR to a Slicer source checkout"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    pytest.importorskip("slicer", reason="needs slicer-core")
    out = tmp_path_factory.mktemp("harness") / "results.json"
    harness = Path(__file__).with_name("slicer_module_harness.py")
    result = subprocess.run([sys.executable, str(harness), SOURCE, str(out)], capture_output=True, text=True,
                            cwd=runtime_paths.ROOT, timeout=900)
    assert result.returncode == 0 and out.is_file(), result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(out.read_text())


def test_module_imports_without_torch_or_monai(results):
    assert results["heavyAfterImport"] == []
    assert results["defaults"]["method"] == "integrated_gradients" and results["defaults"]["methodParameters"] == "{}"


def test_every_bound_widget_gets_a_connector(results):
    connectors = results["connectors"]
    assert connectors["targetKind"][1] == "QComboBoxToEnumConnector"
    assert connectors["opacity"][1] == "QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector"
    assert connectors["inputVolume"] == ["inputVolumeSelector", "qMRMLNodeComboBoxToNodeConnector"]
    assert connectors["evaluateMode"][1] == "QComboBoxToEnumConnector"
    assert connectors["boundaryScore"][1] == "QComboBoxToStringableConnector"
    assert connectors["counterfactualVolume"] == ["counterfactualResultSelector", "qMRMLNodeComboBoxToNodeConnector"]
    manual = {"demoModel", "device", "method", "methodParameters", "modelPath", "outputVolume", "segmentId", "segmentation",
              # the analysis panels: segment selectors, generated forms, checkable lists and result nodes
              "boundarySegmentation", "boundarySegmentId", "boundaryProfileTable", "boundaryUncertaintyVolume",
              "evaluateMethods", "evaluateMetrics", "evaluateSegmentation", "evaluateSegmentId",
              "counterfactualGenerator", "counterfactualParameters", "counterfactualSegmentation",
              "counterfactualSegmentId",
              # the model's configurations and structures are read from its files; the cohort folder and table
              "nnunetConfiguration", "targetStructure", "cohortFolder", "cohortTable"}
    assert connectors["nnunetFolds"] == ["nnunetFoldsLineEdit", "QLineEditToStrConnector"]
    assert connectors["nnunetCheckpoint"][1] == "QComboBoxToStringableConnector"
    assert connectors["nnunetMirroring"][1] == "QCheckBoxToBoolConnector"
    assert set(results["parameters"]) == set(connectors) | manual


def test_in_process_result_has_the_input_geometry(results):
    r = results["inProcess"]
    assert r == {"sameDimensions": True, "sameGeometry": True, "finite": True, "nonZero": True,
                 "outputVolumeIsResult": True, "method": "integrated_gradients", "outlines": 1,
                 "outlinesAfterReapply": 1}


def test_subprocess_gives_the_same_map(results):
    assert results["subprocess"] == {"error": None, "sameAsInProcess": True}


def test_markups_and_segment_targets(results):
    t = results["targets"]
    assert t["voxel"] == [10, 9, 6]
    i0, j0, k0, i1, j1, k1 = t["box"]
    assert i0 <= 10 <= i1 and j0 <= 9 <= j1 and k0 <= 6 <= k1 and (i1 - i0, k1 - k0) == (4, 2)
    assert t["maskVoxels"] == t["labelVoxels"] > 0


def test_saved_scene_restores_the_module(results):
    r = results["restored"]
    assert r["method"] == "saliency" and r["targetKind"] == "segment" and r["targetClass"] == 1 and r["device"] == "cpu"
    assert r["modelPath"] and r["segmentId"] and r["targetRoi"] and r["targetFiducial"]
    assert r["inputVolume"] == "MedXAITestInput" and r["segmentation"] == "seg"
    assert r["outputVolume"] == results["expectedOutputVolume"]
    assert r["methodParameters"] == {"integrated_gradients": {"n_steps": 8}}
    assert r["boundary"] == [1.5, 3.0, 2, "margin", True, True]
    assert r["boundaryNodes"] == [results["panels"]["uncertaintyShown"], True]
    assert r["statistics"][0] == 10.0 and r["statistics"][1]
    assert r["evaluate"] == ["compare", "sparseness,deletion", True]
    assert r["counterfactual"] == ["classProbability", {"gradient_search": {"max_steps": 3}},
                                   results["panels"]["counterfactual"]]
    assert r["nnunet"] == ["0", "3d_fullres", "best", False, "kidney"]
    assert r["cohort"] == [True, results["cohort"]["tables"][0]]


def test_an_nnunet_folder_gives_its_options_and_structures_to_the_request(results):
    r = results["nnunet"]
    assert r["kind"] == "nnunetFolder" and r["configuration"] == "3d_fullres" and r["folds"] == ["0", "1"]
    assert r["structures"] == [["background", 0], ["liver", 1], ["kidney", 2]] and r["classIndex"] == 2
    assert r["options"] == {"folds": [0], "checkpoint": "best", "configuration": "3d_fullres", "mirroring": False}
    assert r["requestOptions"] == r["options"]


def test_reopening_a_cohort_folder_replaces_its_table(results):
    r = results["cohort"]
    assert r["firstRemoved"] and len(r["tables"]) == 1
    assert r["summary"] == "2 rows: 2 cases, 1 failed (c2). QA score: entropy (risk column); highest 0.4: c1 liver."


def test_analysis_panels_run_on_the_real_parameter_node(results):
    r = results["panels"]
    assert r["boundaryTarget"] == ["boundary", "margin", [1.5, 3.0], results["targets"]["labelVoxels"]]
    assert r["uncertaintyMaps"] == ["entropy", "probability", "variance"] and "entropy" in r["uncertaintyShown"]
    assert r["profileRows"] == r["profileBins"] > 0 and r["bandOutline"]
    assert r["statisticsRows"] == 2 and r["statisticsStructures"][1] == "organ"
    assert r["evaluationMetrics"] == ["deletion", "sparseness"] and r["evaluateTable"]
    assert r["difference"].startswith(r["counterfactual"]) and r["counterfactualSteps"] == 3


def test_segment_statistics_reports_relevance_for_attributions_only(results):
    r = results["segmentStatistics"]
    assert r["registered"] == [True, False]  # registered once
    tumour, vessel = r["attribution"]["rows"]["tumour"], r["attribution"]["rows"]["vessel"]
    # the map is 2 inside the tumour (6 x 6 x 4 voxels) and 0.1 elsewhere in a 20 x 16 x 10 grid
    inside, total = 2.0 * 144, 2.0 * 144 + 0.1 * (3200 - 144)
    assert tumour["share_abs"] == pytest.approx(inside / total)
    assert tumour["density_ratio"] == pytest.approx(inside / total / (144 / 3200))
    assert (tumour["abs_rank_accuracy"], tumour["peak_distance_mm"], vessel["abs_rank_accuracy"]) == (1.0, 0.0, 0.0)
    assert vessel["peak_distance_mm"] > 0
    assert "Relevance share" in r["attribution"]["columns"] and "Mean" in r["attribution"]["columns"]
    assert r["image"]["rows"]["tumour"] == {} and "Relevance share" not in r["image"]["columns"]


def test_sample_data_lists_each_demo_model_and_the_mni_template_once(results):
    r = results["sampleData"]
    assert r["names"] == ["MedXAI: Liver lesion classifier, PET/CT (phantom)", "MedXAI: Liver lesion classifier, CT (phantom)",
                          "MedXAI: Phantom segmenter, CT (organs and lesions)", "MNI152 T1 (ICBM 2009a)"]
    assert all(r["thumbnails"])
    assert r["downloaders"][:3] == ["MedXAI demo lesionClassifierPetCt", "MedXAI demo lesionClassifierCt",
                                    "MedXAI demo phantomSegmenter"] and r["downloaders"][3] is None
    assert r["uris"][:3] == [[], [], []] and r["uris"][3][0].startswith("https://raw.githubusercontent.com/nilearn/")
    assert r["checksums"][3] == ["SHA256:421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"]
    assert r["nodeNames"][3] == ["MNI152_T1"]

