"""oneDNN for the 3D convolutions that PyTorch's CPU heuristic sends to its slow kernel (same values).

For a float32 convolution on the CPU, PyTorch (2.13) picks oneDNN only when the batch is larger than 1,
the kernel is wider than 3 in its last two axes, or ``N * C * D * H`` exceeds 20,480, a rule written for
images that ignores a volume's last axis. Every other batch-1 convolution runs ``slow_conv3d``, an
im2col-and-matrix-product kernel, forward and backward. That is where a volumetric network spends its
time at batch 1: the layers with few channels at full resolution (8 channels at 48^3: 47 ms forward and
98 ms for the input gradient, against 3.9 and 7.9 ms in oneDNN) and the deep layers with many channels
at a small size (128 channels at 12^3: 15 and 32 ms against 5.6 and 14 ms), measured on 2 cores
(``Testing/benchmarks/bench_convolution.py``, ADR 0007).

:func:`onednn_convolutions` routes the network's eligible ``nn.Conv3d`` modules to oneDNN for the
duration of a block. Eligible: ungrouped (grouped ones reach oneDNN already), a kernel larger than
1 x 1 x 1 (PyTorch's matrix product is faster there), numeric padding, and the module's own
``_conv_forward``. A call is routed when PyTorch would give it the slow kernel (:func:`slow_kernel_call`;
where PyTorch picks oneDNN itself there is nothing to gain, and its own backward pass stays), its
input and weight are float32 on the CPU, oneDNN is enabled, and neither weight nor bias needs a gradient
(attributions need input gradients only; :meth:`MedXAILib.model.ModelAdapter.borrowed` freezes the
parameters). Other calls run PyTorch's own convolution unchanged. The input gradient of a stride-1
convolution is itself a oneDNN convolution of the output gradient with the flipped, transposed kernel
(padding ``dilation * (k - 1) - padding``); a strided convolution's input gradient is PyTorch's (a
oneDNN convolution of the zero-interleaved gradient was slower when tried). It comes back in the layout
PyTorch gives it (channels-last when the input or the weight is), which instance norm depends on (see
:func:`MedXAILib.model.layout.channels_last`). The backward pass keeps only the weights, not the input
that PyTorch saves for a weight gradient.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["onednn_convolutions", "routes_to_onednn", "slow_kernel_call", "ONEDNN_THRESHOLD"]

_ROUTED = "_medxai_onednn"  # marks a module routed by an enclosing block: inner blocks leave it alone


def routes_to_onednn(module: torch.nn.Module) -> bool:
    """Whether :func:`onednn_convolutions` routes `module` (its calls may still fall back, see above)."""
    return (isinstance(module, torch.nn.Conv3d)
            and type(module)._conv_forward is torch.nn.Conv3d._conv_forward  # noqa: SLF001 - no override
            and module.groups == 1 and not module.transposed
            and tuple(module.kernel_size) != (1, 1, 1) and not isinstance(module.padding, str))


@contextmanager
def onednn_convolutions(network: torch.nn.Module) -> Iterator[None]:
    """Within the block, `network`'s eligible 3D convolutions run in oneDNN (see the module docstring);
    every module is restored on leaving. Re-entrant. TorchScript modules, and networks whose weights are
    not on the CPU (no call of theirs is routed), are left as they are."""
    first = next(network.parameters(), None)
    routed = [] if (isinstance(network, torch.jit.ScriptModule) or not torch.backends.mkldnn.is_available()
                    or (first is not None and first.device.type != "cpu")) \
        else [m for m in network.modules() if routes_to_onednn(m) and _ROUTED not in m.__dict__]
    try:
        for module in routed:
            module.__dict__[_ROUTED] = True
            module._conv_forward = _routed_forward(module)  # noqa: SLF001 - an instance attribute, removed below
        yield
    finally:
        for module in routed:
            module.__dict__.pop("_conv_forward", None)
            module.__dict__.pop(_ROUTED, None)


def _routed_forward(module: torch.nn.Conv3d) -> Any:
    """`module`'s ``_conv_forward`` through oneDNN where the call allows it. Reads only the module's
    configuration (fixed when the block starts), so a copy of the module made inside the block, which
    keeps this function, computes the same values."""
    native = module._conv_forward  # noqa: SLF001 - the class's bound method
    stride, dilation = tuple(module.stride), tuple(module.dilation)
    padding = tuple(module.padding)
    padding_mode = module.padding_mode
    padded_by_hand = module._reversed_padding_repeated_twice if padding_mode != "zeros" else None  # noqa: SLF001

    def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if not _routable(x, weight, bias):
            return native(x, weight, bias)
        pad = padding
        if padded_by_hand is not None:  # as nn.Conv3d does: pad first, then convolve without padding
            x, pad = F.pad(x, padded_by_hand, mode=padding_mode), (0, 0, 0)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return torch.ops.aten.mkldnn_convolution(x, weight, bias, pad, stride, dilation, 1)
        return _OneDNNConvolution.apply(x, weight, bias, pad, stride, dilation)

    return conv_forward


#: PyTorch (2.13, ``ConvParams::use_mkldnn``) gives a batch-1 float32 convolution with a kernel of at most
#: 3 in either of its last two axes to oneDNN only above this ``N * C * D * H``
ONEDNN_THRESHOLD = 20480


def slow_kernel_call(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether PyTorch's CPU heuristic sends this ungrouped, non-pointwise float32 convolution to its slow
    kernel: batch 1, ``C * D * H`` at most :data:`ONEDNN_THRESHOLD`, no kernel wider than 3 in both of
    its last two axes (where PyTorch picks oneDNN itself, routing gains nothing)."""
    return (x.shape[0] == 1 and x.shape[1] * x.shape[2] * x.shape[3] <= ONEDNN_THRESHOLD
            and not (weight.shape[-1] > 3 and weight.shape[-2] > 3))


def _routable(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.dim() == 5 and not weight.requires_grad
            and (bias is None or not bias.requires_grad) and torch.backends.mkldnn.enabled
            and slow_kernel_call(x, weight))


class _OneDNNConvolution(torch.autograd.Function):
    """A convolution in oneDNN whose backward pass gives the input gradient only (weights frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                padding: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.geometry = (tuple(x.shape), tuple(padding), tuple(stride), tuple(dilation))
        # the input gradient in PyTorch's layout for this call: channels-last if the input or the weight is
        ctx.layout = torch.channels_last_3d if any(
            t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous() for t in (x, weight)) \
            else torch.contiguous_format
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, stride, dilation, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (weight,) = ctx.saved_tensors
        shape, padding, stride, dilation = ctx.geometry
        flipped_padding = [d * (k - 1) - p for d, k, p in zip(dilation, weight.shape[2:], padding)]
        if any(s != 1 for s in stride) or min(flipped_padding) < 0:
            grad_input = torch.nn.grad.conv3d_input(shape, weight, grad, stride, padding, dilation)
        else:  # the transposed convolution of a stride-1 convolution is a convolution
            flipped = weight.flip(2, 3, 4).transpose(0, 1).contiguous(memory_format=ctx.layout)
            grad_input = torch.ops.aten.mkldnn_convolution(grad.contiguous(memory_format=ctx.layout), flipped, None,
                                                           flipped_padding, (1, 1, 1), dilation, 1)
        return grad_input.contiguous(memory_format=ctx.layout), None, None, None, None, None
