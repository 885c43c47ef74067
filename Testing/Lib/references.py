"""Helpers for comparing MedXAI with independent reference implementations (Captum, MONAI, Quantus)."""

from __future__ import annotations

import numpy as np
import torch

from MedXAILib import Target
from MedXAILib.scoring import resolve_target


def relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| / max |reference|: the agreement measure of the reference tests."""
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def reference_function(adapter, volume, target):
    """MedXAI's bound model followed by its resolved target reducer, for a reference library to attribute.

    Both sides then explain the same function, so differences come from the attribution maths.
    Returns ``(forward, x)`` with ``x`` the (1, C, I, J, K) input tensor.
    """
    bound = adapter.bind(volume.affine, volume.shape)
    x = torch.as_tensor(volume.array).unsqueeze(0)
    with torch.no_grad():
        scorer = resolve_target(target, bound(x), adapter.task)
    return (lambda batch: scorer(bound(batch))), x


def reference_module(network: torch.nn.Module, forward) -> torch.nn.Module:
    """`forward` (batch -> scores, written independently of MedXAI's target code) as a module for a
    reference library, with the model's `network` registered so that Captum's ``model.apply`` reaches
    its layers."""

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, batch):
            return forward(batch)

    return Reference()


def linear_model(shape) -> tuple[torch.nn.Module, torch.Tensor]:
    """F(x) = (sum(w * x), 0) over a one-channel volume of `shape`, with weights w from -1 to 1: its
    gradient is w everywhere, so baseline-from-zeros attributions are exactly w * x (analytic cases).
    Returns the model and w, shaped (1, 1, I, J, K)."""
    weights = torch.linspace(-1, 1, int(np.prod(shape))).reshape(1, 1, *shape)

    class Linear(torch.nn.Module):
        def forward(self, x):
            return torch.stack([(x * weights).flatten(1).sum(1), torch.zeros(x.shape[0])], dim=1)

    return Linear(), weights


def masked_target(volume) -> Target:
    """Class 1 summed over a fixed box-shaped mask: a segmenter target no peer supports natively."""
    mask = np.zeros(volume.shape, bool)
    mask[4:12, 3:10, 2:8] = True
    return Target(class_index=1, region="mask", mask=mask)


class CallCounter:
    """Counts a network's forward calls (a forward pre-hook) while it is attached: passes over the windows,
    or the passes a method pays for (Testing/Lib/test_forward_passes.py, Testing/benchmarks/bench_scale.py)."""

    def __init__(self, network: torch.nn.Module):
        self.calls = 0
        self._handle = network.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()
