"""What the viewer reads from a result folder (MedXAIViewer.folder): no slicer-core, no browser, small files.

Folders are written with MedXAILib itself (``write_image``, ``Attribution.save``), as ``medxai explain`` and
``medxai demo`` write them: the image, attributions with their provenance in the header (NRRD) or in a JSON
sidecar (NIfTI), a label map. Damaged and missing files must become problems, never exceptions; paths that
leave the folder must be refused however they are written; a cohort table is ranked least trustworthy first.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from MedXAILib.attribution import Attribution
from MedXAILib.io import write_image
from MedXAILib.volume import ImageVolume
from MedXAIViewer.folder import attribution_label, inside, read_cohort_table, scan_folder

SHAPE = (12, 10, 8)


def _affine():
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = (-10.0, 20.0, -300.0)
    return affine


def _provenance(method="grad_cam", title="Grad-CAM", model="net", target="liver", region="component"):
    return {"method": method, "method_title": title, "model": {"id": model, "sha256": "0" * 64},
            "target_name": target, "target": {"class_index": 2, "region": region, "voxel": [3, 4, 5]}}


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    write_image(ImageVolume(rng.normal(size=(1, *SHAPE)).astype(np.float32), _affine()), tmp_path / "ct.nrrd")
    labels = np.zeros((1, *SHAPE), np.float32)
    labels[0, 2:6, 2:6, 2:5] = 2
    write_image(ImageVolume(labels, _affine()), tmp_path / "organ_labels.nrrd")
    Attribution(rng.normal(size=(1, *SHAPE)).astype(np.float32), _affine(), _provenance()).save(
        tmp_path / "cam.nrrd")
    Attribution(rng.normal(size=(1, *SHAPE)).astype(np.float32), _affine(),
                _provenance("integrated_gradients", "Integrated Gradients", "other", "tumour", "class")).save(
        tmp_path / "ig.nii.gz")
    (tmp_path / "notes.txt").write_text("not an image\n")
    return tmp_path


def test_a_result_folder_is_sorted_by_what_its_headers_say(folder):
    found = scan_folder(folder)
    assert found.problems == []
    assert found.image.name == "ct.nrrd"  # the only volume that is neither a map nor a label map
    assert found.segmentation.name == "organ_labels.nrrd"
    labels = sorted(a.label for a in found.attributions)
    assert labels == ["Grad-CAM · net · liver (component)", "Integrated Gradients · other · tumour"]
    nifti = next(a for a in found.attributions if a.path.name == "ig.nii.gz")  # provenance from the sidecar
    assert nifti.provenance["model"]["id"] == "other"
    assert not found.is_cohort and found.links == []


def test_summary_names_the_image_and_orders_the_maps(folder):
    (folder / "image.nrrd").write_bytes((folder / "ct.nrrd").read_bytes())
    (folder / "summary.json").write_text(json.dumps({
        "image": {"file": "ct.nrrd", "display_window_hu": [-100, 300]},
        "attributions": [{"file": "ig.nii.gz"}, {"file": "cam.nrrd"}]}))
    found = scan_folder(folder)
    assert found.image.name == "ct.nrrd" and found.image_window == (-100.0, 300.0)
    assert [a.path.name for a in found.attributions] == ["ig.nii.gz", "cam.nrrd"]
    assert found.links == ["summary.json"]


def test_damaged_and_missing_files_become_problems_not_errors(folder):
    (folder / "broken.nrrd").write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4\n\n")
    (folder / "noise.mha").write_bytes(os.urandom(200))
    (folder / "summary.json").write_text(json.dumps({"attributions": [{"file": "gone.nrrd"}]}))
    found = scan_folder(folder)
    text = "\n".join(found.problems)
    assert "broken.nrrd: cannot be read" in text and "noise.mha: cannot be read" in text
    assert "gone.nrrd: named in summary.json but missing" in text
    assert len(found.attributions) == 2 and found.image.name == "ct.nrrd"  # the rest is still shown

    (folder / "summary.json").write_text("{ not json")
    assert any(p.startswith("summary.json: cannot be read") for p in scan_folder(folder).problems)

    for name in ("ct.nrrd", "cam.nrrd", "ig.nii.gz", "ig.json", "broken.nrrd", "noise.mha"):
        (folder / name).unlink()
    found = scan_folder(folder)
    assert any("no image" in p for p in found.problems) and any("no attribution" in p for p in found.problems)


def test_a_file_is_not_a_result_folder(folder):
    with pytest.raises(NotADirectoryError):
        scan_folder(folder / "ct.nrrd")


def test_inside_refuses_every_path_that_leaves_the_folder(tmp_path):
    root = tmp_path / "results"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    outside = tmp_path / "results-secret"  # shares the folder's name as a prefix
    outside.mkdir()
    (outside / "s.txt").write_text("secret")
    (root / "link-out").symlink_to(outside / "s.txt")
    (root / "dir-out").symlink_to(outside, target_is_directory=True)
    (root / "link-in").symlink_to(root / "sub" / "b.txt")

    assert inside(root, "a.txt") == (root / "a.txt").resolve()
    assert inside(root, "sub/../a.txt") == (root / "a.txt").resolve()
    assert inside(root, "link-in") == (root / "sub" / "b.txt").resolve()
    for path in ("../results-secret/s.txt", "sub/../../results-secret/s.txt", str(outside / "s.txt"), "/etc/passwd",
                 "link-out", "dir-out/s.txt", "", "nothing.txt", "a.txt\x00.png", "\\etc\\passwd"):
        assert inside(root, path) is None, path


def test_cohort_table_is_ranked_least_trustworthy_first(tmp_path):
    for case in ("a", "b", "c"):
        (tmp_path / "cases" / case).mkdir(parents=True)
    table = tmp_path / "cohort.csv"
    problems: list[str] = []

    table.write_text("case,structure,qa_score\na,liver,0.9\nb,liver,0.1\nc,liver,\nd,liver,0.5\n")
    rows, columns = read_cohort_table(tmp_path, problems)
    assert [r.case for r in rows] == ["c", "b", "d", "a"]  # no score first (it needs a look), then low first
    assert rows[2].folder is None and "missing" in rows[2].error and "cases/" in problems[0]
    assert columns == ["case", "structure", "qa_score"]

    table.unlink()
    table = tmp_path / "table.csv"  # what medxai cohort writes
    table.write_text("case_id,status,structure,risk,error\na,done,liver,0.2,\nb,done,liver,0.8,\nc,done,liver,0.5,\n")
    assert [r.case for r in read_cohort_table(tmp_path, [])[0]] == ["b", "c", "a"]  # high risk first
    table.write_text("case,rank,qa_score\na,2,0.1\nb,1,0.9\nc,3,0.5\n")
    assert [r.case for r in read_cohort_table(tmp_path, [])[0]] == ["b", "a", "c"]  # an explicit rank wins

    table.write_text("case,structure\n../outside,liver\n..,liver\na/../b,liver\n")
    rows, _ = read_cohort_table(tmp_path, [])
    assert [r.folder for r in rows] == [None, None, None]  # a case is a folder right below cases/, nothing else

    problems = []
    table.write_text("patient,score\na,1\n")
    assert read_cohort_table(tmp_path, problems)[0] == [] and "no 'case' or 'case_id' column" in problems[0]
    assert scan_folder(tmp_path).is_cohort is False


def test_a_cohort_case_without_an_image_file_takes_its_scenes_background(folder):
    from MedXAILib.report.mrb import SceneVolume, write_mrb
    from MedXAILib.io import read_image

    image = read_image(folder / "ct.nrrd")
    (folder / "ct.nrrd").unlink()
    entropy = ImageVolume(np.abs(image.array), image.affine)
    write_image(entropy, folder / "entropy.nrrd", metadata={"MedXAI.Map": "entropy"})  # a derived map
    write_mrb(folder / "scene.mrb", [SceneVolume("image", image, (-1.0, 3.0)),
                                     SceneVolume("entropy", entropy, (0.0, 1.0))], None, 0)
    found = scan_folder(folder)
    assert found.problems == [] and found.image.name == "scene.mrb" and found.image_member.endswith(".nrrd")
    assert found.image_window == pytest.approx((-1.0, 3.0))
    assert "scene.mrb" in found.links

    (folder / "scene.mrb").write_bytes(b"PK not a zip")
    found = scan_folder(folder)
    assert found.image is None and any(p.startswith("scene.mrb: cannot be read") for p in found.problems)


def test_labels_fall_back_on_the_file_name(folder):
    assert attribution_label({}, "attribution_x") == "attribution_x"
    assert attribution_label({"method": "saliency", "target": {"class_index": 1}}, "x") == "saliency · class 1"
