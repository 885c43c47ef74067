"""Regions on the input grid for the region-based perturbation methods.

A region map is an integer label volume shaped (I, J, K) with values 0..R-1: region ``r`` is the set
of voxels labelled ``r``. Three kinds serve feature ablation, LIME and KernelSHAP:

- :func:`supervoxels`: SLIC (Achanta et al., TPAMI 2012) on the 3D volume, clustered on an isotropic
  working grid in mm so that supervoxels are isotropic in mm; deterministic (SLIC starts from a
  regular grid).
- :func:`grid_regions`: cubes of a regular grid, ``cell`` voxels on a side.
- :func:`label_regions`: the structures of a segmentation / label map, every distinct label
  (background included) becoming one region.

:func:`build_regions` applies the parameter convention shared by those methods (``regions``,
``n_segments``, ``compactness``, ``grid_cell``, ``label_map``); :func:`coalition_inputs` and
:func:`paint` turn coalitions of regions into perturbed inputs and region values into maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import ParameterError

__all__ = [
    "Regions",
    "parse_triple",
    "grid_regions",
    "supervoxels",
    "supervoxel_grid",
    "SUPERVOXEL_MAX_VOXELS",
    "label_regions",
    "build_regions",
    "coalition_inputs",
    "paint",
]


def parse_triple(value: Any, name: str, *, integer: bool = False) -> tuple:
    """One number for all three axes, or ``"a,b,c"`` for I, J, K; every entry must be > 0.

    Raises:
        ParameterError: not numbers, not one or three of them, not positive, or not whole numbers
            where ``integer`` is asked for.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        parts: Sequence[Any] = [value]
    elif isinstance(value, (tuple, list)):
        parts = list(value)
    else:
        parts = [p for p in str(value).replace(" ", "").replace("x", ",").split(",") if p]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ParameterError(
            f"parameter '{name}' must be one number or three separated by commas ('a,b,c'); got {value!r}"
        ) from None
    if len(numbers) == 1:
        numbers = numbers * 3
    if len(numbers) != 3:
        raise ParameterError(f"parameter '{name}' needs one or three numbers (I, J, K); got {value!r}")
    if any(not np.isfinite(n) or n <= 0 for n in numbers):
        raise ParameterError(f"parameter '{name}' must be positive; got {value!r}")
    if integer:
        if any(n != int(n) for n in numbers):
            raise ParameterError(f"parameter '{name}' must be whole numbers of voxels; got {value!r}")
        return tuple(int(n) for n in numbers)
    return tuple(numbers)


