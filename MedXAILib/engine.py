"""`explain()`: one call from an image, a model, a method and a target to an :class:`Attribution`.

The model output for the input is needed to resolve the target and for the provenance. For a
sliding-window segmenter and a target whose region does not depend on the output (a class, mask, box
or voxel), the target is resolved from the output's shape alone (the channel count from one probe
window), and the output comes from the windows the method runs anyway (a gradient at the input
blends them, see :mod:`MedXAILib.model.window_gradient`), or from one pass after the method: the
whole volume then goes through the network once less.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from .attribution import Attribution
from .errors import ModelError, TargetError
from .methods import METHODS
from .methods.context import MethodContext
from .model import ModelAdapter, load_model, resolve_device
from .model.memory import parse_budget
from .monitor import Monitor
from .params import make_params, params_to_dict
from .provenance import library_versions, summarise_prediction, timestamp
from .scoring import check_finite_output, resolve_target
from .target import Target
from .volume import ImageVolume

__all__ = ["explain", "input_warnings", "OUTPUT_FREE_REGIONS"]

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
    info = METHODS.get(method)
    if not (params is not None and isinstance(params, info.params)):
        params = make_params(info.params, params)
    monitor = monitor or Monitor()
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
    with adapter.borrowed(resolve_device(device) if device is not None else None, budget, mixed_precision):
        return _explain(image, adapter, info, target, params, monitor, seed, started)


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
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    bound = adapter.bind(image.affine, image.shape)
    x = torch.as_tensor(image.array, device=adapter.device).unsqueeze(0)
    deferred = bound.windowed and adapter.task == "segmentation" and target.region in OUTPUT_FREE_REGIONS
    if deferred:  # the output's shape suffices; the output itself comes with the method's windows
        output = None
        like = torch.zeros((), device=adapter.device).expand(1, bound.output_channels(), *image.shape)
    else:
        monitor.update(0.0, "Running the model on the input")
        bound.progress = _running(monitor, 0.0)
        with torch.no_grad():
            output = like = bound(x)
    if adapter.class_names and len(adapter.class_names) != like.shape[1]:
        raise ModelError(
            f"the model declares {len(adapter.class_names)} class names but returns {like.shape[1]} channels"
        )
    if info.tasks and adapter.task not in info.tasks:
        raise TargetError(f"method '{info.name}' does not support {adapter.task} models")
    scorer = resolve_target(target, like, adapter.task, adapter.output_activation, spacing=image.spacing)

    ctx = MethodContext(x=x, model=bound, scorer=scorer, image=image, monitor=monitor, generator=generator,
                        output=output)
    for warning in [*adapter.notes, *input_warnings(image, target)]:
        ctx.warn(warning)
    if output is not None and (warning := check_finite_output(output, scorer)):
        ctx.warn(warning)
    with monitor.stage(0.02, 1.0):
        bound.progress = ctx.window_progress()
        result = info.load()(ctx, params)
        if ctx.output is None:
            monitor.update(1.0, "Running the model on the input")
            bound.progress = _running(monitor, 1.0)
        output = ctx.input_output()
    if output is not None and (warning := check_finite_output(output, scorer)) and warning not in ctx.diagnostics.get("warnings", []):
        ctx.warn(warning)
    array = result[0].detach().float().cpu().numpy()
    if not np.all(np.isfinite(array)):
        raise ModelError(f"method '{info.name}' produced non-finite values; the model may be unstable on "
                         "this input")

    provenance = {
        "method": info.name,
        "method_title": info.title,
        "reference": info.reference,
        "parameters": params_to_dict(params),
        "target": scorer.describe(),
        "target_name": (adapter.class_names or [None] * (scorer.class_index + 1))[scorer.class_index],
        "model": adapter.describe(),
        "prediction": summarise_prediction(output, adapter.task, adapter.class_names),
        "input": {
            "source": str(image.meta.get("source", "<memory>")),
            "shape": list(image.shape),
            "channels": image.n_channels,
            "spacing_mm": [round(float(s), 6) for s in image.spacing],
        },
        "diagnostics": ctx.diagnostics,
        "versions": library_versions(),
        "seed": seed,
        "device": str(adapter.device),
        "memory": bound.memory_report(),
        "seconds": round(time.perf_counter() - started, 4),
        "created": timestamp(),
    }
    monitor.update(1.0, f"{info.title}: done")
    return Attribution(array=array, affine=image.affine.copy(), provenance=provenance)


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
    if target.mask is not None:
        values = np.unique(np.asarray(target.mask))
        if values.size > 2 or values.min() < 0 or values.max() > 1:
            warnings.append(f"the target mask holds {values.size} distinct labels ({values.min():g} to {values.max():g}); "
                            "every non-zero voxel is used as one region: pass one structure (labels == k), or "
                            "threshold a probability map first")
    return warnings


def _running(monitor: Monitor, fraction: float):
    """``progress(done, total)`` for the pass that computes the model output."""
    return lambda done, total: monitor.update(fraction, f"Running the model: window {done} of {total}")
