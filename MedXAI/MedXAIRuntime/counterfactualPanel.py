"""The Counterfactual section: generate a counterfactual volume and compare it with the original.

:func:`MedXAILib.counterfactual.generate_counterfactual` looks for a changed input x' for which the
model's output meets a goal (:class:`CounterfactualGoal`: a class probability, removing a
predicted structure, or a structure volume), with a generator from
:data:`MedXAILib.counterfactual.GENERATORS` whose parameter form is generated from its dataclass
(:mod:`MedXAIRuntime.forms`, values kept as JSON in the parameter node as for the methods). Change
can be confined to a segment (the region); intensities stay within the input's own range, or
within custom bounds (e.g. an HU range).

The result becomes two volumes on the input grid (the counterfactual, shown with the input's
window so both read alike, and the signed difference x' - x in diverging colours, zero
transparent), a table of the predictions before and after and the change metrics
(:func:`metricsRows`), and the three-view comparison original | counterfactual | difference
(:mod:`MedXAIRuntime.layouts`). The generation is a ``counterfactual`` run
(:class:`MedXAILib.runs.RunRequest`), in the background by default.

Everything but :class:`CounterfactualSection` is Qt-free.
"""

from __future__ import annotations

import enum
import json
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from MedXAILib.errors import InputError

from . import analysisNodes, jobs

if TYPE_CHECKING:
    from MedXAILib.runs import RunRequest, RunResult

__all__ = [
    "CounterfactualGoal",
    "DIFFERENCE_REFERENCE",
    "goalArguments",
    "boundsFromSettings",
    "generatorValues",
    "metricsRows",
    "buildCounterfactualRequest",
    "showCounterfactual",
    "showComparison",
    "CounterfactualSection",
]

DIFFERENCE_REFERENCE = "MedXAI.Difference"  # from a counterfactual node to its difference volume
SUMMARY_ATTRIBUTE = "MedXAI.Counterfactual.Summary"  # JSON: before, after, metrics (label maps left out)


class CounterfactualGoal(enum.Enum):
    """What the counterfactual must achieve (values: :data:`MedXAILib.counterfactual.GOAL_KINDS`)."""

    classProbability = "class_probability"
    removeStructure = "remove_structure"
    structureVolume = "structure_volume"

    def label(self) -> str:
        """Text shown in the combo box (``parameterNodeWrapper`` calls it for enum choices)."""
        return {
            CounterfactualGoal.classProbability: "Move the class probability to a target",
            CounterfactualGoal.removeStructure: "Remove the predicted structure (segmenter)",
            CounterfactualGoal.structureVolume: "Change the predicted structure's volume (segmenter)",
        }[self]


def goalArguments(goal: CounterfactualGoal, classIndex: int, targetProbability: float = 0.0,
                  targetVolumeMl: float = 0.0) -> dict[str, Any]:
    """The keyword arguments of :class:`MedXAILib.counterfactual.Goal` for the section's settings.

    A target probability of 0 means "flip the decision" (the library then aims at 0.9 below 0.5
    and at 0.1 above); the probability applies to probability goals only, the volume to volume goals.

    Raises:
        TargetError: the goal rejects the values (class < 0, probability not in (0, 1), negative volume).
    """
    from MedXAILib.counterfactual.goals import Goal

    goal = CounterfactualGoal(goal)
    arguments: dict[str, Any] = {"kind": goal.value, "class_index": int(classIndex)}
    if goal is CounterfactualGoal.classProbability and float(targetProbability) > 0.0:
        arguments["target_probability"] = float(targetProbability)
    if goal is CounterfactualGoal.structureVolume:
        arguments["target_volume_ml"] = float(targetVolumeMl)
    Goal(**arguments)  # validates now, before anything runs
    return arguments


