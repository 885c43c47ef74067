"""nnU-Net v2 model folders and TotalSegmentator tasks, recognised from their files alone.

What a model chooser needs before anything is loaded: whether a path is an nnU-Net v2 trained-model
folder, a dataset folder of nnU-Net's results layout (``DatasetXXX_Name/`` holding
``Trainer__Plans__Configuration/`` folders) or one fold's checkpoint; which configurations and folds
it holds; its class names from ``dataset.json``; and where TotalSegmentator keeps a task's models.
:mod:`.nnunet` and :mod:`.totalsegmentator` load the models on these answers, and the Slicer module
offers the nnU-Net options with them.

Plain Python (pathlib, json, re): no torch, so the Slicer module can use it before torch is installed
(``MedXAILib.model`` imports its heavier modules on first use).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Optional

from ..errors import ModelError

__all__ = ["CHECKPOINTS", "is_model_folder", "trained_models", "is_nnunet_folder", "model_folder", "configuration_of",
           "checkpoint_location", "parse_folds", "present_folds", "label_layout", "read_dataset_json", "PREFIX", "TASKS",
           "weights_dir", "is_totalsegmentator", "parse_task", "download_hint", "task_folders", "dataset_model",
           "task_structures"]

#: ``--checkpoint`` choices and their files.
CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
_FOLD = re.compile(r"^fold_(\d+|all)$")


def is_model_folder(path: Path) -> bool:
    """Whether `path` holds an nnU-Net trained model's ``dataset.json`` and ``plans.json``."""
    return (path / "dataset.json").is_file() and (path / "plans.json").is_file()


def trained_models(path: Path) -> list[Path]:
    """Model folders ``Trainer__Plans__Configuration`` directly inside a dataset folder."""
    try:  # names first: a chooser calls this as the user types, and a large folder must not cost a stat per entry
        children = sorted(p for p in Path(path).iterdir() if p.name.count("__") == 2)
    except OSError:
        return []
    return [p for p in children if p.is_dir() and is_model_folder(p)]


def is_nnunet_folder(path: Path) -> bool:
    """Whether `path` is an nnU-Net v2 trained-model folder or a dataset folder of the results layout."""
    path = Path(path)
    return path.is_dir() and (is_model_folder(path) or bool(trained_models(path)))


def model_folder(path: Path, configuration: Optional[str] = None) -> Path:
    """The trained-model folder at `path`, choosing among a dataset folder's models by `configuration`.

    Raises:
        ModelError: no model, or several and `configuration` does not pick one.
    """
    path = Path(path)
    if is_model_folder(path):
        return path
    models = trained_models(path)
    if not models:
        raise ModelError(f"{path} is not an nnU-Net v2 model folder: it has neither dataset.json and plans.json nor "
                         "Trainer__Plans__Configuration folders holding them")
    if configuration is not None:
        models = [m for m in models if configuration_of(m) == configuration]
        if not models:
            found = ", ".join(p.name for p in trained_models(path))
            raise ModelError(f"{path.name} has no trained model of configuration {configuration!r}; it has {found}")
    if len(models) > 1:
        names = ", ".join(m.name for m in models)
        raise ModelError(f"{path.name} holds several trained models ({names}): choose one with --configuration, or "
                         "give the model's own folder")
    return models[0]


def configuration_of(model: Path) -> str:
    """The configuration of a ``Trainer__Plans__Configuration`` model folder."""
    return Path(model).name.split("__")[2]


def checkpoint_location(path: Path) -> Optional[tuple[Path, str, str]]:
    """(model folder, fold, checkpoint choice) when `path` is a checkpoint file inside a model folder."""
    path = Path(path)
    fold = _FOLD.match(path.parent.name)
    choice = {v: k for k, v in CHECKPOINTS.items()}.get(path.name)
    if fold and choice and is_model_folder(path.parent.parent):
        return path.parent.parent, fold.group(1), choice
    return None


def parse_folds(text: str) -> list[int | str]:
    """``"0,1"`` -> ``[0, 1]``, ``"all"`` -> ``["all"]`` (nnU-Net's fold_all); repeats dropped.

    Raises:
        ValueError: anything else (the message says what a fold is).
    """
    folds: list[int | str] = []
    for part in str(text).replace(" ", "").strip(",").split(","):
        if part != "all" and not part.isdigit():
            raise ValueError(f"folds are fold numbers or 'all', separated by commas (e.g. 0,1); got {text!r}")
        value = part if part == "all" else int(part)
        if value not in folds:
            folds.append(value)
    return folds


