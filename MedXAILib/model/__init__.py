"""Model loading and the adapter that runs any model on an :class:`~MedXAILib.volume.ImageVolume`."""

from .adapter import BoundModel, ModelAdapter, resolve_device
from .loading import load_model, save_spec_model
from .preprocessing import Grid, Preprocessing

__all__ = ["ModelAdapter", "BoundModel", "Grid", "Preprocessing", "load_model", "resolve_device", "save_spec_model"]
