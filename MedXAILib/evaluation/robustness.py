"""Robustness metrics: does the map stay put when the input barely changes?

Every metric here re-runs the explanation method on ``n_samples`` noisy copies x' = x + e of the
input, e Gaussian with standard deviation ``sigma`` x each channel's intensity range, with the same
target, parameters and seed as the evaluated map, so only the input changes. The noise comes from
one generator for the whole family (seeded by the evaluation seed and ``"robustness"``), and the
noisy explanations are computed once per (sigma, n_samples) and shared by the four metrics.

- :func:`max_sensitivity` / :func:`avg_sensitivity`: Yeh et al., NeurIPS 2019, as implemented by
  ``captum.metrics.sensitivity_max`` and Quantus: ||map(x') - map(x)|| / ||map(x)|| (Frobenius
  norms), maximum or mean over samples. The paper's SENS_MAX is not divided by ||map(x)||; the
  ratio makes methods whose maps live on different scales comparable.
- :func:`local_lipschitz`: Alvarez-Melis & Jaakkola 2018, max ||map(x') - map(x)||_2 / ||x' - x||_2
  (each map first divided by its own max |value|, as Quantus does by default).
- :func:`noise_l2`: the mean L2 distance between the unit-norm maps of x and x' (in [0, 2]).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from .metrics import LocalLipschitzParams, MetricContext, NoiseL2Params, SensitivityParams, derive_seed

__all__ = [
    "gaussian_perturbations",
    "noisy_explanations",
    "max_sensitivity",
    "avg_sensitivity",
    "local_lipschitz",
    "noise_l2",
]


def gaussian_perturbations(
    x: torch.Tensor, sigma: float, n_samples: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Yield ``n_samples`` noise volumes shaped like `x` (1, C, I, J, K): N(0, (sigma * range_c)^2).

    Drawn one sample at a time on the CPU from `generator`, so the draws are the same on any device.
    """
    dims = (2, 3, 4)
    scale = (sigma * (x.amax(dim=dims, keepdim=True) - x.amin(dim=dims, keepdim=True))).cpu()
    for _ in range(n_samples):
        yield (torch.randn(x.shape, generator=generator, dtype=x.dtype) * scale).to(x.device)


def noisy_explanations(ctx: MetricContext, sigma: float, n_samples: int) -> tuple[list[np.ndarray], list[float]]:
    """The maps of ``n_samples`` noisy inputs and the L2 norms of their noise (cached per sigma and n).

    Progress runs over the samples; each explanation runs with the evaluation's method, target,
    parameters and the attribution's seed.
    """
    key = f"robustness:{sigma!r}:{n_samples}"
    if key not in ctx.cache:
        generator = torch.Generator().manual_seed(derive_seed(ctx.seed, "robustness"))
        maps, distances = [], []
        for index, noise in enumerate(gaussian_perturbations(ctx.x, sigma, n_samples, generator)):
            with ctx.monitor.stage(index / n_samples, (index + 1) / n_samples):
                ctx.monitor.update(0.0, f"Explaining noisy input {index + 1}/{n_samples}")
                maps.append(ctx.explain(ctx.x + noise).astype(np.float64))
            distances.append(float(torch.linalg.vector_norm(noise.double())))
        ctx.cache[key] = (maps, distances)
    return ctx.cache[key]


def _relative_changes(ctx: MetricContext, params: SensitivityParams) -> np.ndarray:
    maps, _ = noisy_explanations(ctx, params.sigma, params.n_samples)
    original = ctx.attribution.astype(np.float64)
    norm = np.linalg.norm(original.ravel())
    norm = norm if norm > 0 else 1.0  # Captum divides by 1 for an all-zero map
    return np.array([np.linalg.norm((m - original).ravel()) / norm for m in maps])


def max_sensitivity(ctx: MetricContext, params: SensitivityParams) -> dict[str, Any]:
    """Max-sensitivity: the largest ||map(x') - map(x)|| / ||map(x)|| over the noisy inputs."""
    changes = _relative_changes(ctx, params)
    return {"value": float(changes.max()), "per_sample": changes.tolist()}


def avg_sensitivity(ctx: MetricContext, params: SensitivityParams) -> dict[str, Any]:
    """Average sensitivity: the mean of ||map(x') - map(x)|| / ||map(x)|| over the noisy inputs."""
    changes = _relative_changes(ctx, params)
    return {"value": float(changes.mean()), "per_sample": changes.tolist()}


def _max_abs_normalised(m: np.ndarray) -> np.ndarray:
    peak = np.abs(m).max()
    return m / peak if peak > 0 else m


def local_lipschitz(ctx: MetricContext, params: LocalLipschitzParams) -> dict[str, Any]:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018): max ||map(x') - map(x)|| / ||x' - x||."""
    maps, distances = noisy_explanations(ctx, params.sigma, params.n_samples)
    prepare = _max_abs_normalised if params.normalise == "max_abs" else (lambda m: m)
    original = prepare(ctx.attribution.astype(np.float64))
    ratios = np.array([np.linalg.norm((prepare(m) - original).ravel()) / (d + 1e-10)
                       for m, d in zip(maps, distances)])
    return {"value": float(ratios.max()), "per_sample": ratios.tolist()}


def _unit(m: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(m.ravel())
    return m / norm if norm > 0 else m


def noise_l2(ctx: MetricContext, params: NoiseL2Params) -> dict[str, Any]:
    """Mean L2 distance between the map of x and the maps of noisy inputs (unit-norm maps by default)."""
    maps, _ = noisy_explanations(ctx, params.sigma, params.n_samples)
    prepare = _unit if params.normalise == "unit" else (lambda m: m)
    original = prepare(ctx.attribution.astype(np.float64))
    distances = np.array([np.linalg.norm((prepare(m) - original).ravel()) for m in maps])
    return {"value": float(distances.mean()), "per_sample": distances.tolist()}
