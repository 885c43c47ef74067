"""Segmentation-boundary saliency: relevance profiles across a structure's surface, and uncertainty.

A segmenter's decision is made at the structure's surface. Everything is measured in mm with the
grid's true (possibly anisotropic) spacing, through the region geometry of :mod:`MedXAILib.regions`
(signed distances and boundary bands, with its surface convention):

- :func:`relevance_profile`: relevance statistics in distance bins across the surface;
- :func:`predicted_structure`: the voxels a segmenter predicts as a class (one forward pass);
- :func:`boundary_uncertainty`: test-time-flip and Monte-Carlo-dropout ensembles of the class
  probability (mean, predictive entropy, variance);
- :func:`plot_profile`: an optional PNG of a profile (matplotlib).

Only numpy at import time; SciPy, torch and matplotlib load on use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ..attribution import map3d
from ..errors import InputError, ModelError, ParameterError, TargetError
from ..io import write_atomic
from ..monitor import Monitor
from ..regions import predicted_mask, signed_distance_near, spacing_array, structure_mask, thickness_mm
from ..volume import ImageVolume

if TYPE_CHECKING:  # pragma: no cover
    from ..model import ModelAdapter

__all__ = [
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
    structure, spacing = structure_mask(mask), spacing_array(spacing)
    relevance = map3d(attribution_map, structure.shape)
    bin_mm, max_mm = thickness_mm(bin_mm, "bin_mm"), thickness_mm(max_mm, "max_mm")
    if bin_mm <= 0 or max_mm <= 0:
        raise InputError(f"bin_mm and max_mm must be > 0; got {bin_mm} and {max_mm}")
    n = int(math.ceil(max_mm / bin_mm - 1e-9))
    if n > 10000:
        raise InputError(f"{2 * n} bins of {bin_mm} mm up to {max_mm} mm are too many; use wider bins")
    signed, box = signed_distance_near(structure, spacing, n * bin_mm)
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
    from ..model import ModelAdapter

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

    _check_segmenter(model, image)
    bound = model.bind(image.affine, image.shape, image.array)
    with torch.no_grad():
        output = bound(torch.as_tensor(image.array, device=model.device)[None])
    _check_output(model, output, int(class_index))
    return predicted_mask(output, int(class_index), model.output_activation)


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
    bound = model.bind(image.affine, image.shape, image.array)
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


def plot_profile(profile: dict[str, list], path: str | Path, title: str = "",
                 band_mm: Optional[tuple[float, float]] = None) -> Path:
    """Write a PNG of a :func:`relevance_profile`: mean, median and the 5-95 / 25-75 % bands.

    Args:
        profile: the profile table.
        path: the PNG.
        title: what was explained (method, structure, target); the figure is titled
            "Relevance across the structure's surface" plus this.
        band_mm: ``(inner, outer)``: the explained boundary band, shaded from -inner to +outer mm,
            so the reader sees which part of the profile was the target.

    Needs matplotlib (not a dependency of MedXAILib); the write is atomic.

    Raises:
        InputError: matplotlib is missing, the profile lacks a column, or the file cannot be written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("plot_profile needs matplotlib: pip install matplotlib") from None

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
    if band_mm is not None:
        inner, outer = (float(v) for v in band_mm)
        axes.axvspan(-inner, outer, color="tab:orange", alpha=0.15,
                     label=f"explained band ({inner:g} mm in, {outer:g} mm out)")
    axes.axvline(0.0, color="black", linewidth=0.8, label="surface")
    axes.axhline(0.0, color="grey", linewidth=0.5)
    axes.set_xlabel("signed distance to the structure surface (mm; < 0 inside)")
    axes.set_ylabel("relevance (raw, signed)")
    axes.set_title("Relevance across the structure's surface" + (f"\n{title}" if title else ""), fontsize=10)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_atomic(Path(path), buffer.getvalue())
