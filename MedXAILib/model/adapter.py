"""`ModelAdapter`: one way in for every model format.

The adapter owns the network (always in ``eval()`` mode), its task and class names, the explicit
preprocessing, the inferer (direct call, or sliding-window inference for volumes larger than the
ROI) and the inverse mapping of dense outputs back onto the input grid. Everything it does is
differentiable, so attribution methods see one function: input voxels -> output on the input grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError, ModelError
from .preprocessing import Grid, Preprocessing

__all__ = ["ModelAdapter", "BoundModel", "resolve_device", "TASKS"]

TASKS = ("classification", "segmentation")


def resolve_device(device: Optional[str | torch.device] = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a usable :class:`torch.device`.

    Raises:
        InputError: CUDA asked for but absent, or the index does not exist.
    """
    text = str(device or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError("a CUDA device was requested but this machine has none; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"{text} does not exist; this machine has {count} CUDA device(s)")
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


@dataclass
class ModelAdapter:
    """A loaded model and everything needed to run it on an :class:`ImageVolume`.

    Attributes:
        network: the torch module (TorchScript, exported program module, or MONAI network).
        task: ``"classification"`` or ``"segmentation"``; ``None`` until known (then it is read
            from the output rank on the first forward).
        class_names: one name per output channel, when known.
        in_channels: number of input channels the network takes, when known.
        roi_size: sliding-window ROI (voxels on the network grid); ``None`` calls the net directly.
        sw_batch_size, overlap, blend_mode: sliding-window settings (MONAI semantics).
        output_activation: ``"softmax"`` (mutually exclusive classes) or ``"sigmoid"`` (multi-label),
            used for probability targets.
        preprocessing: explicit steps between stored voxels and the network.
        model_id: a readable identifier (file name, bundle name).
        sha256: hash of the weights / model file, for provenance.
        source: where it was loaded from.
    """

    network: torch.nn.Module
    task: Optional[str] = None
    class_names: Optional[list[str]] = None
    in_channels: Optional[int] = None
    roi_size: Optional[tuple[int, int, int]] = None
    sw_batch_size: int = 1
    overlap: float = 0.25
    blend_mode: str = "constant"  # MONAI SlidingWindowInferer's default
    output_activation: str = "softmax"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    model_id: str = "model"
    sha256: str = ""
    source: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise ModelError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.output_activation not in ("softmax", "sigmoid"):
            raise ModelError(f"output_activation must be softmax or sigmoid; got {self.output_activation!r}")
        self.network.eval()
        for p in self.network.parameters():  # attributions need input gradients only
            p.requires_grad_(False)

    def to(self, device: str | torch.device) -> "ModelAdapter":
        self.device = resolve_device(device)
        self.network.to(self.device)
        return self

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for provenance and ``--json`` output."""
        return {
            "id": self.model_id,
            "sha256": self.sha256,
            "source": self.source,
            "task": self.task,
            "class_names": self.class_names,
            "in_channels": self.in_channels,
            "roi_size": list(self.roi_size) if self.roi_size else None,
            "preprocessing": self.preprocessing.describe(),
        }

    def check_input(self, n_channels: int) -> None:
        if self.in_channels is not None and n_channels != self.in_channels:
            raise ModelError(
                f"the model takes {self.in_channels} input channel(s) but the image has "
                f"{n_channels}; give one image per model channel (repeat --image on the CLI)"
            )

    def bind(self, affine: np.ndarray, shape: Sequence[int]) -> "BoundModel":
        """A differentiable function (B, C, *shape) -> output on this input grid."""
        return BoundModel(self, Grid(np.asarray(affine, dtype=np.float64), tuple(int(n) for n in shape)))


class BoundModel(torch.nn.Module):
    """The adapter fixed to one input grid: preprocessing -> inferer -> inverse mapping."""

    def __init__(self, adapter: ModelAdapter, grid: Grid):
        super().__init__()
        self.adapter = adapter
        self.grids = adapter.preprocessing.grids(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.adapter
        z = a.preprocessing.apply(x, self.grids)
        try:
            if a.roi_size is not None:
                from monai.inferers import sliding_window_inference

                y = sliding_window_inference(
                    z, a.roi_size, a.sw_batch_size, a.network, overlap=a.overlap, mode=a.blend_mode
                )
            else:
                y = a.network(z)
        except (RuntimeError, ValueError) as exc:  # shape and dtype mismatches
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"the model failed on an input of shape {tuple(z.shape)}: {first}"
            ) from None
        if isinstance(y, (tuple, list)):  # deep-supervision nets return several heads; use the first
            y = y[0]
        if isinstance(y, dict):
            raise ModelError("the model returns a dict; wrap it to return the logits tensor")
        y = torch.as_tensor(y)
        if a.task is None:
            a.task = "classification" if y.ndim == 2 else "segmentation" if y.ndim == x.ndim else None
            if a.task is None:
                raise ModelError(f"cannot tell the task from an output of shape {tuple(y.shape)}")
        if a.task == "segmentation":
            if y.ndim != x.ndim:
                raise ModelError(
                    f"a segmentation model must return (B, classes, I, J, K); got {tuple(y.shape)}"
                )
            if tuple(y.shape[2:]) != tuple(z.shape[2:]):
                raise ModelError(
                    f"the segmentation output {tuple(y.shape[2:])} is not on the grid of the network input "
                    f"{tuple(z.shape[2:])}; MedXAI needs one output voxel per input voxel"
                )
            y = a.preprocessing.invert_output(y, self.grids)
        elif y.ndim != 2:
            raise ModelError(f"a classification model must return (B, classes); got {tuple(y.shape)}")
        return y
