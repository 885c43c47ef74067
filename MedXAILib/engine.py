"""`explain()`: one call from an image, a model, a method and a target to an :class:`Attribution`.

The model output for the input is needed to resolve the target and for the provenance, and
`explain()` runs no pass of its own for it: the method's own first pass does (see
:mod:`MedXAILib.methods.context`). The output at the input (a gradient at the input, a CAM's forward
pass, a batch row that is the input) resolves any target, detached and before the score is taken, and
is the provenance's output; a target whose region does not depend on the output (:func:`output_free`)
is resolved from the first output of any input, and for a sliding-window segmenter from the channel
count of one probe window before the method. A method that computes no output at the input gets one
pass over it, for the provenance, after the method (or before, where the target needs it first), unless
its passes never evaluate the input by design (SmoothGrad, GradientSHAP): then the provenance says the
prediction was not evaluated.
Every check is kept: the class against the model's classes and the region's geometry before the model
runs, the output's channel count and finiteness when the output arrives (``check_finite_output``).
See docs/adr/0004-one-pass-explanations.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from .attribution import Attribution
from .errors import ModelError, TargetError
from .methods import METHODS
from .methods.context import MethodContext, PendingTarget
from .model import ModelAdapter, load_model, resolve_device
from .model.memory import parse_budget
from .monitor import Monitor
from .params import make_params, params_to_dict
from .provenance import channel_argmax, library_versions, summarise_prediction, timestamp
from .scoring import TargetScorer, check_finite_output, resolve_target
from .target import Target
from .volume import ImageVolume

__all__ = ["explain", "explain_structures", "input_warnings", "output_free", "OUTPUT_FREE_REGIONS"]

#: Target regions fixed without the model output (see the module docstring).
OUTPUT_FREE_REGIONS = ("class", "mask", "box", "voxel")


def explain(
    image: ImageVolume | str | Path,
    model: ModelAdapter | torch.nn.Module | str | Path,
    method: str = "integrated_gradients",
    target: Optional[Target] = None,
    params: Optional[Mapping[str, Any] | Any] = None,
    device: Optional[str] = None,
    monitor: Optional[Monitor] = None,
    seed: int = 0,
    memory_budget: Optional[str | int] = None,
    mixed_precision: Optional[bool] = None,
) -> Attribution:
    """Explain `model`'s `target` on `image` with an attribution `method`.

    Args:
        image: the input volume, or a path read with :func:`MedXAILib.io.read_image`.
        model: a :class:`ModelAdapter`, an ``nn.Module`` taking (1, C, I, J, K), or a model path
            for :func:`MedXAILib.model.load_model` (bundles are not trusted this way).
        method: a registered method name (``MedXAILib.METHODS.names()``).
        target: what to explain; default: the predicted class of a classifier. Segmenters need a
            class (``Target(class_index=c, region="predicted")`` for a predicted structure).
        params: the method's parameters, as a mapping (strings allowed) or its dataclass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; default: the model's current device.
        monitor: progress and cancel; ``Cancelled`` propagates and nothing is returned.
        seed: seeds every random draw, so results repeat exactly on the same device.
        memory_budget: bytes (or ``"4GB"``, ``"auto"``) the run may use; sets the model's budget,
            which sizes sliding-window and perturbation batches (default: the model's, else auto).
        mixed_precision: float16 autocast for the network on CUDA (default: the model's setting).

    Returns:
        The signed, raw map per input channel on the input grid, with its provenance.

    Raises:
        MedXAIError subclasses with an actionable message for any bad input.
    """
    started = time.perf_counter()
    info, params, image, adapter, borrowed = _prepare(method, params, image, model, device, memory_budget,
                                                      mixed_precision)
    with borrowed:
        return _explain(image, adapter, info, target, params, monitor or Monitor(), seed, started)


def _prepare(method: str, params: Any, image: ImageVolume | str | Path, model: Any, device: Optional[str],
             memory_budget: Optional[str | int], mixed_precision: Optional[bool]) -> tuple:
    """What :func:`explain` and :func:`explain_structures` check and load first: the method's info and
    parameters, the (finite) image, the adapter and the context that lends it to this call."""
    info = METHODS.get(method)
    if not (params is not None and isinstance(params, info.params)):
        params = make_params(info.params, params)
    if not isinstance(image, ImageVolume):
        from .io import read_image

        image = read_image(image)
    image.check_finite()
    if isinstance(model, torch.nn.Module):  # a caller's network is only borrowed for this call
        adapter = load_model(model, borrow=True)
        device = device or "auto"
    else:
        adapter = model if isinstance(model, ModelAdapter) else load_model(model, device=device or "auto")
    budget = parse_budget(memory_budget) if memory_budget is not None else None
    borrowed = adapter.borrowed(resolve_device(device) if device is not None else None, budget, mixed_precision)
    return info, params, image, adapter, borrowed


def _explain(image: ImageVolume, adapter: ModelAdapter, info: Any, target: Optional[Target], params: Any,
             monitor: Monitor, seed: int, started: float) -> Attribution:
    adapter.check_input(image.n_channels)
    target = target or Target()
    if adapter.class_names and target.class_index is not None and target.class_index >= len(adapter.class_names):
        raise TargetError(f"class {target.class_index} is out of range: the model declares "
                          f"{len(adapter.class_names)} classes (0..{len(adapter.class_names) - 1}: "
                          f"{', '.join(adapter.class_names)})")  # before the model runs
    if target.region in ("mask", "box", "voxel"):
        target.region_mask(image.shape)  # the region's geometry, too, is checked before the model runs
    elif target.voxel is not None:
        target.check_voxel(image.shape)
    _seed(seed)
    generator = torch.Generator().manual_seed(seed)

    bound = adapter.bind(image.affine, image.shape, image.array)
    x = torch.as_tensor(image.array, device=adapter.device).unsqueeze(0)
    if info.tasks and adapter.task is not None and adapter.task not in info.tasks:
        raise TargetError(f"method '{info.name}' does not support {adapter.task} models")
    if adapter.task == "classification" and target.region != "class":
        resolve_target(target, torch.zeros(1, 1), adapter.task)  # raises its error before the model runs

    def resolve(output: torch.Tensor) -> TargetScorer:
        """The scorer, fixed from the first output of the method's passes (see MethodContext)."""
        _check_output(output, adapter, info)
        return resolve_target(target, output, adapter.task, adapter.output_activation, spacing=image.spacing)

    def check(output: torch.Tensor, scorer: TargetScorer) -> None:
        if warning := check_finite_output(output, scorer):
            ctx.warn(warning)

    pending = PendingTarget(target, resolve, output_free=output_free(target, adapter.task), check=check)
    scorer = None
    if adapter.roi_size is not None:  # the window probe (one window, kept per model) runs before any hook
        bound.windows_per_call()
    if bound.windowed and adapter.task == "segmentation" and pending.output_free:
        # the output's shape suffices (one probe window, which sizes the windows anyway): the windowed
        # passes then need no whole-volume pass before them
        scorer = resolve(torch.zeros((), device=adapter.device).expand(1, bound.output_channels(), *image.shape))
    ctx = MethodContext(x=x, model=bound, scorer=scorer, image=image, monitor=monitor, generator=generator,
                        pending=pending)
    for warning in [*adapter.notes, *input_warnings(image, target)]:
        ctx.warn(warning)
    with monitor.stage(0.02, 1.0):
        bound.progress = ctx.window_progress()
        result = info.load()(ctx, params)
        if ctx.output is None and ctx.input_unevaluated:  # the method never evaluates the input: said so
            prediction = {"evaluated": False, "note": ctx.input_unevaluated}
        else:
            if ctx.output is None:  # the method kept no output at the input: the provenance's pass
                monitor.update(1.0, "Running the model on the input")
                bound.progress = _running(monitor, 1.0)
            prediction = summarise_prediction(ctx.input_output(), adapter.task, adapter.class_names)
    attribution = _attribution(result, info, params, ctx, image, adapter, bound, seed, started, prediction)
    monitor.update(1.0, f"{info.title}: done")
    return attribution


def _attribution(result: torch.Tensor, info: Any, params: Any, ctx: MethodContext, image: ImageVolume,
                 adapter: ModelAdapter, bound: Any, seed: int, started: float, prediction: dict,
                 **extra: Any) -> Attribution:
    """The method's map (refused when not finite) with its provenance: what ran, on what, and what it found."""
    array = result[0].detach().float().cpu().numpy()
    # float32 values cannot overflow a float64 sum, so the per-channel sums (which the channel summary
    # reads anyway) are finite exactly when every value is: one pass over the map, not two
    sums = array.reshape(array.shape[0], -1).sum(axis=1, dtype=np.float64)
    if not np.all(np.isfinite(sums)):
        raise ModelError(f"method '{info.name}' produced non-finite values; the model may be unstable on "
                         "this input")
    scorer = ctx.scorer
    provenance = {
        "method": info.name,
        "method_title": info.title,
        "reference": info.reference,
        "map_units": getattr(info, "units", None),
        "parameters": params_to_dict(params),
        "target": scorer.describe(),
        "target_name": (adapter.class_names or [None] * (scorer.class_index + 1))[scorer.class_index],
        "model": adapter.describe(),
        "prediction": prediction,
        "input": {
            "source": str(image.meta.get("source", "<memory>")),
            "shape": list(image.shape),
            "channels": image.n_channels,
            "channel_names": list(image.channel_names),
            "spacing_mm": [round(float(s), 6) for s in image.spacing],
        },
        "diagnostics": ctx.diagnostics,
        **extra,
        "versions": library_versions(),
        "seed": seed,
        "device": str(adapter.device),
        "memory": bound.memory_report(),
        "seconds": round(time.perf_counter() - started, 4),
        "created": timestamp(),
    }
    attribution = Attribution(array=array, affine=image.affine.copy(), provenance=provenance)
    provenance["channels"] = attribution.channel_summary(sums)  # which channel decided, as far as the map can say
    return attribution


def output_free(target: Target, task: Optional[str]) -> bool:
    """Whether `target` is fixed without the values of the model output (its channel count suffices):
    a classifier's class given by index; a segmenter's class, mask, box or voxel region, or the boundary
    band of a given mask. Predicted classes, structures and components need the output at the input."""
    if task == "classification":
        return target.class_index is not None
    if task == "segmentation":
        return target.region in OUTPUT_FREE_REGIONS or (target.region == "boundary" and target.mask is not None)
    return False


def input_warnings(image: ImageVolume, target: Target) -> list[str]:
    """What is suspicious about an input and its target though it can be explained: said, never silent."""
    warnings = []
    for channel, values in enumerate(image.array):
        low, high = float(values.min()), float(values.max())
        if low == high:
            warnings.append(f"input channel {channel} is constant (every voxel {low:g}): its relevance says nothing "
                            "about intensity patterns; check that the right image was given")
    if target.region == "box" and target.box is not None:
        lo, hi = np.array(target.box[:3]), np.array(target.box[3:])
        if np.any(lo < 0) or np.any(hi >= np.array(image.shape)):
            inside = np.prod(np.clip(np.minimum(hi, np.array(image.shape) - 1) - np.maximum(lo, 0) + 1, 0, None))
            warnings.append(f"the target box {tuple(int(v) for v in target.box)} extends beyond the image grid "
                            f"{tuple(image.shape)}; only its {int(inside)} voxel(s) inside are used")
    mask = None if target.mask is None else np.asarray(target.mask)
    if mask is not None and mask.dtype != bool and np.any((mask != 0) & (mask != 1)):  # np.unique only then
        values = np.unique(mask)
        if values.size > 2 or values.min() < 0 or values.max() > 1:
            warnings.append(f"the target mask holds {values.size} distinct labels ({values.min():g} to {values.max():g}); "
                            "every non-zero voxel is used as one region: pass one structure (labels == k), or "
                            "threshold a probability map first")
    return warnings


def _seed(seed: int) -> None:
    """``torch.manual_seed(seed)`` for the devices in use: torch's own also queues a lazy CUDA seeding with a
    formatted stack on every call where CUDA is not initialised (0.3 ms of a 0.08 s explanation)."""
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def _running(monitor: Monitor, fraction: float):
    """``progress(done, total)`` for the pass that computes the model output."""
    return lambda done, total: monitor.update(fraction, f"Running the model: window {done} of {total}")


# ------------------------------------------------------------------------------------------------
# Several targets of one input at once


class _SharedGradientContext(MethodContext):
    """A method context whose gradient at the input was computed already, in a pass shared by several
    targets (:func:`explain_structures`); gradients at other inputs run as usual."""

    shared: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def gradient(self, batch: torch.Tensor, input_row: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared is not None and batch.shape[0] == 1 and self.at_input(batch, input_row) == 0:
            return self.shared
        return super().gradient(batch, input_row)


def _shared_gradients(bound: Any, x: torch.Tensor, resolve: Any, monitor: Monitor,
                      output: Optional[torch.Tensor] = None
                      ) -> tuple[list[TargetScorer], list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The scorers (``resolve(output)``), (d score_k / d input, score_k) for each from one forward pass per
    window, and the model output (a windowed model's is computed first unless `output` is given)."""
    from .methods.modified_backprop import cancel_points
    from .model.layout import fast_convolutions, to_channels_last
    from .model.window_gradient import window_backward_many

    network = bound.adapter.network
    with cancel_points(network, monitor.check):
        if bound.windowed:  # predicted regions need the blended output before any window's backward pass
            if output is None:
                monitor.update(0.0, "Running the model on the input")
                bound.progress = _running(monitor, 0.0)
                with torch.no_grad():
                    output = bound(x)
                bound.progress = None
            scorers = resolve(output)
            monitor.update(0.1, f"Gradients of {len(scorers)} targets: one shared pass")

            def progress(done: int, total: int) -> None:
                monitor.update(0.1 + 0.9 * done / total, f"Gradients of {len(scorers)} targets: window {done} of {total}")

            found = window_backward_many(bound, x, scorers, output=output, progress=progress)
            return scorers, [(f.grad, f.scores) for f in found], output
        grads = []
        with fast_convolutions(network), torch.enable_grad():  # same values, faster convolutions
            xg = to_channels_last(x.detach()).requires_grad_(True)  # follows the network's layout
            out = bound(xg)
            output = out.detach()
            scorers = resolve(output)
            for k, scorer in enumerate(scorers):
                scores = scorer(out)
                (grad,) = torch.autograd.grad(scores.sum(), xg, retain_graph=k < len(scorers) - 1)
                grads.append((grad.contiguous(), scores.detach()))
        return scorers, grads, output


def _check_output(output: torch.Tensor, adapter: ModelAdapter, info: Any) -> None:
    """What the first output tells before any target is resolved: its channels against the declared class
    names, and a task first known from it against the method's tasks."""
    if adapter.class_names and len(adapter.class_names) != output.shape[1]:
        raise ModelError(f"the model declares {len(adapter.class_names)} class names but returns "
                         f"{output.shape[1]} channels")
    if info.tasks and adapter.task not in info.tasks:
        raise TargetError(f"method '{info.name}' does not support {adapter.task} models")


def _shared_labels(output: torch.Tensor, adapter: ModelAdapter, targets: Sequence[Target]) -> Optional[np.ndarray]:
    """The argmax label map, computed once for all predicted targets of a softmax segmenter (else None)."""
    wanted = adapter.task == "segmentation" and adapter.output_activation != "sigmoid" and any(
        t.region == "predicted" for t in targets)
    return channel_argmax(output[0].detach()).cpu().numpy() if wanted else None


def _resolve_many(target: Target, output: torch.Tensor, adapter: ModelAdapter, image: ImageVolume,
                  labels: Optional[np.ndarray]) -> TargetScorer:
    """:func:`resolve_target`, with a predicted structure taken from the shared label map (the argmax of a
    whole CT takes seconds; K structures need it once)."""
    if labels is None or target.region != "predicted" or target.class_index is None:
        return resolve_target(target, output, adapter.task, adapter.output_activation, spacing=image.spacing)
    index = int(target.class_index)
    if not 0 <= index < output.shape[1]:  # resolve_target's own error
        return resolve_target(target, output, adapter.task, adapter.output_activation, spacing=image.spacing)
    region = labels == index
    if not region.any():
        raise TargetError(f"the model predicts no voxel of class {index}; choose another class or region")
    return TargetScorer(target, index, adapter.task, adapter.output_activation,
                        torch.as_tensor(region, device=output.device), int(np.count_nonzero(region)))


def explain_structures(
    image: ImageVolume | str | Path,
    model: ModelAdapter | torch.nn.Module | str | Path,
    targets: Sequence[Target],
    method: str = "saliency",
    params: Optional[Mapping[str, Any] | Any] = None,
    device: Optional[str] = None,
    monitor: Optional[Monitor] = None,
    seed: int = 0,
    memory_budget: Optional[str | int] = None,
    mixed_precision: Optional[bool] = None,
    output: Optional[torch.Tensor] = None,
) -> list[Attribution]:
    """Explain several targets of one input (the K structures of a segmentation) with shared passes.

    The model output comes from one pass (it fixes predicted regions and goes into every provenance);
    then one forward pass per window with autograd serves the gradient at the input of every target:
    the window's graph is kept while K backward passes run from it
    (:func:`MedXAILib.model.window_gradient.window_backward_many`; a model without windows: K backward
    passes from one graph of the whole input). Each target's method then runs on its gradient:
    ``saliency`` and ``input_x_gradient`` need nothing more; other methods run their further passes per
    target (correct, not shared). Each map equals ``explain(image, model, method, target, params,
    seed=seed)`` for that target, up to float rounding.

    Args:
        image, model, method, params, device, monitor, seed, memory_budget, mixed_precision: as
            :func:`explain`.
        targets: what to explain, one :class:`Target` each (e.g. ``Target(class_index=k,
            region="predicted")`` for every structure k).
        output: the model's output on `image` (1, K, I, J, K), when the caller ran the same model with the
            same settings already (a QA case's test-time ensemble): a sliding-window model then runs no
            pass of its own before the gradient pass.

    Returns:
        One :class:`Attribution` per target, in order; the provenance's ``shared_pass`` says how many
        targets shared the gradient pass.

    Raises:
        MedXAIError subclasses as :func:`explain`; TargetError for an empty list of targets.
    """
    started = time.perf_counter()
    targets = list(targets)
    if not targets:
        raise TargetError("explain_structures needs at least one target")
    monitor = monitor or Monitor()
    info, params, image, adapter, borrowed = _prepare(method, params, image, model, device, memory_budget,
                                                      mixed_precision)
    with borrowed:
        adapter.check_input(image.n_channels)
        for target in targets:
            if target.region in ("mask", "box", "voxel"):
                target.region_mask(image.shape)  # geometry checked before the model runs
        _seed(seed)
        bound = adapter.bind(image.affine, image.shape, image.array)
        x = torch.as_tensor(image.array, device=adapter.device).unsqueeze(0)

        def resolve(output: torch.Tensor) -> list[TargetScorer]:
            _check_output(output, adapter, info)
            labels = _shared_labels(output, adapter, targets)
            return [_resolve_many(t, output, adapter, image, labels) for t in targets]

        with monitor.stage(0.0, 0.8):
            scorers, shared, output = _shared_gradients(bound, x, resolve, monitor, output)
        finite = bool(torch.isfinite(output).all())  # one check for all targets in the usual case
        warnings = [] if finite else [w for s in scorers if (w := check_finite_output(output, s))]
        prediction = summarise_prediction(output, adapter.task, adapter.class_names)
        attributions = []
        for k, (target, scorer) in enumerate(zip(targets, scorers)):
            one_started = time.perf_counter()
            _seed(seed)
            ctx = _SharedGradientContext(x=x, model=bound, scorer=scorer, image=image, monitor=monitor,
                                         generator=torch.Generator().manual_seed(seed), output=output)
            ctx.shared = shared[k]
            for warning in [*adapter.notes, *input_warnings(image, target), *warnings]:
                ctx.warn(warning)
            with monitor.stage(0.8 + 0.2 * k / len(targets), 0.8 + 0.2 * (k + 1) / len(targets)):
                bound.progress = ctx.window_progress()
                result = info.load()(ctx, params)
                bound.progress = None
            attribution = _attribution(result, info, params, ctx, image, adapter, bound, seed,
                                       started if k == 0 else one_started, prediction,
                                       shared_pass={"targets": len(targets), "index": k})
            attributions.append(attribution)
    monitor.update(1.0, f"{info.title}: {len(targets)} targets done")
    return attributions
