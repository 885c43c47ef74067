"""Nodes made by MedXAI are freed with the scene: nothing keeps a reference the scene does not own.

Factory methods (``CreateNodeByClass``, ``GetNodesByClass``) hand the caller a reference it must
release (MedXAIBridge/nodes.py). A node is watched through ``vtk.vtkWeakReference`` (a C++ weak
pointer: it reads None once the object is deleted), every Python reference is dropped, the scene is
cleared as Slicer's Close Scene does, and the object must be gone.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import vtk
from mrmlTesting import addVolumeNode, gridAffine, newScene

from MedXAIBridge import nodes
from MedXAIBridge.display import applyAttributionDisplay, showInSliceViews
from MedXAIBridge.results import createAttributionNode
from MedXAIBridge.volumes import imageVolumeFromNode, volumeNodeFromImageVolume
from MedXAILib.attribution import Attribution
from MedXAILib.volume import ImageVolume

pytestmark = pytest.mark.mrml

SHAPE = (24, 20, 10)
AFFINE = gridAffine(spacing=(1.5, 1.0, 2.5), origin=(-10.0, 5.0, 20.0))


def _weak(obj) -> vtk.vtkWeakReference:
    reference = vtk.vtkWeakReference()
    reference.Set(obj)
    return reference


def _apply(scene, image, seed: int):
    """What one Apply leaves in the scene: the result node, its display, colour tables, legend, layers."""
    values = np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)
    node = createAttributionNode(Attribution(values[np.newaxis], imageVolumeFromNode(image).affine,
                                             {"method": "saliency"}), image)
    applyAttributionDisplay(node, thresholdPercentile=50.0)  # a per-node colour table too
    showInSliceViews(scene, image, node, 0.5)
    return node


def test_clear_scene_frees_every_result_of_two_applies():
    scene = newScene()
    scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # a slice view's layers
    image = addVolumeNode(scene, np.zeros(SHAPE, np.float32), AFFINE, "CT")
    first, second = _apply(scene, image, 0), _apply(scene, image, 1)
    watched = {"first result": first, "second result": second, "its voxels": second.GetImageData(),
               "its display": second.GetDisplayNode(), "a colour table": second.GetDisplayNode().GetColorNode()}
    weak = {name: _weak(obj) for name, obj in watched.items()}
    assert all(w.Get() is not None for w in weak.values())
    del first, second, watched, image
    scene.Clear(False)  # File > Close Scene
    gc.collect()
    alive = [name for name, w in weak.items() if w.Get() is not None]
    assert alive == [], f"still alive after Clear Scene: {alive}"


def test_a_result_that_is_deleted_is_freed():
    scene = newScene()
    image = addVolumeNode(scene, np.zeros(SHAPE, np.float32), AFFINE, "CT")
    node = _apply(scene, image, 2)
    weak = _weak(node)
    scene.RemoveNode(node)
    del node
    gc.collect()
    assert weak.Get() is None


def test_volume_nodes_made_by_the_bridge_are_freed_including_the_unused_probe():
    scene = newScene()
    volume = volumeNodeFromImageVolume(scene, ImageVolume(np.zeros((2, *SHAPE), np.float32), AFFINE), "two channels")
    assert volume.IsA("vtkMRMLVectorVolumeNode")
    weak = _weak(volume)
    del volume
    scene.Clear(False)
    gc.collect()
    assert weak.Get() is None


def test_the_factories_hand_over_their_reference():
    """The helpers leave exactly Python's reference (plus the scene's once added)."""
    scene = newScene()
    node = nodes.createNode(scene, "vtkMRMLScalarVolumeNode")
    assert node.GetReferenceCount() == 1  # Python's only
    scene.AddNode(node)
    inScene = node.GetReferenceCount()
    listed = nodes.nodesByClass(scene, "vtkMRMLScalarVolumeNode")
    assert listed == [node] and node.GetReferenceCount() == inScene  # no collection keeps it
    assert nodes.createNode(scene, "vtkMRMLNoSuchNode") is None


def test_the_check_can_fail_a_factory_without_unregister_leaks():
    """The same measurement flags the raw factory call (the leak the helpers remove)."""
    scene = newScene()
    leaked = scene.CreateNodeByClass("vtkMRMLScalarVolumeNode")
    scene.AddNode(leaked)
    weak = _weak(leaked)
    del leaked
    scene.Clear(False)
    gc.collect()
    assert weak.Get() is not None  # the factory's reference was never released
    weak.Get().UnRegister(None)  # release it so this test does not leak
