"""Run MedXAI/MedXAI.py's parameter node and logic outside Slicer, on real MRML nodes.

Usage: ``python slicer_module_harness.py SLICER_SOURCE_DIR OUT_JSON``

slicer-core (the Qt-free MRML wheel of the test environment) has no ``slicer.parameterNodeWrapper``
or ``slicer.ScriptedLoadableModule``; this script loads them from a Slicer source checkout
(``SLICER_SOURCE_DIR/Base/Python/slicer``), puts inert stand-ins in place of the ``qt`` and ``ctk``
modules (nothing GUI runs), imports MedXAI.py, and then:

- checks that importing it loaded neither torch nor MONAI;
- picks, with Slicer's own ``createGuiConnector``, the connector of every widget of MedXAI.ui that
  carries a ``SlicerParameterName`` (a type / widget mismatch raises here as it would in Slicer);
- runs the self-test's path: a synthetic oblique volume, a tiny MONAI classifier saved as a spec,
  ``MedXAILogic.process`` in process and the same request through ``SubprocessRunner``;
- builds ROI, point and segment targets from markups and segmentation nodes, with a parent
  transform on the volume;
- runs the logic of the Boundary, Statistics, Evaluate and Counterfactual panels (boundary band
  explanation, uncertainty, profile, overlay, statistics, evaluation, counterfactual) in process;
- chooses an nnU-Net results folder (files only): its configuration, the model options and the class of a
  named structure, as the request carries them;
- opens a cohort folder's table the way the Cohort QA section does (no layout manager here), twice;
- saves the scene to an MRML string, loads it into a new scene and reads the parameter node back;
- runs Slicer's Segment Statistics logic (from the source checkout) with the MedXAI relevance plugin.

Results go to OUT_JSON; ``test_runtime_module_harness.py`` checks them. It runs in its own process
because it sets ``slicer.mrmlScene`` and fake ``qt`` modules.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "MedXAI"


# ------------------------------------------------------------------------------------------------
# Inert qt / ctk


class _Signal:
    def connect(self, *args):
        pass

    def disconnect(self, *args):
        pass


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Meta(name, (_Dummy,), {})
        setattr(cls, name, value)
        return value

    def __or__(cls, other):
        return cls

    def __sub__(cls, other):
        return 0


class _Dummy(metaclass=_Meta):
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "currentIndex":
            return -1
        if name in ("value", "minimum", "maximum", "decimals", "singleStep"):
            return 0
        if name[0].islower() and name.endswith(("Changed", "toggled", "clicked")):
            return _Signal()
        return lambda *args, **kwargs: None


class _FakeModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Meta(name, (_Dummy,), {})
        setattr(self, name, value)
        return value


def _load(name: str, path: Path, package: bool = False):
    import slicer

    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)] if package else None
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    setattr(slicer, name.split(".")[-1], module)
    return module


def load_slicer_python(source: Path):
    for name in ("qt", "ctk"):
        sys.modules[name] = _FakeModule(name)
    import slicer
    import slicer.util  # noqa: F401  (slicer-core's util: NodeModify, VTKObservationMixin, arrays)

    for name in ("qMRMLNodeComboBox", "qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qMRMLWidget",
                 "qMRMLSubjectHierarchyTreeView", "qSlicerWidget"):
        setattr(slicer, name, getattr(sys.modules["qt"], name))

    class App:
        def translate(self, context, text):
            return text

        def testingEnabled(self):
            return True

        def layoutManager(self):  # no views: the cohort table opens without being shown
            return None

    slicer.app = App()
    slicer.mrmlScene = slicer.vtkMRMLScene()
    # the node class Slicer's Colors module registers in every scene (colour legends)
    slicer.mrmlScene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    base = source / "Base" / "Python" / "slicer"
    _load("slicer.i18n", base / "i18n.py")
    _load("slicer.parameterNodeWrapper", base / "parameterNodeWrapper" / "__init__.py", package=True)
    _load("slicer.ScriptedLoadableModule", base / "ScriptedLoadableModule.py")
    return slicer


# ------------------------------------------------------------------------------------------------


def main(source: Path, out: Path) -> None:
    sys.path[:0] = [str(MODULE_DIR), str(ROOT)]
    slicer = load_slicer_python(source)
    results: dict = {}

    module = _load("MedXAI", MODULE_DIR / "MedXAI.py")
    results["heavyAfterImport"] = sorted(m for m in ("torch", "monai", "SimpleITK") if m in sys.modules)

    logic = module.MedXAILogic()
    p = logic.getParameterNode()
    results["parameters"] = sorted(p.allParameters)
    results["defaults"] = {"method": p.method, "targetKind": p.targetKind.name, "runMode": p.runMode.name,
                           "colormap": p.colormap, "device": p.device, "methodParameters": p.methodParameters}

    # connectors chosen by Slicer's own code for every SlicerParameterName widget of the .ui
    import ctk
    import qt
    from slicer.parameterNodeWrapper.guiConnectors import createGuiConnector

    classes = {"QCheckBox": qt.QCheckBox, "QComboBox": qt.QComboBox, "QSpinBox": qt.QSpinBox, "QLineEdit": qt.QLineEdit,
               "qMRMLNodeComboBox": slicer.qMRMLNodeComboBox, "ctkSliderWidget": ctk.ctkSliderWidget}
    connectors = {}
    for widget in ET.parse(MODULE_DIR / "Resources" / "UI" / "MedXAI.ui").getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                param = prop.find("string").text
                connector = createGuiConnector(classes[widget.get("class")](), p.dataType(param))
                connectors[param] = [widget.get("name"), type(connector).__name__]
    results["connectors"] = connectors

    # the self-test's path
    import numpy as np
    import torch
    import vtk
    from monai.networks.nets import Classifier, UNet

    from MedXAIBridge import segments
    from MedXAILib.model import save_spec_model
    from MedXAIRuntime import forms, jobs, runners
    from MedXAIRuntime.targets import TargetKind

    scene = slicer.mrmlScene
    shape = (20, 18, 12)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MedXAITestInput")
    slicer.util.updateVolumeFromArray(volume, np.random.default_rng(0).normal(size=shape[::-1]).astype(np.float32))
    angle = np.deg2rad(25.0)
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]) \
        @ np.diag([1.5, 0.9, 2.5])
    ijkToRas[:3, 3] = (-20.0, 35.0, 12.5)
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
    folder = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    args = {"in_shape": [1, *shape], "classes": 2, "channels": [4, 8], "strides": [2, 2]}
    spec = save_spec_model(Classifier(**args), "Classifier", args, folder / "tiny.json", task="classification",
                           class_names=["normal", "lesion"], in_channels=1)
    p.inputVolume = volume
    p.modelPath = str(spec)
    p.method = "integrated_gradients"
    p.methodParameters = forms.encodeMethodParameters({"integrated_gradients": {"n_steps": 8}})
    p.targetKind = TargetKind.classScore
    p.targetClass = 1
    p.device = "cpu"
    p.topPercent = 5.0
    node = logic.process(p)
    m1, m2 = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m1)
    volume.GetIJKToRASMatrix(m2)
    values = slicer.util.arrayFromVolume(node)

    def outlines():
        nodes = slicer.util.getNodesByClass("vtkMRMLSegmentationNode", scene)
        return sum(1 for n in nodes if n.GetAttribute("MedXAI.AttributionNodeID") == node.GetID())

    results["inProcess"] = {
        "sameDimensions": node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions(),
        "sameGeometry": bool(np.allclose(slicer.util.arrayFromVTKMatrix(m1), slicer.util.arrayFromVTKMatrix(m2))),
        "finite": bool(np.isfinite(values).all()),
        "nonZero": bool(np.abs(values).max() > 0),
        "outputVolumeIsResult": p.outputVolume is node,
        "method": node.GetAttribute("MedXAI.Method"),
        "outlines": outlines(),
    }
    logic.applyDisplay(node, p)
    results["inProcess"]["outlinesAfterReapply"] = outlines()

    pending, outcomes = [], []
    runner = runners.SubprocessRunner(scheduler=lambda ms, callback: pending.append(callback))
    runner.start(logic.buildRequest(p), lambda *a: None, outcomes.append)
    deadline = time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending.pop(0)()
    results["subprocess"] = {
        "error": None if not outcomes or outcomes[0].error is None else str(outcomes[0].error),
        "sameAsInProcess": bool(outcomes and outcomes[0].attribution is not None and np.allclose(
            outcomes[0].attribution.array[0], values.transpose(2, 1, 0), rtol=1e-4, atol=1e-6)),
    }

    # ROI, point and segment targets (a segmenter; the volume under a linear transform)
    unetArgs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
                "num_res_units": 1}
    torch.manual_seed(0)
    unet = save_spec_model(UNet(**unetArgs), "UNet", unetArgs, folder / "unet.json", task="segmentation", in_channels=1)
    p.modelPath, p.method, p.topPercent = str(unet), "saliency", 0.0
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (5.0, -3.0, 2.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    centreWorld = (shift @ ijkToRas @ np.array([10, 9, 6, 1.0]))[:3]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenterWorld(*centreWorld)
    roi.SetSizeWorld(6.0, 6.0, 6.0)
    p.targetRoi, p.targetKind = roi, TargetKind.roi
    box = logic.buildRequest(p).target.box
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    points.AddControlPointWorld(vtk.vtkVector3d(*centreWorld))
    p.targetFiducial, p.targetKind = points, TargetKind.point
    voxel = logic.buildRequest(p).target.voxel
    volume.SetAndObserveTransformNodeID(None)
    labels = np.zeros(shape, np.uint8)
    labels[5:12, 4:10, 3:8] = 1
    segmentation = segments.segmentationNodeFromLabelMap(scene, labels, volume, ["organ"], "seg")
    p.segmentation, p.segmentId = segmentation, segmentation.GetSegmentation().GetNthSegmentID(0)
    p.targetKind = TargetKind.segment
    request = logic.buildRequest(p)
    result = logic.showResult(jobs.runInProcess(request).attribution(), p)
    results["targets"] = {"box": list(box), "voxel": list(voxel), "maskVoxels": int(request.target.mask.sum()),
                          "labelVoxels": int(labels.sum()), "segmentResult": result.GetName()}

    # the Boundary, Statistics, Evaluate and Counterfactual panels' logic with the real parameter node
    from MedXAIRuntime import boundaryPanel, counterfactualPanel, evaluatePanel, statisticsPanel

    segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
    p.boundarySegmentation, p.boundarySegmentId = segmentation, segmentId
    p.boundaryInnerMm, p.boundaryOuterMm, p.boundaryClass = 1.5, 3.0, 2
    boundaryRequest = boundaryPanel.buildBoundaryRequest(logic, p)
    boundaryResult = logic.showResult(jobs.runInProcess(boundaryRequest).attribution(), p)
    outcomes = []
    runners.InProcessRunner(processEvents=lambda: None).start(boundaryPanel.buildUncertaintyRequest(logic, p),
                                                              lambda *a: None, outcomes.append)
    uncertainty = boundaryPanel.showUncertainty(p, outcomes[0].result, volume)
    profile = boundaryPanel.computeProfile(p, p.outputVolume)
    boundaryPanel.showProfile(p, p.outputVolume, profile)
    overlay = boundaryPanel.showBoundaryOverlay(p, volume, p.outputVolume, p.boundaryUncertaintyVolume)
    p.statisticsAttribution, p.statisticsSegmentation, p.statisticsTopPercent = boundaryResult, segmentation, 10.0
    table, attributionNode = statisticsPanel.computeStatistics(p)
    statisticsPanel.showStatistics(p, table, attributionNode)
    # the Explain section's own result: graded for the target it was computed for (MedXAILib refuses a map
    # whose provenance names another target, such as the boundary band's)
    p.evaluateAttribution, p.evaluateMetrics = result, "sparseness,deletion"
    evaluation = jobs.runInProcess(evaluatePanel.buildEvaluateRequest(logic, p))
    evaluatePanel.showScores(p, evaluation, result)
    p.modelPath = str(spec)  # the classifier
    p.counterfactualGoal = counterfactualPanel.CounterfactualGoal.classProbability
    p.counterfactualClass, p.counterfactualTargetProbability = 1, 0.0
    p.counterfactualParameters = forms.encodeMethodParameters({"gradient_search": {"max_steps": 3}})
    counterfactual = jobs.runInProcess(counterfactualPanel.buildCounterfactualRequest(logic, p))
    cfNode, differenceNode = counterfactualPanel.showCounterfactual(p, counterfactual, volume)
    p.modelPath = str(unet)
    p.evaluateMode = evaluatePanel.EvaluateMode.compare
    results["panels"] = {
        "boundaryTarget": [boundaryRequest.target.region, boundaryRequest.target.score,
                           list(boundaryRequest.target.band_mm), int(boundaryRequest.target.mask.sum())],
        "boundaryResult": boundaryResult.GetName(),
        "uncertaintyMaps": sorted(uncertainty), "uncertaintyShown": p.boundaryUncertaintyVolume.GetName(),
        "profileRows": p.boundaryProfileTable.GetNumberOfRows(), "profileBins": len(profile["distance_mm"]),
        "bandOutline": overlay["band"] is not None,
        "statisticsRows": p.statisticsTable.GetNumberOfRows(), "statisticsStructures": table["structure"],
        "evaluationMetrics": sorted(evaluation.data["scores"]), "evaluateTable": p.evaluateTable.GetName(),
        "counterfactual": cfNode.GetName(), "difference": differenceNode.GetName(),
        "counterfactualSteps": counterfactual.data["provenance"]["parameters"]["max_steps"],
    }

    # an nnU-Net results folder: recognised from its files, its options become the request's model options
    nnunetFolder = folder / "Dataset002_Organs"
    for configuration in ("2d", "3d_fullres"):
        model = nnunetFolder / f"nnUNetTrainer__nnUNetPlans__{configuration}"
        for fold in ("0", "1"):
            (model / f"fold_{fold}").mkdir(parents=True)
            (model / f"fold_{fold}" / "checkpoint_best.pth").write_bytes(b"")
        (model / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "kidney": 2},
                                                         "channel_names": {"0": "CT"}}))
        (model / "plans.json").write_text("{}")
    logic.setModelPath(p, str(nnunetFolder))
    p.nnunetFolds, p.nnunetCheckpoint, p.nnunetMirroring, p.targetStructure = "0", "best", False, "kidney"
    info = logic.modelInfo(p)
    results["nnunet"] = {"kind": info.kind, "configuration": p.nnunetConfiguration, "folds": list(info.folds),
                         "structures": [list(s) for s in info.structures], "options": logic.modelOptions(p),
                         "classIndex": logic.targetClassIndex(p)}
    try:
        results["nnunet"]["requestOptions"] = logic.buildRequest(p).model_options
    except (TypeError, AttributeError) as error:  # a RunRequest without model_options
        results["nnunet"]["requestOptions"] = f"{type(error).__name__}: {error}"
    p.modelPath = str(unet)

    # the Cohort QA section's table: opened twice from one folder, one table node remains
    from MedXAIBridge.cohortNodes import cohortTableNodes
    from MedXAIRuntime import cohortPanel, cohortTable

    cohort = folder / "cohort"
    cohort.mkdir()
    (cohort / "table.csv").write_text("case_id,status,structure,label,risk,entropy,error,scene\n"
                                      "c1,done,liver,1,0.4,0.4,,cases/c1/scene.mrb\n"
                                      "c2,failed,,-1,nan,nan,unreadable image,\n")
    first = cohortTable.openCohortFolder(cohort)
    p.cohortFolder, p.cohortTable = str(cohort), cohortTable.openCohortFolder(cohort)
    results["cohort"] = {"firstRemoved": first.GetScene() is None,
                         "tables": [n.GetName() for n in cohortTableNodes(scene, cohort)],
                         "summary": cohortPanel.tableSummaryText(p.cohortTable)}

    # a saved scene restores the module's choices
    scene.SetSaveToXMLString(1)
    scene.Commit()
    restored = slicer.vtkMRMLScene()
    restored.SetLoadFromXMLString(1)
    restored.SetSceneXMLString(scene.GetSceneXMLString())
    restored.Import()
    slicer.mrmlScene = restored
    q = module.MedXAILogic().getParameterNode()
    results["restored"] = {
        "method": q.method, "targetKind": q.targetKind.name, "targetClass": q.targetClass, "device": q.device,
        "modelPath": q.modelPath == str(unet), "inputVolume": q.inputVolume.GetName() if q.inputVolume else None,
        "segmentation": q.segmentation.GetName() if q.segmentation else None, "segmentId": q.segmentId == p.segmentId,
        "targetRoi": q.targetRoi is not None, "targetFiducial": q.targetFiducial is not None,
        "outputVolume": q.outputVolume.GetName() if q.outputVolume else None,
        "methodParameters": forms.decodeMethodParameters(q.methodParameters),
        "boundary": [q.boundaryInnerMm, q.boundaryOuterMm, q.boundaryClass, q.boundaryScore,
                     q.boundarySegmentId == p.boundarySegmentId, q.boundarySegmentation is not None],
        "boundaryNodes": [q.boundaryUncertaintyVolume.GetName() if q.boundaryUncertaintyVolume else None,
                          q.boundaryProfileTable is not None],
        "statistics": [q.statisticsTopPercent, q.statisticsTable.GetName() if q.statisticsTable else None],
        "evaluate": [q.evaluateMode.name, q.evaluateMetrics, q.evaluateTable is not None],
        "counterfactual": [q.counterfactualGoal.name, forms.decodeMethodParameters(q.counterfactualParameters),
                           q.counterfactualVolume.GetName() if q.counterfactualVolume else None],
        "nnunet": [q.nnunetFolds, q.nnunetConfiguration, q.nnunetCheckpoint, q.nnunetMirroring, q.targetStructure],
        "cohort": [q.cohortFolder == str(cohort), q.cohortTable.GetName() if q.cohortTable else None],
    }
    results["expectedOutputVolume"] = boundaryResult.GetName()
    results["sampleData"] = sample_data(source, slicer, module)
    results["segmentStatistics"] = segment_statistics(source, slicer)
    out.write_text(json.dumps(results, indent=1))


def sample_data(source: Path, slicer, module) -> dict:
    """MedXAI's entries, registered with Slicer's own SampleData module (from the source checkout).

    ``registerSampleData`` runs twice (start-up, then e.g. a reload or the self-test): the entries must
    be registered once. The thumbnails must exist and the MNI template must carry its checksum.
    """
    if not hasattr(slicer, "modules"):
        slicer.modules = types.SimpleNamespace()
    sys.path.insert(0, str(source / "Modules" / "Scripted" / "SampleData"))
    import SampleData

    module.registerSampleData()
    module.registerSampleData()
    sources = SampleData.SampleDataLogic.sampleDataSourcesByCategory("MedXAI")
    return {"names": [s.sampleName for s in sources],
            "thumbnails": [Path(s.thumbnailFileName).is_file() for s in sources],
            "downloaders": [repr(s.customDownloader) if s.customDownloader else None for s in sources],
            "uris": [list(s.uris) for s in sources], "checksums": [list(s.checksums) for s in sources],
            "nodeNames": [list(s.nodeNames) for s in sources]}


def segment_statistics(source: Path, slicer) -> dict:
    """Slicer's own Segment Statistics logic with the MedXAI relevance plugin registered.

    Its plugin base class builds option widgets, so from here on the inert Qt returns inert objects
    from calls too; ``vtkITK`` (not in slicer-core) is only needed by the label map plugin, which is
    switched off; slicer-core has the segmentation core classes in ``slicer`` itself.
    """
    import numpy as np

    from MedXAIBridge import results as resultNodes
    from MedXAIBridge import segments, volumes
    from MedXAILib.attribution import Attribution

    inert = _Dummy.__getattr__

    def returning_inert(self, name):
        value = inert(self, name)
        return (lambda *a, **k: _Dummy()) if callable(value) and not isinstance(value, (_Signal, type)) else value

    _Dummy.__getattr__ = returning_inert
    sys.modules.setdefault("vtkITK", _FakeModule("vtkITK"))
    sys.modules.setdefault("vtkSegmentationCorePython", slicer)
    sys.path.insert(0, str(source / "Modules" / "Scripted" / "SegmentStatistics"))
    import SegmentStatistics

    from MedXAIRuntime import segmentStatisticsPlugin

    slicer.mrmlScene = scene = slicer.vtkMRMLScene()
    shape = (20, 16, 10)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    slicer.util.updateVolumeFromArray(volume, np.zeros(shape[::-1], np.float32))
    volume.SetSpacing(1.5, 0.9, 2.5)
    labels = np.zeros(shape, np.uint8)
    labels[3:9, 4:10, 2:6] = 1
    labels[12:16, 2:5, 1:4] = 2
    segmentation = segments.segmentationNodeFromLabelMap(scene, labels, volume, ["tumour", "vessel"], "anatomy")
    attribution = np.where(labels == 1, 2.0, 0.1).astype(np.float32)
    result = resultNodes.createAttributionNode(
        Attribution(array=attribution[np.newaxis], affine=volumes.imageVolumeFromNode(volume).affine,
                    provenance={"method": "saliency"}), volume)
    registered = [segmentStatisticsPlugin.registerPlugin(), segmentStatisticsPlugin.registerPlugin()]

    def compute(scalarVolume) -> dict:
        logic = SegmentStatistics.SegmentStatisticsLogic()
        parameters = logic.getParameterNode()
        for plugin in ("LabelmapSegmentStatisticsPlugin", "ClosedSurfaceSegmentStatisticsPlugin"):
            parameters.SetParameter(plugin + ".enabled", "False")
        parameters.SetParameter("Segmentation", segmentation.GetID())
        parameters.SetParameter("ScalarVolume", scalarVolume.GetID())
        logic.computeStatistics()
        table = scene.AddNewNodeByClass("vtkMRMLTableNode")
        logic.exportToTable(table)
        statistics = logic.getStatistics()
        rows = {}
        for segmentId in statistics["SegmentIDs"]:
            rows[statistics[segmentId, "Segment"]] = {key.split(".", 1)[1]: value for (sid, key), value in
                                                      ((k, v) for k, v in statistics.items() if isinstance(k, tuple))
                                                      if sid == segmentId and key.startswith("MedXAI")}
        return {"rows": rows, "columns": [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]}

    return {"registered": registered, "attribution": compute(result), "image": compute(volume)}


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
    os._exit(0)  # skip VTK/MRML teardown order issues of a script that faked qt
