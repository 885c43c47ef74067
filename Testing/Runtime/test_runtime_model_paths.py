"""Model paths in the parameter node: relative to the scene's folder where possible, shipped models by name.

A scene folder moved to another place (or machine) keeps its model: the path saved in the .mrml is
relative to the scene, and resolved against wherever the scene is loaded from. A test saves and
loads a real MRML scene (slicer-core) to show it end to end.

nnU-Net v2 folders and TotalSegmentator tasks are recognised from their files without torch
(``modelPaths.describeModel``, on MedXAILib's own checks in ``MedXAILib.model.folders``) on folders laid
out as nnU-Net writes them, also with torch blocked, and the options they give are what a run request takes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import runtime_paths  # puts MedXAIRuntime and MedXAILib on sys.path

from MedXAIRuntime import modelPaths
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


# ------------------------------------------------------------------------------------------------
# nnU-Net v2 folders and TotalSegmentator tasks, recognised without torch (MedXAIRuntime.modelPaths)

LABELS = {"background": 0, "liver": 1, "kidney": 2}


def _model(folder: Path, labels=None, folds=("0",), checkpoint="checkpoint_final.pth") -> Path:
    """An nnU-Net trained-model folder as nnU-Net writes it (only the files the checks read; empty weights)."""
    for fold in folds:
        (folder / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        (folder / f"fold_{fold}" / checkpoint).write_bytes(b"")
    (folder / "dataset.json").write_text(json.dumps({"labels": labels or LABELS, "channel_names": {"0": "CT"}}))
    (folder / "plans.json").write_text("{}")
    return folder


def _layouts(root: Path) -> dict[str, Path]:
    """Folders that are, and are not, nnU-Net models."""
    model = _model(root / "model", folds=("0", "1", "all"))
    results = root / "Dataset003_Abdomen"
    _model(results / "nnUNetTrainer__nnUNetPlans__3d_fullres", folds=("0", "1"))
    _model(results / "nnUNetTrainer__nnUNetPlans__2d", folds=("0",), checkpoint="checkpoint_best.pth")
    single = root / "Dataset004_Liver"
    _model(single / "nnUNetTrainer__nnUNetPlans__3d_lowres")
    (root / "only_dataset").mkdir()
    (root / "only_dataset" / "dataset.json").write_text("{}")
    (root / "bundle" / "configs").mkdir(parents=True)
    (root / "bundle" / "configs" / "inference.json").write_text("{}")
    (root / "net.ts").write_bytes(b"")
    return {"model": model, "results": results, "single": single, "onlyDataset": root / "only_dataset",
            "bundle": root / "bundle", "file": root / "net.ts", "missing": root / "nothing",
            "checkpoint": model / "fold_1" / "checkpoint_final.pth",
            "looseCheckpoint": root / "fold_0" / "checkpoint_final.pth"}


def test_each_layout_is_recognised_as_what_it_is(tmp_path):
    folders = _layouts(tmp_path)
    (tmp_path / "fold_0").mkdir()
    folders["looseCheckpoint"].write_bytes(b"")  # a checkpoint outside a model folder: not a model
    expected = {"model": modelPaths.NNUNET_FOLDER, "results": modelPaths.NNUNET_FOLDER,
                "single": modelPaths.NNUNET_FOLDER, "checkpoint": modelPaths.NNUNET_CHECKPOINT}
    for name, path in folders.items():
        assert modelPaths.describeModel(str(path)).kind == expected.get(name, ""), name
        assert modelPaths.isNnunetModel(str(path)) == (name in expected), name


def test_describe_model_reads_configurations_folds_and_structures(tmp_path):
    folders = _layouts(tmp_path)
    info = modelPaths.describeModel(str(folders["model"]))
    assert (info.kind, info.configurations, info.folds) == (modelPaths.NNUNET_FOLDER, (), ("0", "1", "all"))
    assert info.structures == (("background", 0), ("liver", 1), ("kidney", 2))
    assert info.classIndex("kidney") == 2 and info.classIndex("Kidney") == 2 and info.classIndex("spleen") is None
    results = modelPaths.describeModel(str(folders["results"]))
    assert results.configurations == ("2d", "3d_fullres") and results.folds == ("0", "1")  # 3d_fullres by default
    assert modelPaths.describeModel(str(folders["results"]), "2d").folds == ("0",)
    assert modelPaths.describeModel(str(folders["single"])).configurations == ()  # one model: nothing to choose
    fold = modelPaths.describeModel(str(folders["checkpoint"]))
    assert (fold.kind, fold.folds, len(fold.structures)) == (modelPaths.NNUNET_CHECKPOINT, ("1",), 3)
    for name in ("bundle", "file", "onlyDataset", "missing"):
        assert modelPaths.describeModel(str(folders[name])) == modelPaths.ModelInfo(), name
    assert not modelPaths.describeModel("").isNnunet


def test_model_options_hold_only_what_applies_and_differs_from_the_defaults(tmp_path):
    folders = _layouts(tmp_path)
    options = modelPaths.modelOptions
    model, results = modelPaths.describeModel(str(folders["model"])), modelPaths.describeModel(str(folders["results"]))
    fold, total = modelPaths.describeModel(str(folders["checkpoint"])), modelPaths.describeModel("totalsegmentator:total")
    assert options(model) == {} and options(modelPaths.ModelInfo(), "0", "x", "best", False, "liver") == {}
    assert options(model, " 0, 1 ,", "3d_fullres", "best", False, "liver") == {
        "folds": [0, 1], "checkpoint": "best", "mirroring": False}  # a model folder: no configuration to choose
    assert options(results, "all", "2d") == {"folds": ["all"], "configuration": "2d"}
    assert options(results, "", "3d_lowres") == {}  # not one of the folder's
    assert options(fold, "0", "", "best", False) == {"mirroring": False}  # the file fixes its fold and checkpoint
    assert options(total, "0", "2d", "best", False, "liver") == {"folds": [0], "checkpoint": "best", "structure": "liver"}
    from MedXAILib.errors import InputError
    from MedXAILib.runs.request import MODEL_OPTIONS, check_model_options

    with pytest.raises(InputError, match="fold numbers or 'all'"):
        options(model, "0;1")
    with pytest.raises(InputError, match="final or best"):
        options(model, "", "", "last")
    full = options(results, "0,all", "2d", "best", False)
    assert set(full) <= set(MODEL_OPTIONS) and check_model_options(full) == full  # JSON values a request takes


@pytest.mark.parametrize("text, expected", [("0", [0]), ("0,1,2", [0, 1, 2]), ("all", ["all"]),
                                            ("1,all", [1, "all"]), (" 3 , 4 ", [3, 4]), ("1,1", [1]), ("", None)])
def test_folds_read_as_the_command_line_reads_them(text, expected):
    assert modelPaths.parseFolds(text) == expected


def test_a_totalsegmentator_task_names_the_structures_of_its_parts(tmp_path, monkeypatch):
    from MedXAILib.model import folders

    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    _model(tmp_path / "Dataset291_TotalSegmentator_part1_organs_1559subj" / "nnUNetTrainer__nnUNetPlans__3d_fullres",
           {"background": 0, "spleen": 1, "kidney_right": 2, "liver": 3})
    _model(tmp_path / "Dataset292_TotalSegmentator_part2_vertebrae_1532subj" / "nnUNetTrainer__nnUNetPlans__3d_fullres",
           {"background": 0, "vertebrae_L1": 1, "liver": 2})  # a name two parts share: the first part's
    info = modelPaths.describeModel("totalsegmentator:total")
    assert info.kind == modelPaths.TOTALSEGMENTATOR and "Dataset293, Dataset294, Dataset295 not found" in info.note
    # the channel of each name in the part MedXAILib loads for it (load_totalsegmentator's choice)
    parts: dict[str, tuple[int, Path]] = {}
    for dataset, folder in folders.task_folders("totalsegmentator:total"):
        if folder is not None:
            for index, name in enumerate(folders.label_layout(folders.read_dataset_json(folders.dataset_model(folder)))[0]):
                parts.setdefault(name, (index, folder))
    assert dict(info.structures) == {name: index for name, (index, _) in parts.items()}
    assert info.classIndex("vertebrae_L1") == 1 and info.classIndex("liver") == 3
    assert info.parts == 5 and modelPaths.modelOptions(info, structure="liver") == {"structure": "liver"}
    assert modelPaths.describeModel("totalsegmentator:nonsense") == modelPaths.ModelInfo()  # the loader says why
    assert not modelPaths.isNnunetModel("totalsegmentator:nonsense")  # no install offered for a typo
    assert modelPaths.storedModelPath("totalsegmentator:total", str(tmp_path)) == "totalsegmentator:total"
    assert modelPaths.resolveModelPath("totalsegmentator:total", str(tmp_path)) == "totalsegmentator:total"


def test_nnunet_folders_are_recognised_with_torch_blocked(tmp_path):
    folders = _layouts(tmp_path)
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'monai', 'SimpleITK', 'scipy'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path[:0] = [{str(runtime_paths.MODULE_DIR)!r}, {str(runtime_paths.ROOT)!r}]\n"
        "from MedXAIRuntime import modelPaths\n"
        "from MedXAILib.model.folders import TASKS\n"
        f"info = modelPaths.describeModel({str(folders['results'])!r})\n"
        "total = modelPaths.describeModel('totalsegmentator:total')\n"
        "print(info.kind, ','.join(info.configurations), total.kind, len(TASKS) > 40)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["nnunetFolder", "2d,3d_fullres", "totalSegmentator", "True"]


def test_the_options_reach_medxailibs_nnunet_loader_through_a_run_request(tmp_path):
    pytest.importorskip("torch")
    import numpy as np

    from MedXAILib import ImageVolume
    from MedXAILib.errors import ModelError
    from MedXAILib.target import Target
    from MedXAIRuntime import jobs

    folders = _layouts(tmp_path)
    info = modelPaths.describeModel(str(folders["results"]))
    options = modelPaths.modelOptions(info, "0,1", "2d")  # the 2d model has fold 0 only (and only its best checkpoint)
    image = ImageVolume(np.zeros((1, 8, 8, 8), np.float32), np.eye(4))
    request = jobs.explainRequest(image, str(folders["results"]), "saliency", {}, Target(class_index=1), "cpu",
                                  modelOptions=options)
    assert request.model_options == {"folds": [0, 1], "configuration": "2d"}
    with pytest.raises(ModelError, match="has no fold 0, 1 with checkpoint_final.pth"):
        jobs.runInProcess(request)
