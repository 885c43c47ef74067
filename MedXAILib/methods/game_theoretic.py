"""Game-theoretic attribution methods: KernelSHAP over regions.

The players are regions of the input grid (supervoxels, grid cubes or the structures of a label
map; see :mod:`MedXAILib.methods.regions`), or region x channel pairs with ``per_channel``. A
coalition keeps its players' voxels and replaces the others by the baseline.
"""

from __future__ import annotations

import torch

from .catalog.game_theoretic import KernelShapParams
from .context import MethodContext
from .perturbation import (
    region_values,
    regions_and_features,
    perturbation_baseline,
    run_batches,
    weighted_linear_fit,
)
from .regions import coalition_inputs, paint

__all__ = ["kernel_shap", "shapley_kernel_coalitions", "ENDPOINT_WEIGHT"]

#: Regression weight of the full and the empty coalition (Captum's ``inf_weight``): large enough
#: to pin the fit to score(x) and score(baseline), so the values nearly sum to their difference.
ENDPOINT_WEIGHT = 1e6


def shapley_kernel_coalitions(n_samples: int, n_players: int, generator: torch.Generator) -> torch.Tensor:
    """Coalitions for KernelSHAP, (n_samples, n_players) in {0, 1}, int64.

    The first two are the full and the empty coalition. Each further one draws its size ``k`` in
    1..M-1 with probability proportional to the Shapley kernel's total mass ``(M - 1) / (k (M -
    k))``, then ``k`` players uniformly (the ``k`` largest of M standard normal draws). The draws
    (one ``multinomial`` and one ``randn(1, M)`` per sample, in that order) are those of Captum's
    ``KernelShap``, taken from `generator` instead of the global generator, so the same seed gives
    the same coalitions.
    """
    m = int(n_players)
    rows = [torch.ones(1, m, dtype=torch.long), torch.zeros(1, m, dtype=torch.long)][: max(n_samples, 1)]
    if m < 2:
        return torch.cat(rows)
    sizes = torch.arange(m, dtype=torch.float)
    probs = torch.tensor(m - 1) / (sizes * (m - sizes))
    probs[0] = 0.0
    probs = (probs / probs.sum(-1, keepdim=True)).reshape(1, m)
    for _ in range(n_samples - len(rows)):
        k = int(torch.multinomial(probs, 1, True, generator=generator).item())
        draws = torch.randn(1, m, generator=generator)
        threshold = torch.kthvalue(draws, m - k).values.item()
        rows.append((draws > threshold).long())
    return torch.cat(rows)


def kernel_shap(ctx: MethodContext, params: KernelShapParams) -> torch.Tensor:
    """KernelSHAP over regions (Lundberg & Lee, NeurIPS 2017, arXiv:1705.07874).

    Coalitions come from :func:`shapley_kernel_coalitions` (the Shapley kernel is carried by the
    sampling, so sampled coalitions have regression weight 1; the full and empty coalitions get
    :data:`ENDPOINT_WEIGHT`, as in Captum's ``KernelShap``). A weighted linear regression with an
    intercept from presence indicators to scores gives each player's Shapley value estimate,
    painted on its voxels (raw, signed; split equally across channels unless ``per_channel``).
    For a score linear in the presence indicators the estimate is exact; otherwise it converges to
    the Shapley values as ``n_samples`` grows. ``sum(values) - (score(x) - score(baseline))`` is
    recorded as ``completeness_error``; the fit's weighted R^2 as ``surrogate_r2``.
    """
    x = ctx.x.detach()
    n_channels = int(x.shape[1])
    regions, labels, n_players = regions_and_features(ctx, params, "KernelSHAP")
    coalitions = shapley_kernel_coalitions(int(params.n_samples), n_players, ctx.generator)
    n = int(coalitions.shape[0])  # a single player has only the full and the empty coalition
    if n < n_players + 1:
        ctx.warn(f"KernelSHAP: {n} samples for {n_players} players under-determine the fit "
                 "(minimum-norm solution); raise n_samples or use fewer regions")
    baseline = perturbation_baseline(ctx, params.baseline, params.blur_sigma_mm)

    def make_batch(start: int, stop: int) -> torch.Tensor:
        return coalition_inputs(x, baseline, labels, coalitions[start:stop].to(x.device), params.per_channel)

    # coalition 0, every region present, is the input itself: its output is the model output
    scores = run_batches(ctx, n, params.batch_size, make_batch, "KernelSHAP", progress=(0.05, 0.99),
                         input_item=0)
    present = coalitions.sum(1)
    weights = torch.where((present == 0) | (present == n_players), ENDPOINT_WEIGHT, 1.0).double()
    coef, intercept, r2 = weighted_linear_fit(coalitions.float(), scores.float(), weights)
    gap = float(scores[0] - scores[1])  # rows 0 and 1: the full and the empty coalition
    values = region_values(regions, coef, n_channels, params.per_channel)
    ctx.diagnostics.update(
        surrogate_r2=r2,
        score_input=float(scores[0]),
        score_baseline=float(scores[1]),
        completeness_error=float(coef.sum() - gap),
        n_players=n_players,
        n_samples=n,
    )
    if values:
        ctx.diagnostics["region_values"] = values
    coef_t = torch.as_tensor(coef, dtype=torch.float32, device=x.device)
    return paint(coef_t, labels, n_channels, params.per_channel)
