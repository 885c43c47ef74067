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

Every result carries ``chance``: the value an uninformative map scores (relevance spread at random,
or uniformly). A value means little without it: a lesion that is 0.05 % of the volume gives a
relevance mass of 0.005 a tenfold "concentration" while 99.5 % of the relevance lies elsewhere.
:func:`localisation_verdict` turns the pointing game and the rank accuracy into one verdict that a
map whose most relevant voxels all miss the target cannot pass.
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
    "expected_top_inside",
    "localisation_verdict",
    "VERDICT_RULE",
    "RANK_ACCURACY_PASS",
]

#: A map localises its target only if at least this share of its K most relevant voxels lie in it
#: (K = the target's size), and at least twice the chance level (:func:`localisation_verdict`).
RANK_ACCURACY_PASS = 0.25

VERDICT_RULE = (
    "on target: the map's maximum lies within the pointing game's tolerance of the target AND at least "
    f"{RANK_ACCURACY_PASS:.0%} (and twice the chance level) of its K most relevant voxels lie inside it "
    "(relevance rank accuracy, K = the target's size); off target: neither; partly: one of the two. A "
    "high share of relevance relative to the target's volume share never decides: for a small target it "
    "is high even when almost all relevance lies elsewhere."
)


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
        ``max_voxel`` (the first maximum in memory order), ``n_maxima`` and ``chance`` (the share
        of voxels within the tolerance of the mask: the hit rate of a randomly placed maximum).
    """
    from scipy import ndimage

    relevance, mask = np.asarray(relevance, np.float64), np.asarray(mask, bool)
    maxima = relevance == relevance.max()
    distance = ndimage.distance_transform_edt(~mask, sampling=None if spacing is None else list(spacing))
    closest = float(distance[maxima].min())
    within = distance <= tolerance_mm + 1e-9
    return {
        "value": float(closest <= tolerance_mm + 1e-9),
        "distance_mm": closest,
        "max_voxel": [int(v) for v in np.unravel_index(int(np.argmax(relevance)), relevance.shape)],
        "n_maxima": int(maxima.sum()),
        # a maximum placed uniformly at random hits with the share of voxels within the tolerance
        "chance": float(within.mean()),
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
    NaN (with a warning) when the map has no positive relevance. ``chance``: the region's share of
    the voxels (a uniform map)."""
    positive = np.clip(np.asarray(relevance, np.float64), 0.0, None)
    region = _bounding_box(mask) if bounding_box else np.asarray(mask, bool)
    total = positive.sum()
    if total <= 0:
        return {**_nan("the map has no positive relevance"), "chance": float(region.mean())}
    return {"value": float(positive[region].sum() / total), "chance": float(region.mean())}


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
    ``chance`` is the mask's share of the voxels (a uniform map) and ``ratio_to_chance`` the value
    over it: for a small mask that ratio is large even when most relevance lies elsewhere.
    """
    r = np.asarray(relevance, np.float64)
    mask = np.asarray(mask, bool)
    if positive_only:
        r = np.clip(r, 0.0, None)
    total = r.sum()
    chance = float(mask.mean())
    if total == 0:
        return {**_nan("the map's total relevance is zero"), "chance": chance}
    value = float(r[mask].sum() / total)
    return {"value": value, "chance": chance, "ratio_to_chance": value / chance}


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


def expected_top_inside(relevance: np.ndarray, mask: np.ndarray, k: int) -> float:
    """Voxels of `mask` among the `k` most relevant, ties at the cut-off shared in proportion.

    The expected count when tied voxels are drawn at random, so the result never depends on voxel
    order, and a map without relevance (all tied) scores chance level instead of an arbitrary 0 or 1
    (the rule of :func:`MedXAILib.analysis.statistics.structure_statistics` too).
    """
    flat = np.asarray(relevance, np.float64).ravel()
    inside = np.asarray(mask, bool).ravel()
    if k <= 0:
        return 0.0
    k = min(int(k), flat.size)
    threshold = np.partition(flat, flat.size - k)[flat.size - k]  # the k-th largest value
    above, tied = flat > threshold, flat == threshold
    needed = k - int(above.sum())
    return float(np.count_nonzero(above & inside) + needed * np.count_nonzero(tied & inside) / tied.sum())


def relevance_rank_accuracy_score(relevance: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Relevance rank accuracy (Arras et al. 2022): the share of the K most relevant voxels that lie
    in the mask, K being the mask's size; ties at the cut-off are shared in proportion
    (:func:`expected_top_inside`). ``chance`` is the mask's share of the voxels (a random ranking)."""
    mask = np.asarray(mask, bool)
    k = int(mask.sum())
    return {"value": expected_top_inside(relevance, mask, k) / k, "k": k, "chance": float(mask.mean())}


