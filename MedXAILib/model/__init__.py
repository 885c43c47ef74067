"""Model loading and the adapter that runs any model on an :class:`~MedXAILib.volume.ImageVolume`.

The public names are imported on first use (PEP 562), so that :mod:`.folders` (which model folders are
nnU-Net or TotalSegmentator models, from their files alone) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ModelAdapter", "BoundModel", "Grid", "Preprocessing", "load_model", "resolve_device", "save_spec_model"]

_HOMES = {"ModelAdapter": "adapter", "BoundModel": "adapter", "resolve_device": "adapter", "load_model": "loading",
          "save_spec_model": "loading", "Grid": "preprocessing", "Preprocessing": "preprocessing"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
