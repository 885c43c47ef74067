import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import qt
import vtk

import slicer
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

# Keep this file importable at Slicer start-up: only MedXAILib's light core (no torch, no MONAI) is
# imported here; torch and MONAI are installed and imported when the user first applies a method
# (DESIGN.md, sections 1 and 6). MedXAIBridge (MRML <-> MedXAILib) and MedXAIRuntime (installs,
# runners, forms) do the work; this file is the GUI and about thirty lines of glue.
import MedXAILib
from MedXAILib.errors import InputError, ModelError
from MedXAILib.registry import FAMILIES
from MedXAIRuntime import boundaryPanel, cohortPanel, counterfactualPanel, evaluatePanel, layouts, statisticsPanel
from MedXAIRuntime import demo as demos
from MedXAIRuntime import dependencies, devices, forms, installer, jobs, modelPaths, process, runners, targets, views
from MedXAIRuntime.counterfactualPanel import CounterfactualGoal
from MedXAIRuntime.evaluatePanel import EvaluateMode
from MedXAIRuntime.runners import RunMode
from MedXAIRuntime.targets import TargetKind

RESULT_ATTRIBUTE = "MedXAI.Result"  # MedXAIBridge.results.RESULT_ATTRIBUTE
INPUT_REFERENCE = "MedXAI.InputVolume"  # reference from a result node to the volume it explains
COLORMAPS = ("auto", "diverging", "sequential")  # MedXAIBridge.display.applyAttributionDisplay


#
# MedXAI
#


class MedXAI(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedXAI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Explainable AI")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedXAI developers"]
        self.parent.helpText = _("""
Explain what a MONAI/PyTorch model sees in a CT, MRI or PET volume: attribution volumes shown as
colour-mapped layers over the image, segmentation-boundary saliency, per-structure relevance
statistics and counterfactual volumes.
Select a model (or load the demo) and an input volume, choose a method and what to explain, and
click Apply. Python packages (PyTorch through the PyTorch extension, MONAI) are installed on the
first Apply, after you confirm.
See the <a href="https://github.com/medxai/SlicerMedXAI">MedXAI documentation</a>.
""")
        self.parent.acknowledgementText = _("""
MedXAI builds on 3D Slicer, MONAI, PyTorch and Captum. The module layout follows the scripted module
template of 3D Slicer, originally developed by Jean-Christophe Fillion-Robin, Kitware Inc.,
Andras Lasso, PerkLab, and Steve Pieper, Isomics, Inc.
""")
        # The relevance plugin of Segment Statistics and the Sample Data entries, once every module is
        # loaded (as the module templates register sample data and editor effects).
        slicer.app.connect("startupCompleted()", registerSegmentStatisticsPlugin)
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSegmentStatisticsPlugin() -> None:
    """Add the MedXAI relevance measures to Segment Statistics (once; never fails Slicer's start-up)."""
    try:
        from MedXAIRuntime import segmentStatisticsPlugin

        segmentStatisticsPlugin.registerPlugin()
    except Exception:
        logging.exception("MedXAI: the Segment Statistics plugin could not be registered")


def registerSampleData() -> None:
    """Add MedXAI's data to the Sample Data module (never fails Slicer's start-up).

    - one entry per demo model (as SlicerMONAIAuto3DSeg registers one per model): the held-out CT + PET
      phantom is drawn in the background (nothing to download) and the MedXAI module opens with that
      model selected (:meth:`MedXAIWidget.loadDemo`);
    - the MNI ICBM152 2009a T1 template (1 mm, skull-stripped), downloaded from nilearn's repository
      at its 0.14.0 tag and checked against its SHA-256 (the file nilearn's wheel ships).
    """
    try:
        import SampleData
    except ImportError:
        return
    try:
        iconsPath = Path(__file__).parent / "Resources" / "Icons" / "SampleData"
        for demo in demos.DEMO_MODELS.values():
            SampleData.SampleDataLogic.registerCustomSampleDataSource(
                category="MedXAI",
                sampleName=f"MedXAI: {demo.title}",
                uris=[], fileNames=[], nodeNames=[],
                thumbnailFileName=str(iconsPath / f"{demo.name}.png"),
                customDownloader=DemoSampleLoader(demo.name),
            )
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="MedXAI",
            sampleName="MNI152 T1 (ICBM 2009a)",
            uris=[demos.MNI_T1_URL],
            fileNames=[demos.MNI_T1_FILE],
            nodeNames=["MNI152_T1"],
            checksums=[demos.MNI_T1_CHECKSUM],
            thumbnailFileName=str(iconsPath / "MNI152_T1.png"),
        )
    except Exception:
        logging.exception("MedXAI: the Sample Data entries could not be registered")


class DemoSampleLoader:
    """What a demo's Sample Data button does: open MedXAI and load that demo (drawn in the background).

    Its text is stable, so registering the same entry again (module reload, self-test) adds nothing:
    Sample Data compares sources by their text.
    """

    def __init__(self, name: str):
        self.name = name

    def __call__(self, source) -> None:
        slicer.util.selectModule("MedXAI")
        slicer.util.getModuleWidget("MedXAI").loadDemo(self.name)

    def __repr__(self) -> str:
        return f"MedXAI demo {self.name}"


#
# MedXAIParameterNode
#


