"""Segmentation-boundary saliency: signed distances, boundary bands, relevance profiles, uncertainty.

A segmenter's decision is made at the structure's surface. This module measures everything in mm
with the grid's true (possibly anisotropic) spacing:

- :func:`signed_distance_mm`: signed distance of every voxel centre to the structure's surface;
- :func:`boundary_band`: the voxels within ``inner_mm`` inside / ``outer_mm`` outside the surface
  (the region of a ``Target(region="boundary")``);
- :func:`relevance_profile`: relevance statistics in distance bins across the surface;
- :func:`boundary_uncertainty`: test-time-flip and Monte-Carlo-dropout ensembles of the class
  probability (mean, predictive entropy, variance);
- :func:`plot_profile`: an optional PNG of a profile (matplotlib).

**Surface convention.** The structure is the union of its voxels, each a box of size ``spacing``
centred on the voxel centre; its surface is made of the voxel faces between structure and
background voxels, half a voxel from the centres on either side. The signed distance of a voxel
centre is its Euclidean distance (mm) to that surface, negative inside, positive outside; it is
never 0 at a centre (face-adjacent centres lie at -s/2 and +s/2), and 0 is the surface itself. It
is exact, anisotropic spacing included: the nearest point of a voxel box to a voxel centre lies on
the half-voxel lattice, so SciPy's Euclidean distance transform (``sampling=spacing / 2``) on that
lattice gives it; bands and profiles, which need only a few mm, use an equivalent windowed
separable transform on the structure's neighbourhood. For a voxelised sphere of radius R the
result differs from ``|x - c| - R`` by less than a voxel (the voxel staircase, not the method).
The edge of the grid is not a surface: what lies beyond it is unknown.

Only numpy at import time; SciPy, torch and matplotlib load on use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from .errors import InputError, ModelError, ParameterError, TargetError
from .monitor import Monitor
from .volume import ImageVolume

if TYPE_CHECKING:  # pragma: no cover
    from .model import ModelAdapter

__all__ = [
    "signed_distance_mm",
    "boundary_band",
    "relevance_profile",
    "boundary_uncertainty",
    "predicted_structure",
    "plot_profile",
    "PROFILE_COLUMNS",
    "UNCERTAINTY_MAPS",
]

#: Columns of :func:`relevance_profile`, in order.
PROFILE_COLUMNS = ("distance_mm", "voxels", "mean", "p5", "p25", "p50", "p75", "p95")
#: Keys of :func:`boundary_uncertainty`'s result, in order (also the channel order the CLI writes).
UNCERTAINTY_MAPS = ("probability", "entropy", "variance")


# ------------------------------------------------------------------------------------------------
# Validation


def _spacing(spacing: Sequence[float]) -> np.ndarray:
    try:
        values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.zeros(0)
    if values.size != 3 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"spacing must be three positive voxel sizes in mm; got {spacing!r}")
    return values


def _mask(mask: Any, what: str = "mask") -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise InputError(f"the {what} must be a 3D (I, J, K) array; got shape {array.shape}")
    return array.astype(bool)


def _structure(mask: Any) -> np.ndarray:
    """A boolean structure with both inside and outside voxels (else it has no surface)."""
    structure = _mask(mask, "structure mask")
    if not structure.any():
        raise InputError("the structure mask is empty, so it has no surface to measure distances from")
    if structure.all():
        raise InputError("the structure mask fills the whole grid, so it has no surface inside the image")
    return structure


def _map3d(attribution_map: Any, shape: Optional[tuple[int, ...]] = None) -> np.ndarray:
    """An (I, J, K) float64 relevance map; a (C, I, J, K) map is summed over channels (as displayed)."""
    array = np.asarray(attribution_map)
    if array.ndim == 4:
        array = array.sum(axis=0, dtype=np.float64)
    if array.ndim != 3:
        raise InputError(f"an attribution map must be (I, J, K) or (C, I, J, K); got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise InputError(f"an attribution map must be numeric; got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if shape is not None and array.shape != tuple(shape):
        raise InputError(f"the attribution map has shape {array.shape} but the mask/labels have "
                         f"{tuple(shape)}; resample the labels onto the map's grid first")
    if not np.all(np.isfinite(array)):
        raise InputError("the attribution map holds NaN or infinite values")
    return array


def _thickness(value: float, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number of mm; got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{what} must be a finite thickness >= 0 mm; got {value}")
    return value


# ------------------------------------------------------------------------------------------------
# Distances


#: Slack (mm) in distance comparisons, so float rounding never moves a voxel across a band edge.
_EPS_MM = 1e-9


def _lattice_distance(region: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Exact distance (mm) from the centres of `region` to the boxes of the other voxels (0 off `region`).

    The point of a box nearest to a voxel centre has coordinates on the half-voxel lattice (the
    clamp of a centre onto a box is a centre, face, edge or corner coordinate per axis), so the
    distance to the union of boxes is the Euclidean distance transform, on the lattice of spacing
    s/2, to the box points of the other voxels (their centres dilated by one half-step per axis).
    Costs about 8x a plain distance transform of the grid.
    """
    from scipy import ndimage

    # index 2p is the centre of voxel p; odd indices are face, edge and corner coordinates. Box points
    # beyond the grid's outer faces are never the nearest point to a centre inside, so 2n - 1 suffice.
    lattice = np.zeros(tuple(2 * n - 1 for n in region.shape), dtype=bool)
    lattice[::2, ::2, ::2] = ~region
    for axis in range(3):  # separable 3x3x3 dilation
        grown = lattice.copy()
        ahead, behind = [slice(None)] * 3, [slice(None)] * 3
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        grown[tuple(ahead)] |= lattice[tuple(behind)]
        grown[tuple(behind)] |= lattice[tuple(ahead)]
        lattice = grown
    distance = ndimage.distance_transform_edt(~lattice, sampling=spacing / 2)[::2, ::2, ::2]
    return np.where(region, distance, 0.0)


