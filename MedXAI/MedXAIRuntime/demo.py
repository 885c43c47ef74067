"""The built-in demo of the Model section: a synthetic CT phantom and a tiny lesion classifier.

``python -m MedXAILib demo --out FOLDER`` (MedXAILib.demo) trains the classifier on synthetic
phantoms in a few seconds, without any download, and writes the phantom (``image.nrrd``), its lesion
mask and the model spec (``demo_classifier.json``). The widget runs it in a subprocess, loads the
phantom as the input volume and selects the model, with class 1 ("lesion") as the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

__all__ = ["DemoModel", "DEMO_MODELS", "demoCommand", "demoOutputs"]


@dataclass(frozen=True)
class DemoModel:
    name: str
    title: str
    description: str
    targetClass: int


DEMO_MODELS: dict[str, DemoModel] = {
    "tinyLesionClassifier": DemoModel(
        name="tinyLesionClassifier",
        title="Tiny lesion classifier (synthetic CT)",
        description="A small MONAI classifier trained on the spot (a few seconds, no download) to tell "
        "synthetic CT phantoms with a bright spherical lesion from phantoms without one. "
        "The phantom with a lesion is loaded as the input; class 1 is 'lesion'.",
        targetClass=1,
    ),
}


def demoCommand(python: Union[str, Path], outFolder: Union[str, Path]) -> list[str]:
    """``python -m MedXAILib demo --out FOLDER --quiet``."""
    return [str(python), "-m", "MedXAILib", "demo", f"--out={outFolder}", "--quiet"]


def demoOutputs(outFolder: Union[str, Path]) -> dict[str, Path]:
    """The files the demo writes: the input image, the lesion mask and the model spec."""
    folder = Path(outFolder)
    return {
        "image": folder / "image.nrrd",
        "mask": folder / "lesion_mask.nrrd",
        "model": folder / "demo_classifier.json",
    }
