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

__all__ = ["Grid", "Preprocessing", "orientation_transform", "resample", "PAD_MODES", "nonzero_region"]

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
    needs_values = False  # the output grid depends on the voxel values (a foreground crop)

    def grid_after(self, grid: Grid) -> Grid:
        return grid

    def apply(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        raise NotImplementedError

    def run(self, x: torch.Tensor, before: Grid, after: Grid) -> torch.Tensor:
        """The step from the grid `before` to the grid `after` (only a box step needs `after`)."""
        return self.apply(x, before)

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


@dataclass
class ScaleIntensity(_Step):
    """Rescale to [minv, maxv] by the input's own minimum and maximum (MONAI ``ScaleIntensity``).

    As MONAI: with one of ``minv``/``maxv`` missing the result is ``(x - min) / (max - min)``; with
    both missing, ``x * (1 + factor)`` (or ``x``); a constant input becomes ``x * minv``. The minimum
    and maximum are taken inside the graph, per batch item (per channel with ``channel_wise``), so an
    attribution includes their dependence on the extreme voxels.
    """

    minv: Optional[float] = 0.0
    maxv: Optional[float] = 1.0
    factor: Optional[float] = None
    channel_wise: bool = False

    def apply(self, x, grid):
        if self.minv is None and self.maxv is None:
            return x * (1 + self.factor) if self.factor is not None else x
        dims = tuple(range(2 if self.channel_wise else 1, x.ndim))
        low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        flat = high == low
        y = (x - low) / torch.where(flat, torch.ones_like(high), high - low)  # finite gradients when flat
        if self.minv is not None and self.maxv is not None:
            y = y * (self.maxv - self.minv) + self.minv
        return torch.where(flat, x * self.minv if self.minv is not None else x, y)


#: Padding modes of the box steps: numpy's (as MONAI's ``Pad`` uses them) and torch's names for two of them.
PAD_MODES = ("constant", "edge", "replicate", "reflect", "minimum", "maximum", "mean")


def _ints(value: Any, what: str, minimum: int) -> tuple[int, int, int]:
    """One integer or three, each at least `minimum` (MONAI's per-axis arguments)."""
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum
                                   for v in values):
        raise ModelError(f"{what} must be one integer or three, each >= {minimum}; got {value!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def _box_of(before: Grid, after: Grid) -> tuple[list[int], list[int]]:
    """Start and end voxel indices, on `before`, of the box that `after` covers (ends exclusive)."""
    start = np.linalg.inv(before.affine) @ after.affine[:, 3]
    first = [int(round(float(v))) for v in start[:3]]
    return first, [s + n for s, n in zip(first, after.shape)]


def _box_grid(grid: Grid, start: Sequence[int], end: Sequence[int]) -> Grid:
    affine = grid.affine.copy()
    affine[:3, 3] = grid.affine[:3, :3] @ np.asarray(start, dtype=np.float64) + grid.affine[:3, 3]
    return Grid(affine, tuple(int(e - s) for s, e in zip(start, end)))


def _torch_pad(widths: Sequence[tuple[int, int]]) -> list[int]:
    """F.pad's argument (last axis first) for spatial `widths` [(low, high), ...] in axis order."""
    return [w for low, high in reversed(list(widths)) for w in (low, high)]


def _pad(x: torch.Tensor, widths: Sequence[tuple[int, int]], mode: str, value: float) -> torch.Tensor:
    """Pad the spatial axes of (B, C, *spatial) as MONAI's ``Pad`` (numpy.pad or torch) does."""
    if not any(low or high for low, high in widths):
        return x
    if mode == "constant":
        return F.pad(x, _torch_pad(widths), value=float(value))
    if mode in ("edge", "replicate", "reflect"):
        return F.pad(x, _torch_pad(widths), mode="reflect" if mode == "reflect" else "replicate")
    # numpy's statistic modes pad one axis after the other, every line with its own statistic
    statistic = {"minimum": torch.amin, "maximum": torch.amax, "mean": torch.mean}[mode]
    for axis, (low, high) in enumerate(widths):
        dim = 2 + axis
        stat = statistic(x, dim=dim, keepdim=True)
        parts = [stat.expand(*x.shape[:dim], n, *x.shape[dim + 1:]) for n in (low, high)]
        x = torch.cat([parts[0], x, parts[1]], dim=dim)
    return x


class _Box(_Step):
    """A crop and/or pad of the voxel grid to a box; the output is mapped back by the inverse (zeros outside).

    The box is what the grids before and after the step say it is, so a box fixed from the voxel
    values (:class:`CropForeground`) is fixed once, when the grids are made, and every later input
    (a perturbed one, a batch) is cut to the same box.
    """

    spatial = True
    mode: str = "constant"
    value: float = 0.0

    def _check_mode(self) -> None:
        mode = self.mode[0] if isinstance(self.mode, (list, tuple)) and self.mode else self.mode
        if mode not in PAD_MODES:
            raise ModelError(f"padding mode must be one of {', '.join(PAD_MODES)}; got {self.mode!r}")
        self.mode = str(mode)

    def apply(self, x, grid):
        return self.run(x, grid, self.grid_after(grid))

    def run(self, x, before, after):
        start, end = _box_of(before, after)
        size = x.shape[2:]
        inside = [(max(s, 0), min(e, n)) for s, e, n in zip(start, end, size)]
        if any(lo >= hi for lo, hi in inside):
            raise ModelError(f"the box {start}..{end} lies outside the image of shape {tuple(size)}")
        if self.mode == "constant":  # one F.pad both crops (negative widths) and pads
            return F.pad(x, _torch_pad([(-s, e - n) for s, e, n in zip(start, end, size)]), value=float(self.value))
        x = x[(slice(None), slice(None), *(slice(lo, hi) for lo, hi in inside))]
        return _pad(x, [(lo - s, e - hi) for (lo, hi), s, e in zip(inside, start, end)], self.mode, self.value)

    def invert_output(self, y, before, after):
        # the voxels the network never saw get zeros, as MONAI's inverse of a crop gives them
        start, end = _box_of(before, after)
        return F.pad(y, _torch_pad([(s, n - e) for s, e, n in zip(start, end, before.shape)]))


@dataclass
class CropForeground(_Box):
    """Crop to the bounding box of the foreground (MONAI ``CropForeground``, ``select_fn`` = value > 0).

    The box is computed with MONAI's own helpers from the unperturbed input (after the preceding
    steps) when the model is bound to an image, and then fixed: every input the model sees later is
    cut to the same box, so a perturbation or a gradient never moves it. The output is padded back
    onto the uncropped grid with zeros. ``allow_smaller``, ``k_divisible`` and the padding ``mode`` /
    ``value`` (for boxes that reach beyond the image) follow MONAI.
    """

    margin: Any = 0
    allow_smaller: bool = False
    k_divisible: Any = 1
    channel_indices: Optional[list[int]] = None
    mode: str = "constant"
    value: float = 0.0
    needs_values = True

    def __post_init__(self) -> None:
        self.margin = _ints(self.margin, "crop_foreground margin", 0)
        self.k_divisible = _ints(self.k_divisible, "crop_foreground k_divisible", 1)
        if self.channel_indices is not None:
            indices = self.channel_indices if isinstance(self.channel_indices, (list, tuple)) else [self.channel_indices]
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
                raise ModelError(f"crop_foreground channel_indices must be channel numbers; got {self.channel_indices!r}")
            self.channel_indices = [int(i) for i in indices]
        self.allow_smaller = bool(self.allow_smaller)
        self._check_mode()

    def grid_after(self, grid: Grid) -> Grid:
        raise ModelError("crop_foreground takes its box from the image: bind the model to the image's values "
                         "(ModelAdapter.bind(affine, shape, reference=image.array))")

    def grid_from_values(self, grid: Grid, x: torch.Tensor) -> Grid:
        """The box of the foreground of the first batch item of `x` (on `grid`), as MONAI computes it."""
        from monai.transforms.utils import compute_divisible_spatial_size, generate_spatial_bounding_box

        image = x[0].detach()
        if self.channel_indices is not None and max(self.channel_indices) >= image.shape[0]:
            raise ModelError(f"crop_foreground channel_indices {self.channel_indices} do not exist in an image "
                             f"with {image.shape[0]} channel(s)")
        start, end = generate_spatial_bounding_box(image, channel_indices=self.channel_indices,
                                                   margin=self.margin, allow_smaller=self.allow_smaller)
        start, end = np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)
        if not (end > start).all():
            raise ModelError("crop_foreground: the image has no foreground (no voxel > 0 after the preceding "
                             "preprocessing), so there is nothing to crop to")
        size = end - start
        divisible = np.asarray(compute_divisible_spatial_size(size.tolist(), k=self.k_divisible))
        start = start - np.floor_divide(divisible - size, 2)
        return _box_grid(grid, start.tolist(), (start + divisible).tolist())


