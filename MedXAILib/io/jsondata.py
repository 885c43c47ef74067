"""The one conversion of results to strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import PurePath
from typing import Any, Mapping

import numpy as np

__all__ = ["json_safe", "to_json"]


def json_safe(value: Any) -> Any:
    """`value` as plain JSON data: mappings with string keys, lists, numbers, strings, None.

    numpy scalars and arrays become Python numbers and lists, paths become strings, and NaN and
    infinities become None (strict JSON has neither). Other objects pass through unchanged, so
    ``json.dumps`` still refuses what has no JSON form.
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, PurePath):
        return str(value)
    return value


def to_json(value: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON text of :func:`json_safe` (`value`)."""
    return json.dumps(json_safe(value), indent=indent, sort_keys=sort_keys, allow_nan=False)
