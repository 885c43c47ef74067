"""Perturbation-family attribution methods: occlusion, RISE, feature ablation and LIME.

Every method here only runs the model forward: perturbed inputs are built in batches of
``batch_size`` and evaluated under ``torch.no_grad()``, with a progress update (and cancel check)
after each batch. Randomness comes only from the run's seeded generator (``ctx.generator``), drawn
up front, so results do not depend on ``batch_size``.

Maps are raw and signed, on the input grid. Multi-channel inputs: unless ``per_channel`` is set, all
channels of a window/region are perturbed together and its attribution is split equally across the
channels (the channel-summed map holds the whole attribution); with ``per_channel`` each channel is
perturbed on its own, giving genuine per-channel maps at C times the cost.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError
from ..model import window_scores
from ..model.layout import fast_convolutions, to_channels_last
from .catalog.perturbation import (
    AdaptiveOcclusionParams,
    FeatureAblationParams,
    LimeParams,
    OcclusionParams,
    RiseParams,
)
from .context import MethodContext
from .gradient import make_baseline
from .regions import Regions, build_regions, coalition_inputs, paint, parse_triple

__all__ = [
    "occlusion",
    "rise",
    "feature_ablation",
    "lime",
    "perturbation_baseline",
    "run_batches",
    "weighted_linear_fit",
    "occlusion_geometry",
    "adaptive_occlusion",
    "BoxGrid",
    "occlude",
    "spearman",
    "regions_and_features",
    "region_values",
]


# ------------------------------------------------------------------------------------------------
# Shared machinery


def perturbation_baseline(ctx: MethodContext, kind: str, blur_sigma_mm: float = 8.0) -> torch.Tensor:
    """The value a perturbed voxel takes, (1, C, I, J, K) on the input's device.

    ``zeros``; ``min`` / ``mean``: each channel's minimum / mean; ``blur``: a Gaussian blur of the
    image with a width in mm (converted per axis with the voxel spacing).
    """
    x = ctx.x.detach()
    if kind == "mean":
        return x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x).clone()
    if kind in ("zeros", "min", "blur"):
        return make_baseline(ctx, kind, blur_sigma_mm)
    raise ParameterError(f"unknown baseline {kind!r}; use zeros, min, mean or blur")


def run_batches(
    ctx: MethodContext,
    n: int,
    batch_size: int,
    make_batch: Callable[[int, int], torch.Tensor],
    label: str,
    on_batch: Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]] = None,
    progress: tuple[float, float] = (0.0, 1.0),
    with_input: bool = False,
    input_item: Optional[int] = None,
) -> torch.Tensor:
    """Score `n` perturbed inputs, `batch_size` per forward pass, without autograd.

    Args:
        make_batch: ``(start, stop) -> (stop - start, C, I, J, K)`` perturbed inputs.
        label: progress message prefix.
        on_batch: called as ``on_batch(start, stop, inputs, scores)`` after each forward pass.
        progress: the part of the method's progress [0, 1] this loop covers.
        with_input: while the model output for the input is not known, the input itself joins the
            first batch as one more row: its output resolves the target and is kept as the model output
            (:meth:`MethodContext.observe`), in a call the method makes anyway, instead of a pass of its
            own (a batch of one runs slower per item on the CPU, too).
        input_item: the perturbed input of this index is the input itself (KernelSHAP's full
            coalition): its output is kept the same way.

    Returns:
        The scores of the `n` perturbed inputs, shape (n,), on the input's device.
    """
    lo, hi = progress
    scores = []
    batch_size = _budgeted(ctx, batch_size)
    lead = 1 if with_input and ctx.output is None else 0
    bounds, start = [], 0
    while start < n or (lead and not bounds):
        stop = min(start + batch_size - (lead if not bounds else 0), n)
        bounds.append((start, stop))
        start = stop
    ctx.monitor.update(lo, f"{label}: {n} perturbed inputs")
    with fast_convolutions(ctx.network, backward=False):  # every batch under no-grad or inference mode
        for index, (start, stop) in enumerate(bounds):
            row = 0 if lead and index == 0 else None
            if row is None and input_item is not None and start <= input_item < stop and ctx.output is None:
                row = input_item - start
            # the output kept for the input must stay usable with autograd: no inference mode for its batch
            with torch.inference_mode() if row is None else torch.no_grad():
                batch = make_batch(start, stop) if stop > start else ctx.x.detach()[:0]
                if lead and index == 0:
                    batch = torch.cat([ctx.x.detach(), batch])
                if not ctx.windowed:  # windows are laid out per window
                    batch = to_channels_last(batch)
                batch_scores = ctx.score(batch, input_row=row).reshape(-1).clone()
                if lead and index == 0:
                    batch, batch_scores = batch[1:], batch_scores[1:]
                if on_batch is not None and stop > start:
                    on_batch(start, stop, batch, batch_scores)
            scores.append(batch_scores.float())
            del batch
            ctx.monitor.update(lo + (hi - lo) * stop / max(n, 1), f"{label}: {stop}/{n} perturbed inputs")
    ctx.diagnostics["batch_size_used"] = batch_size
    return torch.cat(scores).clone() if scores else torch.zeros(0, device=ctx.x.device)


def _budgeted(ctx: MethodContext, batch_size: int) -> int:
    """`batch_size`, lowered to what the model's memory budget holds (see :mod:`MedXAILib.model.memory`)."""
    per_call = getattr(ctx.model, "inputs_per_call", None)
    return int(per_call(batch_size)) if per_call is not None else batch_size


