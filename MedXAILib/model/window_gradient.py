"""Exact gradients through sliding-window inference, one batch of windows at a time.

The blended output on the network grid is ``y(v) = sum_w m_w(v) f(x_w)(v) / N(v)`` with
``N(v) = sum_w m_w(v)`` (see :mod:`.windows`); ``N`` does not depend on the input. For a target
score ``S(y)`` the chain rule therefore splits over the windows:

    dS/dx = sum_w J_w^T (g * m_w / N)|_w,    g = dS/dy,

with ``J_w`` the Jacobian of the network on window ``w``. :func:`window_backward`

1. gets ``g``: for a score linear in the output (a logit summed or averaged over a region) ``g`` is
   a constant, the region (over its voxel count) in the target channel, and no pass is needed;
   otherwise from the blended output of a no-grad windowed pass (or the output the caller already
   has). Only the output channels where ``g`` is not zero are kept on the volume;
2. pulls ``g`` back through the inverse spatial preprocessing (linear, so its vector-Jacobian
   product does not depend on the output) onto the network grid;
3. for each batch of windows recomputes the network with autograd and backpropagates the
   vector-Jacobian product with ``grad_outputs = (g m_w / N)`` cut to the window, adding the result
   into ``dS/dz`` on the network grid; only one batch of windows holds a graph at any time;
4. backpropagates ``dS/dz`` once through the (differentiable) preprocessing to the input.

The result equals autograd through MONAI's ``sliding_window_inference`` with the whole graph held,
up to float rounding. An :class:`~.windows.Ensemble` network (folds, test-time mirrorings) is
differentiated member by member within each batch of windows (its output is their weighted mean, so
its vector-Jacobian product is the weighted sum of theirs): one member's graph is held at a time.
Layer activations can be tapped per window (for CAMs): their gradients
``dS/dA_w`` come from the same vector-Jacobian products. The windows' outputs, blended as MONAI
does, are the model output itself: with ``keep_output`` they are returned too, so a caller that needs
both the output and the gradient runs the windows once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .layout import fast_convolutions, to_channels_last
from .windows import WindowPlan, gradient_members, network_output, windowed_forward

__all__ = ["WindowGradient", "window_backward", "window_backward_many", "score_is_linear",
           "linear_output_gradient", "window_weights"]

Progress = Callable[[int, int], None]
OnBatch = Callable[[Sequence[int], list, list], None]


@dataclass
class WindowGradient:
    """What :func:`window_backward` returns.

    Attributes:
        grad: dS/dx, shaped like the input (``None`` when not asked for).
        scores: S per batch item, (B,).
        output: the model output on the input grid (the blended windows), when it was asked for
            with ``keep_output`` or computed anyway (scores that are not linear); else ``None``.
    """

    grad: Optional[torch.Tensor]
    scores: torch.Tensor
    output: Optional[torch.Tensor] = None


def score_is_linear(scorer: Any) -> bool:
    """Whether the target score is linear in the model output (a logit over a region, no bias)."""
    target = getattr(scorer, "target", None)
    return getattr(scorer, "task", None) == "segmentation" and getattr(target, "score", None) == "logit"


def _output_gradient(scorer, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dS/dy, S) of every batch item at the output `y` on the input grid."""
    y = y.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = scorer(y)
        (g,) = torch.autograd.grad(scores.sum(), y)
    return g, scores.detach()


def linear_output_gradient(scorer, batch: int, channels: int, shape: Sequence[int], dtype: torch.dtype,
                            device: torch.device) -> tuple[list[int], torch.Tensor]:
    """(channels, dS/dy on them) of a linear score: the region (over its voxels for a mean) in one channel.

    A :class:`~MedXAILib.scoring.TargetScorer` with a logit score is ``sum_v y_c(v) r(v)`` (divided
    by the region's voxel count for ``reduction="mean"``), so ``dS/dy`` is ``r`` (or ``r / n``) in
    channel ``c`` and zero elsewhere. Other scorers: autograd at a zero output, all channels.
    """
    region = getattr(scorer, "region", None)
    index = getattr(scorer, "class_index", None)
    if region is None or index is None or tuple(region.shape) != tuple(shape):
        g, _ = _output_gradient(scorer, torch.zeros((batch, channels, *shape), dtype=dtype, device=device))
        return list(range(channels)), g
    g = region.to(device=device, dtype=dtype)
    if getattr(scorer.target, "reduction", "sum") == "mean":
        g = g / scorer.region_voxels
    return [int(index)], g.reshape(1, 1, *shape)  # the same for every batch item