def relevance_rank_accuracy(ctx: MetricContext, params: RelevanceRankAccuracyParams) -> dict[str, Any]:
    """Relevance rank accuracy: see :func:`relevance_rank_accuracy_score`."""
    relevance = np.abs(ctx.relevance) if params.absolute else ctx.relevance
    return relevance_rank_accuracy_score(relevance, ctx.require_mask("relevance_rank_accuracy"))


def top_k_score(relevance: np.ndarray, mask: np.ndarray, k: int) -> dict[str, Any]:
    """IoU of the k most relevant voxels with the mask, plus ``precision`` (the share of the top k
    in the mask: Quantus' TopKIntersection) and ``recall`` (the share of the mask in the top k).
    ``chance``: the IoU of k voxels drawn at random (expected intersection k |S| / N), and
    ``chance_precision`` = |S| / N."""
    mask = np.asarray(mask, bool)
    top = _top(relevance, k)
    inter, union = float((top & mask).sum()), float((top | mask).sum())
    size = float(mask.sum())
    random_inter = k * size / mask.size  # a random top-k set meets the mask this much on average
    return {"value": inter / union, "precision": inter / k, "recall": inter / size, "k": int(k),
            "chance": random_inter / (k + size - random_inter), "chance_precision": size / mask.size}


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
    AUC computes) without its memory cost on millions of voxels. ``chance`` is 0.5.

    Every voxel outside the mask is a negative. In a body CT most of them are air or tissue far
    from the target with almost no relevance, so any map with some relevance near the target
    scores close to 1: AUROC rarely separates methods on a small target (compare the pointing game
    and the rank accuracy, or restrict the image to a region first).
    """
    from scipy.stats import rankdata

    y = np.asarray(mask, bool).ravel()
    ranks = rankdata(np.asarray(relevance, np.float64).ravel())
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    area = float(u / (n_pos * n_neg))
    # Hanley & McNeil 1982 standard error (an approximation for independent samples)
    q1, q2 = area / (2.0 - area), 2.0 * area * area / (1.0 + area)
    variance = (area * (1 - area) + (n_pos - 1) * (q1 - area**2) + (n_neg - 1) * (q2 - area**2)) / (n_pos * n_neg)
    return {"value": area, "chance": 0.5, "standard_error": float(np.sqrt(max(variance, 0.0))),
            "negatives": int(n_neg), "positives": int(n_pos)}


def auroc(ctx: MetricContext, params: AurocParams) -> dict[str, Any]:
    """AUROC of |relevance| (or signed relevance) against the mask: see :func:`auroc_score`."""
    relevance = np.abs(ctx.relevance) if params.absolute else ctx.relevance
    return auroc_score(relevance, ctx.require_mask("auroc"))


def localisation_verdict(pointing: Optional[dict[str, Any]], rank: Optional[dict[str, Any]]) -> dict[str, Any]:
    """One verdict from the pointing game and the relevance rank accuracy (:data:`VERDICT_RULE`).

    Args:
        pointing: a :func:`pointing_game_score` result (``value``, ``distance_mm``), or None.
        rank: a :func:`relevance_rank_accuracy_score` result (``value``, ``chance``), or None.

    Returns:
        ``verdict`` (``"on target"``, ``"partly on target"``, ``"off target"`` or ``"undetermined"``
        when a result is missing or NaN), ``peak_hit``, ``rank_pass``, ``reasons`` (one sentence
        each) and ``rule``. A map whose K most relevant voxels all lie outside the target (rank
        accuracy 0) is never on target.
    """
    import math

    out: dict[str, Any] = {"rule": VERDICT_RULE}
    if not pointing or not rank or any(not math.isfinite(float(r.get("value", math.nan))) for r in (pointing, rank)):
        return {**out, "verdict": "undetermined", "peak_hit": None, "rank_pass": None,
                "reasons": ["the pointing game or the rank accuracy is undefined for this map"]}
    hit = bool(pointing["value"] >= 1.0)
    needed = max(RANK_ACCURACY_PASS, 2.0 * float(rank.get("chance", 0.0)))
    passed = bool(rank["value"] >= needed)
    reasons = [
        (f"the map's maximum lies {pointing.get('distance_mm', math.nan):.1f} mm from the target"
         + (" (a hit)" if hit else " (a miss)")),
        (f"{rank['value']:.0%} of its {rank.get('k', 'K')} most relevant voxels lie inside "
         f"(needs {needed:.0%}; chance {float(rank.get('chance', 0.0)):.2%})"),
    ]
    verdict = "on target" if hit and passed else "partly on target" if hit or passed else "off target"
    return {**out, "verdict": verdict, "peak_hit": hit, "rank_pass": passed, "reasons": reasons}
