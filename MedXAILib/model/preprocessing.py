"""Explicit, differentiable preprocessing between the stored voxels and the network.

A bare model receives the voxel array as stored, shaped (1, C, I, J, K). When a bundle or the caller
asks for more (orientation, spacing, intensity window or normalisation), the steps run here in torch,
inside the autograd graph. Gradients therefore reach the stored voxels through the preprocessing,
and a segmentation output is mapped back onto the input grid by inverting the spatial steps. An
attribution thus always lives on the input grid with no extra resampling of the map itself.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..volume import direction_of, spacing_of

__all__ = ["Grid", "Preprocessing", "orientation_transform", "resample"]

_CODE_AXIS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


@dataclass(frozen=True)
class Grid:
    """A voxel grid: IJK -> RAS affine plus spatial shape."""

    affine: np.ndarray
    shape: tuple[int, int, int]


def orientation_transform(affine: np.ndarray, axcodes: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Permutation and flips that make the voxel axes point along `axcodes` (e.g. ``"RAS"``).

    Returns ``(perm, flips)``: output axis ``t`` is input axis ``perm[t]``, reversed when ``flips[t]``.
    The permutation maximises the alignment of axes with the requested directions, so oblique
    volumes get their closest axis-aligned orientation (as MONAI's ``Orientation`` does).
    """
    codes = axcodes.upper()
    if len(codes) != 3 or any(c not in _CODE_AXIS for c in codes) or len(
        {_CODE_AXIS[c][0] for c in codes}
    ) != 3:
        raise ModelError(f"orientation must be three codes from R/L, A/P, S/I (e.g. RAS); got {axcodes!r}")
    direction = direction_of(affine)
    best = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(abs(direction[_CODE_AXIS[c][0], a]) for c, a in zip(codes, perm)),
    )
    flips = tuple(
        bool(np.sign(direction[_CODE_AXIS[c][0], a]) != _CODE_AXIS[c][1]) for c, a in zip(codes, best)
    )
    return tuple(best), flips


def _orient_grid(grid: Grid, perm: Sequence[int], flips: Sequence[bool]) -> Grid:
    affine = np.eye(4)
    origin = grid.affine[:3, 3].copy()
    for t, (a, flip) in enumerate(zip(perm, flips)):
        column = grid.affine[:3, a]
        if flip:
            origin = origin + (grid.shape[a] - 1) * column
            column = -column
        affine[:3, t] = column
    affine[:3, 3] = origin
    return Grid(affine, tuple(grid.shape[a] for a in perm))


def resample(x: torch.Tensor, source: Grid, dest: Grid, mode: str = "bilinear") -> torch.Tensor:
    """Differentiably resample (B, C, *source.shape) onto `dest` by physical position.

    Voxels of `dest` outside `source` take the nearest border value. ``mode`` is torch's
    ``grid_sample`` mode (``"bilinear"`` is trilinear on volumes, or ``"nearest"``).
    """
    index_map = np.linalg.inv(source.affine) @ dest.affine  # dest voxel -> source voxel
    device, dtype = x.device, x.dtype
    axes = [torch.arange(n, device=device, dtype=torch.float64) for n in dest.shape]
    ii, jj, kk = torch.meshgrid(*axes, indexing="ij")
    m = torch.as_tensor(index_map, device=device)
    src = [m[r, 0] * ii + m[r, 1] * jj + m[r, 2] * kk + m[r, 3] for r in range(3)]
    # grid_sample wants (x, y, z) = (K, J, I) normalised to [-1, 1] with align_corners=True
    norm = [
        (2 * s / (n - 1) - 1) if n > 1 else torch.zeros_like(s) for s, n in zip(src, source.shape)
    ]
    grid = torch.stack([norm[2], norm[1], norm[0]], dim=-1).to(dtype).unsqueeze(0)
    grid = grid.expand(x.shape[0], *grid.shape[1:])
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=True)


