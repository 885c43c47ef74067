"""The catalogue of attribution methods: metadata and parameter dataclasses, one module per family.

Everything here imports without torch, so a GUI can list methods and build forms before the heavy
dependencies are installed. Importing this package registers every method in ``METHODS``.
"""

from . import cam, game_theoretic, gradient, perturbation, propagation  # noqa: F401  (register)
from .gradient import BASELINES, InputXGradientParams, IntegratedGradientsParams, SaliencyParams

__all__ = ["BASELINES", "SaliencyParams", "InputXGradientParams", "IntegratedGradientsParams"]
