"""``totalsegmentator:TASK``: the nnU-Net folders TotalSegmentator downloaded, found where it keeps them.

TotalSegmentator (wasserth/TotalSegmentator) runs nnU-Net v2 models that it downloads on first use
into its weights folder: ``$TOTALSEG_WEIGHTS_PATH`` when set, else ``$TOTALSEG_HOME_DIR/nnunet/results``,
else ``~/.totalsegmentator/nnunet/results`` (``/tmp/.totalsegmentator`` when the home folder is ``/``),
as its ``config.get_weights_dir`` says. Each model is an nnU-Net results folder
``DatasetNNN_<name>/<Trainer>__nnUNetPlans__<configuration>/fold_0/checkpoint_final.pth``. A task
maps to one dataset id, or to several for the tasks split into parts (``total`` is five: organs,
vertebrae, cardiac, muscles, ribs); :data:`TASKS` holds the ids of TotalSegmentator 2.18
(``map_tasks_config.py``). Nothing is ever downloaded: a missing folder is an error that says how to
get it.

For a task made of several models, the structure to be explained selects the part whose
``dataset.json`` labels it. TotalSegmentator's own steps around nnU-Net are reproduced where they
change what the network sees: the image is reoriented to the closest RAS orientation (its
``as_closest_canonical``), the ``total``, ``total_v3`` and ``total_mr`` models use its tile step
0.8, and no model mirrors (TotalSegmentator predicts with ``tta=False``). Its resampling to the
model's spacing before nnU-Net (``scipy.ndimage.zoom``, order 3, corners aligned, rounded to integers)
is left to the nnU-Net plan's own resampling to the same spacing, and
its crop to a region found by another model (``lung_vessels`` ...) is not done: both are stated in
the model's notes.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Optional

from ..errors import ModelError
from .adapter import ModelAdapter
from .nnunet import label_layout, load_nnunet, model_folder
from .preprocessing import Orientation, Preprocessing

__all__ = ["PREFIX", "TASKS", "weights_dir", "is_totalsegmentator", "task_folders", "load_totalsegmentator"]

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
#: Tasks TotalSegmentator predicts with tile step 0.8 (nnunet.py: "fewer overlapping tiles").
_COARSE_STEP = {"total", "total_v3", "total_mr"}
#: Tasks TotalSegmentator runs on a crop found by another model first.
_CROPPED = {"lung_vessels", "lung_vessels_LEGACY", "cerebral_bleed", "hip_implant", "pleural_pericard_effusion",
            "liver_vessels", "head_glands_cavities", "headneck_bones_vessels", "head_muscles", "headneck_muscles",
            "oculomotor_muscles", "lung_nodules", "kidney_cysts", "ventricle_parts", "liver_segments",
            "liver_segments_mr", "liver_lesions", "liver_lesions_mr", "craniofacial_structures", "abdominal_muscles",
            "teeth", "heartchambers_highres", "brain_structures", "coronary_arteries", "coronary_arteries_LEGACY",
            "aortic_sinuses"}


def weights_dir() -> tuple[Path, str]:
    """TotalSegmentator's weights folder and where that came from (for messages)."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"]), "$TOTALSEG_WEIGHTS_PATH"
    if os.environ.get("TOTALSEG_HOME_DIR"):
        return Path(os.environ["TOTALSEG_HOME_DIR"]) / "nnunet" / "results", "$TOTALSEG_HOME_DIR/nnunet/results"
    home = Path("/tmp") if str(Path.home()) == "/" else Path.home()
    return home / ".totalsegmentator" / "nnunet" / "results", "TotalSegmentator's default folder"


def is_totalsegmentator(source: object) -> bool:
    return isinstance(source, str) and source.lower().startswith(PREFIX)


def _parse(source: str) -> tuple[str, str]:
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


def _get_hint(task: str, mode: str) -> str:
    fast = " --fast" if mode == "fast" else " --fastest" if mode == "fastest" else ""
    return (f"run TotalSegmentator once on any image with --task {task}{fast} (it downloads them), or "
            f"'totalseg_download_weights -t {task}', or point TOTALSEG_WEIGHTS_PATH / TOTALSEG_HOME_DIR at the "
            "folder that holds them")


