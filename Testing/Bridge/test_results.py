"""Attribution result nodes: geometry, values, provenance attributes, subject hierarchy, inputs untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mrmlTesting import addVolumeNode, attributesOf, ijkArray, ijkToRasOf, obliqueAffine

import slicer
import vtk
from MedXAIBridge.results import attributionProvenance, createAttributionNode
from MedXAIBridge.volumes import imageVolumeFromNode
from MedXAILib.attribution import PROVENANCE_KEY, Attribution
from MedXAILib.errors import GeometryError, InputError

pytestmark = pytest.mark.mrml

SHAPE = (12, 10, 8)
PROVENANCE = {
    "method": "integrated_gradients",
    "method_title": "Integrated Gradients",
    "parameters": {"steps": 32, "baseline": "zeros"},
    "target": {"class_index": 1, "region": "predicted", "score": "logit", "reduction": "sum", "region_voxels": 40},
    "target_name": "tumour",
    "model": {"id": "tiny-unet", "sha256": "ab" * 32},
    "seed": 0,
    "device": "cpu",
    "created": "2026-01-02T03:04:05+00:00",
}


@pytest.fixture
def image(scene):
    node = addVolumeNode(scene, np.random.default_rng(0).normal(size=SHAPE).astype(np.float32), obliqueAffine(), "CT")
    node.SetAttribute("DICOM.Modality", "CT")
    return node


@pytest.fixture
def attribution(image):
    volume = imageVolumeFromNode(image)
    array = np.random.default_rng(1).normal(size=(2, *SHAPE)).astype(np.float32)  # two input channels
    return Attribution(array, volume.affine, dict(PROVENANCE))


def _snapshot(node):
    return (ijkArray(node).copy(), ijkToRasOf(node), attributesOf(node), node.GetName(), node.GetMTime(),
            node.GetImageData().GetMTime(), node.GetParentTransformNode())


def test_result_node_has_the_input_geometry_and_the_summed_map(image, attribution):
    node = createAttributionNode(attribution, image)

    assert node.IsA("vtkMRMLScalarVolumeNode") and node is not image and node.GetScene() is image.GetScene()
    assert node.GetName() == "CT · Integrated Gradients · tumour (predicted)"
    np.testing.assert_array_equal(ijkToRasOf(node), ijkToRasOf(image))
    np.testing.assert_allclose(ijkArray(node), attribution.summed, rtol=0, atol=0)
    assert node.GetImageData().GetScalarType() == vtk.VTK_FLOAT
    assert createAttributionNode(attribution, image, name="mine").GetName() == "mine"


def test_provenance_and_readable_attributes(image, attribution):
    node = createAttributionNode(attribution, image)

    assert json.loads(node.GetAttribute(PROVENANCE_KEY)) == PROVENANCE
    assert attributionProvenance(node) == PROVENANCE
    assert node.GetAttribute("MedXAI.Method") == "integrated_gradients"
    assert node.GetAttribute("MedXAI.MethodTitle") == "Integrated Gradients"
    assert node.GetAttribute("MedXAI.Target") == "tumour (predicted)"
    assert node.GetAttribute("MedXAI.Model") == "tiny-unet"
    assert node.GetAttribute("MedXAI.Created") == PROVENANCE["created"]
    assert node.GetAttribute("MedXAI.InputVolumeID") == image.GetID()
    assert node.GetAttribute("MedXAI.Result") == "attribution"
    assert node.GetNodeReference("MedXAI.InputVolume") is image
    assert attributionProvenance(image) == {}
    broken = createAttributionNode(attribution, image)
    broken.SetAttribute(PROVENANCE_KEY, "{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        attributionProvenance(broken)


def test_default_name_without_a_target_name(scene):
    provenance = {"method": "saliency", "target": {"class_index": 3, "region": "class"}}
    image = addVolumeNode(scene, np.zeros(SHAPE, np.float32), obliqueAffine(), "MR")
    node = createAttributionNode(Attribution(np.zeros((1, *SHAPE), np.float32), obliqueAffine(), provenance), image)
    assert node.GetName() == "MR · saliency · class 3"


def test_input_node_is_not_modified(image, attribution):
    before = _snapshot(image)
    node = createAttributionNode(attribution, image)
    after = _snapshot(image)

    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert after[2:] == before[2:]
    assert not image.GetNodeReferenceID("MedXAI.InputVolume")
    assert node.GetID() != image.GetID()


def test_result_goes_into_a_medxai_folder_beside_the_input(scene, image, attribution):
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "CT study")
    imageItem = sh.CreateItem(study, image)

    first = createAttributionNode(attribution, image)
    second = createAttributionNode(attribution, image)

    folder = sh.GetItemParent(sh.GetItemByDataNode(first))
    assert sh.GetItemName(folder) == "MedXAI" and sh.GetItemLevel(folder) == "Folder"
    assert sh.GetItemParent(folder) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(second)) == folder  # one folder, reused
    assert sh.GetItemParent(imageItem) == study  # the input stays where it was


def test_without_subject_hierarchy_items_the_folder_is_under_the_scene(scene, image, attribution):
    node = createAttributionNode(attribution, image)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = sh.GetItemParent(sh.GetItemByDataNode(node))
    assert sh.GetItemName(folder) == "MedXAI" and sh.GetItemParent(folder) == sh.GetSceneItemID()


def test_result_follows_the_input_parent_transform(scene, image, attribution):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    image.SetAndObserveTransformNodeID(transform.GetID())
    assert createAttributionNode(attribution, image).GetParentTransformNode() is transform


def test_attribution_from_another_grid_is_refused(scene, image, attribution):
    with pytest.raises(GeometryError, match="shape"):
        createAttributionNode(Attribution(attribution.array[:, :-1], attribution.affine, {}), image)
    moved = attribution.affine.copy()
    moved[0, 3] += 5.0
    with pytest.raises(GeometryError, match="geometry differs"):
        createAttributionNode(Attribution(attribution.array, moved, {}), image)
    with pytest.raises(InputError, match="not in a scene"):
        createAttributionNode(attribution, _detached(image))


def _detached(image):
    node = slicer.vtkMRMLScalarVolumeNode()
    node.Copy(image)
    node.SetAndObserveImageData(image.GetImageData())
    return node
