"""Model paths as the parameter node stores them: relative to the scene where possible.

A scene saved with an absolute model path loses its model as soon as the scene folder moves to another
place or machine. So the parameter node keeps (:func:`storedModelPath`):

- a shipped demo model (``Resources/Models`` of this extension) as ``medxai-models:<file>``: the
  extension's folder differs between machines and Slicer versions;
- a model inside the scene's folder (``vtkMRMLScene.GetRootDirectory()``, the folder of the loaded
  or saved ``.mrml``) relative to that folder, as Slicer's storage nodes keep their files;
- any other model as an absolute path.

:func:`resolveModelPath` turns every form back into an absolute path against the scene's current
folder, so a scene folder copied with its models works wherever it lands. Only the module uses the
stored form; MedXAILib always receives the resolved path. ``totalsegmentator:TASK`` is kept as it is.

:func:`describeModel` tells, from the files alone, whether a model is an nnU-Net v2 folder (a trained-model
folder, a results folder ``DatasetXXX_Name/`` holding ``Trainer__Plans__Configuration/`` folders, or one
fold's checkpoint) or a TotalSegmentator task, with its configurations, folds and class names, so the
module can offer the nnU-Net options and name the target structure before torch is installed;
:func:`modelOptions` turns those choices into a run request's ``model_options``. The file checks are
MedXAILib's own (:mod:`MedXAILib.model.folders`, which imports without torch).
Plain Python, no Slicer, no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from MedXAILib.errors import ModelError
from MedXAILib.model import folders

__all__ = ["SHIPPED_PREFIX", "shippedModelsFolder", "storedModelPath", "resolveModelPath", "CHECKPOINTS",
           "NNUNET_FOLDER", "NNUNET_CHECKPOINT", "TOTALSEGMENTATOR", "ModelInfo", "describeModel", "isNnunetModel",
           "parseFolds", "modelOptions"]

#: Prefix of a model path inside this extension's ``Resources/Models``.
SHIPPED_PREFIX = "medxai-models:"


def shippedModelsFolder() -> Path:
    """``Resources/Models`` beside the MedXAILib package.

    Installed, that is ``qt-scripted-modules/Resources/Models`` (MedXAI/CMakeLists.txt installs the
    demo models there); in the source tree, the repository's ``Resources/Models``. MedXAILib finds its
    default models the same way (``MedXAILib.demo.training.demo_models.default_model_dir``,
    ``MedXAILib.counterfactual.autoencoder.default_autoencoder_path``).
    """
    from .process import libraryRoot

    return libraryRoot() / "Resources" / "Models"


def _usableFolder(folder: Optional[str]) -> Optional[Path]:
    if not folder:
        return None
    path = Path(folder)
    return path.resolve() if path.is_absolute() else None  # "." (a scene being saved) says nothing


def _inside(path: Path, folder: Path) -> Optional[PurePosixPath]:
    try:
        return PurePosixPath(path.relative_to(folder).as_posix())
    except ValueError:
        return None


def storedModelPath(path: str, sceneDirectory: Optional[str] = None, shippedFolder: Optional[Path] = None) -> str:
    """The form of `path` to keep in the parameter node (see the module docstring).

    Args:
        path: an absolute path (or an already stored form, returned as it is).
        sceneDirectory: the scene's root directory; None or a relative one: no scene-relative form.
        shippedFolder: the shipped models' folder (default :func:`shippedModelsFolder`).
    """
    text = str(path).strip()
    if not text or text.startswith(SHIPPED_PREFIX) or not Path(text).is_absolute():
        return text
    absolute = Path(os.path.abspath(text))
    resolved = absolute.resolve()
    shipped = (shippedFolder or shippedModelsFolder()).resolve()
    relative = _inside(resolved, shipped)
    if relative is not None and str(relative) != ".":
        return SHIPPED_PREFIX + str(relative)
    folder = _usableFolder(sceneDirectory)
    if folder is not None:
        relative = _inside(resolved, folder)
        if relative is not None and str(relative) != ".":
            return str(relative)
    return text


def resolveModelPath(stored: str, sceneDirectory: Optional[str] = None, shippedFolder: Optional[Path] = None) -> str:
    """The absolute path of a stored model path ("" stays "").

    A relative path is taken relative to `sceneDirectory` (unchanged when there is none: MedXAILib
    then reports the missing file with the path the user sees).
    """
    text = str(stored or "").strip()
    if not text or folders.is_totalsegmentator(text):  # totalsegmentator:TASK names a task, not a file
        return text
    if text.startswith(SHIPPED_PREFIX):
        return str((shippedFolder or shippedModelsFolder()) / Path(*PurePosixPath(text[len(SHIPPED_PREFIX):]).parts))
    if Path(text).is_absolute():
        return text
    folder = _usableFolder(sceneDirectory)
    return str(folder / Path(*PurePosixPath(text).parts)) if folder is not None else text


# ------------------------------------------------------------------------------------------------
# nnU-Net v2 folders and TotalSegmentator tasks, recognised without torch (MedXAILib.model.folders)

#: ``nnunetCheckpoint`` choices and their files.
CHECKPOINTS = folders.CHECKPOINTS
#: :attr:`ModelInfo.kind` values: an nnU-Net model or results folder, one fold's checkpoint file, a TotalSegmentator task.
NNUNET_FOLDER, NNUNET_CHECKPOINT, TOTALSEGMENTATOR = "nnunetFolder", "nnunetCheckpoint", "totalSegmentator"


@dataclass(frozen=True)
class ModelInfo:
    """What the module shows about a model before loading it.

    Attributes:
        kind: ``""`` (a model MedXAILib loads without nnU-Net options), :data:`NNUNET_FOLDER`,
            :data:`NNUNET_CHECKPOINT` or :data:`TOTALSEGMENTATOR`.
        configurations: the configurations of a results folder ``DatasetXXX_Name/`` holding several
            ``Trainer__Plans__Configuration`` folders (one must be chosen); empty otherwise.
        folds: the folds with a checkpoint in the (chosen) model folder, e.g. ``("0", "1", "all")``.
        structures: ``(class name, output channel)`` from ``dataset.json``; for a TotalSegmentator task made
            of several models, each name with its channel in the model that predicts it.
        note: why something is missing (TotalSegmentator's weights not found ...), or "".
        parts: the models a TotalSegmentator task is made of (``total``: 5); the structure picks one.
    """

    kind: str = ""
    configurations: tuple[str, ...] = ()
    folds: tuple[str, ...] = ()
    structures: tuple[tuple[str, int], ...] = ()
    note: str = ""
    parts: int = 1

    @property
    def isNnunet(self) -> bool:
        return bool(self.kind)

    def classIndex(self, structure: str) -> Optional[int]:
        """The output channel of `structure` (exact name first, then case-insensitive), or None."""
        for name, index in self.structures:
            if name == structure:
                return index
        lowered = str(structure).lower()
        return next((index for name, index in self.structures if name.lower() == lowered), None)


def _classNames(model: Path) -> list[str]:
    """The class names of a trained model's ``dataset.json``; [] where it cannot be read (the loader says why)."""
    try:
        return folders.label_layout(folders.read_dataset_json(model))[0]
    except (ModelError, TypeError, ValueError, IndexError):
        return []


def _chosenModel(folder: Path, configuration: str = "") -> Optional[Path]:
    """The model folder at `folder` (a results folder: the one of `configuration`, or the only one)."""
    try:
        return folders.model_folder(folder, configuration or None)
    except ModelError:
        return None


def _nnunetInfo(folder: Path, configuration: str) -> ModelInfo:
    configurations: tuple[str, ...] = ()
    if not folders.is_model_folder(folder):
        configurations = tuple(dict.fromkeys(folders.configuration_of(m) for m in folders.trained_models(folder)))
    model = _chosenModel(folder, configuration) or _chosenModel(folder, "3d_fullres") \
        or next(iter(folders.trained_models(folder)), None)
    if model is None:
        return ModelInfo(NNUNET_FOLDER, configurations)
    return ModelInfo(NNUNET_FOLDER, configurations if len(configurations) > 1 else (),
                     tuple(folders.present_folds(model)), tuple((name, i) for i, name in enumerate(_classNames(model))))


def _totalSegmentatorInfo(text: str) -> ModelInfo:
    try:
        parts = folders.task_folders(text.strip())
    except ModelError:  # an unknown task or mode: not a model the module can offer options for
        return ModelInfo()
    missing = [f"Dataset{dataset:03d}" for dataset, folder in parts if folder is None]
    note = f"TotalSegmentator's {', '.join(missing)} not found in {folders.weights_dir()[0]}" if missing else ""
    try:
        structures = {name: index for name, (_, index) in folders.task_structures(text.strip()).items()}
        present = [folders.dataset_model(folder) for _, folder in parts if folder is not None]
    except ModelError as error:
        return ModelInfo(TOTALSEGMENTATOR, note=str(error), parts=len(parts))
    found = tuple(folders.present_folds(present[0])) if present else ()
    return ModelInfo(TOTALSEGMENTATOR, (), found, tuple(structures.items()), note, len(parts))


def describeModel(path: str, configuration: str = "") -> ModelInfo:
    """:class:`ModelInfo` of a resolved model path or ``totalsegmentator:TASK`` (files only; no torch)."""
    text = str(path or "").strip()
    if not text:
        return ModelInfo()
    if folders.is_totalsegmentator(text):
        return _totalSegmentatorInfo(text)
    location = folders.checkpoint_location(Path(text)) if Path(text).is_file() else None
    if location is not None:
        folder, fold, _ = location
        return ModelInfo(NNUNET_CHECKPOINT, (), (fold,), tuple((name, i) for i, name in enumerate(_classNames(folder))))
    if folders.is_nnunet_folder(Path(text)):
        return _nnunetInfo(Path(text), configuration)
    return ModelInfo()


def isNnunetModel(path: str) -> bool:
    """Whether loading `path` needs nnU-Net's network package (``dynamic_network_architectures``)."""
    text = str(path or "").strip()
    return bool(text) and describeModel(text).isNnunet


def parseFolds(text: str) -> Optional[list]:
    """``""`` -> None (every fold present); ``"0, 1"`` -> ``[0, 1]``; ``"all"`` -> ``["all"]`` (fold_all).

    Raises:
        InputError: anything else (one line, as ``medxai --folds`` says it).
    """
    from MedXAILib.errors import InputError

    if not str(text or "").replace(" ", "").strip(","):
        return None
    try:
        return folders.parse_folds(text)
    except ValueError as error:
        raise InputError(f"nnU-Net folds: {error}") from None


def modelOptions(info: ModelInfo, folds: str = "", configuration: str = "", checkpoint: str = "final",
                 mirroring: bool = True, structure: str = "") -> dict:
    """The ``model_options`` of a run request (``MedXAILib.load_model`` keywords, JSON values) for the
    module's nnU-Net choices; only what differs from the loader's defaults, and only what applies to
    `info`'s kind (a fold's checkpoint file fixes its fold and checkpoint; TotalSegmentator fixes its
    configuration and never mirrors; `structure` picks the part of a TotalSegmentator task).

    Raises:
        InputError: `folds` or `checkpoint` cannot be read.
    """
    from MedXAILib.errors import InputError

    options: dict = {}
    if info.kind in (NNUNET_FOLDER, TOTALSEGMENTATOR):
        chosen = parseFolds(folds)
        if chosen is not None:
            options["folds"] = chosen
        if checkpoint not in CHECKPOINTS:
            raise InputError(f"the nnU-Net checkpoint is {' or '.join(CHECKPOINTS)}; got {checkpoint!r}")
        if checkpoint != "final":
            options["checkpoint"] = checkpoint
    if info.kind == NNUNET_FOLDER and configuration and configuration in info.configurations:
        options["configuration"] = configuration
    if info.kind in (NNUNET_FOLDER, NNUNET_CHECKPOINT) and not mirroring:
        options["mirroring"] = False
    if info.kind == TOTALSEGMENTATOR and info.parts > 1 and structure:  # only where it picks a model:
        options["structure"] = structure  # it is part of the model's cache key
    return options
