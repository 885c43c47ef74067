"""`Attribution`: a signed, raw relevance map on the input grid plus its provenance.

The map is never normalised here: min-max scaling, absolute values and thresholds are display
choices made by the viewer. Provenance records everything needed to reproduce the map.

A multi-channel input (CT + PET) gets one map per channel. Whether those maps say which channel
decided depends on the method (:data:`MedXAILib.registry.MAP_UNITS`): contributions in score
units compare across channels; gradients are per unit of each channel's intensity (per HU, per
SUV), so their shares depend on the units; CAM maps are computed after the network has mixed the
channels and are split equally over them. :meth:`Attribution.channel_summary` says which case
holds. :meth:`Attribution.save` keeps every channel; :meth:`Attribution.save_sum` writes the sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io.jsondata import to_json
from .volume import ImageVolume

__all__ = ["Attribution", "PROVENANCE_KEY", "CHANNELS_KEY", "map3d"]

#: Header key (NRRD/MetaImage) or node attribute (Slicer) under which the provenance JSON is stored.
PROVENANCE_KEY = "MedXAI.Provenance"
#: Header key naming the channels of a saved multi-channel volume, comma-separated (``CT,PET``).
CHANNELS_KEY = "MedXAI.Channels"


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
        """(I, J, K) map summed over input channels."""
        return self.array.sum(axis=0)

    @property
    def channel_names(self) -> list[str]:
        """The input's channel names (from the provenance), or ``channel 0``, ``channel 1``, ..."""
        names = list((self.provenance.get("input") or {}).get("channel_names") or [])
        if len(names) != self.array.shape[0]:
            names = [f"channel {c}" for c in range(self.array.shape[0])]
        return [str(n) for n in names]

    @property
    def units(self) -> str:
        """What the map measures (:data:`MedXAILib.registry.MAP_UNITS`); ``score`` when unknown."""
        return str(self.provenance.get("map_units") or "score")

    @property
    def channels_resolved(self) -> bool:
        """False when the method gave every channel the same map (one map split equally: CAM, or a
        perturbation that removes all channels of a voxel together), so the channels cannot be told apart."""
        if self.array.shape[0] < 2:
            return True
        return not all(np.array_equal(self.array[0], channel) for channel in self.array[1:])

    @property
    def channel_shares(self) -> list[float]:
        """Each channel's share of the total absolute relevance."""
        return _shares(np.abs(self.array).reshape(self.array.shape[0], -1).sum(axis=1).astype(np.float64))

    def channel_summary(self, sums: Any = None) -> dict[str, Any]:
        """Which channel decided, as far as this map can say.

        Args:
            sums: the map's per-channel sums (float64) when the caller has them already.

        Returns:
            ``names``, ``shares`` (of the total |relevance|), ``sums`` (signed, per channel), ``units``, ``resolved`` (see
            :attr:`channels_resolved`), ``comparable`` (True only for resolved maps in score units,
            whose channel shares mean "how much of the decision came from this channel") and
            ``note``: one sentence a report can show beside the shares.
        """
        names = self.channel_names
        flat = self.array.reshape(self.array.shape[0], -1)
        sums = [float(v) for v in (flat.sum(axis=1, dtype=np.float64) if sums is None else sums)]
        # one channel holds all the relevance there is: no pass over |map| for its share
        shares = self.channel_shares if len(names) > 1 else [1.0 if sums[0] or np.any(flat) else 0.0]
        resolved = self.channels_resolved
        comparable = len(names) < 2 or (resolved and self.units == "score")
        if len(names) < 2:
            note = "one input channel"
        elif not resolved:
            note = ("the method cannot say which channel decided: it gives every channel the same map (it works "
                    "after the network has mixed the channels, or perturbs all channels of a voxel together)")
        elif self.units == "gradient":
            note = ("a gradient is per unit of each channel's intensity (" + ", ".join(names) + "): the channel "
                    "shares depend on those units and do not say which channel decided; compare score-unit maps "
                    "(integrated gradients, input x gradient) or a per-channel counterfactual")
        else:
            totals = ", ".join(f"{n} {v:+.3g}" for n, v in zip(names, sums))
            note = (f"contributions in score units add up and compare across channels (summed over the image: "
                    f"{totals}); which channel decided shows where they lie, e.g. summed over the target region, "
                    "not in the share of |relevance|, which noise spread over a whole channel can dominate")
        return {"names": names, "shares": [round(v, 6) for v in shares], "sums": [round(v, 6) for v in sums],
                "units": self.units, "resolved": resolved, "comparable": comparable, "note": note}

    def to_volume(self, per_channel: bool = False) -> ImageVolume:
        """The summed map (or every channel) as an :class:`ImageVolume` on the input grid."""
        array = self.array if per_channel else self.summed[np.newaxis]
        names = self.channel_names if per_channel else []
        return ImageVolume(array, self.affine.copy(), channel_names=names, meta={"provenance": self.provenance})

    def provenance_json(self) -> str:
        return to_json(self.provenance, indent=None, sort_keys=True)

    def save(self, path: str | Path, per_channel: bool = True) -> list[Path]:
        """Write the map with the input's geometry and the provenance in the header.

        Every input channel keeps its own map (a vector volume, channel names under
        :data:`CHANNELS_KEY`); ``per_channel=False`` (or :meth:`save_sum`) writes their sum. NRRD
        and MetaImage keep the provenance under :data:`PROVENANCE_KEY`; NIfTI cannot, so a JSON
        sidecar is written beside it. The write is atomic. Returns the paths written.
        """
        from .io import write_image  # SimpleITK is heavy; keep this module light

        metadata = {PROVENANCE_KEY: self.provenance_json()}
        if per_channel and self.array.shape[0] > 1:
            metadata[CHANNELS_KEY] = ",".join(n.replace(",", " ") for n in self.channel_names)
        return write_image(self.to_volume(per_channel), path, metadata=metadata)

    def save_sum(self, path: str | Path) -> list[Path]:
        """Write the channel sum (one scalar map, as a viewer shows it by default); see :meth:`save`."""
        return self.save(path, per_channel=False)


def _shares(mass: np.ndarray) -> list[float]:
    """Each entry's share of the total (all 0 when the total is 0)."""
    total = mass.sum()
    return [float(m / total) if total > 0 else 0.0 for m in mass]


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
