"""Segments <-> boolean masks and label maps on a volume's voxel grid.

A segment is stored in its own geometry (often a shared binary labelmap on another grid, or a
closed surface). :func:`maskFromSegment` and :func:`labelMapFromSegmentation` take each segment's
binary labelmap representation (converted on a temporary copy when the segmentation does not
hold one, so the segmentation node is never modified) and resample it with nearest-neighbour
interpolation (``vtkOrientedImageDataResample``) onto the reference volume's IJK grid, through the
transform between the segmentation's and the volume's parent transforms. The results are
(I, J, K) arrays, the voxel order of :class:`MedXAILib.volume.ImageVolume`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from MedXAILib.errors import GeometryError, InputError

from .volumes import checkVolumeNode, nodeLabel, placeLikeInput, shapeOf, transformId

__all__ = ["maskFromSegment", "labelMapFromSegmentation", "segmentationNodeFromLabelMap",
           "segmentOutlineFromTopFraction"]

# vtkSegmentationConverter::GetSegmentationBinaryLabelmapRepresentationName()
_BINARY_LABELMAP = "Binary labelmap"
_OUTLINE_COLOR = (1.0, 0.9, 0.1)  # yellow: visible over both the grey image and the blue/red map


# ------------------------------------------------------------------------------------------------
# Helpers


def _checkSegmentation(segmentationNode) -> "slicer.vtkSegmentation":
    if segmentationNode is None:
        raise InputError("no segmentation node was given")
    if not hasattr(segmentationNode, "IsA") or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"a segmentation node was expected; got a {segmentationNode.GetClassName()}")
    segmentation = segmentationNode.GetSegmentation()
    if segmentation is None:
        raise InputError(f"{nodeLabel(segmentationNode)} holds no segmentation")
    return segmentation


def _segmentIds(segmentation) -> list[str]:
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def _referenceGeometry(referenceVolumeNode) -> "slicer.vtkOrientedImageData":
    """An unallocated oriented image with the reference volume's extent and IJK -> RAS matrix."""
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(referenceVolumeNode.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    referenceVolumeNode.GetIJKToRASMatrix(matrix)
    geometry.SetGeometryFromImageToWorldMatrix(matrix)
    return geometry


def _arrayOnExtent(image, extent: Sequence[int]) -> np.ndarray:
    """The (I, J, K) voxels of an oriented image, placed on `extent` (zero where it has none)."""
    shape = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3))
    e = image.GetExtent()
    scalars = image.GetPointData().GetScalars() if image.GetPointData() is not None else None
    if scalars is None or e[1] < e[0] or e[3] < e[2] or e[5] < e[4]:
        return np.zeros(shape, dtype=np.uint8)
    dims = (e[1] - e[0] + 1, e[3] - e[2] + 1, e[5] - e[4] + 1)
    values = numpy_support.vtk_to_numpy(scalars)
    out = np.zeros(shape, dtype=values.dtype)  # the labelmap's own type (uint8 as a rule): a whole CT in int64 was 0.6 GB
    if scalars.GetNumberOfComponents() > 1:
        values = values[:, 0]
    ijk = np.transpose(values.reshape(dims[2], dims[1], dims[0]), (2, 1, 0))
    src, dst = [], []
    for a in range(3):
        lo, hi = max(e[2 * a], extent[2 * a]), min(e[2 * a + 1], extent[2 * a + 1])
        if hi < lo:
            return out
        src.append(slice(lo - e[2 * a], hi - e[2 * a] + 1))
        dst.append(slice(lo - extent[2 * a], hi - extent[2 * a] + 1))
    out[tuple(dst)] = ijk[tuple(src)]
    return out


def _segmentMask(segmentationNode, segmentation, segmentId: str, referenceVolumeNode) -> np.ndarray:
    """Boolean (I, J, K) voxels of one segment on the reference volume's grid (may be empty)."""
    segment = segmentation.GetSegment(segmentId)
    hadLabelmap = bool(segmentation.ContainsRepresentation(_BINARY_LABELMAP))
    labelmap = slicer.vtkOrientedImageData()
    # applyParentTransform=False: the transform to the reference is applied while resampling below.
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentId, labelmap, False
    ):
        raise InputError(
            f"segment '{segment.GetName()}' of {nodeLabel(segmentationNode)} cannot be converted to a "
            "binary labelmap; create it in the Segment Editor first"
        )
    transform = None
    segParent = segmentationNode.GetParentTransformNode()
    refParent = referenceVolumeNode.GetParentTransformNode()
    if transformId(segParent) != transformId(refParent):
        transform = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(segParent, refParent, transform)
    geometry = _referenceGeometry(referenceVolumeNode)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, geometry, resampled, False, False, transform, 0
    ):
        raise GeometryError(
            f"segment '{segment.GetName()}' cannot be resampled onto the grid of "
            f"{nodeLabel(referenceVolumeNode)}"
        )
    values = _arrayOnExtent(resampled, geometry.GetExtent())
    # A shared labelmap layer holds several segments, each under its own label value.
    return values == segment.GetLabelValue() if hadLabelmap else values > 0


