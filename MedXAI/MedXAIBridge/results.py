"""Attribution results as NEW scalar volume nodes that carry their provenance.

A result node has exactly the input volume's geometry (its IJK -> RAS matrix is copied and it sits
under the input's parent transform), holds the channel-summed signed map (float32), and carries:

- the full provenance JSON under :data:`MedXAILib.attribution.PROVENANCE_KEY` (``MedXAI.Provenance``),
  which Slicer saves with the scene (``.mrml``) and :func:`attributionProvenance` reads back;
- a few readable attributes: ``MedXAI.Method``, ``MedXAI.MethodTitle``, ``MedXAI.Target``,
  ``MedXAI.Model``, ``MedXAI.Created``, ``MedXAI.InputVolumeID`` and ``MedXAI.Result``
  (``"attribution"``, to find result nodes);
- a node reference ``MedXAI.InputVolume`` to the input (a reference *from* the result, so the input
  node itself is not modified).

In the subject hierarchy the node is put in a folder "MedXAI" beside the input volume (under the
input's study / patient / scene item). slicer-core provides ``vtkMRMLSubjectHierarchyNode``; in a
bare scene (no subject hierarchy logic) data nodes get no item automatically, and then the result's
item is created here while the input keeps having none (the folder then goes under the scene).
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import slicer
import vtk

from MedXAILib.attribution import PROVENANCE_KEY, Attribution
from MedXAILib.errors import GeometryError, InputError

from .nodes import createNode
from .volumes import checkVolumeNode, ijkToRas, imageDataFromArray, nodeLabel, placeLikeInput, shapeOf

__all__ = ["createAttributionNode", "attributionProvenance", "FOLDER_NAME", "RESULT_ATTRIBUTE"]

#: Name of the subject-hierarchy folder that collects results.
FOLDER_NAME = "MedXAI"
#: Node attribute marking MedXAI result nodes (value: the kind of result, e.g. "attribution").
RESULT_ATTRIBUTE = "MedXAI.Result"
_FOLDER_ATTRIBUTE = "MedXAI.Folder"
_GEOMETRY_TOLERANCE_MM = 1e-3


def _targetLabel(provenance: dict[str, Any]) -> str:
    """A short readable target, e.g. ``"tumour"``, ``"class 2 (mask)"``."""
    target = provenance.get("target") or {}
    label = provenance.get("target_name")
    if not label:
        index = target.get("class_index") if isinstance(target, dict) else None
        label = f"class {index}" if index is not None else "target"
    region = target.get("region") if isinstance(target, dict) else None
    if region and region != "class":
        label = f"{label} ({region})"
    return str(label)


def _methodLabel(provenance: dict[str, Any]) -> str:
    return str(provenance.get("method_title") or provenance.get("method") or "attribution")


def _placeInFolder(scene, node, inputVolumeNode) -> None:
    """Move `node`'s subject-hierarchy item into the "MedXAI" folder beside the input volume."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return
    invalid = 0  # vtkMRMLSubjectHierarchyNode::INVALID_ITEM_ID
    inputItem = shNode.GetItemByDataNode(inputVolumeNode)
    parent = shNode.GetItemParent(inputItem) if inputItem != invalid else invalid
    if parent == invalid:
        parent = shNode.GetSceneItemID()
    folder = invalid
    children = vtk.vtkIdList()
    shNode.GetItemChildren(parent, children, False)
    for i in range(children.GetNumberOfIds()):
        child = children.GetId(i)
        if shNode.GetItemName(child) == FOLDER_NAME and shNode.GetItemAttribute(child, _FOLDER_ATTRIBUTE):
            folder = child
            break
    if folder == invalid:
        folder = shNode.CreateFolderItem(parent, FOLDER_NAME)
        shNode.SetItemAttribute(folder, _FOLDER_ATTRIBUTE, "1")
    item = shNode.GetItemByDataNode(node)
    if item == invalid:
        shNode.CreateItem(folder, node)
    else:
        shNode.SetItemParent(item, folder)


