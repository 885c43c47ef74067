"""Volume nodes <-> :class:`ImageVolume`: the one place where Slicer's voxel order meets MedXAILib's.

Slicer keeps a volume's voxels in a ``vtkImageData`` whose numpy view (``slicer.util.arrayFromVolume``)
is (K, J, I) or (K, J, I, C) for vector volumes, with origin 0 and spacing 1, and keeps the geometry
in the node as a 4x4 IJK -> RAS matrix (spacing, directions, origin; oblique directions included).
:class:`ImageVolume` is (C, I, J, K) float32 with the same IJK -> RAS matrix as ``affine``. Both sides
use RAS, so the matrix is copied as is; only the array axes are reversed.

A volume's parent transform is not applied: an :class:`ImageVolume` is in the node's own (local)
coordinates, and nodes created from results are placed under the same parent transform as their
input so they overlay it. :func:`imageVolumeFromNodes` brings nodes under different *linear*
transforms into the first node's coordinates; non-linear transforms must be hardened first.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from MedXAILib.errors import GeometryError, InputError
from MedXAILib.volume import ImageVolume

from .nodes import createNode

__all__ = ["imageVolumeFromNode", "imageVolumeFromNodes", "volumeNodeFromImageVolume", "checkVolumeNode", "ijkToRas",
           "imageDataFromArray", "nodeLabel", "placeLikeInput", "shapeOf", "transformId"]

_SCALAR_CLASS = "vtkMRMLScalarVolumeNode"
_VECTOR_CLASS = "vtkMRMLVectorVolumeNode"
_LABEL_CLASS = "vtkMRMLLabelMapVolumeNode"


# ------------------------------------------------------------------------------------------------
# Small helpers shared by the other bridge modules


def _arrayFromMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _matrixFromArray(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def nodeLabel(node) -> str:
    return f"'{node.GetName()}'" if node is not None and node.GetName() else "the volume"


def checkVolumeNode(volumeNode, what: str = "volume") -> vtk.vtkImageData:
    """The node's image data, or an :class:`InputError` saying what is missing."""
    if volumeNode is None:
        raise InputError(f"no {what} node was given")
    if not hasattr(volumeNode, "IsA") or not volumeNode.IsA("vtkMRMLVolumeNode"):
        kind = volumeNode.GetClassName() if hasattr(volumeNode, "GetClassName") else type(volumeNode).__name__
        raise InputError(f"a volume node was expected for the {what}; got a {kind}")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData() is None or imageData.GetPointData().GetScalars() is None:
        raise InputError(f"the {what} {nodeLabel(volumeNode)} has no voxel data; load or compute it first")
    return imageData


def ijkToRas(volumeNode) -> np.ndarray:
    """The node's IJK -> RAS matrix as a 4x4 array, for voxel indices counted from the extent start.

    Slicer volumes normally have an extent starting at 0; a cropped ``vtkImageData`` may not, and then
    the index of the first stored voxel is folded into the matrix so that array index 0 maps right.
    """
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    affine = _arrayFromMatrix(matrix)
    imageData = volumeNode.GetImageData()
    if imageData is not None:
        e = imageData.GetExtent()
        if e[0] or e[2] or e[4]:
            affine[:, 3] = affine @ np.array([e[0], e[2], e[4], 1.0])
    return affine


def shapeOf(volumeNode) -> tuple[int, int, int]:
    """Spatial shape (I, J, K) of a node's image data."""
    return tuple(int(n) for n in volumeNode.GetImageData().GetDimensions())  # type: ignore[return-value]


def _arrayFromImageData(imageData: vtk.vtkImageData) -> np.ndarray:
    """A (C, I, J, K) copy of the image data's scalars, in their stored type."""
    scalars = imageData.GetPointData().GetScalars()
    i, j, k = imageData.GetDimensions()
    components = scalars.GetNumberOfComponents()
    kjic = numpy_support.vtk_to_numpy(scalars).reshape(k, j, i, components)
    return np.ascontiguousarray(np.transpose(kjic, (3, 2, 1, 0)))