def _used_channels(g: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """The output channels where dS/dy is not zero anywhere, and dS/dy on them."""
    used = [k for k in range(g.shape[1]) if bool(g[:, k].any())] or [0]
    return used, (g if len(used) == g.shape[1] else g[:, used])


def _network_grid(bound: Any, x: torch.Tensor, input_grad: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, WindowPlan, int, int, int]:
    """What a windowed backward pass starts from: the input leaf (with autograd through the preprocessing
    when an input gradient is wanted), the network input z and its padded copy, the window plan, windows
    per call, the batch size and the number of (item, window) jobs."""
    pre = bound.adapter.preprocessing
    x = x.detach()
    x_leaf = x.requires_grad_(True) if (input_grad and pre.steps) else x
    with torch.enable_grad() if x_leaf.requires_grad else torch.no_grad():
        z = pre.apply(x_leaf, bound.grids) if pre.steps else x_leaf
    plan: WindowPlan = bound.plan()
    batch = int(x.shape[0])
    return x_leaf, z, plan.pad_input(z.detach()), plan, bound.windows_per_call(), batch, batch * plan.n_windows


def window_backward(
    bound: Any,
    x: torch.Tensor,
    scorer: Optional[Callable[[torch.Tensor], torch.Tensor]],
    *,
    output: Optional[torch.Tensor] = None,
    input_grad: bool = True,
    keep_output: bool = False,
    taps: Optional[Callable[[], list]] = None,
    on_batch: Optional[OnBatch] = None,
    progress: Optional[Progress] = None,
    resolve: Optional[Callable[[torch.Tensor], Any]] = None,
) -> WindowGradient:
    """dS/dx of ``S = scorer(bound(x))`` for a sliding-window segmenter, window batch by batch.

    Args:
        bound: a :class:`~MedXAILib.model.adapter.BoundModel` whose adapter has a ``roi_size``.
        x: (B, C, I, J, K) input on the input grid.
        scorer: output (B, K, I, J, K) -> score (B,).
        output: ``bound(x)`` when the caller already has it (saves the no-grad pass).
        input_grad: compute dS/dx (off when only the taps' gradients are wanted).
        keep_output: also return ``bound(x)``, blended from the windows this pass runs anyway.
        taps: called after each network call; returns the tensors (recorded by hooks, requiring
            grad) whose gradients are wanted, in the order the batch's windows ran.
        on_batch: ``on_batch(jobs, tapped, tap_grads)`` after each batch's backward pass.
        progress: ``progress(done, total)`` in windows, after each batch.
        resolve: with ``scorer=None``: ``resolve(output) -> scorer`` fixes the score from the blended
            output of `x` (one item) before any backward pass; every window must then run in one network
            call, whose output serves both (a region read off the output costs no pass of its own).
    """
    adapter = bound.adapter
    pre, grids = adapter.preprocessing, bound.grids
    x_leaf, z, zp, plan, per_call, batch, n_jobs = _network_grid(bound, x, input_grad)
    if scorer is None and (resolve is None or n_jobs > per_call):
        raise ValueError("window_backward without a scorer needs resolve and every window in one network call")
    linear = score_is_linear(scorer)

    scores: Optional[torch.Tensor] = None
    h: Optional[torch.Tensor] = None  # (dS/dy on the padded network grid) / N, on the channels used
    channels: list[int] = []
    if not linear and scorer is not None:
        if output is None:
            with torch.no_grad():
                net = windowed_forward(adapter.network, z.detach(), plan, per_call, adapter.mixed_precision)
                output = pre.invert_output(net, grids)
                del net
        g, scores = _output_gradient(scorer, output)
        channels, g = _used_channels(g)
        h = window_weights(bound, plan, g)
        del g
    blended = None  # the blended output on the padded network grid, when it is to be returned
    importance = plan.importance

    grad_zp = torch.zeros_like(zp) if input_grad else None
    linear_scores = torch.zeros(batch, dtype=torch.float64, device=x.device)
    # an ensemble (folds, mirrorings) is differentiated member by member: one member's graph at a time
    members = gradient_members(adapter.network) if (taps is None and scorer is not None) else None
    with fast_convolutions(adapter.network):  # same values, faster convolutions (see .layout)
        for start in range(0, n_jobs, per_call):
            jobs = list(range(start, min(start + per_call, n_jobs)))
            window_in = to_channels_last(plan.take(zp, jobs))
            if input_grad:
                window_in = window_in.detach().requires_grad_(True)
            with torch.enable_grad():
                out = network_output(members[0][0] if members else adapter.network, window_in,
                                     adapter.mixed_precision)
                if scorer is None:  # every window ran in this call: its blend is the output that fixes the score
                    whole = torch.zeros((batch, out.shape[1], *zp.shape[2:]), dtype=out.dtype, device=out.device)
                    plan.add(whole, jobs, out.detach() * importance.to(out.dtype))
                    output = pre.invert_output(plan.unpad(whole.div_(plan.count.to(whole.dtype))), grids)
                    del whole
                    scorer = resolve(output)
                    linear = score_is_linear(scorer)
                    if not linear:
                        g, scores = _output_gradient(scorer, output)
                        channels, g = _used_channels(g)
                        h = window_weights(bound, plan, g)
                        del g
                if h is None:  # linear score: dS/dy is a constant, found once the channel count is known
                    channels, g = linear_output_gradient(scorer, batch, out.shape[1], grids[0].shape,
                                                          out.dtype, out.device)
                    h = window_weights(bound, plan, g)
                    del g
                weights = _take(plan, h, jobs) * importance.to(h.dtype)
                if len(channels) == out.shape[1]:
                    grad_out = weights.to(out.dtype)
                else:
                    grad_out = torch.zeros_like(out)
                    grad_out[:, channels] = weights.to(out.dtype)
                tapped = taps() if taps is not None else []
                wrt = ([window_in] if input_grad else []) + list(tapped)
                if members:
                    found, out = _member_products(members, out, window_in, grad_out, input_grad,
                                                  adapter.mixed_precision)
                else:
                    found = torch.autograd.grad(out, wrt, grad_outputs=grad_out, allow_unused=True) if wrt else []
            if linear:
                per_job = (out.detach()[:, channels].double() * weights.double()).flatten(1).sum(1)
                for row, job in enumerate(jobs):
                    linear_scores[plan.window(job)[0]] += per_job[row]
            if keep_output and output is None:
                if blended is None:
                    blended = torch.zeros((batch, out.shape[1], *zp.shape[2:]), dtype=out.dtype,
                                          device=out.device)
                plan.add(blended, jobs, out.detach() * importance.to(out.dtype))
            if input_grad:
                plan.add(grad_zp, jobs, found[0])
                found = found[1:]
            if on_batch is not None:
                tap_grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tapped, found)]
                on_batch(jobs, [t.detach() for t in tapped], tap_grads)
            del out, found, tapped, grad_out, weights
            if progress is not None:
                progress(jobs[-1] + 1, n_jobs)
    del h
    if linear:
        scores = linear_scores.to(x.dtype)
    if blended is not None:
        output = pre.invert_output(plan.unpad(blended.div_(plan.count.to(blended.dtype))), grids)
    grad = None
    if input_grad:
        grad_z = plan.unpad_grad(grad_zp)
        if pre.steps:
            (grad,) = torch.autograd.grad(z, x_leaf, grad_outputs=grad_z)
        else:
            grad = grad_z
    assert scores is not None
    return WindowGradient(grad=grad, scores=scores, output=output if (keep_output or not linear) else None)


