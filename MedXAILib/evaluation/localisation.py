"""Localisation metrics: does the relevance fall on a ground-truth structure (a mask)?

The map is the channel-summed relevance per voxel; the mask is a boolean volume on the image grid.
Each function here has a pure-numpy core (``*_score``) that the metric wrappers call and that the
tests compare with Quantus and with analytic cases.

- Pointing game: Zhang et al., IJCV 2018 (a hit when the maximum lies in the mask, with a
  tolerance, here in mm).
- Energy-based pointing game: Wang et al., "Score-CAM", CVPR Workshops 2020.
- Relevance mass and rank accuracy: Arras, Osman, Samek, Information Fusion 2022 ("CLEVR-XAI").
- Top-k IoU (and top-k intersection, Theiner et al. 2021, as the ``precision`` extra).
- AUROC of |relevance| as a voxel classifier of the mask (Mann-Whitney statistic; ties count 1/2).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .metrics import (
    AurocParams,
    EnergyPointingGameParams,
    MetricContext,
    PointingGameParams,
    RelevanceMassAccuracyParams,
    RelevanceRankAccuracyParams,
    TopKIoUParams,
)

__all__ = [
    "pointing_game",
    "pointing_game_score",
    "energy_pointing_game",
    "energy_pointing_game_score",
    "relevance_mass_accuracy",
    "relevance_mass_accuracy_score",
    "relevance_rank_accuracy",
    "relevance_rank_accuracy_score",
    "top_k_iou",
    "top_k_score",
    "auroc",
    "auroc_score",
]


def _nan(reason: str) -> dict[str, Any]:
    return {"value": float("nan"), "warning": reason}


def pointing_game_score(
    relevance: np.ndarray, mask: np.ndarray, spacing: Optional[Sequence[float]] = None, tolerance_mm: float = 0.0
) -> dict[str, Any]:
    """Pointing game (Zhang et al. 2018) on a 3D map.

    A hit (1.0) when a voxel of maximal relevance lies in the mask or within ``tolerance_mm`` of it
    (Euclidean distance between voxel centres in mm, through ``spacing``); tied maxima hit when any
    of them does (as Quantus counts them).

    Returns:
        ``value`` (1.0 or 0.0), ``distance_mm`` (closest maximum to the mask, 0 inside),
        ``max_voxel`` (the first maximum in memory order) and ``n_maxima``.
    """
    from scipy import ndimage

    relevance, mask = np.asarray(relevance, np.float64), np.asarray(mask, bool)
    maxima = relevance == relevance.max()
    distance = ndimage.distance_transform_edt(~mask, sampling=None if spacing is None else list(spacing))
    closest = float(distance[maxima].min())
    return {
        "value": float(closest <= tolerance_mm + 1e-9),
        "distance_mm": closest,
        "max_voxel": [int(v) for v in np.unravel_index(int(np.argmax(relevance)), relevance.shape)],
        "n_maxima": int(maxima.sum()),
    }


def pointing_game(ctx: MetricContext, params: PointingGameParams) -> dict[str, Any]:
    """Pointing game with a tolerance in mm: see :func:`pointing_game_score`."""
    relevance = np.abs(ctx.relevance) if params.absolute else ctx.relevance
    return pointing_game_score(relevance, ctx.require_mask("pointing_game"), ctx.spacing, params.tolerance_mm)


def _bounding_box(mask: np.ndarray) -> np.ndarray:
    box = np.zeros_like(mask, dtype=bool)
    index = np.argwhere(mask)
    lo, hi = index.min(axis=0), index.max(axis=0) + 1
    box[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return box


def energy_pointing_game_score(relevance: np.ndarray, mask: np.ndarray, bounding_box: bool = False) -> dict[str, Any]:
    """Energy-based pointing game (Wang et al., Score-CAM, 2020): sum of positive relevance in the
    mask (or its bounding box, as the paper does with object boxes) over the total positive relevance.
    NaN (with a warning) when the map has no positive relevance."""
    positive = np.clip(np.asarray(relevance, np.float64), 0.0, None)
    region = _bounding_box(mask) if bounding_box else np.asarray(mask, bool)
    total = positive.sum()
    if total <= 0:
        return _nan("the map has no positive relevance")
    return {"value": float(positive[region].sum() / total)}


def energy_pointing_game(ctx: MetricContext, params: EnergyPointingGameParams) -> dict[str, Any]:
    """Energy-based pointing game: see :func:`energy_pointing_game_score`."""
    return energy_pointing_game_score(ctx.relevance, ctx.require_mask("energy_pointing_game"), params.bounding_box)


def relevance_mass_accuracy_score(
    relevance: np.ndarray, mask: np.ndarray, positive_only: bool = True
) -> dict[str, Any]:
    """Relevance mass accuracy (Arras et al. 2022): relevance inside the mask over the total.

    Arras et al. count positive relevance only (negative relevance speaks against the class, so
    it is not "mass" on the object); ``positive_only=False`` sums the signed map, which is what
    Quantus' RelevanceMassAccuracy computes by default (abs=False). NaN when the total is zero.
    """
    r = np.asarray(relevance, np.float64)
    if positive_only:
        r = np.clip(r, 0.0, None)
    total = r.sum()
    if total == 0:
        return _nan("the map's total relevance is zero")
    return {"value": float(r[np.asarray(mask, bool)].sum() / total)}


def relevance_mass_accuracy(ctx: MetricContext, params: RelevanceMassAccuracyParams) -> dict[str, Any]:
    """Relevance mass accuracy: see :func:`relevance_mass_accuracy_score`."""
    return relevance_mass_accuracy_score(ctx.relevance, ctx.require_mask("relevance_mass_accuracy"),
                                         params.positive_only)


def _top(relevance: np.ndarray, k: int) -> np.ndarray:
    """Boolean map of the k most relevant voxels (stable: ties go in memory order)."""
    flat = np.asarray(relevance, np.float64).ravel()
    chosen = np.zeros(flat.size, bool)
    chosen[np.argsort(-flat, kind="stable")[:k]] = True
    return chosen.reshape(np.shape(relevance))


def relevance_rank_accuracy_score(relevance: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Relevance rank accuracy (Arras et al. 2022): the share of the K most relevant voxels that lie
    in the mask, K being the mask's size."""
    mask = np.asarray(mask, bool)
    k = int(mask.sum())
    return {"value": float((_top(relevance, k) & mask).sum() / k), "k": k}


