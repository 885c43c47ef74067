"""Gradient-family attribution methods.

Saliency, input x gradient, integrated gradients, SmoothGrad / VarGrad, GradientSHAP (expected
gradients), guided backpropagation and DeepLIFT (Rescale). The last two change the backward pass of
activation modules; that machinery lives in :mod:`.modified_backprop`.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from ..model.layout import fast_convolutions, to_channels_last
from .catalog.gradient import (
    DeepLiftParams,
    GradientShapParams,
    GuidedBackpropParams,
    InputXGradientParams,
    IntegratedGradientsParams,
    SaliencyParams,
    SmoothGradParams,
)
from .context import MethodContext
from .modified_backprop import (
    GUIDED_EXACT,
    GUIDED_LEAKY,
    MAXPOOL_MODULES,
    RESCALE_MODULES,
    DeepLiftRecorder,
    cancel_points,
    check_hooked,
    guided_rule,
    is_guided_module,
    modified_backward,
    modules_without_rule,
)

#: Relative completeness error above which the result carries a warning.
COMPLETENESS_WARNING = 0.05

__all__ = [
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
    "gradient_shap",
    "guided_backprop",
    "deeplift",
    "quadrature",
    "make_baseline",
]


def saliency(ctx: MethodContext, params: SaliencyParams) -> torch.Tensor:
    """Gradient of the target with respect to the input (Simonyan et al. 2014, arXiv:1312.6034).

    The paper takes |gradient|; MedXAI keeps the sign unless ``absolute`` is set, because the sign
    says whether raising a voxel's intensity raises or lowers the score.
    """
    ctx.monitor.update(0.0, "Saliency: one forward and backward pass")
    grads, _ = ctx.gradient(ctx.x)
    ctx.monitor.update(1.0, "Saliency: done")
    return grads.abs() if params.absolute else grads


def input_x_gradient(ctx: MethodContext, params: InputXGradientParams) -> torch.Tensor:
    """Input times gradient (Shrikumar et al. 2016, arXiv:1605.01713)."""
    ctx.monitor.update(0.0, "Input x gradient: one forward and backward pass")
    grads, _ = ctx.gradient(ctx.x)
    ctx.monitor.update(1.0, "Input x gradient: done")
    return ctx.x.detach() * grads


def quadrature(n_steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alpha`` in [0, 1] and weights for integrating over the straight path.

    The Riemann rules and Gauss-Legendre follow the definitions Captum also uses, so results agree
    at equal settings.
    """
    n = n_steps
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1), 0.5 * weights
    if rule == "riemann_trapezoid":
        if n < 2:
            return np.array([1.0]), np.array([1.0])
        w = np.full(n, 1.0 / (n - 1))
        w[[0, -1]] *= 0.5
        return np.linspace(0, 1, n), w
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    alphas = (np.arange(n) + offsets[rule]) / n
    return alphas, np.full(n, 1.0 / n)


def make_baseline(ctx: MethodContext, kind: str, blur_sigma_mm: float = 8.0) -> torch.Tensor:
    """Reference input for path methods, on the input's device and grid.

    ``zeros``; ``min``: each channel's minimum (e.g. air in CT); ``blur``: Gaussian blur with a
    width in mm, converted per axis with the true voxel spacing; ``noise``: uniform noise in each
    channel's [min, max], drawn from the seeded generator.
    """
    x = ctx.x.detach()
    lo = x.amin(dim=(2, 3, 4), keepdim=True)
    if kind == "zeros":
        return torch.zeros_like(x)
    if kind == "min":
        return lo.expand_as(x).clone()
    if kind == "blur":
        from scipy import ndimage

        sigma = [0.0] + list(blur_sigma_mm / ctx.spacing)
        blurred = ndimage.gaussian_filter(x[0].cpu().numpy(), sigma=sigma, mode="nearest")
        return torch.as_tensor(blurred, dtype=x.dtype, device=x.device).unsqueeze(0)
    if kind == "noise":
        hi = x.amax(dim=(2, 3, 4), keepdim=True)
        u = torch.rand(x.shape, generator=ctx.generator, dtype=x.dtype).to(x.device)
        return lo + u * (hi - lo)
    raise ValueError(f"unknown baseline {kind!r}")