def _windowed_distance(region: np.ndarray, spacing: np.ndarray, reach_mm: float) -> np.ndarray:
    """Like :func:`_lattice_distance` where the distance is <= `reach_mm`, +inf beyond (0 off `region`).

    The squared distance to the nearest box, ``min_q sum_a ((|p_a - q_a| - 1/2)+ s_a)^2``, is separable,
    so three 1D min-plus passes compute it exactly; a box farther than `reach_mm` along one axis is
    farther in total, so each pass needs only offsets up to ``reach_mm / s_a + 1/2`` voxels. Cheap
    for the few-mm bands and profiles it serves.
    """
    squared = np.where(region, np.inf, 0.0)
    for axis in range(3):
        s = float(spacing[axis])
        steps = min(int(math.floor(reach_mm / s + 0.5 + _EPS_MM)), region.shape[axis] - 1)
        out = squared.copy()
        for k in range(1, steps + 1):
            cost = ((k - 0.5) * s) ** 2  # to the near face of a box k voxels away along this axis
            ahead, behind = [slice(None)] * 3, [slice(None)] * 3
            ahead[axis], behind[axis] = slice(k, None), slice(None, -k)
            ahead, behind = tuple(ahead), tuple(behind)
            np.minimum(out[behind], squared[ahead] + cost, out=out[behind])
            np.minimum(out[ahead], squared[behind] + cost, out=out[ahead])
        squared = out
    distance = np.sqrt(squared)
    distance[distance > reach_mm + _EPS_MM] = np.inf
    return distance


def _bounding_box(mask: np.ndarray) -> list[tuple[int, int]]:
    found = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    return [(int(f[0]), int(f[-1])) for f in found]


def _crop(structure: np.ndarray, spacing: np.ndarray, reach_mm: float) -> tuple[slice, ...]:
    """The structure's bounding box grown by `reach_mm` (plus one voxel) per axis, inside the grid.

    A box within `reach_mm` of a voxel centre is at most ``reach_mm / s + 1/2`` voxels away along
    each axis, so every voxel within `reach_mm` of the surface, and every box it can reach, lies in
    the crop: distances up to `reach_mm` on the crop equal those on the whole grid.
    """
    slices = []
    for axis, (first, last) in enumerate(_bounding_box(structure)):
        margin = int(math.ceil(reach_mm / spacing[axis])) + 1
        slices.append(slice(max(first - margin, 0), min(last + margin + 1, structure.shape[axis])))
    return tuple(slices)


