"""The Boundary section: explain a structure's boundary band, profile relevance across it, show uncertainty.

Three analyses of one structure (a segment, or the structure the model predicts for a class):

- **Explain the boundary band**: an explanation whose target is the class score (``margin`` or
  ``logit``) summed over the band ``band_mm = (inner, outer)`` around the structure's surface
  (``Target(region="boundary")``), with the Explain section's method, parameters, device and seed.
- **Relevance profile**: :func:`MedXAILib.boundary.relevance_profile` of the selected result against
  the signed distance to the segment's surface, as a table and a plot
  (:func:`MedXAIBridge.statisticsTable.profilePlotChartNode`).
- **Uncertainty**: :func:`MedXAILib.boundary.boundary_uncertainty` (test-time flips, Monte-Carlo
  dropout) as three volumes: probability, entropy, variance.

**Show** puts them together in the slice views: the input as background, the selected result (or
the uncertainty map) as the colour layer, the band's inner and outer limits and the structure's
surface as outlines (:func:`bandLabelMap`), and the voxels whose uncertainty is above a fraction of
its maximum outlined (:func:`uncertainOutlineMask`).

The functions that take the parameter node ``p`` touch MRML only through the Bridge and never Qt,
so they run under slicer-core (``Testing/Runtime``); :class:`BoundarySection` is the thin Qt part
that connects the widgets of MedXAI.ui to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from MedXAILib.errors import InputError, TargetError
from MedXAILib.target import Target

from . import analysisNodes, jobs

if TYPE_CHECKING:
    from MedXAILib.runs import RunRequest, RunResult

__all__ = [
    "SCORES",
    "UNCERTAINTY_MAPS",
    "BAND_LABELS",
    "OUTLINE_ATTRIBUTE",
    "UNCERTAINTY_REFERENCE",
    "boundaryTarget",
    "structureMask",
    "buildBoundaryRequest",
    "buildUncertaintyRequest",
    "computeProfile",
    "showProfile",
    "showUncertainty",
    "uncertaintyNodeFor",
    "bandLabelMap",
    "uncertainOutlineMask",
    "showBoundaryOverlay",
    "BoundarySection",
]

SCORES = ("margin", "logit")
UNCERTAINTY_MAPS = ("entropy", "variance", "probability")  # MedXAILib.boundary.UNCERTAINTY_MAPS, display order
#: Segment names of the band outline (label 1 and 2 of :func:`bandLabelMap`).
BAND_LABELS = ("Band inside the surface", "Band outside the surface")
OUTLINE_ATTRIBUTE = "MedXAI.BoundaryOutline"  # on outline nodes: the ID of the input volume they belong to
UNCERTAINTY_REFERENCE = "MedXAI.Uncertainty."  # + map name: node references between the three maps
_BAND_COLORS = ((0.95, 0.75, 0.1), (0.1, 0.8, 0.9))
_UNCERTAIN_COLOR = (0.9, 0.2, 0.9)


# ------------------------------------------------------------------------------------------------
# Pure helpers


def boundaryTarget(classIndex: int, innerMm: float, outerMm: float, score: str = "margin",
                   mask: Optional[np.ndarray] = None) -> Target:
    """The ``Target(region="boundary")`` of the section's settings.

    Raises:
        TargetError: an unknown score, a negative or non-finite thickness, or both thicknesses 0.
    """
    if score not in SCORES:
        raise TargetError(f"the boundary score must be one of {', '.join(SCORES)}; got {score!r}")
    return Target(class_index=int(classIndex), region="boundary", score=score, reduction="sum",
                  mask=None if mask is None else np.asarray(mask, dtype=bool),
                  band_mm=(float(innerMm), float(outerMm)))


def bandLabelMap(structure: np.ndarray, spacing: Any, innerMm: float, outerMm: float) -> np.ndarray:
    """Labels of the band: 1 inside the surface (within `innerMm`), 2 outside (within `outerMm`), 0 elsewhere.

    Outlined in the slice views, label 1 shows the band's inner limit and the surface, label 2 the
    surface and the outer limit.
    """
    from MedXAILib.regions import boundary_band

    structure = np.asarray(structure, dtype=bool)
    band = boundary_band(structure, spacing, innerMm, outerMm)
    labels = np.zeros(structure.shape, dtype=np.uint8)
    labels[band & structure] = 1
    labels[band & ~structure] = 2
    return labels


def uncertainOutlineMask(uncertainty: np.ndarray, level: float) -> Optional[np.ndarray]:
    """Voxels whose uncertainty is at least `level` times the map's maximum (None: level 0 or a zero map).

    Raises:
        InputError: `level` outside [0, 1].
    """
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise InputError(f"the uncertainty outline level must be a fraction in [0, 1]; got {level}")
    values = np.asarray(uncertainty, dtype=np.float64)
    if values.ndim == 4:
        values = values[0]
    peak = float(np.nanmax(values)) if values.size else 0.0
    if level == 0.0 or not np.isfinite(peak) or peak <= 0.0:
        return None
    return values >= level * peak


# ------------------------------------------------------------------------------------------------
# Logic (parameter node -> Bridge -> library; errors rise)


def structureMask(p: Any, referenceVolumeNode: Any) -> Optional[np.ndarray]:
    """The selected structure segment as a mask on `referenceVolumeNode`'s grid (None: no segment selected)."""
    from MedXAIBridge import segments

    if p.boundarySegmentation is None or not p.boundarySegmentId:
        return None
    return segments.maskFromSegment(p.boundarySegmentation, p.boundarySegmentId, referenceVolumeNode)


