"""Modified backward passes through activation modules, for guided backpropagation and DeepLIFT.

Both methods keep autograd's graph and change only what flows back through chosen modules
(Springenberg et al. 2015, arXiv:1412.6806; Shrikumar et al. 2017, arXiv:1704.02685).

How: a forward pre-hook hands the module a tensor of its own as input (a clone for in-place modules
such as MONAI DenseNet's ``ReLU(inplace=True)``, which would overwrite it, otherwise a view) and puts
a tensor hook on it; a forward hook puts a tensor hook on the output. In the backward pass the output
hook keeps d score / d output, and the input hook, which receives the module's ordinary input
gradient, returns the rule's replacement. Because the input tensor is the module's own, its hook sees
only the gradient through this module, not that of other consumers (residual branches). A tensor
hook registered before an in-place operation receives the gradient of the value before it (PyTorch's
documented behaviour), so in-place activations work too.

Module hooks are always removed (``finally``); tensor hooks belong to the graph and go with it.

Limits: only ``nn.Module`` activations are seen. Activations called as functions (``torch.relu``,
``F.relu``, softmax in attention blocks) keep their ordinary gradient, and the layers of TorchScript
or ``torch.export`` models never run Python hooks, so :func:`check_hooked` refuses those models.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

__all__ = [
    "BackwardRule",
    "cancel_points",
    "modified_backward",
    "check_hooked",
    "GUIDED_EXACT",
    "GUIDED_LEAKY",
    "is_guided_module",
    "guided_rule",
    "RESCALE_MODULES",
    "MAXPOOL_MODULES",
    "NO_RULE_MODULES",
    "DeepLiftRecorder",
    "modules_without_rule",
]

BackwardRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(ordinary input gradient, output gradient) -> input gradient to pass on``."""

OnCall = Callable[[nn.Module, torch.Tensor, torch.Tensor], Optional[BackwardRule]]
"""Called after each forward call of a hooked module with its input (as it was before the call) and
output, both detached; returns the backward rule for this call, or None to keep the gradient."""


class _Call:
    """One forward call of a hooked module: its rule and, during backward, d score / d output."""

    __slots__ = ("rule", "grad_out")

    def __init__(self) -> None:
        self.rule: Optional[BackwardRule] = None
        self.grad_out: Optional[torch.Tensor] = None

    def keep_grad_out(self, grad: torch.Tensor) -> None:
        self.grad_out = grad

    def replace_grad_in(self, grad_in: torch.Tensor) -> Optional[torch.Tensor]:
        if self.rule is None or self.grad_out is None:
            return None
        grad_out, self.grad_out = self.grad_out, None  # free it as soon as it is used
        return self.rule(grad_in, grad_out)


class _ModuleHooks:
    """The pre- and post-forward hooks of one module (calls may nest or repeat: a stack)."""

    def __init__(self, on_call: OnCall, tally: Counter):
        self.on_call, self.tally = on_call, tally
        self.pending: list = []

    def pre(self, module: nn.Module, args: tuple):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            self.pending.append(None)
            return None
        own = x.clone() if getattr(module, "inplace", False) else x.view_as(x)
        call = None
        if torch.is_grad_enabled() and own.requires_grad:
            call = _Call()
            own.register_hook(call.replace_grad_in)
        self.pending.append((x, call))
        return (own, *args[1:])

    def post(self, module: nn.Module, args: tuple, out) -> None:
        entry = self.pending.pop()
        if entry is None or not isinstance(out, torch.Tensor):
            return
        x, call = entry
        rule = self.on_call(module, x.detach(), out.detach())
        self.tally[type(module).__name__] += 1
        if call is not None and rule is not None and out.requires_grad:
            call.rule = rule
            out.register_hook(call.keep_grad_out)


