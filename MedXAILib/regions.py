"""Region geometry on the input grid: predicted structures, components and boundary bands in mm.

The low room that the target system (:mod:`MedXAILib.scoring`) and the analyses
(:mod:`MedXAILib.analysis`) share; it knows nothing of methods or analyses.

- :func:`predicted_mask`: the voxels a segmenter's output predicts as a class (argmax for softmax
  outputs, logit > 0 for sigmoid outputs);
- :func:`component_at`: the connected component of a mask that holds a voxel;
- :func:`signed_distance_mm`: signed distance of every voxel centre to a structure's surface;
- :func:`boundary_band`: the voxels within ``inner_mm`` inside / ``outer_mm`` outside the surface
  (the region of a ``Target(region="boundary")``).

**Surface convention.** The structure is the union of its voxels, each a box of size ``spacing``
centred on the voxel centre; its surface is made of the voxel faces between structure and
background voxels, half a voxel from the centres on either side. The signed distance of a voxel
centre is its Euclidean distance (mm) to that surface, negative inside, positive outside; it is
never 0 at a centre (face-adjacent centres lie at -s/2 and +s/2), and 0 is the surface itself. It
is exact, anisotropic spacing included: the nearest point of a voxel box to a voxel centre lies on
the half-voxel lattice, so SciPy's Euclidean distance transform (``sampling=spacing / 2``) on that
lattice gives it; bands and profiles, which need only a few mm, use an equivalent windowed
separable transform on the structure's neighbourhood. For a voxelised sphere of radius R the
result differs from ``|x - c| - R`` by less than a voxel (the voxel staircase, not the method).
The edge of the grid is not a surface: what lies beyond it is unknown.

Only numpy at import time; SciPy and torch load on use.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from .errors import InputError

__all__ = [
    "predicted_mask",
    "component_at",
    "spacing_array",
    "mask_array",
    "structure_mask",
    "thickness_mm",
    "signed_distance_mm",
    "signed_distance_near",
    "boundary_band",
]


def predicted_mask(output: Any, index: int, activation: str) -> np.ndarray:
    """The (I, J, K) voxels that a (1, K, I, J, K) output tensor predicts as class `index`.

    Argmax over channels for ``"softmax"`` outputs, logit > 0 (probability > 0.5) for ``"sigmoid"``
    (multi-label) outputs.
    """
    import torch

    with torch.no_grad():
        if activation == "sigmoid":
            mask = output[0, index] > 0
        else:
            mask = output[0].argmax(0) == index
    return mask.cpu().numpy()


def component_at(mask: np.ndarray, voxel: Sequence[int]) -> np.ndarray:
    """The face-connected component of boolean `mask` that holds `voxel` (empty if it is not in `mask`)."""
    from scipy import ndimage

    voxel = tuple(int(v) for v in voxel)
    if not mask[voxel]:
        return np.zeros(mask.shape, bool)
    labels, _ = ndimage.label(mask)
    return labels == labels[voxel]


def spacing_array(spacing: Sequence[float]) -> np.ndarray:
    """`spacing` as three positive finite voxel sizes in mm (float64); InputError otherwise."""
    try:
        values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.zeros(0)
    if values.size != 3 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"spacing must be three positive voxel sizes in mm; got {spacing!r}")
    return values


def mask_array(mask: Any, what: str = "mask") -> np.ndarray:
    """A boolean (I, J, K) mask from an (I, J, K) or (1, I, J, K) array; InputError otherwise."""
    array = np.asarray(mask)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise InputError(f"the {what} must be a 3D (I, J, K) array; got shape {array.shape}")
    return array.astype(bool)


def structure_mask(mask: Any) -> np.ndarray:
    """A boolean structure with both inside and outside voxels (else it has no surface)."""
    structure = mask_array(mask, "structure mask")
    if not structure.any():
        raise InputError("the structure mask is empty, so it has no surface to measure distances from")
    if structure.all():
        raise InputError("the structure mask fills the whole grid, so it has no surface inside the image")
    return structure


def thickness_mm(value: float, what: str) -> float:
    """`value` as a finite thickness >= 0 mm; `what` names it in the InputError otherwise."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number of mm; got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{what} must be a finite thickness >= 0 mm; got {value}")
    return value


