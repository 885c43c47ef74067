"""Turn a :class:`~MedXAILib.target.Target` into a differentiable scalar per batch item.

One reducer serves every method: it is resolved once against the model's output for the unperturbed
input (to fix the predicted class, the predicted structure, the connected component or the boundary
band), then applied to any batch of outputs. Resolved regions are constants, so perturbing the input
never moves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .errors import ModelError, TargetError
from .regions import boundary_band, component_at, predicted_mask
from .target import Target

__all__ = ["TargetScorer", "resolve_target", "margin", "check_finite_output"]


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
        if self.target.score == "margin":
            channel = margin(output, self.class_index, self.activation)
        else:
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


def margin(output: torch.Tensor, class_index: int, activation: str = "softmax") -> torch.Tensor:
    """Per-item (and per-voxel) logit margin of a class over its strongest competitor.

    ``z_c - max_{k != c} z_k`` over the channel axis 1 of `output` ((B, K) or (B, K, I, J, K)):
    positive where the class wins, zero on the decision boundary, negative where another class
    wins. The gradient flows into channel c and into the competitor that attains the maximum.
    Channels of a sigmoid (multi-label) model do not compete, and a one-channel output has no
    competitor; there the margin is the logit itself (against "not c" at logit 0).
    """
    channel = output[:, class_index]
    if activation == "sigmoid" or output.shape[1] == 1:
        return channel
    others = [k for k in range(output.shape[1]) if k != class_index]
    competitor = output[:, others].amax(dim=1)
    return channel - competitor


def resolve_target(
    target: Target,
    output: torch.Tensor,
    task: str,
    activation: str = "softmax",
    spacing: Optional[Sequence[float]] = None,
) -> TargetScorer:
    """Check `target` against the model output for the unperturbed input and fix its region.

    Args:
        target: what to explain.
        output: the model output for the unperturbed input, (1, K) or (1, K, I, J, K), on the
            input grid.
        task: ``"classification"`` or ``"segmentation"``.
        activation: ``"softmax"`` or ``"sigmoid"`` (how the predicted structure is read).
        spacing: the input grid's voxel spacing in mm (``ImageVolume.spacing``); needed by
            ``region="boundary"``, whose band is measured in mm (other regions ignore it).

    Raises:
        TargetError: class out of range, region unsuitable for the task, empty region, or a
            boundary target without a spacing.
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
        region = predicted_mask(output, index, activation)
        if not region.any():
            raise TargetError(f"the model predicts no voxel of class {index}; choose another class or region")
    elif target.region == "component":
        target.check_voxel(shape)
        region = component_at(predicted_mask(output, index, activation), target.voxel)
        if not region.any():
            raise TargetError(
                f"voxel {tuple(target.voxel)} is not predicted as class {index}, so it lies in no component"
            )
    elif target.region == "boundary":
        region = _boundary_region(target, output, index, activation, shape, spacing)
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


def _boundary_region(target: Target, output: torch.Tensor, index: int, activation: str,
                     shape: tuple[int, ...], spacing: Optional[Sequence[float]]) -> np.ndarray:
    if spacing is None:
        raise TargetError("a boundary target is measured in mm: pass the image spacing "
                          "(resolve_target(..., spacing=image.spacing))")
    if target.mask is not None:
        structure = target.checked_mask(shape)
        if not structure.any():
            raise TargetError("the boundary target's mask covers no voxel; its structure is empty")
    else:
        structure = predicted_mask(output, index, activation)
        if not structure.any():
            raise TargetError(f"the model predicts no voxel of class {index}, so it has no boundary; "
                              "choose another class or give the structure as a mask")
    if structure.all():
        raise TargetError(f"the structure fills the whole grid {tuple(shape)}, so it has no boundary "
                          "inside the image")
    inner, outer = target.band_mm
    band = boundary_band(structure, spacing, inner, outer)
    if not band.any():
        raise TargetError(f"a band of {inner:g} mm inside and {outer:g} mm outside holds no voxel centre at "
                          f"spacing {', '.join(f'{s:g}' for s in spacing)} mm (the nearest centres lie half "
                          "a voxel from the surface); widen band_mm")
    return band



def check_finite_output(output: torch.Tensor, scorer: TargetScorer) -> Optional[str]:
    """Refuse a model output that is NaN or infinite where the target reads it; describe it elsewhere.

    Returns:
        A warning when the output is undefined only outside the target region (perturbation methods
        and metrics may still meet it), else None.

    Raises:
        ModelError: undefined values in the scores the target uses, with how many and where.
    """
    with torch.no_grad():
        if bool(torch.isfinite(output[0].sum())):  # one reduction, no mask: the usual, finite case
            return None
        bad = ~torch.isfinite(output[0])
        if not bool(bad.any()):
            return None
        if scorer.task == "classification":
            raise ModelError(f"the model's output is not finite: {int(bad.sum())} of {bad.numel()} class scores are "
                             "NaN or infinite; MedXAI cannot explain undefined outputs (check the input's "
                             "intensities and the model's preprocessing)")
        voxels = bad.any(0)
        count = int(voxels.sum())
        where = ", ".join(f"{int(idx.min())}..{int(idx.max())}" for idx in torch.nonzero(voxels).T)
        used = int((voxels & (scorer.region > 0)).sum()) if scorer.region is not None else count
    share = f"{count} of {voxels.numel()} voxels ({100 * count / voxels.numel():.3g} %), within voxels {where}"
    if used:
        raise ModelError(f"the model's output is NaN or infinite on {share}, {used} of them in the target region; "
                         "MedXAI cannot explain undefined outputs (check the input's intensities and the model's "
                         "preprocessing)")
    return f"the model's output is NaN or infinite on {share}, outside the target region"


def _check_class(index: int, n_classes: int) -> None:
    if not 0 <= index < n_classes:
        raise TargetError(f"class {index} is out of range: the model has {n_classes} output classes (0..{n_classes - 1})")
