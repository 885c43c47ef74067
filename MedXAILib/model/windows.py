"""Sliding-window inference, window by window: the plan and the blended forward pass.

MONAI's ``sliding_window_inference`` computes ``y = crop(sum_w m_w * f(x_w) / sum_w m_w)`` with
importance maps ``m_w`` (constant or Gaussian) over windows that tile the input zero-padded up to
the ROI. :class:`WindowPlan` reproduces its window positions, order, padding and importance map
(with MONAI's own helpers), so :func:`windowed_forward` gives MONAI's output (to float rounding) and
the windowed backward passes of :mod:`.window_gradient` can visit the same windows one batch at a
time. Window ``k`` of batch item ``b`` is job ``b * n_windows + k``, MONAI's order, whatever the
number of windows per network call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ModelError
from .layout import channels_last, to_channels_last

__all__ = ["WindowPlan", "windowed_forward", "network_call", "network_output", "autocast"]

Progress = Callable[[int, int], None]


@dataclass
class WindowPlan:
    """Where MONAI's sliding window puts its windows on one network-grid shape.

    Attributes:
        shape: spatial shape of the network input (before padding).
        roi: window size (``roi_size`` with non-positive entries taken from the shape).
        pad: F.pad argument (last axis first), zero where the input is at least the ROI.
        slices: spatial slices of every window on the padded grid, MONAI's order.
        importance: (1, 1, *roi) blend weights of one window.
        count: (1, 1, *padded) sum of the weights over the windows covering each voxel.
    """

    shape: tuple[int, ...]
    roi: tuple[int, ...]
    pad: list[int]
    slices: list[tuple[slice, ...]]
    importance: torch.Tensor
    count: torch.Tensor

    @classmethod
    def build(cls, shape: Sequence[int], roi_size: Sequence[int], overlap: float, mode: str,
              device: torch.device, dtype: torch.dtype = torch.float32,
              sigma_scale: float = 0.125) -> "WindowPlan":
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
        interval = _get_scan_interval(padded, roi, ndim, (float(overlap),) * ndim)
        slices = [tuple(s) for s in dense_patch_slices(padded, roi, interval)]
        valid = get_valid_patch_size(padded, roi)
        importance = compute_importance_map(valid, mode=mode, sigma_scale=sigma_scale, device=device,
                                            dtype=dtype)
        importance = importance.reshape(1, 1, *valid).to(device=device, dtype=dtype)
        count = torch.zeros((1, 1, *padded), dtype=dtype, device=device)
        for where in slices:
            count[(slice(None), slice(None), *where)] += importance
        return cls(shape, roi, pad, slices, importance, count)

    @property
    def n_windows(self) -> int:
        return len(self.slices)

    @property
    def crop(self) -> tuple[slice, ...]:
        """Spatial slices of the unpadded grid inside the padded one."""
        lows = self.pad[0::2][::-1]
        return tuple(slice(lo, lo + n) for lo, n in zip(lows, self.shape))

    def pad_input(self, z: torch.Tensor) -> torch.Tensor:
        return F.pad(z, self.pad) if any(self.pad) else z

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
    with autocast(inputs.device, mixed_precision):
        out = network(inputs)
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
    with channels_last(network):
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

