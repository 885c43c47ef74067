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
"""

from __future__ import annotations

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
    u = torch.zeros_like(x0)  # delta / scale: the optimised variable
    m, v = torch.zeros_like(x0), torch.zeros_like(x0)
    search = GoalSearch(ctx, params)
    x = x0
    for step in range(params.max_steps + 1):
        u.requires_grad_(True)
        with torch.enable_grad():
            x = ctx.clamp(x0 + u * scale)
            output = ctx.model(x)
            if search.check(step, output):
                break
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
        # project onto the bounds (and the region) in image units, then back
        u = (ctx.clamp(x0 + u * scale) - x0) / scale
        search.step_done(step)
    search.finish("raise max_steps or step_size, lower distance_weight, or widen the region or the bounds")
    return x.detach()
