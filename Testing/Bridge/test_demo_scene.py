"""Scenes written without Slicer (MedXAILib.report.mrb) open in Slicer's own MRML code as intended.

A ``.mrb`` is read exactly as 3D Slicer reads one: ``vtkMRMLScene.ReadFromMRB`` (unzip with Slicer's
archive code, then ``Import`` of the ``.mrml``) into a scene that already has slice views, as
Slicer's has. Then:

- the volume nodes exist with their image data and the geometry of the NRRD files (compared with
  ``MedXAILib.io.read_image`` of the same files), on an oblique, anisotropic grid;
- attribution display nodes use the ``MedXAI Diverging`` colour table with a symmetric window, and
  the provenance survives as a node attribute;
- the Red, Yellow and Green slice composite nodes show the image as background and the attribution
  as foreground with opacity 0.5; the slice planes pass through the focus point;
- the segmentation node holds the named segments;
- a rendered slice view (slicer-core's slice logic, off screen) shows the attribution's colours:
  red at the positive hot spot, blue at the negative one, plain grey where the map is zero (for
  the demo's scene: reddish relevance within 15 mm of the lesion centre).

The second test does the same with the demo's own ``scene.mrb`` (the small demo run of the
``small_demo`` fixture, made once per session). Example views are written to
/tmp/medxai_demo_scene*.png for people to look at.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
from mrmlTesting import attributesOf, ijkArray, ijkToRasOf, obliqueAffine, readBundle

from MedXAIBridge.nodes import nodesByClass

from MedXAILib.attribution import PROVENANCE_KEY
from MedXAILib.io import read_image
from MedXAILib.report.mrb import SceneSegmentation, SceneVolume, table_name, write_mrb
from MedXAILib.volume import ImageVolume

pytestmark = pytest.mark.mrml

SHAPE = (48, 40, 16)
AFFINE = obliqueAffine(spacing=(1.5, 1.2, 3.0), origin=(-30.0, 12.0, -410.0), angles=(0.0, 0.0, 25.0))
HOT, COLD, QUIET = (14, 14, 8), (34, 26, 8), (24, 34, 8)
EXAMPLE = "/tmp/medxai_demo_scene.png"


def _nodes(scene, cls):
    return nodesByClass(scene, cls)


def _byName(scene, name):
    found = [n for n in _nodes(scene, "vtkMRMLScalarVolumeNode") if n.GetName() == name]
    assert len(found) == 1, f"expected one volume node named {name!r}, found {len(found)}"
    return found[0]


def _volumeFromBundle(path, member_suffix, tmp_path):
    with zipfile.ZipFile(path) as archive:
        member = next(n for n in archive.namelist() if n.endswith(member_suffix))
        archive.extract(member, tmp_path / "unzipped")
    return read_image(tmp_path / "unzipped" / member)


def _checkVolume(node, expected: ImageVolume, fileVolume: ImageVolume):
    assert node.GetImageData() is not None, f"{node.GetName()}: no image data was loaded"
    assert tuple(node.GetImageData().GetDimensions()) == expected.shape
    assert np.allclose(ijkToRasOf(node), fileVolume.affine, atol=1e-4)
    assert np.allclose(ijkToRasOf(node), expected.affine, atol=1e-4)
    assert np.allclose(ijkArray(node), expected.array[0], atol=1e-5)


def _checkLayers(scene, background, foreground, opacity=0.5):
    composites = {c.GetLayoutName(): c for c in _nodes(scene, "vtkMRMLSliceCompositeNode")}
    assert {"Red", "Yellow", "Green"} <= set(composites)
    for layout in ("Red", "Yellow", "Green"):
        composite = composites[layout]
        assert composite.GetBackgroundVolumeID() == background.GetID(), layout
        assert composite.GetForegroundVolumeID() == foreground.GetID(), layout
        assert composite.GetForegroundOpacity() == pytest.approx(opacity), layout


def _checkDiverging(node, m, hidden=0.1):
    display = node.GetDisplayNode()
    colours = display.GetColorNode()
    assert colours.GetName() == table_name(hidden) and colours.GetAttribute("MedXAI.ColorTable") == "diverging-band"
    assert colours.GetNumberOfColors() == 256
    lookup = colours.GetLookupTable()
    alpha = [lookup.GetTableValue(i)[3] for i in range(256)]  # entry i shows values near (i + 0.5) / 128 - 1 of m
    assert alpha[127] == alpha[128] == 0.0 and alpha[140] == 0.0, "weak relevance (< 10 % of m) is hidden"
    assert alpha[0] == alpha[255] == alpha[100] == alpha[160] == 1.0, "stronger relevance is shown"
    assert lookup.GetTableValue(255)[0] > 0.6 > lookup.GetTableValue(255)[2], "positive end: red"
    assert not display.GetAutoWindowLevel()
    assert display.GetWindowLevelMin() == pytest.approx(-m, rel=1e-5)
    assert display.GetWindowLevelMax() == pytest.approx(m, rel=1e-5)


def _segmentNames(scene):
    (node,) = _nodes(scene, "vtkMRMLSegmentationNode")
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def _render(view, path):
    """Render the Red view as the scene set it up (plane, field of view, layers)."""
    view.logic.ResizeSliceNode(*view.size)
    return view.capture(path)


def _colourAt(view, pixels, ras):
    """Median colour of the 3x3 view pixels around RAS point `ras`."""
    row, col = view.pixelOf(ras)
    assert 1 <= row < pixels.shape[0] - 1 and 1 <= col < pixels.shape[1] - 1, "the point is outside the view"
    return np.median(pixels[row - 1 : row + 2, col - 1 : col + 2].reshape(-1, 3), axis=0).astype(float)


def _ras(ijk):
    return (AFFINE @ np.array([*ijk, 1.0]))[:3]


def test_bundle_opens_with_geometry_colours_layers_and_segments(scene, sliceView, tmp_path):
    ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SHAPE], indexing="ij")
    ct = np.where(((ii - 24) / 22) ** 2 + ((jj - 20) / 18) ** 2 <= 1, 60.0, -1000.0).astype(np.float32)
    def blob(c):
        return np.exp(-((ii - c[0]) ** 2 + (jj - c[1]) ** 2 + ((kk - c[2]) * 2) ** 2) / 10.0)

    relevance = (blob(HOT) - 0.8 * blob(COLD)).astype(np.float32)
    relevance[np.abs(relevance) < 1e-3] = 0.0
    labels = np.zeros(SHAPE, np.uint8)
    labels[ct > 0] = 1
    labels[(ii - HOT[0]) ** 2 + (jj - HOT[1]) ** 2 <= 9] = 7
    image = ImageVolume(ct[None], AFFINE)
    attribution = ImageVolume(relevance[None], AFFINE)
    provenance = json.dumps({"method": "integrated_gradients", "note": "a;b:c % 100"})
    path = write_mrb(tmp_path / "scene.mrb", [
        SceneVolume("CT", image, (-160.0, 240.0)),
        SceneVolume("relevance", attribution, (-1.0, 1.0), "diverging", {PROVENANCE_KEY: provenance},
                    {PROVENANCE_KEY: provenance})],
        SceneSegmentation("prediction", labels, AFFINE, [(1, "body", (0.9, 0.7, 0.5)), (7, "lesion", (0.1, 0.9, 0.2))]),
        background=0, foreground=1, foreground_opacity=0.5, focus_ras=_ras(HOT))

    readBundle(scene, path, tmp_path)

    ctNode, relevanceNode = _byName(scene, "CT"), _byName(scene, "relevance")
    _checkVolume(ctNode, image, _volumeFromBundle(path, "Data/CT.nrrd", tmp_path))
    _checkVolume(relevanceNode, attribution, _volumeFromBundle(path, "Data/relevance.nrrd", tmp_path))
    assert ctNode.GetDisplayNode().GetWindow() == pytest.approx(400.0)
    assert ctNode.GetDisplayNode().GetLevel() == pytest.approx(40.0)
    _checkDiverging(relevanceNode, 1.0)
    assert attributesOf(relevanceNode)[PROVENANCE_KEY] == provenance
    assert relevanceNode.GetNodeReference("MedXAI.InputVolume") is ctNode
    _checkLayers(scene, ctNode, relevanceNode)
    assert _segmentNames(scene) == ["body", "lesion"]
    red = next(n for n in _nodes(scene, "vtkMRMLSliceNode") if n.GetLayoutName() == "Red")
    assert red is sliceView.sliceNode and red.GetOrientation() == "Axial"
    assert float(red.GetSliceToRAS().GetElement(2, 3)) == pytest.approx(_ras(HOT)[2])

    pixels = _render(sliceView, tmp_path / "synthetic.png")
    shutil.copyfile(tmp_path / "synthetic.png", EXAMPLE)
    hot, cold, quiet = (_colourAt(sliceView, pixels, _ras(ijk)) for ijk in (HOT, COLD, QUIET))
    assert hot[0] > hot[1] + 60 and hot[0] > hot[2] + 60, f"the positive hot spot should look red: {hot}"
    assert cold[2] > cold[0] + 30, f"negative relevance should look blue: {cold}"
    assert np.ptp(quiet) <= 3, f"zero relevance should leave the grey image unaltered: {quiet}"


@pytest.mark.slow
def test_the_demo_scene_opens_with_the_attribution_over_the_ct(scene, sliceView, tmp_path, small_demo):
    out = small_demo
    summary = json.loads((out / "summary.json").read_text())
    readBundle(scene, out / "scene.mrb", tmp_path)

    image = read_image(out / "image.nrrd")
    ctNode = _byName(scene, "CT phantom")
    _checkVolume(ctNode, image, image)
    petNode = _byName(scene, "PET phantom")
    pet = read_image(out / "pet.nrrd")
    _checkVolume(petNode, pet, pet)
    maps = [n for n in _nodes(scene, "vtkMRMLScalarVolumeNode") if n not in (ctNode, petNode)]
    attributions = [n for n in maps if "MedXAI.Channel" not in attributesOf(n)]  # the channel sums
    assert len(attributions) == len(summary["attributions"])
    per_channel = [n for n in maps if "MedXAI.Channel" in attributesOf(n)]  # every resolved map of CT + PET
    assert len(per_channel) == 2 * sum(len(r["figures"]) > 1 for r in summary["attributions"])
    for node in per_channel:
        record = next(r for r in summary["attributions"] if node.GetName().startswith(r["method_title"])
                      and node.GetName().split(": ")[1].startswith(r["model"]))
        channel = attributesOf(node)["MedXAI.Channel"]
        volume = read_image(out / record["file"])
        index = summary["image"]["channels"].index(channel)
        _checkVolume(node, volume.with_array(volume.array[index:index + 1]), volume)
    for node in attributions:
        provenance = json.loads(attributesOf(node)[PROVENANCE_KEY])
        record = next(r for r in summary["attributions"] if r["method"] == provenance["method"]
                      and r["model_name"] == provenance["model"]["id"])
        volume = read_image(out / record["file_sum"])  # the scene shows the channel sum
        _checkVolume(node, volume, volume)
        _checkDiverging(node, record["display_limit"])
    foreground = next(n for n in attributions if attributesOf(n)["MedXAI.Method"] == "integrated_gradients"
                      and n.GetName().endswith("classifier"))
    _checkLayers(scene, ctNode, foreground)
    expected = [n for n, count in summary["prediction"]["segmentation"]["voxels_per_class"].items()
                if count and n != "background"] if not summary["fallback"] else ["lesion (truth)"]
    assert _segmentNames(scene) == expected

    pixels = _render(sliceView, tmp_path / "demo.png")
    shutil.copyfile(tmp_path / "demo.png", EXAMPLE.replace(".png", "_demo.png"))
    r, g, b = (pixels[..., c].astype(int) for c in range(3))
    reddish = (r > g + 40) & (r > b + 40)
    row, col = sliceView.pixelOf(summary["lesion"]["centre_ras"])  # the Red plane passes through it
    radius = 15.0 / (sliceView.sliceNode.GetFieldOfView()[0] / pixels.shape[1])  # 15 mm in pixels
    rows, cols = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
    near = (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
    assert (reddish & near).sum() >= 20, (
        f"no reddish hot spot within 15 mm of the lesion centre in the Red view: {(reddish & near).sum()} "
        f"reddish pixels there, {reddish.sum()} in the whole view")