def buildBoundaryRequest(logic: Any, p: Any):
    """The explanation of the boundary band: the Explain section's request with the boundary target."""
    if p.inputVolume is None:
        raise InputError("Select the input volume.")
    target = boundaryTarget(p.boundaryClass, p.boundaryInnerMm, p.boundaryOuterMm, p.boundaryScore,
                            structureMask(p, p.inputVolume))
    return logic.buildRequest(p, target=target)


def buildUncertaintyRequest(logic: Any, p: Any) -> RunRequest:
    """The uncertainty analysis of the class (model, input, device and seed of the other sections)."""
    request = logic.buildRequest(p, target=Target(class_index=int(p.boundaryClass)))
    return jobs.analysisRequest(request, "boundary_uncertainty",
                                {"class_index": int(p.boundaryClass), "flips": bool(p.boundaryFlips),
                                 "n_dropout": int(p.boundaryDropoutSamples)})


def computeProfile(p: Any, attributionNode: Any) -> dict[str, list]:
    """:func:`~MedXAILib.boundary.relevance_profile` of `attributionNode` across the selected segment's surface.

    Raises:
        InputError: no result or no segment selected, or the segment has no surface on the grid.
    """
    from MedXAIBridge import volumes

    from MedXAILib.analysis.boundary import relevance_profile

    if attributionNode is None:
        raise InputError("Select a result (Results section) whose relevance profile to compute.")
    mask = structureMask(p, attributionNode)
    if mask is None:
        raise InputError("Select the structure's segment: the profile measures the distance to its surface.")
    volume = volumes.imageVolumeFromNode(attributionNode)
    return relevance_profile(volume.array, mask, volume.spacing, float(p.boundaryBinMm), float(p.boundaryMaxMm))


def showProfile(p: Any, attributionNode: Any, profile: dict[str, list]):
    """NEW table and chart nodes for `profile`; ``p.boundaryProfileTable`` becomes the table. Returns the chart."""
    from MedXAIBridge.statisticsTable import profilePlotChartNode

    segment = p.boundarySegmentation.GetSegmentation().GetSegment(p.boundarySegmentId)
    name = f"{attributionNode.GetName()} · profile across {segment.GetName() if segment else 'the surface'}"
    chart = profilePlotChartNode(attributionNode.GetScene(), profile, name)
    table = chart.GetNthPlotSeriesNode(0).GetTableNode() if chart.GetNumberOfPlotSeriesNodes() else None
    p.boundaryProfileTable = table
    return chart


def showUncertainty(p: Any, result: RunResult, inputVolumeNode: Any) -> dict[str, Any]:
    """NEW volume nodes for the three uncertainty maps; ``p.boundaryUncertaintyVolume`` becomes the chosen one.

    The nodes reference each other (``MedXAI.Uncertainty.<map>``), so choosing another map later
    finds its node (:func:`uncertaintyNodeFor`).
    """
    from MedXAIBridge import display

    nodes = {}
    classIndex = result.data.get("class_index", p.boundaryClass)
    for name in UNCERTAINTY_MAPS:
        volume = result.volumes.get(name)
        if volume is None:
            raise InputError(f"the uncertainty analysis returned no '{name}' map")
        provenance = {"method": "boundary_uncertainty", "map": name, "class_index": classIndex,
                      "ensemble": (volume.meta or {}).get("ensemble")}
        node = analysisNodes.createVolumeResult(
            volume, inputVolumeNode, f"{inputVolumeNode.GetName()} · uncertainty {name} (class {classIndex})",
            "uncertainty", provenance, {"MedXAI.UncertaintyMap": name})
        display.applyAttributionDisplay(node, "sequential", float(p.opacity), True, 0.0)
        nodes[name] = node
    for node in nodes.values():
        for name, other in nodes.items():
            node.SetNodeReferenceID(UNCERTAINTY_REFERENCE + name, other.GetID())
    p.boundaryUncertaintyVolume = nodes[p.boundaryUncertaintyMap]
    return nodes


