"""Layer-wise relevance propagation (LRP) for 2D/3D networks, in the modified-gradient form.

LRP (Bach et al., PLoS ONE 10(7):e0130140, 2015) redistributes the target score backwards, layer by
layer, so that every layer's relevance sums (approximately) to the score. The rules follow Montavon,
Binder, Lapuschkin, Samek and Mueller, "Layer-Wise Relevance Propagation: An Overview" (Explainable
AI, LNCS 11700, 2019). For a layer ``z_k = sum_j a_j w_jk + b_k`` with output relevance ``R_k``:

- LRP-epsilon: ``R_j = a_j sum_k w_jk R_k / (z_k + eps sign(z_k))``. By default ``eps`` is
  ``epsilon`` times the root-mean-square of the layer's ``z`` (the scaling of Montavon's LRP
  tutorial), so one value suits CT in HU and z-scored MRI alike;
- LRP-alpha-beta: ``R_j = sum_k (alpha z+_jk / z+_k - beta z-_jk / z-_k) R_k`` where ``z+_jk`` and
  ``z-_jk`` are the positive and negative parts of ``a_j w_jk`` (biases ignored) and
  ``beta = alpha - 1``; ``z_plus`` is alpha 1, beta 0;
- ``epsilon_plus``: z+ for convolutions and epsilon for dense layers (the composite of Kohlbrenner
  et al., "Towards best practice in explaining neural network decisions with LRP", IJCNN 2020).

Implementation: every tensor's relevance is ``activation * (modified gradient)``. Since
``R_k = z_k g_k``, each rule only changes the backward pass of its layer, and the input relevance is
``x * d(score)/dx`` with those backward passes. Forward hooks return a tensor whose *value* is the
layer's true output but whose *gradient* follows the rule, so the network's outputs never change and
its modules and weights are never touched; the hooks are removed in a ``finally`` block.

Per module type:

- Conv1/2/3d, ConvTranspose1/2/3d, Linear: the chosen rule.
- ReLU, LeakyReLU, PReLU: ordinary gradient. They are positively homogeneous, ``f(z) = z f'(z)``, so
  the gradient already passes relevance through unchanged, as LRP prescribes for activations.
- Other elementwise activations (ELU, GELU, SiLU/Swish, Mish, Tanh, ...): relevance passes through
  unchanged (gradient ``f(z)/z``).
- Normalisation (BatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm): LRP-0 on the layer made
  linear by holding its standard deviation fixed (the conservative LayerNorm treatment of Ali et al.,
  "XAI for Transformers", ICML 2022). The mean subtraction stays in the graph: it is linear and
  bias-free, so it conserves relevance. BatchNorm in eval is affine already; LRP-0 on it equals
  canonising it into the preceding convolution (Anders et al., arXiv:2106.13200, 2021).
- Average/max pooling, upsampling, dropout, padding, residual additions, skip concatenations:
  ordinary gradient. For these bias-free linear maps that is LRP-0; for max pooling it is
  winner-takes-all. So relevance is conserved across residual and skip connections.

Anything else is crossed by the ordinary gradient and named in a warning. Conservation,
``|sum R - score|``, is recorded in the diagnostics: biases, normalisation offsets and epsilon
absorb relevance, and bias-free networks conserve it up to the stabiliser under LRP-epsilon.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..model.layout import fast_convolutions, to_channels_last
from .catalog.propagation import LRPParams
from .context import MethodContext

__all__ = ["lrp", "lrp_hooks", "AMPLIFICATION_WARNING"]

#: A relevance sum this many times the score (or of the other sign) carries a warning.
AMPLIFICATION_WARNING = 1.5

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
          nn.LayerNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.PReLU)
_PASS_THROUGH = (nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Hardswish, nn.Hardtanh,
                 nn.Softsign)
_PASS_THROUGH_NAMES = {"Swish", "MemoryEfficientSwish", "Mish"}  # MONAI's own activations
_LINEAR_NO_BIAS = (
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd, nn.Upsample, nn.modules.dropout._DropoutNd, nn.Identity,
    nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
)

Hook = Callable[[nn.Module, tuple, torch.Tensor], Optional[torch.Tensor]]


class _Reroute(torch.autograd.Function):
    """``value`` in the forward pass, the gradient of ``surrogate`` in the backward pass."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
        return value.clone()  # a fresh tensor, so in-place activations (ReLU(inplace=True)) may follow

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad


