"""Helpers for the bridge tests: real MRML scenes from the slicer-core wheel, and a headless slice view.

Scenes are built the way Slicer builds its own: the default colour tables (``vtkMRMLColorLogic``) and
the default slice orientation presets. Volume nodes that serve as *inputs* are made with Slicer's
own helpers (``slicer.util.updateVolumeFromArray`` on a (K, J, I) array plus ``SetIJKToRASMatrix``),
never with the bridge, so round trips are checked against an independent path. None of these
helpers needs ``slicer.mrmlScene``, so the tests never set it.

The slice view (:class:`OffscreenSliceView`) is what Slicer shows, minus Qt: a ``vtkMRMLSliceLogic``
(which reslices and blends the background and foreground layers through their display nodes'
window/level, colour tables and thresholds), the slice displayable managers (segmentation outlines)
and an off-screen ``vtkRenderWindow``; the blended slice image is drawn by an image actor, as CTK's
``vtkLightBoxRendererManager`` does in Slicer (and trame-slicer's ``SliceRendererManager`` does
headless). VTK picks an off-screen OpenGL back end by itself (EGL or OSMesa without an X display).

(A uniquely named module rather than ``conftest``: Testing/Lib's tests import from their own conftest.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "MedXAI"  # Slicer puts the module folder on sys.path: MedXAIBridge is top level there
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

slicer = pytest.importorskip("slicer", reason="the bridge tests need slicer-core (pip install -e '.[test]')")
if not hasattr(slicer, "vtkMRMLScene"):
    raise RuntimeError(
        "the 'slicer' package here is not slicer-core (no slicer.vtkMRMLScene); another PyPI package named "
        "'slicer' (e.g. pulled in by shap) has overwritten it: reinstall slicer-core"
    )
import vtk  # noqa: E402
from slicer.util import arrayFromVolume, updateVolumeFromArray, vtkMatrixFromArray  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Geometry and nodes


def obliqueAffine(spacing=(0.8, 1.3, 2.5), origin=(-97.25, 41.5, 312.75), angles=(20.0, -12.0, 31.0)) -> np.ndarray:
    """A rotated (about three axes), anisotropic IJK -> RAS affine with a far-off origin."""
    ax, ay, az = np.deg2rad(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def gridAffine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def addVolumeNode(scene, ijk: np.ndarray, affine: np.ndarray, name: str = "volume",
                  nodeClass: str = "vtkMRMLScalarVolumeNode"):
    """A volume node made the Slicer way: (K, J, I[, C]) voxels and the IJK -> RAS matrix."""
    ijk = np.asarray(ijk)
    kji = np.transpose(ijk, (2, 1, 0) if ijk.ndim == 3 else (2, 1, 0, 3))
    node = scene.AddNewNodeByClass(nodeClass, name)
    node.SetIJKToRASMatrix(vtkMatrixFromArray(affine))
    updateVolumeFromArray(node, np.ascontiguousarray(kji))
    node.CreateDefaultDisplayNodes()
    return node


def ijkArray(node) -> np.ndarray:
    """A node's voxels as an (I, J, K[, C]) copy, read with Slicer's own helper."""
    kji = arrayFromVolume(node)
    return np.array(np.transpose(kji, (2, 1, 0) if kji.ndim == 3 else (2, 1, 0, 3)))


def ijkToRasOf(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def attributesOf(node) -> dict:
    return {name: node.GetAttribute(name) for name in (node.GetAttributeNames() or ())}


def newScene():
    scene = slicer.vtkMRMLScene()
    colorLogic = slicer.vtkMRMLColorLogic()
    colorLogic.SetMRMLScene(scene)  # adds Slicer's default colour nodes (Grey, Labels, fMRI, ...)
    # Slicer's Colors module (vtkSlicerColorLogic::RegisterNodes) registers the colour legend node class;
    # its logic cannot run here (it looks for the application's colour files), so register the class alone.
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    scene._medxaiKeepAlive = colorLogic  # the logic must live as long as the scene
    return scene


def readBundle(scene, path, cacheFolder):
    """Load the scene bundle `path` as Slicer does (ReadFromMRB, importing into the existing scene)."""
    cacheFolder = Path(cacheFolder)
    cache = slicer.vtkCacheManager()
    (cacheFolder / "cache").mkdir(parents=True, exist_ok=True)
    cache.SetRemoteCacheDirectory(str(cacheFolder / "cache"))
    manager = slicer.vtkDataIOManager()
    manager.SetCacheManager(cache)
    scene.SetDataIOManager(manager)
    scene.SetCacheManager(cache)
    messages = slicer.vtkMRMLMessageCollection()
    ok = scene.ReadFromMRB(str(path), False, messages)
    assert ok, f"Slicer could not read {Path(path).name}: {messages.GetAllMessagesAsString()}"
    scene._medxaiKeepAlive = (scene._medxaiKeepAlive, manager, cache)


# ------------------------------------------------------------------------------------------------
# A headless slice view


class OffscreenSliceView:
    """One slice view ("Red", axial by default) rendered off screen, as Slicer would show it."""

    def __init__(self, scene, size=(256, 256), orientation: str = "Axial", name: str = "Red"):
        self.scene = scene
        self.size = size
        self.appLogic = slicer.vtkMRMLApplicationLogic()
        self.appLogic.SetMRMLScene(scene)
        self.sliceLogics = vtk.vtkCollection()
        self.appLogic.SetSliceLogics(self.sliceLogics)

        self.renderWindow = vtk.vtkRenderWindow()
        self.renderWindow.SetOffScreenRendering(1)
        self.renderWindow.SetMultiSamples(0)
        self.renderWindow.SetSize(*size)
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.renderWindow.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.renderWindow)

        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(self.appLogic)
        self.logic.SetMRMLScene(scene)
        self.sliceLogics.AddItem(self.logic)
        self.sliceNode = self.logic.AddSliceNode(name)
        self.sliceNode.SetOrientation(orientation)

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(self.appLogic)
        for manager in ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLColorLegendDisplayableManager"):
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)
        self.managers.SetMRMLDisplayableNode(self.sliceNode)

        # The blended slice image (all layers) drawn as a background image actor: 8-bit RGBA in.
        self.imageMapper = vtk.vtkImageMapper()
        self.imageMapper.SetColorWindow(255)
        self.imageMapper.SetColorLevel(127.5)
        self.imageActor = vtk.vtkActor2D()
        self.imageActor.SetMapper(self.imageMapper)
        self.imageActor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.imageActor)

    @property
    def compositeNode(self):
        return self.logic.GetSliceCompositeNode()

    def fitTo(self, sliceOffsetMm: float) -> None:
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()
        self.logic.SetSliceOffset(sliceOffsetMm)

    def capture(self, path=None) -> np.ndarray:
        """Render and return the view as an (rows from the bottom, columns, RGB) uint8 array."""
        self.imageMapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.renderWindow.Render()
        if not self.renderWindow.SupportsOpenGL():
            pytest.fail(
                "VTK cannot render off screen here (no usable OpenGL: neither EGL nor OSMesa nor X). "
                "Install an OpenGL driver (e.g. libegl1 / libosmesa6, Mesa) so the slice view can be drawn."
            )
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.renderWindow)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        if path is not None:
            writer = vtk.vtkPNGWriter()
            writer.SetFileName(str(path))
            writer.SetInputConnection(grab.GetOutputPort())
            writer.Write()
        from vtk.util.numpy_support import vtk_to_numpy

        width, height, _ = grab.GetOutput().GetDimensions()
        return vtk_to_numpy(grab.GetOutput().GetPointData().GetScalars()).reshape(height, width, -1)[..., :3].copy()

    def pixelOf(self, ras) -> tuple[int, int]:
        """(row from the bottom, column) of the view pixel showing RAS point `ras`."""
        xyToRas = np.array([[self.sliceNode.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
        x, y, _, _ = np.linalg.inv(xyToRas) @ np.array([*ras, 1.0])
        return int(round(y)), int(round(x))

    def close(self) -> None:
        self.managers.SetMRMLDisplayableNode(None)
        self.renderWindow.Finalize()
