"""Volume nodes <-> ImageVolume: voxel order, geometry, channels, and a cross-check through NRRD files."""

from __future__ import annotations

import numpy as np
import pytest
from mrmlTesting import addVolumeNode, gridAffine, ijkArray, ijkToRasOf, obliqueAffine

import slicer
import vtk
from MedXAIBridge.volumes import imageVolumeFromNode, imageVolumeFromNodes, volumeNodeFromImageVolume
from MedXAILib.errors import GeometryError, InputError
from MedXAILib.io import read_image
from MedXAILib.volume import ImageVolume

pytestmark = pytest.mark.mrml

SHAPE = (13, 9, 7)  # (I, J, K), all different so that any transposition shows

AFFINES = {
    "oblique": obliqueAffine(),
    "flipped": gridAffine(spacing=(0.7, 1.9, 3.1), origin=(12.5, -250.0, 33.0)) @ np.diag([-1.0, 1.0, 1.0, 1.0]),
}


def _corners(shape):
    return [np.array([i, j, k]) for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]


def _slicerRas(node, ijk) -> np.ndarray:
    """Slicer's own RAS position of a voxel index (through the node's matrix)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array(matrix.MultiplyPoint([*map(float, ijk), 1.0])[:3])


def _writeNrrd(scene, node, path) -> None:
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    assert storage.WriteData(node), f"Slicer could not write {path}"
    scene.RemoveNode(storage)


@pytest.mark.parametrize("geometry", sorted(AFFINES))
def test_round_trip_keeps_voxels_and_geometry(scene, geometry):
    affine = AFFINES[geometry]
    data = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    node = addVolumeNode(scene, data, affine, "CT")

    volume = imageVolumeFromNode(node)

    assert volume.array.shape == (1, *SHAPE) and volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array[0], data)
    np.testing.assert_allclose(volume.affine, ijkToRasOf(node), atol=1e-6)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-6)
    assert volume.channel_names == ["CT"] and volume.meta["node_id"] == node.GetID()
    kji = slicer.util.arrayFromVolume(node)
    for ijk in _corners(SHAPE) + [np.array([5, 3, 2])]:
        np.testing.assert_allclose(volume.affine @ [*ijk, 1.0], [*_slicerRas(node, ijk), 1.0], atol=1e-6)
        assert volume.array[0][tuple(ijk)] == kji[ijk[2], ijk[1], ijk[0]]

    copy = volumeNodeFromImageVolume(scene, volume, "CT copy")
    assert copy is not node and copy.GetID() != node.GetID() and copy.GetScene() is scene
    assert copy.GetClassName() == "vtkMRMLScalarVolumeNode" and copy.GetName() == "CT copy"
    np.testing.assert_array_equal(ijkArray(copy), data)
    np.testing.assert_allclose(ijkToRasOf(copy), ijkToRasOf(node), atol=1e-6)
    assert copy.GetDisplayNode() is not None


@pytest.mark.parametrize("geometry", sorted(AFFINES))
def test_geometry_matches_medxailib_reading_of_the_nrrd_slicer_writes(scene, tmp_path, geometry):
    affine = AFFINES[geometry]
    data = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    node = addVolumeNode(scene, data, affine, "MR")
    _writeNrrd(scene, node, tmp_path / "slicer.nrrd")

    fromFile = read_image(tmp_path / "slicer.nrrd")
    fromNode = imageVolumeFromNode(node)

    np.testing.assert_array_equal(fromFile.array, fromNode.array)
    np.testing.assert_allclose(fromFile.affine, fromNode.affine, atol=1e-6)
    for ijk in _corners(SHAPE):  # the same voxel lands at the same RAS point both ways
        np.testing.assert_allclose(fromFile.affine @ [*ijk, 1.0], fromNode.affine @ [*ijk, 1.0], atol=1e-6)

    # And the other way: a node made by the bridge, written by Slicer, read by MedXAILib.
    copy = volumeNodeFromImageVolume(scene, fromNode, "copy")
    _writeNrrd(scene, copy, tmp_path / "copy.nrrd")
    again = read_image(tmp_path / "copy.nrrd")
    np.testing.assert_array_equal(again.array, data[np.newaxis])
    np.testing.assert_allclose(again.affine, affine, atol=1e-6)


def test_vector_volume_components_become_channels_and_back(scene):
    data = np.random.default_rng(2).uniform(0, 255, size=(*SHAPE, 3)).astype(np.float32)
    node = addVolumeNode(scene, data, obliqueAffine(), "RGB", "vtkMRMLVectorVolumeNode")

    volume = imageVolumeFromNode(node)
    assert volume.array.shape == (3, *SHAPE)
    np.testing.assert_array_equal(volume.array, np.moveaxis(data, 3, 0))
    assert volume.channel_names == ["RGB [0]", "RGB [1]", "RGB [2]"]

    copy = volumeNodeFromImageVolume(scene, volume, "copy")  # default class, several channels: vector
    assert copy.IsA("vtkMRMLVectorVolumeNode")
    np.testing.assert_array_equal(ijkArray(copy), data)
    np.testing.assert_allclose(ijkToRasOf(copy), ijkToRasOf(node), atol=1e-6)


def test_label_map_nodes_hold_integers(scene):
    labels = np.random.default_rng(3).integers(0, 4, size=SHAPE).astype(np.float32)
    node = volumeNodeFromImageVolume(scene, ImageVolume(labels, obliqueAffine()), "labels",
                                     "vtkMRMLLabelMapVolumeNode")
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    assert node.GetImageData().GetScalarType() == vtk.VTK_SHORT
    np.testing.assert_array_equal(ijkArray(node), labels)
    with pytest.raises(InputError, match="integer"):
        volumeNodeFromImageVolume(scene, ImageVolume(labels + 0.5, obliqueAffine()), "x", "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputError, match="one channel"):
        volumeNodeFromImageVolume(scene, ImageVolume(np.stack([labels, labels]), obliqueAffine()), "x",
                                  "vtkMRMLLabelMapVolumeNode")


def test_refusals(scene):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxel data"):
        imageVolumeFromNode(empty)
    with pytest.raises(InputError, match="volume node"):
        imageVolumeFromNode(scene.AddNewNodeByClass("vtkMRMLTableNode", "table"))
    sheared = gridAffine()
    sheared[0, 1] = 0.5
    with pytest.raises(GeometryError, match="shear"):
        volumeNodeFromImageVolume(scene, ImageVolume(np.zeros((1, 2, 2, 2)), sheared), "x")
    with pytest.raises(InputError, match="not a volume node class"):
        volumeNodeFromImageVolume(scene, ImageVolume(np.zeros((1, 2, 2, 2)), gridAffine()), "x", "vtkMRMLTableNode")
    with pytest.raises(InputError, match="at least one"):
        imageVolumeFromNodes([])


def _linear(ras: np.ndarray) -> np.ndarray:
    """A smooth test image defined in RAS, so that any grid can sample it exactly (up to interpolation)."""
    return 2.0 * ras[..., 0] - 1.0 * ras[..., 1] + 0.5 * ras[..., 2] + 3.0


def _rasGrid(affine, shape) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def test_nodes_on_other_grids_are_resampled_onto_the_first(scene):
    first = obliqueAffine(spacing=(1.0, 1.0, 1.5), origin=(10.0, -20.0, 30.0))
    shape = (16, 14, 10)
    other = gridAffine(spacing=(1.7, 1.7, 2.3), origin=(-20.3, -50.1, 0.7))  # coarser, axis-aligned, shifted
    otherShape = (40, 40, 32)
    a = addVolumeNode(scene, _linear(_rasGrid(first, shape)).astype(np.float32), first, "T1")
    b = addVolumeNode(scene, _linear(_rasGrid(other, otherShape)).astype(np.float32), other, "T2")

    volume = imageVolumeFromNodes([a, b])

    assert volume.array.shape == (2, *shape) and volume.channel_names == ["T1", "T2"]
    np.testing.assert_allclose(volume.affine, first, atol=1e-9)
    np.testing.assert_array_equal(volume.array[0], ijkArray(a))
    # Linear interpolation of a linear function is exact: the second channel samples the same field.
    np.testing.assert_allclose(volume.array[1], volume.array[0], atol=2e-3)


def test_linear_parent_transforms_are_taken_into_account(scene):
    affine = gridAffine(spacing=(1.0, 1.2, 2.0), origin=(-8.0, -9.0, -10.0))
    shape = (12, 10, 8)
    a = addVolumeNode(scene, _linear(_rasGrid(affine, shape)).astype(np.float32), affine, "fixed")
    # The same physical field, stored 25 mm to the left and moved back by a parent transform.
    shifted = affine.copy()
    shifted[0, 3] -= 25.0
    b = addVolumeNode(scene, _linear(_rasGrid(affine, shape)).astype(np.float32), shifted, "moving")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(matrix)
    b.SetAndObserveTransformNodeID(transform.GetID())

    volume = imageVolumeFromNodes([a, b])
    np.testing.assert_allclose(volume.array[1], volume.array[0], atol=1e-4)


def test_nodes_that_do_not_overlap_are_refused(scene):
    a = addVolumeNode(scene, np.ones((8, 8, 8), np.float32), gridAffine(origin=(0, 0, 0)), "here")
    b = addVolumeNode(scene, np.ones((8, 8, 8), np.float32), gridAffine(origin=(500, 0, 0)), "elsewhere")
    with pytest.raises(GeometryError, match="'elsewhere'.*overlap"):
        imageVolumeFromNodes([a, b])
