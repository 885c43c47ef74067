"""Turn a :class:`~MedXAILib.target.Target` into a differentiable scalar per batch item.

One reducer serves every method: it is resolved once against the model's output for the unperturbed
input (to fix the predicted class, the predicted structure or the connected component), then applied
to any batch of outputs. Resolved regions are constants, so perturbing the input never moves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from .errors import TargetError
from .target import Target

__all__ = ["TargetScorer", "resolve_target"]


@dataclass
class TargetScorer:
    """Callable ``output (B, K[, I, J, K]) -> score (B,)`` for a resolved target."""

    target: Target
    class_index: int
    task: str
    activation: str
    region: Optional[torch.Tensor]  # (I, J, K) float {0, 1} for segmentation, None for classifiers
    region_voxels: int

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.target.score == "probability":
            output = torch.softmax(output, 1) if self.activation == "softmax" else torch.sigmoid(output)
        channel = output[:, self.class_index]
        if self.task == "classification":
            return channel
        region = self.region.to(channel.dtype)
        total = (channel * region).flatten(1).sum(1)
        return total / self.region_voxels if self.target.reduction == "mean" else total

    def describe(self) -> dict[str, Any]:
        out = self.target.describe()
        out.update(class_index=self.class_index, region_voxels=self.region_voxels)
        return out


def resolve_target(
    target: Target, output: torch.Tensor, task: str, activation: str = "softmax"
) -> TargetScorer:
    """Check `target` against the model output for the unperturbed input and fix its region.

    Args:
        target: what to explain.
        output: the model output for the unperturbed input, (1, K) or (1, K, I, J, K).
        task: ``"classification"`` or ``"segmentation"``.

    Raises:
        TargetError: class out of range, region unsuitable for the task, or empty region.
    """
    n_classes = int(output.shape[1])
    if task == "classification":
        if target.region != "class":
            raise TargetError(
                f"a classifier's target is a class score; region '{target.region}' needs a segmentation model"
            )
        index = int(output[0].argmax()) if target.class_index is None else int(target.class_index)
        _check_class(index, n_classes)
        return TargetScorer(target, index, task, activation, None, 1)

    if target.class_index is None:
        raise TargetError(
            f"a segmentation target needs a class (the model has {n_classes} output channels)"
        )
    index = int(target.class_index)
    _check_class(index, n_classes)
    shape = tuple(output.shape[2:])
    if target.region == "class":
        region = np.ones(shape, bool)
    elif target.region == "predicted":
        region = _predicted_mask(output, index, activation)
        if not region.any():
            raise TargetError(f"the model predicts no voxel of class {index}; choose another class or region")
    elif target.region == "component":
        target._check_voxel(shape)
        from scipy import ndimage

        predicted = _predicted_mask(output, index, activation)
        if not predicted[tuple(target.voxel)]:
            raise TargetError(
                f"voxel {tuple(target.voxel)} is not predicted as class {index}, so it lies in no component"
            )
        labels, _ = ndimage.label(predicted)
        region = labels == labels[tuple(target.voxel)]
    else:
        region = target.region_mask(shape)
    return TargetScorer(
        target,
        index,
        task,
        activation,
        torch.as_tensor(region, device=output.device),
        int(np.count_nonzero(region)),
    )


def _predicted_mask(output: torch.Tensor, index: int, activation: str) -> np.ndarray:
    with torch.no_grad():
        if activation == "sigmoid":
            mask = output[0, index] > 0
        else:
            mask = output[0].argmax(0) == index
    return mask.cpu().numpy()


def _check_class(index: int, n_classes: int) -> None:
    if not 0 <= index < n_classes:
        raise TargetError(f"class {index} is out of range: the model has {n_classes} output classes (0..{n_classes - 1})")