def _score_input(ctx: MethodContext) -> torch.Tensor:
    """The target score of the unperturbed input, from the output the run already has (a batch that
    carried the input, see :func:`run_batches`), else from one pass over it."""
    with torch.no_grad():
        return ctx.scorer(ctx.input_output()).detach().reshape(-1)[0]


def weighted_linear_fit(
    features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> tuple[np.ndarray, float, float]:
    """Weighted least squares with an intercept, in float64 (``sklearn.linear_model.LinearRegression``).

    The design and targets are centred with the weighted means, scaled by sqrt(weight) and solved
    with the minimum-norm least-squares solver, so an under-determined fit (fewer samples than
    features) gives the minimum-norm coefficients instead of failing.

    Returns:
        (coefficients (F,), intercept, weighted R^2).
    """
    X = features.detach().cpu().double().numpy()
    y = targets.detach().cpu().double().numpy().reshape(-1)
    w = weights.detach().cpu().double().numpy().reshape(-1)
    w_sum = w.sum()
    x_mean = (w[:, None] * X).sum(0) / w_sum
    y_mean = float((w * y).sum() / w_sum)
    root = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(root[:, None] * (X - x_mean), root * (y - y_mean), rcond=None)
    intercept = y_mean - float(x_mean @ coef)
    residual = y - (X @ coef + intercept)
    total = float((w * (y - y_mean) ** 2).sum())
    r2 = 1.0 - float((w * residual**2).sum()) / total if total > 0 else 1.0
    return coef, intercept, r2


def regions_and_features(ctx: MethodContext, params, label: str) -> tuple[Regions, torch.Tensor, int]:
    ctx.monitor.update(0.0, f"{label}: building {params.regions} regions")
    regions = build_regions(ctx, params)
    labels = torch.as_tensor(regions.labels, device=ctx.x.device)
    n_features = regions.n * (ctx.x.shape[1] if params.per_channel else 1)
    ctx.diagnostics["regions"] = regions.describe()
    ctx.monitor.update(0.05, f"{label}: {regions.n} regions")
    return regions, labels, n_features


def region_values(regions: Regions, values: np.ndarray, n_channels: int, per_channel: bool) -> dict:
    """Per-structure values for the provenance when the regions are the labels of a label map."""
    if regions.values is None:
        return {}
    if not per_channel:
        return {str(v): float(a) for v, a in zip(regions.values, values)}
    per = np.asarray(values).reshape(n_channels, -1)
    return {
        f"{v}/channel{c}": float(per[c, r]) for c in range(n_channels) for r, v in enumerate(regions.values)
    }


# ------------------------------------------------------------------------------------------------
# Occlusion


def occlusion_geometry(
    ctx: MethodContext, params: OcclusionParams
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and stride in voxels: converted from mm if asked, clipped to the image (with a warning)."""
    shape = tuple(int(n) for n in ctx.x.shape[2:])
    if params.unit == "mm":
        spacing = np.asarray(ctx.spacing, dtype=np.float64)
        to_voxels = lambda mm: tuple(max(1, int(round(v / s))) for v, s in zip(mm, spacing))  # noqa: E731
        window = to_voxels(parse_triple(params.window, "window"))
        stride = to_voxels(parse_triple(params.stride, "stride"))
    else:
        window = parse_triple(params.window, "window", integer=True)
        stride = parse_triple(params.stride, "stride", integer=True)
    clipped = tuple(min(w, n) for w, n in zip(window, shape))
    if clipped != window:
        ctx.warn(f"occlusion window {window} voxels exceeds the image {shape}; clipped to {clipped}")
    window = clipped
    fixed = tuple(min(s, w) if w < n else s for s, w, n in zip(stride, window, shape))
    if fixed != stride:
        ctx.warn(f"occlusion stride {stride} voxels exceeds the window {window}, which would leave "
                 f"voxels never occluded; clipped to {fixed}")
    return window, fixed


def occlusion(ctx: MethodContext, params: OcclusionParams) -> torch.Tensor:
    """Occlusion sensitivity (Zeiler & Fergus, ECCV 2014, arXiv:1311.2901).

    A box of ``window`` voxels slides with ``stride`` (start positions 0, s, 2s, ... up to the first
    one reaching the far border, the last box clipped there, exactly as Captum's ``Occlusion``);
    inside the box the input takes the baseline. Each voxel's attribution is the mean of
    ``score(x) - score(x with the box occluded)`` over the boxes that cover it, so the map equals
    ``captum.attr.Occlusion`` with ``sliding_window_shapes=(C, *window)`` and ``strides=(1,
    *stride)`` divided by C (the value is split across the channels occluded together) or, with
    ``per_channel``, ``sliding_window_shapes=(1, *window)``, ``strides=(1, *stride)``.

    Speed: the boxes' score drops are spread onto the voxels with one transposed convolution (a
    box of ones at every position), perturbed inputs run in batches capped by the model's memory
    budget under ``torch.inference_mode``, in channels-last-3D layout where the network allows it.
    For a sliding-window segmenter and a logit target, each box runs only the windows that meet
    both the box and the target region (:mod:`MedXAILib.model.window_scores`; the same drops).
    """
    x = ctx.x.detach()
    n_channels = int(x.shape[1])
    window, stride = occlusion_geometry(ctx, params)
    boxes = BoxGrid(tuple(int(n) for n in x.shape[2:]), window, stride)
    map_channels = n_channels if params.per_channel else 1
    baseline = perturbation_baseline(ctx, params.baseline, params.blur_sigma_mm)
    ctx.monitor.update(0.0, f"Occlusion: {boxes.n} box positions")
    chosen = torch.ones((map_channels, *boxes.positions), dtype=torch.bool)
    drops = occlude(ctx, baseline, boxes, chosen, None, params.batch_size, "Occlusion")
    score = _score_input(ctx)
    attribution = boxes.spread(drops) / boxes.spread(chosen.to(drops.dtype))
    if not params.per_channel:
        attribution = (attribution / n_channels).expand(n_channels, *boxes.shape)
    ctx.diagnostics.update(
        window_voxels=list(window),
        stride_voxels=list(stride),
        n_windows=boxes.n,
        n_forward=boxes.n * map_channels,
        score_input=float(score),
    )
    return attribution.unsqueeze(0).contiguous()


class BoxGrid:
    """Occlusion boxes of `window` voxels every `stride` voxels (Captum's positions, last box clipped)."""

    def __init__(self, shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]):
        self.shape, self.window, self.stride = shape, window, stride
        self.positions = tuple(math.ceil((n - w) / s) + 1 for n, w, s in zip(shape, window, stride))
        self.n = int(np.prod(self.positions))

    def box(self, position: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(k * s, min(k * s + w, n)) for k, s, w, n in zip(position, self.stride, self.window,
                                                                          self.shape))

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """(M, *positions) per-box values -> (M, *shape): each voxel sums the boxes covering it.

        A transposed convolution with a box of ones places every value on its box at once.
        """
        kernel = torch.ones((1, 1, *self.window), dtype=values.dtype, device=values.device)
        out = F.conv_transpose3d(values.unsqueeze(1), kernel, stride=self.stride)
        return out[(slice(None), 0, *(slice(0, n) for n in self.shape))]

    def touching(self, mask: torch.Tensor) -> torch.Tensor:
        """(*positions) bool: the boxes that contain at least one voxel of the (*shape) `mask`."""
        full = tuple((p - 1) * s + w for p, s, w in zip(self.positions, self.stride, self.window))
        pads = [v for n, f in zip(reversed(self.shape), reversed(full)) for v in (0, f - n)]
        padded = F.pad(mask.float(), pads)
        hit = F.max_pool3d(padded[None, None], kernel_size=self.window, stride=self.stride)[0, 0]
        return hit[tuple(slice(0, p) for p in self.positions)] > 0


def occlude(ctx: MethodContext, baseline: torch.Tensor, boxes: BoxGrid, chosen: torch.Tensor,
            score: Optional[torch.Tensor], batch_size: int, label: str,
            progress: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Score drops ``score(x) - score(x with a box at the baseline)`` of the `chosen` boxes.

    Args:
        chosen: (M, *positions) bool; M is 1 (all channels occluded together) or C (one channel at a
            time, channel m of the box).
        score: ``score(x)``; None: from the model output for the input, which the first batch of
            boxes computes when it is not known yet (:func:`run_batches` with ``with_input``).

    Returns:
        (M, *positions) float32 drops, zero where not chosen.
    """
    x = ctx.x.detach()
    features = torch.nonzero(chosen.reshape(-1)).reshape(-1).tolist()
    per_channel = chosen.shape[0] > 1
    if ctx.windowed and window_scores.applies(ctx.model, ctx.scorer, x):
        return _occlude_windows(ctx, baseline, boxes, chosen, features, batch_size, label, progress)
    drops = torch.zeros(chosen.numel(), dtype=torch.float32, device=x.device)

    def where(feature: int) -> tuple:
        channel, box = divmod(feature, boxes.n)
        spatial = boxes.box(tuple(int(k) for k in np.unravel_index(box, boxes.positions)))
        return (slice(channel, channel + 1) if per_channel else slice(None),) + spatial

    def make_batch(start: int, stop: int) -> torch.Tensor:
        batch = x.expand(stop - start, *x.shape[1:]).clone()
        for item, feature in enumerate(features[start:stop]):
            index = where(feature)
            batch[(item,) + index] = baseline[(0,) + index]
        return batch

    known = {"score": score}

    def keep(start: int, stop: int, _batch: torch.Tensor, scores: torch.Tensor) -> None:
        if known["score"] is None:  # the first batch carried the input
            known["score"] = _score_input(ctx)
        drops[features[start:stop]] = (known["score"] - scores).float()

    run_batches(ctx, len(features), batch_size, make_batch, label, keep, progress=progress,
                with_input=score is None)
    return drops.reshape(chosen.shape)


def _occlude_windows(ctx: MethodContext, baseline: torch.Tensor, boxes: BoxGrid, chosen: torch.Tensor,
                     features: list[int], batch_size: int, label: str,
                     progress: tuple[float, float]) -> torch.Tensor:
    """:func:`occlude` for a sliding-window segmenter and a linear target: per box, only the windows
    that meet both the box and the target region run (exact; see :mod:`MedXAILib.model.window_scores`)."""
    local = ctx.cache.get("local_windows")
    if local is None:  # adaptive occlusion calls this several times on one input
        per_call = window_scores.windows_per_call(ctx.model, batch_size)
        local = ctx.cache["local_windows"] = window_scores.LocalWindowScores(ctx.model, ctx.x, ctx.scorer,
                                                                             per_call)
    lo, hi = progress
    drops = torch.zeros(chosen.numel(), dtype=torch.float64)
    per_channel = chosen.shape[0] > 1
    for channel in range(chosen.shape[0]):
        mine = [f for f in features if f // boxes.n == channel]
        if not mine:
            continue
        spatial = [boxes.box(tuple(int(k) for k in np.unravel_index(f % boxes.n, boxes.positions)))
                   for f in mine]

        def report(done: int, total: int, _c=channel) -> None:
            share = (_c + done / max(total, 1)) / chosen.shape[0]
            ctx.monitor.update(lo + (hi - lo) * share, f"{label}: window {done} of {total}")

        drops[mine] = local.drops(spatial, baseline, channel if per_channel else None, report)
    ctx.diagnostics.update(windows_run=local.windows_run, windows_weighted=len(local.weighted),
                           windows_per_input=local.plan.n_windows)
    return drops.to(torch.float32).to(ctx.x.device).reshape(chosen.shape)


#: Share of the exhaustive map's peak |relevance| above which a voxel counts as relevant (a diagnostic).
RELEVANT_FRACTION = 0.01


def adaptive_occlusion(ctx: MethodContext, params: AdaptiveOcclusionParams) -> torch.Tensor:
    """Coarse-to-fine occlusion: exhaustive occlusion where it matters, a coarse map elsewhere.

    Occlusion sensitivity (Zeiler & Fergus, ECCV 2014, arXiv:1311.2901) evaluated on a coarse grid
    first and refined only where the coarse map is relevant (MedXAI's schedule):

    1. Coarse pass: :func:`occlusion` with ``window * coarse_factor`` and ``stride * coarse_factor``.
    2. The ``refine_fraction`` of coarse boxes with the largest ``|score drop|`` (non-zero only) make
       the region to refine (the union of their boxes).
    3. Fine pass: every fine box (``window``, ``stride``) that touches that region.
    4. Voxels all of whose covering fine boxes were run get the exact fine value (identical to
       :func:`occlusion` there); every other voxel keeps its coarse value.

    Forward passes: the coarse boxes plus the refined fine boxes, against all fine boxes for the
    exhaustive map (both recorded). With ``compare_exhaustive`` the remaining fine boxes are run as
    well and the Spearman rank correlation between this map and the exhaustive one is recorded
    (``spearman_exhaustive``, over all voxels; a validation, not a speed-up), and also over the
    voxels whose exhaustive |relevance| is at least :data:`RELEVANT_FRACTION` of its maximum
    (``spearman_exhaustive_relevant``, with ``relevant_voxel_fraction``). Channels are occluded
    together.
    """
    x = ctx.x.detach()
    n_channels = int(x.shape[1])
    shape = tuple(int(n) for n in x.shape[2:])
    window, stride = occlusion_geometry(ctx, params)
    factor = int(params.coarse_factor)
    coarse_window = tuple(min(w * factor, n) for w, n in zip(window, shape))
    coarse_stride = tuple(min(s * factor, w) for s, w in zip(stride, coarse_window))
    fine, coarse = BoxGrid(shape, window, stride), BoxGrid(shape, coarse_window, coarse_stride)
    baseline = perturbation_baseline(ctx, params.baseline, params.blur_sigma_mm)

    ctx.monitor.update(0.0, f"Adaptive occlusion: {coarse.n} coarse boxes")
    every = torch.ones((1, *coarse.positions), dtype=torch.bool)
    coarse_drops = occlude(ctx, baseline, coarse, every, None, params.batch_size,
                           "Adaptive occlusion (coarse)",
                           progress=(0.0, 0.3))
    score = _score_input(ctx)  # known from the coarse pass's first batch
    coarse_map = coarse.spread(coarse_drops) / coarse.spread(every.float())

    magnitude = coarse_drops.abs().reshape(-1)
    k = min(int(math.ceil(params.refine_fraction * coarse.n)), int((magnitude > 0).sum()))
    region = torch.zeros(shape, dtype=torch.bool, device=x.device)
    if k > 0:
        for index in torch.topk(magnitude, k).indices.tolist():
            region[coarse.box(tuple(int(v) for v in np.unravel_index(index, coarse.positions)))] = True
    chosen = fine.touching(region).unsqueeze(0).cpu()
    fine_drops = occlude(ctx, baseline, fine, chosen, score, params.batch_size, "Adaptive occlusion (fine)",
                         progress=(0.3, 0.95 if params.compare_exhaustive else 1.0))
    covered = fine.spread(chosen.to(fine_drops.dtype).to(x.device))
    coverage = fine.spread(torch.ones((1, *fine.positions), dtype=fine_drops.dtype, device=x.device))
    fine_total = fine.spread(fine_drops)
    exact = covered == coverage
    attribution = torch.where(exact, fine_total / coverage, coarse_map)
    n_refined = int(chosen.sum())
    ctx.diagnostics.update(
        window_voxels=list(window), stride_voxels=list(stride), coarse_window_voxels=list(coarse_window),
        coarse_stride_voxels=list(coarse_stride), n_coarse_boxes=coarse.n, n_refined_boxes=n_refined,
        n_forward=coarse.n + n_refined, n_forward_exhaustive=fine.n,
        refined_voxel_fraction=float(exact.float().mean()), score_input=float(score),
    )
    if params.compare_exhaustive:
        rest = ~chosen
        rest_drops = occlude(ctx, baseline, fine, rest, score, params.batch_size,
                             "Adaptive occlusion (exhaustive check)", progress=(0.95, 1.0))
        exhaustive = (fine_total + fine.spread(rest_drops)) / coverage
        relevant = exhaustive.abs() >= RELEVANT_FRACTION * exhaustive.abs().max()
        ctx.diagnostics.update(
            spearman_exhaustive=spearman(attribution, exhaustive),
            spearman_exhaustive_relevant=spearman(attribution[relevant], exhaustive[relevant]),
            relevant_voxel_fraction=float(relevant.float().mean()))
    return (attribution / n_channels).expand(n_channels, *shape).unsqueeze(0).contiguous()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (ties get their mean rank), as ``scipy.stats.spearmanr``."""
    from scipy.stats import spearmanr

    value = spearmanr(a.detach().cpu().double().numpy().reshape(-1),
                      b.detach().cpu().double().numpy().reshape(-1))
    result = float(value.statistic if hasattr(value, "statistic") else value[0])
    return result if np.isfinite(result) else 1.0 if torch.equal(a, b) else 0.0


# ------------------------------------------------------------------------------------------------
# RISE


def rise(ctx: MethodContext, params: RiseParams) -> torch.Tensor:
    """RISE (Petsiuk, Das, Saenko, BMVC 2018, arXiv:1806.07421).

    ``n_masks`` binary grids of ``cells`` cells per axis (each cell kept with probability ``p``)
    are upsampled trilinearly to ``(cells + 1) * cell_size`` voxels per axis (``cell_size =
    ceil(size / cells)``) and cropped at a random shift in ``[0, cell_size)``, giving smooth masks
    ``m_i`` in [0, 1]. The masked input is ``x * m + b * (1 - m)`` (``b`` the baseline; zeros is the
    paper's ``x * m``). The saliency is the paper's Monte-Carlo estimate

        S = sum_i score(x_i) * m_i / (N * p),

    i.e. the expected score given that a voxel is kept, normalised by E[m] = p. It is not a
    difference to a reference: a model whose score ignores the input gives a constant map equal to
    that score, and every map carries an offset of about the mean score (recorded as
    ``mean_score``). All grids and shifts are drawn up front from the seeded generator.
    """
    x = ctx.x.detach()
    n_channels, shape = int(x.shape[1]), tuple(int(n) for n in x.shape[2:])
    n, cells, p = int(params.n_masks), int(params.cells), float(params.probability)
    mask_channels = n_channels if params.per_channel else 1
    cell_size = [math.ceil(size / cells) for size in shape]
    up_shape = [(cells + 1) * c for c in cell_size]
    grids = torch.rand((n, mask_channels, cells + 1, cells + 1, cells + 1), generator=ctx.generator) < p
    shifts = torch.stack([torch.randint(0, c, (n,), generator=ctx.generator) for c in cell_size], dim=1)
    baseline = perturbation_baseline(ctx, params.baseline, params.blur_sigma_mm)
    saliency = torch.zeros((mask_channels, *shape), dtype=torch.float64, device=x.device)
    masks: dict[str, torch.Tensor] = {}

    def make_batch(start: int, stop: int) -> torch.Tensor:
        low = grids[start:stop].to(device=x.device, dtype=x.dtype)
        up = F.interpolate(low, size=up_shape, mode="trilinear", align_corners=False)
        m = torch.stack([
            up[i, :, a : a + shape[0], b : b + shape[1], c : c + shape[2]]
            for i, (a, b, c) in enumerate(shifts[start:stop].tolist())
        ])
        masks["current"] = m
        return x * m + baseline * (1 - m)

    def accumulate(start: int, stop: int, _batch: torch.Tensor, scores: torch.Tensor) -> None:
        m = masks.pop("current")
        saliency.add_((scores.view(-1, 1, 1, 1, 1).to(m.dtype) * m).sum(0).double())

    scores = run_batches(ctx, n, params.batch_size, make_batch, "RISE", accumulate, with_input=True)
    saliency /= n * p
    attribution = saliency.float()
    if not params.per_channel:
        attribution = (attribution / n_channels).expand(n_channels, *shape)
    ctx.diagnostics.update(
        n_masks=n,
        cell_size_voxels=cell_size,
        mean_score=float(scores.double().mean()),
        score_input=float(_score_input(ctx)),
    )
    return attribution.unsqueeze(0).contiguous()


# ------------------------------------------------------------------------------------------------
# Feature ablation over regions


def feature_ablation(ctx: MethodContext, params: FeatureAblationParams) -> torch.Tensor:
    """Feature ablation over regions (Captum ``FeatureAblation`` with a feature mask).

    The attribution of a region is ``score(x) - score(x with the region replaced by the
    baseline)``, painted on every voxel of the region (it is the region's value, not a density).
    On a model additive over regions the regions' values sum to ``score(x) - score(baseline)``.
    Occlusion of regions is the idea of Zeiler & Fergus (ECCV 2014, arXiv:1311.2901). For label-map
    regions the value of every structure is recorded in the provenance (``region_values``).
    """
    x = ctx.x.detach()
    n_channels = int(x.shape[1])
    regions, labels, n_features = regions_and_features(ctx, params, "Feature ablation")
    baseline = perturbation_baseline(ctx, params.baseline, params.blur_sigma_mm)

    def make_batch(start: int, stop: int) -> torch.Tensor:
        z = torch.ones((stop - start, n_features), device=x.device)
        z[torch.arange(stop - start), torch.arange(start, stop)] = 0
        return coalition_inputs(x, baseline, labels, z, params.per_channel)

    scores = run_batches(ctx, n_features, params.batch_size, make_batch, "Feature ablation",
                         progress=(0.05, 1.0), with_input=True)
    score = _score_input(ctx)  # the input rode in the first batch
    drops = (score - scores).float()
    values = region_values(regions, drops.cpu().numpy(), n_channels, params.per_channel)
    ctx.diagnostics.update(score_input=float(score), n_features=n_features)
    if values:
        ctx.diagnostics["region_values"] = values
    return paint(drops, labels, n_channels, params.per_channel)


# ------------------------------------------------------------------------------------------------
# LIME over regions


def _similarity(x: torch.Tensor, batch: torch.Tensor, distance: str, kernel_width: float) -> torch.Tensor:
    """Captum's default LIME kernel exp(-d^2 / (2 width^2)) between the input and each perturbed input."""
    flat_x = x.reshape(1, -1).float()
    flat = batch.reshape(batch.shape[0], -1).float()
    if distance == "cosine":
        d = 1 - F.cosine_similarity(flat, flat_x, dim=1)
    else:
        d = torch.linalg.vector_norm(flat - flat_x, dim=1)
    return torch.exp(-(d.double() ** 2) / (2 * kernel_width**2))


def lime(ctx: MethodContext, params: LimeParams) -> torch.Tensor:
    """LIME over regions (Ribeiro, Singh, Guestrin, KDD 2016, arXiv:1602.04938).

    ``n_samples`` coalitions are drawn with every region present with probability 1/2 (one
    ``torch.bernoulli`` draw of shape (1, F) per sample from the seeded generator, as Captum's
    ``Lime`` draws them from the global one); absent regions take the baseline. Each sample is
    weighted by ``exp(-d^2 / (2 kernel_width^2))`` with ``d`` the cosine (or Euclidean) distance
    between the input and the perturbed input (Captum's default similarity), and a weighted linear
    regression with an intercept is fitted from presence indicators to scores. Each region's
    coefficient is painted on its voxels (raw, signed). Captum's default surrogate is a Lasso
    (alpha 0.01); MedXAI fits plain weighted least squares (minimum-norm when under-determined),
    equal to Captum with ``interpretable_model=SkLearnLinearRegression()``. The fit's weighted R^2
    is recorded as ``surrogate_r2``.
    """
    x = ctx.x.detach()
    n_channels = int(x.shape[1])
    regions, labels, n_features = regions_and_features(ctx, params, "LIME")
    n = int(params.n_samples)
    half = torch.ones(1, n_features) * 0.5
    coalitions = torch.cat([torch.bernoulli(half, generator=ctx.generator) for _ in range(n)]).long()
    if n < n_features + 1:
        ctx.warn(f"LIME: {n} samples for {n_features} features under-determine the fit (minimum-norm "
                 "solution); raise n_samples or use fewer regions")
    baseline = perturbation_baseline(ctx, params.baseline, params.blur_sigma_mm)
    similarities = torch.zeros(n, dtype=torch.float64)

    def make_batch(start: int, stop: int) -> torch.Tensor:
        return coalition_inputs(x, baseline, labels, coalitions[start:stop].to(x.device), params.per_channel)

    def weigh(start: int, stop: int, batch: torch.Tensor, _scores: torch.Tensor) -> None:
        similarities[start:stop] = _similarity(x, batch, params.distance, params.kernel_width).cpu()

    scores = run_batches(ctx, n, params.batch_size, make_batch, "LIME", weigh, progress=(0.05, 0.99),
                         with_input=True)
    if not float(similarities.max()) > 0:
        raise ParameterError(
            f"LIME: every sample's similarity weight is 0 with kernel_width={params.kernel_width} and the "
            f"{params.distance} distance; raise kernel_width"
        )
    coef, intercept, r2 = weighted_linear_fit(coalitions.float(), scores.float(), similarities)
    values = region_values(regions, coef, n_channels, params.per_channel)
    ctx.diagnostics.update(surrogate_r2=r2, surrogate_intercept=intercept, n_features=n_features,
                           n_samples=n)
    if values:
        ctx.diagnostics["region_values"] = values
    coef_t = torch.as_tensor(coef, dtype=torch.float32, device=x.device)
    return paint(coef_t, labels, n_channels, params.per_channel)
