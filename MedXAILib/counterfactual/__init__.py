"""Counterfactual volumes: the smallest plausible change of the image that changes the model's output.

``generate_counterfactual(image, model, goal, generator=...)`` returns a :class:`Counterfactual`:
the changed volume x', the signed difference x' - x, the predictions before and after, quality
metrics (validity, proximity, sparsity, locality, plausibility) and the provenance.

Generators (:data:`GENERATORS`, metadata in :mod:`.catalog`):

- ``gradient_search``: Wachter et al. 2017, Adam on the voxels with L1/L2 + TV distance;
- ``inpaint``: replace a structure by harmonic filling plus matched noise ("what if it were absent");
- ``latent``: Latent Shift (Cohen et al. 2021) in a MONAI AutoencoderKL; heavier, demo weights.

This package imports without torch (the GUI lists generators and builds goals first); the
generators import it on first use.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ..errors import InputError, ModelError, ParameterError, TargetError
from ..monitor import Monitor
from ..volume import ImageVolume
from .catalog import (
    GENERATORS,
    GOAL_KINDS,
    GeneratorInfo,
    GradientSearchParams,
    InpaintParams,
    LatentParams,
)
from .goals import Goal
from .report import OUTPUT_NAMES, Counterfactual

__all__ = [
    "generate_counterfactual",
    "Counterfactual",
    "Goal",
    "GOAL_KINDS",
    "GENERATORS",
    "GeneratorInfo",
    "GradientSearchParams",
    "InpaintParams",
    "LatentParams",
    "OUTPUT_NAMES",
]


def generate_counterfactual(
    image: ImageVolume | str | Path,
    model: Any,
    goal: Goal,
    generator: str = "gradient_search",
    region: Optional[np.ndarray] = None,
    params: Optional[Mapping[str, Any] | Any] = None,
    bounds: Optional[tuple[float, float]] = None,
    monitor: Optional[Monitor] = None,
    seed: int = 0,
) -> Counterfactual:
    """Generate a counterfactual volume: a changed image for which the model's output meets `goal`.

    Args:
        image: the input volume, or a path read with :func:`MedXAILib.io.read_image`.
        model: a :class:`~MedXAILib.model.ModelAdapter` (or an ``nn.Module`` / model path, as for
            :func:`MedXAILib.explain`).
        goal: what the change must achieve (:class:`Goal`).
        generator: a name in :data:`GENERATORS` (``gradient_search``, ``inpaint``, ``latent``).
        region: bool (I, J, K) on the input grid: change is allowed only there (``inpaint``: the
            structure to replace; required there).
        params: the generator's parameters, as a mapping (strings allowed) or its dataclass.
        bounds: (low, high) intensity bounds for every channel (e.g. an HU range); default: each
            channel's own minimum and maximum. Voxels already outside the bounds may only move
            towards them.
        monitor: progress in [0, 1] and cancel (``Cancelled`` propagates; nothing is returned).
        seed: seeds every random draw.

    Returns:
        The :class:`Counterfactual` (volume, difference, before, after, metrics, provenance).

    Raises:
        MedXAIError subclasses with an actionable message for any bad input (unknown generator or
        parameter, a goal the model cannot have, a region off the grid, bounds that are not a range).
    """
    from ..params import make_params

    started = time.perf_counter()
    info = GENERATORS.get(generator)
    if not (params is not None and isinstance(params, info.params)):
        if dataclasses.is_dataclass(params):
            raise ParameterError(f"{type(params).__name__} are not the parameters of generator '{info.name}' "
                                 f"({info.params.__name__})")
        params = make_params(info.params, params)
    if not isinstance(goal, Goal):
        raise TargetError(f"goal must be a MedXAILib.counterfactual.Goal; got {type(goal).__name__}")
    if goal.kind not in info.goals:
        raise TargetError(f"generator '{info.name}' does not support {goal.kind} goals")
    monitor = monitor or Monitor()
    if not isinstance(image, ImageVolume):
        from ..io import read_image

        image = read_image(image)
    image.check_finite()
    region = _check_region(region, image, info)
    low_c, high_c = _check_bounds(bounds, image)
    return _run(image, model, goal, info, region, params, (low_c, high_c), bounds, monitor, seed, started)


def _check_region(region: Optional[np.ndarray], image: ImageVolume, info: GeneratorInfo) -> Optional[np.ndarray]:
    if region is None:
        if info.needs_region:
            raise InputError(f"the {info.name} generator needs a region (the structure to replace; --region MASK)")
        return None
    mask = np.asarray(region)
    if mask.ndim == 4 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != image.shape:
        raise InputError(f"the region has shape {mask.shape} but the image grid is {image.shape}; resample it onto "
                         "the image first (MedXAILib.io.read_label_map does)")
    mask = mask.astype(bool)
    if not mask.any():
        raise InputError("the region covers no voxel of the image: nothing may change")
    return mask


def _check_bounds(bounds: Optional[tuple[float, float]], image: ImageVolume) -> tuple[np.ndarray, np.ndarray]:
    flat = image.array.reshape(image.n_channels, -1)
    if bounds is None:
        low, high = flat.min(axis=1).astype(np.float64), flat.max(axis=1).astype(np.float64)
        flat_channels = [c for c in range(image.n_channels) if not high[c] > low[c]]
        if flat_channels:
            raise InputError(f"channel {flat_channels[0]} of the image is constant, so its own range allows no "
                             "change; pass intensity bounds (--bounds LOW,HIGH)")
        return low, high
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise InputError(f"bounds must be two numbers (low, high); got {bounds!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InputError(f"bounds must be finite with low < high; got ({lo}, {hi})")
    return np.full(image.n_channels, lo), np.full(image.n_channels, hi)


def _predictions(output: Any, task: str, activation: str, class_names: Optional[list[str]],
                 ml: float) -> dict[str, Any]:
    import torch

    with torch.no_grad():
        out = output[0].float()
        if task == "classification":
            probs = torch.sigmoid(out) if activation == "sigmoid" else torch.softmax(out, 0)
            top = int(out.argmax())
            return {"task": task, "class_names": class_names, "logits": [round(float(v), 6) for v in out],
                    "probabilities": [round(float(v), 6) for v in probs], "predicted_class": top}
        k = out.shape[0]
        if activation == "sigmoid":  # multi-label: each class on its own; the map shows the strongest
            present = out > 0
            counts = [int(present[c].sum()) for c in range(k)]
            labels = torch.where(present.any(0), out.argmax(0), torch.zeros_like(out[0], dtype=torch.long))
        else:
            labels = out.argmax(0)
            counts = [int(v) for v in torch.bincount(labels.flatten(), minlength=k)]
    dtype = np.uint8 if k <= 256 else np.int32
    return {"task": task, "class_names": class_names, "voxels_per_class": counts,
            "volumes_ml": [round(c * ml, 6) for c in counts], "label_map": labels.cpu().numpy().astype(dtype)}


def _warn_outcome(ctx: Any, metrics: dict[str, Any], info: GeneratorInfo) -> None:
    """Say when the goal was not reached (every generator; the optimising ones say it already) and when
    the change is not minimal: a result must never look like a success it is not."""
    validity, spread = metrics["validity"], metrics["minimality"]
    if not validity.get("reached") and not any("goal was not reached" in w for w in ctx.diagnostics.get("warnings", [])):
        quantity = str(validity.get("quantity", "goal")).replace("_", " ")
        ctx.warn(f"the goal was not reached: {quantity} {validity.get('before'):.4g} -> {validity.get('after'):.4g}, "
                 f"target {validity.get('target'):.4g}" + (
                     "; the changed region alone does not carry the decision (or does not cover it: grow it)"
                     if not info.optimises_goal else ""))
    if not spread["minimal"]:
        where = (f", {spread['changed_share_of_structure']:.1f} x the structure's {spread['structure_ml']:.3g} ml"
                 if spread.get("structure_ml") else "")
        ctx.warn(f"the change is not minimal: {spread['changed_voxels']} voxels ({spread['changed_ml']:.4g} ml, "
                 f"{spread['changed_share_of_image']:.1%} of the image{where}) changed above noise; restrict it "
                 "with a region (--region) or raise distance_weight")


def _run(image: ImageVolume, model: Any, goal: Goal, info: GeneratorInfo, region: Optional[np.ndarray],
         params: Any, bounds_c: tuple[np.ndarray, np.ndarray], bounds: Any, monitor: Monitor, seed: int,
         started: float) -> Counterfactual:
    import torch

    from ..model import ModelAdapter, load_model
    from ..params import params_to_dict
    from ..provenance import library_versions, timestamp
    from .goals import CounterfactualContext, resolve_goal, voxel_ml
    from .report import compute_metrics

    adapter = model if isinstance(model, ModelAdapter) else load_model(model)
    adapter.check_input(image.n_channels)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    monitor.update(0.0, "Running the model on the input")
    bound = adapter.bind(image.affine, image.shape, image.array)
    device = adapter.device
    x = torch.as_tensor(image.array, device=device).unsqueeze(0)
    with torch.no_grad():
        output = bound(x)
    if adapter.class_names and len(adapter.class_names) != output.shape[1]:
        raise ModelError(f"the model declares {len(adapter.class_names)} class names but returns "
                         f"{output.shape[1]} channels")
    if adapter.task not in info.tasks:
        raise TargetError(f"generator '{info.name}' does not support {adapter.task} models")
    resolved = resolve_goal(goal, output, adapter.task, adapter.output_activation, image.affine, region,
                            margin=float(getattr(params, "margin", 0.1)))
    low_c, high_c = (torch.as_tensor(b, dtype=x.dtype, device=device).view(1, -1, 1, 1, 1) for b in bounds_c)
    region_t = None if region is None else torch.as_tensor(region, device=device)[None, None]
    ctx = CounterfactualContext(
        x=x, model=bound, goal=resolved, image=image, region=region_t,
        low=torch.minimum(low_c.expand_as(x), x), high=torch.maximum(high_c.expand_as(x), x),
        scale=(high_c - low_c), monitor=monitor, generator=generator, seed=seed)
    with monitor.stage(0.02, 0.97):
        result = info.load()(ctx, params)
    result = result.detach().to(device=device, dtype=x.dtype)
    if tuple(result.shape) != tuple(x.shape) or not bool(torch.isfinite(result).all()):
        raise ModelError(f"generator '{info.name}' produced an invalid volume (shape {tuple(result.shape)} or "
                         "non-finite values); the model may be unstable on this input")
    monitor.update(0.98, "Running the model on the counterfactual")
    with torch.no_grad():
        output_after = bound(result)
    value_after = resolved.quantity(output_after)
    ml = voxel_ml(image.affine)
    before = _predictions(output, adapter.task, adapter.output_activation, adapter.class_names, ml)
    after = _predictions(output_after, adapter.task, adapter.output_activation, adapter.class_names, ml)
    x_np = image.array
    cf_np = result[0].float().cpu().numpy()
    diff_np = cf_np - x_np  # exactly 0 where nothing changed
    metric_region = ctx.effective_region if ctx.effective_region is not None else region
    seconds = time.perf_counter() - started
    structure = metric_region
    if structure is None and resolved.structure is not None:  # a structure goal: its predicted structure
        structure = resolved.structure.cpu().numpy()
    metrics = compute_metrics(x_np, cf_np, metric_region, before.get("label_map"), resolved.describe(value_after),
                              seconds, ml, structure, list(image.channel_names))
    _warn_outcome(ctx, metrics, info)
    names = adapter.class_names or []
    provenance = {
        "generator": info.name,
        "generator_title": info.title,
        "reference": info.reference,
        "parameters": params_to_dict(params),
        "goal": goal.describe(),
        "goal_name": names[goal.class_index] if goal.class_index < len(names) else None,
        "goal_resolved": resolved.describe(),
        "region_voxels": None if region is None else int(region.sum()),
        "effective_region_voxels": None if ctx.effective_region is None else int(ctx.effective_region.sum()),
        "bounds": {"requested": None if bounds is None else [float(v) for v in bounds],
                   "low": [float(v) for v in bounds_c[0]], "high": [float(v) for v in bounds_c[1]]},
        "model": adapter.describe(),
        "input": {"source": str(image.meta.get("source", "<memory>")), "shape": list(image.shape),
                  "channels": image.n_channels, "spacing_mm": [round(float(s), 6) for s in image.spacing]},
        "diagnostics": ctx.diagnostics,
        "versions": library_versions(),
        "seed": seed,
        "device": str(device),
        "seconds": round(seconds, 4),
        "created": timestamp(),
    }
    meta = {"provenance": provenance}
    channel_names = list(image.channel_names)
    volume = ImageVolume(cf_np, image.affine.copy(), channel_names=channel_names, meta=dict(meta))
    difference = ImageVolume(diff_np, image.affine.copy(), channel_names=channel_names, meta=dict(meta))
    reached = metrics["validity"]["reached"]
    monitor.update(1.0, f"{info.title}: " + ("goal reached" if reached else "goal not reached"))
    return Counterfactual(volume=volume, difference=difference, before=before, after=after, metrics=metrics,
                          provenance=provenance)