class _Step:
    spatial = False

    def grid_after(self, grid: Grid) -> Grid:
        return grid

    def apply(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        raise NotImplementedError

    def invert_output(self, y: torch.Tensor, before: Grid, after: Grid) -> torch.Tensor:
        return y


@dataclass
class Orientation(_Step):
    axcodes: str
    spatial = True

    def grid_after(self, grid: Grid) -> Grid:
        return _orient_grid(grid, *orientation_transform(grid.affine, self.axcodes))

    def apply(self, x, grid):
        perm, flips = orientation_transform(grid.affine, self.axcodes)
        x = x.permute(0, 1, *(2 + a for a in perm))
        dims = [2 + t for t, f in enumerate(flips) if f]
        return x.flip(dims) if dims else x

    def invert_output(self, y, before, after):
        perm, flips = orientation_transform(before.affine, self.axcodes)
        dims = [2 + t for t, f in enumerate(flips) if f]
        y = y.flip(dims) if dims else y
        inverse = np.argsort(perm)
        return y.permute(0, 1, *(2 + int(a) for a in inverse))


@dataclass
class Spacing(_Step):
    """Resample to `pixdim` mm keeping the direction and the centre of voxel (0, 0, 0)."""

    pixdim: tuple[float, float, float]
    mode: str = "bilinear"
    spatial = True

    def grid_after(self, grid: Grid) -> Grid:
        old = spacing_of(grid.affine)
        new = np.asarray(self.pixdim, dtype=np.float64)
        affine = grid.affine.copy()
        affine[:3, :3] = direction_of(grid.affine) * new
        shape = tuple(int(np.floor((n - 1) * o / s + 1e-6)) + 1 for n, o, s in zip(grid.shape, old, new))
        return Grid(affine, shape)

    def apply(self, x, grid):
        return resample(x, grid, self.grid_after(grid), mode=self.mode)

    def invert_output(self, y, before, after):
        return resample(y, after, before, mode="bilinear")


@dataclass
class ScaleIntensityRange(_Step):
    """Map [a_min, a_max] linearly to [b_min, b_max], optionally clipping (MONAI semantics)."""

    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = False

    def apply(self, x, grid):
        if self.a_max == self.a_min:
            raise ModelError("intensity window has a_min == a_max")
        y = (x - self.a_min) / (self.a_max - self.a_min) * (self.b_max - self.b_min) + self.b_min
        if self.clip:
            y = torch.clamp(y, min(self.b_min, self.b_max), max(self.b_min, self.b_max))
        return y


@dataclass
class NormalizeIntensity(_Step):
    """Subtract the mean and divide by the standard deviation (MONAI ``NormalizeIntensity``).

    The statistics are computed from the input inside the graph, so attributions include their
    dependence on every voxel. ``nonzero`` restricts them (and the change) to non-zero voxels.
    """

    subtrahend: Optional[float] = None
    divisor: Optional[float] = None
    nonzero: bool = False

    def apply(self, x, grid):
        dims = tuple(range(2, x.ndim))
        if self.nonzero:
            mask = (x != 0).to(x.dtype)
            count = mask.sum(dim=dims, keepdim=True).clamp_min(1)
            mean = (x * mask).sum(dim=dims, keepdim=True) / count
            std = (((x - mean) * mask) ** 2).sum(dim=dims, keepdim=True).div(count).sqrt()
        else:
            mask = None
            mean = x.mean(dim=dims, keepdim=True)
            std = x.std(dim=dims, keepdim=True, unbiased=False)
        sub = mean if self.subtrahend is None else torch.as_tensor(self.subtrahend, dtype=x.dtype)
        div = std if self.divisor is None else torch.as_tensor(self.divisor, dtype=x.dtype)
        div = torch.where(div == 0, torch.ones_like(div), div) if torch.is_tensor(div) else div
        y = (x - sub) / div
        return y if mask is None else torch.where(mask.bool(), y, x)


_STEP_KINDS = {
    "orientation": Orientation,
    "spacing": Spacing,
    "scale_intensity_range": ScaleIntensityRange,
    "normalize_intensity": NormalizeIntensity,
}


@dataclass
class Preprocessing:
    """An ordered list of steps; empty means the network sees the stored voxels."""

    steps: list[_Step] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: Optional[Sequence[dict[str, Any]]]) -> "Preprocessing":
        """Build from ``[{"kind": "spacing", "pixdim": [1, 1, 2]}, ...]`` (model specs, CLI)."""
        steps = []
        for entry in config or []:
            entry = dict(entry)
            kind = entry.pop("kind", None)
            if kind not in _STEP_KINDS:
                raise ModelError(
                    f"unknown preprocessing step {kind!r}; known: {', '.join(_STEP_KINDS)}"
                )
            try:
                steps.append(_STEP_KINDS[kind](**entry))
            except TypeError as exc:
                raise ModelError(f"bad arguments for preprocessing step '{kind}': {exc}") from None
        return cls(steps)

    def describe(self) -> list[dict[str, Any]]:
        kinds = {v: k for k, v in _STEP_KINDS.items()}
        return [{"kind": kinds[type(s)], **s.__dict__} for s in self.steps]

    def grids(self, grid: Grid) -> list[Grid]:
        """The grid before every step and after the last."""
        out = [grid]
        for step in self.steps:
            out.append(step.grid_after(out[-1]))
        return out

    def apply(self, x: torch.Tensor, grids: list[Grid]) -> torch.Tensor:
        for step, grid in zip(self.steps, grids):
            x = step.apply(x, grid)
        return x

    def invert_output(self, y: torch.Tensor, grids: list[Grid]) -> torch.Tensor:
        """Map a dense output on the network grid back onto the input grid."""
        for index in reversed(range(len(self.steps))):
            step = self.steps[index]
            if step.spatial:
                y = step.invert_output(y, grids[index], grids[index + 1])
        return y
