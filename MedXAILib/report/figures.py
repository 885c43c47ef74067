"""PNG figures of an attribution over its image: three orthogonal planes and projections.

Each attribution figure has two rows of three panels (axial, sagittal, coronal):

1. the planes through a focus voxel (the lesion centre in the demo), the signed attribution over
   the image in a diverging colour map (matplotlib's ``coolwarm``, Moreland's cool-to-warm map,
   the same as the Slicer scene's ``MedXAI Diverging``) with a window symmetric around 0,
   ``[-m, m]`` (``m = max |a|`` over the volume unless a limit is given; larger values saturate),
   so zero is neutral and both signs are readable;
2. signed maximum-intensity projections: along each view's axis, the value of largest magnitude
   (with its sign), over the mean projection of the windowed image.

One colour bar serves all six panels. Relevance is drawn more opaque as ``|a|`` grows (fully
opaque from ``0.3 m`` on), so the image stays visible where the map is near zero.

Display smoothing (``smooth_mm``) is a reading aid for the projection row only: a Gaussian of
that standard deviation (mm, true spacing) applied to the values drawn, never to the map itself or
to any number computed from it. Gradient maps of networks with strided convolutions alternate in
sign from voxel to voxel (a checkerboard, Odena, Dumoulin & Olah, "Deconvolution and Checkerboard
Artifacts", Distill 2016); a maximum-|a| projection then picks those extremes everywhere and shows
noise. Smoothing first cancels the alternation and keeps what is coherent over a region. A marker
(``peak_ijk``, a cross) shows the voxel of the map's maximum, the voxel the pointing game uses,
and dashed ``outlines`` can mark further regions (a segmenter target's receptive field). Panels are drawn
in millimetres (physical aspect ratio from the spacing) in the radiological convention: the
patient's right on the left of the screen, anterior (axial) or superior (sagittal, coronal) at the
top, anterior on the left in sagittal views. Voxel axes are matched to the nearest RAS axes, so an
oblique grid is shown as if it were aligned (the titles say so).

matplotlib is imported lazily (``pip install 'slicer-medxai[demo]'``); figures are drawn on a
``matplotlib.figure.Figure`` (Agg, no pyplot state), so this works headless and in threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import MedXAIError
from ..volume import ImageVolume, direction_of, spacing_of

__all__ = ["attribution_figure", "prediction_figure", "display_smoothed", "ras_axes", "FIGURE_SIZE_PX",
           "PREDICTION_SIZE_PX"]

DPI = 100
FIGURE_SIZE_PX = (1200, 820)  # (width, height) of an attribution figure
PREDICTION_SIZE_PX = (1200, 470)
_VIEWS = ("axial", "sagittal", "coronal")
_CORNERS = {"axial": ("R", "L", "A", "P"), "sagittal": ("A", "P", "S", "I"), "coronal": ("R", "L", "S", "I")}


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise MedXAIError("the report figures need matplotlib: pip install 'slicer-medxai[demo]' "
                          "(or pip install matplotlib)") from None
    return matplotlib, Figure


# ------------------------------------------------------------------------------------------------
# Geometry: voxel axes -> nearest RAS axes, planes and projections in the radiological convention


def ras_axes(affine: np.ndarray) -> tuple[list[int], list[bool]]:
    """For RAS axes x, y, z: the voxel axis nearest to each, and whether it runs the opposite way."""
    d = np.abs(direction_of(affine))
    order: list[Optional[int]] = [None, None, None]
    for _ in range(3):  # greedy: the strongest remaining (RAS axis, voxel axis) pair first
        masked = d.copy()
        for r in range(3):
            if order[r] is not None:
                masked[r, :] = -1
        for v in (v for v in order if v is not None):
            masked[:, v] = -1
        r, v = np.unravel_index(int(np.argmax(masked)), d.shape)
        order[int(r)] = int(v)
    flips = [bool(direction_of(affine)[r, order[r]] < 0) for r in range(3)]
    return [int(v) for v in order], flips  # type: ignore[arg-type]


def _to_ras(array: np.ndarray, order: list[int], flips: list[bool]) -> np.ndarray:
    out = np.transpose(array, order)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return out


def _focus_ras(ijk: Sequence[float], shape: Sequence[int], order: list[int], flips: list[bool]) -> list[int]:
    out = []
    for r in range(3):
        c = int(round(float(ijk[order[r]])))
        n = int(shape[order[r]])
        c = min(max(c, 0), n - 1)
        out.append(n - 1 - c if flips[r] else c)
    return out


def _screen(plane: np.ndarray) -> np.ndarray:
    """(first, second) RAS-ordered plane -> screen rows (second axis, descending) x columns (first, descending)."""
    return plane.T[::-1, ::-1]


def _plane(volume: np.ndarray, view: str, focus: list[int]) -> np.ndarray:
    if view == "axial":
        return _screen(volume[:, :, focus[2]])
    if view == "sagittal":
        return _screen(volume[focus[0], :, :])
    return _screen(volume[:, focus[1], :])


_AXIS = {"axial": 2, "sagittal": 0, "coronal": 1}


def _signed_mip(volume: np.ndarray, view: str) -> np.ndarray:
    axis = _AXIS[view]
    index = np.expand_dims(np.abs(volume).argmax(axis=axis), axis)
    return _screen(np.take_along_axis(volume, index, axis=axis).squeeze(axis))


def _mean_projection(volume: np.ndarray, view: str) -> np.ndarray:
    return _screen(volume.mean(axis=_AXIS[view]))


def _any_projection(mask: np.ndarray, view: str) -> np.ndarray:
    return _screen(mask.any(axis=_AXIS[view]))


def _extent(view: str, shape: Sequence[int], spacing: Sequence[float]) -> tuple[float, float, float, float]:
    width, height = {"axial": (0, 1), "sagittal": (1, 2), "coronal": (0, 2)}[view]
    return (0.0, shape[width] * spacing[width], 0.0, shape[height] * spacing[height])


# ------------------------------------------------------------------------------------------------
# Drawing


def display_smoothed(values: np.ndarray, spacing: Sequence[float], sigma_mm: float) -> np.ndarray:
    """A copy of `values` smoothed for display: Gaussian of `sigma_mm` (true spacing; 0: unchanged)."""
    values = np.asarray(values, dtype=np.float64)
    if not sigma_mm or sigma_mm <= 0:
        return values
    from scipy import ndimage

    return ndimage.gaussian_filter(values, [float(sigma_mm) / float(s) for s in spacing], mode="constant")


_PLANE_AXES = {"axial": (0, 1, 2), "sagittal": (1, 2, 0), "coronal": (0, 2, 1)}  # (screen x, screen y, normal)


def _marker(ax, view: str, ras_index: Sequence[int], shape: Sequence[int], spacing: Sequence[float],
            focus: Optional[Sequence[int]]) -> None:
    """A cross at a voxel (RAS-ordered indices); in a plane only when the voxel lies in it."""
    first, second, normal = _PLANE_AXES[view]
    if focus is not None and abs(int(ras_index[normal]) - int(focus[normal])) > 1:
        return
    x = (shape[first] - 1 - ras_index[first] + 0.5) * spacing[first]
    y = (ras_index[second] + 0.5) * spacing[second]
    ax.plot([x], [y], marker="x", markersize=9, markeredgewidth=2.2, color="#ffea00", linestyle="none")


def _windowed(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def _overlay(ax, background: np.ndarray, values: Optional[np.ndarray], m: float, cmap, extent, contour=None,
             outlines: Sequence[tuple[np.ndarray, str]] = ()) -> None:
    ax.imshow(background, cmap="gray", vmin=0.0, vmax=1.0, extent=extent, interpolation="nearest")
    if values is not None:
        rgba = cmap(np.clip(0.5 + values / (2 * m), 0.0, 1.0))
        rgba[..., 3] = np.clip(np.abs(values) / (0.3 * m), 0.0, 1.0) * 0.9
        ax.imshow(rgba, extent=extent, interpolation="nearest")
    if contour is not None and contour.any():
        ax.contour(contour.astype(float), levels=[0.5], colors=["#39ff14"], linewidths=0.9,
                   extent=extent, origin="upper")
    for outline, colour in outlines:
        if outline.any() and not outline.all():
            ax.contour(outline.astype(float), levels=[0.5], colors=[colour], linewidths=1.1, linestyles="dashed",
                       extent=extent, origin="upper")
    ax.set_xticks([])
    ax.set_yticks([])


def _corner_labels(ax, view: str) -> None:
    left, right, top, bottom = _CORNERS[view]
    style = {"color": "#ffd54f", "fontsize": 8, "transform": ax.transAxes, "fontweight": "bold"}
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)


def attribution_figure(
    path: str | Path,
    image: ImageVolume,
    attribution: np.ndarray,
    focus_ijk: Sequence[float],
    title: str,
    window: tuple[float, float] = (-160.0, 240.0),
    contour: Optional[np.ndarray] = None,
    note: str = "",
    limit: Optional[float] = None,
    quantity: str = "relevance (raw, signed)",
    *,
    channel: int = 0,
    smooth_mm: float = 0.0,
    peak_ijk: Optional[Sequence[float]] = None,
    outlines: Sequence[tuple[np.ndarray, str]] = (),
) -> Path:
    """Write the six-panel figure of `attribution` (an (I, J, K) map on `image`'s grid) as a PNG.

    Args:
        path: the PNG to write (:data:`FIGURE_SIZE_PX` pixels).
        image: the input; its channel `channel` is drawn, in `window` (draw each channel's map over
            its own image: a PET map over the PET).
        attribution: the signed map of one channel, or the sum over channels.
        focus_ijk: voxel the three planes pass through.
        title: figure title (method, model, target).
        window: display window of the image.
        contour: optional boolean (I, J, K) mask drawn as an outline (e.g. the true lesion).
        note: an extra line under the title.
        limit: the colour window is ``[-limit, limit]`` (larger magnitudes saturate); default max |a|.
        quantity: what the colours show, for the colour bar (e.g. ``"change in HU"`` for a counterfactual).
        channel: the image channel drawn under the map.
        smooth_mm: display smoothing of the projection row (see the module docstring); the planes
            show the raw values.
        peak_ijk: a voxel marked with a cross (the map's maximum).
        outlines: ``(mask, colour)`` pairs drawn as dashed outlines.
    """
    _, Figure = _matplotlib()
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    order, flips = ras_axes(image.affine)
    spacing = spacing_of(image.affine)[order]
    ct = _to_ras(_windowed(image.array[channel], window), order, flips)
    raw = np.asarray(attribution, dtype=np.float64)
    values = _to_ras(raw, order, flips)
    shown = _to_ras(display_smoothed(raw, spacing_of(image.affine), smooth_mm), order, flips) if smooth_mm else values
    mask = _to_ras(np.asarray(contour, bool), order, flips) if contour is not None else None
    extra = [(_to_ras(np.asarray(o, bool), order, flips), colour) for o, colour in outlines]
    focus = _focus_ras(focus_ijk, image.shape, order, flips)
    peak = _focus_ras(peak_ijk, image.shape, order, flips) if peak_ijk is not None else None
    m = float(limit) if limit else (float(np.abs(values).max()) or 1.0)
    cmap = colormaps["coolwarm"]

    fig = Figure(figsize=(FIGURE_SIZE_PX[0] / DPI, FIGURE_SIZE_PX[1] / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 3)
    projection = "signed max-|a| projection" + (f" (display σ {smooth_mm:g} mm)" if smooth_mm else "")
    for col, view in enumerate(_VIEWS):
        extent = _extent(view, ct.shape, spacing)
        _overlay(axes[0, col], _plane(ct, view, focus), _plane(values, view, focus), m, cmap, extent,
                 _plane(mask, view, focus) if mask is not None else None,
                 [(_plane(o, view, focus), colour) for o, colour in extra])
        axes[0, col].set_title(f"{view} plane", fontsize=10)
        _corner_labels(axes[0, col], view)
        _overlay(axes[1, col], _mean_projection(ct, view), _signed_mip(shown, view), m, cmap, extent,
                 _any_projection(mask, view) if mask is not None else None,
                 [(_any_projection(o, view), colour) for o, colour in extra])
        axes[1, col].set_title(f"{view} {projection}", fontsize=9 if smooth_mm else 10)
        _corner_labels(axes[1, col], view)
        if peak is not None:
            _marker(axes[0, col], view, peak, ct.shape, spacing, focus)
            _marker(axes[1, col], view, peak, ct.shape, spacing, None)
    bar = fig.colorbar(ScalarMappable(norm=Normalize(-m, m), cmap=cmap), ax=axes, shrink=0.85, pad=0.01)
    bar.set_label(f"{quantity}; window ±{m:.3g}")
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=12)
    path = Path(path)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def prediction_figure(
    path: str | Path,
    image: ImageVolume,
    labels: np.ndarray,
    colours: dict[int, tuple[float, float, float]],
    names: dict[int, str],
    focus_ijk: Sequence[float],
    title: str,
    window: tuple[float, float] = (-160.0, 240.0),
    contour: Optional[np.ndarray] = None,
    channel: int = 0,
) -> Path:
    """Three planes of `image` (its channel `channel`) with the label map `labels` coloured over it
    (:data:`PREDICTION_SIZE_PX`); an empty `colours` draws the image and the contour only."""
    _, Figure = _matplotlib()
    from matplotlib.patches import Patch

    order, flips = ras_axes(image.affine)
    spacing = spacing_of(image.affine)[order]
    ct = _to_ras(_windowed(image.array[channel], window), order, flips)
    lab = _to_ras(np.asarray(labels), order, flips)
    mask = _to_ras(np.asarray(contour, bool), order, flips) if contour is not None else None
    focus = _focus_ras(focus_ijk, image.shape, order, flips)
    table = np.zeros((int(max(colours, default=0)) + 1, 4))
    for value, rgb in colours.items():
        table[value] = (*rgb, 0.45)
    fig = Figure(figsize=(PREDICTION_SIZE_PX[0] / DPI, PREDICTION_SIZE_PX[1] / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, view in zip(axes, _VIEWS):
        extent = _extent(view, ct.shape, spacing)
        _overlay(ax, _plane(ct, view, focus), None, 1.0, None, extent,
                 _plane(mask, view, focus) if mask is not None else None)
        plane = np.clip(_plane(lab, view, focus).astype(int), 0, len(table) - 1)
        ax.imshow(table[plane], extent=extent, interpolation="nearest")
        ax.set_title(f"{view} plane", fontsize=10)
        _corner_labels(ax, view)
    present = [v for v in sorted(colours) if v and np.any(lab == v)]
    handles = [Patch(color=colours[v], label=names.get(v, str(v))) for v in present]
    if contour is not None:
        handles.append(Patch(facecolor="none", edgecolor="#39ff14", label="true lesion (outline)"))
    fig.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=12)
    path = Path(path)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path
