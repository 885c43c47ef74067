"""How MedXAI's passes run a network's 3D convolutions: faster, with the same values.

:func:`fast_convolutions` is the block every pass of MedXAI runs in. It combines the channels-last-3D
memory layout (:func:`channels_last`) with :func:`MedXAILib.model.convolution.onednn_convolutions`,
which sends the batch-1 convolutions that PyTorch's CPU heuristic gives its slow kernel to oneDNN.
oneDNN (CPU) and cuDNN (GPU) convolve NDHWC tensors faster than NCDHW ones: measured on a MONAI
UNet on the CPU, a forward and backward pass took 1.5x less time (docs/scale.md). The arithmetic is
the same up to float rounding (the order of the sums inside a convolution may change).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

from .convolution import onednn_convolutions

__all__ = ["fast_convolutions", "channels_last", "to_channels_last"]

_INSTANCE_NORM = torch.nn.modules.instancenorm._InstanceNorm  # noqa: SLF001 - InstanceNorm1d/2d/3d's base

# Whether the innermost channels_last() context converted its network: inputs follow the weights, since
# a channels-last input to contiguous weights makes the convolutions run in the slower mixed layout.
_STATE = threading.local()


@contextmanager
def fast_convolutions(network: torch.nn.Module, backward: bool = True) -> Iterator[None]:
    """Run `network`'s 3D convolutions in channels-last-3D layout where it pays (:func:`channels_last`)
    and in oneDNN where PyTorch would pick its slow kernel (:mod:`MedXAILib.model.convolution`); every
    weight and module is restored on leaving. ``backward=False`` promises that no backward pass goes
    through what the block computes (inference and no-grad passes). Re-entrant."""
    with channels_last(network, backward), onednn_convolutions(network):
        yield


@contextmanager
def channels_last(network: torch.nn.Module, backward: bool = True) -> Iterator[None]:
    """Run 3D convolutions in channels-last-3D layout, and restore the weights' layout afterwards.

    TorchScript and exported modules keep their layout, and so do networks with GroupNorm: torch's
    channels-last GroupNorm kernel (CPU, torch 2.13) loses precision with the group size (measured: 0.17
    absolute error on a 96^3 window of the whole-body CT bundle's SegResNet, where NCDHW agrees with a
    float64 reference to 1e-6). Networks with instance norm keep theirs too where a backward pass may
    follow (`backward`): torch's instance-norm backward pass at batch 1 (CPU, torch 2.13) returns a wrong
    input gradient when its output gradient is channels-last (relative error 1.3; none at batch 2), which
    a oneDNN convolution after it produces (a conv / instance norm / conv stack at 48^3: 1.4 against a
    float64 reference, where NCDHW agrees to 6e-7; ``bench_convolution.py --norms``,
    ``Testing/Lib/test_convolution.py``, ADR 0007). A
    network whose ``keep_layout`` attribute is true keeps its layout too (a loader that measured
    channels-last slower: nnU-Net's U-Nets). So do networks of which at least a third
    of the 3D convolutions are 1 x 1 x 1 (DenseNet's bottlenecks and transitions): PyTorch runs those
    outside oneDNN for batches under 16 on one thread, where channels-last only adds layout copies to every
    concatenation (measured on MONAI's DenseNet121 at 96^3, one thread: forward+backward 5 % slower at
    batches of 1 and 4, and whole explanations 3 to 20 % slower than the peers in NCDHW, docs/methods.md).
    Re-entrant: an inner use changes nothing.
    """
    weights = [] if _keeps_layout(network, backward) else [p for p in network.parameters() if p.ndim == 5]
    if not weights:
        with _converting(False):
            yield
        return
    saved = [p.data for p in weights]
    try:
        for p in weights:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        with _converting(True):
            yield
    finally:
        for p, data in zip(weights, saved):
            p.data = data


def _keeps_layout(network: torch.nn.Module, backward: bool = True) -> bool:
    """Whether the network runs in its own layout (see :func:`channels_last`): TorchScript, ``keep_layout``,
    group norm, instance norm where a backward pass may follow, or at least a third of its 3D convolutions
    1 x 1 x 1. One pass over the modules."""
    if isinstance(network, torch.jit.ScriptModule) or getattr(network, "keep_layout", False):
        return True
    convolutions = pointwise = 0
    for module in network.modules():
        if isinstance(module, torch.nn.GroupNorm) or (backward and isinstance(module, _INSTANCE_NORM)):
            return True
        if isinstance(module, torch.nn.Conv3d):
            convolutions += 1
            pointwise += tuple(module.kernel_size) == (1, 1, 1)
    return convolutions > 0 and 3 * pointwise >= convolutions


@contextmanager
def _converting(flag: bool) -> Iterator[None]:
    stack = _STATE.__dict__.setdefault("stack", [])
    stack.append(flag)
    try:
        yield
    finally:
        stack.pop()


def to_channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 5-D tensor in channels-last-3D layout (other ranks unchanged); unchanged inside a
    :func:`channels_last` context whose network keeps its layout."""
    stack = getattr(_STATE, "stack", None)
    if stack and not stack[-1]:
        return t
    return t.contiguous(memory_format=torch.channels_last_3d) if t.ndim == 5 else t
