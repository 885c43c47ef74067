"""What Slicer shows: a real slice view, rendered headless, draws the attribution over the image.

The slice view is slicer-core's ``vtkMRMLSliceLogic`` (reslicing and layer blending through the
display nodes) plus its displayable managers, in an off-screen VTK render window (mrmlTesting.py).
The tests assert on the captured pixels: red where relevance is positive, blue where negative, the
unaltered grey image where it is zero or below the threshold, and the top-k% outline. If this
machine cannot render at all, the tests fail with a message saying so (they never skip).
An example is written to /tmp/medxai_render.png for people to look at.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from mrmlTesting import addVolumeNode, gridAffine

from MedXAIBridge.display import applyAttributionDisplay, showInSliceViews
from MedXAIBridge.results import createAttributionNode
from MedXAIBridge.segments import segmentOutlineFromTopFraction
from MedXAIBridge.volumes import imageVolumeFromNode
from MedXAILib.attribution import Attribution

pytestmark = pytest.mark.mrml

SHAPE = (64, 64, 12)
AFFINE = gridAffine(spacing=(1.0, 1.0, 2.5), origin=(-40.0, -25.0, 60.0))  # anisotropic, off-centre
SLICE_K = 6
GREY = 100.0  # the image's background value, shown as grey level 100 with the window [0, 255]
HOT = (18, 44)  # (i, j) of the positive blob's centre
COLD = (46, 20)  # negative blob
PLATEAU = (slice(44, 60), slice(44, 60))  # weak positive relevance (0.04)
QUIET = (8, 8)  # zero relevance, plain background image
EXAMPLE = "/tmp/medxai_render.png"


def _blob(centre, sigma=4.0) -> np.ndarray:
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    plane = np.exp(-((i - centre[0]) ** 2 + (j - centre[1]) ** 2) / (2 * sigma**2))
    plane[plane < 1e-4] = 0.0
    return np.repeat(plane[:, :, np.newaxis], SHAPE[2], axis=2)


@pytest.fixture
def image(scene):
    values = np.full(SHAPE, GREY, np.float32)
    values[26:38, 26:38] = 180.0  # some anatomy: a bright square
    node = addVolumeNode(scene, values, AFFINE, "CT")
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevelMinMax(0.0, 255.0)
    return node


def _signedMap() -> np.ndarray:
    values = _blob(HOT) - 0.8 * _blob(COLD)
    values[PLATEAU] = 0.04
    return values.astype(np.float32)


def _ras(ij) -> np.ndarray:
    return (AFFINE @ [ij[0], ij[1], SLICE_K, 1.0])[:3]


def _pixel(view, pixels, ij) -> np.ndarray:
    """Median colour of the 3x3 view pixels around the RAS point of voxel (i, j, SLICE_K)."""
    row, col = view.pixelOf(_ras(ij))
    assert 1 <= row < pixels.shape[0] - 1 and 1 <= col < pixels.shape[1] - 1, "the point is outside the view"
    return np.median(pixels[row - 1 : row + 2, col - 1 : col + 2].reshape(-1, 3), axis=0).astype(float)


def _show(scene, view, image, attribution, **display):
    node = createAttributionNode(attribution, image)
    applyAttributionDisplay(node, **display)
    assert showInSliceViews(scene, image, node, 0.6) >= 1
    view.fitTo(float(_ras((0, 0))[2]))
    return node


def _assertGrey(colour, level=GREY, what="the image"):
    assert np.ptp(colour) <= 3 and abs(colour.mean() - level) <= 4, f"{what} should show plain grey {level}: {colour}"


def test_signed_attribution_is_red_blue_and_transparent_at_zero(scene, sliceView, image, tmp_path):
    volume = imageVolumeFromNode(image)
    attribution = Attribution(_signedMap()[np.newaxis], volume.affine, {"method": "integrated_gradients"})
    _show(scene, sliceView, image, attribution)

    pixels = sliceView.capture(tmp_path / "signed_overlay.png")
    shutil.copyfile(tmp_path / "signed_overlay.png", EXAMPLE)

    hot, cold, quiet, plateau = (_pixel(sliceView, pixels, ij) for ij in (HOT, COLD, QUIET, (52, 52)))
    assert hot[0] > hot[2] + 60 and hot[0] > hot[1] + 60, f"positive relevance should look red: {hot}"
    assert cold[2] > cold[0] + 40 and cold[2] > cold[1] + 20, f"negative relevance should look blue: {cold}"
    _assertGrey(quiet, what="zero relevance")
    assert plateau.mean() > GREY + 30, f"weak relevance is shown (a light, nearly neutral colour): {plateau}"
    bright = _pixel(sliceView, pixels, (32, 32))
    _assertGrey(bright, 180, "the bright square of the image (no relevance there)")


def test_threshold_hides_weak_relevance_in_the_view(scene, sliceView, image, tmp_path):
    volume = imageVolumeFromNode(image)
    signed = _signedMap()
    # A percentile whose |a| cut-off lies between the plateau (0.04) and the blobs' peaks.
    percentile = 100.0 * float(np.mean(np.abs(signed) <= 0.04)) + 0.5
    cutoff = float(np.percentile(np.abs(signed), percentile))
    assert 0.04 < cutoff < 0.5
    _show(scene, sliceView, image, Attribution(signed[np.newaxis], volume.affine, {}),
          thresholdPercentile=percentile)

    pixels = sliceView.capture(tmp_path / "thresholded.png")

    _assertGrey(_pixel(sliceView, pixels, (52, 52)), what="relevance below the threshold")
    hot, cold = _pixel(sliceView, pixels, HOT), _pixel(sliceView, pixels, COLD)
    assert hot[0] > hot[2] + 60 and cold[2] > cold[0] + 40


def test_non_negative_attribution_uses_the_sequential_colours(scene, sliceView, image, tmp_path):
    volume = imageVolumeFromNode(image)
    magnitude = np.abs(_signedMap())
    percentile = 100.0 * float(np.mean(magnitude <= 0.04)) + 0.5
    _show(scene, sliceView, image, Attribution(magnitude[np.newaxis], volume.affine, {}),
          thresholdPercentile=percentile)

    pixels = sliceView.capture(tmp_path / "sequential.png")

    hot = _pixel(sliceView, pixels, HOT)  # the map's maximum: the top of "inferno", pale yellow
    assert hot[0] > hot[2] + 40 and hot[1] > hot[2] + 20 and hot.mean() > GREY + 30, hot
    _assertGrey(_pixel(sliceView, pixels, QUIET), what="zero relevance")
    _assertGrey(_pixel(sliceView, pixels, (52, 52)), what="relevance below the display threshold")


def test_top_fraction_outline_is_drawn_around_the_hot_spot(scene, sliceView, image, tmp_path):
    volume = imageVolumeFromNode(image)
    attribution = Attribution(_signedMap()[np.newaxis], volume.affine, {})
    node = _show(scene, sliceView, image, attribution)
    segmentOutlineFromTopFraction(scene, node, 0.01, "top 1%")

    pixels = sliceView.capture(tmp_path / "outline.png")

    # Along the row through the hot spot: yellow outline pixels on both sides of the centre ...
    row, centre = sliceView.pixelOf(_ras(HOT))
    line = pixels[row].astype(float)
    yellow = np.flatnonzero((line[:, 0] > 150) & (line[:, 1] > 150) & (line[:, 2] < 100))
    assert yellow.size and yellow.min() < centre < yellow.max(), f"no outline around the hot spot (row {row})"
    # ... and none around the quiet background.
    _assertGrey(_pixel(sliceView, pixels, QUIET), what="the background, away from the outline")


def test_colour_legend_is_drawn_beside_the_view_with_the_map_colours(scene, sliceView, image, tmp_path):
    """The legend (Colors module's colour legend display node) is drawn at the right edge of the view
    where Slicer puts it, in the diverging colours, and only while the node is shown there."""
    from MedXAIBridge.display import DIVERGING_TABLE_NAME, showColorLegend

    volume = imageVolumeFromNode(image)
    node = _show(scene, sliceView, image, Attribution(_signedMap()[np.newaxis], volume.affine,
                                                      {"method": "saliency", "method_title": "Saliency"}))
    legend = showColorLegend(node)  # the one applyAttributionDisplay made
    assert legend.GetTitleText() == "Saliency" and legend.GetLabelFormat() == "%.3g"
    assert legend.GetPrimaryDisplayNode() is node.GetDisplayNode()
    assert node.GetDisplayNode().GetColorNode().GetName() == DIVERGING_TABLE_NAME
    with_legend = sliceView.capture(tmp_path / "legend.png").astype(int)
    shutil.copyfile(tmp_path / "legend.png", "/tmp/medxai_render_legend.png")
    showColorLegend(node, False)
    without = sliceView.capture().astype(int)

    changed = np.abs(with_legend - without).max(axis=2) > 30
    rows, cols = np.nonzero(changed)
    width = with_legend.shape[1]
    assert rows.size > 200, "the legend was not drawn"
    assert cols.min() > 0.6 * width, f"the legend should sit at the right edge (from column {cols.min()} of {width})"
    region = with_legend[changed]
    red = (region[:, 0] > 150) & (region[:, 2] < 90)  # the top of the bar: the table's warm end
    blue = (region[:, 2] > 150) & (region[:, 0] < 110)  # its bottom: the cold end
    white = region.min(axis=1) > 200  # title and labels
    assert red.sum() > 20 and blue.sum() > 20 and white.sum() > 20, (red.sum(), blue.sum(), white.sum())

    # A view that does not show the node has no legend, even with the legend switched on.
    sliceView.compositeNode.SetForegroundVolumeID(None)
    showColorLegend(node, True).Modified()
    shown = sliceView.capture()
    showColorLegend(node, False)
    assert np.array_equal(shown, sliceView.capture())


def test_showing_a_result_centres_views_on_a_newly_shown_input(scene, sliceView, image, tmp_path):
    """A view that did not show the input is fitted to it; one that did keeps the user's zoom."""
    from MedXAIBridge.display import applyAttributionDisplay
    from MedXAIBridge.results import createAttributionNode

    sliceView.logic.ResizeSliceNode(*sliceView.size)
    sliceView.sliceNode.SetFieldOfView(30.0, 30.0, 1.0)  # zoomed in far away from the image
    sliceView.sliceNode.JumpSliceByCentering(400.0, -300.0, 60.0)
    volume = imageVolumeFromNode(image)
    node = createAttributionNode(Attribution(_signedMap()[np.newaxis], volume.affine, {}), image)
    applyAttributionDisplay(node)
    assert showInSliceViews(scene, image, node, 0.6, [sliceView.logic]) == 1

    centre = (AFFINE @ [(SHAPE[0] - 1) / 2, (SHAPE[1] - 1) / 2, 0, 1.0])[:3]
    row, col = sliceView.pixelOf(centre)
    assert abs(row - sliceView.size[1] / 2) <= 2 and abs(col - sliceView.size[0] / 2) <= 2, (row, col)
    fov = sliceView.sliceNode.GetFieldOfView()
    assert min(fov[0], fov[1]) >= SHAPE[0] - 1, f"the whole input should fit the view: {fov}"
    pixels = sliceView.capture(tmp_path / "fitted.png")
    _assertGrey(_pixel(sliceView, pixels, QUIET), what="the input, now in view")

    sliceView.sliceNode.SetFieldOfView(20.0, 20.0, 1.0)  # the user zooms in; the next result keeps it
    showInSliceViews(scene, image, node, 0.6, [sliceView.logic])
    assert sliceView.sliceNode.GetFieldOfView()[0] == pytest.approx(20.0)
