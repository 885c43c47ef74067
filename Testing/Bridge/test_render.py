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
