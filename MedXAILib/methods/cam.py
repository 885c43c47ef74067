"""CAM-family attribution methods on 3D volumes: Grad-CAM, Grad-CAM++, HiResCAM, XGrad-CAM, LayerCAM
and Score-CAM, for classifiers and segmenters.

Common steps (one forward pass, one backward pass for the gradient methods):

1. The layer: ``params.layer`` (any module name of the network; an unknown name raises
   :class:`~MedXAILib.errors.ParameterError` with the closest names), or the automatic choice of
   :func:`MedXAILib.methods.layers.default_layer` for the model's task. A model's first automatic
   CAM makes that choice in its own pass (:func:`traced_layer_maps`); later ones find it kept.
2. A forward hook on that layer records its output ``A`` (B, K, *s) every time the network runs and
   hands the rest of the network a copy whose gradient flows into the recorded tensor (the input
   needs no gradient, so the backward pass stops at the layer); one backward pass of the target score (the same :class:`~MedXAILib.scoring.TargetScorer` as every method, so
   masked, boundary or component targets of segmenters work) gives ``G = d score / d A``. The hooks
   are removed in ``finally`` blocks.
3. The method combines ``A`` and ``G`` into one map per network call at the layer's resolution,
   applies the ReLU of its definition when ``relu`` is on, and upsamples it with
   ``F.interpolate(mode=upsample, align_corners=False)`` on the model's device to the network input
   grid (as ``monai.visualize`` and Captum's ``LayerAttribution.interpolate`` do).
4. :meth:`MethodContext.to_input_grid` maps it back onto the image grid through the inverse of the
   model's spatial preprocessing (orientation, spacing), so the map lies on the input grid.

Sliding-window models (``adapter.roi_size`` set): the layer runs once per window ``w``, and a CAM
over windows is defined window by window. Window ``w`` keeps its own activations ``A_w`` and its own
gradient of the *global* target ``G_w = dS/dA_w``, where ``S`` is the score of MONAI's stitched
output ``y = sum_w m_w f(x_w) / sum_w m_w`` (importance maps ``m_w``, constant or Gaussian). So
``G_w`` is the vector-Jacobian product of the network on window ``w`` with ``dS/dy * m_w / N``
(``N = sum_w m_w``) cut to the window: it already carries the window's blend weight
``c_w = m_w / N``. The method's map ``CAM_w = combine(A_w, G_w)`` (for Grad-CAM its own channel
weights from ``G_w``), after the ReLU of its definition, is upsampled to the window and the maps
are *summed* over the windows covering a voxel: ``CAM(v) = sum_w up(CAM_w)(v)``, MONAI's weighted
average of the windows' own CAMs (for HiResCAM and LayerCAM exactly ``sum_w c_w(v) CAM_w^own(v)``;
Grad-CAM averages ``c_w g`` over the window) and, for HiResCAM and LayerCAM on a network whose
layer sees the same activations in every window, the CAM of the whole volume. The windows are
processed one batch at a time (:func:`MedXAILib.model.window_gradient.window_backward`): each batch
recomputes its forward pass from the layer on, backpropagates its vector-Jacobian product, and
adds its maps to the volume, so the whole graph and all windows' activations are never held at
once; the result equals the computation with one backward pass through the stitched output and
hooks over all windows (to float rounding). Score-CAM involves no gradient: its per-window maps
(and the activations that make its masks) are combined with MONAI's weighted average itself. For an
input of exactly one ROI there is one window, ``c_w = 1``, and the map equals the direct CAM.

Multi-channel inputs: a CAM is one map per location. The attribution is that map divided by the
number of input channels ``C`` and repeated in every channel, so the channel sum (what is displayed)
is the CAM and every channel holds a share 1/C; CAMs cannot say which input channel mattered.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from ..errors import ModelError, ParameterError, error_chain
from ..model.layout import fast_convolutions, to_channels_last
from ..model.windows import gradient_members
from .catalog.cam import (
    GradCAMParams,
    GradCAMPlusPlusParams,
    HiResCAMParams,
    LayerCAMParams,
    ScoreCAMParams,
    XGradCAMParams,
)
from .context import MethodContext
from .layers import (check_hookable, default_from_trace, default_layer, example_input, finished, likely_layer,
                     resolve_layer, tracing)

__all__ = [
    "grad_cam",
    "grad_cam_pp",
    "hires_cam",
    "xgrad_cam",
    "layer_cam",
    "score_cam",
    "choose_layer",
    "traced_layer_maps",
    "ChosenLayer",
    "LayerMaps",
    "layer_maps",
]

MapFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass
class ChosenLayer:
    """The layer a CAM looks at: its name, the module, and whether it was chosen automatically."""

    name: str
    module: torch.nn.Module
    automatic: bool


def choose_layer(ctx: MethodContext, name: str, in_pass: bool = False) -> Optional[ChosenLayer]:
    """The named layer, or the automatic choice for the model's task (see :mod:`.layers`).

    The automatic choice traces one forward pass on what the network sees in one call; it depends
    only on the network, the task and that input's shape, so the adapter keeps it for later runs.

    Args:
        in_pass: the caller can trace the choice in its own pass over the input
            (:func:`traced_layer_maps`): then None is returned for a choice not yet known, instead of
            running a pass of its own (a model run window by window still traces its first window).
    """
    network = ctx.network
    check_hookable(network)
    passes = gradient_members(network)
    if passes is not None and len(passes) > 1:  # before any pass: a layer would run once per member
        raise ParameterError(
            f"a CAM needs a layer that runs once per network call, and this model averages {len(passes)} passes "
            "(folds x test-time mirrorings): explain one fold without mirroring (--folds 0 --no-mirroring; in "
            "Slicer: Folds 0, mirroring off), or use a gradient method (saliency, integrated_gradients)")
    if name.strip():
        return ChosenLayer(name.strip(), resolve_layer(network, name), False)
    adapter = ctx.model.adapter
    key = _layer_key(ctx)
    cache = getattr(adapter, "_probe_cache", {})
    if key not in cache:
        if in_pass and adapter.roi_size is None:
            return None
        with torch.no_grad():
            z = ctx.network_input()
        example = example_input(adapter.in_channels, adapter.roi_size, network_input=z)
        cache[key] = default_layer(network, adapter.task, example)
    chosen = cache[key]
    return ChosenLayer(chosen, resolve_layer(network, chosen), True)


def _layer_key(ctx: MethodContext) -> tuple:
    """What the automatic choice depends on: the network, the task and the shape of one network call."""
    adapter = ctx.model.adapter
    grid = tuple(int(n) for n in ctx.model.grids[-1].shape)
    if adapter.roi_size is not None:
        grid = tuple(r if r > 0 else n for r, n in zip(adapter.roi_size, grid))
    return ("cam_layer", adapter.task, (1, int(ctx.x.shape[1]), *grid), id(ctx.network))


def traced_layer_maps(ctx: MethodContext, grad: bool = True) -> tuple[ChosenLayer, Optional["LayerMaps"]]:
    """A model's first automatic CAM: the layer is chosen from the CAM's own pass over the input.

    The layer the order of registration predicts (:func:`~MedXAILib.methods.layers.likely_layer`) is
    hooked as a known layer is (the backward pass stops at it), and the same pass runs with every
    conv-like module traced (:func:`~MedXAILib.methods.layers.tracing`, keeping each output). After it
    the layer is chosen as :func:`~MedXAILib.methods.layers.default_layer` would, and the choice is kept
    on the adapter. Where the prediction holds (MONAI's classifiers and most of its U-Nets) the pass is
    the hooked pass itself; where the choice runs after the predicted layer, its kept output lies in the
    same graph and the gradient is taken there; otherwise (or without a prediction) the pass traces the
    choice from an input that requires grad (:func:`_traced_from_input`).

    Returns:
        The chosen layer and its maps, or None for the maps when the pass could not give them (the choice
        ran before the predicted layer, or the network changed its output in place after the layer):
        then the caller runs its hooked pass at the now known layer (the one case of two passes).
    """
    network, adapter = ctx.network, ctx.model.adapter
    guess = likely_layer(network, adapter.task)
    if guess is None:
        return _traced_from_input(ctx, grad)
    predicted = ChosenLayer(guess, resolve_layer(network, guess), True)
    with fast_convolutions(network), _hooked(network, predicted, ctx.x.ndim, grad) as store, \
            tracing(network, ctx.x.ndim, keep=True) as records:  # after the hook: it sees the layer's copy
        try:
            with torch.enable_grad() if grad else torch.no_grad():
                output = ctx.model(to_channels_last(ctx.x.detach()))
        except ParameterError:  # the predicted layer returns no spatial tensor: trace from the input
            output = None
    try:
        if output is None:
            return _traced_from_input(ctx, grad)
        layer = _traced_choice(ctx, records, output)
        act = store["acts"][0] if layer.name == guess else _kept_output(records, layer.name, grad)
        return layer, None if act is None else _maps_at(ctx, layer, act, output, grad)
    finally:
        for record in records.values():
            record.output = None  # the graph and the activations go with the pass


def _traced_from_input(ctx: MethodContext, grad: bool) -> tuple[ChosenLayer, Optional["LayerMaps"]]:
    """:func:`traced_layer_maps` without a prediction: every candidate traced, the input requiring grad
    so that the graph reaches each of them."""
    network = ctx.network
    with fast_convolutions(network), tracing(network, ctx.x.ndim, keep=True) as records:
        x = to_channels_last(ctx.x.detach())  # follows the network's layout
        if grad:
            x = x.requires_grad_(True)
        with torch.enable_grad() if grad else torch.no_grad():
            output = ctx.model(x)
    try:
        layer = _traced_choice(ctx, records, output)
        act = _kept_output(records, layer.name, grad)
        return layer, None if act is None else _maps_at(ctx, layer, act, output, grad)
    finally:
        for record in records.values():
            record.output = None


def _traced_choice(ctx: MethodContext, records: dict, output: torch.Tensor) -> ChosenLayer:
    """The automatic layer from a traced pass (kept on the adapter for later runs); the pass's output,
    which is the output at the input, resolves the target."""
    network, adapter = ctx.network, ctx.model.adapter
    name = default_from_trace(finished(network, records), adapter.task)
    adapter._probe_cache[_layer_key(ctx)] = name
    ctx.observe(output, 0)
    return ChosenLayer(name, resolve_layer(network, name), True)


def _kept_output(records: dict, name: str, grad: bool) -> Optional[torch.Tensor]:
    """The traced output of layer `name`, or None where it cannot give the maps: changed in place after
    the layer (its version counter moved), or, for a gradient, outside the pass's graph."""
    record = records[name]
    act = record.output
    if act is None or act._version != record.version or (grad and not act.requires_grad):
        return None
    return act


def _maps_at(ctx: MethodContext, layer: ChosenLayer, act: torch.Tensor, output: torch.Tensor,
             grad: bool) -> "LayerMaps":
    """The layer's activations `act` and, with `grad`, d score / d act from the traced pass's graph."""
    with torch.enable_grad() if grad else torch.no_grad():
        score = ctx.scorer(output)[0]
    gradients = None
    if grad:
        if not score.requires_grad:
            raise ParameterError(f"the target score does not depend on layer {layer.name!r}; choose a layer "
                                 "that feeds the output")
        (gradients,) = torch.autograd.grad(score, act, allow_unused=True)
        gradients = torch.zeros_like(act) if gradients is None else gradients.detach()
    return LayerMaps(act.detach(), gradients, score.detach())


@dataclass
class LayerMaps:
    """What one forward (and backward) pass with a hooked layer gives.

    Attributes:
        activations: (W, K, *s): one row per network call (window) and batch item, in call order.
        gradients: d score / d activations, same shape (``None`` without a backward pass).
        score: the target score of the unperturbed input (scalar tensor).
    """

    activations: torch.Tensor
    gradients: torch.Tensor | None
    score: torch.Tensor


@contextmanager
def _hooked(network: torch.nn.Module, layer: ChosenLayer, rank: int, grad: bool) -> Iterator[dict[str, Any]]:
    """Record `layer`'s outputs (and count network calls) while the block runs; hooks always removed."""
    store: dict[str, Any] = {"acts": [], "layer_calls": 0, "network_calls": 0}

    def count(module, args):
        store["network_calls"] += 1

    def record(module, args, output):
        store["layer_calls"] += 1
        if not isinstance(output, torch.Tensor) or output.ndim != rank:
            what = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(
                output).__name__
            raise ParameterError(
                f"layer {layer.name!r} returns {what}; a CAM needs a layer returning one "
                f"(batch, channels, I, J, K) tensor (see 'medxai layers')"
            )
        if grad:
            leaf = output.detach().requires_grad_(True)
            store["acts"].append(leaf)
            return leaf.clone()  # downstream in-place ops change the copy, never the recorded tensor
        store["acts"].append(output.detach().clone())
        return None

    handles = []
    try:
        handles.append(network.register_forward_pre_hook(count))
        handles.append(layer.module.register_forward_hook(record))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def layer_maps(ctx: MethodContext, layer: ChosenLayer, grad: bool = True) -> LayerMaps:
    """Activations (and gradients of the target score) of `layer` for the input, over all windows.

    The network runs in channels-last-3D layout (:mod:`MedXAILib.model.layout`: same values, faster).
    """
    with fast_convolutions(ctx.network):
        return _layer_maps(ctx, layer, grad)


def _layer_maps(ctx: MethodContext, layer: ChosenLayer, grad: bool) -> LayerMaps:
    with _hooked(ctx.network, layer, ctx.x.ndim, grad) as store:
        with torch.enable_grad() if grad else torch.no_grad():
            output = ctx.model(to_channels_last(ctx.x.detach()))
            ctx.observe(output, 0)  # the pass at the input resolves the target and is the model output
            score = ctx.scorer(output)[0]
    acts = store["acts"]
    if not acts:
        raise ParameterError(
            f"layer {layer.name!r} did not run in the forward pass; choose another (see 'medxai layers')"
        )
    if store["layer_calls"] != store["network_calls"]:
        raise ParameterError(
            f"layer {layer.name!r} runs {store['layer_calls']} times in {store['network_calls']} network "
            "call(s) (shared weights); a CAM needs a layer that runs once per call"
        )
    gradients = None
    if grad:
        if not score.requires_grad:
            raise ParameterError(f"the target score does not depend on layer {layer.name!r}; choose a layer "
                                 "that feeds the output")
        found = torch.autograd.grad(score, acts, allow_unused=True)
        gradients = _rows([torch.zeros_like(a) if g is None else g for a, g in zip(acts, found)]).detach()
    return LayerMaps(_rows([a.detach() for a in acts]), gradients, score.detach())


def _rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors stacked along the batch axis (no copy for the usual one network call)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _upsample(maps: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    if mode == "trilinear":
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
        return F.interpolate(maps, size=size, mode=mode, align_corners=False)
    return F.interpolate(maps, size=size, mode="nearest")


def _network_shape(ctx: MethodContext) -> tuple[int, ...]:
    return tuple(int(n) for n in ctx.model.grids[-1].shape)


def _sliding_window(ctx: MethodContext, shape: tuple[int, ...], predictor: Callable[..., torch.Tensor],
                    dtype: torch.dtype, device: torch.device, with_coord: bool = False) -> torch.Tensor:
    """MONAI's sliding_window_inference with the model's settings over a dummy one-channel volume."""
    from monai.inferers import sliding_window_inference

    adapter = ctx.model.adapter
    dummy = torch.zeros((1, 1, *shape), dtype=dtype, device=device)
    with torch.no_grad():
        out = sliding_window_inference(dummy, adapter.roi_size, adapter.sw_batch_size, predictor,
                                       overlap=adapter.overlap, mode=adapter.blend_mode,
                                       with_coord=with_coord)
    return torch.as_tensor(out)


def _on_network_grid(ctx: MethodContext, maps: torch.Tensor, mode: str, combine: str) -> torch.Tensor:
    """(W, k, *s) per-window maps -> (1, k, *network input shape).

    Without sliding windows W is 1 and the map is only upsampled. With them, every window's map is
    upsampled to the window and then ``combine``d over the windows that cover a voxel: ``"sum"`` adds
    them (gradient CAMs, whose gradients already carry the blend weights), ``"average"`` takes
    MONAI's importance-weighted average (Score-CAM weights and activations).
    """
    shape = _network_shape(ctx)
    adapter = ctx.model.adapter
    if adapter.roi_size is None:
        return _upsample(maps, shape, mode)
    cursor = [0]

    def take(window: torch.Tensor) -> torch.Tensor:
        start = cursor[0]
        cursor[0] += window.shape[0]
        if cursor[0] > maps.shape[0]:
            raise ModelError("sliding-window CAM: more windows than recorded layer outputs")
        return _upsample(maps[start:cursor[0]], tuple(window.shape[2:]), mode)

    if combine == "average":
        out = _sliding_window(ctx, shape, take, maps.dtype, maps.device)
    else:
        # windows are cut from the input zero-padded (centred) up to the ROI where it is smaller
        roi = [r if r > 0 else n for r, n in zip(adapter.roi_size, shape)]
        low = [max(r - n, 0) // 2 for r, n in zip(roi, shape)]
        padded = [max(r, n) for r, n in zip(roi, shape)]
        total = torch.zeros((1, maps.shape[1], *padded), dtype=maps.dtype, device=maps.device)

        def add(window: torch.Tensor, coords: list) -> torch.Tensor:
            values = take(window)
            for value, where in zip(values, coords):
                total[(slice(0, 1), slice(None), *where[2:])] += value
            return window

        _sliding_window(ctx, shape, add, maps.dtype, maps.device, with_coord=True)
        out = total[(slice(None), slice(None), *(slice(lo, lo + n) for lo, n in zip(low, shape)))]
    if cursor[0] != maps.shape[0]:
        raise ModelError(
            f"sliding-window CAM: {maps.shape[0]} recorded layer outputs for {cursor[0]} windows"
        )
    return out


def _finish(ctx: MethodContext, cams: torch.Tensor, params: Any, layer: ChosenLayer, title: str,
            combine: str = "sum") -> torch.Tensor:
    """Layer-resolution maps (W, 1, *s) -> (1, C, I, J, K) on the image grid (ReLU, upsampling, blending)."""
    if params.relu:
        if not bool((cams > 0).any()):
            ctx.warn(f"{title} has no positive value at layer {layer.name!r}: all its evidence is against "
                     "this target, so the map is empty; relu=false shows the signed map")
        cams = F.relu(cams)
    ctx.monitor.update(0.9, f"{title}: upsampling to the input grid")
    return _to_image(ctx, _on_network_grid(ctx, cams, params.upsample, combine))


def _to_image(ctx: MethodContext, net_map: torch.Tensor) -> torch.Tensor:
    """(1, 1, *network grid) -> (1, C, I, J, K) on the image grid, split equally across the channels."""
    image_map = ctx.to_input_grid(net_map)
    channels = ctx.x.shape[1]
    return (image_map / channels).expand(-1, channels, *image_map.shape[2:]).contiguous()


def _record(ctx: MethodContext, layer: ChosenLayer, maps: LayerMaps) -> None:
    ctx.diagnostics.update(
        layer=layer.name,
        layer_automatic=layer.automatic,
        layer_output_shape=list(maps.activations.shape[1:]),
        windows=int(maps.activations.shape[0]),
    )


def _spatial(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, t.ndim))


def _layer_pass(ctx: MethodContext, layer: Optional[ChosenLayer], title: str, grad: bool
                ) -> tuple[ChosenLayer, LayerMaps]:
    """The layer's activations (and gradients) over the input, recorded in the diagnostics: the pass that
    also chooses a model's automatic layer when `layer` is None, else a hooked pass at `layer`."""
    backward = ", backward pass to it" if grad else ""
    maps = None
    if layer is None:
        ctx.monitor.update(0.0, f"{title}: forward pass choosing the layer{backward}")
        layer, maps = traced_layer_maps(ctx, grad=grad)
    if maps is None:
        ctx.monitor.update(0.0, f"{title}: forward {'and backward ' if grad else ''}pass through layer {layer.name}")
        maps = layer_maps(ctx, layer, grad=grad)
    _record(ctx, layer, maps)
    return layer, maps


def _gradient_cam(ctx: MethodContext, params: Any, title: str, combine: MapFunction) -> torch.Tensor:
    layer = choose_layer(ctx, params.layer, in_pass=not ctx.windowed)
    if ctx.windowed:
        return _windowed_gradient_cam(ctx, params, layer, title, combine)
    layer, maps = _layer_pass(ctx, layer, title, grad=True)
    ctx.monitor.update(0.7, f"{title}: weighting the activations")
    assert maps.gradients is not None
    cams = combine(maps.activations, maps.gradients, maps.score, params)
    return _finish(ctx, cams, params, layer, title, combine="sum")


def _windowed_gradient_cam(ctx: MethodContext, params: Any, layer: ChosenLayer, title: str,
                           combine: MapFunction) -> torch.Tensor:
    """A gradient CAM over sliding windows, one batch of windows at a time (see the module docstring)."""
    bound = ctx.model
    plan = bound.plan()
    scorer = ctx.scorer if ctx.output is not None else ctx.windowed_scorer(at_input=True)
    # only Grad-CAM++'s exp_score reads the score: no pass over the volume for it otherwise; with the
    # target resolved in the windows' one call, its output gives the score before the first backward
    exp_score = bool(getattr(params, "exp_score", False))
    scores = {"input": torch.zeros((), dtype=ctx.x.dtype, device=ctx.x.device)}
    if exp_score and scorer is not None:
        scores["input"] = ctx.scorer(ctx.input_output())[0].detach()
    total = torch.zeros((1, 1, *plan.count.shape[2:]), dtype=ctx.x.dtype, device=ctx.x.device)
    seen = {"windows": 0, "positive": False, "shape": None}
    ctx.monitor.update(0.0, f"{title}: windows through layer {layer.name}")

    with _hooked(ctx.network, layer, ctx.x.ndim, grad=True) as store:
        def taps() -> list:
            if store["layer_calls"] != store["network_calls"]:
                raise ParameterError(
                    f"layer {layer.name!r} runs {store['layer_calls']} times in {store['network_calls']} "
                    "network call(s) (shared weights); a CAM needs a layer that runs once per call")
            acts, store["acts"] = store["acts"], []
            if not acts:
                raise ParameterError(f"layer {layer.name!r} did not run in the forward pass; choose another "
                                     "(see 'medxai layers')")
            return acts

        def add(jobs, acts, grads) -> None:
            a, g = torch.cat(acts), torch.cat(grads)
            seen["shape"] = list(a.shape[1:])
            if exp_score and scorer is None and not seen["windows"]:
                scores["input"] = ctx.scorer(ctx.output)[0].detach()  # kept by the shared call
            cams = combine(a, g, scores["input"], params)
            if params.relu:
                seen["positive"] = seen["positive"] or bool((cams > 0).any())
                cams = F.relu(cams)
            plan.add(total, jobs, _upsample(cams, plan.roi, params.upsample))  # one input: batch item 0
            seen["windows"] += len(jobs)

        found = bound.gradient(ctx.x, scorer, output=ctx.output, input_grad=False, keep_output=True,
                               taps=taps, on_batch=add, progress=ctx.window_progress(title),
                               resolve=ctx.resolve_at_input if scorer is None else None)
    if ctx.output is None:  # the windows' blend is the model output: no second pass for it
        ctx.keep_output(found.output)
    ctx.diagnostics.update(layer=layer.name, layer_automatic=layer.automatic,
                           layer_output_shape=seen["shape"],
                           windows=seen["windows"], windows_per_call=bound.windows_per_call())
    if params.relu and not seen["positive"]:
        ctx.warn(f"{title} has no positive value at layer {layer.name!r}: all its evidence is against "
                 "this target, so the map is empty; relu=false shows the signed map")
    ctx.monitor.update(0.9, f"{title}: mapping to the input grid")
    return _to_image(ctx, plan.unpad(total))


def _grad_cam_map(a: torch.Tensor, g: torch.Tensor, score: torch.Tensor, params: Any) -> torch.Tensor:
    weights = g.mean(dim=_spatial(g), keepdim=True)
    return (weights * a).sum(1, keepdim=True)


def grad_cam(ctx: MethodContext, params: GradCAMParams) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391).

    ``L = ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the gradient of the target score averaged over
    the layer's voxels (Captum's ``LayerGradCam``, MONAI's ``GradCAM``).
    """
    return _gradient_cam(ctx, params, "Grad-CAM", _grad_cam_map)


def _grad_cam_pp_map(a: torch.Tensor, g: torch.Tensor, score: torch.Tensor, params: Any) -> torch.Tensor:
    dims = _spatial(g)
    factor = torch.ones((), dtype=g.dtype, device=g.device)
    if params.exp_score:
        factor = torch.exp(score.to(g.dtype))
        if not bool(torch.isfinite(factor)):
            raise ParameterError(
                f"exp(score) overflows for a target score of {float(score):.4g}; set exp_score=false "
                "(the map is then divided by the positive factor exp(score)) or use a mean-reduced target"
            )
    g2, g3 = g.pow(2), g.pow(3)
    if params.variant == "monai":  # monai.visualize.GradCAMpp, 1e-7 included
        denominator = 2 * g2 + (a * g3).sum(dim=dims, keepdim=True)
        denominator = torch.where(denominator != 0.0, denominator, torch.ones_like(denominator))
        alpha = g2 / (denominator + 1e-7)
    else:  # eq. 19: alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)
        denominator = 2 * g2 + a.sum(dim=dims, keepdim=True) * g3
        safe = (denominator != 0) & (g != 0)
        alpha = torch.where(safe, g2 / torch.where(safe, denominator, torch.ones_like(denominator)),
                            torch.zeros_like(g))
    weights = (alpha * F.relu(factor * g)).sum(dim=dims, keepdim=True)
    return (weights * a).sum(1, keepdim=True)


def grad_cam_pp(ctx: MethodContext, params: GradCAMPlusPlusParams) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, arXiv:1710.11063), closed form.

    The paper explains ``S = exp(Y)`` of the target score ``Y``; its derivatives are then powers of
    ``g = dY/dA`` and the pixel weights have the closed form of eq. 19,
    ``alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)`` (``variant="paper"``, as the authors' code
    and pytorch-grad-cam; zero where the gradient or the denominator is zero, no epsilon, so the
    result does not depend on the gradients' scale). ``variant="monai"`` reproduces
    ``monai.visualize.GradCAMpp``, which sums ``A_ab g_ab^3`` over space in the denominator and adds
    1e-7. Channel weights: ``w_k = sum_ij alpha_ij ReLU(exp(Y) g_ij)`` with ``exp_score`` (the paper,
    MONAI), ``sum_ij alpha_ij ReLU(g_ij)`` without (the default, as pytorch-grad-cam: the same map
    divided by ``exp(Y)``, which would overflow for region-summed segmentation scores). Map:
    ``ReLU(sum_k w_k A_k)``.
    """
    return _gradient_cam(ctx, params, "Grad-CAM++", _grad_cam_pp_map)


def _hires_cam_map(a: torch.Tensor, g: torch.Tensor, score: torch.Tensor, params: Any) -> torch.Tensor:
    return (g * a).sum(1, keepdim=True)


def hires_cam(ctx: MethodContext, params: HiResCAMParams) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020, arXiv:2011.08891): ``ReLU(sum_k g_k * A_k)`` element-wise.

    Equal to Grad-CAM whenever the gradient is spatially constant (a global-average-pool + linear
    head directly after the layer); different, and faithful to the gradient, otherwise.
    """
    return _gradient_cam(ctx, params, "HiResCAM", _hires_cam_map)


def _xgrad_cam_map(a: torch.Tensor, g: torch.Tensor, score: torch.Tensor, params: Any) -> torch.Tensor:
    dims = _spatial(g)
    total = a.sum(dim=dims, keepdim=True)
    safe = total != 0
    weighted = (g * a).sum(dim=dims, keepdim=True)
    weights = torch.where(safe, weighted / torch.where(safe, total, torch.ones_like(total)),
                          torch.zeros_like(total))
    return (weights * a).sum(1, keepdim=True)


def xgrad_cam(ctx: MethodContext, params: XGradCAMParams) -> torch.Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020, arXiv:2008.02312).

    ``w_k = sum_ij (A_k,ij / sum_ab A_k,ab) g_k,ij``; map ``ReLU(sum_k w_k A_k)``. The derivation
    assumes non-negative activations (a post-ReLU layer); channels whose activations sum to zero get
    weight 0.
    """
    return _gradient_cam(ctx, params, "XGrad-CAM", _xgrad_cam_map)


