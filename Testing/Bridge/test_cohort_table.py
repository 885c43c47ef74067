"""A cohort folder in real MRML (slicer-core): its table as a table node; a row loads its case's scene.

A two-case cohort (the liver of small CT phantoms by the shipped phantom segmenter, in this process) is opened as a
table node: one row per case x structure with typed columns and its folder remembered. Loading a row
imports that case's ``.mrb`` as Slicer does (``ReadFromMRB``): the image, the prediction and the
attributions arrive as nodes of that case, the slice views show them, and loading another row replaces
them while the table stays. A failed case's row says why it has no scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mrmlTesting import ROOT, readBundle  # noqa: F401 - readBundle documents the manager set-up used below

from MedXAIBridge.nodes import nodesByClass

pytestmark = pytest.mark.mrml


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from MedXAILib.cohort import run_cohort
    from MedXAILib.demo.samples import ct_phantom
    from MedXAILib.io import write_image

    folder = tmp_path_factory.mktemp("cohort")
    lines = ["case_id,image,site"]
    for index in range(2):
        image, _, _ = ct_phantom(1_000_010 + index, shape=(48, 48, 32))
        write_image(image, folder / f"ct{index}.nrrd")
        lines.append(f"p{index},ct{index}.nrrd,site{index}")
    (folder / "broken.nrrd").write_text("not an image")
    lines.append("broken,broken.nrrd,site0")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    run_cohort(folder / "manifest.csv", ROOT / "Resources" / "Models" / "phantom_segmenter.json", folder / "out",
               structures="liver", ray="off", qa={"tta": ["identity", "shift_k"]})
    return folder / "out"


def _managers(scene, tmp_path):
    import slicer

    cache = slicer.vtkCacheManager()
    (tmp_path / "cache").mkdir()
    cache.SetRemoteCacheDirectory(str(tmp_path / "cache"))
    manager = slicer.vtkDataIOManager()
    manager.SetCacheManager(cache)
    scene.SetDataIOManager(manager)
    scene.SetCacheManager(cache)
    return manager, cache


def _volumes(scene):
    return nodesByClass(scene, "vtkMRMLScalarVolumeNode")


def test_the_table_node_holds_the_cohort_table(scene, cohort):
    from MedXAIBridge.cohortNodes import FOLDER_ATTRIBUTE, cohortTableNode

    node = cohortTableNode(scene, cohort)
    table = node.GetTable()
    assert table.GetNumberOfRows() == 2 + 1  # two cases x one structure, one failed case
    assert node.GetAttribute(FOLDER_ATTRIBUTE) == str(cohort.resolve())
    assert table.GetColumnByName("case_id").GetValue(0) == "p0"
    assert table.GetColumnByName("tta_dice").GetClassName() == "vtkDoubleArray"
    assert table.GetColumnByName("label").GetClassName() == "vtkIntArray"
    assert table.GetColumnByName("site").GetValue(1) == "site1"
    risk = [table.GetColumnByName("risk").GetValue(r) for r in range(2)]
    assert all(np.isfinite(risk))


def test_loading_a_row_shows_that_cases_scene_and_replaces_the_previous_case(scene, cohort, tmp_path):
    from MedXAIBridge.cohortNodes import CASE_ATTRIBUTE, caseScenePath, cohortTableNode, loadCaseScene
    from MedXAILib.errors import InputError

    keep = _managers(scene, tmp_path)
    node = cohortTableNode(scene, cohort)
    assert caseScenePath(node, 0) == cohort / "cases" / "p0" / "scene.mrb"
    first = loadCaseScene(scene, node, 0)
    names = sorted(v.GetName() for v in _volumes(scene))
    assert names == ["attribution liver", "entropy", "image"]
    assert {n.GetAttribute(CASE_ATTRIBUTE) for n in first} == {"p0"}
    assert len(nodesByClass(scene, "vtkMRMLSegmentationNode")) == 1
    image = next(v for v in _volumes(scene) if v.GetName() == "image")
    composite = scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
    assert composite.GetBackgroundVolumeID() == image.GetID()
    assert image.GetImageData().GetDimensions() == (48, 48, 32)

    loadCaseScene(scene, node, 1)  # the other case
    volumes = _volumes(scene)
    assert len(volumes) == 3 and {v.GetAttribute(CASE_ATTRIBUTE) for v in volumes} == {"p1"}
    assert scene.GetNodeByID(node.GetID()) is node, "the table stays"
    with pytest.raises(InputError, match="failed"):
        loadCaseScene(scene, node, 2)
    del keep
