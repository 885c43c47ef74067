"""Library versions and the common provenance record of every result."""

from __future__ import annotations

import datetime as _dt
import functools
import platform
from importlib import metadata
from typing import Any

from . import __version__

__all__ = ["library_versions", "timestamp", "summarise_prediction"]

_LIBRARIES = ("torch", "monai", "numpy", "scipy", "SimpleITK", "captum")


def library_versions() -> dict[str, str]:
    """Versions of MedXAI, Python and the numerical libraries (``"absent"`` when not installed)."""
    return dict(_library_versions())


@functools.lru_cache(maxsize=1)  # reading package metadata costs ~10 ms; versions do not change
def _library_versions() -> dict[str, str]:
    versions = {"medxai": __version__, "python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def summarise_prediction(output: Any, task: str, class_names: Any) -> dict[str, Any]:
    """A small, JSON-friendly summary of the model's prediction for the unperturbed input."""
    import torch

    with torch.no_grad():
        if task == "classification":
            logits = output[0].float()
            probs = torch.softmax(logits, 0)
            top = int(logits.argmax())
            return {
                "predicted_class": top,
                "predicted_name": class_names[top] if class_names and top < len(class_names) else None,
                "logits": [round(float(v), 6) for v in logits],
                "softmax": [round(float(v), 6) for v in probs],
            }
        labels = output[0].argmax(0)
        counts = torch.bincount(labels.flatten(), minlength=output.shape[1])
        return {"voxels_per_class": [int(c) for c in counts]}