def _labelImage(labels: np.ndarray, referenceVolumeNode) -> "slicer.vtkOrientedImageData":
    """An oriented image of integer (I, J, K) labels on the reference volume's geometry."""
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.int32)
    image = slicer.vtkOrientedImageData()
    # Same extent and IJK -> RAS matrix as the node (array index 0 is the extent start).
    image.SetExtent(referenceVolumeNode.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    referenceVolumeNode.GetIJKToRASMatrix(matrix)
    image.SetGeometryFromImageToWorldMatrix(matrix)
    kji = np.ascontiguousarray(np.transpose(labels.astype(dtype), (2, 1, 0))).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(kji, deep=True))
    return image


# ------------------------------------------------------------------------------------------------
# Public API


def maskFromSegment(segmentationNode, segmentId: str, referenceVolumeNode) -> np.ndarray:
    """One segment as a boolean (I, J, K) mask on the reference volume's voxel grid.

    Args:
        segmentationNode: the ``vtkMRMLSegmentationNode`` (not modified).
        segmentId: the segment's ID (``segmentation.GetSegmentIdBySegmentName(name)`` finds it
            from its name; a segment name is accepted too).
        referenceVolumeNode: the volume whose grid the mask is on (usually the image explained).

    Raises:
        InputError: unknown segment, or the segment has no voxel on the reference grid (it is
            empty or lies outside the volume).
    """
    segmentation = _checkSegmentation(segmentationNode)
    checkVolumeNode(referenceVolumeNode, "reference volume")
    if segmentation.GetSegment(segmentId) is None:
        byName = segmentation.GetSegmentIdBySegmentName(segmentId) if segmentId else ""
        if not byName:
            names = [segmentation.GetSegment(i).GetName() for i in _segmentIds(segmentation)]
            raise InputError(
                f"{nodeLabel(segmentationNode)} has no segment '{segmentId}'; its segments are: "
                + (", ".join(names) if names else "(none)")
            )
        segmentId = byName
    mask = _segmentMask(segmentationNode, segmentation, segmentId, referenceVolumeNode)
    if not mask.any():
        raise InputError(
            f"segment '{segmentation.GetSegment(segmentId).GetName()}' has no voxel on the grid of "
            f"{nodeLabel(referenceVolumeNode)}: it is empty or lies outside that volume"
        )
    return mask


def labelMapFromSegmentation(segmentationNode, referenceVolumeNode) -> tuple[np.ndarray, list[str]]:
    """All segments as one integer (I, J, K) label map on the reference volume's grid.

    Segment number n (in the segmentation's order) gets label n + 1, background 0; where segments
    overlap, the later one wins. Segments without voxels on the grid keep their label number (so
    ``names`` always lists every segment).

    Returns:
        ``(labels, names)``: an ``int32`` array and the segment names, ``names[n - 1]`` being the
        name of label n.
    """
    segmentation = _checkSegmentation(segmentationNode)
    checkVolumeNode(referenceVolumeNode, "reference volume")
    labels = np.zeros(shapeOf(referenceVolumeNode), dtype=np.int32)
    names = []
    for number, segmentId in enumerate(_segmentIds(segmentation), start=1):
        labels[_segmentMask(segmentationNode, segmentation, segmentId, referenceVolumeNode)] = number
        names.append(segmentation.GetSegment(segmentId).GetName())
    return labels, names