@parameterNodeWrapper
class MedXAIParameterNode:
    """Every choice of the module, saved with the scene so that a loaded scene restores the module.

    Model: modelPath (file, MONAI bundle or nnU-Net v2 folder, or totalsegmentator:TASK), trustBundle, demoModel
        (name of the loaded demo), device ("auto", "cpu", "cuda:N"), runMode; for nnU-Net and TotalSegmentator
        models: nnunetFolds ("": every fold present; "0,1"; "all"), nnunetConfiguration (where a results folder
        holds several), nnunetCheckpoint ("final", "best"), nnunetMirroring (test-time mirroring).
    Input: inputVolume and the optional channels inputVolume2..4 (one per model input channel).
    Explain: method (registry name), methodParameters (JSON: {method: {parameter: value}}),
        targetKind, targetClass (-1: the predicted class), targetStructure (the class by the model's name for it,
        where the files name the classes; picks the part of a TotalSegmentator task), targetScore,
        targetReduction, segmentation + segmentId, targetRoi, targetFiducial, seed.
    Display: colormap, opacity, symmetricWindow, thresholdPercentile, topPercent (outline),
        foregroundInAllViews, show3D.
    Results: outputVolume (the result shown).
    Boundary: boundarySegmentation + boundarySegmentId (the structure; none: the predicted one),
        boundaryClass, boundaryInnerMm, boundaryOuterMm, boundaryScore; profile: boundaryBinMm,
        boundaryMaxMm, boundaryProfileTable; uncertainty: boundaryFlips, boundaryDropoutSamples,
        boundaryUncertaintyMap, boundaryUncertaintyLevel (outline), boundaryUncertaintyVolume.
    Statistics: statisticsAttribution, statisticsSegmentation, statisticsTopPercent,
        statisticsBoundaryMm, statisticsCompareResults, statisticsTable.
    Evaluate: evaluateMode, evaluateAttribution, evaluateMethods and evaluateMetrics (comma-separated
        names), evaluateSegmentation + evaluateSegmentId (reference region), evaluateTable.
    Counterfactual: counterfactualGoal, counterfactualClass, counterfactualTargetProbability (0: flip),
        counterfactualTargetVolumeMl, counterfactualGenerator, counterfactualParameters (JSON:
        {generator: {parameter: value}}), counterfactualSegmentation + counterfactualSegmentId (region),
        counterfactualCustomBounds, counterfactualBoundsMin, counterfactualBoundsMax,
        counterfactualOrientation (of the comparison views), counterfactualVolume (the result shown).
    Cohort QA: cohortFolder (a ``medxai cohort`` output folder), cohortTable (its table node).
    """

    modelPath: str = ""
    trustBundle: bool = False
    demoModel: str = demos.DEFAULT_DEMO
    device: str = "auto"
    runMode: RunMode = RunMode.auto
    nnunetFolds: str = ""
    nnunetConfiguration: str = ""
    nnunetCheckpoint: Annotated[str, Choice(list(modelPaths.CHECKPOINTS))] = "final"
    nnunetMirroring: bool = True

    inputVolume: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    inputVolume4: vtkMRMLScalarVolumeNode

    method: str = "integrated_gradients"
    methodParameters: str = "{}"
    targetKind: TargetKind = TargetKind.classScore
    targetClass: Annotated[int, WithinRange(-1, 10000)] = -1
    targetStructure: str = ""
    targetScore: Annotated[str, Choice(list(targets.SCORES))] = "logit"
    targetReduction: Annotated[str, Choice(list(targets.REDUCTIONS))] = "sum"
    segmentation: vtkMRMLSegmentationNode
    segmentId: str = ""
    targetRoi: vtkMRMLMarkupsROINode
    targetFiducial: vtkMRMLMarkupsFiducialNode
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0

    colormap: Annotated[str, Choice(list(COLORMAPS))] = "auto"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    symmetricWindow: bool = True
    thresholdPercentile: Annotated[float, WithinRange(0.0, 99.9)] = 0.0
    topPercent: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    foregroundInAllViews: bool = True
    show3D: bool = False

    outputVolume: vtkMRMLScalarVolumeNode

    boundarySegmentation: vtkMRMLSegmentationNode
    boundarySegmentId: str = ""
    boundaryClass: Annotated[int, WithinRange(0, 10000)] = 1
    boundaryInnerMm: Annotated[float, WithinRange(0.0, 50.0)] = 2.0
    boundaryOuterMm: Annotated[float, WithinRange(0.0, 50.0)] = 2.0
    boundaryScore: Annotated[str, Choice(list(boundaryPanel.SCORES))] = "margin"
    boundaryBinMm: Annotated[float, WithinRange(0.1, 10.0)] = 1.0
    boundaryMaxMm: Annotated[float, WithinRange(1.0, 100.0)] = 10.0
    boundaryFlips: bool = True
    boundaryDropoutSamples: Annotated[int, WithinRange(0, 1000)] = 0
    boundaryUncertaintyMap: Annotated[str, Choice(list(boundaryPanel.UNCERTAINTY_MAPS))] = "entropy"
    boundaryUncertaintyLevel: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    boundaryProfileTable: vtkMRMLTableNode
    boundaryUncertaintyVolume: vtkMRMLScalarVolumeNode

    statisticsAttribution: vtkMRMLScalarVolumeNode
    statisticsSegmentation: vtkMRMLSegmentationNode
    statisticsTopPercent: Annotated[float, WithinRange(0.1, 50.0)] = 5.0
    statisticsBoundaryMm: Annotated[float, WithinRange(0.0, 20.0)] = 2.0
    statisticsCompareResults: bool = False
    statisticsTable: vtkMRMLTableNode

    evaluateMode: EvaluateMode = EvaluateMode.result
    evaluateAttribution: vtkMRMLScalarVolumeNode
    evaluateMethods: str = ""
    evaluateMetrics: str = ",".join(evaluatePanel.DEFAULT_METRICS)
    evaluateSegmentation: vtkMRMLSegmentationNode
    evaluateSegmentId: str = ""
    evaluateTable: vtkMRMLTableNode

    counterfactualGoal: CounterfactualGoal = CounterfactualGoal.classProbability
    counterfactualClass: Annotated[int, WithinRange(0, 10000)] = 1
    counterfactualTargetProbability: Annotated[float, WithinRange(0.0, 0.99)] = 0.0
    counterfactualTargetVolumeMl: Annotated[float, WithinRange(0.0, 5000.0)] = 10.0
    counterfactualGenerator: str = "gradient_search"
    counterfactualParameters: str = "{}"
    counterfactualSegmentation: vtkMRMLSegmentationNode
    counterfactualSegmentId: str = ""
    counterfactualCustomBounds: bool = False
    counterfactualBoundsMin: Annotated[float, WithinRange(-100000.0, 100000.0)] = -1000.0
    counterfactualBoundsMax: Annotated[float, WithinRange(-100000.0, 100000.0)] = 3000.0
    counterfactualOrientation: Annotated[str, Choice(list(layouts.ORIENTATIONS))] = "Axial"
    counterfactualVolume: vtkMRMLScalarVolumeNode

    cohortFolder: str = ""
    cohortTable: vtkMRMLTableNode


#
# MedXAIWidget
#


FAMILY_TITLES = {
    "gradient": _("Gradient"),
    "cam": _("Class activation maps (CAM)"),
    "perturbation": _("Perturbation"),
    "game-theoretic": _("Game-theoretic (Shapley)"),
    "propagation": _("Propagation"),
    "counterfactual": _("Counterfactual"),
}


class MedXAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    The only place that shows dialogs; the logic lets errors rise and the runtime reports them.
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False
        self._form = None
        self._formMethod = None
        self._runner = None
        self._demoRunner = None
        self._deviceProbe = None
        self._devicesListed = False
        self._running = False
        self._runStarted = 0.0
        self._lastMessage = ""
        self._elapsedTimer = None
        self._sections = []
        self._modelInfoKey = None
        self._modelInfo = modelPaths.ModelInfo()

    # -- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedXAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui connects the top-level widget's mrmlSceneChanged(vtkMRMLScene*) signal to each MRML
        # widget's setMRMLScene(vtkMRMLScene*) slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedXAILogic()

        self._fillMethodComboBox()
        self._fillDemoComboBox()
        self._fillDeviceComboBox(devices.listDevices())
        self._form = forms.ParameterForm(self.ui.methodParametersGroupBox, onChanged=self.onMethodParametersChanged)
        self.ui.resultVolumeSelector.addAttribute("vtkMRMLScalarVolumeNode", RESULT_ATTRIBUTE, "attribution")
        self.ui.resultDetailsTableWidget.setHorizontalHeaderLabels([_("Property"), _("Value")])
        self.ui.progressBar.hide()
        self._elapsedTimer = qt.QTimer()
        self._elapsedTimer.setInterval(1000)
        self._elapsedTimer.connect("timeout()", self._showElapsed)

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Widgets that connectGui cannot bind (dynamic items, segment selector, path line edit)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.modelFolderButton.connect("clicked(bool)", self.onModelFolderButton)
        self.ui.demoModelComboBox.connect("currentIndexChanged(int)", self.onDemoModelChanged)
        self.ui.loadDemoButton.connect("clicked(bool)", self.onLoadDemoButton)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.nnunetConfigurationComboBox.connect("currentIndexChanged(int)", self.onNnunetConfigurationChanged)
        self.ui.targetStructureComboBox.connect("currentIndexChanged(int)", self.onTargetStructureChanged)
        self.ui.targetClassSpinBox.connect("valueChanged(int)", self.onTargetClassChanged)
        self.ui.targetSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentChanged)
        self.ui.targetSegmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.resultVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onResultChanged)

        # Buttons
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.applyDisplayButton.connect("clicked(bool)", self.onApplyDisplayButton)

        # Boundary, Statistics, Evaluate, Counterfactual and Cohort QA sections: their glue lives in MedXAIRuntime
        self._sections = [boundaryPanel.BoundarySection(self), statisticsPanel.StatisticsSection(self),
                          evaluatePanel.EvaluateSection(self), counterfactualPanel.CounterfactualSection(self),
                          cohortPanel.CohortSection(self)]
        registerSegmentStatisticsPlugin()  # in case the module was loaded after start-up

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def _fillMethodComboBox(self) -> None:
        """Methods grouped by family: a disabled header per family, then its methods."""
        combo = self.ui.methodComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for family in FAMILIES:
            infos = [info for info in MedXAILib.METHODS if info.family == family]
            if not infos:
                continue
            if combo.count:
                combo.insertSeparator(combo.count)
            combo.addItem(FAMILY_TITLES.get(family, family))
            combo.setItemData(combo.count - 1, 0, qt.Qt.UserRole - 1)  # item flags 0: a header
            for info in infos:
                combo.addItem("    " + info.title, info.name)
                combo.setItemData(combo.count - 1, info.summary, qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)

    def _fillDemoComboBox(self) -> None:
        combo = self.ui.demoModelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("(none)"), "")
        for demo in demos.DEMO_MODELS.values():
            combo.addItem(demo.title, demo.name)
            combo.setItemData(combo.count - 1, demo.description, qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)

    def _fillDeviceComboBox(self, items) -> None:
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for value, label in items:
            combo.addItem(label, value)
        combo.blockSignals(wasBlocked)
        self._updateGUIFromParameterNode()

    def _refreshDevices(self) -> None:
        """List the GPUs in a child process once torch is installed (never CUDA in Slicer's own process)."""
        if self._devicesListed or self._deviceProbe is not None or not devices.torchAvailable():
            return
        found = []

        def onLine(line) -> None:
            gpus = devices.parseProbeLine(line)
            if gpus is not None:
                found.append(gpus)

        def onFinished(code, message) -> None:
            self._deviceProbe = None
            if code == 0 and found:
                self._devicesListed = True
                self._fillDeviceComboBox(devices.listDevices(found[-1]))
            elif code != process.EXIT_CANCELLED:
                logging.warning(f"MedXAI: the GPUs could not be listed: {message}")

        self._deviceProbe = runners.CommandRunner()
        try:
            self._deviceProbe.start(devices.probeCommand(process.pythonExecutable()), onFinished, onLine)
        except Exception:
            self._deviceProbe = None
            logging.exception("MedXAI: the GPU probe could not start")

    # -- module life cycle -------------------------------------------------------------------

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._cancelRunning()
        if self._elapsedTimer is not None:
            self._elapsedTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()
        self._refreshDevices()  # in a child process, once torch is installed

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self._cancelRunning()
        # Parameter node will be reset, do not use it anymore
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        # If this module is shown while the scene is closed then recreate a new parameter node immediately
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onReload(self) -> None:
        """Reload the module's sub-packages too (Slicer reloads only MedXAI.py; `imp` is gone in 3.12)."""
        import importlib

        for name in sorted(sys.modules):
            if name.startswith(("MedXAIBridge.", "MedXAIRuntime.")) and sys.modules[name] is not None:
                importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        # Parameter node stores all user choices in parameter values, node selections, etc.
        # so that when the scene is saved and reloaded, these settings are restored.
        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            inputs = [v for v in volumes if not v.IsA("vtkMRMLLabelMapVolumeNode") and not v.GetAttribute(RESULT_ATTRIBUTE)]
            if inputs:
                self._parameterNode.inputVolume = inputs[0]

    def setParameterNode(self, inputParameterNode) -> None:
        """Set and observe parameter node.
        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        self._formMethod = None
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUIFromParameterNode)
            self._updateGUIFromParameterNode()

    # -- parameter node <-> widgets that connectGui does not handle --------------------------

    def _updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            shownPath = self.logic.modelPath(p)
            if self.ui.modelPathLineEdit.currentPath != shownPath:
                self.ui.modelPathLineEdit.currentPath = shownPath
            self._updateModelOptions(p)
            self._selectData(self.ui.demoModelComboBox, p.demoModel)
            self._selectData(self.ui.deviceComboBox, p.device, addMissing=True)
            self._selectData(self.ui.methodComboBox, p.method, addMissing=True)
            if self._formMethod != p.method:
                self._buildForm(p.method)
            elif self._form.specs:
                info = MedXAILib.METHODS.get(p.method)
                stored = forms.decodeMethodParameters(p.methodParameters).get(info.name)
                self._form.setValues(forms.valuesForMethod(info.params, stored))
            if self.ui.targetSegmentSelector.currentNode() != p.segmentation:
                self.ui.targetSegmentSelector.setCurrentNode(p.segmentation)
            if p.segmentation is not None and self.ui.targetSegmentSelector.currentSegmentID() != p.segmentId:
                self.ui.targetSegmentSelector.setCurrentSegmentID(p.segmentId)
            if self.ui.resultVolumeSelector.currentNode() != p.outputVolume:
                self.ui.resultVolumeSelector.setCurrentNode(p.outputVolume)
                self._showResultDetails(p.outputVolume)
            kind = p.targetKind
            for widgets, kinds in (
                ((self.ui.targetSegmentLabel, self.ui.targetSegmentSelector), (TargetKind.segment,)),
                ((self.ui.targetRoiLabel, self.ui.targetRoiSelector), (TargetKind.roi,)),
                ((self.ui.targetPointLabel, self.ui.targetPointSelector), (TargetKind.point, TargetKind.component)),
            ):
                for widget in widgets:
                    widget.visible = kind in kinds
            for section in self._sections:
                section.updateGUI(p)
        finally:
            self._updatingGUI = False
        self._checkCanApply()

    @staticmethod
    def _selectData(combo, value, addMissing=False) -> None:
        """Select the item whose data is `value` (adding it, e.g. a GPU a saved scene names)."""
        index = combo.findData(value)
        if index < 0 and addMissing and value:
            combo.addItem(_("{value} (not available)").format(value=value), value)
            index = combo.count - 1
        if index >= 0 and combo.currentIndex != index:
            combo.currentIndex = index

    def _buildForm(self, method) -> None:
        self._formMethod = method
        try:
            info = MedXAILib.METHODS.get(method)
        except MedXAILib.UnknownNameError as error:
            self._form.clear()
            self.ui.methodDescriptionLabel.text = str(error)
            return
        stored = forms.decodeMethodParameters(self._parameterNode.methodParameters).get(info.name)
        self._form.build(MedXAILib.param_specs(info.params), forms.valuesForMethod(info.params, stored))
        self.ui.methodDescriptionLabel.text = _("{summary}<br><i>Models:</i> {tasks}. <i>Reference:</i> {reference}").format(
            summary=info.summary, tasks=", ".join(info.tasks), reference=info.reference)

    def _currentModelInfo(self, p):
        """:class:`MedXAIRuntime.modelPaths.ModelInfo` of the chosen model, read again when the path or the
        configuration changes (the GUI updates often; the files are read once per choice)."""
        key = (self.logic.modelPath(p), p.nnunetConfiguration)
        if key != self._modelInfoKey:
            self._modelInfoKey = key
            self._modelInfo = self.logic.modelInfo(p)
        return self._modelInfo

    def _updateModelOptions(self, p) -> None:
        """The nnU-Net options for an nnU-Net or TotalSegmentator model, and the structures its files name."""
        info = self._currentModelInfo(p)
        ui = self.ui
        ui.nnunetOptionsGroupBox.visible = info.isNnunet
        kind = info.kind
        for widget in (ui.nnunetFoldsLabel, ui.nnunetFoldsLineEdit, ui.nnunetCheckpointLabel, ui.nnunetCheckpointComboBox):
            widget.visible = kind in (modelPaths.NNUNET_FOLDER, modelPaths.TOTALSEGMENTATOR)  # a fold's file fixes both
        for widget in (ui.nnunetMirroringLabel, ui.nnunetMirroringCheckBox):
            widget.visible = kind in (modelPaths.NNUNET_FOLDER, modelPaths.NNUNET_CHECKPOINT)  # TotalSegmentator never mirrors
        for widget in (ui.nnunetConfigurationLabel, ui.nnunetConfigurationComboBox):
            widget.visible = len(info.configurations) > 1
        combo = ui.nnunetConfigurationComboBox
        if [combo.itemData(i) for i in range(combo.count)] != list(info.configurations):
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for name in info.configurations:
                combo.addItem(name, name)
            combo.blockSignals(wasBlocked)
        self._selectData(combo, p.nnunetConfiguration)
        present = ", ".join(info.folds)
        ui.nnunetFoldsLineEdit.placeholderText = _("every fold present ({folds})").format(folds=present) if present \
            else _("every fold present")
        notes = [info.note] if info.note else []
        if info.isNnunet and not dependencies.nnunetReady():
            notes.append(_("The package that builds nnU-Net networks (dynamic-network-architectures) is installed "
                           "on the first Apply."))
        ui.nnunetNoteLabel.text = "\n".join(notes)
        ui.nnunetNoteLabel.visible = bool(notes)

        combo = ui.targetStructureComboBox
        items = [("", _("(by number)"))] + [(name, f"{name} ({index})") for name, index in info.structures]
        if [combo.itemData(i) or "" for i in range(combo.count)] != [name for name, _title in items]:
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for name, title in items:
                combo.addItem(title, name)
            combo.blockSignals(wasBlocked)
        combo.visible = bool(info.structures)
        self._selectData(combo, p.targetStructure if info.classIndex(p.targetStructure) is not None else "")

    def onModelPathChanged(self, path) -> None:
        if self._parameterNode and not self._updatingGUI:
            self.logic.setModelPath(self._parameterNode, str(path))

    def onModelFolderButton(self) -> None:
        start = self.logic.modelPath(self._parameterNode) if self._parameterNode else ""
        folder = qt.QFileDialog.getExistingDirectory(
            self.parent, _("Choose a model folder (MONAI bundle, nnU-Net v2 model or results folder)"), start)
        if folder and self._parameterNode:
            self.logic.setModelPath(self._parameterNode, folder)

    def onNnunetConfigurationChanged(self, index) -> None:
        if self._parameterNode and not self._updatingGUI:
            self._parameterNode.nnunetConfiguration = self.ui.nnunetConfigurationComboBox.itemData(index) or ""

    def onTargetStructureChanged(self, index) -> None:
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        name = self.ui.targetStructureComboBox.itemData(index) or ""
        with slicer.util.NodeModify(p):
            p.targetStructure = name
            classIndex = self._currentModelInfo(p).classIndex(name) if name else None
            if classIndex is not None:
                p.targetClass = classIndex

    def onTargetClassChanged(self, value) -> None:
        """A class number that is not the named structure's clears the name (the number is then what counts)."""
        p = self._parameterNode
        if p is None or self._updatingGUI or not p.targetStructure:
            return
        if self._currentModelInfo(p).classIndex(p.targetStructure) != value:
            p.targetStructure = ""

    def onDemoModelChanged(self, index) -> None:
        if self._parameterNode and not self._updatingGUI:
            self._parameterNode.demoModel = self.ui.demoModelComboBox.itemData(index) or ""

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode and not self._updatingGUI:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def onMethodChanged(self, index) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        name = self.ui.methodComboBox.itemData(index)
        if name:
            self._parameterNode.method = name
        else:  # a family header: keep the current method
            self._updateGUIFromParameterNode()

    def onMethodParametersChanged(self) -> None:
        p = self._parameterNode
        if p is None or self._updatingGUI or not self._formMethod:
            return
        data = forms.decodeMethodParameters(p.methodParameters)
        data[self._formMethod] = self._form.values()
        p.methodParameters = forms.encodeMethodParameters(data)

    def onSegmentChanged(self, *args) -> None:
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        with slicer.util.NodeModify(p):
            p.segmentation = self.ui.targetSegmentSelector.currentNode()
            p.segmentId = self.ui.targetSegmentSelector.currentSegmentID() or ""

    def onResultChanged(self, node) -> None:
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        p.outputVolume = node
        self._showResultDetails(node)
        if node is not None:
            try:
                self.logic.showInSliceViews(node, p)
            except Exception as error:
                self._showError(_("Failed to show the result."), error)

    def _showResultDetails(self, node) -> None:
        from MedXAIBridge import results

        table = self.ui.resultDetailsTableWidget
        rows = []
        if node is not None:
            try:
                rows = views.provenanceRows(results.attributionProvenance(node))
            except MedXAILib.MedXAIError as error:
                rows = [(_("Error"), str(error))]
        table.setRowCount(len(rows))
        for row, (key, value) in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(key))
            item = qt.QTableWidgetItem(value)
            item.setToolTip(value)
            table.setItem(row, 1, item)
        table.resizeColumnToContents(0)

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self._busy()
        reason = ""
        if p is None:
            reason = _("No parameter node")
        elif busy:
            reason = _("A computation is running")
        elif not p.inputVolume:
            reason = _("Select an input volume")
        elif not p.modelPath:
            reason = _("Select a model file or folder (MONAI bundle, nnU-Net), or load the demo")
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _("Compute the attribution volume")
        self.ui.loadDemoButton.enabled = not busy and bool(p and p.demoModel)
        self.ui.applyDisplayButton.enabled = bool(p and p.outputVolume)

    # -- Apply, progress, cancel -------------------------------------------------------------

    def _busy(self) -> bool:
        return self._running

    def _confirmInstall(self, message, details) -> bool:
        return slicer.util.confirmOkCancelDisplay(message, _("MedXAI: install Python packages"), detailedText=details)

    def _withDependencies(self, then, nnunet=False) -> None:
        """Call `then()` once torch, MONAI and the rest are installed: at once when they are, else after
        installing them in a background process (progress bar, Cancel; Slicer stays usable). `nnunet`: the
        model is an nnU-Net folder, whose networks need dynamic-network-architectures too."""
        if dependencies.dependenciesReady(nnunet):
            then()
            return
        try:
            plan = dependencies.prepareInstallation(self._confirmInstall, slicer.app.testingEnabled(), nnunet=nnunet)
        except Exception as error:
            self._showError(_("MedXAI cannot run until its Python packages are installed."), error)
            return
        if plan is None:
            then()
            return
        self._runner = runners.SubprocessRunner()
        try:
            self._setRunning(True)
            self._runner.startJob(installer.InstallJob(plan), self._onProgress,
                                  lambda outcome: self._onInstallFinished(outcome, then, nnunet))
        except Exception as error:
            self._runner = None
            self._setRunning(False)
            self._showError(_("The installation of MedXAI's Python packages could not start."), error)

    def _onInstallFinished(self, outcome, then, nnunet=False) -> None:
        self._runner = None
        self._setRunning(False)
        if outcome.cancelled:
            self.ui.statusLabel.text = _("Installation cancelled; click Apply to try again.")
            return
        try:
            if outcome.error is not None:
                raise outcome.error
            dependencies.finishInstallation(nnunet=nnunet)
        except Exception as error:
            # the message says why (pip's reason) and what to do; the details hold pip's last lines
            self.ui.statusLabel.text = _("The installation failed.")
            self._showError(_("MedXAI could not install its Python packages."), error, outcome.log)
            return
        self.ui.statusLabel.text = _("Python packages installed.")
        self._refreshDevices()
        then()

    def onApplyButton(self) -> None:
        """Run processing when user clicks "Apply" button."""
        if self._busy():
            return
        try:
            request = self.logic.buildRequest(self._parameterNode)
        except Exception as error:
            self._showError(_("Failed to start the explanation."), error)
            return
        self.startExplain(request)

    def startExplain(self, request) -> None:
        """Run an explanation request with progress and Cancel; the result is shown on the input's grid."""
        p = self._parameterNode
        inputVolume = p.inputVolume if p is not None else None  # the result goes on this grid even if the selection changes

        def onResult(result) -> str:
            return self.logic.showResult(result.attribution(), self._parameterNode, inputVolume).GetName()

        self.runAnalysis(request, onResult, "explanation")

    def runAnalysis(self, request, onResult, what: str) -> None:
        """Run any request (:class:`MedXAILib.runs.RunRequest`) with progress and Cancel, in Slicer or in the background.

        `onResult(RunResult)` turns the result into nodes and returns the text for the status line.
        Missing Python packages are installed first (in the background, after the user agrees).
        """
        if self._busy():
            return
        self._withDependencies(lambda: self._startAnalysis(request, onResult, what),
                               modelPaths.isNnunetModel(request.model_path))

    def _startAnalysis(self, request, onResult, what: str) -> None:
        p = self._parameterNode
        if p is None:
            return
        try:
            mode = runners.chooseRunMode(p.runMode, request)
            self._runner = runners.InProcessRunner() if mode == "inProcess" else runners.SubprocessRunner()
            image = request.image
            logging.info(f"MedXAI: {what} ({request.arguments.get('method', request.kind.value)}) on {image.shape} "
                         f"voxels x {image.n_channels} channel(s), {mode}, device {request.device}")
            self._setRunning(True)
            self._runner.start(request, self._onProgress,
                               lambda outcome: self._onAnalysisFinished(outcome, onResult, what))
        except Exception as error:
            self._runner = None
            self._setRunning(False)
            self._showError(_("Failed to start the {what}.").format(what=what), error)

    def _onAnalysisFinished(self, outcome, onResult, what: str) -> None:
        self._runner = None
        self._setRunning(False)
        if outcome.cancelled:
            self.ui.statusLabel.text = _("Cancelled after {seconds:.1f} s; nothing was created.").format(seconds=outcome.seconds)
            return
        if outcome.error is not None:
            self.ui.statusLabel.text = _("Failed: {error}").format(error=outcome.error)
            self._showError(_("The {what} failed.").format(what=what), outcome.error, outcome.log)
            return
        try:
            with slicer.util.WaitCursor():
                shown = onResult(outcome.result)
        except Exception as error:
            self._showError(_("The {what} could not be shown.").format(what=what), error)
            return
        self.ui.progressBar.value = 1000
        self.ui.statusLabel.text = _("Done in {seconds:.1f} s: {name}").format(seconds=outcome.seconds, name=shown)

    # -- what the sections use (MedXAIRuntime.*Panel) ----------------------------------------

    def parameterNode(self):
        return self._parameterNode

    def updating(self) -> bool:
        """True while the GUI is being updated from the parameter node (ignore widget signals then)."""
        return self._updatingGUI

    def busy(self) -> bool:
        return self._busy()

    def showError(self, what, error, details="") -> None:
        self._showError(what, error, details)

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def _onProgress(self, fraction, message, elapsedSeconds) -> None:
        self.ui.progressBar.value = int(round(1000 * fraction))
        self._lastMessage = message
        self.ui.statusLabel.text = _("{message} ({seconds:.0f} s)").format(message=message, seconds=elapsedSeconds)

    def _showElapsed(self) -> None:
        if self._busy():
            seconds = time.monotonic() - self._runStarted
            self.ui.statusLabel.text = _("{message} ({seconds:.0f} s)").format(message=self._lastMessage, seconds=seconds)

    def onCancelButton(self) -> None:
        self._cancelRunning()

    def _cancelRunning(self) -> None:
        for runner in (self._runner, self._demoRunner, self._deviceProbe):
            if runner is not None and runner.running:
                runner.cancel()  # returns at once: the process tree is stopped on a thread

    def _setRunning(self, running, indeterminate=False) -> None:
        self._running = running
        self._lastMessage = _("Starting")
        if running:
            self._runStarted = time.monotonic()
            self.ui.progressBar.setRange(0, 0 if indeterminate else 1000)
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = ""
            self._elapsedTimer.start()
        else:
            self._elapsedTimer.stop()
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.hide()
        self.ui.cancelButton.enabled = running
        if self._parameterNode is None:
            self._checkCanApply()
        else:
            self._updateGUIFromParameterNode()  # the buttons of every section follow the busy state

    def onApplyDisplayButton(self) -> None:
        p = self._parameterNode
        if p is None or p.outputVolume is None:
            return
        try:
            with slicer.util.WaitCursor():
                self.logic.applyDisplay(p.outputVolume, p)
        except Exception as error:
            self._showError(_("Failed to apply the display settings."), error)

    def _showError(self, what, error, details="") -> None:
        """The one place that shows an error dialog: the message, with the details in the log."""
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        logging.error(f"{what}\n{trace}{details}")
        slicer.util.errorDisplay(f"{what}\n\n{error}", detailedText=(details + "\n\n" + trace).strip())

    # -- demo --------------------------------------------------------------------------------

    def onLoadDemoButton(self) -> None:
        p = self._parameterNode
        if p is not None:
            self.loadDemo(p.demoModel)

    def loadDemo(self, name: str) -> None:
        """Load the demo phantom (CT + PET, drawn in the background the first time) and select demo model
        `name` (a key of ``MedXAIRuntime.demo.DEMO_MODELS``): input volumes, shipped model and target."""
        demo = demos.DEMO_MODELS.get(name)
        if demo is None or self._busy() or self._parameterNode is None:
            return
        folder = Path(slicer.app.temporaryPath) / "MedXAI" / "demo"
        if all(path.is_file() for path in demos.demoOutputs(folder).values()):
            self._loadDemo(demo, folder)
            return
        self._demoRunner = runners.CommandRunner()
        try:
            self._demoRunner.start(demos.demoCommand(process.pythonExecutable(), folder),
                                   lambda code, message: self._onDemoFinished(demo, folder, code, message),
                                   self._onDemoLine)
        except Exception as error:
            self._demoRunner = None
            self._showError(_("Failed to start the demo."), error)
            return
        self._setRunning(True)
        self._lastMessage = _("Drawing the demo's CT and PET phantom (a few seconds)")
        self._showElapsed()

    def _onDemoLine(self, line) -> None:
        event = process.parseOutputLine(line)
        if isinstance(event, process.ProgressEvent):
            self._onProgress(event.fraction, event.message, event.elapsedSeconds)

    def _onDemoFinished(self, demo, folder, code, message) -> None:
        self._demoRunner = None
        self._setRunning(False)
        if code == process.EXIT_CANCELLED:
            self.ui.statusLabel.text = _("Demo cancelled.")
        elif code != 0:
            self._showError(_("The demo failed."), RuntimeError(message))
        else:
            self._loadDemo(demo, folder)

    def _loadDemo(self, demo, folder) -> None:
        p = self._parameterNode
        try:
            with slicer.util.WaitCursor():
                nodes = demos.loadDemo(slicer.mrmlScene, folder)
        except Exception as error:
            self._showError(_("The demo volumes could not be loaded."), error)
            return
        settings = demos.demoSettings(demo, nodes)
        with slicer.util.NodeModify(p):
            p.inputVolume = settings["inputVolume"]
            p.inputVolume2 = settings["inputVolume2"]
            p.modelPath = settings["modelPath"]
            p.demoModel = settings["demoModel"]
            p.targetKind = TargetKind[settings["targetKind"]]
            p.targetClass = settings["targetClass"]
        slicer.util.setSliceViewerLayers(background=nodes["ct"], foreground=None, fit=True)
        self.ui.statusLabel.text = _("Demo ready: {title}. Click Apply.").format(title=demo.title)


