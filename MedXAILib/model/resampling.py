"""Grid resizing as exact, differentiable linear operators (the resampling nnU-Net's plans name).

nnU-Net resamples an image to a configuration's spacing, and its logits back, by resizing the voxel
grid: ``skimage.transform.resize`` (which calls ``scipy.ndimage.zoom`` with ``grid_mode=True`` and
``mode="nearest"``, then clips to the input's range) with a third-order B-spline for the image and a
first-order one for the logits; along a strongly anisotropic axis it resizes the in-plane axes slice
by slice and the out-of-plane axis separately with ``scipy.ndimage.map_coordinates`` of order 0
(``nnunetv2/preprocessing/resampling/default_resampling.py``). Its torch variant
(``resample_torch.py``) uses ``F.interpolate`` (linear, ``nearest-exact`` along that axis).

Each of these is separable: a resize along one axis is one matrix ``M`` (output x input), the same
for every line of voxels, and the whole resize is ``M_0 x M_1 x M_2`` applied axis by axis. The
matrices here are built by running scipy's (or torch's) own routine on the unit vectors, so applying
them in torch reproduces the routine to float rounding while autograd differentiates through it
(the B-spline prefilter is linear too). skimage's clip to the input range, applied per resize call
(per channel, or per slice when the anisotropic axis is resized separately), is reproduced as a
clamp with the input's minimum and maximum, whose gradient reaches the extreme voxels as autograd
through the original would.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError

__all__ = ["KERNELS", "compute_new_shape", "separate_axis", "resize_matrix", "resize", "grid_scale"]

#: ``spline``: scipy.ndimage's B-spline zoom (skimage ``resize``); ``torch``: ``F.interpolate``.
KERNELS = ("spline", "torch")


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Voxels per axis after resampling to `new_spacing`: ``round(n * old / new)`` (nnU-Net's rule)."""
    return tuple(int(round(float(o) / float(s) * int(n))) for n, o, s in zip(shape, spacing, new_spacing))


def _lowres_axes(spacing: Sequence[float]) -> list[int]:
    top = max(spacing)
    return [a for a, s in enumerate(spacing) if top / s == 1]


def separate_axis(spacing: Sequence[float], new_spacing: Sequence[float], force: Optional[bool] = None,
                  threshold: float = 3.0) -> Optional[int]:
    """The axis resized on its own (out-of-plane) or None, by nnU-Net's rule.

    With ``force`` None the axis is separate when the current spacing, else the new one, is anisotropic
    (largest / smallest > `threshold`): its coarsest axis, unless two or three axes share that spacing.
    ``force`` True takes the current spacing's coarsest axis, False never separates.
    """
    if force is not None:
        axes = _lowres_axes(spacing) if force else None
    elif max(spacing) / min(spacing) > threshold:
        axes = _lowres_axes(spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        axes = _lowres_axes(new_spacing)
    else:
        axes = None
    return axes[0] if axes is not None and len(axes) == 1 else None


@lru_cache(maxsize=64)
def _matrix(n_in: int, n_out: int, order: int, kernel: str, separate: bool) -> np.ndarray:
    if kernel == "torch":
        mode = "nearest-exact" if separate else "linear"
        eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]  # (n_in lines, 1 channel, n_in samples)
        out = F.interpolate(eye, size=n_out, mode=mode, **({} if separate else {"align_corners": False}))
        return out[:, 0, :].T.numpy()
    from scipy import ndimage

    eye = np.eye(n_in)
    if separate:  # nnU-Net's out-of-plane pass: map_coordinates at (d + 0.5) * n_in / n_out - 0.5
        rows = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
        coords = np.stack(np.meshgrid(rows, np.arange(n_in), indexing="ij"))
        return ndimage.map_coordinates(eye, coords, order=order, mode="nearest")
    # skimage.transform.resize: zoom with grid_mode=True (half-voxel centres), mode "nearest" ("edge")
    out = ndimage.zoom(eye, (n_out / n_in, 1.0), order=order, mode="nearest", grid_mode=True)
    if out.shape != (n_out, n_in):
        raise ModelError(f"resize matrix {n_in} -> {n_out}: scipy returned {out.shape}")
    return out


def resize_matrix(n_in: int, n_out: int, order: int = 3, kernel: str = "spline",
                  separate: bool = False) -> np.ndarray:
    """The (n_out, n_in) matrix of a one-axis resize (``separate``: nnU-Net's out-of-plane pass)."""
    if kernel not in KERNELS:
        raise ModelError(f"resize kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    if kernel == "spline" and not 0 <= int(order) <= 5:
        raise ModelError(f"spline order must be 0..5; got {order!r}")
    return _matrix(int(n_in), int(n_out), int(order), kernel, bool(separate))


def _along(x: torch.Tensor, axis: int, matrix: np.ndarray) -> torch.Tensor:
    """Apply `matrix` to spatial axis `axis` of (B, C, *spatial)."""
    m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
    dim = 2 + axis
    return torch.movedim(torch.movedim(x, dim, -1) @ m.T, -1, dim)


def _clamp_to(y: torch.Tensor, x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """skimage's clip: `y` limited to the range of `x` over `dims` (per remaining index)."""
    low, high = x.amin(dim=tuple(dims), keepdim=True), x.amax(dim=tuple(dims), keepdim=True)
    return torch.minimum(torch.maximum(y, low), high)


def resize(x: torch.Tensor, shape: Sequence[int], order: int = 3, order_z: int = 0, axis: Optional[int] = None,
           kernel: str = "spline", clip: bool = True) -> torch.Tensor:
    """Resize (B, C, *spatial) to `shape` as nnU-Net's resampling functions do, differentiably.

    Args:
        x: the volume; every (batch item, channel) is resized on its own.
        shape: the new spatial shape.
        order: spline order of the resize (``kernel="spline"``; the torch kernel is linear).
        order_z: order along `axis` when it is resized separately (``map_coordinates``, mode nearest;
            the torch kernel uses ``nearest-exact`` there).
        axis: the anisotropic axis resized on its own after the others, or None (one resize of all axes).
        kernel: ``spline`` (scipy/skimage) or ``torch`` (``F.interpolate``).
        clip: clip each resize to its input's range as skimage does (spline order > 1 only; lower orders
            never leave it).
    """
    shape = tuple(int(n) for n in shape)
    old = tuple(int(n) for n in x.shape[2:])
    if old == shape:  # nnU-Net returns the data unchanged
        return x
    clip = clip and kernel == "spline" and order > 1
    spatial = range(len(old))
    planar = [a for a in spatial if a != axis]
    y = x
    for a in planar:
        if old[a] != shape[a]:
            y = _along(y, a, resize_matrix(old[a], shape[a], order, kernel))
    if clip:  # one skimage call per channel, or per slice along the separate axis
        y = _clamp_to(y, x, [2 + a for a in planar])
    if axis is not None and old[axis] != shape[axis]:
        y = _along(y, axis, resize_matrix(old[axis], shape[axis], order_z, kernel, separate=True))
    return y


def grid_scale(n_in: int, n_out: int) -> tuple[float, float]:
    """(scale, offset) of a half-voxel-centred resize: output voxel d sits at input index d * scale + offset."""
    scale = n_in / n_out
    return scale, 0.5 * scale - 0.5