def _tiny(t: torch.Tensor) -> float:
    # Captum's stabiliser, raised for half precision where 1e-9 underflows.
    return max(1e-9, torch.finfo(t.dtype).eps ** 2)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, and 0 where ``den`` is (numerically) 0."""
    tiny = _tiny(den)
    safe = torch.where(den.abs() > tiny, den, torch.full_like(den, tiny))
    return torch.where(den.abs() > tiny, num / safe, torch.zeros_like(num))


def _bias_free(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, out_shape) -> torch.Tensor:
    """The module's linear map with another weight and no bias (for the alpha-beta splits)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    if not module.transposed:
        return module._conv_forward(x, weight, None)
    n = x.dim() - 2
    # Transposed convolutions can be ambiguous in size; read output_padding off the real output.
    natural = [(x.shape[2 + i] - 1) * module.stride[i] - 2 * module.padding[i]
               + module.dilation[i] * (module.kernel_size[i] - 1) + 1 for i in range(n)]
    extra = tuple(int(out_shape[2 + i]) - natural[i] for i in range(n))
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    return conv(x, weight, None, module.stride, module.padding, extra, module.groups, module.dilation)


def _epsilon_hook(epsilon: float, relative: bool) -> Hook:
    def hook(module, inputs, z):
        eps = epsilon
        if relative:  # per sample: eps * root-mean-square of the pre-activations
            eps = epsilon * z.detach().pow(2).flatten(1).mean(1).sqrt().view(-1, *[1] * (z.dim() - 1))
        eps = eps + _tiny(z)
        sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        # g -> g * z / (z + eps sign z): with R_k = z_k g_k this is R_k / (z_k + eps sign z_k).
        factor = (z / (z + eps * sign)).detach()
        return _Reroute.apply(z, z * factor)

    return hook


def _alpha_beta_hook(alpha: float) -> Hook:
    beta = alpha - 1.0

    def hook(module, inputs, z):
        x, w = inputs[0], module.weight
        xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
        # Positive contributions a_j w_jk > 0 come from (a+, w+) and (a-, w-); negative ones from the
        # mixed pairs. Splitting the input too keeps the rule right where activations are negative
        # (the image itself, PReLU/LeakyReLU outputs).
        zp = _bias_free(module, xp, wp, z.shape) + _bias_free(module, xn, wn, z.shape)
        # z+ >= 0 and z- <= 0: the stabiliser moves each away from 0, so an empty sum drops its share.
        surrogate = alpha * zp * (z / (zp + _tiny(z))).detach()
        if beta:
            zn = _bias_free(module, xp, wn, z.shape) + _bias_free(module, xn, wp, z.shape)
            surrogate = surrogate - beta * zn * (z / (zn - _tiny(z))).detach()
        return _Reroute.apply(z, surrogate)

    return hook


def _norm_linearised(module: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The layer's output with the standard deviation detached (None when it is already affine)."""
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        if not module.training and module.running_var is not None:
            return None  # running statistics: y = s x + t is affine already
    shape = x.shape
    if isinstance(module, nn.LayerNorm) or type(module).__name__ == "RMSNorm":
        dims = tuple(range(-len(module.normalized_shape), 0))
        centre, xs = isinstance(module, nn.LayerNorm), x
        affine_shape = tuple(module.normalized_shape)
    else:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):  # batch statistics
            xs, dims = x.transpose(0, 1).reshape(1, x.shape[1], -1), (-1,)
        else:
            groups = module.num_groups if isinstance(module, nn.GroupNorm) else x.shape[1]
            xs, dims = x.reshape(x.shape[0], groups, -1), (-1,)
        centre, affine_shape = True, (1, x.shape[1]) + (1,) * (x.dim() - 2)
    if centre:
        xs = xs - xs.mean(dims, keepdim=True)  # linear and bias-free: keeps relevance
    var = xs.detach().pow(2).mean(dims, keepdim=True)
    eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
    y = xs / (var + eps).sqrt()
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        y = y.reshape(x.shape[1], x.shape[0], *shape[2:]).transpose(0, 1)
    y = y.reshape(shape)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is not None:
        y = y * weight.reshape(affine_shape)
    if bias is not None:
        y = y + bias.reshape(affine_shape)
    return y


def _norm_hook(module, inputs, y):
    linear = _norm_linearised(module, inputs[0])
    return None if linear is None else _Reroute.apply(y, linear)


def _pass_through_hook(module, inputs, y):
    x = inputs[0]
    # Relevance passes an activation unchanged: g_x = g_y f(x) / x, so x g_x = y g_y.
    return _Reroute.apply(y, x * _ratio(y, x).detach())


