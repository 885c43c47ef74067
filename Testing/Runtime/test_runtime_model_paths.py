"""Model paths in the parameter node: relative to the scene's folder where possible, shipped models by name.

A scene folder moved to another place (or machine) keeps its model: the path saved in the .mrml is
relative to the scene, and resolved against wherever the scene is loaded from. The last test saves and
loads a real MRML scene (slicer-core) to show it end to end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAIRuntime.modelPaths import SHIPPED_PREFIX, resolveModelPath, shippedModelsFolder, storedModelPath


def test_shipped_models_are_stored_by_name_and_found_beside_the_library():
    folder = shippedModelsFolder()
    assert (folder / "lesion_classifier_petct.json").is_file()
    path = str(folder / "lesion_classifier_petct.json")
    assert storedModelPath(path, "/scenes/case1") == SHIPPED_PREFIX + "lesion_classifier_petct.json"
    assert resolveModelPath(SHIPPED_PREFIX + "lesion_classifier_petct.json") == path
    other = Path("/opt/slicer/ext/Resources/Models")
    assert resolveModelPath(SHIPPED_PREFIX + "a.json", None, other) == str(other / "a.json")


def test_models_inside_the_scene_folder_are_stored_relative(tmp_path):
    scene = tmp_path / "case1"
    assert storedModelPath(str(scene / "models" / "net.ts"), str(scene)) == "models/net.ts"
    assert resolveModelPath("models/net.ts", str(tmp_path / "moved")) == str(tmp_path / "moved" / "models" / "net.ts")
    bundle = scene / "bundle"  # a MONAI bundle folder
    assert storedModelPath(str(bundle), str(scene)) == "bundle"


@pytest.mark.parametrize("sceneDirectory", [None, "", ".", "relative/dir"])
def test_without_a_usable_scene_folder_paths_stay_absolute(tmp_path, sceneDirectory):
    path = str(tmp_path / "net.ts")
    assert storedModelPath(path, sceneDirectory) == path
    assert resolveModelPath(path, sceneDirectory) == path
    assert resolveModelPath("net.ts", sceneDirectory) == "net.ts"  # said as is: MedXAILib reports it missing


def test_models_elsewhere_stay_absolute_and_empty_stays_empty(tmp_path):
    assert storedModelPath("/data/models/net.ts", str(tmp_path)) == "/data/models/net.ts"
    assert storedModelPath("", str(tmp_path)) == "" and resolveModelPath("", str(tmp_path)) == ""
    assert storedModelPath("models/net.ts", str(tmp_path)) == "models/net.ts"  # already stored: unchanged


@pytest.mark.mrml
def test_a_saved_scene_moved_elsewhere_finds_its_model(tmp_path):
    slicer = pytest.importorskip("slicer", reason="needs slicer-core")
    original = tmp_path / "original"
    (original / "models").mkdir(parents=True)
    (original / "models" / "net.json").write_text("{}")
    scene = slicer.vtkMRMLScene()
    scene.SetRootDirectory(str(original))
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "MedXAI")
    node.SetParameter("modelPath", storedModelPath(str(original / "models" / "net.json"), scene.GetRootDirectory()))
    scene.SetURL(str(original / "scene.mrml"))
    assert scene.Commit()
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, moved)
    shutil.rmtree(original)

    loaded = slicer.vtkMRMLScene()
    loaded.SetURL(str(moved / "scene.mrml"))
    assert loaded.Connect()
    [node] = [loaded.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
              for i in range(loaded.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode"))]
    assert node.GetParameter("modelPath") == "models/net.json"
    resolved = Path(resolveModelPath(node.GetParameter("modelPath"), loaded.GetRootDirectory()))
    assert resolved.is_file() and resolved == moved / "models" / "net.json"