def integrated_gradients(ctx: MethodContext, params: IntegratedGradientsParams) -> torch.Tensor:
    """Integrated gradients (Sundararajan, Taly, Yan. ICML 2017, arXiv:1703.01365).

    ``IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x')) / dx_i da``, evaluated with the
    chosen quadrature in batches of path points. The completeness error
    ``|sum(IG) - (F(x) - F(x'))|`` is recorded in the diagnostics, absolute and relative. Its
    endpoints come from the path where the rule has them (``riemann_trapezoid`` has both,
    ``riemann_right`` the input, ``riemann_left`` the baseline); the others run in one batch without
    gradients before the path, which also resolves a target read off the output and gives the
    provenance its output. With ``completeness`` off the path runs alone: the input is scored only
    where the target needs its output or the path holds it.
    """
    x = ctx.x.detach()
    baseline = make_baseline(ctx, params.baseline, params.blur_sigma_mm)
    alphas, weights = quadrature(params.n_steps, params.integration)
    delta = x - baseline
    total = torch.zeros_like(x)
    n = len(alphas)
    ends = _path_endpoints(ctx, alphas, baseline, params.completeness)
    at_input = ends.get("input_step")
    for start in range(0, n, params.batch_size):
        stop = min(start + params.batch_size, n)
        a = torch.as_tensor(alphas[start:stop], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1, 1)
        w = torch.as_tensor(weights[start:stop], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1, 1)
        points = baseline + a * delta
        row = at_input - start if at_input is not None and start <= at_input < stop else None
        if row is not None:
            points[row] = x[0]  # exactly the input (baseline + 1 * delta may differ in the last bit)
        grads, scores = ctx.gradient(points, input_row=row if ctx.output is None else None)
        total += (w * grads).sum(0, keepdim=True)
        for key in ("input_step", "baseline_step"):
            if ends.get(key) is not None and start <= ends[key] < stop:
                ends[key.replace("step", "score")] = float(scores[ends[key] - start])
        ctx.monitor.update(stop / n, f"Integrated gradients: {stop}/{n} path points")
    attribution = delta * total
    if not params.completeness:
        return attribution
    if "input_score" not in ends:  # a windowed path does not keep the output of a batch row
        with torch.no_grad():
            ends["input_score"] = float(ctx.scorer(ctx.input_output())[0])
    _record_completeness(
        ctx,
        attribution,
        ends["input_score"] - ends["baseline_score"],
        lambda relative: f"integrated gradients misses completeness by {relative:.1%} of F(input) - "
        "F(baseline): raise n_steps, or use the blur baseline (instance-normalised networks change "
        "abruptly near a constant baseline)",
    )
    return attribution


def _path_endpoints(ctx: MethodContext, alphas: np.ndarray, baseline: torch.Tensor,
                    check: bool = True) -> dict:
    """F(input) and F(baseline) for the completeness check: the endpoints that are path points
    (``alpha`` exactly 1 or 0) are read off the path, the others scored here in one batch without
    gradients (the input first, so that its output resolves the target and is kept). Without the
    `check`, only the input where the target needs its output before the path (else, off the path, the
    prediction is not evaluated).

    Returns:
        ``input_score`` / ``baseline_score`` where known already, ``input_step`` / ``baseline_step``
        (the index of the path point) where the path is to give them.
    """
    x = ctx.x.detach()
    ends: dict = {}
    ones, zeros = np.flatnonzero(alphas == 1.0), np.flatnonzero(alphas == 0.0)
    rows = []
    if ctx.output is not None:
        with torch.no_grad():
            ends["input_score"] = float(ctx.scorer(ctx.output)[0])
    elif len(ones) and ctx.output_free and not ctx.windowed:
        ends["input_step"] = int(ones[-1])  # that path point keeps its output (windows do not, per row)
    elif check or not ctx.output_free:
        rows.append(x)
    else:
        ctx.no_input_pass("integrated gradients without its completeness check runs the model on the path "
                          "only; saliency records the prediction at the input in one pass")
    if len(zeros):
        ends["baseline_step"] = int(zeros[0])
    elif check:
        rows.append(baseline)
    if rows:
        ctx.monitor.update(0.0, "Integrated gradients: the endpoints of the path" + (
            " (completeness check)" if check else ""))
        batch = torch.cat(rows)
        with torch.no_grad(), fast_convolutions(ctx.network, backward=False) if not ctx.windowed else nullcontext():
            scores = ctx.score(batch if ctx.windowed else to_channels_last(batch),
                               input_row=0 if rows[0] is x else None)
        if rows[0] is x:
            ends["input_score"] = float(scores[0])
        if rows[-1] is baseline:
            ends["baseline_score"] = float(scores[-1])
    return ends