def grid_regions(shape: Sequence[int], cell: int | Sequence[int]) -> np.ndarray:
    """Regular grid of cubes ``cell`` voxels on a side (last cells clipped at the border).

    Args:
        shape: spatial shape (I, J, K).
        cell: edge in voxels, one int or one per axis.

    Returns:
        int64 labels (I, J, K), 0..R-1 in C order of the cells.
    """
    cell = parse_triple(cell, "grid_cell", integer=True)
    shape = tuple(int(n) for n in shape)
    counts = [-(-n // c) for n, c in zip(shape, cell)]
    index = [np.arange(n) // c for n, c in zip(shape, cell)]
    i, j, k = index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]
    labels = (i * counts[1] + j) * counts[2] + k
    return np.ascontiguousarray(labels, dtype=np.int64)


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64), values


#: Largest working grid for SLIC (voxels); bigger volumes are clustered on a coarser isotropic grid.
SUPERVOXEL_MAX_VOXELS = 2**21


def supervoxel_grid(
    shape: Sequence[int], spacing: Optional[Sequence[float]]
) -> tuple[tuple[int, ...], float]:
    """The isotropic working grid of :func:`supervoxels`: (shape, voxel size in mm).

    The voxel size is the finest spacing of the image, coarsened just enough that the grid holds
    at most :data:`SUPERVOXEL_MAX_VOXELS` voxels; the grid covers the same physical box.
    """
    shape = np.asarray(shape, dtype=np.float64)
    spacing = np.ones(3) if spacing is None else np.asarray(spacing, dtype=np.float64)
    extent = shape * spacing
    size = max(float(spacing.min()), float(np.cbrt(np.prod(extent) / SUPERVOXEL_MAX_VOXELS)))
    working = tuple(int(max(1, round(e / size))) for e in extent)
    return working, size


def supervoxels(
    volume: np.ndarray,
    n_segments: int = 50,
    compactness: float = 0.3,
    spacing: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """SLIC supervoxels of a 3D volume (Achanta et al. 2012, via ``skimage.segmentation.slic``).

    Each channel is scaled to [0, 1] between its 1st and 99th percentile first, so ``compactness``
    means the same for CT in HU, MRI or PET; several channels are clustered jointly (channel axis
    moved last). SLIC seeds its clusters on a regular grid of voxel *indices*, so on an anisotropic
    grid passing ``spacing`` to ``slic`` alone still gives supervoxels elongated along the thick
    axis; the volume is therefore resampled (trilinear) onto an isotropic working grid in mm
    (:func:`supervoxel_grid`, also capping the cost on large volumes), clustered there (uniform
    spacing, so ``compactness`` keeps SLIC's meaning relative to the seed step), and the labels
    are mapped back by nearest neighbour (pieces cut apart by that become regions of their own,
    small fragments join their nearest region). The result is deterministic.

    Args:
        volume: (I, J, K) or (C, I, J, K).
        n_segments: approximate number of supervoxels.
        compactness: balance of spatial against intensity distance (higher: rounder).
        spacing: voxel spacing in mm (I, J, K); ``None`` for isotropic voxels.

    Returns:
        int64 labels (I, J, K), 0..R-1.
    """
    from scipy import ndimage
    from skimage.segmentation import slic


    array = np.asarray(volume, dtype=np.float64)
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4:
        raise ParameterError(f"supervoxels need a (C, I, J, K) or (I, J, K) volume; got {array.shape}")
    shape = array.shape[1:]
    working, _ = supervoxel_grid(shape, spacing)
    zoom = [w / n for w, n in zip(working, shape)]
    channels = []
    for channel in array:
        lo, hi = np.percentile(channel, [1.0, 99.0])
        scaled = np.clip((channel - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(channel)
        if tuple(working) != tuple(shape):
            scaled = ndimage.zoom(scaled, zoom, order=1, mode="nearest", grid_mode=True)
        channels.append(scaled)
    if len(channels) == 1:
        image, channel_axis = channels[0], None
    else:
        image, channel_axis = np.stack(channels, axis=-1), -1
    labels = slic(
        image,
        n_segments=int(n_segments),
        compactness=float(compactness),
        spacing=None,  # the working grid is isotropic: its voxels are equal in mm
        channel_axis=channel_axis,
        start_label=0,
        enforce_connectivity=True,
    )
    if tuple(labels.shape) != tuple(shape):
        index = [
            np.minimum(((np.arange(n) + 0.5) * w / n).astype(np.int64), w - 1)
            for n, w in zip(shape, labels.shape)
        ]
        labels = _connected(labels[np.ix_(*index)])
    return _relabel(np.asarray(labels))[0]


def _connected(labels: np.ndarray, min_fraction: float = 0.25, max_iterations: int = 64) -> np.ndarray:
    """Split regions into connected pieces; merge pieces below `min_fraction` of the mean size.

    Mapping supervoxels from the working grid back onto a coarser axis can cut a thin neck of a
    supervoxel; the big pieces become regions of their own and small fragments are absorbed by
    the pieces around them (grown one face-neighbour layer at a time, in place), so every region
    is connected in practice.
    """
    from skimage.measure import label

    pieces = label(labels, background=-1, connectivity=1)  # equal-valued connected components
    sizes = np.bincount(pieces.ravel())
    small = sizes < min_fraction * labels.size / max(1, int(labels.max()) + 1)
    small[0] = False  # label() numbers pieces from 1
    fragments = small[pieces]
    if fragments.all():
        return labels
    for _ in range(max_iterations):
        if not fragments.any():
            break
        for axis in range(3):
            for forward in (True, False):
                head, tail = slice(1, None), slice(None, -1)
                dst, src = [slice(None)] * 3, [slice(None)] * 3
                dst[axis], src[axis] = (head, tail) if forward else (tail, head)
                dst, src = tuple(dst), tuple(src)
                take = fragments[dst] & ~fragments[src]
                pieces[dst][take] = pieces[src][take]
                fragments[dst][take] = False
    return pieces


def label_regions(label_map_array: np.ndarray) -> np.ndarray:
    """Every distinct label of a label map (background included) as a region, 0..R-1 in label order.

    Args:
        label_map_array: integer-valued (I, J, K) or (1, I, J, K) array on the image grid.
    """
    array = np.asarray(label_map_array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    return _relabel(np.rint(array).astype(np.int64))[0]


@dataclass
class Regions:
    """A region map with its description for the provenance."""

    labels: np.ndarray  # int64 (I, J, K), 0..R-1
    kind: str
    values: Optional[list[int]] = None  # label value of each region (kind "labels")
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.labels.max()) + 1

    def describe(self) -> dict[str, Any]:
        out = {"kind": self.kind, "n_regions": self.n, **self.info}
        if self.values is not None:
            out["label_values"] = self.values
        return out


def build_regions(ctx, params) -> Regions:
    """The region map that `params` asks for (see ``catalog.perturbation.RegionParams``).

    Raises:
        ParameterError: ``regions=labels`` without a ``label_map`` path, or a bad ``grid_cell``.
        InputError / GeometryError: the label map cannot be read or does not overlap the image.
    """
    shape = tuple(ctx.x.shape[2:])
    if params.regions == "grid":
        cell = parse_triple(params.grid_cell, "grid_cell", integer=True)
        clipped = tuple(min(c, n) for c, n in zip(cell, shape))
        if clipped != cell:
            ctx.warn(f"grid_cell {cell} exceeds the image {shape}; clipped to {clipped} voxels")
        return Regions(grid_regions(shape, clipped), "grid", info={"grid_cell": list(clipped)})
    if params.regions == "labels":
        if not str(params.label_map).strip():
            raise ParameterError(
                "regions=labels needs a label map: set 'label_map' to the path of a segmentation/label "
                "volume (it is resampled onto the image grid)"
            )
        from ..io import read_label_map

        label_map = read_label_map(params.label_map, reference=ctx.image)
        labels, values = _relabel(np.rint(label_map.array[0]).astype(np.int64))
        if labels.shape != shape:
            raise ParameterError(f"the label map grid {labels.shape} differs from the image grid {shape}")
        values = [int(v) for v in values]
        return Regions(labels, "labels", values=values, info={"label_map": str(params.label_map)})
    if params.regions == "supervoxels":
        labels = supervoxels(
            ctx.x[0].detach().cpu().numpy(), params.n_segments, params.compactness, spacing=ctx.spacing
        )
        return Regions(labels, "supervoxels", info={"n_segments_asked": int(params.n_segments)})
    raise ParameterError(f"unknown regions {params.regions!r}; use supervoxels, grid or labels")


def coalition_inputs(
    x: torch.Tensor, baseline: torch.Tensor, labels: torch.Tensor, z: torch.Tensor, per_channel: bool
) -> torch.Tensor:
    """Inputs where present features keep ``x`` and absent ones take ``baseline``.

    Args:
        x, baseline: (1, C, I, J, K).
        labels: int64 region map (I, J, K) on x's device, values 0..R-1.
        z: (B, F) presence of each feature (1 present, 0 absent); F = R, or C*R with
            ``per_channel`` (feature ``c*R + r`` is channel c of region r).

    Returns:
        (B, C, I, J, K): ``x * m + baseline * (1 - m)`` with ``m`` the presence painted on the voxels.
    """
    z = z.to(device=x.device, dtype=x.dtype)
    if per_channel:
        mask = z.view(z.shape[0], x.shape[1], -1)[:, :, labels]  # (B, C, I, J, K)
    else:
        mask = z[:, labels].unsqueeze(1)  # (B, 1, I, J, K)
    return x * mask + baseline * (1 - mask)


def paint(values: torch.Tensor, labels: torch.Tensor, n_channels: int, per_channel: bool) -> torch.Tensor:
    """A (1, C, I, J, K) map with each feature's value on its voxels.

    Without ``per_channel`` the region's value is split equally across the C channels, so the
    channel-summed map holds the region's value on each of its voxels.
    """
    if per_channel:
        return values.view(n_channels, -1)[:, labels].unsqueeze(0)
    return (values[labels] / n_channels).expand(n_channels, *labels.shape).unsqueeze(0).clone()
