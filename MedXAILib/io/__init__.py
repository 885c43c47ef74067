"""Files in and out: images, JSON documents and the atomic writes every command uses.

- :mod:`.images`: image files <-> :class:`~MedXAILib.volume.ImageVolume` (SimpleITK; the one
  place where file geometry meets the data model).
- :mod:`.atomic`: :func:`write_atomic`, a file written completely or not at all.
- :mod:`.jsondata`: :func:`json_safe` and :func:`to_json`, the one JSON conversion of results.

This ``__init__`` stays light (stdlib and numpy): the image functions are loaded on first use, so the
light core can write JSON without importing SimpleITK.
"""

from __future__ import annotations

from typing import Any

from .atomic import write_atomic
from .jsondata import json_safe, to_json

__all__ = ["read_image", "read_images", "read_label_map", "write_image", "resample_to", "to_sitk",
           "from_sitk", "SUPPORTED_SUFFIXES", "write_atomic", "json_safe", "to_json"]

_IMAGE_NAMES = {"read_image", "read_images", "read_label_map", "write_image", "resample_to", "to_sitk",
                "from_sitk", "SUPPORTED_SUFFIXES"}


def __getattr__(name: str) -> Any:
    if name in _IMAGE_NAMES:
        from . import images

        return getattr(images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