def _record_completeness(ctx: MethodContext, attribution: torch.Tensor, gap: float, warning) -> None:
    """Put |sum(attribution) - (F(x) - F(x'))| in the diagnostics; warn through `warning(relative)`."""
    error = abs(float(attribution.sum()) - gap)
    relative = error / abs(gap) if gap else (float("inf") if error else 0.0)
    ctx.diagnostics.update(
        completeness_error=error, completeness_relative_error=relative, score_input_minus_baseline=gap
    )
    if relative > COMPLETENESS_WARNING:
        ctx.warn(warning(relative))


def _channel_range(x: torch.Tensor) -> torch.Tensor:
    """max - min of each channel, shaped (1, C, 1, 1, 1): the unit of the noise parameters."""
    dims = tuple(range(2, x.ndim))
    return x.amax(dim=dims, keepdim=True) - x.amin(dim=dims, keepdim=True)


def _gaussian(ctx: MethodContext, count: int, like: torch.Tensor) -> torch.Tensor:
    """`count` standard normal volumes shaped like `like`, from the seeded CPU generator."""
    shape = (count, *like.shape[1:])
    return torch.randn(shape, generator=ctx.generator, dtype=like.dtype).to(like.device)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


class _Moments:
    """The running statistic of per-sample maps that a SmoothGrad variant reports: the mean (``plain``),
    the mean of squares (``squared``) or the population variance (``vargrad``, by Chan et al.'s pairwise
    update, so it is never negative from cancellation). Only that statistic is kept: each costs passes
    over every batch of maps."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.count = 0
        self.mean = self.sum_sq = self.m2 = None

    def add(self, batch: torch.Tensor) -> None:
        n_b = batch.shape[0]
        if self.variant == "squared":
            sum_sq_b = (batch**2).sum(0, keepdim=True)
            self.sum_sq = sum_sq_b if self.count == 0 else self.sum_sq + sum_sq_b
            self.count += n_b
            return
        mean_b = batch.mean(0, keepdim=True)
        m2_b = ((batch - mean_b) ** 2).sum(0, keepdim=True) if self.variant == "vargrad" else None
        if self.count == 0:
            self.mean, self.m2 = mean_b, m2_b
        else:
            total = self.count + n_b
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n_b / total)
            if m2_b is not None:
                self.m2 = self.m2 + m2_b + delta**2 * (self.count * n_b / total)
        self.count += n_b

    def result(self) -> torch.Tensor:
        if self.variant == "plain":
            return self.mean
        if self.variant == "squared":
            return self.sum_sq / self.count
        return self.m2 / self.count  # population variance, as VarGrad and Captum


def smoothgrad(ctx: MethodContext, params: SmoothGradParams) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825) and VarGrad (Adebayo et al. 2018, arXiv:1810.03307).

    The gradient (or, with ``multiply_by_input``, noisy input x gradient) is evaluated at
    ``n_samples`` copies ``x + e``, ``e ~ N(0, (noise_level * (max_c - min_c))^2)`` per channel c, and
    reduced to the mean (``plain``), the mean of squares (``squared``) or the population variance
    (``vargrad``), as Captum's ``NoiseTunnel`` with ``smoothgrad``, ``smoothgrad_sq`` and ``vargrad``.
    The noise is drawn from the seeded CPU generator, one ``(batch, C, I, J, K)`` block per batch.
    """
    x = ctx.x.detach()
    ctx.no_input_pass("SmoothGrad runs the model on noisy copies of the input only; saliency records the "
                      "prediction at the input in one pass")
    std = params.noise_level * _channel_range(x)
    moments = _Moments(params.variant)
    n = params.n_samples
    ctx.monitor.update(0.0, f"SmoothGrad: {n} noisy copies")
    for start, stop in _batches(n, params.batch_size):
        noisy = x + std * _gaussian(ctx, stop - start, x)
        grads, _ = ctx.gradient(noisy)  # cancel is checked between batches, as integrated gradients does
        moments.add(noisy * grads if params.multiply_by_input else grads)
        ctx.monitor.update(stop / n, f"SmoothGrad: {stop}/{n} noisy copies")
    return moments.result()