def boundsFromSettings(custom: bool, low: float, high: float) -> Optional[tuple[float, float]]:
    """None (each channel's own range) or the custom ``(low, high)``.

    Raises:
        InputError: custom bounds with ``low >= high``.
    """
    if not custom:
        return None
    low, high = float(low), float(high)
    if not low < high:
        raise InputError(f"the lowest intensity must be below the highest; got {low} and {high}")
    return low, high


def generatorValues(generator: str, storedJson: str) -> dict[str, Any]:
    """The generator's parameters: the stored values that still validate, defaults elsewhere."""
    from MedXAILib.counterfactual.catalog import GENERATORS

    from . import forms

    info = GENERATORS.get(generator)
    return forms.valuesForMethod(info.params, forms.decodeMethodParameters(storedJson).get(info.name))


def _text(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return str(value)


def metricsRows(data: Mapping[str, Any], classIndex: Optional[int] = None) -> list[tuple[str, str, str]]:
    """``(quantity, before, after)`` rows: the goal, the predictions and how much the input changed."""
    metrics = data.get("metrics") or {}
    before, after = data.get("before") or {}, data.get("after") or {}
    validity = metrics.get("validity") or {}
    rows: list[tuple[str, str, str]] = []
    if validity:
        quantity = str(validity.get("quantity", "goal")).replace("_", " ")
        rows.append((f"Goal: {quantity} (target {_text(validity.get('target'))})", _text(validity.get("before")),
                     _text(validity.get("after"))))
        rows.append(("Goal reached", "", _text(validity.get("reached"))))
    names = before.get("class_names") or []

    def className(c: int) -> str:
        return f"{names[c]} ({c})" if c < len(names) else f"class {c}"

    if before.get("task") == "classification":
        rows.append(("Predicted class", className(before.get("predicted_class", 0)),
                     className(after.get("predicted_class", 0))))
        probabilities = before.get("probabilities") or []
        if classIndex is not None and classIndex < len(probabilities):
            rows.append((f"P({className(classIndex)})", _text(probabilities[classIndex]),
                         _text((after.get("probabilities") or [None] * (classIndex + 1))[classIndex])))
    elif before.get("task") == "segmentation":
        volumes = before.get("volumes_ml") or []
        for c in range(1, len(volumes)):
            rows.append((f"Volume of {className(c)} (ml)", _text(volumes[c]), _text((after.get("volumes_ml") or [])[c]
                         if c < len(after.get("volumes_ml") or []) else None)))
    proximity = metrics.get("proximity") or {}
    sparsity = metrics.get("sparsity") or {}
    if sparsity:
        rows.append(("Voxels changed above noise", "", f"{100 * float(sparsity.get('changed_fraction', 0)):.3g} %"))
    minimality = metrics.get("minimality") or {}
    if minimality:  # the same numbers as the library's summary and the CLI's outcome line
        rows.append(("Volume changed above noise (ml)", "", _text(minimality.get("changed_ml"))))
        if minimality.get("changed_share_of_structure") is not None:
            rows.append(("Changed volume / structure volume", "", _text(minimality["changed_share_of_structure"])))
        if not minimality.get("minimal", True):
            rows.append(("Minimal change", "", "no: spread over too much of the image"))
    perChannel = metrics.get("per_channel") or []
    if len(perChannel) > 1:  # each channel in its own units (HU, SUV): never one number for all
        for row in perChannel:
            rows.append((f"Max |change| in {row.get('channel')} (its units)", "", _text(row.get("max_abs"))))
    elif proximity:
        rows.append(("Mean |change|", "", _text(proximity.get("mean_abs"))))
        rows.append(("Max |change|", "", _text(proximity.get("max_abs"))))
    if metrics.get("locality") is not None:
        rows.append(("Change inside the region", "", f"{100 * float(metrics['locality']):.3g} %"))
    plausibility = metrics.get("plausibility") or {}
    if plausibility:
        rows.append(("Intensity histogram shift (mean W1)", "", _text(plausibility.get("mean_wasserstein"))))
    if metrics.get("seconds") is not None:
        rows.append(("Seconds", "", _text(metrics.get("seconds"))))
    return rows


# ------------------------------------------------------------------------------------------------
# Logic


def buildCounterfactualRequest(logic: Any, p: Any) -> RunRequest:
    """The counterfactual of the section's settings (model, input, device and seed of the other sections)."""
    from MedXAIBridge import segments

    from MedXAILib.counterfactual.catalog import GENERATORS
    from MedXAILib.target import Target

    info = GENERATORS.get(p.counterfactualGenerator)
    goal = goalArguments(p.counterfactualGoal, p.counterfactualClass, p.counterfactualTargetProbability,
                         p.counterfactualTargetVolumeMl)
    bounds = boundsFromSettings(p.counterfactualCustomBounds, p.counterfactualBoundsMin, p.counterfactualBoundsMax)
    request = logic.buildRequest(p, target=Target())
    arrays = {}
    if p.counterfactualSegmentation is not None and p.counterfactualSegmentId:
        arrays["region"] = segments.maskFromSegment(p.counterfactualSegmentation, p.counterfactualSegmentId,
                                                    p.inputVolume)
    elif info.needs_region:
        raise InputError(f"the {info.title} generator needs a region: select the segment to replace")
    return jobs.analysisRequest(
        request, "counterfactual",
        {"goal": goal, "generator": info.name, "params": generatorValues(info.name, p.counterfactualParameters),
         "bounds": list(bounds) if bounds is not None else None},
        arrays=arrays)


def _copyWindow(fromNode: Any, toNode: Any) -> None:
    """Show `toNode` with `fromNode`'s grey window (original and counterfactual then read alike)."""
    source = fromNode.GetDisplayNode() if fromNode is not None else None
    target = toNode.GetDisplayNode()
    if target is None:
        toNode.CreateDefaultDisplayNodes()
        target = toNode.GetDisplayNode()
    if source is None or target is None:
        return
    wasModifying = target.StartModify()
    target.SetAndObserveColorNodeID(source.GetColorNodeID())
    target.SetAutoWindowLevel(False)
    target.SetWindowLevel(source.GetWindow(), source.GetLevel())
    target.EndModify(wasModifying)


def showCounterfactual(p: Any, result: RunResult, inputVolumeNode: Any) -> tuple[Any, Any]:
    """NEW counterfactual and difference volume nodes; ``p.counterfactualVolume`` becomes the counterfactual.

    A multi-channel input shows its first channel (the input volume's); the summary (before,
    after, metrics) is kept on the counterfactual node as JSON.
    """
    from MedXAIBridge import display

    volume, difference = result.volumes["counterfactual"], result.volumes["difference"]
    channels = volume.n_channels
    if channels > 1:
        volume, difference = volume.with_array(volume.array[:1]), difference.with_array(difference.array[:1])
    provenance = dict(result.data.get("provenance") or {})
    generator = provenance.get("generator_title") or provenance.get("generator") or "counterfactual"
    goal = provenance.get("goal") or {}
    label = f"{goal.get('kind', 'goal')} class {goal.get('class_index', '?')}".replace("_", " ")
    base = f"{inputVolumeNode.GetName()} · {generator} · {label}"
    summary = {key: result.data.get(key) for key in ("before", "after", "metrics")}
    counterfactual = analysisNodes.createVolumeResult(volume, inputVolumeNode, base, "counterfactual", provenance,
                                                      {SUMMARY_ATTRIBUTE: json.dumps(summary, default=str)})
    differenceNode = analysisNodes.createVolumeResult(difference, inputVolumeNode, f"{base} · difference", "difference",
                                                      provenance)
    counterfactual.SetNodeReferenceID(DIFFERENCE_REFERENCE, differenceNode.GetID())
    _copyWindow(inputVolumeNode, counterfactual)
    display.applyAttributionDisplay(differenceNode, "diverging", float(p.opacity), True, 0.0)
    p.counterfactualVolume = counterfactual
    return counterfactual, differenceNode


def summaryOf(counterfactualNode: Any) -> dict[str, Any]:
    """The before / after / metrics summary kept on a counterfactual node ({} when there is none)."""
    if counterfactualNode is None:
        return {}
    try:
        return json.loads(counterfactualNode.GetAttribute(SUMMARY_ATTRIBUTE) or "{}")
    except ValueError:
        return {}


def showComparison(p: Any, counterfactualNode: Any) -> int:
    """Original | counterfactual | difference in the comparison views (the layout must be shown first).

    Returns:
        The number of views set (0 when the comparison layout has not been shown).

    Raises:
        InputError: no counterfactual selected, or one without its input.
    """
    from . import layouts

    if counterfactualNode is None:
        raise InputError("Generate or select a counterfactual first.")
    original = counterfactualNode.GetNodeReference(analysisNodes.INPUT_REFERENCE)
    if original is None:
        raise InputError(f"'{counterfactualNode.GetName()}' does not reference the volume it was generated from")
    difference = counterfactualNode.GetNodeReference(DIFFERENCE_REFERENCE)
    return layouts.setComparisonLayers(counterfactualNode.GetScene(), original, counterfactualNode, difference,
                                       float(p.opacity))


# ------------------------------------------------------------------------------------------------
# The Qt part


class CounterfactualSection:
    """Connects the Counterfactual section of MedXAI.ui to the functions above (the widget is the `host`)."""

    def __init__(self, host: Any):
        from . import forms

        self.host = host
        self._formGenerator: Optional[str] = None
        ui = host.ui
        ui.counterfactualResultSelector.addAttribute("vtkMRMLScalarVolumeNode", analysisNodes.RESULT_ATTRIBUTE,
                                                     "counterfactual")
        self._form = forms.ParameterForm(ui.counterfactualParametersGroupBox, onChanged=self.onParametersChanged)
        self._fillGenerators()
        ui.counterfactualGeneratorComboBox.connect("currentIndexChanged(int)", self.onGeneratorChanged)
        ui.counterfactualSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentChanged)
        ui.counterfactualSegmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        ui.counterfactualApplyButton.connect("clicked(bool)", self.onApply)
        ui.counterfactualCompareButton.connect("clicked(bool)", self.onCompare)
        ui.counterfactualResultSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onResultChanged)

    def _fillGenerators(self) -> None:
        import qt

        from MedXAILib.counterfactual.catalog import GENERATORS

        combo = self.host.ui.counterfactualGeneratorComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for info in GENERATORS:
            combo.addItem(info.title, info.name)
            combo.setItemData(combo.count - 1, info.summary, qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)

    def updateGUI(self, p: Any) -> None:
        from MedXAILib.counterfactual.catalog import GENERATORS

        ui = self.host.ui
        index = ui.counterfactualGeneratorComboBox.findData(p.counterfactualGenerator)
        if index >= 0 and ui.counterfactualGeneratorComboBox.currentIndex != index:
            ui.counterfactualGeneratorComboBox.currentIndex = index
        if self._formGenerator != p.counterfactualGenerator:
            self._buildForm(p)
        elif self._form.specs:
            self._form.setValues(generatorValues(p.counterfactualGenerator, p.counterfactualParameters))
        if ui.counterfactualSegmentSelector.currentNode() != p.counterfactualSegmentation:
            ui.counterfactualSegmentSelector.setCurrentNode(p.counterfactualSegmentation)
        if p.counterfactualSegmentation is not None and \
                ui.counterfactualSegmentSelector.currentSegmentID() != p.counterfactualSegmentId:
            ui.counterfactualSegmentSelector.setCurrentSegmentID(p.counterfactualSegmentId)
        goal = p.counterfactualGoal
        for widget in (ui.counterfactualProbabilityLabel, ui.counterfactualProbabilitySliderWidget):
            widget.visible = goal is CounterfactualGoal.classProbability
        for widget in (ui.counterfactualVolumeLabel, ui.counterfactualVolumeSliderWidget):
            widget.visible = goal is CounterfactualGoal.structureVolume
        for widget in (ui.counterfactualBoundsMinLabel, ui.counterfactualBoundsMinSliderWidget,
                       ui.counterfactualBoundsMaxLabel, ui.counterfactualBoundsMaxSliderWidget):
            widget.visible = bool(p.counterfactualCustomBounds)
        busy = self.host.busy()
        ui.counterfactualApplyButton.enabled = p.inputVolume is not None and bool(p.modelPath) and not busy \
            and p.counterfactualGenerator in GENERATORS
        ui.counterfactualCompareButton.enabled = p.counterfactualVolume is not None and not busy

    def _buildForm(self, p: Any) -> None:
        import MedXAILib
        from MedXAILib.counterfactual.catalog import GENERATORS

        self._formGenerator = p.counterfactualGenerator
        try:
            info = GENERATORS.get(p.counterfactualGenerator)
        except MedXAILib.UnknownNameError as error:
            self._form.clear()
            self.host.ui.counterfactualGeneratorDescriptionLabel.text = str(error)
            return
        self._form.build(MedXAILib.param_specs(info.params), generatorValues(info.name, p.counterfactualParameters))
        needs = " <i>Needs a region.</i>" if info.needs_region else ""
        self.host.ui.counterfactualGeneratorDescriptionLabel.text = \
            f"{info.summary}{needs}<br><i>Reference:</i> {info.reference}"

    def onGeneratorChanged(self, index: int) -> None:
        p = self.host.parameterNode()
        if p is None or self.host.updating():
            return
        name = self.host.ui.counterfactualGeneratorComboBox.itemData(index)
        if name:
            p.counterfactualGenerator = name

    def onParametersChanged(self) -> None:
        from . import forms

        p = self.host.parameterNode()
        if p is None or self.host.updating() or not self._formGenerator:
            return
        data = forms.decodeMethodParameters(p.counterfactualParameters)
        data[self._formGenerator] = self._form.values()
        p.counterfactualParameters = forms.encodeMethodParameters(data)

    def onSegmentChanged(self, *args: Any) -> None:
        import slicer

        p = self.host.parameterNode()
        if p is None or self.host.updating():
            return
        with slicer.util.NodeModify(p):
            p.counterfactualSegmentation = self.host.ui.counterfactualSegmentSelector.currentNode()
            p.counterfactualSegmentId = self.host.ui.counterfactualSegmentSelector.currentSegmentID() or ""

    def onApply(self) -> None:
        p = self.host.parameterNode()
        try:
            request = buildCounterfactualRequest(self.host.logic, p)
        except Exception as error:
            self.host.showError("The counterfactual cannot be generated.", error)
            return
        inputVolume = p.inputVolume
        classIndex = int(p.counterfactualClass)

        def onResult(result: RunResult) -> str:
            node, _ = showCounterfactual(p, result, inputVolume)
            self._showRows(metricsRows(result.data, classIndex))
            self._compare(p, node)
            return node.GetName()

        self.host.runAnalysis(request, onResult, "counterfactual")

    def _compare(self, p: Any, node: Any) -> None:
        from . import layouts

        layouts.showComparisonLayout(p.counterfactualOrientation)
        showComparison(p, node)

    def onCompare(self) -> None:
        p = self.host.parameterNode()
        try:
            self._compare(p, p.counterfactualVolume)
        except Exception as error:
            self.host.showError("The comparison could not be shown.", error)

    def onResultChanged(self, node: Any) -> None:
        if node is None:
            return
        self._showRows(metricsRows(summaryOf(node), int(self.host.parameterNode().counterfactualClass)
                                   if self.host.parameterNode() else None))

    def _showRows(self, rows: list) -> None:
        import qt

        widget = self.host.ui.counterfactualMetricsTableWidget
        widget.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(text)
                widget.setItem(r, c, item)
        widget.resizeColumnToContents(0)
