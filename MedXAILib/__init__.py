"""MedXAILib: explain MONAI/PyTorch models on CT, MRI and PET volumes.

The light core (volumes, targets, attributions, registry, parameters, monitor) imports without
torch, so a GUI can list methods before the heavy dependencies are installed; :func:`explain` and
the model loader import torch on first use.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .attribution import PROVENANCE_KEY, Attribution
from . import errors
from .errors import *  # noqa: F403  (the typed errors: every name of errors.__all__, exported below)
from .methods import METHODS
from .monitor import Monitor
from .params import ParamSpec, make_params, param, param_specs
from .registry import MethodInfo, Registry
from .target import Target
from .volume import ImageVolume

__all__ = [
    "__version__",
    "ImageVolume",
    "Target",
    "Attribution",
    "PROVENANCE_KEY",
    "Monitor",
    "METHODS",
    "MethodInfo",
    "Registry",
    "ParamSpec",
    "param",
    "param_specs",
    "make_params",
    "explain",  # noqa: F405  (loaded on first use by __getattr__, below)
    "load_model",  # noqa: F405
]
__all__ += errors.__all__

_LAZY = {"explain": ("MedXAILib.engine", "explain"), "load_model": ("MedXAILib.model", "load_model")}


def __getattr__(name: str) -> Any:
    # torch-dependent entry points load on first use
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'MedXAILib' has no attribute {name!r}")