@contextmanager
def modified_backward(
    network: nn.Module,
    choose: Callable[[nn.Module], bool],
    on_call: OnCall,
) -> Iterator[Counter]:
    """Hook every module of `network` that `choose` accepts, for the duration of the block.

    Args:
        network: the torch network.
        choose: which modules get a modified backward pass.
        on_call: see :data:`OnCall`.

    Yields:
        A counter of hooked forward calls per module type name, filled as the network runs.
    """
    tally: Counter = Counter()
    handles = []
    in_place = []
    try:
        for module in network.modules():
            if choose(module):
                if getattr(module, "inplace", False) is True and type(module).__module__.startswith("torch.nn."):
                    # a torch activation runs out of place for the block (same values): the rule reads the
                    # input as it was, which in place would be overwritten, so it was copied on every call
                    module.inplace = False
                    in_place.append(module)
                hooks = _ModuleHooks(on_call, tally)
                handles.append(module.register_forward_pre_hook(hooks.pre))
                handles.append(module.register_forward_hook(hooks.post))
        yield tally
    finally:
        for handle in handles:
            handle.remove()
        for module in in_place:
            module.inplace = True


@contextmanager
def cancel_points(network: nn.Module, check: Callable[[], None]) -> Iterator[None]:
    """Call `check` before every leaf module's forward and when its output's gradient arrives.

    One forward/backward pass over a batch of large volumes can take seconds; with these checks a
    cancel (``monitor.check`` raising ``Cancelled``) stops it within one layer. Autograd re-raises
    the exception from the tensor hook, and the graph is dropped with it.
    """

    def before(module: nn.Module, args: tuple) -> None:
        check()

    def after(module: nn.Module, args: tuple, out) -> None:
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda grad: check())

    handles = []
    try:
        for module in network.modules():
            # TorchScript modules refuse hooks (and would never run them)
            if not any(module.children()) and not isinstance(module, torch.jit.ScriptModule):
                handles.append(module.register_forward_pre_hook(before))
                handles.append(module.register_forward_hook(after))
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_hooked(
    tally: Counter, network: nn.Module, method: str, kinds: tuple[type, ...]
) -> Optional[str]:
    """What to do when no hooked module ran: the result would silently be the plain gradient.

    Returns:
        None when some hooked module ran; otherwise a warning for a network without activation
        modules (linear, or activations called as functions).

    Raises:
        ModelError: the network is a TorchScript or ``torch.export`` graph, whose layers never run
            Python hooks, with what to do instead.
    """
    if sum(tally.values()):
        return None
    names = ", ".join(sorted({k.__name__ for k in kinds}))
    if any(isinstance(m, (torch.jit.ScriptModule, torch.fx.GraphModule)) for m in network.modules()):
        raise ModelError(
            f"{method} changes the backward pass of activation modules ({names}), and the layers of "
            "TorchScript and torch.export models cannot be hooked. Load the network as a state dict "
            "with its MONAI definition, or choose another method."
        )
    return (
        f"no activation module ({names}) ran in this network, so {method} equals the ordinary "
        "gradient computation here; activations called as functions cannot be hooked"
    )


# ------------------------------------------------------------------------------------------------
# Guided backpropagation

GUIDED_EXACT = (nn.ReLU, nn.ReLU6)
"""Rectifiers whose guided rule is Captum's: the ordinary gradient clamped at 0."""

GUIDED_LEAKY = (nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish)
"""Leaky or smooth rectifiers (MONAI's default PReLU among them), treated as a ReLU: the output
gradient clamped at 0 and gated by input > 0, so their negative-side slope passes nothing back."""


def is_guided_module(module: nn.Module) -> bool:
    return isinstance(module, GUIDED_EXACT + GUIDED_LEAKY)


def guided_rule(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> BackwardRule:
    """Guided backpropagation (Springenberg et al. 2015): only positive signal, only where x > 0."""
    if isinstance(module, GUIDED_EXACT):
        return lambda grad_in, grad_out: grad_in.clamp(min=0)
    gate = x > 0
    return lambda grad_in, grad_out: grad_out.clamp(min=0).mul_(gate)  # in place on its own new tensor


# ------------------------------------------------------------------------------------------------
# DeepLIFT, Rescale rule

RESCALE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
    nn.LogSigmoid, nn.Softsign,
)
"""Element-wise nonlinearities: multiplier (y - y0) / (x - x0) per unit."""

MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
"""Max pooling: Captum's rule, with contributions accumulated over overlapping windows."""

NO_RULE_MODULES = (
    nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.MultiheadAttention,
)
"""Nonlinear modules without a DeepLIFT rule: they pass their local gradient, as in Captum (whose
DeepLift treats every module outside its list as linear), so summation-to-delta holds only
approximately. Instance, group and layer norms are nonlinear because their statistics depend on the
input; batch norm in eval mode is affine and needs no rule."""


