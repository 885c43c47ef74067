"""Application-level display of results that the Qt-free Bridge cannot do (it never uses slicer.modules).

Slice-view layers, colour tables and windows are the Bridge's job (``MedXAIBridge.display``); this
module adds 3D volume rendering, which lives in the Volume Rendering module's logic.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["showVolumeRendering", "showTopOutline", "provenanceRows", "OUTLINE_ATTRIBUTE"]

OUTLINE_ATTRIBUTE = "MedXAI.AttributionNodeID"  # set by MedXAIBridge.segments.segmentOutlineFromTopFraction


def showVolumeRendering(volumeNode: Any, visible: bool) -> None:
    """Show or hide `volumeNode` as a volume rendering in the 3D views.

    The transfer functions are copied from the node's slice display (colour table, window and
    threshold) with ``vtkSlicerVolumeRenderingLogic.CopyDisplayToVolumeRenderingDisplayNode``, so the
    3D view shows what the slice views show.
    """
    if not visible:  # hiding needs no Volume Rendering logic
        for index in range(volumeNode.GetNumberOfDisplayNodes()):
            displayNode = volumeNode.GetNthDisplayNode(index)
            if displayNode is not None and displayNode.IsA("vtkMRMLVolumeRenderingDisplayNode"):
                displayNode.SetVisibility(False)
        return
    import slicer

    logic = slicer.modules.volumerendering.logic()
    displayNode = logic.GetFirstVolumeRenderingDisplayNode(volumeNode)
    if displayNode is None:
        displayNode = logic.CreateDefaultVolumeRenderingNodes(volumeNode)
    logic.CopyDisplayToVolumeRenderingDisplayNode(displayNode)
    displayNode.SetVisibility(True)


def showTopOutline(attributionNode: Any, percent: float) -> Any:
    """Outline the `percent` % most relevant voxels of `attributionNode`, replacing its previous outline.

    Returns the new segmentation node, or None when `percent` is 0 (the old outline is removed).
    """
    from MedXAIBridge import segments
    from MedXAIBridge.nodes import nodesByClass

    scene = attributionNode.GetScene()
    for node in nodesByClass(scene, "vtkMRMLSegmentationNode"):
        if node.GetAttribute(OUTLINE_ATTRIBUTE) == attributionNode.GetID():
            scene.RemoveNode(node)
    if not percent or percent <= 0:
        return None
    name = f"{attributionNode.GetName()} top {percent:g}%"
    return segments.segmentOutlineFromTopFraction(scene, attributionNode, float(percent) / 100.0, name)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def provenanceRows(provenance: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(property, value) rows for the Results table from a result's provenance (pure Python)."""
    if not provenance:
        return []
    model = provenance.get("model") or {}
    target = dict(provenance.get("target") or {})
    rows = [
        ("Method", _text(provenance.get("method_title") or provenance.get("method", ""))),
        ("Parameters", _text(provenance.get("parameters", {}))),
        ("Target", _text(provenance.get("target_name") or "") + (" " if provenance.get("target_name") else "") + _text(target)),
        ("Prediction", _text(provenance.get("prediction", ""))),
        ("Model", _text(model.get("id") or model.get("source") or model) if isinstance(model, dict) else _text(model)),
        ("Model SHA-256", _text(model.get("sha256", "")) if isinstance(model, dict) else ""),
        ("Device", _text(provenance.get("device", ""))),
        ("Seed", _text(provenance.get("seed", ""))),
        ("Seconds", _text(provenance.get("seconds", ""))),
        ("Created", _text(provenance.get("created", ""))),
        ("Diagnostics", _text(provenance.get("diagnostics", {}))),
        ("Versions", _text(provenance.get("versions", {}))),
        ("Reference", _text(provenance.get("reference", ""))),
    ]
    return [(key, value) for key, value in rows if value not in ("", "{}", "null")]
