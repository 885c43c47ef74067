"""Complexity metrics: how concentrated is the relevance?

Both describe the distribution of |relevance| over voxels (channel-summed map). Neither direction
is better in general (a faithful map of a diffuse cue is diffuse), so the registry gives them no
``higher_is_better`` and method rankings leave them out.

- :func:`sparseness`: Gini index (Chalasani et al., ICML 2020).
- :func:`entropy`: Shannon entropy of the fractional contributions (Bhatt, Weller, Moura,
  IJCAI 2020, "complexity").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import ComplexityParams, MetricContext

__all__ = ["gini", "shannon_entropy", "sparseness", "entropy"]


def gini(values: np.ndarray) -> float:
    """Gini index of non-negative values: sum_k (2k - n - 1) v_(k) / (n sum v), v sorted ascending.

    0 when all values are equal, (n - 1) / n when one value holds everything; NaN when all are zero.
    """
    v = np.sort(np.abs(np.asarray(values, np.float64)).ravel())
    n, total = v.size, v.sum()
    if total <= 0:
        return float("nan")
    k = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * k - n - 1) * v).sum() / (n * total))


def shannon_entropy(values: np.ndarray) -> float:
    """Entropy (nats) of the shares p_i = |v_i| / sum |v|: 0 for one non-zero value, ln n for equal
    values; NaN when all are zero."""
    v = np.abs(np.asarray(values, np.float64)).ravel()
    total = v.sum()
    if total <= 0:
        return float("nan")
    p = v[v > 0] / total
    return float(-(p * np.log(p)).sum())


def sparseness(ctx: MetricContext, params: ComplexityParams) -> dict[str, Any]:
    """Sparseness: the Gini index of |relevance| over voxels (Chalasani et al. 2020)."""
    value = gini(ctx.relevance)
    out: dict[str, Any] = {"value": value}
    if not np.isfinite(value):
        out["warning"] = "the map is zero everywhere"
    return out


def entropy(ctx: MetricContext, params: ComplexityParams) -> dict[str, Any]:
    """Complexity: the entropy of each voxel's share of |relevance| (Bhatt et al. 2020), in nats,
    with ``normalised`` = entropy / ln(number of voxels) in [0, 1]."""
    value = shannon_entropy(ctx.relevance)
    out: dict[str, Any] = {"value": value, "normalised": value / np.log(ctx.relevance.size)
                           if ctx.relevance.size > 1 else 0.0}
    if not np.isfinite(value):
        out["warning"] = "the map is zero everywhere"
    return out
