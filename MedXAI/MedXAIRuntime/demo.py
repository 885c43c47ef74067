"""The built-in demo of the Model section: a CT + PET phantom and the shipped demo models.

"Load demo" (and the MedXAI entries of the Sample Data module) needs no download and no training:

1. ``python -m MedXAIRuntime.demo FOLDER`` (:func:`main`, run in a child process like every other
   background run) draws the held-out CT phantom with one liver lesion and its PET channel
   (:func:`MedXAILib.demo.demo_case`) and writes ``ct.nrrd``, ``pet.nrrd`` and ``lesion.nrrd`` (the
   true lesion) into FOLDER, with the JSON-lines progress and exit codes of
   :mod:`MedXAILib.runs.protocol`. It takes a few seconds and needs only numpy, SciPy and SimpleITK,
   which ship with Slicer: torch and MONAI are installed later, on the first Apply.
2. :func:`loadDemo` reads the files into the scene (CT, PET, the lesion as a segment) through the
   Bridge, reusing the nodes of an earlier load.
3. :func:`demoSettings` says what the widget puts into the parameter node: the input volume(s), the
   shipped model of the chosen :class:`DemoModel` (``Resources/Models``, packaged with the extension
   by MedXAI/CMakeLists.txt, stored as ``medxai-models:<file>``: :mod:`.modelPaths`) and the target.

The files are written once per folder; a second click loads them again without the child process.
Nothing here imports torch or MONAI.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

__all__ = ["DemoModel", "DEMO_MODELS", "DEFAULT_DEMO", "CT_WINDOW", "PET_WINDOW", "MNI_T1_FILE", "MNI_T1_URL",
           "MNI_T1_CHECKSUM", "demoCommand", "demoOutputs",
           "demoModelPath", "writeDemoInputs", "loadDemo", "demoSettings", "main"]

CT_WINDOW = (-160.0, 240.0)  # abdomen: W 400 / L 40
# The MNI ICBM152 2009a symmetric T1 template (1 mm, skull-stripped) as nilearn ships it
# (MedXAILib.demo.samples.mni reads the same file from an installed nilearn). The file is unchanged in
# nilearn's repository since 2021; the checksum is that of the file at the 0.14.0 tag and in its wheel.
MNI_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_T1_URL = f"https://raw.githubusercontent.com/nilearn/nilearn/0.14.0/nilearn/datasets/data/{MNI_T1_FILE}"
MNI_T1_CHECKSUM = "SHA256:421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"
PET_WINDOW = (0.0, 10.0)  # SUV
LESION_COLOUR = (0.10, 0.95, 0.25)  # the outline of the true lesion, green as in the demo's report
DEMO_ATTRIBUTE = "MedXAI.Demo"  # on the loaded nodes: "ct", "pet" or "lesion"


@dataclass(frozen=True)
class DemoModel:
    """One shipped demo model and how the demo sets the module up for it.

    Attributes:
        name: stored in the parameter node (``demoModel``).
        title: shown in the combo box and in Sample Data.
        description: the tooltip.
        modelFile: the spec in ``Resources/Models`` (its model card is beside it, ``<name>.md``).
        channels: the input volumes, in the model's channel order (``"CT"``, ``"PET"``).
        targetKind: the :class:`~MedXAIRuntime.targets.TargetKind` member name of the target.
        targetClass: the class explained.
    """

    name: str
    title: str
    description: str
    modelFile: str
    channels: tuple[str, ...]
    targetKind: str
    targetClass: int


DEMO_MODELS: dict[str, DemoModel] = {
    demo.name: demo
    for demo in (
        DemoModel(
            name="lesionClassifierPetCt",
            title="Liver lesion classifier, PET/CT (phantom)",
            description="A MONAI ResNet trained on synthetic PET/CT phantoms (model card: "
            "Resources/Models/lesion_classifier_petct.md). The demo loads a held-out phantom with one liver "
            "lesion as CT and PET; class 1 is 'lesion'. Demonstration only, not for patients.",
            modelFile="lesion_classifier_petct.json", channels=("CT", "PET"), targetKind="classScore",
            targetClass=1,
        ),
        DemoModel(
            name="lesionClassifierCt",
            title="Liver lesion classifier, CT (phantom)",
            description="The same classifier trained on the CT channel alone (model card: "
            "Resources/Models/lesion_classifier_ct.md); the latent counterfactual generator's autoencoder "
            "works on this one-channel input. Demonstration only, not for patients.",
            modelFile="lesion_classifier_ct.json", channels=("CT",), targetKind="classScore", targetClass=1,
        ),
        DemoModel(
            name="phantomSegmenter",
            title="Phantom segmenter, CT (organs and lesions)",
            description="A MONAI UNet segmenting the CT phantom into body, liver, spleen, kidney, lung, bone and "
            "lesion (model card: Resources/Models/phantom_segmenter.md); the target is the predicted lesion. "
            "Demonstration only, not for patients.",
            modelFile="phantom_segmenter.json", channels=("CT",), targetKind="predicted", targetClass=7,
        ),
    )
}
DEFAULT_DEMO = "lesionClassifierPetCt"


def demoCommand(python: Union[str, Path], outFolder: Union[str, Path]) -> list[str]:
    """``python -m MedXAIRuntime.demo FOLDER``: writes :func:`demoOutputs` into FOLDER."""
    return [str(python), "-m", "MedXAIRuntime.demo", str(outFolder)]


def demoOutputs(outFolder: Union[str, Path]) -> dict[str, Path]:
    """The files the demo writes: CT (HU), PET (SUV) and the true lesion (0/1) on the CT grid."""
    folder = Path(outFolder)
    return {"ct": folder / "ct.nrrd", "pet": folder / "pet.nrrd", "lesion": folder / "lesion.nrrd"}


def demoModelPath(demo: DemoModel) -> Path:
    """The shipped model file of `demo` (``Resources/Models`` of this extension)."""
    from .modelPaths import shippedModelsFolder

    return shippedModelsFolder() / demo.modelFile


# ------------------------------------------------------------------------------------------------
# The child process


def writeDemoInputs(outFolder: Union[str, Path], seed: int = 0, progress=None) -> dict[str, Path]:
    """Draw the demo's held-out CT + PET phantom and write :func:`demoOutputs` (each file atomically).

    Args:
        outFolder: created if missing.
        seed: picks the phantom (:func:`MedXAILib.demo.demo_case`).
        progress: optional ``progress(fraction, message)``.
    """
    import numpy as np

    from MedXAILib.demo import demo_case
    from MedXAILib.io import write_image

    report = progress or (lambda fraction, message: None)
    folder = Path(outFolder)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = demoOutputs(folder)
    report(0.0, "Drawing the CT and PET phantom")
    case = demo_case(seed)
    report(0.6, "Writing the CT, PET and lesion volumes")
    source = {"MedXAI.Source": f"MedXAI demo phantom, seed {seed}"}
    write_image(case.ct, outputs["ct"], metadata=source)
    write_image(case.image.with_array(case.image.array[1:], channel_names=["PET"]), outputs["pet"], metadata=source)
    write_image(case.image.with_array(case.lesion[np.newaxis].astype(np.float32), channel_names=["lesion"]),
                outputs["lesion"], metadata=source)
    report(1.0, "Done")
    return outputs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m MedXAIRuntime.demo FOLDER [SEED]``; returns the exit code of :mod:`MedXAILib.runs.protocol`."""
    from MedXAILib.errors import MedXAIError
    from MedXAILib.runs.protocol import EXIT_OK, interrupts_raise, json_lines, write_cancelled, write_done, write_error

    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2 or args[0].startswith("-"):
        return write_error("usage: python -m MedXAIRuntime.demo FOLDER [SEED]")
    with interrupts_raise():
        try:
            written = writeDemoInputs(args[0], int(args[1]) if len(args) > 1 else 0, json_lines())
        except KeyboardInterrupt:
            return write_cancelled()
        except (MedXAIError, OSError, ValueError) as error:
            return write_error(str(error))
    write_done(list(written.values()))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# In Slicer (Bridge: MRML nodes)