#
# MedXAILogic
#


class MedXAILogic(ScriptedLoadableModuleLogic):
    """Glue: parameter node -> Bridge (MRML to MedXAILib) -> runner -> Bridge (result nodes).

    Can be used without the widget. MedXAILib errors (``MedXAILib.MedXAIError``) rise to the caller.
    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedXAIParameterNode(super().getParameterNode())

    @staticmethod
    def inputVolumeNodes(p) -> list:
        return [node for node in (p.inputVolume, p.inputVolume2, p.inputVolume3, p.inputVolume4) if node is not None]

    def buildRequest(self, p, target=None):
        """The parameter node's nodes and choices as an explanation's :class:`MedXAILib.runs.RunRequest` (nothing is computed).

        `target` replaces the Explain section's target (the Boundary section's band, for example).
        """
        from MedXAIBridge import segments, volumes

        if p.inputVolume is None:
            raise InputError(_("Select the input volume."))
        if not p.modelPath:
            raise ModelError(_("Select a model file or folder (MONAI bundle, nnU-Net), or load the demo."))
        modelPath = self.modelPath(p)
        model = self.modelInfo(p)  # the model's files, read once for the options and the structure
        options = self.modelOptions(p, model)
        info = MedXAILib.METHODS.get(p.method)
        image = volumes.imageVolumeFromNodes(self.inputVolumeNodes(p))
        if target is not None:
            params = forms.valuesForMethod(info.params, forms.decodeMethodParameters(p.methodParameters).get(info.name))
            return jobs.explainRequest(image, modelPath, info.name, params, target, p.device, p.seed, p.trustBundle,
                                       options)
        kind = p.targetKind
        target = targets.targetFromSettings(
            kind, image.affine, image.shape, classIndex=self.targetClassIndex(p, model), score=p.targetScore,
            reduction=p.targetReduction,
            mask=segments.maskFromSegment(p.segmentation, p.segmentId, p.inputVolume)
            if kind is TargetKind.segment and p.segmentation else None,
            roiCornersRas=targets.roiCornersFromNode(p.targetRoi) if kind is TargetKind.roi and p.targetRoi else None,
            pointRas=targets.pointFromNode(p.targetFiducial)
            if kind in (TargetKind.point, TargetKind.component) and p.targetFiducial else None,
            worldToImage=targets.worldToVolumeMatrix(p.inputVolume),
        )
        params = forms.valuesForMethod(info.params, forms.decodeMethodParameters(p.methodParameters).get(info.name))
        return jobs.explainRequest(image, modelPath, info.name, params, target, p.device, p.seed, p.trustBundle,
                                   options)

    def modelInfo(self, p):
        """What the model's files say (nnU-Net or TotalSegmentator, configurations, folds, class names); no torch."""
        return modelPaths.describeModel(self.modelPath(p), p.nnunetConfiguration)

    def modelOptions(self, p, model=None) -> dict:
        """The request's ``model_options``: the nnU-Net choices that apply to the model, and the structure that
        picks a TotalSegmentator task's part (``MedXAIRuntime.modelPaths.modelOptions``). `model`: its
        :meth:`modelInfo` when the caller has it."""
        return modelPaths.modelOptions(model or self.modelInfo(p), p.nnunetFolds, p.nnunetConfiguration, p.nnunetCheckpoint,
                                       p.nnunetMirroring, p.targetStructure)

    def targetClassIndex(self, p, model=None) -> int:
        """The class to explain: the named structure's output channel where the model's files name it, else
        the class number. `model`: its :meth:`modelInfo` when the caller has it."""
        if p.targetStructure:
            named = (model or self.modelInfo(p)).classIndex(p.targetStructure)
            if named is not None:
                return named
        return p.targetClass

    @staticmethod
    def _sceneDirectory(p) -> str:
        scene = p.parameterNode.GetScene() if p is not None and p.parameterNode is not None else None
        return scene.GetRootDirectory() if scene is not None else ""

    def modelPath(self, p) -> str:
        """The model's absolute path; the parameter node may hold it relative to the scene folder or as a
        shipped demo model (``MedXAIRuntime.modelPaths``)."""
        return modelPaths.resolveModelPath(p.modelPath, self._sceneDirectory(p)) if p is not None else ""

    def setModelPath(self, p, path: str) -> None:
        """Store `path` relative to the scene's folder where possible, so a moved scene keeps its model.

        For an nnU-Net results folder holding several configurations, one is chosen (3d_fullres where there
        is one) unless the stored choice is one of them.
        """
        with slicer.util.NodeModify(p):
            p.modelPath = modelPaths.storedModelPath(str(path).strip(), self._sceneDirectory(p))
            configurations = modelPaths.describeModel(self.modelPath(p)).configurations
            if configurations and p.nnunetConfiguration not in configurations:
                p.nnunetConfiguration = "3d_fullres" if "3d_fullres" in configurations else configurations[0]

    def showResult(self, attribution, p, inputVolume=None):
        """A new result node for `attribution` on the grid of `inputVolume` (default: the selected input)."""
        from MedXAIBridge import results

        node = results.createAttributionNode(attribution, inputVolume or p.inputVolume)
        p.outputVolume = node
        self.applyDisplay(node, p)
        return node

    def applyDisplay(self, node, p) -> None:
        """Colours, window, threshold, top-% outline, slice views and 3D for a result node."""
        from MedXAIBridge import display

        display.applyAttributionDisplay(node, p.colormap, p.opacity, p.symmetricWindow, p.thresholdPercentile)
        if p.foregroundInAllViews:
            self.showInSliceViews(node, p)
        views.showTopOutline(node, p.topPercent)
        views.showVolumeRendering(node, p.show3D)

    def showInSliceViews(self, node, p) -> None:
        """Show the result over its input in every slice view; views that did not show the input are
        fitted to it (the user's zoom in the others is kept)."""
        from MedXAIBridge import display

        display.showInSliceViews(node.GetScene(), node.GetNodeReference(INPUT_REFERENCE) or p.inputVolume, node,
                                 p.opacity, sliceLogics=self.sliceLogics())

    @staticmethod
    def sliceLogics():
        """The application's slice view logics (None without a main window, e.g. in a script)."""
        applicationLogic = getattr(slicer.app, "applicationLogic", None)
        return applicationLogic().GetSliceLogics() if applicationLogic is not None else None

    def process(self, p):
        """Explain in this process and return the result node (scripts and tests; errors rise)."""
        return self.showResult(jobs.runInProcess(self.buildRequest(p)).attribution(), p)