# ------------------------------------------------------------------------------------------------
# Distances


#: Slack (mm) in distance comparisons, so float rounding never moves a voxel across a band edge.
_EPS_MM = 1e-9


def _lattice_distance(region: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Exact distance (mm) from the centres of `region` to the boxes of the other voxels (0 off `region`).

    The point of a box nearest to a voxel centre has coordinates on the half-voxel lattice (the
    clamp of a centre onto a box is a centre, face, edge or corner coordinate per axis), so the
    distance to the union of boxes is the Euclidean distance transform, on the lattice of spacing
    s/2, to the box points of the other voxels (their centres dilated by one half-step per axis).
    Costs about 8x a plain distance transform of the grid.
    """
    from scipy import ndimage

    # index 2p is the centre of voxel p; odd indices are face, edge and corner coordinates. Box points
    # beyond the grid's outer faces are never the nearest point to a centre inside, so 2n - 1 suffice.
    lattice = np.zeros(tuple(2 * n - 1 for n in region.shape), dtype=bool)
    lattice[::2, ::2, ::2] = ~region
    for axis in range(3):  # separable 3x3x3 dilation
        grown = lattice.copy()
        ahead, behind = [slice(None)] * 3, [slice(None)] * 3
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        grown[tuple(ahead)] |= lattice[tuple(behind)]
        grown[tuple(behind)] |= lattice[tuple(ahead)]
        lattice = grown
    distance = ndimage.distance_transform_edt(~lattice, sampling=spacing / 2)[::2, ::2, ::2]
    return np.where(region, distance, 0.0)


def _windowed_distance(region: np.ndarray, spacing: np.ndarray, reach_mm: float) -> np.ndarray:
    """Like :func:`_lattice_distance` where the distance is <= `reach_mm`, +inf beyond (0 off `region`).

    The squared distance to the nearest box, ``min_q sum_a ((|p_a - q_a| - 1/2)+ s_a)^2``, is separable,
    so three 1D min-plus passes compute it exactly; a box farther than `reach_mm` along one axis is
    farther in total, so each pass needs only offsets up to ``reach_mm / s_a + 1/2`` voxels. Cheap
    for the few-mm bands and profiles it serves.
    """
    squared = np.where(region, np.inf, 0.0)
    for axis in range(3):
        s = float(spacing[axis])
        steps = min(int(math.floor(reach_mm / s + 0.5 + _EPS_MM)), region.shape[axis] - 1)
        out = squared.copy()
        for k in range(1, steps + 1):
            cost = ((k - 0.5) * s) ** 2  # to the near face of a box k voxels away along this axis
            ahead, behind = [slice(None)] * 3, [slice(None)] * 3
            ahead[axis], behind[axis] = slice(k, None), slice(None, -k)
            ahead, behind = tuple(ahead), tuple(behind)
            np.minimum(out[behind], squared[ahead] + cost, out=out[behind])
            np.minimum(out[ahead], squared[behind] + cost, out=out[ahead])
        squared = out
    distance = np.sqrt(squared)
    distance[distance > reach_mm + _EPS_MM] = np.inf
    return distance


def _bounding_box(mask: np.ndarray) -> list[tuple[int, int]]:
    found = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    return [(int(f[0]), int(f[-1])) for f in found]


def _crop(structure: np.ndarray, spacing: np.ndarray, reach_mm: float) -> tuple[slice, ...]:
    """The structure's bounding box grown by `reach_mm` (plus one voxel) per axis, inside the grid.

    A box within `reach_mm` of a voxel centre is at most ``reach_mm / s + 1/2`` voxels away along
    each axis, so every voxel within `reach_mm` of the surface, and every box it can reach, lies in
    the crop: distances up to `reach_mm` on the crop equal those on the whole grid.
    """
    slices = []
    for axis, (first, last) in enumerate(_bounding_box(structure)):
        margin = int(math.ceil(reach_mm / spacing[axis])) + 1
        slices.append(slice(max(first - margin, 0), min(last + margin + 1, structure.shape[axis])))
    return tuple(slices)


def signed_distance_near(structure: np.ndarray, spacing: np.ndarray, reach_mm: float) -> tuple[np.ndarray, tuple]:
    """:func:`signed_distance_mm` within `reach_mm` of the surface, on the crop that reaches that far.

    Returns ``(signed, box)``: the signed distances on the crop ``structure[box]`` (inf beyond the reach).
    """
    """Exact signed distances up to `reach_mm` (+-inf beyond) on a crop holding every voxel that near."""
    # The surface of a structure is that of its complement: crop around whichever side is smaller
    # (a background's own bounding box is the whole grid).
    size = {side: np.prod([b - a + 1 for a, b in _bounding_box(side_mask)])
            for side, side_mask in (("structure", structure), ("complement", ~structure))}
    flip = size["complement"] < size["structure"]
    side = ~structure if flip else structure
    box = _crop(side, spacing, reach_mm)
    part = side[box]
    signed = np.where(part, -_windowed_distance(part, spacing, reach_mm),
                      _windowed_distance(~part, spacing, reach_mm))
    return (-signed if flip else signed), box


def signed_distance_mm(
    mask: np.ndarray, spacing: Sequence[float], max_mm: Optional[float] = None
) -> np.ndarray:
    """Signed distance (mm) of every voxel centre to a structure's surface.

    Negative inside the structure, positive outside, 0 on the surface (the voxel faces between
    structure and background, see the module docstring): face-adjacent voxel centres lie at
    ``-s/2`` (inside) and ``+s/2`` (outside) for the spacing ``s`` across that face. Exact: the
    Euclidean distance to the nearest point of the other side's voxel boxes.

    Args:
        mask: boolean (I, J, K) structure (non-zero = inside).
        spacing: voxel size in mm along I, J, K (``ImageVolume.spacing``); anisotropy is exact.
        max_mm: when given, only distances up to `max_mm` are computed (much cheaper on large grids)
            and farther voxels get ``-inf`` (inside) or ``+inf`` (outside). By default every
            distance is computed, which needs about 8x the memory and time of a plain distance
            transform of the grid.

    Returns:
        (I, J, K) float64 distances in mm.

    Raises:
        InputError: the mask is not 3D, is empty or fills the grid, the spacing is not three
            positive numbers, or `max_mm` is negative.
    """
    structure, spacing = structure_mask(mask), spacing_array(spacing)
    if max_mm is None:
        inside, outside = _lattice_distance(structure, spacing), _lattice_distance(~structure, spacing)
        return np.where(structure, -inside, outside)
    reach = thickness_mm(max_mm, "max_mm")
    signed, box = signed_distance_near(structure, spacing, reach)
    out = np.where(structure, -np.inf, np.inf)
    out[box] = signed
    return out


def boundary_band(mask: np.ndarray, spacing: Sequence[float], inner_mm: float, outer_mm: float) -> np.ndarray:
    """The voxels whose centres lie within `inner_mm` inside or `outer_mm` outside the surface.

    That is ``-inner_mm <= signed_distance_mm(mask, spacing) <= outer_mm``. With spacing ``s``
    across a flat surface the band holds ``floor(inner_mm / s + 1/2)`` voxel layers inside and
    ``floor(outer_mm / s + 1/2)`` outside (the n-th layer's centre lies (n - 1/2) s from the
    face), so where the thickness is a multiple of the spacing the band is exactly that many mm
    thick along every axis, whatever the anisotropy.

    Args:
        mask: boolean (I, J, K) structure.
        spacing: voxel size in mm along I, J, K.
        inner_mm: band thickness inside the structure (mm, >= 0).
        outer_mm: band thickness outside the structure (mm, >= 0).

    Returns:
        Boolean (I, J, K) band (computed on the structure's neighbourhood only, so it is cheap for
        small structures on large grids).

    Raises:
        InputError: bad mask or spacing (see :func:`signed_distance_mm`), or a negative thickness.
    """
    structure, spacing = structure_mask(mask), spacing_array(spacing)
    inner, outer = thickness_mm(inner_mm, "inner_mm"), thickness_mm(outer_mm, "outer_mm")
    signed, box = signed_distance_near(structure, spacing, max(inner, outer))
    band = np.zeros(structure.shape, dtype=bool)
    band[box] = (signed >= -inner - _EPS_MM) & (signed <= outer + _EPS_MM)
    return band
