"""What the Boundary section shows in a real slice view: saliency colours and the band's outlines in mm.

A disc-shaped structure of radius 12 mm lies on an anisotropic grid (0.6 mm voxels along J, 1 mm
along I), so a band measured in voxels instead of millimetres would be drawn at the wrong radius in
one of the two directions. ``showBoundaryOverlay`` puts the saliency layer over the image and
outlines the band (inner limit 3 mm inside the surface, outer limit 4 mm outside); a slice view of
slicer-core, rendered off screen (Testing/Bridge/mrmlTesting.py), is then sampled along rays from the
structure's centre: the inner band's colour must appear at 9 mm, the outer band's at 16 mm, in both
directions; positive saliency outside the surface is red, negative saliency inside it blue; away
from everything the image is plain grey. An example is written to /tmp/medxai_boundary_render.png.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

import runtime_paths

sys.path.insert(0, str(runtime_paths.ROOT / "Testing" / "Bridge"))
import mrmlTesting  # noqa: E402  (scene, volume and off-screen slice-view helpers; needs slicer-core)

from MedXAILib.attribution import Attribution  # noqa: E402
from MedXAIRuntime import boundaryPanel  # noqa: E402

pytestmark = pytest.mark.mrml

SHAPE = (64, 100, 8)
SPACING = (1.0, 0.6, 2.5)
AFFINE = mrmlTesting.gridAffine(spacing=SPACING, origin=(-30.0, -20.0, 40.0))
CENTRE_IJK = (32.0, 50.0)  # the disc's centre: 32 mm along I, 30 mm along J from the origin
RADIUS_MM, INNER_MM, OUTER_MM = 12.0, 3.0, 4.0
HOT_MM = 14.0  # the positive saliency blob, outside the surface along +I
COLD_MM = (-7.0, 7.0)  # the negative one, inside, between the rays sampled below (I, J offsets in mm)
SLICE_K = 4
GREY = 100.0
EXAMPLE = "/tmp/medxai_boundary_render.png"


def _distanceMm() -> np.ndarray:
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    d = np.hypot((i - CENTRE_IJK[0]) * SPACING[0], (j - CENTRE_IJK[1]) * SPACING[1])
    return np.repeat(d[:, :, np.newaxis], SHAPE[2], axis=2)


def _blob(iMm: float, jMm: float, sigmaMm: float = 2.0) -> np.ndarray:
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    d = np.hypot((i - CENTRE_IJK[0]) * SPACING[0] - iMm, (j - CENTRE_IJK[1]) * SPACING[1] - jMm)
    plane = np.exp(-(d**2) / (2 * sigmaMm**2))
    plane[plane < 1e-3] = 0.0
    return np.repeat(plane[:, :, np.newaxis], SHAPE[2], axis=2)


def _ras(offsetMm, direction) -> np.ndarray:
    """RAS of the point `offsetMm` from the disc's centre along unit IJK-axis `direction` (0 = I, 1 = J)."""
    ijk = np.array([CENTRE_IJK[0], CENTRE_IJK[1], SLICE_K, 1.0])
    ijk[direction] += offsetMm / SPACING[direction]
    return (AFFINE @ ijk)[:3]


def _colourAt(view, pixels, ras) -> np.ndarray:
    row, col = view.pixelOf(ras)
    assert 0 <= row < pixels.shape[0] and 0 <= col < pixels.shape[1], "the point is outside the view"
    return pixels[row, col].astype(float)


def _isInnerBand(c) -> bool:  # boundaryPanel._BAND_COLORS[0]: amber
    return c[0] > 180 and c[1] > 130 and c[2] < 100


def _isOuterBand(c) -> bool:  # boundaryPanel._BAND_COLORS[1]: cyan
    return c[2] > 160 and c[1] > 140 and c[0] < 100


@pytest.fixture
def scene():
    scene = mrmlTesting.newScene()
    yield scene
    scene.Clear(True)


@pytest.fixture
def view(scene):
    view = mrmlTesting.OffscreenSliceView(scene, size=(320, 320))
    yield view
    view.close()