def _signed_near(structure: np.ndarray, spacing: np.ndarray, reach_mm: float) -> tuple[np.ndarray, tuple]:
    """Exact signed distances up to `reach_mm` (+-inf beyond) on a crop holding every voxel that near."""
    # The surface of a structure is that of its complement: crop around whichever side is smaller
    # (a background's own bounding box is the whole grid).
    size = {side: np.prod([b - a + 1 for a, b in _bounding_box(side_mask)])
            for side, side_mask in (("structure", structure), ("complement", ~structure))}
    flip = size["complement"] < size["structure"]
    side = ~structure if flip else structure
    box = _crop(side, spacing, reach_mm)
    part = side[box]
    signed = np.where(part, -_windowed_distance(part, spacing, reach_mm),
                      _windowed_distance(~part, spacing, reach_mm))
    return (-signed if flip else signed), box


def signed_distance_mm(
    mask: np.ndarray, spacing: Sequence[float], max_mm: Optional[float] = None
) -> np.ndarray:
    """Signed distance (mm) of every voxel centre to a structure's surface.

    Negative inside the structure, positive outside, 0 on the surface (the voxel faces between
    structure and background, see the module docstring): face-adjacent voxel centres lie at
    ``-s/2`` (inside) and ``+s/2`` (outside) for the spacing ``s`` across that face. Exact: the
    Euclidean distance to the nearest point of the other side's voxel boxes.

    Args:
        mask: boolean (I, J, K) structure (non-zero = inside).
        spacing: voxel size in mm along I, J, K (``ImageVolume.spacing``); anisotropy is exact.
        max_mm: when given, only distances up to `max_mm` are computed (much cheaper on large grids)
            and farther voxels get ``-inf`` (inside) or ``+inf`` (outside). By default every
            distance is computed, which needs about 8x the memory and time of a plain distance
            transform of the grid.

    Returns:
        (I, J, K) float64 distances in mm.

    Raises:
        InputError: the mask is not 3D, is empty or fills the grid, the spacing is not three
            positive numbers, or `max_mm` is negative.
    """
    structure, spacing = _structure(mask), _spacing(spacing)
    if max_mm is None:
        inside, outside = _lattice_distance(structure, spacing), _lattice_distance(~structure, spacing)
        return np.where(structure, -inside, outside)
    reach = _thickness(max_mm, "max_mm")
    signed, box = _signed_near(structure, spacing, reach)
    out = np.where(structure, -np.inf, np.inf)
    out[box] = signed
    return out


def boundary_band(mask: np.ndarray, spacing: Sequence[float], inner_mm: float, outer_mm: float) -> np.ndarray:
    """The voxels whose centres lie within `inner_mm` inside or `outer_mm` outside the surface.

    That is ``-inner_mm <= signed_distance_mm(mask, spacing) <= outer_mm``. With spacing ``s``
    across a flat surface the band holds ``floor(inner_mm / s + 1/2)`` voxel layers inside and
    ``floor(outer_mm / s + 1/2)`` outside (the n-th layer's centre lies (n - 1/2) s from the
    face), so where the thickness is a multiple of the spacing the band is exactly that many mm
    thick along every axis, whatever the anisotropy.

    Args:
        mask: boolean (I, J, K) structure.
        spacing: voxel size in mm along I, J, K.
        inner_mm: band thickness inside the structure (mm, >= 0).
        outer_mm: band thickness outside the structure (mm, >= 0).

    Returns:
        Boolean (I, J, K) band (computed on the structure's neighbourhood only, so it is cheap for
        small structures on large grids).

    Raises:
        InputError: bad mask or spacing (see :func:`signed_distance_mm`), or a negative thickness.
    """
    structure, spacing = _structure(mask), _spacing(spacing)
    inner, outer = _thickness(inner_mm, "inner_mm"), _thickness(outer_mm, "outer_mm")
    signed, box = _signed_near(structure, spacing, max(inner, outer))
    band = np.zeros(structure.shape, dtype=bool)
    band[box] = (signed >= -inner - _EPS_MM) & (signed <= outer + _EPS_MM)
    return band


