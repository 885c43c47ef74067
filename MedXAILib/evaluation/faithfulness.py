"""Faithfulness metrics: does the model's score change where the map says the relevance is?

- :func:`deletion` / :func:`insertion`: Petsiuk, Das, Saenko, "RISE", BMVC 2018. Voxels (or SLIC
  supervoxels ranked by mean relevance) are removed from the input (replaced by a baseline), or
  inserted into the baseline, in order of relevance, in ``n_steps`` equal steps; the target score
  traces a curve over the fraction of voxels perturbed, and its area (trapezoid rule, divided by
  the x span so it is the curve's mean height in score units) summarises it. Every perturbed input
  of a batch goes through the model in one forward pass.
- :func:`faithfulness_correlation`: Bhatt, Weller, Moura, IJCAI 2020. Pearson correlation, over
  random voxel subsets S, between the relevance summed over S and the score drop f(x) - f(x_S).
- :func:`road`: Rong, Leemann, Borisov, Kasneci, Kasneci, "A Consistent and Efficient Evaluation
  Strategy for Attribution Methods", ICML 2022. Removed voxels are filled in by noisy linear
  imputation (each removed voxel is the weighted mean of its neighbours, solved jointly, plus
  noise), so the removal leaves no out-of-distribution holes that leak the removal order.
- :func:`infidelity`: Yeh et al., NeurIPS 2019. E[(I . map - (f(x) - f(x - I)))^2] over Gaussian
  perturbations I, optionally after scaling the map by the optimal beta (as Captum's
  ``normalize=True``); ``captum.metrics.infidelity`` gives the same number for the same I.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError
from .metrics import (
    DeletionParams,
    FaithfulnessCorrelationParams,
    InfidelityParams,
    InsertionParams,
    MetricContext,
    RoadParams,
)

__all__ = [
    "area_under_curve",
    "relevance_order",
    "deletion",
    "insertion",
    "perturbation_curve",
    "faithfulness_correlation",
    "random_subsets",
    "road",
    "imputation_weights",
    "noisy_linear_imputation",
    "infidelity",
    "infidelity_perturbations",
]


def area_under_curve(fractions: Sequence[float], scores: Sequence[float]) -> float:
    """Trapezoid area under ``scores`` over ``fractions``, divided by the x span (the mean height)."""
    x, y = np.asarray(fractions, np.float64), np.asarray(scores, np.float64)
    span = x[-1] - x[0]
    if span <= 0:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / span)


def relevance_order(relevance: np.ndarray, order: str) -> np.ndarray:
    """Flat voxel indices from first to last perturbed: ``morf`` by descending relevance, ``lerf`` ascending.

    The sort is stable, so tied voxels go in memory (C) order.
    """
    flat = np.asarray(relevance, np.float64).ravel()
    if order == "morf":
        return np.argsort(-flat, kind="stable")
    if order == "lerf":
        return np.argsort(flat, kind="stable")
    raise ParameterError(f"unknown order {order!r}; use morf or lerf")


def _ranks(order: np.ndarray) -> np.ndarray:
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    return rank


def perturbation_curve(ctx: MetricContext, params: DeletionParams, mode: str) -> dict[str, Any]:
    """The deletion (``mode="deletion"``) or insertion curve of the evaluated map.

    Step k of ``n_steps`` perturbs the first ``floor(k * F / n_steps)`` features in relevance order
    (F voxels, or F supervoxels). The unperturbed end of the curve is the input's own score, so the
    curve costs ``n_steps`` forward passes, ``batch_size`` inputs at a time.

    Returns:
        ``value`` (area under the curve), ``fractions`` (of voxels perturbed), ``curve`` (scores),
        ``score_input``, ``score_baseline`` and the effective ``higher_is_better``.
    """
    x = ctx.x
    baseline = ctx.baseline(params.baseline, params.blur_sigma_mm)
    relevance = ctx.relevance
    n_voxels, n = relevance.size, int(params.n_steps)
    if params.features == "voxels":
        key = _ranks(relevance_order(relevance, params.order)).reshape(relevance.shape)
        n_features = n_voxels
        thresholds = (n_features * np.arange(n + 1)) // n
        perturbed = thresholds
    elif params.features == "supervoxels":
        from ..methods.regions import supervoxels

        labels = supervoxels(ctx.image.array, params.n_segments, params.compactness, spacing=ctx.spacing)
        n_features = int(labels.max()) + 1
        sizes = np.bincount(labels.ravel(), minlength=n_features)
        mean_relevance = np.bincount(labels.ravel(), weights=relevance.ravel(), minlength=n_features) / sizes
        region_order = relevance_order(mean_relevance, params.order)
        key = _ranks(region_order)[labels]
        thresholds = (n_features * np.arange(n + 1)) // n
        perturbed = np.concatenate([[0], np.cumsum(sizes[region_order])])[thresholds]
    else:
        raise ParameterError(f"unknown features {params.features!r}; use voxels or supervoxels")
    fractions = perturbed / n_voxels
    known = 0 if mode == "deletion" else n  # the step whose input is the unperturbed image
    steps = [k for k in range(n + 1) if k != known]
    key_t = torch.as_tensor(key, device=x.device).unsqueeze(0)
    limits = torch.as_tensor(thresholds, device=x.device)

    def make_batch(start: int, stop: int) -> torch.Tensor:
        chosen = limits[steps[start:stop]].view(-1, 1, 1, 1)
        m = (key_t < chosen).unsqueeze(1)  # (B, 1, I, J, K): the perturbed features of each step
        return torch.where(m, baseline, x) if mode == "deletion" else torch.where(m, x, baseline)

    label = "Deletion" if mode == "deletion" else "Insertion"
    scores = ctx.score_batches(len(steps), params.batch_size, make_batch, f"{label} curve")
    curve = np.empty(n + 1)
    curve[known] = ctx.score_input
    curve[steps] = scores
    return {
        "value": area_under_curve(fractions, curve),
        "fractions": fractions.tolist(),
        "curve": curve.tolist(),
        "order": params.order,
        "features": params.features,
        "n_features": int(n_features),
        "score_input": ctx.score_input,
        "score_baseline": float(curve[-1] if mode == "deletion" else curve[0]),
        "higher_is_better": (mode == "insertion") == (params.order == "morf"),
    }


def deletion(ctx: MetricContext, params: DeletionParams) -> dict[str, Any]:
    """Deletion curve and its area (Petsiuk et al. 2018): see :func:`perturbation_curve`."""
    return perturbation_curve(ctx, params, "deletion")


def insertion(ctx: MetricContext, params: InsertionParams) -> dict[str, Any]:
    """Insertion curve and its area (Petsiuk et al. 2018): see :func:`perturbation_curve`."""
    return perturbation_curve(ctx, params, "insertion")


def random_subsets(generator: torch.Generator, n_features: int, size: int, n_runs: int) -> np.ndarray:
    """``n_runs`` subsets of ``size`` distinct feature indices, shaped (n_runs, size), from `generator`."""
    return np.stack([torch.randperm(n_features, generator=generator)[:size].numpy() for _ in range(n_runs)])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def faithfulness_correlation(ctx: MetricContext, params: FaithfulnessCorrelationParams) -> dict[str, Any]:
    """Faithfulness correlation (Bhatt, Weller, Moura, IJCAI 2020).

    For ``n_runs`` random subsets S of ``subset_fraction`` of the voxels (all channels of a voxel
    together), the correlation (Pearson) between the relevance summed over S and f(x) - f(x_S),
    x_S being x with S replaced by the baseline. Undefined (NaN, with a warning) when either is
    constant, e.g. when removing voxels never changes the score.
    """
    x = ctx.x
    relevance = ctx.relevance.ravel()
    n_voxels = relevance.size
    size = max(1, int(round(params.subset_fraction * n_voxels)))
    subsets = random_subsets(ctx.generator("faithfulness_correlation"), n_voxels, size, params.n_runs)
    baseline = ctx.baseline(params.baseline, params.blur_sigma_mm)
    index = torch.as_tensor(subsets, device=x.device)

    def make_batch(start: int, stop: int) -> torch.Tensor:
        m = torch.zeros((stop - start, n_voxels), dtype=torch.bool, device=x.device)
        m.scatter_(1, index[start:stop], True)
        return torch.where(m.view(stop - start, 1, *x.shape[2:]), baseline, x)

    scores = ctx.score_batches(params.n_runs, params.batch_size, make_batch, "Faithfulness correlation")
    relevance_sums = relevance[subsets].sum(axis=1)
    drops = ctx.score_input - scores
    value = _pearson(relevance_sums, drops)
    out: dict[str, Any] = {"value": value, "subset_size": size, "relevance_sums": relevance_sums.tolist(),
                           "score_drops": drops.tolist()}
    if not np.isfinite(value):
        out["warning"] = ("the correlation is undefined: the score drops or the relevance sums are constant "
                          "(try a larger subset_fraction or another baseline)")
    return out


# ------------------------------------------------------------------------------------------------
# ROAD


def imputation_weights(spacing: Sequence[float]) -> np.ndarray:
    """Weights (3, 3, 3) of the 26 neighbours in noisy linear imputation: 1 / distance^2 in mm.

    The paper's 2D weights (1/6 for the four direct neighbours, 1/12 for the four diagonal ones)
    are in the ratio 2 : 1 = 1/1^2 : 1/sqrt(2)^2; 1/d^2 extends that to 3D and to anisotropic voxels.
    Only ratios matter (each removed voxel is the weighted mean of its neighbours).
    """
    s = np.asarray(spacing, np.float64)
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), axis=-1)
    d2 = ((offsets * s) ** 2).sum(axis=-1)
    weights = np.zeros((3, 3, 3))
    weights[d2 > 0] = 1.0 / d2[d2 > 0]
    return weights / weights.sum()


def noisy_linear_imputation(
    x: torch.Tensor,
    removed: torch.Tensor,
    spacing: Sequence[float],
    noise_std: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    monitor: Any = None,
    tol: float = 1e-4,
    max_iter: int = 10000,
) -> torch.Tensor:
    """Fill removed voxels by noisy linear imputation (Rong et al., ICML 2022), in 3D.

    Every removed voxel takes the weighted mean of its in-bounds neighbours (weights
    :func:`imputation_weights`), removed neighbours included, which is one sparse linear system
    over all removed voxels (a discrete Laplace equation with the kept voxels as boundary values).
    It is solved with Jacobi-preconditioned conjugate gradients whose matrix-vector product is a
    3x3x3 convolution (the matrix is symmetric positive definite wherever removed voxels touch a
    kept one) until the residual is below `tol` times that of the start, which leaves the imputed
    values accurate to about `tol` of the intensity range (Quantus solves the same 2D system
    directly; a direct solve of the 3D system does not fit in memory for whole volumes). The
    solve runs in float32, or float64 when `tol` < 1e-5. Then Gaussian noise with ``noise_std``
    per channel is added to the imputed voxels.

    Args:
        x: (C, I, J, K) volume.
        removed: (I, J, K) bool, the voxels to impute (every channel).
        spacing: voxel size in mm (I, J, K).
        noise_std: (C,) standard deviation of the added noise; None or 0 for none.
        generator: CPU generator for the noise.
        monitor: checked for cancellation at every iteration.
        tol: relative residual at which the solve stops.
        max_iter: iteration limit.

    Returns:
        (C, I, J, K) in x's dtype: x where kept, the imputation where removed.
    """
    dtype = torch.float64 if tol < 1e-5 else torch.float32
    shape = tuple(x.shape[1:])
    weights = torch.as_tensor(imputation_weights(spacing), dtype=dtype, device=x.device).view(1, 1, 3, 3, 3)
    unknown = removed.to(device=x.device, dtype=dtype).view(1, 1, *shape)
    known = 1.0 - unknown
    u = x.detach().to(dtype).unsqueeze(1)  # channels as the batch: (C, 1, I, J, K)

    def conv(v: torch.Tensor) -> torch.Tensor:
        return F.conv3d(v, weights, padding=1)

    diag = conv(torch.ones_like(unknown))  # sum of the weights of each voxel's in-bounds neighbours
    inverse_diag = torch.where(diag > 0, 1.0 / diag.clamp_min(1e-30), torch.zeros_like(diag)) * unknown
    diag_unknown = diag * unknown

    def apply(v: torch.Tensor) -> torch.Tensor:  # A v for v that is zero on the kept voxels
        return (diag_unknown * v).sub_(conv(v).mul_(unknown))

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # one inner product per channel
        return torch.linalg.vecdot(a.flatten(1), b.flatten(1)).view(-1, 1, 1, 1, 1)

    b = conv(u * known).mul_(unknown)
    kept_mean = (u * known).flatten(1).sum(1) / known.sum().clamp_min(1.0)
    v = kept_mean.view(-1, 1, 1, 1, 1) * unknown  # start from each channel's mean kept value
    r = b - apply(v)
    z = r * inverse_diag
    p = z.clone()
    rz = dot(r, z)
    limit = tol * torch.sqrt(dot(r, r)).clamp_min(1e-30)
    for _ in range(max_iter):
        if bool((torch.sqrt(dot(r, r)) <= limit).all()):
            break
        if monitor is not None:
            monitor.check()
        ap = apply(p)
        alpha = rz / dot(p, ap).clamp_min(1e-30)
        v.add_(alpha * p)
        r.sub_(alpha * ap)
        torch.mul(r, inverse_diag, out=z)
        rz_next = dot(r, z)
        p.mul_(rz_next / rz.clamp_min(1e-30)).add_(z)
        rz = rz_next
    if noise_std is not None and float(torch.as_tensor(noise_std).abs().max()) > 0:
        noise = torch.randn(v.shape, generator=generator, dtype=torch.float64).to(device=x.device, dtype=dtype)
        v = v + noise * torch.as_tensor(noise_std, device=x.device).to(dtype).view(-1, 1, 1, 1, 1)
    # kept voxels keep their exact values (the solve may run in a lower precision than x)
    return torch.where(removed.to(x.device).unsqueeze(0), v[:, 0].to(x.dtype), x.detach())


def road(ctx: MetricContext, params: RoadParams) -> dict[str, Any]:
    """ROAD: RemOve And Debias with noisy linear imputation (Rong et al., ICML 2022).

    At removal fractions k/(n_steps+1) (k = 1..n_steps), the first ``floor(k N / (n_steps+1))``
    voxels in relevance order are imputed from their neighbours (:func:`noisy_linear_imputation`,
    noise ``noise`` x each channel's intensity range); the target score traces a curve from the
    unperturbed input, and ``value`` is its area (mean height). For classifiers, ``predicted``
    says at each step whether the target class is still the predicted one (the paper's accuracy
    curve for one input; Quantus' ROAD returns the same 0/1 per percentage).
    """
    x = ctx.x
    relevance = ctx.relevance
    n_voxels, n = relevance.size, int(params.n_steps)
    rank = torch.as_tensor(_ranks(relevance_order(relevance, params.order)).reshape(relevance.shape),
                           device=x.device)
    counts = (n_voxels * np.arange(1, n + 1)) // (n + 1)
    noise_std = (params.noise * ctx.channel_range()).reshape(-1)
    generator = ctx.generator("road")
    spacing = ctx.spacing

    def make_batch(start: int, stop: int) -> torch.Tensor:
        filled = [noisy_linear_imputation(x[0], rank < int(counts[k]), spacing, noise_std, generator,
                                          ctx.monitor, params.tolerance) for k in range(start, stop)]
        return torch.stack(filled)

    predicted: list[bool] = []
    classifier = ctx.model.task == "classification"

    def on_outputs(start: int, outputs: torch.Tensor) -> None:
        if classifier:
            predicted.extend(bool(v) for v in (outputs.argmax(1) == ctx.scorer.class_index).cpu())

    scores = ctx.score_batches(n, params.batch_size, make_batch, "ROAD", on_outputs)
    fractions = np.concatenate([[0.0], counts / n_voxels])
    curve = np.concatenate([[ctx.score_input], scores])
    out: dict[str, Any] = {
        "value": area_under_curve(fractions, curve),
        "fractions": fractions.tolist(),
        "curve": curve.tolist(),
        "order": params.order,
        "score_input": ctx.score_input,
        "higher_is_better": params.order == "lerf",
    }
    if classifier:
        out["predicted"] = [bool(int(ctx.output[0].argmax()) == ctx.scorer.class_index)] + predicted
    return out


# ------------------------------------------------------------------------------------------------
# Infidelity


def infidelity_perturbations(
    x: torch.Tensor, sigma: float, n_samples: int, generator: torch.Generator, per_channel: bool = True
) -> Iterator[torch.Tensor]:
    """Yield ``n_samples`` Gaussian perturbations I shaped like `x` (1, C, I, J, K), one draw each.

    The standard deviation is ``sigma`` x each channel's intensity range; with ``per_channel``
    off one field (scaled by the mean range) is shared by all channels, so ``I . map`` is defined
    for a channel-summed map. Drawn one at a time, so the samples do not depend on batching.
    """
    dims = (2, 3, 4)
    scale = sigma * (x.amax(dim=dims, keepdim=True) - x.amin(dim=dims, keepdim=True)).double()
    for _ in range(n_samples):
        if per_channel:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float64) * scale.cpu()
        else:
            field = torch.randn((1, 1, *x.shape[2:]), generator=generator, dtype=torch.float64)
            noise = (field * scale.mean().cpu()).expand(x.shape)
        yield noise.to(device=x.device, dtype=x.dtype)


def infidelity(ctx: MetricContext, params: InfidelityParams) -> dict[str, Any]:
    """Infidelity (Yeh et al., NeurIPS 2019) with Gaussian perturbations.

    INFD = mean over I of (beta I . map - (f(x) - f(x - I)))^2, with beta = 1, or with
    ``normalize`` the beta that minimises it (sum(s d) / sum(s^2), s = I . map, d the score
    drop), exactly as ``captum.metrics.infidelity``. Uses the per-channel map when the attribution
    has one map per channel; a channel-summed map gets one perturbation field for all channels.
    """
    x = ctx.x
    attribution = torch.as_tensor(ctx.attribution, dtype=torch.float64, device=x.device).unsqueeze(0)
    per_channel = ctx.attribution.shape[0] == x.shape[1]
    perturbations = infidelity_perturbations(x, params.sigma, params.n_samples, ctx.generator("infidelity"),
                                             per_channel)
    dot_products: list[float] = []

    def make_batch(start: int, stop: int) -> torch.Tensor:
        batch = [next(perturbations) for _ in range(start, stop)]
        for noise in batch:
            product = noise.double() if per_channel else noise[:, :1].double()
            dot_products.append(float((product * attribution).sum()))
        return x - torch.cat(batch)

    scores = ctx.score_batches(params.n_samples, params.batch_size, make_batch, "Infidelity")
    s = np.asarray(dot_products)
    d = ctx.score_input - scores
    beta = float((s * d).sum() / (s * s).sum()) if params.normalize and (s * s).sum() > 0 else \
        (0.0 if params.normalize else 1.0)
    value = float(np.mean((beta * s - d) ** 2))
    return {"value": value, "beta": beta, "mean_squared_score_drop": float(np.mean(d * d))}