def uncertaintyNodeFor(node: Any, mapName: str) -> Any:
    """The node of `mapName` among the uncertainty maps computed with `node` (None if there is none)."""
    if node is None:
        return None
    if node.GetAttribute("MedXAI.UncertaintyMap") == mapName:
        return node
    return node.GetNodeReference(UNCERTAINTY_REFERENCE + mapName)


def showBoundaryOverlay(p: Any, inputVolumeNode: Any, saliencyNode: Any = None,
                        uncertaintyNode: Any = None) -> dict[str, Any]:
    """Slice views: input, colour layer, band and structure outlines, uncertain voxels outlined.

    The colour layer is `saliencyNode` (else the uncertainty map). The structure is the selected
    segment, else the uncertainty's mean probability >= 0.5 (the ensemble's predicted structure).
    Outline nodes made earlier for the same input are replaced.

    Returns:
        ``{"band": segmentation node or None, "uncertain": segmentation node or None, "views": n}``.

    Raises:
        InputError: no input volume, or nothing to show (no result and no uncertainty map).
    """
    from MedXAIBridge import display, volumes

    if inputVolumeNode is None:
        raise InputError("Select the input volume.")
    if saliencyNode is None and uncertaintyNode is None:
        raise InputError("Nothing to show yet: explain the boundary band or compute the uncertainty first.")
    scene = inputVolumeNode.GetScene()
    analysisNodes.removeTaggedNodes(scene, "vtkMRMLSegmentationNode", OUTLINE_ATTRIBUTE, inputVolumeNode.GetID())
    out: dict[str, Any] = {"band": None, "uncertain": None}
    spacing = volumes.imageVolumeFromNode(inputVolumeNode).spacing
    structure = structureMask(p, inputVolumeNode)
    probabilityNode = uncertaintyNodeFor(uncertaintyNode, "probability")
    if structure is None and probabilityNode is not None:
        probability = volumes.imageVolumeFromNode(probabilityNode).array[0]
        structure = probability >= 0.5
    if structure is not None and structure.any() and not structure.all():
        labels = bandLabelMap(structure, spacing, p.boundaryInnerMm, p.boundaryOuterMm)
        out["band"] = _outlineNode(scene, labels, inputVolumeNode, list(BAND_LABELS), _BAND_COLORS,
                                   f"{inputVolumeNode.GetName()} · boundary band")
    if uncertaintyNode is not None:
        mask = uncertainOutlineMask(volumes.imageVolumeFromNode(uncertaintyNode).array, p.boundaryUncertaintyLevel)
        if mask is not None and mask.any():
            name = f"Uncertain ({uncertaintyNode.GetAttribute('MedXAI.UncertaintyMap') or 'map'} >= " \
                   f"{100 * float(p.boundaryUncertaintyLevel):.0f}% of max)"
            out["uncertain"] = _outlineNode(scene, mask.astype(np.uint8), inputVolumeNode, [name], (_UNCERTAIN_COLOR,),
                                            f"{inputVolumeNode.GetName()} · uncertain voxels")
    layer = saliencyNode if saliencyNode is not None else uncertaintyNode
    out["views"] = display.showInSliceViews(scene, inputVolumeNode, layer, float(p.opacity))
    return out


def _outlineNode(scene: Any, labels: np.ndarray, referenceVolumeNode: Any, names: list, colors, name: str):
    from MedXAIBridge import segments

    node = segments.segmentationNodeFromLabelMap(scene, labels, referenceVolumeNode, names, name)
    segmentation = node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentation.GetNthSegment(index).SetColor(*colors[index % len(colors)])
    displayNode = node.GetDisplayNode()
    displayNode.SetVisibility2DFill(False)
    displayNode.SetVisibility2DOutline(True)
    displayNode.SetVisibility3D(False)
    displayNode.SetSliceIntersectionThickness(2)
    node.SetAttribute(OUTLINE_ATTRIBUTE, referenceVolumeNode.GetID())
    return node


# ------------------------------------------------------------------------------------------------
# The Qt part