def imageDataFromArray(array: np.ndarray) -> vtk.vtkImageData:
    """A new ``vtkImageData`` (origin 0, spacing 1) holding a deep copy of a (C, I, J, K) array."""
    channels, i, j, k = array.shape
    kjic = np.ascontiguousarray(np.transpose(array, (3, 2, 1, 0))).reshape(-1, channels)
    scalars = numpy_support.numpy_to_vtk(kjic if channels > 1 else kjic[:, 0], deep=True)
    scalars.SetName("ImageScalars")
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(i, j, k)
    imageData.GetPointData().SetScalars(scalars)
    return imageData


def _checkAffineForSlicer(affine: np.ndarray) -> None:
    """Slicer stores spacing and orthonormal directions: refuse an affine with shear."""
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise GeometryError(
            "the affine has shear; a Slicer volume stores spacing and orthogonal axis directions only"
        )


def transformId(transformNode) -> Optional[str]:
    return transformNode.GetID() if transformNode is not None else None


def _sourceOf(volumeNode) -> str:
    """The file a node was loaded from, or its name (for provenance)."""
    storage = volumeNode.GetStorageNode() if hasattr(volumeNode, "GetStorageNode") else None
    fileName = storage.GetFileName() if storage is not None else None
    return fileName or volumeNode.GetName() or volumeNode.GetID() or "<volume node>"


def placeLikeInput(node, inputNode) -> None:
    """Put `node` under the same parent transform as `inputNode` (so they overlay in every view)."""
    parent = inputNode.GetParentTransformNode() if inputNode is not None else None
    node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)


# ------------------------------------------------------------------------------------------------
# Public API


def imageVolumeFromNode(volumeNode) -> ImageVolume:
    """A volume node as an :class:`ImageVolume` (a copy; the node is not modified).

    A scalar volume (also a label map) gives one channel; a vector volume (e.g. RGB or a
    multi-component volume) gives one channel per component. The affine is the node's IJK -> RAS
    matrix (anisotropic spacing and oblique directions included); the node's parent transform is
    not applied (see the module docstring).

    Args:
        volumeNode: a ``vtkMRMLScalarVolumeNode``, ``vtkMRMLLabelMapVolumeNode`` or
            ``vtkMRMLVectorVolumeNode``.

    Returns:
        The (C, I, J, K) float32 volume; ``channel_names`` is the node name (one channel) or
        ``"<name> [c]"`` per component; ``meta`` holds ``source`` (file name or node name),
        ``node_id`` and ``node_name``.

    Raises:
        InputError: no node, not a volume node, no voxel data, or a tensor volume.
    """
    imageData = checkVolumeNode(volumeNode)
    if volumeNode.IsA("vtkMRMLDiffusionTensorVolumeNode"):
        raise InputError(f"{nodeLabel(volumeNode)} is a diffusion tensor volume; compute a scalar map first")
    array = _arrayFromImageData(imageData)
    name = volumeNode.GetName() or "volume"
    names = [name] if array.shape[0] == 1 else [f"{name} [{c}]" for c in range(array.shape[0])]
    return ImageVolume(
        array.astype(np.float32, copy=False),
        ijkToRas(volumeNode),
        channel_names=names,
        meta={"source": _sourceOf(volumeNode), "node_id": volumeNode.GetID(), "node_name": name},
    )