def present_folds(folder: Path, file: Optional[str] = None) -> list[str]:
    """The folds of a model folder with `file` (else any checkpoint): ``["0", "1", "all"]``, numbers first."""
    files = [file] if file else list(CHECKPOINTS.values())
    try:
        found = [m.group(1) for p in Path(folder).iterdir() if p.is_dir() and (m := _FOLD.match(p.name))
                 and any((p / name).is_file() for name in files)]
    except OSError:
        return []
    return sorted(found, key=lambda f: (f == "all", int(f) if f.isdigit() else 0))


def label_layout(dataset: dict) -> tuple[list[str], str]:
    """(class names, one per output channel; ``softmax`` or ``sigmoid``) from dataset.json's labels.

    Plain labels give one channel per label value 0..K-1 (softmax); region-based labels (a label
    that is a list of several values) one channel per region other than the background (sigmoid),
    in dataset.json's order, as nnU-Net's LabelManager orders them. ``ignore`` has no channel.
    """
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or "background" not in labels:
        raise ModelError("dataset.json needs 'labels' with a 'background' label 0")
    labels = {k: v for k, v in labels.items() if k != "ignore"}
    if any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):
        names = [k for k, v in labels.items()
                 if not (v == 0 or (isinstance(v, (list, tuple)) and set(int(i) for i in v) == {0}))]
        return names, "sigmoid"
    by_value: dict[int, str] = {}
    for name, value in labels.items():
        value = int(value[0] if isinstance(value, (list, tuple)) else value)
        by_value.setdefault(value, name)
    if sorted(by_value) != list(range(len(by_value))):
        raise ModelError(f"dataset.json labels must be the values 0..K-1; got {sorted(by_value)}")
    return [by_value[v] for v in range(len(by_value))], "softmax"


