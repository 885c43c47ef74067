"""Cascading model-parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

An explanation that reflects what the model learned must change when the learned weights are
destroyed. The test re-initialises the network's parameterised layers cumulatively from the output
towards the input, explains the same target after each stage, and measures how similar the map
still is to the original (Spearman rank correlation of signed and absolute maps, and 3D SSIM of the
absolute maps). A method whose map stays similar after all layers are random is insensitive to the
model: it shows the image, not the model's reasoning.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ..engine import explain
from ..model import ModelAdapter
from ..monitor import Monitor
from ..scoring import resolve_target
from ..target import Target
from ..volume import ImageVolume

__all__ = ["RandomisationStep", "cascading_randomisation", "map_similarity", "parameterised_layers"]


@dataclass
class RandomisationStep:
    """Similarity of the map after randomising `layers_randomised` of `layers_total` layers."""

    stage: int
    layers_randomised: int
    layers_total: int
    last_layer: str
    spearman: float
    spearman_abs: float
    ssim_abs: float


def map_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation (signed and absolute) and SSIM of the absolute maps scaled to [0, 1]."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = {}
    for key, (x, y) in {"spearman": (a, b), "spearman_abs": (np.abs(a), np.abs(b))}.items():
        flat_x, flat_y = x.ravel(), y.ravel()
        constant = np.ptp(flat_x) == 0 or np.ptp(flat_y) == 0
        out[key] = 0.0 if constant else float(spearmanr(flat_x, flat_y).statistic)
    x, y = (_unit(np.abs(m.sum(axis=0) if m.ndim == 4 else m)) for m in (a, b))
    window = max(3, min(7, *(n if n % 2 else n - 1 for n in x.shape)))
    out["ssim_abs"] = float(structural_similarity(x, y, data_range=1.0, win_size=window))
    return out


def _unit(m: np.ndarray) -> np.ndarray:
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def parameterised_layers(network: torch.nn.Module, example: torch.Tensor) -> list[str]:
    """Names of leaf modules with parameters, in the order a forward pass runs them."""
    order: list[str] = []
    handles = []
    for name, module in network.named_modules():
        if name and not list(module.children()) and any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: order.append(n)
                                                        if n not in order else None))
    try:
        with torch.no_grad():
            network(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-initialise one layer's parameters from its own initialiser (or a scaled normal)."""
    if hasattr(module, "reset_parameters"):
        state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        try:
            module.reset_parameters()
        finally:
            torch.random.set_rng_state(state)
        if isinstance(module, torch.nn.modules.batchnorm._NormBase) and module.affine:
            # reset_parameters sets norm weights to 1 and biases to 0; randomise them too
            with torch.no_grad():
                module.weight.normal_(1.0, 0.5, generator=generator)
                module.bias.normal_(0.0, 0.5, generator=generator)
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.normal_(0.0, float(p.std()) if p.numel() > 1 else 1.0, generator=generator)


def cascading_randomisation(
    image: ImageVolume,
    model: ModelAdapter,
    method: str,
    target: Optional[Target] = None,
    params: Optional[Mapping[str, Any]] = None,
    stages: int = 5,
    seed: int = 0,
    monitor: Optional[Monitor] = None,
) -> tuple[np.ndarray, list[RandomisationStep]]:
    """Run the cascading randomisation test for one method.

    The target is fixed from the trained model (its class and, for segmenters, its region as a
    mask), so every stage explains the same quantity. Layers are grouped into `stages` cumulative
    steps from the output backwards; the user's model is never modified (a deep copy is randomised).

    Returns:
        The original map and one :class:`RandomisationStep` per stage.
    """
    monitor = monitor or Monitor()
    target = _fixed_target(image, model, target or Target())
    with monitor.stage(0.0, 1.0 / (stages + 1)):
        original = explain(image, model, method, target, params, seed=seed, monitor=monitor).array
    network = copy.deepcopy(model.network)
    randomised = dataclasses.replace(model, network=network)
    layers = parameterised_layers(network, _example_input(image, model))
    modules = dict(network.named_modules())
    bounds = np.linspace(0, len(layers), stages + 1).round().astype(int)[1:]
    generator = torch.Generator().manual_seed(seed)
    steps, done = [], 0
    for stage, upto in enumerate(bounds, start=1):
        for name in reversed(layers[len(layers) - upto:len(layers) - done]):
            _randomise(modules[name], generator)
        done = upto
        with monitor.stage(stage / (stages + 1), (stage + 1) / (stages + 1)):
            attribution = explain(image, randomised, method, target, params, seed=seed, monitor=monitor).array
        similarity = map_similarity(original, attribution)
        steps.append(RandomisationStep(stage, int(upto), len(layers), layers[len(layers) - upto], **similarity))
    return original, steps


def _example_input(image: ImageVolume, model: ModelAdapter) -> torch.Tensor:
    """What the network sees: the preprocessed image, or one ROI of zeros for sliding-window models."""
    if model.roi_size is not None:
        return torch.zeros((1, image.n_channels, *model.roi_size), device=model.device)
    x = torch.as_tensor(image.array, device=model.device)[None]
    return model.preprocessing.apply(x, model.bind(image.affine, image.shape, image.array).grids)


def _fixed_target(image: ImageVolume, model: ModelAdapter, target: Target) -> Target:
    bound = model.bind(image.affine, image.shape, image.array)
    with torch.no_grad():
        output = bound(torch.as_tensor(image.array, device=model.device)[None])
    scorer = resolve_target(target, output, model.task, model.output_activation, spacing=image.spacing)
    if model.task == "classification":
        return dataclasses.replace(target, class_index=scorer.class_index)
    mask = scorer.region.bool().cpu().numpy()
    return Target(class_index=scorer.class_index, region="mask", mask=mask, score=target.score,
                  reduction=target.reduction)