class BoundarySection:
    """Connects the Boundary section of MedXAI.ui to the functions above (the widget is the `host`).

    The host provides ``ui``, ``logic``, ``parameterNode()``, ``updating()``, ``busy()``,
    ``startExplain(request)``, ``runAnalysis(request, onResult, what)``, ``showError(what, error)``
    and ``setStatus(text)``.
    """

    def __init__(self, host: Any):
        self.host = host
        ui = host.ui
        ui.boundarySegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentChanged)
        ui.boundarySegmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        ui.boundaryExplainButton.connect("clicked(bool)", self.onExplain)
        ui.boundaryProfileButton.connect("clicked(bool)", self.onProfile)
        ui.boundaryUncertaintyButton.connect("clicked(bool)", self.onUncertainty)
        ui.boundaryShowButton.connect("clicked(bool)", self.onShow)
        ui.boundaryUncertaintyMapComboBox.connect("currentIndexChanged(int)", self.onMapChanged)

    def updateGUI(self, p: Any) -> None:
        """Parameter node -> the widgets that connectGui does not bind."""
        ui = self.host.ui
        if ui.boundarySegmentSelector.currentNode() != p.boundarySegmentation:
            ui.boundarySegmentSelector.setCurrentNode(p.boundarySegmentation)
        if p.boundarySegmentation is not None and ui.boundarySegmentSelector.currentSegmentID() != p.boundarySegmentId:
            ui.boundarySegmentSelector.setCurrentSegmentID(p.boundarySegmentId)
        busy = self.host.busy()
        ready = p.inputVolume is not None and bool(p.modelPath)
        ui.boundaryExplainButton.enabled = ready and not busy
        ui.boundaryUncertaintyButton.enabled = ready and not busy
        ui.boundaryProfileButton.enabled = not busy and p.outputVolume is not None and p.boundarySegmentation is not None
        ui.boundaryShowButton.enabled = not busy and p.inputVolume is not None and (
            p.outputVolume is not None or p.boundaryUncertaintyVolume is not None)

    def onSegmentChanged(self, *args: Any) -> None:
        import slicer

        p = self.host.parameterNode()
        if p is None or self.host.updating():
            return
        with slicer.util.NodeModify(p):
            p.boundarySegmentation = self.host.ui.boundarySegmentSelector.currentNode()
            p.boundarySegmentId = self.host.ui.boundarySegmentSelector.currentSegmentID() or ""

    def onExplain(self) -> None:
        p = self.host.parameterNode()
        try:
            request = buildBoundaryRequest(self.host.logic, p)
        except Exception as error:
            self.host.showError("The boundary band cannot be explained.", error)
            return
        self.host.startExplain(request)

    def onProfile(self) -> None:
        import slicer

        from . import layouts

        p = self.host.parameterNode()
        try:
            with slicer.util.WaitCursor():
                profile = computeProfile(p, p.outputVolume)
                chart = showProfile(p, p.outputVolume, profile)
                layouts.showChartInLayout(chart)
        except Exception as error:
            self.host.showError("The relevance profile could not be computed.", error)
            return
        self.host.setStatus(f"Profile: {chart.GetName()}")

    def onUncertainty(self) -> None:
        p = self.host.parameterNode()
        try:
            request = buildUncertaintyRequest(self.host.logic, p)
        except Exception as error:
            self.host.showError("The uncertainty cannot be computed.", error)
            return
        inputVolume = p.inputVolume

        def onResult(result: RunResult) -> str:
            nodes = showUncertainty(p, result, inputVolume)
            showBoundaryOverlay(p, inputVolume, None, nodes[p.boundaryUncertaintyMap])
            return nodes[p.boundaryUncertaintyMap].GetName()

        self.host.runAnalysis(request, onResult, "uncertainty")

    def onMapChanged(self, index: int) -> None:
        p = self.host.parameterNode()
        if p is None or self.host.updating():
            return
        # the combo's items are UNCERTAINTY_MAPS in order (the parameter's Choice); connectGui may set
        # p.boundaryUncertaintyMap after this slot runs, so the index decides
        if not 0 <= index < len(UNCERTAINTY_MAPS):
            return
        node = uncertaintyNodeFor(p.boundaryUncertaintyVolume, UNCERTAINTY_MAPS[index])
        if node is not None and node is not p.boundaryUncertaintyVolume:
            p.boundaryUncertaintyVolume = node

    def onShow(self) -> None:
        import slicer

        p = self.host.parameterNode()
        try:
            with slicer.util.WaitCursor():
                uncertainty = uncertaintyNodeFor(p.boundaryUncertaintyVolume, p.boundaryUncertaintyMap)
                result = showBoundaryOverlay(p, p.inputVolume, p.outputVolume, uncertainty)
        except Exception as error:
            self.host.showError("The boundary overlay could not be shown.", error)
            return
        shown = [n.GetName() for n in (result["band"], result["uncertain"]) if n is not None]
        self.host.setStatus("Shown: " + (", ".join(shown) if shown else "the colour layer"))
