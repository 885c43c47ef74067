"""Library versions and the common provenance record of every result."""

from __future__ import annotations

import datetime as _dt
import functools
import platform
from importlib import metadata
from typing import Any

from ._version import __version__

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
        labels = _inner_argmax(output[0])  # the usual case: int64 labels, which bincount counts fastest
        if labels is None:
            small = torch.uint8 if output.shape[1] <= 256 else torch.int64  # a CT's labels: 1 byte a voxel
            labels = channel_argmax(output[0], small)
        counts = torch.bincount(labels.flatten(), minlength=output.shape[1])
        return {"voxels_per_class": [int(c) for c in counts]}


def channel_argmax(scores: Any, dtype: Any = None) -> Any:
    """``scores.argmax(0)`` of a (K, I, J, K) tensor (first maximum on ties; NaN never wins), as
    labels of `dtype` (default int64).

    One running maximum over the K channels: each step is a contiguous element-wise pass, where
    torch's strided reduction over the outer axis of a whole CT takes seconds on the CPU.
    """
    import torch

    labels = _inner_argmax(scores)
    if labels is not None:
        return labels if dtype is None else labels.to(dtype)
    best = scores[0]
    labels = torch.zeros(scores.shape[1:], dtype=dtype or torch.int64, device=scores.device)
    for k in range(1, scores.shape[0]):
        higher = scores[k] > best
        best = torch.where(higher, scores[k], best)
        labels.masked_fill_(higher, k)
    return labels


def _inner_argmax(scores: Any) -> Any:
    """``scores.argmax(0)`` (int64) when the channels are innermost in memory (the output of a
    channels-last pass: one contiguous reduction) and no voxel holds NaN; else None.

    max propagates NaN, so a finite sum of the maxima (one value per voxel) means no NaN, where argmax
    would differ; otherwise (or when that sum overflows) the caller's loop decides.
    """
    import torch

    if scores.shape[0] < 2 or scores.stride(0) != 1:
        return None
    maxima, labels = scores.max(0)
    return labels if bool(torch.isfinite(maxima.sum())) else None
