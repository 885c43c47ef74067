"""What every attribution method receives: the input, the model, the target and the services.

:meth:`MethodContext.gradient` is where gradient methods meet sliding-window inference: for a
segmenter that runs window by window it backpropagates one batch of windows at a time
(:func:`MedXAILib.model.window_gradient.window_backward`), exactly and with bounded memory, and
reports "window i of n" through the monitor; methods need no code of their own for it. The gradient
at the input itself also yields the model output (the blended windows), kept in ``output``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..model.layout import channels_last, to_channels_last
from ..monitor import Monitor
from ..scoring import TargetScorer
from ..volume import ImageVolume
from .modified_backprop import cancel_points

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
        output: the model output for `x` when the caller already has it (saves a forward pass);
            a windowed :meth:`gradient` at `x` fills it in from the windows it runs.
        cache: what a method computes once per run and reuses across its passes.
    """

    x: torch.Tensor
    model: torch.nn.Module
    scorer: TargetScorer
    image: ImageVolume
    monitor: Monitor
    generator: torch.Generator
    diagnostics: dict[str, Any] = field(default_factory=dict)
    output: Optional[torch.Tensor] = None
    cache: dict[str, Any] = field(default_factory=dict)

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        """Target score for a batch of inputs, shape (B,)."""
        return self.scorer(self.model(batch))

    @property
    def windowed(self) -> bool:
        """Whether the model runs window by window (then gradients go window batch by batch)."""
        return bool(getattr(self.model, "windowed", False))

    def input_output(self) -> torch.Tensor:
        """The model output for the input `x` (computed once, without autograd)."""
        if self.output is None:
            with torch.no_grad():
                self.output = self.model(self.x.detach())
        return self.output

    def window_progress(self, label: str = "") -> Callable[[int, int], None]:
        """A ``progress(done, total)`` for window loops: "<current message>: window i of n"."""

        def report(done: int, total: int) -> None:
            base = label or self.monitor.message.split(": window ")[0]
            where = f"window {done} of {total}"
            self.monitor.update(0.0, f"{base}: {where}" if base else where)

        return report

    def gradient(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d score / d input, score) for a batch; each batch item's gradient is its own."""
        if self.windowed:
            same = batch is self.x or (batch.shape == self.x.shape and torch.equal(batch, self.x))
            output = self.output if same else None
            with cancel_points(self.network, self.monitor.check):
                found = self.model.gradient(batch, self.scorer, output=output, keep_output=same,
                                            progress=self.window_progress())
            if same and self.output is None:  # the windows ran anyway: their blend is the output
                self.output = found.output
            return found.grad, found.scores
        batch = to_channels_last(batch.detach()).requires_grad_(True)
        with channels_last(self.network), torch.enable_grad():  # same values, faster convolutions
            scores = self.score(batch)
            (grads,) = torch.autograd.grad(scores.sum(), batch)
        return grads.contiguous(), scores.detach()

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
