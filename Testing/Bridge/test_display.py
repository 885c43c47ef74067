"""Display of attribution nodes: colour tables, symmetric windows, thresholds, opacity, slice layers."""

from __future__ import annotations

import numpy as np
import pytest
from mrmlTesting import addVolumeNode, attributesOf, gridAffine, ijkArray

from MedXAIBridge.display import (
    DIVERGING_TABLE_NAME,
    SEQUENTIAL_TABLE_NAME,
    applyAttributionDisplay,
    showInSliceViews,
)
from MedXAILib.errors import InputError

pytestmark = pytest.mark.mrml

SHAPE = (20, 16, 10)


@pytest.fixture
def signedMap():
    values = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    values[3, 4, 5] = -7.5  # max |a| is negative: the window must still be symmetric
    values[4, 4, 5] = 6.0
    return values


@pytest.fixture
def signedNode(scene, signedMap):
    return addVolumeNode(scene, signedMap, gridAffine(), "signed")


@pytest.fixture
def positiveNode(scene, signedMap):
    return addVolumeNode(scene, np.abs(signedMap), gridAffine(), "positive")


def _rgba(colorNode) -> np.ndarray:
    table = colorNode.GetLookupTable()
    return np.array([table.GetTableValue(i) for i in range(table.GetNumberOfTableValues())])


def _tableValues(display, colorNode) -> np.ndarray:
    """The map value at the centre of each table entry, for the display's window."""
    lo, hi = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    n = colorNode.GetLookupTable().GetNumberOfTableValues()
    return lo + (np.arange(n) + 0.5) / n * (hi - lo)


def test_signed_map_gets_the_shared_diverging_table_and_a_symmetric_window(scene, signedNode, signedMap):
    before = ijkArray(signedNode)
    display = applyAttributionDisplay(signedNode)

    table = scene.GetNodeByID(display.GetColorNodeID())
    assert table.GetName() == DIVERGING_TABLE_NAME and table.IsA("vtkMRMLColorTableNode")
    assert display.GetWindowLevelMin() == pytest.approx(-7.5) and display.GetWindowLevelMax() == pytest.approx(7.5)
    assert not display.GetAutoWindowLevel() and not display.GetApplyThreshold()
    rgba = _rgba(table)
    assert rgba.shape == (256, 4)
    assert rgba[0, 2] > rgba[0, 0] + 0.3 and rgba[-1, 0] > rgba[-1, 2] + 0.3  # blue ... red
    assert np.all(rgba[127:129, 3] == 0) and np.all(np.delete(rgba[:, 3], [127, 128]) == 1)  # zero: transparent
    np.testing.assert_array_equal(ijkArray(signedNode), before)  # display never changes voxels

    other = addVolumeNode(scene, signedMap * 2, gridAffine(), "other")
    assert applyAttributionDisplay(other).GetColorNodeID() == table.GetID()  # created once per scene
    assert applyAttributionDisplay(other, colormap="diverging").GetColorNodeID() == table.GetID()


def test_non_negative_map_gets_the_sequential_table_from_zero(scene, positiveNode):
    display = applyAttributionDisplay(positiveNode)
    table = scene.GetNodeByID(display.GetColorNodeID())
    assert table.GetName() == SEQUENTIAL_TABLE_NAME
    assert display.GetWindowLevelMin() == 0.0 and display.GetWindowLevelMax() == pytest.approx(7.5)
    rgba = _rgba(table)
    assert rgba[0, 3] == 0 and np.all(rgba[1:, 3] == 1)
    assert rgba[-1, :3].sum() > 2.0 and rgba[1, :3].sum() < 0.2  # dark to bright (inferno)


def test_asymmetric_window(scene, signedNode, signedMap):
    display = applyAttributionDisplay(signedNode, symmetricWindow=False)
    assert display.GetWindowLevelMin() == pytest.approx(float(signedMap.min()))
    assert display.GetWindowLevelMax() == pytest.approx(float(signedMap.max()))
    # The neutral colour is not at the table centre any more: a per-node table puts the transparent
    # band where the map is zero.
    table = scene.GetNodeByID(display.GetColorNodeID())
    assert table.GetName() == "signed colours" and table.GetHideFromEditors()
    values = _tableValues(display, table)
    alpha = _rgba(table)[:, 3]
    assert alpha[np.argmin(np.abs(values))] == 0 and np.all(alpha[np.abs(values) > 0.1] == 1)


def test_signed_threshold_hides_a_band_around_zero_with_the_table_alpha(scene, signedNode, signedMap):
    display = applyAttributionDisplay(signedNode, thresholdPercentile=80.0)

    cutoff = float(np.percentile(np.abs(signedMap), 80.0))
    assert float(signedNode.GetAttribute("MedXAI.Display.Threshold")) == pytest.approx(cutoff)
    table = scene.GetNodeByID(display.GetColorNodeID())
    assert table.GetName() != DIVERGING_TABLE_NAME
    values = _tableValues(display, table)
    alpha = _rgba(table)[:, 3]
    np.testing.assert_array_equal(alpha == 0, np.abs(values) < cutoff)
    assert not display.GetApplyThreshold()
    assert _rgba(scene.GetFirstNodeByName(DIVERGING_TABLE_NAME) or table)[0, 3] == 1  # shared table untouched

    # Re-applying reuses the node's table; going back to no threshold drops it.
    assert applyAttributionDisplay(signedNode, thresholdPercentile=50.0).GetColorNodeID() == table.GetID()
    tableId = table.GetID()
    display = applyAttributionDisplay(signedNode)
    assert scene.GetNodeByID(display.GetColorNodeID()).GetName() == DIVERGING_TABLE_NAME
    assert scene.GetNodeByID(tableId) is None
    assert "MedXAI.Display.ColorNodeID" not in attributesOf(signedNode)