def relevance_rank_accuracy(ctx: MetricContext, params: RelevanceRankAccuracyParams) -> dict[str, Any]:
    """Relevance rank accuracy: see :func:`relevance_rank_accuracy_score`."""
    relevance = np.abs(ctx.relevance) if params.absolute else ctx.relevance
    return relevance_rank_accuracy_score(relevance, ctx.require_mask("relevance_rank_accuracy"))


def top_k_score(relevance: np.ndarray, mask: np.ndarray, k: int) -> dict[str, Any]:
    """IoU of the k most relevant voxels with the mask, plus ``precision`` (the share of the top k
    in the mask: Quantus' TopKIntersection) and ``recall`` (the share of the mask in the top k)."""
    mask = np.asarray(mask, bool)
    top = _top(relevance, k)
    inter, union = float((top & mask).sum()), float((top | mask).sum())
    return {"value": inter / union, "precision": inter / k, "recall": inter / float(mask.sum()), "k": int(k)}


def top_k_iou(ctx: MetricContext, params: TopKIoUParams) -> dict[str, Any]:
    """Top-k IoU: see :func:`top_k_score` (k = the mask's size, or ``k_fraction`` of the voxels)."""
    mask = ctx.require_mask("top_k_iou")
    k = int(mask.sum()) if params.k_fraction <= 0 else max(1, int(round(params.k_fraction * mask.size)))
    relevance = np.abs(ctx.relevance) if params.absolute else ctx.relevance
    return top_k_score(relevance, mask, k)


def auroc_score(relevance: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Area under the ROC curve of `relevance` as a score separating mask voxels from the rest.

    Computed as the Mann-Whitney U statistic over average ranks, so tied values count one half:
    the same number as the trapezoid area under ``sklearn.metrics.roc_curve`` (what Quantus'
    AUC computes) without its memory cost on millions of voxels.
    """
    from scipy.stats import rankdata

    y = np.asarray(mask, bool).ravel()
    ranks = rankdata(np.asarray(relevance, np.float64).ravel())
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return {"value": float(u / (n_pos * n_neg))}


def auroc(ctx: MetricContext, params: AurocParams) -> dict[str, Any]:
    """AUROC of |relevance| (or signed relevance) against the mask: see :func:`auroc_score`."""
    relevance = np.abs(ctx.relevance) if params.absolute else ctx.relevance
    return auroc_score(relevance, ctx.require_mask("auroc"))
