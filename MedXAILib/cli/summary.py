"""The JSON summary written beside an attribution (``medxai explain --json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..attribution import Attribution
from ..io import to_json, write_atomic

__all__ = ["summary_of", "write_summary"]


def summary_of(attribution: Attribution, outputs: Sequence[Path]) -> dict[str, Any]:
    """Provenance plus simple statistics of the map and each channel's share of |relevance|."""
    summed = attribution.summed
    return {
        "outputs": [str(p) for p in outputs],
        "provenance": attribution.provenance,
        "statistics": {
            "min": float(summed.min()),
            "max": float(summed.max()),
            "sum": float(summed.sum(dtype=np.float64)),
            "abs_sum": float(np.abs(summed).sum(dtype=np.float64)),
            "channel_shares_of_abs_relevance": attribution.channel_shares,
        },
    }


def write_summary(attribution: Attribution, path: Path, outputs: Sequence[Path]) -> list[Path]:
    """Write the summary atomically (temporary file, then rename)."""
    text = to_json(summary_of(attribution, outputs))
    path.parent.mkdir(parents=True, exist_ok=True)
    return [write_atomic(path, text + "\n")]
