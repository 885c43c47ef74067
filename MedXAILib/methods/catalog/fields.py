"""Parameter fields that several parameter dataclasses declare alike (methods and metrics).

Each function returns one :func:`MedXAILib.params.param` field with its default, range, unit and
help, so a setting that means the same everywhere is written once. A dataclass still lists its
fields itself, in its own order: the Slicer form and the CLI show them in that order.
"""

from __future__ import annotations

from typing import Any

from ...params import param

__all__ = ["PERTURBED_BATCH_HELP", "blur_sigma_field", "batch_size_field"]

PERTURBED_BATCH_HELP = "Perturbed inputs evaluated per forward pass (lower it if memory runs out)."


def blur_sigma_field() -> Any:
    """``blur_sigma_mm``: the Gaussian blur (mm) of the ``blur`` baseline (``perturbation_baseline``)."""
    return param(8.0, range=(0.0, None), unit="mm", help="Blur width for the 'blur' baseline.")


def batch_size_field(help: str = PERTURBED_BATCH_HELP) -> Any:
    """``batch_size``: inputs evaluated per forward (or forward/backward) pass; `help` says which inputs."""
    return param(8, range=(1, 1024), help=help)
