"""`ImageVolume`: a voxel array with its IJK -> RAS geometry.

The array is shaped (C, I, J, K) (channels first, then the three voxel axes, MONAI's order) and the
affine maps a voxel index (i, j, k, 1) to RAS millimetres. Slicer's and SimpleITK's (K, J, I) arrays
and LPS directions are converted in exactly one place per side: ``MedXAILib.io`` for files and the
Slicer bridge for MRML nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["ImageVolume", "spacing_of", "direction_of"]


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing in mm: the lengths of the affine's three column vectors."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def direction_of(affine: np.ndarray) -> np.ndarray:
    """Unit direction cosines (3x3, columns = I, J, K axes in RAS)."""
    return np.asarray(affine, dtype=np.float64)[:3, :3] / spacing_of(affine)


@dataclass
class ImageVolume:
    """A (C, I, J, K) float32 voxel array plus its 4x4 IJK -> RAS affine (mm).

    Attributes:
        array: voxel values, channels first.
        affine: homogeneous matrix mapping voxel indices to RAS coordinates in millimetres.
        channel_names: optional names, one per channel (e.g. ``["CT", "PET"]``).
        meta: free-form metadata (source path, modality, ...), never used for maths.
    """

    array: np.ndarray
    affine: np.ndarray
    channel_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim == 3:
            array = array[np.newaxis]
        if array.ndim != 4:
            raise InputError(
                f"an image volume needs 3 spatial dimensions (plus channels); got an array of shape "
                f"{tuple(np.shape(self.array))}"
            )
        self.array = np.ascontiguousarray(array, dtype=np.float32)
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise InputError(f"the affine must be a finite 4x4 matrix; got shape {affine.shape}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise InputError("the affine is singular: voxel spacing or direction is degenerate")
        self.affine = affine
        if self.channel_names and len(self.channel_names) != self.array.shape[0]:
            raise InputError(
                f"{len(self.channel_names)} channel names for {self.array.shape[0]} channels"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (I, J, K)."""
        return tuple(int(n) for n in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spacing(self) -> np.ndarray:
        return spacing_of(self.affine)

    @property
    def direction(self) -> np.ndarray:
        return direction_of(self.affine)

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    def with_array(self, array: np.ndarray, **changes: Any) -> "ImageVolume":
        """A new volume on the same grid holding `array` (shaped (C, I, J, K) or (I, J, K))."""
        return ImageVolume(
            array,
            self.affine.copy(),
            channel_names=changes.get("channel_names", []),
            meta=changes.get("meta", dict(self.meta)),
        )

    def same_grid(self, other: "ImageVolume", atol_mm: float = 1e-4) -> bool:
        """True when `other` has the same spatial shape and (to `atol_mm`) the same affine."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol_mm)

    def check_finite(self) -> None:
        """Raise :class:`InputError` when any voxel is NaN or infinite."""
        if np.isfinite(self.array.min()) and np.isfinite(self.array.max()):  # NaN propagates; no mask to allocate
            return
        bad = ~np.isfinite(self.array)
        if bad.any():
            count = int(bad.sum())
            first = tuple(int(v) for v in np.argwhere(bad)[0])
            raise InputError(
                f"the image has {count} NaN or infinite voxel(s) (first at channel, i, j, k = "
                f"{first}); fill or mask them before explaining"
            )