#
# MedXAITest
#


class MedXAITest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_MedXAILibImports()
        self.setUp()
        self.test_ParameterNode()
        self.setUp()
        self.test_ExplainSyntheticVolume()
        self.setUp()
        self.test_AnalysisPanels()
        self.setUp()
        self.test_NnunetModelOptions()
        self.setUp()
        self.test_CohortTable()
        self.setUp()
        self.test_DemoAndSampleData()

    def test_MedXAILibImports(self):
        """The library shipped beside the module (qt-scripted-modules/MedXAILib) imports."""
        self.delayDisplay("Starting the test")

        import MedXAILib

        self.assertTrue(hasattr(MedXAILib, "__version__"))
        logging.info(f"MedXAILib {MedXAILib.__version__} loaded from {MedXAILib.__file__}")
        self.assertGreater(len(MedXAILib.METHODS), 0)

        logic = MedXAILogic()
        self.assertIsNotNone(logic)

        self.delayDisplay("Test passed")

    def test_ParameterNode(self):
        """Every choice round-trips through the parameter node, and the default method exists."""
        p = MedXAILogic().getParameterNode()
        self.assertIn(p.method, MedXAILib.METHODS)
        self.assertIs(p.targetKind, TargetKind.classScore)
        p.targetKind = TargetKind.roi
        p.runMode = RunMode.subprocess
        p.methodParameters = forms.encodeMethodParameters({"saliency": {"absolute": True}})
        p.opacity = 0.8
        p.boundaryScore = "logit"
        p.evaluateMode = EvaluateMode.compare
        p.counterfactualGoal = CounterfactualGoal.structureVolume
        p.nnunetFolds, p.nnunetCheckpoint, p.nnunetMirroring = "0,1", "best", False
        p.targetStructure = "liver"
        again = MedXAILogic().getParameterNode()
        self.assertEqual((again.nnunetFolds, again.nnunetCheckpoint, again.nnunetMirroring, again.targetStructure),
                         ("0,1", "best", False, "liver"))
        self.assertEqual(again.boundaryScore, "logit")
        self.assertIs(again.evaluateMode, EvaluateMode.compare)
        self.assertIs(again.counterfactualGoal, CounterfactualGoal.structureVolume)
        self.assertIs(again.targetKind, TargetKind.roi)
        self.assertIs(again.runMode, RunMode.subprocess)
        self.assertEqual(forms.decodeMethodParameters(again.methodParameters), {"saliency": {"absolute": True}})
        self.assertAlmostEqual(again.opacity, 0.8)
        self.delayDisplay("Parameter node test passed")

    def test_ExplainSyntheticVolume(self):
        """Apply through the logic in process on a synthetic oblique volume with a tiny MONAI model."""
        if not dependencies.dependenciesReady():
            # pip_ensure installs nothing in testing mode; install torch and MONAI once with Apply.
            logging.warning("MedXAITest: torch/MONAI are not installed; skipping the explanation test")
            self.delayDisplay("Skipped: torch and MONAI are not installed")
            return

        import tempfile

        import numpy as np
        import torch
        from monai.networks.nets import Classifier

        from MedXAILib.model import save_spec_model

        self.delayDisplay("Creating a synthetic volume and a tiny model")
        shape = (20, 18, 12)  # I, J, K
        rng = np.random.default_rng(0)
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MedXAITestInput")
        slicer.util.updateVolumeFromArray(volumeNode, rng.normal(size=shape[::-1]).astype(np.float32))  # (K, J, I)
        angle = np.deg2rad(25.0)
        ijkToRas = np.eye(4)
        ijkToRas[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0],
                                     [0.0, 0.0, 1.0]]) @ np.diag([1.5, 0.9, 2.5])
        ijkToRas[:3, 3] = (-20.0, 35.0, 12.5)
        volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))

        logic = MedXAILogic()
        p = logic.getParameterNode()
        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(0)
            args = {"in_shape": [1, *shape], "classes": 2, "channels": [4, 8], "strides": [2, 2]}
            spec = save_spec_model(Classifier(**args), "Classifier", args, Path(folder) / "tiny.json",
                                   task="classification", class_names=["normal", "lesion"], in_channels=1)
            p.inputVolume = volumeNode
            p.modelPath = str(spec)
            p.method = "integrated_gradients"
            p.methodParameters = forms.encodeMethodParameters({"integrated_gradients": {"n_steps": 8}})
            p.targetKind = TargetKind.classScore
            p.targetClass = 1
            p.device = "cpu"
            self.delayDisplay("Explaining in process")
            node = logic.process(p)

            self.assertIs(p.outputVolume, node)
            self.assertEqual(node.GetImageData().GetDimensions(), volumeNode.GetImageData().GetDimensions())
            np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(self.ijkToRas(node)),
                                       slicer.util.arrayFromVTKMatrix(self.ijkToRas(volumeNode)), atol=1e-6)
            values = slicer.util.arrayFromVolume(node)
            self.assertTrue(np.all(np.isfinite(values)))
            self.assertGreater(float(np.abs(values).max()), 0.0)
            self.assertEqual(node.GetAttribute("MedXAI.Method"), "integrated_gradients")
            self.assertIsNotNone(slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node), "no colour legend")

            self.delayDisplay("Explaining in a background process")
            request = logic.buildRequest(p)
            outcomes = []
            runner = runners.SubprocessRunner()
            runner.start(request, lambda fraction, message, seconds: None, outcomes.append)
            deadline = time.monotonic() + 300
            while not outcomes and time.monotonic() < deadline:
                slicer.app.processEvents()
                time.sleep(0.05)
            self.assertTrue(outcomes, "the background process did not finish in time")
            self.assertIsNone(outcomes[0].error, outcomes[0].log)
            np.testing.assert_allclose(outcomes[0].attribution.array[0], values.transpose(2, 1, 0), rtol=1e-4, atol=1e-6)

        self.delayDisplay("Test passed")

    def test_AnalysisPanels(self):
        """Statistics, the Segment Statistics plugin and the comparison layout on a synthetic result (no torch)."""
        import numpy as np

        from MedXAIBridge import results, segments, volumes
        from MedXAILib.attribution import Attribution
        from SegmentStatistics import SegmentStatisticsLogic

        self.delayDisplay("Creating a volume, two segments and an attribution result")
        shape = (24, 20, 12)
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MedXAITestInput")
        slicer.util.updateVolumeFromArray(volumeNode, np.random.default_rng(0).normal(size=shape[::-1]).astype(np.float32))
        volumeNode.SetSpacing(1.5, 0.9, 2.5)
        labels = np.zeros(shape, np.uint8)
        labels[4:12, 5:12, 3:8] = 1
        labels[15:20, 2:6, 2:5] = 2
        segmentation = segments.segmentationNodeFromLabelMap(slicer.mrmlScene, labels, volumeNode, ["tumour", "vessel"],
                                                             "anatomy")
        attribution = np.where(labels == 1, 2.0, 0.1).astype(np.float32)  # (I, J, K), relevance in the tumour
        affine = volumes.imageVolumeFromNode(volumeNode).affine
        resultNode = results.createAttributionNode(
            Attribution(array=attribution[np.newaxis], affine=affine, provenance={"method": "saliency"}), volumeNode)

        self.delayDisplay("Statistics per structure")
        p = MedXAILogic().getParameterNode()
        p.statisticsAttribution, p.statisticsSegmentation = resultNode, segmentation
        table, node = statisticsPanel.computeStatistics(p)
        statisticsPanel.showStatistics(p, table, node)
        self.assertEqual(p.statisticsTable.GetTable().GetNumberOfRows(), 3)
        self.assertEqual(table["peak_distance_mm"][1], 0.0)  # the map's maximum lies in the tumour
        self.assertGreater(table["peak_distance_mm"][2], 0.0)

        self.delayDisplay("Segment Statistics with the MedXAI relevance plugin")
        registerSegmentStatisticsPlugin()
        logic = SegmentStatisticsLogic()
        logic.getParameterNode().SetParameter("Segmentation", segmentation.GetID())
        logic.getParameterNode().SetParameter("ScalarVolume", resultNode.GetID())
        logic.computeStatistics()
        statistics = logic.getStatistics()
        tumour = segmentation.GetSegmentation().GetNthSegmentID(0)
        key = "MedXAIRelevanceSegmentStatisticsPlugin.share_abs"
        self.assertAlmostEqual(statistics[tumour, key], table["share_abs"][1], places=6)
        logic.getParameterNode().SetParameter("ScalarVolume", volumeNode.GetID())  # not an attribution: no columns
        logic.computeStatistics()
        self.assertNotIn((tumour, key), logic.getStatistics())

        self.delayDisplay("Comparison layout: original, counterfactual, difference")
        layouts.showComparisonLayout("Coronal")
        layoutManager = slicer.app.layoutManager()
        self.assertEqual(layoutManager.layout, layouts.COMPARISON_LAYOUT_ID)
        for view in layouts.COMPARISON_VIEWS:
            self.assertIsNotNone(layoutManager.sliceWidget(view.layoutName), view.layoutName)
        self.assertEqual(layouts.setComparisonLayers(slicer.mrmlScene, volumeNode, resultNode, resultNode), 3)
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        self.delayDisplay("Analysis panels test passed")

    def test_NnunetModelOptions(self):
        """An nnU-Net results folder is recognised without torch: its configuration is chosen, the section shows
        the nnU-Net options and the structures of dataset.json, and the choices become the request's model options."""
        import json
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            dataset = Path(folder) / "Dataset001_Liver"
            for configuration in ("2d", "3d_fullres"):
                model = dataset / f"nnUNetTrainer__nnUNetPlans__{configuration}"
                for fold in (0, 1):
                    (model / f"fold_{fold}").mkdir(parents=True)
                    (model / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"")
                (model / "dataset.json").write_text(json.dumps(
                    {"labels": {"background": 0, "liver": 1, "tumour": 2}, "channel_names": {"0": "CT"}}))
                (model / "plans.json").write_text("{}")
            widget = slicer.util.getModuleWidget("MedXAI")
            logic = MedXAILogic()
            p = logic.getParameterNode()
            logic.setModelPath(p, str(dataset))
            self.assertEqual(p.nnunetConfiguration, "3d_fullres")
            info = logic.modelInfo(p)
            self.assertEqual((info.kind, info.configurations, info.folds),
                             (modelPaths.NNUNET_FOLDER, ("2d", "3d_fullres"), ("0", "1")))
            p.nnunetFolds, p.nnunetCheckpoint, p.nnunetMirroring, p.targetStructure = "1", "best", False, "tumour"
            self.assertEqual(logic.modelOptions(p), {"folds": [1], "checkpoint": "best", "configuration": "3d_fullres",
                                                     "mirroring": False})
            self.assertEqual(logic.targetClassIndex(p), 2)
            if widget is not None:  # the widget shows the options of the model chosen in its parameter node
                widget.setParameterNode(p)
                self.assertFalse(widget.ui.nnunetOptionsGroupBox.isHidden())
                self.assertEqual(widget.ui.nnunetConfigurationComboBox.count, 2)
                self.assertEqual(widget.ui.targetStructureComboBox.count, 4)  # (by number), background, liver, tumour
                p.modelPath = ""
                self.assertTrue(widget.ui.nnunetOptionsGroupBox.isHidden())
        self.delayDisplay("nnU-Net options test passed")

    def test_CohortTable(self):
        """A cohort folder's table opens as a table node (reopening replaces it); a failed case says why in one line."""
        import tempfile

        from MedXAIBridge.cohortNodes import cohortTableNodes
        from MedXAIRuntime import cohortTable

        header = "case_id,status,structure,label,risk,entropy,tta_dice,error,scene,site"
        lines = [header, "c1,done,liver,1,0.25,0.25,0.9,,cases/c1/scene.mrb,A",
                 "c2,done,liver,1,0.75,0.75,0.4,,cases/c2/scene.mrb,B", "c3,failed,,-1,nan,nan,nan,unreadable image,,A"]
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "table.csv").write_text("\n".join(lines) + "\n")
            node = cohortTable.openCohortFolder(folder)
            self.assertEqual(node.GetTable().GetNumberOfRows(), 3)
            again = cohortTable.openCohortFolder(folder)
            self.assertEqual(cohortTableNodes(slicer.mrmlScene, folder), [again])
            text = cohortPanel.tableSummaryText(again)
            self.assertIn("3 cases, 1 failed (c3)", text)
            self.assertIn("QA score: entropy", text)
            with self.assertRaisesRegex(InputError, "failed \\(unreadable image\\)"):
                cohortTable.loadRow(again, 2)
            self.assertEqual(cohortTable.followedTables(), [again])
            widget = slicer.util.getModuleWidget("MedXAI")
            if widget is not None:  # a table restored with a saved scene is followed again when the section shows it
                p = widget.logic.getParameterNode()
                cohortTable.followSelection(slicer.app.layoutManager().tableWidget(0).tableView(), node)
                widget.setParameterNode(p)
                p.cohortTable = again
                self.assertEqual(cohortTable.followedTables(), [again])
            with self.assertRaisesRegex(InputError, "no cohort table"):
                cohortTable.openCohortFolder(Path(folder) / "missing")
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        self.delayDisplay("Cohort table test passed")

    def test_DemoAndSampleData(self):
        """The demo's phantom loads with its shipped models selected; Sample Data lists MedXAI's entries."""
        import tempfile

        self.delayDisplay("Drawing the demo phantom")
        with tempfile.TemporaryDirectory() as folder:
            demos.writeDemoInputs(folder)
            nodes = demos.loadDemo(slicer.mrmlScene, folder)
            self.assertIs(demos.loadDemo(slicer.mrmlScene, folder)["ct"], nodes["ct"])  # loaded once
        self.assertEqual(nodes["ct"].GetImageData().GetDimensions(), nodes["pet"].GetImageData().GetDimensions())
        logic = MedXAILogic()
        p = logic.getParameterNode()
        for demo in demos.DEMO_MODELS.values():
            settings = demos.demoSettings(demo, nodes)
            p.modelPath = settings["modelPath"]
            self.assertTrue(Path(logic.modelPath(p)).is_file(), f"{demo.modelFile} is not packaged")
        registerSampleData()
        import SampleData

        names = [source.sampleName for source in SampleData.SampleDataLogic.sampleDataSourcesByCategory("MedXAI")]
        self.assertEqual(len(names), len(demos.DEMO_MODELS) + 1, names)
        self.delayDisplay("Demo and Sample Data test passed")

    @staticmethod
    def ijkToRas(volumeNode):
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return matrix