def segmentationNodeFromLabelMap(scene, labelArray: np.ndarray, referenceVolumeNode,
                                 names: Optional[Sequence[str]], name: str):
    """A NEW segmentation node with one segment per label of an (I, J, K) label map.

    Label n (n >= 1) becomes a segment named ``names[n - 1]`` (``"Label n"`` beyond the list);
    there are ``max(len(names), labelArray.max())`` segments, so a named label absent from the
    array gives an empty segment. The segments share one binary labelmap on the reference volume's
    geometry (as Slicer's own label map import does), the reference volume is set as the
    segmentation's reference geometry, and the node is put under the reference's parent transform.

    Raises:
        GeometryError: the array's shape is not the reference volume's (I, J, K).
        InputError: negative or non-integer labels.
    """
    if scene is None:
        raise InputError("no scene was given to create the segmentation node in")
    checkVolumeNode(referenceVolumeNode, "reference volume")
    labels = np.asarray(labelArray)
    shape = shapeOf(referenceVolumeNode)
    if labels.shape != shape:
        raise GeometryError(
            f"the label map has shape {labels.shape} but {nodeLabel(referenceVolumeNode)} is {shape} "
            "(I, J, K); resample it onto that grid first"
        )
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    integral = np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))
    if labels.size and (not integral or labels.min() < 0):
        raise InputError("a label map needs non-negative integer labels")
    labels = labels.astype(np.int64)
    names = list(names or [])
    count = max(len(names), int(labels.max()) if labels.size else 0)

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or "Segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    placeLikeInput(node, referenceVolumeNode)
    segmentation = node.GetSegmentation()
    # "Source" since Slicer 5.4; "Master" before.
    setSource = getattr(segmentation, "SetSourceRepresentationName", None)
    (setSource or segmentation.SetMasterRepresentationName)(_BINARY_LABELMAP)
    image = _labelImage(labels, referenceVolumeNode)
    wasModifying = node.StartModify()
    try:
        for number in range(1, count + 1):
            segment = slicer.vtkSegment()
            given = names[number - 1] if number <= len(names) else ""
            segment.SetName(given or f"Label {number}")
            segment.SetLabelValue(number)
            segment.AddRepresentation(_BINARY_LABELMAP, image)
            segmentation.AddSegment(segment)
    finally:
        node.EndModify(wasModifying)
    return node


def segmentOutlineFromTopFraction(scene, attributionNode, fraction: float, name: str):
    """A NEW segmentation node outlining the `fraction` most relevant voxels by |attribution|.

    The k = ceil(fraction * N) voxels with the largest |a| (N: all voxels; ties at the cut-off are
    all kept, zero-relevance voxels never) form one segment on the attribution's grid, shown as an
    outline in slice views (no fill, no 3D surface). The node records the fraction and the |a|
    cut-off as attributes ``MedXAI.TopFraction`` and ``MedXAI.TopThreshold``.

    Args:
        scene: the scene to add the node to.
        attributionNode: a scalar volume node holding an attribution map (e.g. from
            :func:`MedXAIBridge.results.createAttributionNode`).
        fraction: in (0, 1], e.g. 0.05 for the top 5 %.
        name: the new node's name (the segment is named after the fraction).

    Raises:
        InputError: `fraction` outside (0, 1], or the map is zero everywhere.
    """
    from .volumes import imageVolumeFromNode

    if not (isinstance(fraction, (int, float)) and 0.0 < float(fraction) <= 1.0):
        raise InputError(f"the top fraction must be in (0, 1], e.g. 0.05 for 5 %; got {fraction!r}")
    magnitude = np.abs(imageVolumeFromNode(attributionNode).array).sum(axis=0)
    flat = magnitude.ravel()
    if not np.any(flat > 0):
        raise InputError(
            f"{nodeLabel(attributionNode)} is zero everywhere; there is no relevant region to outline"
        )
    k = min(flat.size, max(1, math.ceil(float(fraction) * flat.size)))
    cutoff = float(np.partition(flat, flat.size - k)[flat.size - k])
    mask = (magnitude >= cutoff) & (magnitude > 0)
    percent = f"{100.0 * float(fraction):.3g}"
    node = segmentationNodeFromLabelMap(scene, mask.astype(np.uint8), attributionNode,
                                        [f"Top {percent}% |relevance|"], name)
    segment = node.GetSegmentation().GetNthSegment(0)
    segment.SetColor(*_OUTLINE_COLOR)
    display = node.GetDisplayNode()
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)
    display.SetVisibility3D(False)
    display.SetSliceIntersectionThickness(2)
    node.SetAttribute("MedXAI.TopFraction", repr(float(fraction)))
    node.SetAttribute("MedXAI.TopThreshold", repr(cutoff))
    node.SetAttribute("MedXAI.AttributionNodeID", attributionNode.GetID() or "")
    return node
