"""Typed errors of MedXAILib.

Every error a user can cause derives from :class:`MedXAIError` and carries a message that says what
was wrong and what to do. Front ends (the CLI, the Slicer widget) show the message without a
traceback; the CLI maps :class:`MedXAIError` to exit code 2 and :class:`Cancelled` to 130.
"""

from __future__ import annotations

import re

__all__ = [
    "MedXAIError",
    "InputError",
    "GeometryError",
    "ModelError",
    "UntrustedModelError",
    "TargetError",
    "ParameterError",
    "ProvenanceError",
    "UnknownNameError",
    "Cancelled",
    "error_chain",
    "first_line",
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


class ProvenanceError(InputError):
    """A saved result names another model, image or target than the one it is used with."""


class UnknownNameError(MedXAIError, KeyError):
    """A registry name (method, statistic, generator) is unknown; the message suggests the closest."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Cancelled(Exception):
    """Long work was cancelled through its :class:`~MedXAILib.monitor.Monitor`; nothing was written."""


# A line that names an exception inside a serialized traceback ("builtins.RuntimeError: ...")
_CAUSE_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")
# MONAI's config errors end with a hint for its own debugger, which means nothing to MedXAI's users
_NOISE = re.compile(r"^set '_mode_=debug' to enter the debugging mode\.?$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # torch's messages set bold text for terminals


def _one_line(error: BaseException, limit: int) -> str:
    text = _ANSI.sub("", str(error)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _NOISE.match(line.strip())]
    if not lines:
        return ""
    if len(lines) > 1 and ("TorchScript interpreter" in lines[0] or lines[0].startswith("Traceback")):
        causes = [line for line in lines if _CAUSE_LINE.match(line)]
        if causes:  # a serialized traceback: its last exception line is the cause
            lines = [causes[-1].split(": ", 1)[1]]
    text = " ".join(" ".join(lines).split())
    return text if len(text) <= limit else text[:limit].rstrip() + " ..."


def first_line(error: BaseException, limit: int = 0) -> str:
    """The first line of an error's message (its type where it has none), cut to `limit` characters when
    given: what a user reads in a status line, never a trace (MedXAI's errors already say what to do)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line[:limit] if limit else line


def error_chain(error: BaseException, limit: int = 400) -> str:
    """An exception and every exception that caused it, on one line.

    The first link is the error's message; each cause (``__cause__``, or an implicit ``__context__``)
    follows as ``; caused by Type: message``. A message of several lines is joined into one, and a
    TorchScript interpreter error (a serialized traceback) is reduced to its last exception line.

    Args:
        error: the exception.
        limit: characters kept of each link's message.
    """
    links: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(links) < 8:
        seen.add(id(current))
        text = _one_line(current, limit)
        if not links:
            links.append(text or type(current).__name__)
        elif text and text not in links[-1]:  # a wrapper that repeats its cause adds nothing
            links.append(f"caused by {type(current).__name__}: {text}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "; ".join(links)
