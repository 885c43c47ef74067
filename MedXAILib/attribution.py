"""`Attribution`: a signed, raw relevance map on the input grid plus its provenance.

The map is never normalised here: min-max scaling, absolute values and thresholds are display
choices made by the viewer. Provenance records everything needed to reproduce the map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io.jsondata import to_json
from .volume import ImageVolume

__all__ = ["Attribution", "PROVENANCE_KEY", "map3d"]

#: Header key (NRRD/MetaImage) or node attribute (Slicer) under which the provenance JSON is stored.
PROVENANCE_KEY = "MedXAI.Provenance"


@dataclass
class Attribution:
    """Relevance per input channel on the input grid.

    Attributes:
        array: (C, I, J, K) float32, one signed map per input channel.
        affine: the input image's IJK -> RAS affine.
        provenance: method, parameters, target, model id and SHA-256, library versions, seed,
            device, seconds, and method-specific diagnostics (e.g. the completeness error).
    """

    array: np.ndarray
    affine: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def summed(self) -> np.ndarray:
        """(I, J, K) map summed over input channels (what is displayed by default)."""
        return self.array.sum(axis=0)

    @property
    def channel_shares(self) -> list[float]:
        """Each channel's share of the total absolute relevance."""
        mass = np.abs(self.array).reshape(self.array.shape[0], -1).sum(axis=1).astype(np.float64)
        total = mass.sum()
        return [float(m / total) if total > 0 else 0.0 for m in mass]

    def to_volume(self, per_channel: bool = False) -> ImageVolume:
        """The summed map (or every channel) as an :class:`ImageVolume` on the input grid."""
        array = self.array if per_channel else self.summed[np.newaxis]
        return ImageVolume(array, self.affine.copy(), meta={"provenance": self.provenance})

    def provenance_json(self) -> str:
        return to_json(self.provenance, indent=None, sort_keys=True)

    def save(self, path: str | Path, per_channel: bool = False) -> list[Path]:
        """Write the map with the input's geometry and the provenance in the header.

        NRRD and MetaImage keep the provenance under :data:`PROVENANCE_KEY`; NIfTI cannot, so a
        JSON sidecar is written beside it. The write is atomic. Returns the paths written.
        """
        from .io import write_image  # SimpleITK is heavy; keep this module light

        return write_image(
            self.to_volume(per_channel), path, metadata={PROVENANCE_KEY: self.provenance_json()}
        )


def map3d(attribution_map: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An (I, J, K) float64 relevance map; a (C, I, J, K) map is summed over channels (as displayed).

    Raises:
        InputError: not 3D or 4D, not numeric, not of `shape`, or not finite.
    """
    array = np.asarray(attribution_map)
    if array.ndim == 4:
        array = array.sum(axis=0, dtype=np.float64)
    if array.ndim != 3:
        raise InputError(f"an attribution map must be (I, J, K) or (C, I, J, K); got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise InputError(f"an attribution map must be numeric; got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if shape is not None and array.shape != tuple(shape):
        raise InputError(f"the attribution map has shape {array.shape} but the mask/labels have "
                         f"{tuple(shape)}; resample the labels onto the map's grid first")
    if not np.all(np.isfinite(array)):
        raise InputError("the attribution map holds NaN or infinite values")
    return array
