"""``gradient_search``: the counterfactual of Wachter et al. (2017) by Adam on the image.

Reference: S. Wachter, B. Mittelstadt, C. Russell, "Counterfactual explanations without opening the
black box: automated decisions and the GDPR", Harvard Journal of Law & Technology 31(2), 2018,
arXiv:1711.00399.

It minimises, over the counterfactual x' = x + delta,

    goal_weight * L_goal(model(x')) + distance_weight * mean|delta / s| + tv_weight * mean TV(delta / s)

(or the mean squared delta for ``distance="l2"``), with s the intensity range of each channel, x' kept
inside the intensity bounds and, with a region, delta = 0 outside it. As in Wachter et al., the goal
weight grows while the goal is not reached (here: when its loss stalls), and the search stops at the
first iterate that reaches the goal.

The L1 term is applied as a proximal (soft-threshold) step in Adam's own per-voxel metric, not as a
subgradient: a voxel moves only when the smooth part of the gradient there outweighs the L1 weight,
so voxels the model does not look at stay exactly unchanged instead of jittering around zero.

Two defaults keep the change where the decision is made (measured on the demo by
``Testing/benchmarks/counterfactual_defaults.py``, numbers in docs/user-guide.md):

- ``goal_weight=0`` calibrates the goal weight on the first step so that only the voxels with the
  largest goal gradient outweigh the L1 weight; the weight then grows and brings in more voxels only
  while the goal needs them. A fixed weight of 1 against a mean L1 over a million voxels let Adam,
  which moves every coordinate with a non-zero gradient by about ``step_size``, change every voxel
  of the image in the first step.
- ``smooth_mm=3`` makes the change through a Gaussian (delta = G * u, the L1 acting on u): the search
  then follows the gradient that is coherent over a region, and a voxel-to-voxel checkerboard of the
  gradient cancels, instead of placing isolated, implausible spikes wherever the gradient peaks.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .catalog import GradientSearchParams
from .goals import CounterfactualContext, GoalSearch

__all__ = ["gradient_search", "total_variation"]

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-12
_TV_EPS = 1e-3  # Charbonnier smoothing of |difference| (in units of the intensity range)


def total_variation(delta: torch.Tensor, eps: float = _TV_EPS) -> torch.Tensor:
    """Anisotropic, Charbonnier-smoothed total variation of a (B, C, I, J, K) tensor (a sum).

    Each forward difference d along I, J and K contributes sqrt(d^2 + eps^2) - eps, which is |d|
    away from zero and differentiable at zero (Rudin, Osher & Fatemi 1992, smoothed).
    """
    total = delta.new_zeros(())
    for axis in (2, 3, 4):
        if delta.shape[axis] > 1:
            d = torch.diff(delta, dim=axis)
            total = total + (torch.sqrt(d * d + eps * eps) - eps).sum()
    return total


def _calibrated_goal_weight(ctx: CounterfactualContext, output: torch.Tensor, u: torch.Tensor,
                            l1_weight: float) -> float:
    """The goal weight at which the voxels with the largest goal gradient just outweigh the L1 weight.

    The proximal step moves a voxel only where goal_weight * |d goal / d u| exceeds the L1 weight,
    so starting here moves the few voxels the goal depends on most; the weight then grows (Wachter
    et al.'s schedule) and brings in the next most important voxels only while the goal needs them.
    """
    (grad,) = torch.autograd.grad(ctx.goal.loss(output), u, retain_graph=True)
    if ctx.region is not None:
        grad = grad * ctx.region.to(grad.dtype)
    largest = float(grad.abs().max())
    return l1_weight / largest * 1.01 if largest > 0 else 1.0


class _Blur:
    """Separable Gaussian of standard deviation `sigma_mm` per axis (peak 1, cut at 3 sigma), per channel.

    The change is parametrised as delta = G * u: a sparse u then gives a few smooth blobs instead of
    single voxels, and a gradient that alternates from voxel to voxel (the checkerboard of strided
    convolutions) cancels in G's adjoint, so the search follows the gradient that is coherent over a
    region (the lesion) rather than voxel-level noise.
    """

    def __init__(self, sigma_mm: float, spacing: Any, like: torch.Tensor) -> None:
        self.kernels = []
        for axis, step in enumerate(spacing):
            sigma = float(sigma_mm) / float(step)
            radius = max(int(math.ceil(3.0 * sigma)), 1)
            offsets = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
            kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = kernel.numel()
            self.kernels.append((kernel.view(shape), radius, axis))

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        batch, channels = u.shape[:2]
        out = u.reshape(batch * channels, 1, *u.shape[2:])
        for kernel, radius, axis in self.kernels:
            padding = [0, 0, 0]
            padding[axis] = radius
            out = torch.nn.functional.conv3d(out, kernel, padding=tuple(padding))
        return out.reshape(u.shape)


def gradient_search(ctx: CounterfactualContext, params: GradientSearchParams) -> torch.Tensor:
    """Search for the nearest input that reaches the goal (Wachter et al. 2017), by proximal Adam.

    Args:
        ctx: input, bound model, resolved goal, bounds, region, monitor.
        params: see :class:`~MedXAILib.counterfactual.catalog.GradientSearchParams`.

    Returns:
        The counterfactual input (1, C, I, J, K), inside the bounds, equal to the input outside the
        region; the first iterate that reached the goal, or the last one after ``max_steps``.
    """
    x0 = ctx.x
    scale = ctx.scale
    n = x0.numel()
    allowed = None if ctx.region is None else ctx.region.to(x0.dtype).expand_as(x0)
    blur = _Blur(params.smooth_mm, ctx.image.spacing, x0) if params.smooth_mm > 0 else None
    u = torch.zeros_like(x0)  # delta / scale, or with smoothing its sources (delta / scale = G * u): optimised
    m, v = torch.zeros_like(x0), torch.zeros_like(x0)
    search = GoalSearch(ctx, params)
    x = x0
    for step in range(params.max_steps + 1):
        u.requires_grad_(True)
        with torch.enable_grad():
            x = ctx.clamp(x0 + (blur(u) if blur is not None else u) * scale)
            output = ctx.model(x)
            if search.check(step, output):
                break
            if step == 0 and params.goal_weight == 0:  # calibrated (an L1 search) or 1
                search.weight.value = (_calibrated_goal_weight(ctx, output, u, params.distance_weight / n)
                                       if params.distance == "l1" and params.distance_weight > 0 else 1.0)
            smooth = search.weighted_goal_loss(output)
            if params.tv_weight > 0:
                smooth = smooth + params.tv_weight * total_variation(u) / n
            if params.distance == "l2" and params.distance_weight > 0:
                smooth = smooth + params.distance_weight * (u * u).sum() / n
            (grad,) = torch.autograd.grad(smooth, u)
        t = step + 1
        u = u.detach()
        if allowed is not None:
            grad = grad * allowed
        # Adam (Kingma & Ba 2015) on the smooth part ...
        m.mul_(_BETA1).add_(grad, alpha=1 - _BETA1)
        v.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
        denom = (v / (1 - _BETA2 ** t)).sqrt_().add_(_ADAM_EPS)
        u = u - params.step_size * (m / (1 - _BETA1 ** t)) / denom
        # ... then the L1 proximal step in Adam's metric diag(denom / step_size)
        if params.distance == "l1" and params.distance_weight > 0:
            threshold = params.step_size * params.distance_weight / n / denom
            u = torch.sign(u) * torch.relu(u.abs() - threshold)
        if blur is None:  # project onto the bounds (and the region) in image units, then back
            u = (ctx.clamp(x0 + u * scale) - x0) / scale
        search.step_done(step)
    search.finish("raise max_steps or step_size, lower distance_weight, or widen the region or the bounds")
    return x.detach()