def gradient_shap(ctx: MethodContext, params: GradientShapParams) -> torch.Tensor:
    """GradientSHAP, i.e. expected gradients (Lundberg & Lee 2017, arXiv:1705.07874; Erion et al.
    2021, arXiv:1906.10670), as Captum's ``GradientShap``.

    ``phi = mean_s (x_s - b_s) * dF(b_s + a_s (x_s - b_s)) / dx`` over ``n_samples`` draws of
    ``a_s ~ U(0, 1)``, a baseline ``b_s = b + e_s`` (``b`` from :func:`make_baseline`,
    ``e_s ~ N(0, (baseline_noise * range_c)^2)``) and ``x_s = x + n_s`` (``n_s`` likewise with
    ``input_noise``). Its expectation sums to ``E[F(x_s) - F(b_s)]``; the map is a Monte-Carlo
    estimate of it. Draw order from the seeded CPU generator: the ``noise`` centre if chosen, then
    per batch the ``a_s``, the baseline noise and the input noise (each skipped when its width is 0).
    """
    x = ctx.x.detach()
    ctx.no_input_pass("GradientSHAP runs the model between baselines and the input only; saliency records "
                      "the prediction at the input in one pass")
    centre = make_baseline(ctx, params.baseline, params.blur_sigma_mm)
    spread = _channel_range(x)
    total = torch.zeros_like(x)
    n = params.n_samples
    ctx.monitor.update(0.0, f"GradientSHAP: {n} samples")
    for start, stop in _batches(n, params.batch_size):
        count = stop - start
        alphas = torch.rand(count, generator=ctx.generator, dtype=x.dtype).to(x.device).view(-1, 1, 1, 1, 1)
        baselines = centre.expand(count, *x.shape[1:])
        if params.baseline_noise > 0:
            baselines = baselines + params.baseline_noise * spread * _gaussian(ctx, count, x)
        inputs = x.expand(count, *x.shape[1:])
        if params.input_noise > 0:
            inputs = inputs + params.input_noise * spread * _gaussian(ctx, count, x)
        delta = inputs - baselines
        grads, _ = ctx.gradient(baselines + alphas * delta)  # cancel is checked between batches
        total += (delta * grads).sum(0, keepdim=True)
        ctx.monitor.update(stop / n, f"GradientSHAP: {stop}/{n} samples")
    return total / n


