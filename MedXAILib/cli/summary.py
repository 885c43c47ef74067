"""The JSON summary written beside an attribution (``medxai explain --json``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..attribution import Attribution, _json_default

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
    text = json.dumps(summary_of(attribution, outputs), indent=2, default=_json_default)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text + "\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return [path]
