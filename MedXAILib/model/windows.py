"""Sliding-window inference, window by window: the plan and the blended forward pass.

MONAI's ``sliding_window_inference`` computes ``y = crop(sum_w m_w * f(x_w) / sum_w m_w)`` with
importance maps ``m_w`` (constant or Gaussian) over windows that tile the input zero-padded up to
the ROI. :class:`WindowPlan` reproduces its window positions, order, padding and importance map
(with MONAI's own helpers), so :func:`windowed_forward` gives MONAI's output (to float rounding) and
the windowed backward passes of :mod:`.window_gradient` can visit the same windows one batch at a
time. Window ``k`` of batch item ``b`` is job ``b * n_windows + k``, MONAI's order, whatever the
number of windows per network call.

Two policies reproduce nnU-Net's predictor (``nnunetv2/inference/sliding_window_prediction.py`` and
``predict_from_raw_data.py``) in the same plan: ``tiles="nnunet"`` spreads the tiles evenly with
its ``compute_steps_for_sliding_window`` rule (step = 1 - overlap, 0.5 by default) and
``mode="nnunet_gaussian"`` blends them with its importance map (:func:`nnunet_gaussian`). An
:class:`Ensemble` network averages test-time mirrorings and folds inside each window; by linearity of
the blend this equals nnU-Net's average of blended fold predictions, and the windowed backward pass
visits its members one at a time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError, error_chain
from .layout import fast_convolutions, to_channels_last

__all__ = ["WindowPlan", "windowed_forward", "network_call", "network_output", "autocast", "PADDING_MODES",
           "TILE_GRIDS", "BLEND_MODES", "nnunet_tile_starts", "nnunet_gaussian", "Ensemble", "gradient_members"]

Progress = Callable[[int, int], None]

#: How an input smaller than the ROI is padded up to it (MONAI's ``padding_mode``: torch's ``F.pad`` modes).
PADDING_MODES = ("constant", "replicate", "reflect", "circular")
#: Where the windows go: MONAI's scan interval, or nnU-Net's evenly spread tiles.
TILE_GRIDS = ("monai", "nnunet")
#: How windows are blended: MONAI's constant or Gaussian map, or nnU-Net's Gaussian.
BLEND_MODES = ("constant", "gaussian", "nnunet_gaussian")


def nnunet_tile_starts(size: int, tile: int, step: float) -> list[int]:
    """nnU-Net's tile start positions along one axis (``compute_steps_for_sliding_window``).

    ``ceil((size - tile) / (tile * step)) + 1`` tiles spread evenly from 0 to ``size - tile`` and
    rounded (numpy's round half to even); a tile of one voxel (the slice axis of a 2D configuration)
    visits every position.
    """
    if tile <= 1:
        return list(range(size - tile + 1))
    count = int(np.ceil((size - tile) / (tile * step))) + 1
    if count == 1:
        return [0]
    actual = (size - tile) / (count - 1)
    return [int(np.round(actual * i)) for i in range(count)]


def nnunet_gaussian(roi: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """nnU-Net's importance map for one tile, as the float32 values of its float16 map.

    ``compute_gaussian``: a unit impulse at the centre voxel (size // 2) filtered with scipy's
    ``gaussian_filter`` (sigma = size / 8 per axis, constant zero border), scaled to a maximum of 10,
    stored in float16, and its zeros raised to the smallest non-zero value. Axes of one voxel (2D
    configurations) are left out of the filter.
    """
    from scipy.ndimage import gaussian_filter

    roi = tuple(int(r) for r in roi)
    axes = [a for a, r in enumerate(roi) if r > 1] or list(range(len(roi)))
    shape = tuple(roi[a] for a in axes)
    impulse = np.zeros(shape)
    impulse[tuple(n // 2 for n in shape)] = 1
    g = gaussian_filter(impulse, [n * sigma_scale for n in shape], 0, mode="constant", cval=0)
    g /= np.max(g) / 10
    half = torch.from_numpy(g).to(torch.float16)
    zero = half == 0
    if bool(zero.any()):
        half[zero] = torch.min(half[~zero])
    return half.to(torch.float32).reshape(roi)


@dataclass
class WindowPlan:
    """Where MONAI's sliding window puts its windows on one network-grid shape.

    Attributes:
        shape: spatial shape of the network input (before padding).
        roi: window size (``roi_size`` with non-positive entries taken from the shape).
        pad: F.pad argument (last axis first), zero where the input is at least the ROI.
        padding_mode: how the input is padded (``PADDING_MODES``; zeros for ``constant``).
        slices: spatial slices of every window on the padded grid, MONAI's order (axis 0 outermost).
        importance: (1, 1, *roi) blend weights of one window.
        count: (1, 1, *padded) sum of the weights over the windows covering each voxel.
    """

    shape: tuple[int, ...]
    roi: tuple[int, ...]
    pad: list[int]
    slices: list[tuple[slice, ...]]
    importance: torch.Tensor
    count: torch.Tensor
    padding_mode: str = "constant"

    @classmethod
    def build(cls, shape: Sequence[int], roi_size: Sequence[int], overlap: float, mode: str,
              device: torch.device, dtype: torch.dtype = torch.float32,
              sigma_scale: float = 0.125, padding_mode: str = "constant", tiles: str = "monai") -> "WindowPlan":
        """The plan for inputs of spatial `shape` (see the class); `tiles` and `mode` pick the policies
        (:data:`TILE_GRIDS`, :data:`BLEND_MODES`), `overlap` is 1 - nnU-Net's tile step."""
        from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
        from monai.inferers.utils import _get_scan_interval
        from monai.utils import fall_back_tuple

        shape = tuple(int(n) for n in shape)
        ndim = len(shape)
        roi = tuple(int(r) for r in fall_back_tuple(tuple(roi_size), shape))
        padded = tuple(max(n, r) for n, r in zip(shape, roi))
        pad: list[int] = []
        for axis in reversed(range(ndim)):  # F.pad order, as MONAI builds it
            diff = max(roi[axis] - shape[axis], 0)
            pad.extend([diff // 2, diff - diff // 2])
        if tiles not in TILE_GRIDS or mode not in BLEND_MODES:
            raise ModelError(f"sliding-window tiles must be one of {', '.join(TILE_GRIDS)} and blending one of "
                             f"{', '.join(BLEND_MODES)}; got {tiles!r}, {mode!r}")
        if tiles == "nnunet":
            starts = [nnunet_tile_starts(n, r, 1.0 - float(overlap)) for n, r in zip(padded, roi)]
            slices = [tuple(slice(s, s + r) for s, r in zip(corner, roi)) for corner in itertools.product(*starts)]
        else:
            interval = _get_scan_interval(padded, roi, ndim, (float(overlap),) * ndim)
            slices = [tuple(s) for s in dense_patch_slices(padded, roi, interval)]
        valid = get_valid_patch_size(padded, roi)
        if mode == "nnunet_gaussian":
            importance = nnunet_gaussian(valid, sigma_scale)
        else:
            importance = compute_importance_map(valid, mode=mode, sigma_scale=sigma_scale, device=device,
                                                dtype=dtype)
        importance = importance.reshape(1, 1, *valid).to(device=device, dtype=dtype)
        count = torch.zeros((1, 1, *padded), dtype=dtype, device=device)
        for where in slices:
            count[(slice(None), slice(None), *where)] += importance
        if padding_mode not in PADDING_MODES:
            raise ModelError(f"sliding-window padding_mode must be one of {', '.join(PADDING_MODES)}; "
                             f"got {padding_mode!r}")
        return cls(shape, roi, pad, slices, importance, count, padding_mode)

    @property
    def n_windows(self) -> int:
        return len(self.slices)

    @property
    def crop(self) -> tuple[slice, ...]:
        """Spatial slices of the unpadded grid inside the padded one."""
        lows = self.pad[0::2][::-1]
        return tuple(slice(lo, lo + n) for lo, n in zip(lows, self.shape))

    def pad_input(self, z: torch.Tensor) -> torch.Tensor:
        """The network input padded up to the ROI with the plan's ``padding_mode`` (as MONAI pads it)."""
        return F.pad(z, self.pad, mode=self.padding_mode) if any(self.pad) else z

    def pad_zeros(self, t: torch.Tensor) -> torch.Tensor:
        """`t` padded with zeros (weights of the output, which is cropped: the padding gets none)."""
        return F.pad(t, self.pad) if any(self.pad) else t

    def unpad_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient on the padded grid pulled back to the unpadded input: cropped for zero padding; a
        replicated, reflected or wrapped border voxel also collects the gradient of its copies."""
        if not any(self.pad) or self.padding_mode == "constant":
            return self.unpad(grad)
        z = torch.zeros((*grad.shape[:2], *self.shape), dtype=grad.dtype, device=grad.device, requires_grad=True)
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self.pad_input(z), z, grad_outputs=grad)
        return out

    def unpad(self, t: torch.Tensor) -> torch.Tensor:
        return t[(slice(None), slice(None), *self.crop)] if any(self.pad) else t

    def window(self, job: int) -> tuple[int, tuple[slice, ...]]:
        """(batch item, spatial slices) of job number `job`."""
        item, k = divmod(job, self.n_windows)
        return item, self.slices[k]

    def add(self, total: torch.Tensor, jobs: Sequence[int], values: torch.Tensor) -> None:
        """Add row r of `values` (one window per job) into (B, C, *padded) `total` at job r's window,
        in place (autograd differentiates through it, as through MONAI's accumulation)."""
        for row, job in enumerate(jobs):
            item, where = self.window(job)
            total[(slice(item, item + 1), slice(None), *where)] += values[row:row + 1]

    def take(self, padded: torch.Tensor, jobs: Sequence[int]) -> torch.Tensor:
        """The windows of `jobs` cut from a padded (B, C, *padded) tensor, stacked along the batch."""
        parts = []
        for job in jobs:
            item, where = self.window(job)
            parts.append(padded[(slice(item, item + 1), slice(None), *where)])
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def autocast(device: torch.device, enabled: bool):
    """Mixed precision for the network calls: CUDA only (float16), a no-op elsewhere."""
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=enabled and device.type == "cuda")


def network_call(network: torch.nn.Module, inputs: torch.Tensor, mixed_precision: bool = False) -> torch.Tensor:
    """One network call on any input (classifier or segmenter); deep-supervision heads reduced to the first."""
    try:
        with autocast(inputs.device, mixed_precision):
            out = network(inputs)
    except ImportError as exc:  # an optional package the network's own code imports when it runs (einops ...)
        raise ModelError(f"the network needs a Python package that is not installed: {error_chain(exc)}; "
                         "install it into this Python environment") from None
    if isinstance(out, (tuple, list)):  # deep-supervision nets return several heads; use the first
        out = out[0]
    if isinstance(out, dict):
        raise ModelError("the model returns a dict; wrap it to return the logits tensor")
    out = torch.as_tensor(out)
    if not out.is_floating_point():
        raise ModelError(f"the model returns integer values ({str(out.dtype).replace('torch.', '')}: labels, e.g. after an "
                         "argmax); MedXAI explains scores: export the network without its argmax or post-processing, "
                         "so that it returns logits or probabilities")
    return out


def network_output(network: torch.nn.Module, inputs: torch.Tensor,
                   mixed_precision: bool = False) -> torch.Tensor:
    """One network call on windows (:func:`network_call`): one output voxel per input voxel, in the
    input's dtype (float32 out of autocast)."""
    out = network_call(network, inputs, mixed_precision)
    if out.ndim != inputs.ndim or tuple(out.shape[2:]) != tuple(inputs.shape[2:]):
        raise ModelError(f"sliding-window inference needs one output voxel per input voxel; a window of "
                         f"{tuple(inputs.shape[2:])} gave {tuple(out.shape)}")
    return out.to(inputs.dtype) if out.dtype != inputs.dtype else out


def windowed_forward(network: torch.nn.Module, z: torch.Tensor, plan: WindowPlan, per_call: int,
                     mixed_precision: bool = False, progress: Optional[Progress] = None) -> torch.Tensor:
    """MONAI's blended sliding-window output for (B, C, *plan.shape), `per_call` windows per call.

    Differentiable: under autograd the whole graph is kept, as with MONAI (the windowed backward of
    :mod:`.window_gradient` avoids that). Windows run in channels-last-3D layout (:mod:`.layout`).
    """
    with fast_convolutions(network, backward=torch.is_grad_enabled()):  # a graph kept only with autograd on
        return _windowed_forward(network, z, plan, per_call, mixed_precision, progress)


def _windowed_forward(network: torch.nn.Module, z: torch.Tensor, plan: WindowPlan, per_call: int,
                      mixed_precision: bool, progress: Optional[Progress]) -> torch.Tensor:
    zp = plan.pad_input(z)
    n_jobs = z.shape[0] * plan.n_windows
    total: Optional[torch.Tensor] = None
    for start in range(0, n_jobs, per_call):
        jobs = range(start, min(start + per_call, n_jobs))
        out = network_output(network, to_channels_last(plan.take(zp, jobs)), mixed_precision)
        if total is None:
            total = torch.zeros((z.shape[0], out.shape[1], *zp.shape[2:]), dtype=out.dtype, device=out.device)
        plan.add(total, jobs, out * plan.importance.to(out.dtype))
        if progress is not None:
            progress(jobs[-1] + 1, n_jobs)
    assert total is not None
    count = plan.count.to(total.dtype)
    return plan.unpad(total / count if total.requires_grad else total.div_(count))  # in place: no 2nd copy



def _first_head(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class _Member(torch.nn.Module):
    """One network on one mirroring of the input: ``flip(net(flip(x)))``."""

    def __init__(self, network: torch.nn.Module, dims: tuple[int, ...]):
        super().__init__()
        self.network = network
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dims:
            return _first_head(self.network(x))
        return _first_head(self.network(x.flip(self.dims))).flip(self.dims)


class Ensemble(torch.nn.Module):
    """The mean output of several networks (folds), each averaged over mirrored inputs (test-time mirroring).

    ``forward(x) = mean_f mean_m flip_m(net_f(flip_m(x)))``: per network, the unmirrored pass then every
    non-empty combination of the mirror axes, summed and divided as nnU-Net's
    ``_internal_maybe_mirror_and_predict`` does; then the mean over the networks (nnU-Net averages the
    folds' blended outputs, which is the same by linearity of the blend).

    Args:
        networks: the networks (one per fold), with identical outputs shapes.
        mirror_axes: spatial axes (0, 1, 2 of the window) whose flips are averaged; empty for none.
    """

    def __init__(self, networks: Sequence[torch.nn.Module], mirror_axes: Sequence[int] = ()):
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)
        axes = [2 + int(a) for a in mirror_axes]
        self.flips: list[tuple[int, ...]] = [()] + [c for k in range(len(axes))
                                                    for c in itertools.combinations(axes, k + 1)]

    def members(self) -> list[tuple[torch.nn.Module, float]]:
        """Each (network, mirroring) as a module, with its weight in the mean."""
        weight = 1.0 / (len(self.networks) * len(self.flips))
        return [(_Member(net, dims), weight) for net in self.networks for dims in self.flips]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for net in self.networks:
            prediction = None
            for dims in self.flips:
                out = _Member(net, dims)(x)
                prediction = out if prediction is None else prediction + out
            assert prediction is not None
            prediction = prediction / len(self.flips)
            total = prediction if total is None else total + prediction
        assert total is not None
        return total / len(self.networks)


def gradient_members(network: torch.nn.Module) -> Optional[list[tuple[torch.nn.Module, float]]]:
    """The parts of an :class:`Ensemble` whose vector-Jacobian products are taken one at a time
    (weights summing to 1), so a windowed backward pass holds one member's graph; None for a plain network."""
    return network.members() if isinstance(network, Ensemble) else None