def test_positive_threshold_uses_the_display_node_threshold(scene, positiveNode, signedMap):
    display = applyAttributionDisplay(positiveNode, thresholdPercentile=90.0)
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(float(np.percentile(np.abs(signedMap), 90.0)))
    assert display.GetUpperThreshold() >= 7.5
    assert scene.GetNodeByID(display.GetColorNodeID()).GetName() == SEQUENTIAL_TABLE_NAME


def test_window_percentile_saturates_extreme_voxels_and_keeps_the_band_around_zero(scene, signedNode, signedMap):
    before = ijkArray(signedNode)
    display = applyAttributionDisplay(signedNode, windowPercentile=99.0, thresholdPercentile=50.0)
    m = float(np.percentile(np.abs(signedMap), 99.0))
    assert m < 6.0  # below the two extreme voxels, which now saturate
    assert display.GetWindowLevelMin() == pytest.approx(-m) and display.GetWindowLevelMax() == pytest.approx(m)
    table = scene.GetNodeByID(display.GetColorNodeID())
    values, alpha = _tableValues(display, table), _rgba(table)[:, 3]
    np.testing.assert_array_equal(alpha == 0, np.abs(values) < float(np.percentile(np.abs(signedMap), 50.0)))
    np.testing.assert_array_equal(ijkArray(signedNode), before)
    assert applyAttributionDisplay(signedNode).GetWindowLevelMax() == pytest.approx(7.5)  # 100: max |a|
    with pytest.raises(InputError, match="window percentile"):
        applyAttributionDisplay(signedNode, windowPercentile=0.0)


def test_colour_node_id_and_errors(scene, signedNode):
    display = applyAttributionDisplay(signedNode, colormap="vtkMRMLColorTableNodefMRI")
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodefMRI"
    display = applyAttributionDisplay(signedNode, colormap="vtkMRMLColorTableNodefMRI", thresholdPercentile=60.0)
    derived = scene.GetNodeByID(display.GetColorNodeID())
    assert derived.GetID() != "vtkMRMLColorTableNodefMRI" and _rgba(derived)[0, 3] == 1
    assert applyAttributionDisplay(signedNode, colormap="sequential").GetColorNodeID() == \
        scene.GetFirstNodeByName(SEQUENTIAL_TABLE_NAME).GetID()
    with pytest.raises(InputError, match="unknown colour map"):
        applyAttributionDisplay(signedNode, colormap="jet")
    with pytest.raises(InputError, match="unknown colour map"):
        applyAttributionDisplay(signedNode, colormap=signedNode.GetID())  # not a colour node
    with pytest.raises(InputError, match="opacity"):
        applyAttributionDisplay(signedNode, opacity=1.5)
    with pytest.raises(InputError, match="percentile"):
        applyAttributionDisplay(signedNode, thresholdPercentile=100)


def test_opacity_and_slice_layers(scene, sliceView, signedNode):
    image = addVolumeNode(scene, np.zeros(SHAPE, np.float32), gridAffine(), "image")
    assert showInSliceViews(scene, image, signedNode, 0.4) == 1
    composite = sliceView.compositeNode
    assert composite.GetBackgroundVolumeID() == image.GetID()
    assert composite.GetForegroundVolumeID() == signedNode.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)

    display = applyAttributionDisplay(signedNode, opacity=0.7)
    assert display.GetOpacity() == pytest.approx(0.7)
    assert composite.GetForegroundOpacity() == pytest.approx(0.7)  # views showing it follow

    assert showInSliceViews(scene, None, None, 0.2) == 1  # None keeps the layers
    assert composite.GetBackgroundVolumeID() == image.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.2)


def test_legend_is_made_once_and_skipped_in_a_bare_scene(scene, signedNode, signedMap):
    """Slicer's scenes can hold colour legends (the Colors module registers the class); a bare scene in a
    script cannot: the display still works there, and asking for a legend explicitly says why not."""
    import slicer

    from MedXAIBridge.display import showColorLegend

    applyAttributionDisplay(signedNode)
    applyAttributionDisplay(signedNode, opacity=0.3)
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 1
    assert showColorLegend(signedNode, False).GetVisibility() == 0
    applyAttributionDisplay(signedNode, colorLegend=False)
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 1

    bare = slicer.vtkMRMLScene()
    node = addVolumeNode(bare, signedMap, gridAffine(), "signed")
    applyAttributionDisplay(node)
    assert bare.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 0
    with pytest.raises(InputError, match="colour legend node class"):
        showColorLegend(node)
    bare.Clear(True)