def _member_products(members: list, first: torch.Tensor, window_in: torch.Tensor, grad_out: torch.Tensor,
                     input_grad: bool, mixed_precision: bool) -> tuple[list, torch.Tensor]:
    """The weighted sum of the members' vector-Jacobian products and of their outputs on one batch of
    windows; `first` is the first member's output, already computed (with its graph)."""
    grad = None
    total = None
    for index, (member, weight) in enumerate(members):
        out = first if index == 0 else network_output(member, window_in, mixed_precision)
        if input_grad:
            (part,) = torch.autograd.grad(out, [window_in], grad_outputs=grad_out * weight)
            grad = part if grad is None else grad + part
        total = out.detach() * weight if total is None else total + out.detach() * weight
        del out
    assert total is not None
    return ([grad] if input_grad else []), total


def _take(plan: WindowPlan, h: torch.Tensor, jobs: Sequence[int]) -> torch.Tensor:
    """The windows of `jobs` cut from the weights `h`; one weight volume serves every batch item."""
    return plan.take(h, [job % plan.n_windows for job in jobs] if h.shape[0] == 1 else jobs)


def window_weights(bound: Any, plan: WindowPlan, g: torch.Tensor) -> torch.Tensor:
    """dS/dy on the input grid -> (dS/dy on the network grid) / N, zero-padded like the windows."""
    pre, grids = bound.adapter.preprocessing, bound.grids
    if any(step.spatial for step in pre.steps):  # the inverse mapping is linear: VJP at any point
        net = torch.zeros((g.shape[0], g.shape[1], *plan.shape), dtype=g.dtype, device=g.device,
                          requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(pre.invert_output(net, grids), net, grad_outputs=g)
    g = plan.pad_zeros(g)
    return g / plan.count.to(g.dtype)


def window_backward_many(
    bound: Any,
    x: torch.Tensor,
    scorers: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    *,
    output: Optional[torch.Tensor] = None,
    progress: Optional[Progress] = None,
) -> list[WindowGradient]:
    """dS_k/dx for several target scores at once: each batch of windows runs forward once.

    The K scores (e.g. the structures of one segmentation) share every window's forward pass: the
    window's graph is kept while K vector-Jacobian products run from it, each with its own
    ``grad_outputs = (g_k m_w / N)`` (see the module docstring). A score's gradient equals what
    :func:`window_backward` gives for it alone, up to float rounding; the cost is one forward and K
    backward passes per window instead of K of each.

    Args:
        bound: a :class:`~MedXAILib.model.adapter.BoundModel` whose adapter has a ``roi_size``.
        x: (B, C, I, J, K) input on the input grid.
        scorers: K callables output (B, K, I, J, K) -> score (B,).
        output: ``bound(x)`` when the caller has it (saves the no-grad pass that scores which are not
            linear in the output need).
        progress: ``progress(done, total)`` in windows, after each batch.

    Returns:
        One :class:`WindowGradient` per scorer, in order (``output`` is not kept).
    """
    adapter = bound.adapter
    pre, grids = adapter.preprocessing, bound.grids
    scorers = list(scorers)
    x_leaf, z, zp, plan, per_call, batch, n_jobs = _network_grid(bound, x, input_grad=True)
    linear = [score_is_linear(scorer) for scorer in scorers]
    scores: list[Optional[torch.Tensor]] = [None] * len(scorers)
    if not all(linear) and output is None:
        with torch.no_grad():
            net = windowed_forward(adapter.network, z.detach(), plan, per_call, adapter.mixed_precision)
            output = pre.invert_output(net, grids)
            del net
    # dS_k/dy of every score on the channels it uses, pulled back onto the padded network grid in one
    # call (the inverse spatial mapping is one resampling for all of them), then split again
    channels_of: list[list[int]] = []
    gs: list[torch.Tensor] = []
    n_out = bound.output_channels()
    for k, scorer in enumerate(scorers):
        if linear[k]:
            channels, g = linear_output_gradient(scorer, batch, n_out, grids[0].shape, x.dtype, x.device)
        else:
            g, scores[k] = _output_gradient(scorer, output)
            channels, g = _used_channels(g)
        channels_of.append(channels)
        gs.append(g)
    rows = max(g.shape[0] for g in gs)
    stacked = window_weights(bound, plan, torch.cat([g.expand(rows, *g.shape[1:]) for g in gs], dim=1))
    del gs
    weights_of = list(torch.split(stacked, [len(c) for c in channels_of], dim=1))
    grads_zp = [torch.zeros_like(zp) for _ in scorers]
    linear_scores = [torch.zeros(batch, dtype=torch.float64, device=x.device) for _ in scorers]
    importance = plan.importance
    with fast_convolutions(adapter.network):
        for start in range(0, n_jobs, per_call):
            jobs = list(range(start, min(start + per_call, n_jobs)))
            window_in = to_channels_last(plan.take(zp, jobs)).detach().requires_grad_(True)
            with torch.enable_grad():
                out = network_output(adapter.network, window_in, adapter.mixed_precision)
                for k in range(len(scorers)):
                    weights = _take(plan, weights_of[k], jobs) * importance.to(weights_of[k].dtype)
                    if len(channels_of[k]) == out.shape[1]:
                        grad_out = weights.to(out.dtype)
                    else:
                        grad_out = torch.zeros_like(out)
                        grad_out[:, channels_of[k]] = weights.to(out.dtype)
                    (found,) = torch.autograd.grad(out, window_in, grad_outputs=grad_out,
                                                   retain_graph=k < len(scorers) - 1)
                    plan.add(grads_zp[k], jobs, found)
                    if linear[k]:
                        per_job = (out.detach()[:, channels_of[k]].double() * weights.double()).flatten(1).sum(1)
                        for row, job in enumerate(jobs):
                            linear_scores[k][plan.window(job)[0]] += per_job[row]
                    del found, grad_out, weights
            del out, window_in
            if progress is not None:
                progress(jobs[-1] + 1, n_jobs)
    results = []
    for k in range(len(scorers)):
        grad = plan.unpad_grad(grads_zp[k])
        if pre.steps:
            (grad,) = torch.autograd.grad(z, x_leaf, grad_outputs=grad, retain_graph=k < len(scorers) - 1)
        score = linear_scores[k].to(x.dtype) if linear[k] else scores[k]
        assert score is not None
        results.append(WindowGradient(grad=grad, scores=score))
    return results
