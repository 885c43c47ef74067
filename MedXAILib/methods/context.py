"""What every attribution method receives: the input, the model, the target and the services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..monitor import Monitor
from ..scoring import TargetScorer
from ..volume import ImageVolume

__all__ = ["MethodContext"]


@dataclass
class MethodContext:
    """Inputs and services for one attribution run.

    Attributes:
        x: the input (1, C, I, J, K) on the model's device.
        model: differentiable function input -> output on the input grid.
        scorer: output -> target score (B,).
        image: the input volume (geometry, spacing for mm-based parameters).
        monitor: progress and cancel.
        generator: seeded torch generator (CPU) for any randomness.
        diagnostics: method-specific numbers recorded in the provenance.
    """

    x: torch.Tensor
    model: torch.nn.Module
    scorer: TargetScorer
    image: ImageVolume
    monitor: Monitor
    generator: torch.Generator
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        """Target score for a batch of inputs, shape (B,)."""
        return self.scorer(self.model(batch))

    def gradient(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d score / d input, score) for a batch; each batch item's gradient is its own."""
        batch = batch.detach().requires_grad_(True)
        with torch.enable_grad():
            scores = self.score(batch)
            (grads,) = torch.autograd.grad(scores.sum(), batch)
        return grads, scores.detach()

    @property
    def network(self) -> torch.nn.Module:
        """The wrapped network itself (for layer hooks)."""
        return self.model.adapter.network

    def network_input(self, batch: torch.Tensor | None = None) -> torch.Tensor:
        """`batch` (default: the input) after the model's preprocessing, as the network sees it."""
        batch = self.x if batch is None else batch
        return self.model.adapter.preprocessing.apply(batch, self.model.grids)

    def to_input_grid(self, volume: torch.Tensor) -> torch.Tensor:
        """Map a (B, C, ...) tensor on the network's input grid back onto the image grid."""
        return self.model.adapter.preprocessing.invert_output(volume, self.model.grids)

    def warn(self, message: str) -> None:
        """Record a caveat about this result (shown by the CLI and kept in the provenance)."""
        self.diagnostics.setdefault("warnings", []).append(message)

    @property
    def spacing(self) -> np.ndarray:
        return self.image.spacing
