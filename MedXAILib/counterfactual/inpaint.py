"""``inpaint``: replace a structure by plausible surrounding tissue ("what if it were absent").

The region is filled with the harmonic function that matches the image on the region's outer
border (the solution of Laplace's equation, the smoothest filling; Chan & Shen 2002, "Mathematical
models for local nontexture inpaintings", SIAM J. Appl. Math. 62(3):1019-1043), plus Gaussian noise
with the standard deviation (and, by default, the neighbour correlation) of the tissue in a ring
around the region, so the filling has the texture of its surroundings. Filled values are clipped to
the range of the ring: the filling never invents intensities that are absent around it.

The goal is not optimised; the generator applies this one edit and the caller reports how the
model's prediction changes (for instance whether a lesion classifier's probability drops).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import numpy as np
import torch

from ..errors import InputError
from ..monitor import Monitor
from .catalog import InpaintParams
from .goals import CounterfactualContext

__all__ = ["inpaint", "harmonic_fill", "ring_texture", "correlated_noise"]


def harmonic_fill(values: np.ndarray, region: np.ndarray, spacing: np.ndarray, max_iterations: int = 5000,
                  monitor: Optional[Monitor] = None, rtol: float = 1e-7) -> np.ndarray:
    """Solve Laplace's equation inside `region` with the image values around it as boundary condition.

    The 7-point stencil is weighted by 1/spacing^2 per axis (anisotropic voxels); neighbours outside
    the grid are left out (zero normal derivative at the image border). Solved by conjugate gradients.

    Args:
        values: (I, J, K) image values.
        region: (I, J, K) bool, the voxels to fill; every connected part must touch a voxel outside it.
        spacing: voxel size (mm) along I, J, K.
        max_iterations: conjugate-gradient iterations at most.
        monitor: progress (iterations / max_iterations) and cancel.

    Returns:
        A copy of `values` with the region replaced by the harmonic filling.
    """
    from scipy import sparse
    from scipy.sparse.linalg import cg

    region = np.asarray(region, bool)
    index = np.full(region.shape, -1, dtype=np.int64)
    where = np.nonzero(region)
    n = len(where[0])
    index[where] = np.arange(n)
    weights = 1.0 / np.asarray(spacing, dtype=np.float64) ** 2
    rows, cols, data = [], [], []
    diagonal = np.zeros(n)
    rhs = np.zeros(n)
    values64 = values.astype(np.float64)
    own = np.arange(n)
    for axis in range(3):
        for step in (-1, 1):
            neighbour = [w.copy() for w in where]
            neighbour[axis] = neighbour[axis] + step
            inside = (neighbour[axis] >= 0) & (neighbour[axis] < region.shape[axis])
            sel = tuple(nb[inside] for nb in neighbour)
            diagonal[own[inside]] += weights[axis]
            other = index[sel]
            unknown = other >= 0
            rows.append(own[inside][unknown])
            cols.append(other[unknown])
            data.append(np.full(int(unknown.sum()), -weights[axis]))
            known = ~unknown  # a neighbour outside the region: its value is the boundary condition
            rhs[own[inside][known]] += weights[axis] * values64[tuple(s[known] for s in sel)]
    matrix = sparse.csr_matrix((np.concatenate(data + [diagonal]),
                                (np.concatenate(rows + [own]), np.concatenate(cols + [own]))), shape=(n, n))
    boundary = rhs / np.maximum(diagonal, 1e-300)
    count = [0]

    def progress(_: Any) -> None:
        count[0] += 1
        if monitor is not None:
            monitor.update(count[0] / max_iterations, f"Laplace filling: iteration {count[0]}")

    tolerance = "rtol" if "rtol" in inspect.signature(cg).parameters else "tol"  # SciPy < 1.12 calls it tol
    x0 = np.full(n, float(boundary[boundary != 0].mean()) if np.any(boundary != 0) else 0.0)
    solution, info = cg(matrix, rhs, x0=x0, maxiter=max_iterations, callback=progress, **{tolerance: rtol})
    if info < 0:
        raise InputError("the Laplace filling failed (the region may cover the whole image)")
    out = values64.copy()
    out[where] = solution
    return out.astype(values.dtype)


def ring_texture(values: np.ndarray, ring: np.ndarray, spacing: np.ndarray) -> dict[str, Any]:
    """Standard deviation and neighbour correlation of the tissue in `ring`, after a linear trend.

    A first-order polynomial in the voxel's position (mm) is fitted to the ring's values by least
    squares and removed, so a smooth intensity gradient across the ring is not taken for texture.

    Returns:
        ``{"std", "correlation": [rho_I, rho_J, rho_K], "min", "max", "voxels"}``; a correlation is
        ``None`` when the ring has no neighbouring pair along that axis.
    """
    where = np.nonzero(ring)
    y = values[where].astype(np.float64)
    design = np.column_stack([np.ones(len(y))] + [w * s for w, s in zip(where, spacing)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = np.zeros(values.shape)
    residual[where] = y - design @ coef
    std = float(residual[where].std())
    correlation: list[Optional[float]] = []
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        pair = ring[tuple(a)] & ring[tuple(b)]
        if pair.sum() < 3 or std == 0:
            correlation.append(None)
            continue
        r1, r2 = residual[tuple(a)][pair], residual[tuple(b)][pair]
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = float(np.corrcoef(r1, r2)[0, 1])
        correlation.append(rho if np.isfinite(rho) else None)
    return {"std": std, "correlation": correlation, "min": float(y.min()), "max": float(y.max()),
            "voxels": int(len(y))}


def correlated_noise(shape: tuple[int, ...], correlation: list[Optional[float]],
                     rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise whose neighbour correlation along each axis approximates `correlation`.

    White noise blurred by a Gaussian of sigma s (voxels) has autocorrelation exp(-d^2 / (4 s^2)), so
    a lag-1 correlation rho needs s = sqrt(-1 / (4 ln rho)). Axes with no (or a non-positive)
    correlation stay white.
    """
    from scipy.ndimage import gaussian_filter

    sigmas = []
    for rho in correlation:
        if rho is None or rho <= 0.01:
            sigmas.append(0.0)
        else:
            sigmas.append(float(np.sqrt(-1.0 / (4.0 * np.log(min(rho, 0.99))))))
    pad = [int(np.ceil(3 * s)) + 1 for s in sigmas]  # blur a larger block: no edge effects inside
    noise = rng.standard_normal([n + 2 * p for n, p in zip(shape, pad)])
    if any(s > 0 for s in sigmas):
        noise = gaussian_filter(noise, sigma=sigmas, mode="wrap")
    noise = noise[tuple(slice(p, p + n) for p, n in zip(pad, shape))]
    return (noise - noise.mean()) / max(float(noise.std()), 1e-12)


