"""`explain()`: one call from an image, a model, a method and a target to an :class:`Attribution`."""

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
from .monitor import Monitor
from .params import make_params, params_to_dict
from .provenance import library_versions, summarise_prediction, timestamp
from .scoring import resolve_target
from .target import Target
from .volume import ImageVolume

__all__ = ["explain"]


def explain(
    image: ImageVolume | str | Path,
    model: ModelAdapter | torch.nn.Module | str | Path,
    method: str = "integrated_gradients",
    target: Optional[Target] = None,
    params: Optional[Mapping[str, Any] | Any] = None,
    device: Optional[str] = None,
    monitor: Optional[Monitor] = None,
    seed: int = 0,
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
    adapter = model if isinstance(model, ModelAdapter) else load_model(model, device=device or "auto")
    if device is not None:
        adapter.to(resolve_device(device))
    adapter.check_input(image.n_channels)
    target = target or Target()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    monitor.update(0.0, "Running the model on the input")
    bound = adapter.bind(image.affine, image.shape)
    x = torch.as_tensor(image.array, device=adapter.device).unsqueeze(0)
    with torch.no_grad():
        output = bound(x)
    if adapter.class_names and len(adapter.class_names) != output.shape[1]:
        raise ModelError(
            f"the model declares {len(adapter.class_names)} class names but returns {output.shape[1]} channels"
        )
    if info.tasks and adapter.task not in info.tasks:
        raise TargetError(f"method '{info.name}' does not support {adapter.task} models")
    scorer = resolve_target(target, output, adapter.task, adapter.output_activation, spacing=image.spacing)

    ctx = MethodContext(x=x, model=bound, scorer=scorer, image=image, monitor=monitor, generator=generator)
    with monitor.stage(0.02, 1.0):
        result = info.load()(ctx, params)
    array = result[0].detach().float().cpu().numpy()
    if not np.all(np.isfinite(array)):
        raise ModelError(f"method '{info.name}' produced non-finite values; the model may be unstable on this input")

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
        "seconds": round(time.perf_counter() - started, 4),
        "created": timestamp(),
    }
    monitor.update(1.0, f"{info.title}: done")
    return Attribution(array=array, affine=image.affine.copy(), provenance=provenance)
