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
    """Resample to `pixdim` mm keeping the direction and the centre of voxel (0, 0, 0).

    As MONAI's ``Spacing``: one number applies to every axis, a shorter sequence is padded with its
    last value, a non-positive component keeps that axis's spacing, and the output has
    ``round((n - 1) * old / new) + 1`` voxels per axis (values beyond the input take the border).
    """

    pixdim: tuple[float, float, float]
    mode: str = "bilinear"
    spatial = True

    def __post_init__(self) -> None:
        try:
            values = [float(v) for v in (self.pixdim if isinstance(self.pixdim, (list, tuple, np.ndarray))
                                         else [self.pixdim])]
        except (TypeError, ValueError):
            raise ModelError(f"spacing pixdim must be numbers in mm; got {self.pixdim!r}") from None
        if not values or not all(np.isfinite(values)):
            raise ModelError(f"spacing pixdim must be finite numbers in mm; got {self.pixdim!r}")
        values = (values + [values[-1]] * 3)[:3]
        self.pixdim = (values[0], values[1], values[2])
        if self.mode not in ("bilinear", "nearest"):
            raise ModelError(f"spacing mode must be bilinear or nearest; got {self.mode!r}")

    def grid_after(self, grid: Grid) -> Grid:
        old = spacing_of(grid.affine)
        new = np.asarray(self.pixdim, dtype=np.float64)
        new = np.where(new > 0, new, old)
        affine = grid.affine.copy()
        affine[:3, :3] = direction_of(grid.affine) * new
        shape = tuple(int(np.round((n - 1) * o / s + 1.0)) for n, o, s in zip(grid.shape, old, new))
        return Grid(affine, tuple(max(1, n) for n in shape))

    def apply(self, x, grid):
        return resample(x, grid, self.grid_after(grid), mode=self.mode)

    def invert_output(self, y, before, after):
        return resample(y, after, before, mode="bilinear")


@dataclass
class ScaleIntensityRange(_Step):
    """Map [a_min, a_max] linearly to [b_min, b_max], optionally clipping (MONAI semantics).

    As in MONAI, without ``b_min``/``b_max`` the window maps to [0, 1] and clipping uses whichever
    bound is given.
    """

    a_min: float
    a_max: float
    b_min: Optional[float] = 0.0
    b_max: Optional[float] = 1.0
    clip: bool = False

    def apply(self, x, grid):
        if self.a_max == self.a_min:
            raise ModelError("intensity window has a_min == a_max")
        y = (x - self.a_min) / (self.a_max - self.a_min)
        if self.b_min is not None and self.b_max is not None:
            y = y * (self.b_max - self.b_min) + self.b_min
        if self.clip and (self.b_min is not None or self.b_max is not None):
            bounds = [b for b in (self.b_min, self.b_max) if b is not None]
            if len(bounds) == 2:
                y = torch.clamp(y, min(bounds), max(bounds))
            else:
                y = torch.clamp(y, self.b_min, self.b_max)
        return y


@dataclass
class NormalizeIntensity(_Step):
    """Subtract the mean and divide by the standard deviation (MONAI ``NormalizeIntensity``).

    The statistics are computed from the input inside the graph, so attributions include their
    dependence on every voxel. ``nonzero`` restricts them (and the change) to non-zero voxels;
    ``channel_wise`` computes them per channel (otherwise over all channels together, as MONAI).
    A zero standard deviation divides by 1, with finite gradients.
    """

    subtrahend: Optional[float | Sequence[float]] = None
    divisor: Optional[float | Sequence[float]] = None
    nonzero: bool = False
    channel_wise: bool = False

    def _constant(self, value: Any, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            return t
        if not self.channel_wise or t.ndim != 1 or t.numel() != x.shape[1]:
            raise ModelError(
                f"normalize_intensity: per-channel subtrahend/divisor {list(t.tolist())} need channel_wise "
                f"and one value per channel ({x.shape[1]})"
            )
        return t.reshape(1, -1, *([1] * (x.ndim - 2)))

    def apply(self, x, grid):
        dims = tuple(range(2 if self.channel_wise else 1, x.ndim))
        if self.nonzero:
            mask = (x != 0).to(x.dtype)
            count = mask.sum(dim=dims, keepdim=True).clamp_min(1)
            mean = (x * mask).sum(dim=dims, keepdim=True) / count
            var = (((x - mean) * mask) ** 2).sum(dim=dims, keepdim=True) / count
        else:
            mask = None
            mean = x.mean(dim=dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        sub = mean if self.subtrahend is None else self._constant(self.subtrahend, x)
        if self.divisor is None:
            positive = var > 0
            div = torch.where(positive, torch.sqrt(torch.where(positive, var, torch.ones_like(var))),
                              torch.ones_like(var))  # sqrt never sees 0: finite gradients
        else:
            div = self._constant(self.divisor, x)
            div = torch.where(div == 0, torch.ones_like(div), div)
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