def inpaint(ctx: CounterfactualContext, params: InpaintParams) -> torch.Tensor:
    """Fill the region with the harmonic interpolation of its surroundings plus matched noise.

    Args:
        ctx: input, region (required), bounds, monitor and seed.
        params: see :class:`~MedXAILib.counterfactual.catalog.InpaintParams`.

    Returns:
        The counterfactual input (1, C, I, J, K): the input outside the (grown) region.

    Raises:
        InputError: no region, or a region that leaves no surrounding tissue.
    """
    from scipy.ndimage import distance_transform_edt

    if ctx.region is None:
        raise InputError("the inpaint generator needs a region: the structure to replace (--region MASK)")
    spacing = np.asarray(ctx.image.spacing, dtype=np.float64)
    region = ctx.region[0, 0].cpu().numpy().astype(bool)
    outside_distance = distance_transform_edt(~region, sampling=spacing)
    if params.grow_mm > 0:
        region = outside_distance <= params.grow_mm
        outside_distance = distance_transform_edt(~region, sampling=spacing)
        ctx.effective_region = region
    ring = ~region & (outside_distance <= max(params.ring_mm, float(spacing.max())))
    if not ring.any():
        raise InputError("the region covers the whole image: there is no surrounding tissue to fill it from")
    x0 = ctx.x[0].detach().cpu().numpy()
    low, high = ctx.low[0].cpu().numpy(), ctx.high[0].cpu().numpy()
    rng = np.random.default_rng(ctx.seed)
    lo_box = np.argwhere(region).min(axis=0)
    hi_box = np.argwhere(region).max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo_box, hi_box))
    out = x0.copy()
    textures = []
    n_channels = x0.shape[0]
    for c in range(n_channels):
        with ctx.monitor.stage(c / n_channels, (c + 0.9) / n_channels):
            filled = harmonic_fill(x0[c], region, spacing, params.max_iterations, ctx.monitor)
        texture = ring_texture(x0[c], ring, spacing)
        textures.append(texture)
        if params.noise != "none" and texture["std"] > 0:
            correlation = texture["correlation"] if params.noise == "matched" else [None, None, None]
            noise = np.zeros(x0[c].shape)
            noise[box] = correlated_noise(tuple(b.stop - b.start for b in box), correlation, rng)
            filled = filled + (texture["std"] * noise).astype(filled.dtype)
        filled = np.clip(filled, texture["min"], texture["max"])
        filled = np.clip(filled, low[c], high[c])
        out[c][region] = filled[region]
        ctx.monitor.update((c + 1) / n_channels, f"filled channel {c + 1}/{n_channels}")
    ctx.diagnostics.update(region_voxels=int(region.sum()), ring_voxels=int(ring.sum()),
                           ring=[{k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.items()}
                                 for t in textures])
    return torch.as_tensor(out, device=ctx.x.device).unsqueeze(0)