def test_boundary_layer_shows_saliency_and_the_band_outlines_in_millimetres(scene, view, tmp_path):
    from MedXAIBridge import display, results, segments

    distance = _distanceMm()
    structure = distance <= RADIUS_MM
    image = np.where(structure, 160.0, GREY).astype(np.float32)
    inputNode = mrmlTesting.addVolumeNode(scene, image, AFFINE, "CT")
    inputNode.GetDisplayNode().SetAutoWindowLevel(False)
    inputNode.GetDisplayNode().SetWindowLevelMinMax(0.0, 255.0)
    segmentation = segments.segmentationNodeFromLabelMap(scene, structure.astype(np.uint8), inputNode, ["organ"],
                                                         "anatomy")
    segmentation.GetDisplayNode().SetVisibility(False)  # the user's segment; only the band outlines are drawn
    saliency = _blob(HOT_MM, 0.0) - 0.8 * _blob(*COLD_MM)  # signed, as a margin target's map is
    saliencyNode = results.createAttributionNode(
        Attribution(saliency.astype(np.float32)[np.newaxis], AFFINE, {"method": "saliency"}), inputNode)
    display.applyAttributionDisplay(saliencyNode)  # as every result node gets it when it is created
    p = boundaryPanel_parameters(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0))

    shown = boundaryPanel.showBoundaryOverlay(p, inputNode, saliencyNode, None)
    assert shown["band"] is not None and shown["views"] >= 1
    view.fitTo(float(_ras(0.0, 0)[2]))
    pixels = view.capture(tmp_path / "boundary.png")
    shutil.copyfile(tmp_path / "boundary.png", EXAMPLE)

    hot = _colourAt(view, pixels, _ras(HOT_MM, 0))
    assert hot[0] > hot[2] + 60 and hot[0] > hot[1] + 60, f"positive saliency should be red: {hot}"
    cold = _colourAt(view, pixels, (AFFINE @ [CENTRE_IJK[0] + COLD_MM[0] / SPACING[0],
                                              CENTRE_IJK[1] + COLD_MM[1] / SPACING[1], SLICE_K, 1.0])[:3])
    assert cold[2] > cold[0] + 40 and cold[2] > cold[1] + 20, f"negative saliency should be blue: {cold}"
    far = _colourAt(view, pixels, (AFFINE @ [3, 3, SLICE_K, 1.0])[:3])
    assert np.ptp(far) <= 3 and abs(far.mean() - GREY) <= 4, f"the image away from the structure: {far}"
    centre = _colourAt(view, pixels, _ras(0.0, 0))
    assert np.ptp(centre) <= 3 and abs(centre.mean() - 160) <= 4, f"the structure's inside, unmarked: {centre}"

    steps = np.arange(0.0, 20.0, 0.1)
    for direction, sign, what in ((0, -1, "along -I (1 mm voxels)"), (1, 1, "along +J (0.6 mm voxels)"),
                                  (1, -1, "along -J")):
        colours = [_colourAt(view, pixels, _ras(sign * d, direction)) for d in steps]
        inner = steps[[_isInnerBand(c) for c in colours]]
        outer = steps[[_isOuterBand(c) for c in colours]]
        assert inner.size and outer.size, f"no band outline {what}"
        # the inner band's outline marks its limit 3 mm inside the surface (and the surface itself);
        # the outer band's marks the surface and its limit 4 mm outside
        assert abs(inner.min() - (RADIUS_MM - INNER_MM)) <= 1.0, f"inner limit at {inner.min():.1f} mm {what}"
        assert inner.max() <= RADIUS_MM + 1.0, f"inner band drawn out to {inner.max():.1f} mm {what}"
        assert abs(outer.max() - (RADIUS_MM + OUTER_MM)) <= 1.0, f"outer limit at {outer.max():.1f} mm {what}"
        assert outer.min() >= RADIUS_MM - 1.0, f"outer band drawn in to {outer.min():.1f} mm {what}"


def boundaryPanel_parameters(segmentation, segmentId):
    from types import SimpleNamespace

    return SimpleNamespace(boundarySegmentation=segmentation, boundarySegmentId=segmentId, boundaryInnerMm=INNER_MM,
                           boundaryOuterMm=OUTER_MM, boundaryUncertaintyLevel=0.5, opacity=0.6)