def lrp_hooks(network: nn.Module, params: LRPParams) -> tuple[list[tuple[nn.Module, Hook, str]], list[str]]:
    """Which forward hook each layer gets, as ``(module, hook, kind)``, and the unsupported layer types.

    Raises:
        ModelError: the network hides its layers (TorchScript), so no rule can be attached.
    """
    if isinstance(network, torch.jit.ScriptModule):
        raise ModelError(
            "LRP needs the network's layers, which a TorchScript model hides; load the weights into "
            "their MONAI/PyTorch network definition (state dict + network), or use input_x_gradient"
        )
    alpha = 1.0 if params.rule in ("z_plus", "epsilon_plus") else params.alpha
    epsilon = _epsilon_hook(params.epsilon, params.epsilon_relative)
    alpha_beta = _alpha_beta_hook(alpha)
    plan, unsupported = [], set()
    for module in network.modules():
        leaf = next(module.children(), None) is None
        if isinstance(module, _WEIGHTED):
            dense = isinstance(module, nn.Linear)
            if params.rule == "epsilon" or (params.rule == "epsilon_plus" and dense):
                plan.append((module, epsilon, "epsilon"))
            else:
                plan.append((module, alpha_beta, "alpha_beta"))
        elif isinstance(module, _NORMS):
            plan.append((module, _norm_hook, "normalisation"))
        elif isinstance(module, _PASS_THROUGH) or (leaf and type(module).__name__ in _PASS_THROUGH_NAMES):
            plan.append((module, _pass_through_hook, "pass_through"))
        elif isinstance(module, _HOMOGENEOUS + _LINEAR_NO_BIAS):
            continue
        elif leaf or next(module.parameters(recurse=False), None) is not None:
            unsupported.add(type(module).__name__)
    return plan, sorted(unsupported)


def lrp(ctx: MethodContext, params: LRPParams) -> torch.Tensor:
    """Layer-wise relevance propagation (Bach et al. 2015; rules per Montavon et al. 2019).

    Returns ``x * (modified gradient)``: the relevance of every input voxel and channel. The
    diagnostics record the rule, how many layers each treatment covered, the target score, the
    relevance sum and the conservation error (absolute and relative to the score).
    """
    ctx.monitor.update(0.0, f"LRP ({params.rule}): attaching the propagation rules")
    plan, unsupported = lrp_hooks(ctx.network, params)
    fired = [0]

    def counting(hook: Hook) -> Hook:
        def wrapped(module, inputs, output):
            fired[0] += 1
            return hook(module, inputs, output)

        return wrapped

    handles = []
    try:
        for module, hook, _ in plan:
            handles.append(module.register_forward_hook(counting(hook)))
        with torch.enable_grad(), fast_convolutions(ctx.network):  # same values, faster convolutions
            x = to_channels_last(ctx.x.detach()).requires_grad_(True)  # follows the network's layout
            score = ctx.score(x, input_row=0)  # the rules leave the forward values as they are
            if not fired[0]:
                raise ModelError(
                    "LRP found no layer it can propagate through (no Conv, Linear or normalisation module "
                    "ran); an exported or scripted model hides them: load its network definition instead"
                )
            ctx.monitor.update(0.5, f"LRP ({params.rule}): propagating relevance")
            (grad,) = torch.autograd.grad(score.sum(), x)
    finally:
        for handle in handles:
            handle.remove()
    relevance = (x.detach() * grad).contiguous()

    target = float(score.detach()[0])
    total = float(relevance[0].sum())
    error = abs(total - target)
    relative = error / abs(target) if target else (float("inf") if error else 0.0)
    counts = {kind: sum(1 for *_, k in plan if k == kind) for kind in sorted({k for *_, k in plan})}
    ctx.diagnostics.update(
        rule=params.rule, layers=counts, target_score=target, relevance_sum=total,
        conservation_error=error, conservation_relative_error=relative,
    )
    if unsupported:
        ctx.warn(f"LRP has no rule for {', '.join(unsupported)}; "
                 "relevance crosses them by the ordinary gradient")
    if getattr(ctx.target, "score", "logit") == "probability":
        ctx.warn("LRP explains logits: with a probability target the relevance does not sum to "
                 "the probability")
    elif total * target < 0 or abs(total) > AMPLIFICATION_WARNING * abs(target):
        # Absorption (sum below the score) is what epsilon and biases are for; amplification or a
        # sign flip means biases or beta > 0 dominate, which the reader should know.
        ctx.warn(
            f"the input relevance sums to {total:.4g} for a score of {target:.4g}: biases, normalisation "
            "offsets or beta > 0 dominate the propagation, so read the map as relative"
        )
    ctx.monitor.update(1.0, f"LRP ({params.rule}): done")
    return relevance