def _layer_cam_map(a: torch.Tensor, g: torch.Tensor, score: torch.Tensor, params: Any) -> torch.Tensor:
    return (F.relu(g) * a).sum(1, keepdim=True)


def layer_cam(ctx: MethodContext, params: LayerCAMParams) -> torch.Tensor:
    """LayerCAM (Jiang et al., IEEE TIP 30:5875, 2021): ``ReLU(sum_k ReLU(g_k) * A_k)``.

    The ReLU on the gradients is part of the definition and always applied; ``relu`` controls the
    final one.
    """
    return _gradient_cam(ctx, params, "LayerCAM", _layer_cam_map)


def _forward_network_input(ctx: MethodContext, z: torch.Tensor) -> torch.Tensor:
    """The model output on the input grid for a batch already on the network grid.

    Mirrors :meth:`MedXAILib.model.adapter.BoundModel.forward` after its preprocessing: the network or
    sliding-window inference, the first head of a deep-supervision output, and the inverse spatial
    steps for segmenters.
    """
    adapter = ctx.model.adapter
    try:
        if adapter.roi_size is not None:
            from monai.inferers import sliding_window_inference

            y = sliding_window_inference(z, adapter.roi_size, adapter.sw_batch_size, adapter.network,
                                         overlap=adapter.overlap, mode=adapter.blend_mode,
                                         padding_mode=adapter.padding_mode)
        else:
            y = adapter.network(z)
    except RuntimeError as exc:
        raise ModelError(f"the model failed on a masked input of shape {tuple(z.shape)}: {error_chain(exc)}") from None
    if isinstance(y, (tuple, list)):
        y = y[0]
    y = torch.as_tensor(y)
    if adapter.task == "segmentation":
        y = adapter.preprocessing.invert_output(y, ctx.model.grids)
    return y