def task_folders(source: str) -> list[tuple[int, Optional[Path]]]:
    """(dataset id, its model folder or None when missing) for every part of the task."""
    task, mode = _parse(source)
    root, _ = weights_dir()
    out: list[tuple[int, Optional[Path]]] = []
    for dataset in TASKS[task][mode]:
        found = sorted(root.glob(f"Dataset{dataset:03d}_*")) if root.is_dir() else []
        out.append((dataset, found[0] if found else None))
    return out


def load_totalsegmentator(source: str, structure: Optional[str] = None, folds=None,
                          checkpoint: str = "final") -> ModelAdapter:
    """The TotalSegmentator model of ``totalsegmentator:TASK`` (the part predicting `structure`), run as
    TotalSegmentator runs it: no test-time mirroring, its tile step, reoriented to RAS first."""
    task, mode = _parse(source)
    root, origin = weights_dir()
    parts = task_folders(source)
    missing = [d for d, folder in parts if folder is None]
    present = [(d, folder) for d, folder in parts if folder is not None]
    chosen = None
    if len(parts) > 1 and structure is None:
        raise ModelError(f"TotalSegmentator task {task} is made of {len(parts)} models; name the structure to "
                         "explain (--target-structure) to pick the one that predicts it")
    if len(parts) == 1:
        if missing:
            raise ModelError(f"TotalSegmentator's model for task {task} (Dataset{missing[0]:03d}) is not in {root} "
                             f"({origin}); {_get_hint(task, mode)}")
        chosen = parts[0][1]
    else:
        labels: dict[str, int] = {}
        for dataset, folder in present:
            assert folder is not None
            for name in label_layout(_dataset_json(folder))[0]:
                labels.setdefault(name, dataset)
        if structure in labels:
            chosen = dict(present)[labels[structure]]
        elif missing:
            raise ModelError(f"no TotalSegmentator model of task {task} found in {root} ({origin}) predicts "
                             f"{structure!r}, and the parts {', '.join(f'Dataset{d:03d}' for d in missing)} are missing; "
                             f"{_get_hint(task, mode)}")
        else:
            close = difflib.get_close_matches(structure, list(labels), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ModelError(f"TotalSegmentator task {task} predicts no structure {structure!r}{hint}")
    assert chosen is not None
    folder = _model(chosen)
    step = 0.8 if task in _COARSE_STEP else 0.5
    # TotalSegmentator predicts without test-time mirroring (tta=False throughout its python_api.py)
    adapter = load_nnunet(folder, folds=folds, checkpoint=checkpoint, mirroring=False, tile_step=step)
    # TotalSegmentator's as_closest_canonical before nnU-Net
    adapter.preprocessing = Preprocessing([Orientation("RAS"), *adapter.preprocessing.steps])
    adapter.model_id = f"totalsegmentator:{task}" + (f":{mode}" if mode != "default" else "") + f" ({chosen.name})"
    adapter.notes.append("TotalSegmentator resamples the image to the model's spacing (scipy zoom, order 3) and "
                         "rounds it to integers before nnU-Net; MedXAI lets the nnU-Net plan's resampling to the same "
                         "spacing do this, so values near structure borders can differ slightly from TotalSegmentator's")
    if task in _CROPPED:
        adapter.notes.append(f"TotalSegmentator runs task {task} on a crop around structures found by its 'total' "
                             "model; MedXAI runs the model on the whole image: crop the image the same way for the "
                             "prediction TotalSegmentator makes")
    adapter.pipeline.update(totalsegmentator={"task": task, "mode": mode, "dataset": chosen.name,
                                              "weights_dir": str(root), "tile_step_size": step})
    return adapter


def _model(dataset_folder: Path) -> Path:
    """The trained model in a dataset folder (its 3d_fullres one where there are several)."""
    models = [p for p in dataset_folder.iterdir() if p.is_dir() and p.name.count("__") == 2]
    return model_folder(dataset_folder, "3d_fullres" if len(models) > 1 else None)


def _dataset_json(folder: Path) -> dict:
    model = _model(folder)
    try:
        return json.loads((model / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {model / 'dataset.json'}: {exc}") from None
