"""`ModelAdapter`: one way in for every model format.

The adapter holds the network (in ``eval()`` mode with frozen parameters whenever MedXAI runs it; a
caller's own module is only borrowed for a call, :meth:`ModelAdapter.borrowed`), its task and class names, the explicit
preprocessing, the inferer (direct call, or sliding-window inference for volumes larger than the
ROI) and the inverse mapping of dense outputs back onto the input grid. Everything it does is
differentiable, so attribution methods see one function: input voxels -> output on the input grid.

Sliding-window inference runs through :mod:`.windows` (MONAI's windows, order and blending, to float
rounding) with as many windows per network call as the memory budget allows (:mod:`.memory`), and
:meth:`BoundModel.gradient` backpropagates through it window batch by window batch
(:mod:`.window_gradient`), so memory stays bounded on whole CT volumes.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError, ModelError, error_chain
from . import memory
from .preprocessing import Grid, Preprocessing
from .window_gradient import WindowGradient, window_backward
from .windows import (BLEND_MODES, PADDING_MODES, TILE_GRIDS, WindowPlan, gradient_members, network_call,
                      network_output, windowed_forward)

__all__ = ["ModelAdapter", "BoundModel", "resolve_device", "failure_cause", "TASKS"]

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
        sw_batch_size, overlap, blend_mode: sliding-window settings (MONAI semantics); the windows per
            network call are chosen from ``memory_budget`` (``sw_batch_size`` is kept as declared,
            for the provenance).
        padding_mode: how an input smaller than the ROI is padded up to it (MONAI's ``padding_mode``:
            ``constant`` zeros, ``replicate``, ``reflect`` or ``circular``).
        tile_grid: where the windows go: ``monai`` (MONAI's scan interval) or ``nnunet`` (nnU-Net's evenly
            spread tiles, step ``1 - overlap``); with ``blend_mode`` ``nnunet_gaussian`` the windows are
            blended as nnU-Net's predictor blends them (:mod:`.windows`).
        memory_budget: bytes a run may use; ``None``: half of the free VRAM (CUDA), or of the free
            RAM up to 4 GiB (CPU; see :mod:`.memory`).
        mixed_precision: run the network under float16 autocast on CUDA (ignored on the CPU).
        output_activation: ``"softmax"`` (mutually exclusive classes) or ``"sigmoid"`` (multi-label),
            used for probability targets.
        preprocessing: explicit steps between stored voxels and the network.
        model_id: a readable identifier (file name, bundle name).
        sha256: hash of the weights / model file, for provenance.
        source: where it was loaded from.
        notes: caveats found while loading, repeated as warnings in every result's provenance.
        pipeline: how the format's own inference runs and what MedXAI reproduces of it exactly or
            approximately (for the provenance; e.g. an nnU-Net folder's folds, mirroring, resampling).
        owns_network: the network was loaded for this adapter (or handed to it by ``load_model``), so it is
            kept in ``eval()`` mode with frozen parameters; False for a caller's module that
            :func:`~MedXAILib.engine.explain` only borrows for one call (:meth:`borrowed`).
    """

    network: torch.nn.Module
    task: Optional[str] = None
    class_names: Optional[list[str]] = None
    in_channels: Optional[int] = None
    roi_size: Optional[tuple[int, int, int]] = None
    sw_batch_size: int = 1
    overlap: float = 0.25
    blend_mode: str = "constant"  # MONAI SlidingWindowInferer's default
    padding_mode: str = "constant"  # MONAI SlidingWindowInferer's default
    tile_grid: str = "monai"
    output_activation: str = "softmax"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    model_id: str = "model"
    sha256: str = ""
    source: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    memory_budget: Optional[int] = None
    mixed_precision: bool = False
    notes: list[str] = field(default_factory=list)
    pipeline: dict = field(default_factory=dict)
    owns_network: bool = field(default=True, repr=False)
    _probe_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise ModelError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.output_activation not in ("softmax", "sigmoid"):
            raise ModelError(f"output_activation must be softmax or sigmoid; got {self.output_activation!r}")
        if not (isinstance(self.overlap, (int, float)) and 0 <= self.overlap < 1):
            raise ModelError(f"overlap must be a number in [0, 1); got {self.overlap!r}")
        if self.blend_mode not in BLEND_MODES:
            raise ModelError(f"blend_mode must be one of {', '.join(BLEND_MODES)}; got {self.blend_mode!r}")
        if self.tile_grid not in TILE_GRIDS:
            raise ModelError(f"tile_grid must be one of {', '.join(TILE_GRIDS)}; got {self.tile_grid!r}")
        if self.padding_mode not in PADDING_MODES:
            raise ModelError(f"padding_mode must be one of {', '.join(PADDING_MODES)}; got {self.padding_mode!r}")
        if self.owns_network:
            _freeze(self.network)

    @contextmanager
    def borrowed(self, device: Optional[str | torch.device] = None, memory_budget: Optional[int] = None,
                 mixed_precision: Optional[bool] = None) -> Iterator["ModelAdapter"]:
        """This adapter set up for one call, and given back exactly as it came.

        Inside: the network in ``eval()`` mode with frozen parameters (attributions need input
        gradients only), on `device`, with the call's memory budget and mixed precision. On leaving,
        every module's training flag, every parameter's ``requires_grad`` and device, and the adapter's
        own settings are restored, so a caller's model (a network being trained, an adapter shared
        between calls) never changes behind its back.
        """
        network = self.network
        # Python loops over every module cost ~5 ms a call on DenseNet121's 600 modules: read each flag
        # once, and set (and later restore) only the flags that differ, which for a loaded adapter is none
        modules = list(network.modules())
        training = [m.training for m in modules]
        parameters = list(network.parameters())
        trainable = [p for p in parameters if p.requires_grad]
        settings = (self.device, self.memory_budget, self.mixed_precision)
        home = parameters[0].device if parameters else None
        try:
            if any(training):
                network.eval()  # through train(False), which a network may override
            for p in trainable:
                p.requires_grad_(False)
            if device is not None:
                self.to(device)
            if memory_budget is not None:
                self.memory_budget = memory_budget
            if mixed_precision is not None:
                self.mixed_precision = bool(mixed_precision)
            yield self
        finally:
            self.device, self.memory_budget, self.mixed_precision = settings
            if home is not None and next(iter(network.parameters())).device != home:
                network.to(home)
            for module, flag in zip(modules, training):
                if module.training != flag:
                    module.training = flag
            for p in parameters:
                if p.requires_grad:  # set inside this call (by a method or by the freeze)
                    p.requires_grad_(False)
            for p in trainable:
                p.requires_grad_(True)

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
            "overlap": self.overlap if self.roi_size else None,
            "blend_mode": self.blend_mode if self.roi_size else None,
            "padding_mode": self.padding_mode if self.roi_size else None,
            "tile_grid": self.tile_grid if self.roi_size else None,
            "output_activation": self.output_activation,
            "preprocessing": self.preprocessing.describe(),
            **({"pipeline": self.pipeline} if self.pipeline else {}),
        }

    def budget_bytes(self) -> int:
        """The memory budget in bytes (``auto`` resolved against the memory free now)."""
        return memory.resolve_budget(self.memory_budget, self.device)

    def uses_amp(self) -> bool:
        return bool(self.mixed_precision and self.device.type == "cuda")

    def check_input(self, n_channels: int) -> None:
        if self.in_channels is not None and n_channels != self.in_channels:
            raise ModelError(
                f"the model takes {self.in_channels} input channel(s) but the image has "
                f"{n_channels}; give one image per model channel (repeat --image on the CLI)"
            )

    def bind(self, affine: np.ndarray, shape: Sequence[int], reference: Any = None) -> "BoundModel":
        """A differentiable function (B, C, *shape) -> output on this input grid.

        Args:
            affine, shape: the input grid.
            reference: the unperturbed input's voxels (C, *shape); needed, and used, only by a
                preprocessing step whose grid depends on the values (a foreground crop, whose box is
                then fixed for every input the bound model sees).
        """
        return BoundModel(self, Grid(np.asarray(affine, dtype=np.float64), tuple(int(n) for n in shape)), reference)