def score_cam(ctx: MethodContext, params: ScoreCAMParams) -> torch.Tensor:
    """Score-CAM (Wang et al., CVPR-W 2020, arXiv:1910.01279), batched and softmax-free.

    Every channel ``k`` of the layer is upsampled to the network input grid (blended over windows for
    sliding-window models) and min-max normalised over the volume into a mask ``H_k`` in [0, 1]. The
    network input ``X`` (after the model's preprocessing) masked as ``X * H_k`` is scored, in batches
    of ``batch_size``, with the target itself: ``w_k = score(X * H_k)``, or with
    ``subtract_baseline`` the paper's increase of confidence ``score(X * H_k) - score(0)``. The paper
    scores with the softmax probability of the class; here the target decides (logit by default,
    ``score="probability"`` for the paper's choice), and there is no softmax over channels. Channels
    with constant activations give no mask and weight 0. Map: ``ReLU(sum_k w_k A_k)`` at the layer's
    resolution, then upsampled like the other CAMs.
    """
    title = "Score-CAM"
    layer, maps = _layer_pass(ctx, choose_layer(ctx, params.layer, in_pass=not ctx.windowed), title, grad=False)
    ctx.monitor.update(0.05, f"{title}: scoring the masked inputs")
    acts = maps.activations
    n_channels = acts.shape[1]
    with torch.no_grad():
        z = ctx.network_input(ctx.x.detach())
        baseline = torch.zeros((), dtype=z.dtype, device=z.device)
        if params.subtract_baseline:
            baseline = ctx.scorer(_forward_network_input(ctx, torch.zeros_like(z)))[0]
        weights = torch.zeros(n_channels, dtype=acts.dtype, device=acts.device)
        skipped = 0
        for start in range(0, n_channels, params.batch_size):
            stop = min(start + params.batch_size, n_channels)
            up = _on_network_grid(ctx, acts[:, start:stop], params.upsample, "average")[0]  # (k, *grid)
            flat = up.flatten(1)
            low, high = flat.min(1).values, flat.max(1).values
            valid = high > low
            skipped += int((~valid).sum())
            ctx.monitor.check()
            if bool(valid.any()):
                shape = (-1,) + (1,) * (up.ndim - 1)
                masks = (up[valid] - low[valid].view(shape)) / (high[valid] - low[valid]).view(shape)
                scores = ctx.scorer(_forward_network_input(ctx, z * masks.unsqueeze(1)))
                block = torch.zeros(stop - start, dtype=weights.dtype, device=weights.device)
                block[valid] = (scores - baseline).to(weights.dtype)
                weights[start:stop] = block
            ctx.monitor.update(0.05 + 0.8 * stop / n_channels,
                               f"{title}: scored {stop}/{n_channels} channels")
    ctx.diagnostics.update(channels=int(n_channels), constant_channels=skipped,
                           baseline_score=float(baseline))
    cams = (weights.view(1, -1, *([1] * (acts.ndim - 2))) * acts).sum(1, keepdim=True)
    return _finish(ctx, cams, params, layer, title, combine="average")
