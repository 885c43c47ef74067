"""Find the layers a CAM method can look at, and pick one automatically per task.

A *candidate* layer is any sub-module of the network that is, or contains, a convolution
(``Conv1/2/3d``, ``ConvTranspose*d``, and therefore MONAI's ``Convolution``, ``ResidualUnit``,
``UnetResBlock``, ``TwoConv``, ``UpCat``, DenseNet's dense blocks, ResNet's ``layerN`` ...) and that
returns one tensor with the same number of spatial dimensions as the input. Candidates are found
by one forward pass under ``torch.no_grad`` with hooks on these modules; the hooks are removed in a
``finally`` block whatever happens. When a container returns the very same tensor as the module it
ends with (ResNet's ``layer4`` and its last block), only the outer name is listed; the inner one is
kept in :attr:`LayerInfo.aliases`.

Automatic choice (:func:`default_layer`):

* classification: the last candidate to finish whose output still has more than one voxel, i.e. the
  encoder output just before global pooling (``features`` of MONAI's DenseNet121, ``layer4`` of
  ResNet, ``net`` of ``Classifier``). When the input is so small that the encoder output is a single
  voxel, the last candidate with extent is taken instead (a 1x1x1 layer gives a constant map).
* segmentation: the *output head* is the convolution that starts last (``final_conv`` of BasicUNet,
  the 1x1x1 convolution of SegResNet's ``conv_final``, ``output_block`` of DynUNet and SwinUNETR,
  the last unit of UNet's top up-block); the automatic layer is the candidate that finished last
  before the head started, i.e. the last decoder block feeding the head: ``upcat_1`` (BasicUNet),
  ``up_layers.<last>`` (SegResNet), ``skip_layers`` (DynUNet; the same tensor as its last
  ``upsamples`` block), ``model.1`` (AttentionUnet), ``decoder1`` expected for SwinUNETR. MONAI's UNet
  already works at ``out_channels`` width in its top up-block, so its choice is that block's
  transposed convolution ``model.2.0`` (full resolution, ``out_channels`` features) with residual
  units, and the skip connection ``model.1`` (half resolution, richer) without; name ``model.1`` to
  use the richer layer.

Modules that run more than once per forward pass (shared weights) are listed with their call count
but never chosen automatically; CAM methods refuse them.
"""

from __future__ import annotations

import difflib
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch

from ..errors import ModelError, ParameterError, error_chain

__all__ = [
    "LayerInfo",
    "candidate_layers",
    "default_layer",
    "default_layers",
    "default_from_trace",
    "likely_layer",
    "tracing",
    "finished",
    "resolve_layer",
    "example_input",
    "is_conv_like",
    "check_hookable",
]

_CONV_TYPES = (torch.nn.modules.conv._ConvNd,)