def _existing(scene: Any, className: str, role: str) -> Any:
    from MedXAIBridge.nodes import nodesByClass

    found = [node for node in nodesByClass(scene, className) if node.GetAttribute(DEMO_ATTRIBUTE) == role]
    return found[-1] if found else None


def _window(node: Any, window: tuple[float, float], colorNodeId: Optional[str] = None) -> None:
    display = node.GetDisplayNode()
    if display is None:
        return
    wasModifying = display.StartModify()
    if colorNodeId and node.GetScene().GetNodeByID(colorNodeId) is not None:
        display.SetAndObserveColorNodeID(colorNodeId)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(*window)
    display.EndModify(wasModifying)


def loadDemo(scene: Any, outFolder: Union[str, Path]) -> dict[str, Any]:
    """The demo's CT, PET and true lesion as nodes of `scene` (reusing those of an earlier load).

    Returns:
        ``{"ct": volume node, "pet": volume node, "lesion": segmentation node}``.

    Raises:
        InputError: a file is missing or damaged (run :func:`demoCommand` first).
    """
    from MedXAIBridge import segments, volumes
    from MedXAILib.io import read_image

    outputs = demoOutputs(outFolder)
    nodes: dict[str, Any] = {}
    for role, name, window, colour in (("ct", "MedXAI demo CT", CT_WINDOW, None),
                                       ("pet", "MedXAI demo PET", PET_WINDOW, "vtkMRMLPETProceduralColorNodePET-Heat")):
        node = _existing(scene, "vtkMRMLScalarVolumeNode", role)
        if node is None:
            node = volumes.volumeNodeFromImageVolume(scene, read_image(outputs[role]), name)
            node.SetAttribute(DEMO_ATTRIBUTE, role)
            _window(node, window, colour)
        nodes[role] = node
    lesion = _existing(scene, "vtkMRMLSegmentationNode", "lesion")
    if lesion is None:
        labels = read_image(outputs["lesion"]).array[0].round().astype("uint8")
        lesion = segments.segmentationNodeFromLabelMap(scene, labels, nodes["ct"], ["lesion (truth)"],
                                                       "MedXAI demo lesion (truth)")
        lesion.SetAttribute(DEMO_ATTRIBUTE, "lesion")
        lesion.GetSegmentation().GetNthSegment(0).SetColor(*LESION_COLOUR)
        lesion.CreateDefaultDisplayNodes()
        lesion.GetDisplayNode().SetVisibility2DFill(False)  # an outline: the relevance inside stays visible
    nodes["lesion"] = lesion
    return nodes


def demoSettings(demo: DemoModel, nodes: dict[str, Any]) -> dict[str, Any]:
    """Parameter-node values for `demo` on the loaded `nodes` (:func:`loadDemo`)."""
    from .modelPaths import SHIPPED_PREFIX

    inputs = [nodes[channel.lower()] for channel in demo.channels]
    return {
        "inputVolume": inputs[0],
        "inputVolume2": inputs[1] if len(inputs) > 1 else None,
        "modelPath": SHIPPED_PREFIX + demo.modelFile,
        "demoModel": demo.name,
        "targetKind": demo.targetKind,
        "targetClass": demo.targetClass,
    }


if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main())
