"""Typed errors of MedXAILib.

Every error a user can cause derives from :class:`MedXAIError` and carries a message that says what
was wrong and what to do. Front ends (the CLI, the Slicer widget) show the message without a
traceback; the CLI maps :class:`MedXAIError` to exit code 2 and :class:`Cancelled` to 130.
"""

from __future__ import annotations

__all__ = [
    "MedXAIError",
    "InputError",
    "GeometryError",
    "ModelError",
    "UntrustedModelError",
    "TargetError",
    "ParameterError",
    "UnknownNameError",
    "Cancelled",
]


class MedXAIError(Exception):
    """Base class of every error caused by the caller's input (not by a bug)."""


class InputError(MedXAIError):
    """An image or mask cannot be read or is unsuitable (dimension, non-finite voxels, ...)."""


class GeometryError(InputError):
    """Two volumes cannot be brought onto one grid (no overlap, inconsistent affine, ...)."""


class ModelError(MedXAIError):
    """A model file or folder cannot be loaded, or the model does not accept the input."""


class UntrustedModelError(ModelError):
    """A model file or bundle would execute code that the caller has not trusted."""


class TargetError(MedXAIError):
    """The explanation target is invalid for the model output (class out of range, empty region)."""


class ParameterError(MedXAIError):
    """A method parameter is unknown, of the wrong type or outside its range."""


class UnknownNameError(MedXAIError, KeyError):
    """A registry name (method, statistic, generator) is unknown; the message suggests the closest."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Cancelled(Exception):
    """Long work was cancelled through its :class:`~MedXAILib.monitor.Monitor`; nothing was written."""