@dataclass(frozen=True)
class LayerInfo:
    """One candidate layer.

    Attributes:
        name: the module's name in ``network.named_modules()`` (what ``--param layer=`` takes).
        type: the module's class name.
        output_shape: the shape of its output on the example input, batch dimension included.
        calls: how many times it ran in one forward pass (1 for every usable layer).
        aliases: inner modules that return the very same tensor (their names are accepted too).
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    calls: int = 1
    aliases: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "output_shape": list(self.output_shape),
                "calls": self.calls, "aliases": list(self.aliases)}


@dataclass
class _Record:
    name: str
    module: torch.nn.Module
    leaf_conv: bool
    start: int = -1
    end: int = -1
    calls: int = 0
    shape: Optional[tuple[int, ...]] = None
    spatial: bool = False
    aliases: list[str] = field(default_factory=list)
    alias_of: Optional[str] = None
    output: Optional[torch.Tensor] = None  # kept by tracing(keep=True) only
    version: int = -1


def is_conv_like(module: torch.nn.Module) -> bool:
    """Whether `module` is or contains a convolution."""
    return any(isinstance(m, _CONV_TYPES) for m in module.modules())


def check_hookable(network: torch.nn.Module) -> None:
    """Raise a clear error for networks whose layers cannot be hooked (TorchScript).

    Raises:
        ModelError: `network` is a TorchScript module.
    """
    if isinstance(network, torch.jit.ScriptModule):
        raise ModelError(
            "CAM methods hook a layer of the network, and TorchScript models do not allow that; load the "
            "model as Python modules (a MONAI bundle with models/model.pt, or a model spec JSON)"
        )


@contextmanager
def tracing(network: torch.nn.Module, rank: int, keep: bool = False) -> Iterator[dict[str, "_Record"]]:
    """Record every conv-like module's calls (order, output shape, aliases) while the block runs the
    network once; the hooks are always removed.

    Args:
        rank: the input's number of dimensions (spatial outputs have the same).
        keep: also keep each module's first output tensor and its version counter, and hand in-place
            modules (``inplace=True``, such as the ReLU after DenseNet's features) a copy of any kept
            output they receive, so a kept tensor keeps its values and its place in the graph: a CAM
            can read the chosen layer off the very pass that traced it (see :func:`finished`).

    Raises:
        ModelError: a TorchScript network, or one without (visible) convolutions.
    """
    check_hookable(network)
    records: dict[str, _Record] = {}
    for name, module in network.named_modules():
        if name and is_conv_like(module):
            records[name] = _Record(name, module, isinstance(module, _CONV_TYPES))
    if not records:
        raise ModelError(
            f"the network ({type(network).__name__}) exposes no convolution layers; CAM methods need a "
            "convolutional network loaded as Python modules (TorchScript and exported programs hide them: "
            "use a MONAI bundle with models/model.pt or a model spec JSON)"
        )
    clock = [0]
    outputs: dict[int, tuple[weakref.ref, str]] = {}
    kept: dict[int, torch.Tensor] = {}
    handles = []

    def pre_hook(record: _Record):
        def hook(module, args):
            if record.calls == 0:
                record.start = clock[0]
            clock[0] += 1

        return hook

    def post_hook(record: _Record):
        def hook(module, args, output):
            record.calls += 1
            clock[0] += 1
            if record.calls > 1:
                return
            record.end = clock[0]
            if isinstance(output, torch.Tensor):
                record.shape = tuple(int(n) for n in output.shape)
                record.spatial = output.ndim == rank
                key = id(output)
                previous = outputs.get(key)
                if previous is not None and previous[0]() is output:
                    inner = records[previous[1]]
                    record.aliases.extend([inner.name, *inner.aliases])
                    inner.alias_of = record.name
                try:
                    outputs[key] = (weakref.ref(output), record.name)
                except TypeError:  # pragma: no cover - tensors support weak references
                    pass
                if keep:
                    record.output, record.version = output, output._version
                    kept[key] = output

        return hook

    def copy_kept(module, args):
        if any(isinstance(a, torch.Tensor) and kept.get(id(a)) is a for a in args):
            return tuple(a.clone() if isinstance(a, torch.Tensor) and kept.get(id(a)) is a else a for a in args)
        return None

    try:
        for record in records.values():
            handles.append(record.module.register_forward_pre_hook(pre_hook(record)))
            handles.append(record.module.register_forward_hook(post_hook(record)))
        if keep:
            for module in network.modules():
                if getattr(module, "inplace", False) is True:
                    handles.append(module.register_forward_pre_hook(copy_kept))
        yield records
    finally:
        for handle in handles:
            handle.remove()
        kept.clear()


def finished(network: torch.nn.Module, records: dict[str, "_Record"]) -> list["_Record"]:
    """The traced modules that ran, in finishing order.

    Raises:
        ModelError: no hook fired (compiled layers).
    """
    ran = [r for r in records.values() if r.calls > 0]
    if not ran:
        raise ModelError(
            f"no layer hook fired when running {type(network).__name__}: its layers are compiled "
            "(TorchScript or an exported program); CAM methods need the network as Python modules"
        )
    return sorted(ran, key=lambda r: r.end)


def _trace(network: torch.nn.Module, example: torch.Tensor) -> list[_Record]:
    """Run `network` once on `example` and record every conv-like module in finishing order."""
    with tracing(network, example.ndim) as records:
        try:
            with torch.no_grad():
                network(example)
        except (RuntimeError, ValueError, TypeError, IndexError, ImportError) as exc:
            raise ModelError(
                f"the model failed on an example input of shape {tuple(example.shape)}: {error_chain(exc)}"
            ) from None
    return finished(network, records)


def _listed(records: Sequence[_Record]) -> list[_Record]:
    return [r for r in records if r.spatial and r.alias_of is None]


def candidate_layers(network: torch.nn.Module, example_input: torch.Tensor) -> list[LayerInfo]:
    """Conv-like layers with a spatial tensor output, in the order they finish on `example_input`.

    Raises:
        ModelError: the network has no (visible) convolution or fails on the example input.
    """
    return [
        LayerInfo(r.name, type(r.module).__name__, r.shape or (), r.calls, tuple(r.aliases))
        for r in _listed(_trace(network, example_input))
    ]


def _default_from_trace(records: Sequence[_Record], task: str) -> str:
    usable = [r for r in _listed(records) if r.calls == 1]
    if not usable:
        raise ModelError("the network has no convolution layer with a spatial output that runs once per pass")
    if task == "classification":
        extended = [r for r in usable if r.shape is not None and _spatial_size(r.shape) > 1]
        return (extended or usable)[-1].name
    if task != "segmentation":
        raise ParameterError(f"unknown task {task!r}; use classification or segmentation")
    leaves = [r for r in records if r.leaf_conv]
    head = max(leaves, key=lambda r: r.start)
    before = [r for r in usable if r.end <= head.start]
    return (before or usable)[-1].name


def _spatial_size(shape: Sequence[int]) -> int:
    size = 1
    for n in shape[2:]:
        size *= int(n)
    return size


def default_from_trace(records: Sequence[_Record], task: str) -> str:
    """The automatic choice (see the module docstring) among traced modules in finishing order."""
    return _default_from_trace(records, task)


def likely_layer(network: torch.nn.Module, task: str) -> Optional[str]:
    """The automatic choice as the order of registration predicts it, without running the network.

    Most networks run their sub-modules in the order they register them, so modules finish in the
    post-order of that tree: the classification choice is then the last conv-like module in it, and the
    segmentation choice the last one before the head (the last convolution). Spatial extent, aliases and
    shared modules are unknown here, and so is the order of a network that runs its modules otherwise:
    the caller checks the guess against a trace of the pass it runs with it (:func:`default_from_trace`).
    None when there is no guess (no convolution, or nothing before the head).
    """
    order: list[tuple[str, bool]] = []  # (name, is a convolution itself), conv-like modules in post-order
    seen: set[int] = set()

    def visit(prefix: str, module: torch.nn.Module) -> bool:
        contains = isinstance(module, _CONV_TYPES)
        for child_name, child in module.named_children():
            if id(child) in seen:
                continue
            seen.add(id(child))
            contains = visit(f"{prefix}.{child_name}" if prefix else child_name, child) or contains
        never_called = isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict))
        if contains and prefix and not never_called:
            order.append((prefix, isinstance(module, _CONV_TYPES)))
        return contains

    visit("", network)
    if not order:
        return None
    if task == "classification":
        return order[-1][0]
    head = max(i for i, (_, leaf) in enumerate(order) if leaf)
    return order[head - 1][0] if head > 0 else None


def default_layer(network: torch.nn.Module, task: str, example_input: torch.Tensor) -> str:
    """The layer a CAM method uses when ``layer`` is left empty (see the module docstring)."""
    return _default_from_trace(_trace(network, example_input), task)


def default_layers(
    network: torch.nn.Module, example_input: torch.Tensor
) -> tuple[list[LayerInfo], dict[str, str]]:
    """Candidates and the automatic choice for each task, from one forward pass."""
    records = _trace(network, example_input)
    infos = [
        LayerInfo(r.name, type(r.module).__name__, r.shape or (), r.calls, tuple(r.aliases))
        for r in _listed(records)
    ]
    return infos, {task: _default_from_trace(records, task) for task in ("classification", "segmentation")}


def resolve_layer(network: torch.nn.Module, name: str) -> torch.nn.Module:
    """The sub-module called `name`; an unknown name raises with the closest names.

    Raises:
        ParameterError: no such module (the message suggests the closest names).
    """
    key = name.strip()
    if key:
        try:
            return network.get_submodule(key)  # its path only, not every module of the network
        except AttributeError:
            pass
    modules = dict(network.named_modules())
    conv_names = [n for n, m in modules.items() if n and is_conv_like(m)]
    close = difflib.get_close_matches(key, conv_names, n=3, cutoff=0.5) or difflib.get_close_matches(
        key, [n for n in modules if n], n=3, cutoff=0.5
    )
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ParameterError(
        f"the network has no layer named {name!r}{hint} (list them with 'medxai layers --model ...')"
    )


def example_input(
    in_channels: Optional[int],
    roi_size: Optional[Sequence[int]] = None,
    network_input: Optional[torch.Tensor] = None,
    default_size: int = 64,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """The tensor used to discover layers: what the network sees in one call.

    ``network_input`` (an image after the model's preprocessing) is used as it is, or, when the model
    runs window by window (``roi_size``), its first window, zero-padded to the ROI. Without an image:
    zeros of the ROI size, or a ``default_size`` cube, with ``in_channels`` (default 1) channels.
    """
    if network_input is not None:
        if not roi_size:
            return network_input
        window = network_input[(slice(0, 1), slice(None), *(slice(0, r) if r > 0 else slice(None)
                                                              for r in roi_size))]
        pads = []
        for axis in reversed(range(len(roi_size))):
            want = roi_size[axis] if roi_size[axis] > 0 else window.shape[2 + axis]
            pads.extend([0, max(0, want - window.shape[2 + axis])])
        return torch.nn.functional.pad(window, pads) if any(pads) else window
    size = tuple(int(r) for r in roi_size) if roi_size else (default_size,) * 3
    return torch.zeros((1, int(in_channels or 1), *size), device=device)