def modules_without_rule(network: nn.Module) -> list[str]:
    """Type names of the nonlinear modules in `network` that DeepLIFT passes by their local gradient."""
    return sorted({type(m).__name__ for m in network.modules() if isinstance(m, NO_RULE_MODULES)})


class DeepLiftRecorder:
    """DeepLIFT's Rescale rule (Shrikumar et al. 2017) from two passes: the baseline's, then the input's.

    The baseline pass (without gradients) keeps every hooked call's input and output, in call order
    per module; in the input pass call k of a module is paired with the baseline's call k. Two passes,
    rather than one batch [input, baseline] as in Captum, keep the pairing right under sliding-window
    inference (which mixes windows of several batch items in one network call) and for modules
    called more than once. The price is one copy of the hooked activations of the baseline.

    Args:
        eps: below this |x - x0| a unit passes its local gradient instead of the difference quotient.
    """

    def __init__(self, eps: float):
        self.eps = eps
        self.recording = True
        self._reference: dict[nn.Module, list] = defaultdict(list)
        self._cursor: Counter = Counter()

    @staticmethod
    def choose(module: nn.Module) -> bool:
        if isinstance(module, MAXPOOL_MODULES):
            return not module.return_indices
        return isinstance(module, RESCALE_MODULES)

    def start_input_pass(self) -> None:
        self.recording = False

    def on_call(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Optional[BackwardRule]:
        if self.recording:
            # copies: later in-place operations (y += skip) must not change the reference values
            indices = _pool_indices(module, x) if isinstance(module, MAXPOOL_MODULES) else None
            self._reference[module].append((x.clone(), y.clone(), indices))
            return None
        calls = self._reference[module]
        k = self._cursor[module]
        self._cursor[module] += 1
        if k >= len(calls) or calls[k][0].shape != x.shape:
            raise ModelError(
                f"DeepLIFT pairs each {type(module).__name__} call on the input with the same call on "
                "the baseline, but the network ran differently on the two; its control flow depends "
                "on the input, which DeepLIFT cannot handle"
            )
        x0, y0, indices0 = calls[k]
        calls[k] = None  # free the reference as soon as it is paired
        if isinstance(module, MAXPOOL_MODULES):
            return self._maxpool(module, x, y, x0, y0, indices0)
        return self._rescale(x, y, x0, y0)

    def _rescale(self, x, y, x0, y0) -> BackwardRule:
        dx = x - x0
        use_quotient = dx.abs() > self.eps
        multiplier = (y - y0) / torch.where(use_quotient, dx, torch.ones_like(dx))
        return lambda grad_in, grad_out: torch.where(use_quotient, grad_out * multiplier, grad_in)

    def _maxpool(self, module, x, y, x0, y0, indices0) -> BackwardRule:
        """Captum's max-pool rule: with m = max(y, y0), the change y - y0 = (m - y0) + (y - m) is
        routed to the input's argmax and the baseline's argmax, then divided by x - x0.

        Captum routes with ``max_unpool``, which assigns: where windows overlap (DenseNet's 3/2
        pool) one input wins several windows and all but one contribution is lost. Here they are
        summed, so summation-to-delta holds; the output gradient of the input pass serves both terms.
        """
        indices = _pool_indices(module, x)
        dx = x - x0
        use_quotient = dx.abs() > self.eps
        divisor = torch.where(use_quotient, dx, torch.ones_like(dx))
        top = torch.maximum(y, y0)

        def rule(grad_in: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
            routed = _route(grad_out * (top - y0), indices, x.shape)
            routed = routed + _route(grad_out * (y - top), indices0, x.shape)
            return torch.where(use_quotient, routed / divisor, grad_in)

        return rule


def _pool_indices(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Argmax of every window, as flat indices into each channel's spatial grid."""
    pool = getattr(F, f"max_pool{x.ndim - 2}d")
    with torch.no_grad():
        _, indices = pool(x, module.kernel_size, module.stride, module.padding, module.dilation,
                          ceil_mode=module.ceil_mode, return_indices=True)
    return indices


def _route(values: torch.Tensor, indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Add each pooled value to its argmax position (accumulating over overlapping windows)."""
    out = values.new_zeros(*shape[:2], math.prod(shape[2:]))
    return out.scatter_add_(2, indices.flatten(2), values.flatten(2)).view(shape)