@dataclass
class DivisiblePad(_Box):
    """Pad each spatial size up to a multiple of ``k`` (MONAI ``DivisiblePad``), cropped back afterwards.

    For networks whose strides need sizes divisible by their total stride (a UNet with strides 2, 2, 2
    needs multiples of 8). ``method`` ``"symmetric"`` splits the padding over both sides as MONAI
    does, ``"end"`` pads after the image; ``k`` <= 0 keeps an axis as it is.
    """

    k: Any = 16
    mode: str = "constant"
    method: str = "symmetric"
    value: float = 0.0

    def __post_init__(self) -> None:
        self.k = _ints(self.k, "divisible_pad k", -(2 ** 31))
        if self.method not in ("symmetric", "end"):
            raise ModelError(f"divisible_pad method must be symmetric or end; got {self.method!r}")
        self._check_mode()

    def grid_after(self, grid: Grid) -> Grid:
        start, end = [], []
        for n, k in zip(grid.shape, self.k):
            size = -(-n // k) * k if k > 0 else n
            low = (size - n) // 2 if self.method == "symmetric" else 0
            start.append(-low)
            end.append(size - low)
        return _box_grid(grid, start, end)


@dataclass
class PermuteAxes(_Step):
    """Reorder the voxel axes: output axis t is input axis ``axes[t]`` (no flip, no resampling).

    nnU-Net works on arrays in (z, y, x) order, the stored (I, J, K) axes reversed, reordered by the
    plans' ``transpose_forward``; this step is that permutation and its inverse maps outputs back.
    """

    axes: Sequence[int]
    spatial = True

    def __post_init__(self) -> None:
        axes = [int(a) for a in self.axes]
        if sorted(axes) != [0, 1, 2]:
            raise ModelError(f"permute_axes needs a permutation of 0, 1, 2; got {self.axes!r}")
        self.axes = axes

    def grid_after(self, grid: Grid) -> Grid:
        affine = np.eye(4)
        affine[:3, :3] = grid.affine[:3, list(self.axes)]
        affine[:3, 3] = grid.affine[:3, 3]
        return Grid(affine, tuple(grid.shape[a] for a in self.axes))

    def apply(self, x, grid):
        return x.permute(0, 1, *(2 + a for a in self.axes))

    def invert_output(self, y, before, after):
        return y.permute(0, 1, *(2 + int(a) for a in np.argsort(self.axes)))


@dataclass
class CropNonzero(_Box):
    """Crop to the box of the voxels that are non-zero in any channel (nnU-Net's ``crop_to_nonzero``).

    The box comes from the unperturbed input when the model is bound to an image, and is then fixed
    (as :class:`CropForeground`'s). Outside it the output is ``outside`` (one value per output channel;
    zeros when not given): nnU-Net predicts background there without running the network.
    """

    outside: Optional[list[float]] = None
    needs_values = True

    def grid_after(self, grid: Grid) -> Grid:
        raise ModelError("crop_nonzero takes its box from the image: bind the model to the image's values "
                         "(ModelAdapter.bind(affine, shape, reference=image.array))")

    def grid_from_values(self, grid: Grid, x: torch.Tensor) -> Grid:
        found = torch.nonzero((x[0].detach() != 0).any(0))
        if found.numel() == 0:  # nothing to crop to: the whole grid
            return grid
        return _box_grid(grid, found.amin(0).tolist(), (found.amax(0) + 1).tolist())

    def invert_output(self, y, before, after):
        start, end = _box_of(before, after)
        fill = list(self.outside or [])
        if len(fill) != y.shape[1]:
            fill = [0.0] * y.shape[1]
        out = torch.as_tensor(fill, dtype=y.dtype, device=y.device).reshape(1, -1, 1, 1, 1)
        out = out.expand(y.shape[0], -1, *before.shape).clone()
        out[(slice(None), slice(None), *(slice(s, e) for s, e in zip(start, end)))] = y
        return out


_INTENSITY_KINDS = ("clip_standardize", "standardize", "rescale", "scale", "none")


def nonzero_region(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, *spatial) bool: voxels non-zero in any channel, holes filled (nnU-Net's ``create_nonzero_mask``)."""
    from scipy.ndimage import binary_fill_holes

    found = (x.detach() != 0).any(1).cpu().numpy()
    filled = np.stack([binary_fill_holes(item) for item in found])
    return torch.as_tensor(filled, device=x.device).unsqueeze(1)


@dataclass
class ChannelIntensity(_Step):
    """A different intensity normalisation for each input channel (nnU-Net's per-channel schemes).

    ``channels`` holds one entry per input channel, ``{"kind": ...}`` with

    - ``clip_standardize`` (``low``, ``high``, ``mean``, ``std``): clip to [low, high], then
      (x - mean) / std, with fixed statistics (nnU-Net's ``CTNormalization``, from the plans);
    - ``standardize`` (``mask``): (x - mean) / std with the image's own mean and standard deviation,
      taken inside the graph; with ``mask`` true over, and applied to, the region non-zero in any
      channel with its holes filled (:func:`nonzero_region`; nnU-Net's ``ZScoreNormalization`` with
      ``use_mask_for_norm``), other voxels unchanged;
    - ``rescale``: (x - min) / (max - min) (``RescaleTo01Normalization``);
    - ``scale`` (``factor``): x * factor (``RGBTo01Normalization``: 1 / 255);
    - ``none``.

    A standard deviation (or range) below ``eps`` divides by ``eps``, as nnU-Net does.
    """

    channels: list
    eps: float = 1e-8

    def __post_init__(self) -> None:
        entries = []
        for entry in self.channels:
            entry = dict(entry) if isinstance(entry, dict) else {"kind": entry}
            if entry.get("kind") not in _INTENSITY_KINDS:
                raise ModelError(f"channel_intensity kinds are {', '.join(_INTENSITY_KINDS)}; got {entry!r}")
            if entry["kind"] == "clip_standardize" and not all(
                    isinstance(entry.get(k), (int, float)) for k in ("low", "high", "mean", "std")):
                raise ModelError(f"channel_intensity clip_standardize needs numbers low, high, mean, std; got {entry!r}")
            entries.append(entry)
        self.channels = entries

    def apply(self, x, grid):
        if x.shape[1] != len(self.channels):
            raise ModelError(f"the model normalises {len(self.channels)} channel(s) but the image has {x.shape[1]}")
        region = nonzero_region(x) if any(e["kind"] == "standardize" and e.get("mask") for e in self.channels) else None
        return torch.cat([self._one(x[:, c:c + 1], entry, region) for c, entry in enumerate(self.channels)], 1)

    def _one(self, x: torch.Tensor, entry: dict, region: Optional[torch.Tensor]) -> torch.Tensor:
        kind, dims = entry["kind"], tuple(range(1, x.ndim))
        if kind == "clip_standardize":
            return (torch.clamp(x, float(entry["low"]), float(entry["high"])) - float(entry["mean"])) \
                / max(float(entry["std"]), self.eps)
        if kind == "standardize":
            inside = region if entry.get("mask") else None
            wide = x.double()
            if inside is None:
                mean = wide.mean(dim=dims, keepdim=True)
                var = ((wide - mean) ** 2).mean(dim=dims, keepdim=True)
            else:
                weight = inside.to(wide.dtype)
                count = weight.sum(dim=dims, keepdim=True).clamp_min(1)
                mean = (wide * weight).sum(dim=dims, keepdim=True) / count
                var = (((wide - mean) * weight) ** 2).sum(dim=dims, keepdim=True) / count
            std = torch.sqrt(torch.where(var > 0, var, torch.ones_like(var)))  # finite gradient at var 0
            std = torch.where(var > 0, std, torch.zeros_like(std)).clamp_min(self.eps)
            y = ((wide - mean) / std).to(x.dtype)
            return y if inside is None else torch.where(inside, y, x)
        if kind == "rescale":
            low = x.amin(dim=dims, keepdim=True)
            shifted = x - low
            return shifted / shifted.amax(dim=dims, keepdim=True).clamp_min(self.eps)
        if kind == "scale":
            return x * float(entry.get("factor", 1.0))
        return x


@dataclass
class Resize(_Step):
    """Resample to ``spacing`` (mm per axis of this grid) by resizing the voxel grid, as nnU-Net does.

    The new shape is ``round(n * old / new)`` per axis and the voxels keep half-voxel-aligned corners
    (an output voxel d sits at input index ``(d + 0.5) * n / n_new - 0.5``). The image is resized
    with ``kernel``/``order`` (and ``order_z`` along an anisotropic axis resized on its own, chosen by
    ``separate_z`` and ``anisotropy_threshold`` as nnU-Net chooses it), outputs are mapped back with
    the ``output_*`` settings (nnU-Net's ``resampling_fn_probabilities``). See :mod:`.resampling`: the
    operators are exact linear maps built from scipy's and torch's own routines. A spacing entry <= 0
    keeps that axis (2D configurations).
    """

    spacing: Sequence[float]
    kernel: str = "spline"
    order: int = 3
    order_z: int = 0
    separate_z: Optional[bool] = None
    output_kernel: str = "spline"
    output_order: int = 1
    output_order_z: int = 0
    output_separate_z: Optional[bool] = None
    anisotropy_threshold: float = 3.0
    spatial = True

    def __post_init__(self) -> None:
        from .resampling import KERNELS

        values = [float(v) for v in self.spacing]
        if len(values) != 3 or not all(np.isfinite(values)):
            raise ModelError(f"resize spacing must be three numbers in mm; got {self.spacing!r}")
        self.spacing = values
        if self.kernel not in KERNELS or self.output_kernel not in KERNELS:
            raise ModelError(f"resize kernels must be one of {', '.join(KERNELS)}; got {self.kernel!r}, "
                             f"{self.output_kernel!r}")

    def _target(self, grid: Grid) -> list[float]:
        old = spacing_of(grid.affine)
        return [float(o) if s <= 0 else s for s, o in zip(self.spacing, old)]

    def grid_after(self, grid: Grid) -> Grid:
        from .resampling import compute_new_shape, grid_scale

        shape = compute_new_shape(grid.shape, spacing_of(grid.affine), self._target(grid))
        affine = grid.affine.copy()
        for axis, (n_in, n_out) in enumerate(zip(grid.shape, shape)):
            scale, offset = grid_scale(n_in, max(1, n_out))
            affine[:3, axis] = grid.affine[:3, axis] * scale
            affine[:3, 3] += grid.affine[:3, axis] * offset
        return Grid(affine, tuple(max(1, n) for n in shape))

    def apply(self, x, grid):
        from .resampling import resize, separate_axis

        axis = separate_axis(spacing_of(grid.affine), self._target(grid), self.separate_z, self.anisotropy_threshold)
        return resize(x, self.grid_after(grid).shape, self.order, self.order_z, axis, self.kernel)

    def invert_output(self, y, before, after):
        from .resampling import resize, separate_axis

        axis = separate_axis(self._target(before), spacing_of(before.affine), self.output_separate_z,
                             self.anisotropy_threshold)
        return resize(y, before.shape, self.output_order, self.output_order_z, axis, self.output_kernel)


_STEP_KINDS = {
    "orientation": Orientation,
    "spacing": Spacing,
    "scale_intensity_range": ScaleIntensityRange,
    "normalize_intensity": NormalizeIntensity,
    "scale_intensity": ScaleIntensity,
    "crop_foreground": CropForeground,
    "divisible_pad": DivisiblePad,
    "permute_axes": PermuteAxes,
    "crop_nonzero": CropNonzero,
    "channel_intensity": ChannelIntensity,
    "resize": Resize,
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

    def grids(self, grid: Grid, reference: Any = None) -> list[Grid]:
        """The grid before every step and after the last.

        Args:
            grid: the input grid.
            reference: the unperturbed input's voxels, (C, *shape) or (B, C, *shape), for steps whose
                grid depends on the values (a foreground crop); its first batch item fixes them.
        """
        out = [grid]
        needs = [step.needs_values for step in self.steps]
        z: Optional[torch.Tensor] = None
        if any(needs):
            if reference is None:
                raise ModelError("this model's preprocessing crops to the image's foreground, so the box comes "
                                 "from the image: bind it with the image's voxels (reference=image.array)")
            z = reference.detach() if isinstance(reference, torch.Tensor) else \
                torch.from_numpy(np.array(reference, dtype=np.float32))  # a copy: the caller's array may be read-only
            z = z.to(torch.float32)
            z = (z.unsqueeze(0) if z.ndim == len(grid.shape) + 1 else z)[:1]
            if tuple(z.shape[2:]) != tuple(grid.shape):
                raise ModelError(f"the reference voxels {tuple(z.shape[2:])} are not on the grid {tuple(grid.shape)}")
        for index, step in enumerate(self.steps):
            after = step.grid_from_values(out[-1], z) if needs[index] else step.grid_after(out[-1])
            if z is not None and any(needs[index + 1:]):  # the next box is found on the image at that step
                with torch.no_grad():
                    z = step.run(z, out[-1], after)
            out.append(after)
        return out

    def apply(self, x: torch.Tensor, grids: list[Grid]) -> torch.Tensor:
        for index, step in enumerate(self.steps):
            x = step.run(x, grids[index], grids[index + 1])
        return x

    def invert_output(self, y: torch.Tensor, grids: list[Grid]) -> torch.Tensor:
        """Map a dense output on the network grid back onto the input grid."""
        for index in reversed(range(len(self.steps))):
            step = self.steps[index]
            if step.spatial:
                y = step.invert_output(y, grids[index], grids[index + 1])
        return y
