"""Gradient-family attribution methods: saliency, input x gradient, integrated gradients."""

from __future__ import annotations

import numpy as np
import torch

from .catalog.gradient import InputXGradientParams, IntegratedGradientsParams, SaliencyParams
from .context import MethodContext

#: Relative completeness error above which the result carries a warning.
COMPLETENESS_WARNING = 0.05

__all__ = ["saliency", "input_x_gradient", "integrated_gradients", "quadrature", "make_baseline"]


def saliency(ctx: MethodContext, params: SaliencyParams) -> torch.Tensor:
    """Gradient of the target with respect to the input (Simonyan et al. 2014, arXiv:1312.6034).

    The paper takes |gradient|; MedXAI keeps the sign unless ``absolute`` is set, because the sign
    says whether raising a voxel's intensity raises or lowers the score.
    """
    ctx.monitor.update(0.0, "Saliency: one forward and backward pass")
    grads, _ = ctx.gradient(ctx.x)
    ctx.monitor.update(1.0, "Saliency: done")
    return grads.abs() if params.absolute else grads


def input_x_gradient(ctx: MethodContext, params: InputXGradientParams) -> torch.Tensor:
    """Input times gradient (Shrikumar et al. 2016, arXiv:1605.01713)."""
    ctx.monitor.update(0.0, "Input x gradient: one forward and backward pass")
    grads, _ = ctx.gradient(ctx.x)
    ctx.monitor.update(1.0, "Input x gradient: done")
    return ctx.x.detach() * grads


def quadrature(n_steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alpha`` in [0, 1] and weights for integrating over the straight path.

    The Riemann rules and Gauss-Legendre follow the definitions Captum also uses, so results agree
    at equal settings.
    """
    n = n_steps
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1), 0.5 * weights
    if rule == "riemann_trapezoid":
        if n < 2:
            return np.array([1.0]), np.array([1.0])
        w = np.full(n, 1.0 / (n - 1))
        w[[0, -1]] *= 0.5
        return np.linspace(0, 1, n), w
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    alphas = (np.arange(n) + offsets[rule]) / n
    return alphas, np.full(n, 1.0 / n)


def make_baseline(ctx: MethodContext, kind: str, blur_sigma_mm: float = 8.0) -> torch.Tensor:
    """Reference input for path methods, on the input's device and grid.

    ``zeros``; ``min``: each channel's minimum (e.g. air in CT); ``blur``: Gaussian blur with a
    width in mm, converted per axis with the true voxel spacing; ``noise``: uniform noise in each
    channel's [min, max], drawn from the seeded generator.
    """
    x = ctx.x.detach()
    lo = x.amin(dim=(2, 3, 4), keepdim=True)
    if kind == "zeros":
        return torch.zeros_like(x)
    if kind == "min":
        return lo.expand_as(x).clone()
    if kind == "blur":
        from scipy import ndimage

        sigma = [0.0] + list(blur_sigma_mm / ctx.spacing)
        blurred = ndimage.gaussian_filter(x[0].cpu().numpy(), sigma=sigma, mode="nearest")
        return torch.as_tensor(blurred, dtype=x.dtype, device=x.device).unsqueeze(0)
    if kind == "noise":
        hi = x.amax(dim=(2, 3, 4), keepdim=True)
        u = torch.rand(x.shape, generator=ctx.generator, dtype=x.dtype).to(x.device)
        return lo + u * (hi - lo)
    raise ValueError(f"unknown baseline {kind!r}")


def integrated_gradients(ctx: MethodContext, params: IntegratedGradientsParams) -> torch.Tensor:
    """Integrated gradients (Sundararajan, Taly, Yan. ICML 2017, arXiv:1703.01365).

    ``IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x')) / dx_i da``, evaluated with the
    chosen quadrature in batches of path points. The completeness error
    ``|sum(IG) - (F(x) - F(x'))|`` is recorded in the diagnostics, absolute and relative.
    """
    x = ctx.x.detach()
    baseline = make_baseline(ctx, params.baseline, params.blur_sigma_mm)
    alphas, weights = quadrature(params.n_steps, params.integration)
    delta = x - baseline
    total = torch.zeros_like(x)
    n = len(alphas)
    for start in range(0, n, params.batch_size):
        stop = min(start + params.batch_size, n)
        a = torch.as_tensor(alphas[start:stop], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1, 1)
        w = torch.as_tensor(weights[start:stop], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1, 1)
        grads, _ = ctx.gradient(baseline + a * delta)
        total += (w * grads).sum(0, keepdim=True)
        ctx.monitor.update(stop / n, f"Integrated gradients: {stop}/{n} path points")
    attribution = delta * total
    with torch.no_grad():
        gap = float(ctx.score(x)[0] - ctx.score(baseline)[0])
    error = abs(float(attribution.sum()) - gap)
    relative = error / abs(gap) if gap else (float("inf") if error else 0.0)
    ctx.diagnostics.update(
        completeness_error=error, completeness_relative_error=relative, score_input_minus_baseline=gap
    )
    if relative > COMPLETENESS_WARNING:
        ctx.warn(
            f"integrated gradients misses completeness by {relative:.1%} of F(input) - F(baseline): "
            "raise n_steps, or use the blur baseline (instance-normalised networks change abruptly "
            "near a constant baseline)"
        )
    return attribution
