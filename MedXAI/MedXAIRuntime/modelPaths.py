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
stored form; MedXAILib always receives the resolved path. Plain Python (pathlib), no Slicer.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Optional

__all__ = ["SHIPPED_PREFIX", "shippedModelsFolder", "storedModelPath", "resolveModelPath"]

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
    if not text:
        return ""
    if text.startswith(SHIPPED_PREFIX):
        return str((shippedFolder or shippedModelsFolder()) / Path(*PurePosixPath(text[len(SHIPPED_PREFIX):]).parts))
    if Path(text).is_absolute():
        return text
    folder = _usableFolder(sceneDirectory)
    return str(folder / Path(*PurePosixPath(text).parts)) if folder is not None else text
