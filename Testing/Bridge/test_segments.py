"""Segments -> masks and label maps on an image grid (another grid, transforms, shared layers), and back."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mrmlTesting import addVolumeNode, gridAffine, obliqueAffine

import slicer
import vtk
from MedXAIBridge.segments import (
    labelMapFromSegmentation,
    maskFromSegment,
    segmentationNodeFromLabelMap,
    segmentOutlineFromTopFraction,
)
from MedXAILib.errors import GeometryError, InputError

pytestmark = pytest.mark.mrml

# The image: oblique, anisotropic, far from the origin.
IMAGE_AFFINE = obliqueAffine(spacing=(0.9, 1.1, 1.6), origin=(-14.0, -12.5, -9.0), angles=(12.0, -7.0, 23.0))
IMAGE_SHAPE = (30, 28, 20)
# The segmentation's label map: axis-aligned, coarser (2.5 mm) and shifted by a fraction of a voxel.
LABEL_AFFINE = gridAffine(spacing=(2.5, 2.5, 2.5), origin=(-30.3, -29.7, -30.45))
LABEL_SHAPE = (26, 26, 26)


def _labelVolume() -> np.ndarray:
    """(I, J, K) labels on the coarse grid: 1 = a box, 2 = a ball (they share one labelmap layer)."""
    labels = np.zeros(LABEL_SHAPE, np.uint8)
    labels[9:14, 10:13, 11:15] = 1
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in LABEL_SHAPE], indexing="ij"), -1)
    labels[np.linalg.norm(ijk - [15, 14, 12], axis=-1) <= 2.6] = 2
    return labels


def _expected(labelAffine: np.ndarray, labels: np.ndarray, value: int):
    """Nearest-neighbour truth for each image voxel, and where it is ambiguous (on a coarse voxel face)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in IMAGE_SHAPE], indexing="ij"), -1).reshape(-1, 3)
    ras = np.c_[ijk, np.ones(len(ijk))] @ IMAGE_AFFINE.T
    coarse = (ras @ np.linalg.inv(labelAffine).T)[:, :3]
    nearest = np.round(coarse).astype(int)
    inside = np.all((nearest >= 0) & (nearest < LABEL_SHAPE), axis=1)
    truth = np.zeros(len(ijk), bool)
    truth[inside] = labels[tuple(nearest[inside].T)] == value
    ambiguous = np.any(np.abs(np.abs(coarse - np.floor(coarse)) - 0.5) < 1e-3, axis=1)
    return truth.reshape(IMAGE_SHAPE), ambiguous.reshape(IMAGE_SHAPE)


@pytest.fixture
def image(scene):
    return addVolumeNode(scene, np.zeros(IMAGE_SHAPE, np.float32), IMAGE_AFFINE, "image")


@pytest.fixture
def segmentation(scene):
    """A segmentation imported by Slicer's own logic from a label map on the coarse, shifted grid."""
    labelNode = addVolumeNode(scene, _labelVolume(), LABEL_AFFINE, "labels", "vtkMRMLLabelMapVolumeNode")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "structures")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, node)
    assert node.GetSegmentation().GetNumberOfSegments() == 2
    return node


def _ids(node) -> list[str]:
    return [node.GetSegmentation().GetNthSegmentID(i) for i in range(node.GetSegmentation().GetNumberOfSegments())]


@pytest.mark.parametrize("number", [1, 2])
def test_mask_lands_on_the_image_grid(segmentation, image, number):
    truth, ambiguous = _expected(LABEL_AFFINE, _labelVolume(), number)
    assert truth.sum() > 50  # the test would be vacuous otherwise

    mask = maskFromSegment(segmentation, _ids(segmentation)[number - 1], image)

    assert mask.dtype == bool and mask.shape == IMAGE_SHAPE
    np.testing.assert_array_equal(mask[~ambiguous], truth[~ambiguous])


def test_segment_names_are_accepted_and_unknown_or_empty_segments_refused(scene, segmentation, image):
    name = segmentation.GetSegmentation().GetNthSegment(0).GetName()
    np.testing.assert_array_equal(maskFromSegment(segmentation, name, image),
                                  maskFromSegment(segmentation, _ids(segmentation)[0], image))
    with pytest.raises(InputError, match=f"no segment 'liver'; its segments are: {name}, "):
        maskFromSegment(segmentation, "liver", image)
    far = addVolumeNode(scene, np.zeros((5, 5, 5), np.float32), gridAffine(origin=(400, 0, 0)), "far away")
    with pytest.raises(InputError, match="no voxel on the grid of 'far away'"):
        maskFromSegment(segmentation, _ids(segmentation)[0], far)


def test_parent_transforms_are_applied(scene, segmentation, image):
    shift = np.eye(4)
    shift[:3, 3] = [6.2, -3.7, 4.9]
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        matrix.SetElement(r, 3, shift[r, 3])
    transform.SetMatrixTransformToParent(matrix)
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    truth, ambiguous = _expected(shift @ LABEL_AFFINE, _labelVolume(), 1)

    mask = maskFromSegment(segmentation, _ids(segmentation)[0], image)
    np.testing.assert_array_equal(mask[~ambiguous], truth[~ambiguous])

    image.SetAndObserveTransformNodeID(transform.GetID())  # both moved together: back to the original
    truth, ambiguous = _expected(LABEL_AFFINE, _labelVolume(), 1)
    mask = maskFromSegment(segmentation, _ids(segmentation)[0], image)
    np.testing.assert_array_equal(mask[~ambiguous], truth[~ambiguous])


