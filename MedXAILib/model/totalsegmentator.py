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
from typing import Optional

from ..errors import ModelError
from .adapter import ModelAdapter
from .folders import (PREFIX, TASKS, dataset_model, download_hint, is_totalsegmentator, parse_task, task_folders,
                      task_structures, weights_dir)
from .nnunet import load_nnunet
from .preprocessing import Orientation, Preprocessing

__all__ = ["PREFIX", "TASKS", "weights_dir", "is_totalsegmentator", "task_folders", "load_totalsegmentator"]

#: Tasks TotalSegmentator predicts with tile step 0.8 (nnunet.py: "fewer overlapping tiles").
_COARSE_STEP = {"total", "total_v3", "total_mr"}
#: Tasks TotalSegmentator runs on a crop found by another model first.
_CROPPED = {"lung_vessels", "lung_vessels_LEGACY", "cerebral_bleed", "hip_implant", "pleural_pericard_effusion",
            "liver_vessels", "head_glands_cavities", "headneck_bones_vessels", "head_muscles", "headneck_muscles",
            "oculomotor_muscles", "lung_nodules", "kidney_cysts", "ventricle_parts", "liver_segments",
            "liver_segments_mr", "liver_lesions", "liver_lesions_mr", "craniofacial_structures", "abdominal_muscles",
            "teeth", "heartchambers_highres", "brain_structures", "coronary_arteries", "coronary_arteries_LEGACY",
            "aortic_sinuses"}


def load_totalsegmentator(source: str, structure: Optional[str] = None, folds=None,
                          checkpoint: str = "final") -> ModelAdapter:
    """The TotalSegmentator model of ``totalsegmentator:TASK`` (the part predicting `structure`), run as
    TotalSegmentator runs it: no test-time mirroring, its tile step, reoriented to RAS first."""
    task, mode = parse_task(source)
    root, origin = weights_dir()
    parts = task_folders(source)
    missing = [d for d, folder in parts if folder is None]
    present = [(d, folder) for d, folder in parts if folder is not None]
    chosen = None
    if len(parts) > 1 and structure is None:
        fast = f", or use its one-model mode totalsegmentator:{task}:fast" if "fast" in TASKS[task] else ""
        raise ModelError(f"TotalSegmentator task {task} is made of {len(parts)} models; name the structure to "
                         "explain to pick the one that predicts it (--target-structure; a cohort: one name in "
                         f"--structures; Slicer: the structure list){fast}")
    if len(parts) == 1:
        if missing:
            raise ModelError(f"TotalSegmentator's model for task {task} (Dataset{missing[0]:03d}) is not in {root} "
                             f"({origin}); {download_hint(task, mode)}")
        chosen = parts[0][1]
    else:
        labels = {name: dataset for name, (dataset, _) in task_structures(source).items()}
        if structure in labels:
            chosen = dict(present)[labels[structure]]
        elif missing:
            raise ModelError(f"no TotalSegmentator model of task {task} found in {root} ({origin}) predicts "
                             f"{structure!r}, and the parts {', '.join(f'Dataset{d:03d}' for d in missing)} are missing; "
                             f"{download_hint(task, mode)}")
        else:
            close = difflib.get_close_matches(structure, list(labels), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ModelError(f"TotalSegmentator task {task} predicts no structure {structure!r}{hint}")
    assert chosen is not None
    folder = dataset_model(chosen)
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
