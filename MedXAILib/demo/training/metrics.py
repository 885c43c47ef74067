"""Evaluation metrics for the demo models, in numpy only (no scikit-learn).

- :func:`dice_per_class`: Sørensen-Dice overlap of one label map with another, per class.
- :func:`roc_auc`: area under the ROC curve as the Mann-Whitney rank statistic (ties count one half),
  i.e. the probability that a random positive scores higher than a random negative.
- :func:`accuracy`: share of correct binary decisions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["dice_per_class", "roc_auc", "accuracy"]


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice of every class ``0 .. n_classes - 1``: 2|P∩T| / (|P| + |T|); NaN where both are empty."""
    prediction = np.asarray(prediction).ravel()
    truth = np.asarray(truth).ravel()
    if prediction.shape != truth.shape:
        raise ValueError(f"label maps differ in size: {prediction.size} vs {truth.size}")
    n = int(n_classes)
    # joint histogram: counts[p, t]
    counts = np.bincount(prediction.astype(np.int64) * n + truth.astype(np.int64), minlength=n * n)[: n * n]
    counts = counts.reshape(n, n).astype(np.float64)
    intersection = np.diag(counts)
    total = counts.sum(axis=1) + counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * intersection / total, np.nan)


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC from the rank-sum (Mann-Whitney U) statistic, with mid-ranks for ties.

    Raises:
        ValueError: when `labels` holds only one class.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError("labels and scores differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the AUC needs both positive and negative cases")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    start = 0
    while start < len(s):  # mid-ranks (1-based) for runs of equal scores
        end = start
        while end + 1 < len(s) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Share of `predictions` equal to `labels`."""
    y = np.asarray(labels).ravel()
    p = np.asarray(predictions).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValueError("labels and predictions must be non-empty and of equal length")
    return float(np.mean(y == p))