def imageVolumeFromNodes(volumeNodes: Sequence) -> ImageVolume:
    """Several volume nodes as the channels of one :class:`ImageVolume` on the first node's grid.

    Use it for multi-channel models (e.g. T1, T1c, T2, FLAIR; or CT and PET): one node per channel
    (a vector node contributes all its components). Nodes on another grid are resampled (linear
    interpolation; outside their extent: their minimum) with :func:`MedXAILib.io.resample_to`.
    Nodes under different linear parent transforms are first expressed in the first node's
    coordinates.

    Raises:
        InputError: no node, or a node without voxel data.
        GeometryError: a node does not overlap the first one, or the nodes are related by a
            non-linear transform (harden it first).
    """
    nodes = [volumeNodes] if hasattr(volumeNodes, "IsA") else list(volumeNodes or [])
    if not nodes:
        raise InputError("imageVolumeFromNodes needs at least one volume node")
    first = imageVolumeFromNode(nodes[0])
    if len(nodes) == 1:
        return first
    firstParent = nodes[0].GetParentTransformNode()
    arrays, names, sources = [first.array], list(first.channel_names), [first.meta["source"]]
    for node in nodes[1:]:
        volume = imageVolumeFromNode(node)
        parent = node.GetParentTransformNode()
        if transformId(parent) != transformId(firstParent):
            toFirst = vtk.vtkMatrix4x4()
            if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(parent, firstParent, toFirst):
                raise GeometryError(
                    f"{nodeLabel(node)} and {nodeLabel(nodes[0])} are related by a non-linear transform; "
                    "harden the transform (Data module: right-click > Harden transform) first"
                )
            volume = ImageVolume(volume.array, _arrayFromMatrix(toFirst) @ volume.affine,
                                 channel_names=volume.channel_names, meta=volume.meta)
        if not volume.same_grid(first):
            from MedXAILib.io import resample_to  # SimpleITK is heavy: import on first use

            try:
                volume = resample_to(volume, first, interpolation="linear")
            except GeometryError as error:
                raise GeometryError(
                    f"{nodeLabel(node)} cannot be used with {nodeLabel(nodes[0])}: {error}"
                ) from None
        arrays.append(volume.array)
        names.extend(volume.channel_names)
        sources.append(volume.meta.get("source"))
    return ImageVolume(
        np.concatenate(arrays),
        first.affine.copy(),
        channel_names=names,
        meta={"source": sources, "node_id": [n.GetID() for n in nodes],
              "node_name": [n.GetName() for n in nodes]},
    )


def volumeNodeFromImageVolume(scene, volume: ImageVolume, name: str, nodeClass: str = _SCALAR_CLASS):
    """A NEW volume node in `scene` holding `volume`, with its affine as the IJK -> RAS matrix.

    One channel gives a node of `nodeClass` (``vtkMRMLScalarVolumeNode`` by default, or
    ``vtkMRMLLabelMapVolumeNode``, whose voxels are stored as integers). Several channels give a
    ``vtkMRMLVectorVolumeNode`` with one component per channel (with the default `nodeClass`, or
    when `nodeClass` names a vector volume class); pass ``volume.with_array(volume.array[c])`` to
    get one channel as a scalar volume instead. Default display nodes are created.

    Raises:
        InputError: no scene, an unknown or non-volume `nodeClass`, several channels for a label
            map, or non-integer values for a label map.
        GeometryError: the affine has shear (Slicer volumes cannot represent it).
    """
    if scene is None:
        raise InputError("no scene was given to create the volume node in")
    if not isinstance(volume, ImageVolume):
        raise InputError(f"an ImageVolume was expected; got {type(volume).__name__}")
    _checkAffineForSlicer(volume.affine)
    probe = createNode(scene, nodeClass) if nodeClass else None
    if probe is None or not probe.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"'{nodeClass}' is not a volume node class")
    isVector = probe.IsA(_VECTOR_CLASS)
    if volume.n_channels > 1 and not isVector:
        if nodeClass != _SCALAR_CLASS:
            raise InputError(
                f"a {nodeClass} holds one channel but the volume has {volume.n_channels}; "
                "pass one channel (volume.with_array(volume.array[c])) or a vector volume class"
            )
        probe = createNode(scene, _VECTOR_CLASS)
        isVector = True
    node = probe
    array = volume.array
    if node.IsA(_LABEL_CLASS):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError("a label map needs integer values; round or threshold the volume first")
        lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        array = array.astype(np.int16 if -32768 <= lo and hi <= 32767 else np.int32)
    node.SetName(name or "volume")
    node.SetIJKToRASMatrix(_matrixFromArray(volume.affine))
    node.SetAndObserveImageData(imageDataFromArray(array))
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node