def read_dataset_json(model: Path) -> dict:
    """A trained model's ``dataset.json``.

    Raises:
        ModelError: it cannot be read.
    """
    try:
        data = json.loads((Path(model) / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {Path(model) / 'dataset.json'}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{Path(model) / 'dataset.json'} is not a JSON object")
    return data


# ------------------------------------------------------------------------------------------------
# TotalSegmentator

#: ``totalsegmentator:TASK[:fast|fastest]`` names a task.
PREFIX = "totalsegmentator:"

#: Task -> dataset ids per mode (default, fast, fastest), from TotalSegmentator 2.18's map_tasks_config.py.
TASKS: dict[str, dict[str, tuple[int, ...]]] = {
    "total": {"default": (291, 292, 293, 294, 295), "fast": (297,), "fastest": (298,)},
    "total_v3": {"default": (831, 832, 833, 834, 835), "fast": (836,), "fastest": (837,)},
    "total_mr": {"default": (850, 851), "fast": (852,), "fastest": (853,)},
    "body": {"default": (299,), "fast": (300,)},
    "body_mr": {"default": (597,), "fast": (598,)},
    "lung_vessels": {"default": (117,)}, "lung_vessels_LEGACY": {"default": (258,)},
    "cerebral_bleed": {"default": (150,)}, "hip_implant": {"default": (260,)},
    "vertebrae_mr": {"default": (756,)}, "pleural_pericard_effusion": {"default": (315,)},
    "liver_vessels": {"default": (8,)}, "head_glands_cavities": {"default": (775,)},
    "headneck_bones_vessels": {"default": (776,)}, "head_muscles": {"default": (777,)},
    "headneck_muscles": {"default": (778, 779)}, "oculomotor_muscles": {"default": (351,)},
    "lung_nodules": {"default": (913,)}, "kidney_cysts": {"default": (789,)}, "breasts": {"default": (527,)},
    "ventricle_parts": {"default": (552,)}, "liver_segments": {"default": (570,)},
    "liver_segments_mr": {"default": (576,)}, "liver_lesions": {"default": (591,)},
    "liver_lesions_mr": {"default": (589,)}, "craniofacial_structures": {"default": (115,)},
    "abdominal_muscles": {"default": (952,)}, "teeth": {"default": (113,)}, "trunk_cavities": {"default": (343,)},
    "brain_aneurysm": {"default": (615,)}, "vertebrae_body": {"default": (305,)}, "vertebrae_pp": {"default": (803,)},
    "heartchambers_highres": {"default": (301,)}, "appendicular_bones": {"default": (304,)},
    "appendicular_bones_mr": {"default": (855,)}, "tissue_types": {"default": (481,)},
    "tissue_types_mr": {"default": (925,)}, "tissue_4_types": {"default": (485,)}, "face": {"default": (303,)},
    "face_mr": {"default": (856,)}, "brain_structures": {"default": (409,)},
    "thigh_shoulder_muscles": {"default": (857,)}, "thigh_shoulder_muscles_mr": {"default": (857,)},
    "coronary_arteries": {"default": (509,)}, "coronary_arteries_LEGACY": {"default": (507,)},
    "aortic_sinuses": {"default": (920,)}, "renal_arteries": {"default": (710,)}, "aorta_annulus": {"default": (713,)},
    "aortic_dissection": {"default": (716,)}, "pulmonary_artery_landmarks": {"default": (514,)},
}


def weights_dir() -> tuple[Path, str]:
    """TotalSegmentator's weights folder and where that came from (for messages)."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"]), "$TOTALSEG_WEIGHTS_PATH"
    if os.environ.get("TOTALSEG_HOME_DIR"):
        return Path(os.environ["TOTALSEG_HOME_DIR"]) / "nnunet" / "results", "$TOTALSEG_HOME_DIR/nnunet/results"
    home = Path("/tmp") if str(Path.home()) == "/" else Path.home()
    return home / ".totalsegmentator" / "nnunet" / "results", "TotalSegmentator's default folder"


def is_totalsegmentator(source: object) -> bool:
    """Whether `source` names a TotalSegmentator task (``totalsegmentator:TASK``)."""
    return isinstance(source, str) and source.lower().startswith(PREFIX)


def parse_task(source: str) -> tuple[str, str]:
    """``totalsegmentator:TASK[:fast|fastest]`` -> (task, mode)."""
    parts = source[len(PREFIX):].split(":")
    task, mode = parts[0], (parts[1] if len(parts) > 1 else "default")
    if len(parts) > 2 or not task:
        raise ModelError(f"a TotalSegmentator model is totalsegmentator:TASK or totalsegmentator:TASK:fast; got {source!r}")
    if task not in TASKS:
        close = difflib.get_close_matches(task, list(TASKS), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; tasks: {', '.join(sorted(TASKS))}"
        raise ModelError(f"unknown TotalSegmentator task {task!r}{hint}")
    if mode not in TASKS[task]:
        raise ModelError(f"TotalSegmentator task {task} has modes {', '.join(TASKS[task])}; got {mode!r}")
    return task, mode


def download_hint(task: str, mode: str) -> str:
    """How to get a missing task's models (TotalSegmentator downloads them; MedXAI never does)."""
    fast = " --fast" if mode == "fast" else " --fastest" if mode == "fastest" else ""
    return (f"run TotalSegmentator once on any image with --task {task}{fast} (it downloads them), or "
            f"'totalseg_download_weights -t {task}', or point TOTALSEG_WEIGHTS_PATH / TOTALSEG_HOME_DIR at the "
            "folder that holds them")


def task_folders(source: str) -> list[tuple[int, Optional[Path]]]:
    """(dataset id, its model folder or None when missing) for every part of the task."""
    task, mode = parse_task(source)
    root, _ = weights_dir()
    out: list[tuple[int, Optional[Path]]] = []
    for dataset in TASKS[task][mode]:
        found = sorted(root.glob(f"Dataset{dataset:03d}_*")) if root.is_dir() else []
        out.append((dataset, found[0] if found else None))
    return out


def dataset_model(dataset_folder: Path) -> Path:
    """The trained model in a dataset folder (its 3d_fullres one where there are several)."""
    return model_folder(dataset_folder, "3d_fullres" if len(trained_models(dataset_folder)) > 1 else None)


def task_structures(source: str) -> dict[str, tuple[int, int]]:
    """Each structure the present models of a TotalSegmentator task predict: name -> (dataset id, output
    channel in that model). Where several parts predict a name, the first is the one loaded for it.

    Raises:
        ModelError: an unknown task, or a model folder that cannot be read.
    """
    found: dict[str, tuple[int, int]] = {}
    for dataset, folder in task_folders(source):
        if folder is not None:
            for index, name in enumerate(label_layout(read_dataset_json(dataset_model(folder)))[0]):
                found.setdefault(name, (dataset, index))
    return found
