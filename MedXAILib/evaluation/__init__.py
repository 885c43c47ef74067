"""Evaluation of explanations: quality metrics, method comparison and sanity checks.

``METRICS`` lists the metrics (faithfulness, localisation, robustness, complexity, randomisation);
:func:`evaluate` grades one attribution map and :func:`compare_methods` explains an image with
several methods and grades and ranks them. This package imports without torch (a GUI lists the
metrics and builds their forms first); the computations load torch on first use.
"""

from __future__ import annotations

from typing import Any

from .compare import RANKING_RULE, ComparisonResult, compare_methods
from .metrics import METRIC_FAMILIES, METRICS, MetricInfo, default_metrics, evaluate, metric_names

__all__ = [
    "METRICS",
    "METRIC_FAMILIES",
    "MetricInfo",
    "metric_names",
    "default_metrics",
    "evaluate",
    "compare_methods",
    "ComparisonResult",
    "RANKING_RULE",
    "RandomisationStep",
    "cascading_randomisation",
    "map_similarity",
]

_LAZY = {name: "MedXAILib.evaluation.randomisation"
         for name in ("RandomisationStep", "cascading_randomisation", "map_similarity")}


def __getattr__(name: str) -> Any:
    # the randomisation test imports torch; load it on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'MedXAILib.evaluation' has no attribute {name!r}")