def test_label_map_numbers_segments_in_order(segmentation, image):
    labels, names = labelMapFromSegmentation(segmentation, image)
    assert names == [segmentation.GetSegmentation().GetSegment(i).GetName() for i in _ids(segmentation)]
    assert labels.shape == IMAGE_SHAPE and labels.dtype == np.int32
    for number, segmentId in enumerate(_ids(segmentation), start=1):
        np.testing.assert_array_equal(labels == number, maskFromSegment(segmentation, segmentId, image))


def test_segmentation_inputs_are_not_modified(segmentation, image):
    before = (segmentation.GetMTime(), segmentation.GetSegmentation().GetMTime(), image.GetMTime(),
              image.GetImageData().GetMTime())
    maskFromSegment(segmentation, _ids(segmentation)[1], image)
    labelMapFromSegmentation(segmentation, image)
    after = (segmentation.GetMTime(), segmentation.GetSegmentation().GetMTime(), image.GetMTime(),
             image.GetImageData().GetMTime())
    assert after == before


def test_closed_surface_segments_are_converted_without_touching_the_segmentation(scene, image):
    # Slicer's Segmentations module registers the conversion rules at start-up; slicer-core does not.
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    centre = IMAGE_AFFINE @ [15, 14, 10, 1]
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*centre[:3])
    sphere.SetRadius(6.0)
    sphere.SetThetaResolution(48)
    sphere.SetPhiResolution(48)
    sphere.Update()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surface")
    node.GetSegmentation().SetSourceRepresentationName("Closed surface")
    node.SetReferenceImageGeometryParameterFromVolumeNode(image)
    segmentId = node.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "ball")

    mask = maskFromSegment(node, segmentId, image)

    assert not node.GetSegmentation().ContainsRepresentation("Binary labelmap")
    voxel = 0.9 * 1.1 * 1.6
    assert abs(mask.sum() * voxel - 4 / 3 * math.pi * 6.0**3) < 0.15 * 4 / 3 * math.pi * 6.0**3
    ras = (np.c_[np.argwhere(mask), np.ones(mask.sum())] @ IMAGE_AFFINE.T)[:, :3]
    np.testing.assert_allclose(ras.mean(axis=0), centre[:3], atol=0.5)


def test_label_map_round_trip_through_a_new_segmentation(scene, segmentation, image):
    labels, names = labelMapFromSegmentation(segmentation, image)

    node = segmentationNodeFromLabelMap(scene, labels, image, names + ["absent"], "copy")

    assert node is not segmentation and node.GetName() == "copy"
    assert [node.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)] == names + ["absent"]
    again, againNames = labelMapFromSegmentation(node, image)
    np.testing.assert_array_equal(again, labels)
    assert againNames == names + ["absent"]
    assert node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is image
    with pytest.raises(InputError, match="no voxel"):
        maskFromSegment(node, "absent", image)
    with pytest.raises(GeometryError, match="shape"):
        segmentationNodeFromLabelMap(scene, labels[:-1], image, names, "bad")
    with pytest.raises(InputError, match="non-negative integer"):
        segmentationNodeFromLabelMap(scene, labels - 1, image, names, "bad")


def test_top_fraction_outline(scene, image):
    rng = np.random.default_rng(4)
    values = rng.permutation(np.arange(1, np.prod(IMAGE_SHAPE) + 1)).reshape(IMAGE_SHAPE).astype(np.float32)
    values *= rng.choice([-1.0, 1.0], size=IMAGE_SHAPE)  # distinct |a|: no ties
    attribution = addVolumeNode(scene, values, IMAGE_AFFINE, "attribution")

    node = segmentOutlineFromTopFraction(scene, attribution, 0.05, "top 5%")

    assert node.IsA("vtkMRMLSegmentationNode") and node.GetName() == "top 5%"
    assert node.GetSegmentation().GetNumberOfSegments() == 1
    mask = maskFromSegment(node, node.GetSegmentation().GetNthSegmentID(0), attribution)
    assert mask.sum() == math.ceil(0.05 * values.size)
    assert np.abs(values[mask]).min() > np.abs(values[~mask]).max()
    display = node.GetDisplayNode()
    assert display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    assert float(node.GetAttribute("MedXAI.TopFraction")) == 0.05
    assert float(node.GetAttribute("MedXAI.TopThreshold")) == np.abs(values[mask]).min()
    with pytest.raises(InputError, match="fraction"):
        segmentOutlineFromTopFraction(scene, attribution, 5, "percent, not fraction")
    zero = addVolumeNode(scene, np.zeros(IMAGE_SHAPE, np.float32), IMAGE_AFFINE, "zero")
    with pytest.raises(InputError, match="zero everywhere"):
        segmentOutlineFromTopFraction(scene, zero, 0.1, "nothing")