def guided_backprop(ctx: MethodContext, params: GuidedBackpropParams) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806).

    The gradient, except that every rectifier module passes back only positive gradient and only
    where its forward input was positive. ``nn.ReLU``/``ReLU6`` get Captum's rule (ordinary gradient
    clamped at 0); leaky and smooth rectifiers (PReLU, MONAI's default, LeakyReLU, ELU, GELU, ...),
    for which the paper has no rule, are treated as a ReLU: their negative-side slope passes nothing.
    Activations called as functions cannot be hooked and keep their gradient. The number of modified
    calls per module type is recorded in the diagnostics.

    Raises:
        ModelError: TorchScript / exported models, whose layers cannot be hooked.
    """
    ctx.monitor.update(0.0, "Guided backpropagation: forward and guided backward pass")
    if ctx.windowed:  # a pass the windows cannot share must run before the hooks, not inside them
        ctx.windowed_scorer(at_input=True)
    # one pass, like saliency: cancel is checked around it (and between windows), not at every layer
    with modified_backward(ctx.network, is_guided_module, guided_rule) as calls:
        grads, _ = ctx.gradient(ctx.x)
    _check_hooked(ctx, calls, "guided backpropagation", GUIDED_EXACT + GUIDED_LEAKY)
    ctx.diagnostics["modified_calls"] = dict(calls)
    ctx.monitor.update(1.0, "Guided backpropagation: done")
    return grads


def deeplift(ctx: MethodContext, params: DeepLiftParams) -> torch.Tensor:
    """DeepLIFT with the Rescale rule (Shrikumar, Greenside, Kundaje. ICML 2017, arXiv:1704.02685).

    ``phi = (x - x') * g``, where g is the gradient with every element-wise nonlinearity's local
    derivative replaced by ``(y - y') / (x - x')`` (its local gradient where ``|x - x'| <= eps``) and
    max pooling handled as Captum does, but summing over overlapping windows (see
    :class:`~.modified_backprop.DeepLiftRecorder`). Convolutions, linear layers, average pooling and
    batch norm in eval mode are linear and keep their gradient. Instance/group/layer norm, softmax
    modules, probability targets and activations called as functions have no rule and pass their
    local gradient, as in Captum: then summation-to-delta is approximate. Its error
    ``|sum(phi) - (F(x) - F(x'))|`` is recorded in the diagnostics, and a warning names the cause.

    Raises:
        ModelError: TorchScript / exported models, whose layers cannot be hooked, or a network that
            ran differently on the input and on the baseline.
    """
    x = ctx.x.detach()
    baseline = make_baseline(ctx, params.baseline, params.blur_sigma_mm)
    recorder = DeepLiftRecorder(params.eps)
    ctx.monitor.update(0.0, "DeepLIFT: forward pass on the baseline")
    if ctx.windowed:  # a pass the windows cannot share must run before the recorder, not inside it
        ctx.windowed_scorer(at_input=True)
    with cancel_points(ctx.network, ctx.monitor.check):
        with modified_backward(ctx.network, recorder.choose, recorder.on_call) as calls:
            with torch.no_grad():
                # a target read off the output is fixed by the input pass below: keep the baseline's
                # output until then rather than running the input once more first
                baseline_output = ctx.model(baseline)
                ctx.observe(baseline_output)
                baseline_score = ctx.scorer(baseline_output)[0] if ctx.resolved else None
                if baseline_score is not None:
                    del baseline_output
            _check_hooked(ctx, calls, "DeepLIFT", RESCALE_MODULES + MAXPOOL_MODULES)
            ctx.diagnostics["rescaled_calls"] = dict(calls)
            recorder.start_input_pass()
            ctx.monitor.update(0.4, "DeepLIFT: input pass with the Rescale rule")
            grads, score = ctx.gradient(x)
    if baseline_score is None:
        with torch.no_grad():
            baseline_score = ctx.scorer(baseline_output)[0]
    attribution = (x - baseline) * grads
    gap = float(score[0]) - float(baseline_score)
    _record_completeness(ctx, attribution, gap, lambda relative: _deeplift_warning(ctx, relative))
    ctx.monitor.update(1.0, "DeepLIFT: done")
    return attribution


def _check_hooked(ctx: MethodContext, calls, method: str, kinds: tuple[type, ...]) -> None:
    caveat = check_hooked(calls, ctx.network, method, kinds)
    if caveat:
        ctx.warn(caveat)


def _deeplift_warning(ctx: MethodContext, relative: float) -> str:
    causes = []
    names = modules_without_rule(ctx.network)
    if names:
        causes.append(f"{', '.join(names)} modules")
    if ctx.target.score == "probability":
        causes.append("the probability target's softmax/sigmoid")
    causes.append("any activation called as a function or in the preprocessing")
    return (
        f"DeepLIFT misses summation-to-delta by {relative:.1%} of F(input) - F(baseline): these steps "
        f"have no DeepLIFT rule and pass their local gradient: {'; '.join(causes)}"
    )