def relevance_profile(
    attribution_map: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    bin_mm: float = 1.0,
    max_mm: float = 10.0,
) -> dict[str, list]:
    """Relevance statistics in signed-distance bins across a structure's surface.

    The bins are ``[-n*bin_mm + i*bin_mm, -n*bin_mm + (i+1)*bin_mm)`` for ``i = 0 .. 2n-1`` with
    ``n = ceil(max_mm / bin_mm)``: negative distances inside the structure, positive outside (see
    :func:`signed_distance_mm`). Statistics are of the signed relevance; an empty bin has 0 voxels
    and NaN statistics. The profile answers "how does relevance fall off away from the boundary?";
    a boundary-focused model shows a peak around 0.

    Args:
        attribution_map: (I, J, K) relevance map ((C, I, J, K) maps are summed over channels).
        mask: boolean (I, J, K) structure on the same grid.
        spacing: voxel size in mm along I, J, K.
        bin_mm: bin width in mm (> 0).
        max_mm: the profile spans -max_mm .. +max_mm (rounded up to whole bins).

    Returns:
        Columns (lists of equal length, one entry per bin): ``distance_mm`` (bin centre),
        ``voxels``, ``mean``, ``p5``, ``p25``, ``p50``, ``p75``, ``p95`` (linear-interpolation
        percentiles, as ``numpy.percentile``).

    Raises:
        InputError: bad map, mask or spacing, shapes that differ, or non-positive bins.
    """
    structure, spacing = _structure(mask), _spacing(spacing)
    relevance = _map3d(attribution_map, structure.shape)
    bin_mm, max_mm = _thickness(bin_mm, "bin_mm"), _thickness(max_mm, "max_mm")
    if bin_mm <= 0 or max_mm <= 0:
        raise InputError(f"bin_mm and max_mm must be > 0; got {bin_mm} and {max_mm}")
    n = int(math.ceil(max_mm / bin_mm - 1e-9))
    if n > 10000:
        raise InputError(f"{2 * n} bins of {bin_mm} mm up to {max_mm} mm are too many; use wider bins")
    signed, box = _signed_near(structure, spacing, n * bin_mm)
    signed, values = signed.ravel(), relevance[box].ravel()
    near = np.isfinite(signed)  # farther than the profile reaches
    signed, values = signed[near], values[near]
    index = np.floor(signed / bin_mm).astype(np.int64) + n  # bin i holds [(i-n), (i-n+1)) * bin_mm
    keep = (index >= 0) & (index < 2 * n)
    index, values = index[keep], values[keep]
    order = np.argsort(index, kind="stable")
    index, values = index[order], values[order]
    starts = np.searchsorted(index, np.arange(2 * n + 1))
    out: dict[str, list] = {name: [] for name in PROFILE_COLUMNS}
    for i in range(2 * n):
        chunk = values[starts[i]:starts[i + 1]]
        out["distance_mm"].append(float((i - n + 0.5) * bin_mm))
        out["voxels"].append(int(chunk.size))
        if chunk.size:
            p5, p25, p50, p75, p95 = np.percentile(chunk, [5, 25, 50, 75, 95])
            stats = [chunk.mean(), p5, p25, p50, p75, p95]
        else:
            stats = [math.nan] * 6
        for name, value in zip(PROFILE_COLUMNS[2:], stats):
            out[name].append(float(value))
    return out


# ------------------------------------------------------------------------------------------------
# Model-based: the predicted structure and its uncertainty


def _check_segmenter(model: Any, image: ImageVolume) -> None:
    from .model import ModelAdapter

    if not isinstance(model, ModelAdapter):
        raise ModelError(f"a ModelAdapter is needed (MedXAILib.load_model(...)); got {type(model).__name__}")
    if not isinstance(image, ImageVolume):
        raise InputError(
            f"an ImageVolume is needed (MedXAILib.io.read_image(...)); got {type(image).__name__}"
        )
    image.check_finite()
    model.check_input(image.n_channels)


def _check_output(model: Any, output: Any, class_index: int) -> None:
    if model.task != "segmentation":
        raise TargetError("boundaries need a segmentation model (output (B, classes, I, J, K)); this model "
                          f"is a {model.task or 'model of unknown task'}")
    n = int(output.shape[1])
    if not 0 <= class_index < n:
        raise TargetError(
            f"class {class_index} is out of range: the model has {n} output classes (0..{n - 1})"
        )


