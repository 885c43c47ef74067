"""`Target`: what an explanation explains.

One target system serves every method. For a classifier the target is a class logit (default) or
probability. For a segmenter it is the class score reduced (sum by default, or mean) over a region of
the output grid: the whole predicted structure, a user mask, the connected component of the
predicted structure that contains a voxel, a box, a single voxel, or the boundary band of a
structure. Regions are given on the *input* grid, because the model adapter maps the output back
onto it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .errors import TargetError

__all__ = ["Target", "REGIONS", "SCORES", "REDUCTIONS"]

REGIONS = ("class", "predicted", "mask", "component", "box", "voxel", "boundary")
SCORES = ("logit", "probability", "margin")
REDUCTIONS = ("sum", "mean")


@dataclass
class Target:
    """The scalar whose attribution is computed.

    Attributes:
        class_index: output channel. ``None`` for a classifier means the predicted (top) class.
        region: ``"class"`` (classifiers: the class score itself; segmenters: the whole output
            volume), ``"predicted"`` (voxels whose argmax is the class), ``"mask"``, ``"component"``
            (connected component of the predicted structure containing ``voxel``), ``"box"``,
            ``"voxel"`` or ``"boundary"`` (the band ``band_mm`` around the structure: the voxels
            predicted as the class, or ``mask`` when one is given; see
            :func:`MedXAILib.boundary.boundary_band`).
        score: ``"logit"`` (default, the raw network output), ``"probability"`` (softmax over
            channels, or sigmoid for multi-label models) or ``"margin"`` (per voxel, the class
            logit minus the strongest competing logit, ``z_c - max_{k != c} z_k``: "why this class
            here and not another"; for sigmoid (multi-label) or one-channel models, whose channels
            do not compete, the margin is the logit itself, i.e. against "not c" at logit 0).
        reduction: ``"sum"`` or ``"mean"`` over the region's voxels.
        mask: boolean (I, J, K) array on the input grid, for ``region="mask"``; for
            ``region="boundary"`` it is the structure whose band is taken (optional).
        box: ``(i0, j0, k0, i1, j1, k1)`` inclusive voxel corners on the input grid.
        voxel: ``(i, j, k)`` on the input grid, for ``"voxel"`` and ``"component"``.
        band_mm: ``(inner, outer)`` thickness in mm of the ``"boundary"`` band inside and outside
            the structure's surface, measured with the true (possibly anisotropic) voxel spacing.
    """

    class_index: Optional[int] = None
    region: str = "class"
    score: str = "logit"
    reduction: str = "sum"
    mask: Optional[np.ndarray] = field(default=None, repr=False)
    box: Optional[tuple[int, int, int, int, int, int]] = None
    voxel: Optional[tuple[int, int, int]] = None
    band_mm: tuple[float, float] = (2.0, 2.0)

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.region, REGIONS, "region"),
            (self.score, SCORES, "score"),
            (self.reduction, REDUCTIONS, "reduction"),
        ):
            if value not in allowed:
                raise TargetError(f"target {what} must be one of {', '.join(allowed)}; got {value!r}")
        if self.class_index is not None and int(self.class_index) < 0:
            raise TargetError(f"class index must be >= 0; got {self.class_index}")
        needs = {"mask": self.mask, "box": self.box, "voxel": self.voxel, "component": self.voxel}
        if self.region in needs and needs[self.region] is None:
            what = "voxel" if self.region == "component" else self.region
            raise TargetError(f"a '{self.region}' target needs its {what}")
        if self.box is not None:
            if len(self.box) != 6:
                raise TargetError(f"a box needs six indices i0,j0,k0,i1,j1,k1; got {self.box}")
            lo, hi = np.array(self.box[:3]), np.array(self.box[3:])
            if np.any(hi < lo):
                raise TargetError(f"box corner (i1,j1,k1) must not be below (i0,j0,k0); got {self.box}")
        if self.voxel is not None and len(self.voxel) != 3:
            raise TargetError(f"a voxel needs three indices i,j,k; got {self.voxel}")
        self._check_band()

    def _check_band(self) -> None:
        try:
            band = tuple(float(v) for v in self.band_mm)
        except (TypeError, ValueError):
            band = ()
        if len(band) != 2 or not all(np.isfinite(band)) or min(band) < 0:
            raise TargetError(
                f"band_mm must be two finite thicknesses >= 0 in mm (inner, outer); got {self.band_mm!r}"
            )
        if self.region == "boundary" and max(band) == 0:
            raise TargetError(
                "a boundary band of 0 mm on both sides is empty; give band_mm=(inner, outer) > 0"
            )
        self.band_mm = band  # type: ignore[assignment]

    def region_mask(self, shape: tuple[int, int, int]) -> Optional[np.ndarray]:
        """The fixed region for mask, box and voxel targets on a grid of `shape` (None otherwise).

        Raises:
            TargetError: the region lies outside the grid or is empty.
        """
        if self.region == "mask":
            mask = self.checked_mask(shape)
        elif self.region == "box":
            lo = np.maximum(np.array(self.box[:3]), 0)
            hi = np.minimum(np.array(self.box[3:]), np.array(shape) - 1)
            mask = np.zeros(shape, bool)
            if np.all(hi >= lo):
                mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = True
        elif self.region == "voxel":
            self.check_voxel(shape)
            mask = np.zeros(shape, bool)
            mask[tuple(self.voxel)] = True
        else:
            return None
        if not mask.any():
            raise TargetError(
                f"the target {self.region} covers no voxel: it lies outside the image grid {tuple(shape)}"
                if self.region == "box" else f"the target {self.region} covers no voxel of the image grid {tuple(shape)}"
            )
        return mask

    def checked_mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The user mask as a boolean array, checked against a grid of `shape`.

        Raises:
            TargetError: no mask, or a mask on another grid.
        """
        if self.mask is None:
            raise TargetError(f"a '{self.region}' target has no mask")
        mask = np.asarray(self.mask).astype(bool)
        if mask.shape != tuple(shape):
            raise TargetError(
                f"the target mask has shape {mask.shape} but the image grid is {tuple(shape)}; "
                "resample the mask onto the image first (MedXAILib.io.read_label_map does)"
            )
        return mask

    def check_voxel(self, shape: tuple[int, int, int]) -> None:
        if any(not 0 <= int(v) < n for v, n in zip(self.voxel, shape)):
            raise TargetError(f"voxel {tuple(self.voxel)} lies outside the image grid {tuple(shape)}")

    @classmethod
    def from_description(cls, description: Any) -> Optional["Target"]:
        """The target a provenance's ``target`` record describes (:meth:`describe`), or None when it
        cannot be rebuilt from the record alone (a mask region: the record keeps only its size)."""
        if not isinstance(description, dict) or description.get("region") not in REGIONS:
            return None
        region = description["region"]
        if region == "mask" or (region == "boundary" and description.get("structure") == "mask"):
            return None
        try:
            return cls(class_index=description.get("class_index"), region=region,
                       score=description.get("score", "logit"), reduction=description.get("reduction", "sum"),
                       box=tuple(description["box"]) if description.get("box") else None,
                       voxel=tuple(description["voxel"]) if description.get("voxel") else None,
                       band_mm=tuple(description.get("band_mm") or (2.0, 2.0)))
        except (TargetError, TypeError, ValueError):
            return None

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description for provenance (masks summarised, not stored)."""
        out: dict[str, Any] = {
            "class_index": self.class_index,
            "region": self.region,
            "score": self.score,
            "reduction": self.reduction,
        }
        if self.box is not None:
            out["box"] = [int(v) for v in self.box]
        if self.voxel is not None:
            out["voxel"] = [int(v) for v in self.voxel]
        if self.mask is not None:
            out["mask_voxels"] = int(np.count_nonzero(self.mask))
        if self.region == "boundary":
            out["band_mm"] = [float(v) for v in self.band_mm]
            out["structure"] = "mask" if self.mask is not None else "predicted"
        return out