def createAttributionNode(attribution: Attribution, inputVolumeNode, name: Optional[str] = None):
    """A NEW scalar volume node showing `attribution` on the input volume's grid.

    Args:
        attribution: the result of :func:`MedXAILib.explain` on (a volume made from) the input.
        inputVolumeNode: the volume that was explained (the first one for multi-channel input);
            its scene receives the node. It is not modified.
        name: the node name; default ``"<volume> · <method> · <target>"``.

    Returns:
        The ``vtkMRMLScalarVolumeNode`` (no display node yet: see
        :func:`MedXAIBridge.display.applyAttributionDisplay`).

    Raises:
        InputError: the input has no scene or no voxels, or `attribution` is not an Attribution.
        GeometryError: the attribution's grid (shape or affine) is not the input volume's.
    """
    if not isinstance(attribution, Attribution):
        raise InputError(f"an Attribution was expected; got {type(attribution).__name__}")
    checkVolumeNode(inputVolumeNode, "input volume")
    scene = inputVolumeNode.GetScene()
    if scene is None:
        raise InputError(f"the input volume {nodeLabel(inputVolumeNode)} is not in a scene")
    summed = np.asarray(attribution.summed, dtype=np.float32)
    shape = shapeOf(inputVolumeNode)
    if summed.shape != shape:
        raise GeometryError(
            f"the attribution map has shape {summed.shape} but the input volume "
            f"{nodeLabel(inputVolumeNode)} is {shape}; it was computed on another image"
        )
    affine = np.asarray(attribution.affine, dtype=np.float64)
    inputAffine = ijkToRas(inputVolumeNode)
    if affine.shape != (4, 4) or not np.allclose(affine, inputAffine, atol=_GEOMETRY_TOLERANCE_MM):
        raise GeometryError(
            f"the attribution map's geometry differs from the input volume {nodeLabel(inputVolumeNode)} "
            "(IJK -> RAS matrix); it was computed on another image or grid"
        )
    provenance = dict(attribution.provenance or {})
    if name is None:
        name = f"{inputVolumeNode.GetName()} · {_methodLabel(provenance)} · {_targetLabel(provenance)}"

    node = createNode(scene, "vtkMRMLScalarVolumeNode")  # filled before AddNode: observers see a complete node
    node.SetName(name)
    matrix = vtk.vtkMatrix4x4()
    inputVolumeNode.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    imageData = imageDataFromArray(summed[np.newaxis])
    imageData.SetExtent(inputVolumeNode.GetImageData().GetExtent())
    node.SetAndObserveImageData(imageData)
    node.SetAttribute(PROVENANCE_KEY, attribution.provenance_json())
    node.SetAttribute(RESULT_ATTRIBUTE, "attribution")
    node.SetAttribute("MedXAI.Method", str(provenance.get("method", "")))
    node.SetAttribute("MedXAI.MethodTitle", _methodLabel(provenance))
    node.SetAttribute("MedXAI.Target", _targetLabel(provenance))
    model = provenance.get("model") or {}
    if isinstance(model, dict):
        model = model.get("id") or model.get("source") or ""
    node.SetAttribute("MedXAI.Model", str(model))
    node.SetAttribute("MedXAI.Created", str(provenance.get("created", "")))
    node.SetAttribute("MedXAI.InputVolumeID", inputVolumeNode.GetID() or "")
    scene.AddNode(node)
    node.SetNodeReferenceID("MedXAI.InputVolume", inputVolumeNode.GetID())
    placeLikeInput(node, inputVolumeNode)
    _placeInFolder(scene, node, inputVolumeNode)
    return node


def attributionProvenance(node) -> dict[str, Any]:
    """The provenance stored on a result node (an empty dict for a node that has none).

    Raises:
        InputError: the stored provenance is not valid JSON (the attribute was edited by hand).
    """
    if node is None:
        raise InputError("no node was given")
    text = node.GetAttribute(PROVENANCE_KEY)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise InputError(f"the provenance stored on {nodeLabel(node)} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InputError(f"the provenance stored on {nodeLabel(node)} is not a JSON object")
    return value