def predicted_structure(image: ImageVolume, model: "ModelAdapter", class_index: int) -> np.ndarray:
    """The voxels a segmenter predicts as `class_index` on the image grid (one forward pass).

    Argmax over channels for softmax models, logit > 0 (probability > 0.5) for sigmoid models: the
    same structure whose band a ``Target(region="boundary")`` without a mask uses.

    Raises:
        TargetError: not a segmenter, or the class is out of range.
        ModelError, InputError: the model does not accept the image.
    """
    import torch

    from .scoring import _predicted_mask

    _check_segmenter(model, image)
    bound = model.bind(image.affine, image.shape)
    with torch.no_grad():
        output = bound(torch.as_tensor(image.array, device=model.device)[None])
    _check_output(model, output, int(class_index))
    return _predicted_mask(output, int(class_index), model.output_activation)


def _dropout_modules(network: Any) -> list:
    import torch

    found = []
    for module in network.modules():
        name = getattr(module, "original_name", type(module).__name__)  # TorchScript keeps the class name
        is_dropout = isinstance(module, torch.nn.modules.dropout._DropoutNd) or "Dropout" in str(name)
        # MONAI networks contain Dropout(p=0) layers by default: they never drop anything
        if is_dropout and float(getattr(module, "p", 1.0)) > 0:
            found.append(module)
    return found


def boundary_uncertainty(
    image: ImageVolume,
    model: "ModelAdapter",
    class_index: int,
    flips: bool = True,
    n_dropout: int = 0,
    monitor: Optional[Monitor] = None,
    seed: int = 0,
) -> dict[str, ImageVolume]:
    """Ensemble uncertainty of a segmenter's class `class_index`, voxel by voxel on the image grid.

    The ensemble runs the model on test-time transforms of the input: the identity and, with
    `flips`, a mirror along each spatial axis (flip the input, run, flip the output back; nnU-Net's
    test-time mirroring). With ``n_dropout = N > 0`` every transform is run N times with the
    model's Dropout modules (and only those) in training mode (Monte-Carlo dropout, Gal &
    Ghahramani 2016, "Dropout as a Bayesian approximation", ICML), seeded by `seed`. That makes
    ``(1 + 3 * flips) * max(N, 1)`` forward passes. Probabilities are the softmax over channels
    (sigmoid for multi-label models).

    Args:
        image: the input volume.
        model: a segmentation :class:`~MedXAILib.model.ModelAdapter`.
        class_index: the output channel.
        flips: include the three mirrored runs.
        n_dropout: Monte-Carlo dropout samples per transform (0: dropout off, one run each).
        monitor: progress per forward pass; cancelling raises ``Cancelled``.
        seed: seeds the dropout masks (the global torch RNG is restored afterwards).

    Returns:
        Three single-channel volumes on the image grid: ``"probability"`` (ensemble mean of the
        class probability), ``"entropy"`` (predictive entropy in nats of the ensemble-mean
        distribution over all classes, ``-sum_k p_k log p_k``; for sigmoid models the binary entropy
        of the class), ``"variance"`` (population variance of the class probability over the
        ensemble; 0 with a single member). ``meta["ensemble"]`` describes the ensemble.

    Raises:
        ParameterError: ``n_dropout < 0``, or ``n_dropout > 0`` for a model without Dropout modules
            of rate p > 0.
        TargetError: not a segmenter, or the class is out of range.
        Cancelled: through `monitor`.
    """
    import torch

    _check_segmenter(model, image)
    if isinstance(n_dropout, bool) or not isinstance(n_dropout, (int, np.integer)) or n_dropout < 0:
        raise ParameterError(f"n_dropout must be an integer >= 0; got {n_dropout!r}")
    n_dropout, class_index = int(n_dropout), int(class_index)
    monitor = monitor or Monitor()
    dropouts = _dropout_modules(model.network)
    if n_dropout > 0 and not dropouts:
        raise ParameterError("Monte-Carlo dropout needs Dropout modules with p > 0, and this model has none; "
                             "use n_dropout=0 (test-time flips only) or a network built with dropout")
    transforms: list[tuple[int, ...]] = [()] + ([(2,), (3,), (4,)] if flips else [])
    repeats = max(n_dropout, 1)
    members = len(transforms) * repeats
    bound = model.bind(image.affine, image.shape)
    x = torch.as_tensor(image.array, device=model.device)[None]
    devices = [model.device] if model.device.type == "cuda" else []
    states = [(module, module.training) for module in dropouts]
    mean_all = mean_c = mean_c2 = None
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            if n_dropout:
                for module, _ in states:
                    module.train()
            done = 0
            for repeat in range(repeats):
                for dims in transforms:
                    what = "identity" if not dims else f"flip {'IJK'[dims[0] - 2]}"
                    sample = f", dropout sample {repeat + 1}/{n_dropout}" if n_dropout else ""
                    monitor.update(done / members, f"Uncertainty: {what}{sample} ({done + 1}/{members})")
                    output = bound(torch.flip(x, dims) if dims else x)
                    output = torch.flip(output, dims) if dims else output
                    _check_output(model, output, class_index)
                    if model.output_activation == "sigmoid":
                        prob = torch.sigmoid(output[0, class_index : class_index + 1].float())
                    else:
                        prob = torch.softmax(output[0].float(), 0)
                    # the class channel in float64: its variance is a small difference of two means
                    p_c = (prob[0] if model.output_activation == "sigmoid" else prob[class_index]).double()
                    mean_all = prob.clone() if mean_all is None else mean_all.add_(prob)
                    mean_c = p_c if mean_c is None else mean_c + p_c
                    mean_c2 = p_c * p_c if mean_c2 is None else mean_c2 + p_c * p_c
                    done += 1
    finally:
        for module, training in states:
            module.train(training)
    mean_all = mean_all / members
    mean_c, mean_c2 = mean_c / members, mean_c2 / members
    variance = torch.clamp(mean_c2 - mean_c * mean_c, min=0.0)
    if model.output_activation == "sigmoid":
        entropy = -(torch.special.xlogy(mean_c, mean_c) + torch.special.xlogy(1 - mean_c, 1 - mean_c))
    else:
        entropy = -torch.special.xlogy(mean_all, mean_all).sum(0)
    monitor.update(1.0, f"Uncertainty: {members} forward passes done")
    ensemble = {"class_index": class_index, "flips": bool(flips), "n_dropout": n_dropout, "members": members,
                "transforms": ["identity" if not d else f"flip_{'IJK'[d[0] - 2]}" for d in transforms],
                "activation": model.output_activation, "seed": int(seed), "entropy_unit": "nats"}
    out = {}
    for name, value in zip(UNCERTAINTY_MAPS, (mean_c, entropy, variance)):
        array = value.float().cpu().numpy()[np.newaxis]
        out[name] = ImageVolume(array, image.affine.copy(), channel_names=[name],
                                meta={"ensemble": ensemble, "map": name})
    return out


