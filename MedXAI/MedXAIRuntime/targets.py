"""Target kinds offered by the widget, and the geometry that turns an ROI or a point into voxels.

The widget lets the user pick what to explain (:class:`TargetKind`); :func:`targetFromSettings`
turns that choice into a :class:`MedXAILib.target.Target` on the input grid. An ROI becomes the
voxel box that holds its eight corners and a point the voxel that contains it, both through the
input's IJK -> RAS affine (:func:`boxFromRasCorners`, :func:`voxelFromRas`). These functions are
pure numpy; :func:`roiCornersFromNode` and :func:`pointFromNode` only call methods of the given
markups node.
"""

from __future__ import annotations

import enum
from typing import Any, Optional, Sequence

import numpy as np

from MedXAILib.errors import TargetError
from MedXAILib.target import Target

__all__ = [
    "TargetKind",
    "SCORES",
    "REDUCTIONS",
    "roiCorners",
    "boxFromRasCorners",
    "voxelFromRas",
    "roiCornersFromNode",
    "pointFromNode",
    "worldToVolumeMatrix",
    "transformPoints",
    "targetFromSettings",
]

SCORES = ("logit", "probability")
REDUCTIONS = ("sum", "mean")


class TargetKind(enum.Enum):
    """What to explain. The parameter node stores the member name."""

    classScore = "class"
    predicted = "predicted"
    segment = "mask"
    component = "component"
    roi = "box"
    point = "voxel"

    def label(self) -> str:
        """Text shown in the combo box (``parameterNodeWrapper`` calls it for enum choices)."""
        return {
            TargetKind.classScore: "Class score (classifier) / whole output (segmenter)",
            TargetKind.predicted: "Predicted structure of the class",
            TargetKind.segment: "Segment",
            TargetKind.component: "Predicted component at a point",
            TargetKind.roi: "Box (ROI)",
            TargetKind.point: "Single voxel at a point",
        }[self]

    @property
    def region(self) -> str:
        """The :class:`MedXAILib.target.Target` region."""
        return self.value


def roiCorners(center: Sequence[float], axes: Sequence[Sequence[float]], size: Sequence[float]) -> np.ndarray:
    """The 8 corners (8, 3) of a box with `center`, unit `axes` (3 x 3, one per row) and side lengths `size`."""
    center = np.asarray(center, dtype=np.float64)
    axes = np.asarray(axes, dtype=np.float64).reshape(3, 3)
    half = np.asarray(size, dtype=np.float64) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    return center + (signs * half) @ axes


def _toIjk(affine: np.ndarray, ras: np.ndarray) -> np.ndarray:
    ras = np.atleast_2d(np.asarray(ras, dtype=np.float64))
    homogeneous = np.c_[ras, np.ones(len(ras))]
    return (np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ homogeneous.T).T[:, :3]


def boxFromRasCorners(affine: np.ndarray, corners: np.ndarray, shape: Sequence[int]) -> tuple[int, ...]:
    """The inclusive voxel box ``(i0, j0, k0, i1, j1, k1)`` whose voxel centres lie in the corners' hull.

    Raises:
        TargetError: the box misses the image grid.
    """
    ijk = _toIjk(affine, corners)
    lo = np.ceil(ijk.min(axis=0) - 1e-6).astype(int)
    hi = np.floor(ijk.max(axis=0) + 1e-6).astype(int)
    upper = np.asarray(shape, dtype=int) - 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, upper)
    if np.any(hi < lo):
        raise TargetError("the ROI does not cover any voxel of the input volume; move it onto the image")
    return tuple(int(v) for v in (*lo, *hi))


def voxelFromRas(affine: np.ndarray, ras: Sequence[float], shape: Sequence[int]) -> tuple[int, int, int]:
    """The voxel ``(i, j, k)`` that contains the RAS point.

    Raises:
        TargetError: the point lies outside the image grid.
    """
    ijk = np.rint(_toIjk(affine, ras)[0]).astype(int)
    if np.any(ijk < 0) or np.any(ijk >= np.asarray(shape)):
        raise TargetError(
            f"the point lies outside the input volume (voxel {tuple(int(v) for v in ijk)} of a "
            f"{tuple(int(n) for n in shape)} grid); place it on the image"
        )
    return tuple(int(v) for v in ijk)  # type: ignore[return-value]