def failure_cause(error: BaseException) -> str:
    """The cause of a network failure, with the exceptions that caused it, on one line.

    A TorchScript interpreter error starts with "The following operation failed in the TorchScript
    interpreter." and a serialized traceback; its cause is the last ``SomethingError: ...`` line
    (see :func:`MedXAILib.errors.error_chain`).
    """
    return error_chain(error)


def _failure_hint(error: BaseException, adapter: "ModelAdapter") -> str:
    text = str(error)
    match = re.search(r"expected input\[[^\]]*\] to have (\d+) channels", text)
    if match:
        return f"; the network takes {match.group(1)} input channel(s): give one image per channel"
    if re.search(r"[Ss]izes? of tensors must match|size mismatch|must match the size", text):
        return ("; the network may need each size to be a multiple of its total stride: pad the image to one "
                "with --pad-divisible K (K the product of the network's strides, e.g. 16 or 32; a 'preprocessing' "
                "step divisible_pad in a model spec), or set a window with --roi-size (a multiple of it)")
    return ""


def _freeze(network: torch.nn.Module) -> None:
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)


class BoundModel(torch.nn.Module):
    """The adapter fixed to one input grid: preprocessing -> inferer -> inverse mapping.

    Attributes:
        progress: optional ``progress(done, total)`` called after every batch of windows.
    """

    def __init__(self, adapter: ModelAdapter, grid: Grid, reference: Any = None):
        super().__init__()
        self.adapter = adapter
        self.grids = adapter.preprocessing.grids(grid, reference)
        self.progress = None
        self._plan: Optional[WindowPlan] = None

    @property
    def windowed(self) -> bool:
        """Whether the network runs window by window (a segmenter with a ``roi_size``)."""
        return self.adapter.roi_size is not None and self.adapter.task != "classification"

    def plan(self) -> WindowPlan:
        """The sliding-window plan on this network grid (built once)."""
        if self._plan is None:
            a = self.adapter
            if a.roi_size is None:
                raise ModelError("this model has no roi_size, so it does not run window by window")
            self._plan = WindowPlan.build(self.grids[-1].shape, a.roi_size, a.overlap, a.blend_mode, a.device,
                                          padding_mode=a.padding_mode, tiles=a.tile_grid)
        return self._plan

    def _volume_bytes(self, channels: int) -> int:
        return 4 * int(np.prod(self.grids[0].shape)) * channels

    def _probe_window(self) -> dict[str, int]:
        """One forward on a zero window (cached per ROI): the bytes autograd saves, the output channels."""
        a = self.adapter
        plan = self.plan()
        channels = int(a.in_channels or 1)
        key = ("window", plan.roi, a.in_channels, str(a.device), a.uses_amp())
        if key not in a._probe_cache:
            found: dict[str, int] = {}

            members = gradient_members(a.network)  # an ensemble's backward holds one member's graph at a time
            unit = members[0][0] if members else a.network

            def run() -> None:  # the probe is made inside: a normal tensor even under inference mode
                probe = torch.zeros((1, channels, *plan.roi), device=a.device, requires_grad=True)
                found["out_channels"] = int(network_output(unit, probe, a.uses_amp()).shape[1])

            saved = memory.saved_bytes(run)
            found["bytes"] = int(memory.GRAD_FACTOR * saved) + 16 * int(np.prod(plan.roi)) * max(1, channels)
            a._probe_cache[key] = found
        return a._probe_cache[key]

    def window_bytes(self) -> int:
        """Estimated bytes one window needs in a backward pass (one probe forward, cached per ROI)."""
        return self._probe_window()["bytes"]

    def output_channels(self) -> int:
        """Output channels of the network (from the window probe; no pass over the volume)."""
        return self._probe_window()["out_channels"]

    def fixed_bytes(self) -> int:
        """Whole-volume buffers of a windowed gradient pass: the input, its padded copy and gradient
        (per input channel), the weight sum ``N``, the weights ``dS/dy / N`` (one channel) and the
        blended output (every output channel)."""
        a = self.adapter
        plan = self.plan()
        voxels = max(int(np.prod(self.grids[0].shape)), int(np.prod(plan.count.shape)))
        return 4 * voxels * (3 * int(a.in_channels or 1) + 2 + self.output_channels())

    def windows_per_call(self) -> int:
        """Windows per network call: as many as the budget holds beside the volume-sized buffers
        (an ``auto`` budget on the CPU: at most :data:`~.memory.AUTO_CPU_WINDOWS`)."""
        a = self.adapter
        most = self.plan().n_windows
        if a.memory_budget is None and a.device.type != "cuda":
            most = min(most, memory.AUTO_CPU_WINDOWS)
        return memory.items_per_call(a.budget_bytes(), self.fixed_bytes(), self.window_bytes(), most)

    def inputs_per_call(self, most: int) -> int:
        """Whole inputs per forward pass without autograd (perturbation batches), at most `most`."""
        a = self.adapter
        channels = int(a.in_channels or 1)
        if self.windowed:  # windows run in batches anyway; an input costs its input and output copies
            per_input = 4 * self._volume_bytes(channels)
            fixed = self.windows_per_call() * self.window_bytes()
        else:
            key = ("input", tuple(self.grids[-1].shape), a.in_channels, str(a.device), a.uses_amp())
            if key not in a._probe_cache:
                shape = (1, channels, *self.grids[-1].shape)
                saved = memory.saved_bytes(lambda: network_call(
                    a.network, torch.zeros(shape, device=a.device, requires_grad=True), a.uses_amp()))
                a._probe_cache[key] = int(memory.NO_GRAD_FACTOR * saved) + 2 * self._volume_bytes(channels)
            per_input, fixed = a._probe_cache[key], 0
        return memory.items_per_call(a.budget_bytes(), fixed, per_input, most)

    def memory_report(self) -> dict[str, Any]:
        """Budget and batching, for the provenance."""
        a = self.adapter
        out: dict[str, Any] = {"budget_bytes": a.budget_bytes(),
                               "budget": "auto" if a.memory_budget is None else int(a.memory_budget),
                               "mixed_precision": a.uses_amp()}
        if self.windowed:
            out.update(windows=self.plan().n_windows, windows_per_call=self.windows_per_call(),
                       window_bytes_estimate=self.window_bytes(), fixed_bytes_estimate=self.fixed_bytes())
        return out

    def gradient(self, x: torch.Tensor, scorer, output: Optional[torch.Tensor] = None,
                 **kwargs) -> WindowGradient:
        """d score / d input through the sliding windows, one batch of windows at a time.

        See :func:`MedXAILib.model.window_gradient.window_backward` (the keyword arguments).
        """
        return window_backward(self, x, scorer, output=output, progress=kwargs.pop("progress", self.progress),
                               **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.adapter
        z = a.preprocessing.apply(x, self.grids)
        try:
            if a.roi_size is not None:
                y = windowed_forward(a.network, z, self.plan(), self.windows_per_call(), a.uses_amp(),
                                     self.progress)
            else:
                y = network_call(a.network, z, a.uses_amp())
        except (RuntimeError, ValueError, TypeError, IndexError, AssertionError, NotImplementedError) as exc:
            # the network's own code: shape and dtype mismatches, its assertions on the input size ...
            raise ModelError(f"the model failed on an input of shape {tuple(z.shape)}: {failure_cause(exc)}"
                             f"{_failure_hint(exc, a)}") from None
        if y.dtype != x.dtype and y.is_floating_point():
            y = y.to(x.dtype)
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