# ------------------------------------------------------------------------------------------------
# Plot


def plot_profile(profile: dict[str, list], path: str | Path) -> Path:
    """Write a PNG of a :func:`relevance_profile`: mean, median and the 5-95 / 25-75 % bands.

    Needs matplotlib (not a dependency of MedXAILib); the write is atomic.

    Raises:
        InputError: matplotlib is missing, the profile lacks a column, or the file cannot be written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("plot_profile needs matplotlib: pip install matplotlib") from None
    from .io import write_atomic

    missing = [c for c in PROFILE_COLUMNS if c not in profile]
    if missing:
        raise InputError(f"the profile lacks the column(s) {', '.join(missing)}; pass relevance_profile(...)")
    x = np.asarray(profile["distance_mm"], dtype=float)
    column = {c: np.asarray(profile[c], dtype=float) for c in PROFILE_COLUMNS[2:]}
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)  # the Agg canvas, without pyplot's global state
    axes = figure.add_subplot()
    axes.fill_between(x, column["p5"], column["p95"], alpha=0.2, color="tab:blue", label="5-95 %")
    axes.fill_between(x, column["p25"], column["p75"], alpha=0.35, color="tab:blue", label="25-75 %")
    axes.plot(x, column["p50"], color="tab:blue", linestyle="--", label="median")
    axes.plot(x, column["mean"], color="tab:red", label="mean")
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.axhline(0.0, color="grey", linewidth=0.5)
    axes.set_xlabel("signed distance to the structure surface (mm; < 0 inside)")
    axes.set_ylabel("relevance")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_atomic(Path(path), buffer.getvalue())