def roiCornersFromNode(roiNode: Any) -> np.ndarray:
    """The 8 world (RAS) corners of a ``vtkMRMLMarkupsROINode``, transforms applied."""
    center = [0.0, 0.0, 0.0]
    size = [0.0, 0.0, 0.0]
    roiNode.GetCenterWorld(center)
    roiNode.GetSizeWorld(size)
    axes = []
    for index in range(3):
        axis = [0.0, 0.0, 0.0]
        roiNode.GetAxisWorld(index, axis)
        axes.append(axis)
    return roiCorners(center, axes, size)


def pointFromNode(pointNode: Any, index: int = 0) -> list[float]:
    """World (RAS) position of control point `index` of a markups node.

    Raises:
        TargetError: the node has no such control point.
    """
    if pointNode.GetNumberOfControlPoints() <= index:
        raise TargetError(f"the point list '{pointNode.GetName()}' has no point; place one on the image")
    position = [0.0, 0.0, 0.0]
    pointNode.GetNthControlPointPositionWorld(index, position)
    return position


def worldToVolumeMatrix(volumeNode: Any) -> np.ndarray:
    """4x4 matrix from world RAS to the RAS of `volumeNode` before its parent transform.

    The Bridge's :class:`ImageVolume` affine is in the volume node's own coordinates (its parent
    transform is not applied), while markups positions are in world coordinates.

    Raises:
        TargetError: the volume is under a non-linear transform (harden it first).
    """
    parent = volumeNode.GetParentTransformNode() if volumeNode is not None else None
    if parent is None:
        return np.eye(4)
    import vtk

    matrix = vtk.vtkMatrix4x4()
    if not parent.GetMatrixTransformFromWorld(matrix):
        raise TargetError(
            f"the input volume '{volumeNode.GetName()}' is under a non-linear transform; harden the transform "
            "(Data module: right-click > Harden transform) to use an ROI or point target"
        )
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def transformPoints(matrix: Optional[np.ndarray], points: Any) -> np.ndarray:
    """Apply a 4x4 matrix to (N, 3) points (or one point); None leaves them as they are."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if matrix is None:
        return points
    homogeneous = np.c_[points, np.ones(len(points))]
    return (np.asarray(matrix, dtype=np.float64) @ homogeneous.T).T[:, :3]


def targetFromSettings(
    kind: TargetKind,
    affine: np.ndarray,
    shape: Sequence[int],
    *,
    classIndex: Optional[int] = None,
    score: str = "logit",
    reduction: str = "sum",
    mask: Optional[np.ndarray] = None,
    roiCornersRas: Optional[np.ndarray] = None,
    pointRas: Optional[Sequence[float]] = None,
    worldToImage: Optional[np.ndarray] = None,
) -> Target:
    """The :class:`Target` for the widget's choice on the input grid (`affine`, `shape`).

    Args:
        kind: the target kind.
        classIndex: output class; None (or < 0) means the predicted class of a classifier.
        mask: boolean (I, J, K) mask for :attr:`TargetKind.segment`.
        roiCornersRas: ROI corners for :attr:`TargetKind.roi`.
        pointRas: point for :attr:`TargetKind.point` and :attr:`TargetKind.component`.
        worldToImage: maps `roiCornersRas` and `pointRas` (world RAS) into the coordinates of
            `affine` (see :func:`worldToVolumeMatrix`); None when they are the same.

    Raises:
        TargetError: the input that the kind needs is missing or off the grid.
    """
    classIndex = None if classIndex is None or int(classIndex) < 0 else int(classIndex)
    common = dict(class_index=classIndex, score=score, reduction=reduction)
    if kind is TargetKind.segment:
        if mask is None:
            raise TargetError("select a segmentation and a segment to explain")
        if not np.any(mask):
            raise TargetError("the selected segment is empty on the input volume's grid")
        return Target(region="mask", mask=np.asarray(mask, dtype=bool), **common)
    if kind is TargetKind.roi:
        if roiCornersRas is None:
            raise TargetError("select an ROI to explain")
        corners = transformPoints(worldToImage, roiCornersRas)
        return Target(region="box", box=boxFromRasCorners(affine, corners, shape), **common)
    if kind in (TargetKind.point, TargetKind.component):
        if pointRas is None:
            raise TargetError("select a point list with a point on the image")
        point = transformPoints(worldToImage, pointRas)[0]
        return Target(region=kind.region, voxel=voxelFromRas(affine, point, shape), **common)
    return Target(region=kind.region, **common)
