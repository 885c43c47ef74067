"""How attribution nodes look in slice views: colour tables, windows, thresholds and layers.

Colour tables. slicer-core's colour logic (``vtkMRMLColorLogic``) provides only the built-in tables
(Grey, Iron, Rainbow, fMRI, ..., the PET procedural tables); Slicer's file-based tables such as
"ColdToHotRainbow", "Inferno" or "Viridis" are missing there. So MedXAI makes its own, once per scene:

- ``MedXAI Diverging``: cool-to-warm (blue - light grey - red, Moreland's "cool to warm" map) for
  signed maps, neutral at the centre of a symmetric window [-m, m];
- ``MedXAI Sequential``: "inferno" (black - purple - orange - pale yellow) for non-negative maps.

256 entries each. Zero relevance is transparent, so where a map is (near) zero the image shows
unaltered: the two centre entries of the diverging table (|a| < m / 128 in a symmetric window) and
the first entry of the sequential table (the window bottom, a < m / 256) have alpha 0.

Window. ``symmetricWindow=True`` (default): [-m, m] with m = max |a| for diverging colours, so zero
is always the neutral colour and the sign is readable; [0, m] for sequential colours. Otherwise the
window is the map's [min, max]. Normalisation is a display choice only: voxel values are never
changed.

Threshold. Voxels with |a| below the given percentile t of |a| (over all voxels) are transparent:

- sequential colours: the display node's own threshold (``ApplyThreshold``, lower = t), which the
  Volumes module shows and edits;
- diverging (and user-chosen colour tables on signed maps): the threshold has to hide a band
  -t < a < t around zero, which a display-node threshold (one inside-interval) cannot express, so
  the colour table's alpha does it: a per-node copy of the table (hidden from editors, named
  ``"<node> colours"``) with alpha 0 for entries whose value lies in the band (to within one entry,
  1/256 of the window). The same per-node table serves asymmetric windows, where the neutral
  entry is not at the table's centre. It is reused and updated on the next call, and removed when
  no longer needed.

Opacity. Slice views blend the foreground layer with the slice composite node's foreground
opacity: :func:`showInSliceViews` sets it, and :func:`applyAttributionDisplay` stores the opacity
on the display node and updates every slice view already showing the node as foreground.
"""

from __future__ import annotations

import numpy as np
import slicer

from MedXAILib.errors import InputError

from .nodes import createNode, nodesByClass
from .volumes import checkVolumeNode, nodeLabel

__all__ = ["applyAttributionDisplay", "showColorLegend", "showInSliceViews", "DIVERGING_TABLE_NAME", "SEQUENTIAL_TABLE_NAME"]

DIVERGING_TABLE_NAME = "MedXAI Diverging"
SEQUENTIAL_TABLE_NAME = "MedXAI Sequential"
_TABLE_ATTRIBUTE = "MedXAI.ColorTable"  # "diverging" / "sequential" on shared tables, "node" on per-node ones
_NODE_TABLE_ATTRIBUTE = "MedXAI.Display.ColorNodeID"  # on the attribution node: its per-node table
_ENTRIES = 256
_LEGEND_CLASS = "vtkMRMLColorLegendDisplayNode"

# Moreland's cool-to-warm diverging map (as in ParaView / matplotlib "coolwarm"), 5 anchors.
_DIVERGING = (
    (0.00, (0.2298, 0.2987, 0.7537)),
    (0.25, (0.5543, 0.6901, 0.9955)),
    (0.50, (0.8654, 0.8654, 0.8654)),
    (0.75, (0.9567, 0.5980, 0.4773)),
    (1.00, (0.7057, 0.0156, 0.1502)),
)
# "inferno" (van der Walt & Smith, matplotlib), 11 anchors at deciles.
_SEQUENTIAL = tuple(
    (i / 10.0, tuple(int(h[k : k + 2], 16) / 255.0 for k in (0, 2, 4)))
    for i, h in enumerate(("000004", "160b39", "420a68", "6a176e", "932667", "bc3754",
                           "dd513a", "f37819", "fca50a", "f6d746", "fcffa4"))
)


# ------------------------------------------------------------------------------------------------
# Colour tables


def _rgbaFromAnchors(anchors) -> np.ndarray:
    """(256, 4) RGBA sampled at entry centres from piecewise-linear anchors; alpha 1."""
    x = (np.arange(_ENTRIES) + 0.5) / _ENTRIES
    positions = [p for p, _ in anchors]
    rgb = np.stack([np.interp(x, positions, [c[ch] for _, c in anchors]) for ch in range(3)], axis=1)
    return np.concatenate([rgb, np.ones((_ENTRIES, 1))], axis=1)


def _baseRgba(kind: str) -> np.ndarray:
    rgba = _rgbaFromAnchors(_DIVERGING if kind == "diverging" else _SEQUENTIAL)
    if kind == "diverging":
        rgba[_ENTRIES // 2 - 1 : _ENTRIES // 2 + 1, 3] = 0.0  # neutral centre: transparent
    else:
        rgba[0, 3] = 0.0  # window bottom (zero): transparent
    return rgba


def _rgbaOfColorNode(colorNode) -> np.ndarray:
    """(256, 4) RGBA of any colour node, sampled across its range as a volume display maps it."""
    lookup = colorNode.GetLookupTable()
    if lookup is None and hasattr(colorNode, "GetColorTransferFunction"):
        lookup = colorNode.GetColorTransferFunction()
    if lookup is None:
        lookup = colorNode.GetScalarsToColors()
    if lookup is None:
        raise InputError(f"the colour node {nodeLabel(colorNode)} has no colours")
    lo, hi = lookup.GetRange()
    rgba = np.ones((_ENTRIES, 4))
    rgb = [0.0, 0.0, 0.0]
    for i in range(_ENTRIES):
        value = lo + (i + 0.5) / _ENTRIES * (hi - lo)
        lookup.GetColor(value, rgb)
        rgba[i, :3] = rgb
        rgba[i, 3] = lookup.GetOpacity(value)
    return rgba


def _fillTable(table, rgba: np.ndarray) -> None:
    wasModifying = table.StartModify()
    table.SetTypeToUser()
    table.SetNumberOfColors(_ENTRIES)
    for i, (r, g, b, a) in enumerate(rgba):
        table.SetColor(i, float(r), float(g), float(b), float(a))
    table.EndModify(wasModifying)


def _newTable(scene, name: str, rgba: np.ndarray, tag: str, hidden: bool):
    table = createNode(scene, "vtkMRMLColorTableNode")
    table.SetName(name)
    table.SetAttribute(_TABLE_ATTRIBUTE, tag)
    table.SetAttribute("Category", "MedXAI")
    table.SetHideFromEditors(hidden)
    _fillTable(table, rgba)
    scene.AddNode(table)
    return table


def _sharedTable(scene, kind: str):
    """The scene's "MedXAI Diverging" / "MedXAI Sequential" table, created on first use."""
    name = DIVERGING_TABLE_NAME if kind == "diverging" else SEQUENTIAL_TABLE_NAME
    for table in nodesByClass(scene, "vtkMRMLColorTableNode"):
        if table.GetAttribute(_TABLE_ATTRIBUTE) == kind and table.GetName() == name:
            return table
    return _newTable(scene, name, _baseRgba(kind), kind, hidden=False)


def _nodeTable(scene, node, rgba: np.ndarray):
    """The node's own (hidden) colour table, created or updated with `rgba`."""
    table = scene.GetNodeByID(node.GetAttribute(_NODE_TABLE_ATTRIBUTE) or "")
    if table is None or table.GetAttribute(_TABLE_ATTRIBUTE) != "node":
        table = _newTable(scene, f"{node.GetName()} colours", rgba, "node", hidden=True)
        node.SetAttribute(_NODE_TABLE_ATTRIBUTE, table.GetID())
    else:
        _fillTable(table, rgba)
    return table


def _dropNodeTable(scene, node, keep) -> None:
    """Remove the node's own table when the display no longer uses it."""
    table = scene.GetNodeByID(node.GetAttribute(_NODE_TABLE_ATTRIBUTE) or "")
    if table is not None and table is not keep and table.GetAttribute(_TABLE_ATTRIBUTE) == "node":
        scene.RemoveNode(table)
    if keep is None or keep.GetAttribute(_TABLE_ATTRIBUTE) != "node":
        node.RemoveAttribute(_NODE_TABLE_ATTRIBUTE)


def _hideBand(rgba: np.ndarray, lo: float, hi: float, band: float) -> np.ndarray:
    """A copy of `rgba` whose entries with |value| < band (window [lo, hi]) are transparent."""
    values = lo + (np.arange(_ENTRIES) + 0.5) / _ENTRIES * (hi - lo)
    out = rgba.copy()
    out[np.abs(values) < band, 3] = 0.0
    return out


# ------------------------------------------------------------------------------------------------
# Public API


def applyAttributionDisplay(node, colormap: str = "auto", opacity: float = 0.5, symmetricWindow: bool = True,
                            thresholdPercentile: float = 0.0, windowPercentile: float = 100.0,
                            colorLegend: bool = True):
    """Colour an attribution volume node for slice views (creates its display node if needed).

    Args:
        node: a scalar volume node holding a signed or non-negative map (its voxels are not changed).
        colormap: ``"auto"`` (diverging for maps with negative values, else sequential),
            ``"diverging"`` (MedXAI Diverging), ``"sequential"`` (MedXAI Sequential), or the ID of
            any colour node in the scene.
        opacity: foreground opacity in [0, 1], stored on the display node and applied to slice
            views already showing the node as foreground.
        symmetricWindow: window [-m, m] (diverging) or [0, m] (sequential), m = max |a|; else
            [min, max] of the map.
        thresholdPercentile: in [0, 100); voxels with |a| below this percentile of |a| are
            transparent (0: no threshold).
        windowPercentile: in (0, 100]; with `symmetricWindow`, m is this percentile of |a| instead
            of max |a| (100), so a few extreme voxels saturate instead of washing out the rest of the
            map (the demo scene and the web viewer use 99.9). Voxels are not changed.
        colorLegend: show the node's colour legend (:func:`showColorLegend`) in the views that show it
            (skipped in a scene without Slicer's Colors module, such as a bare scene in a script).

    Returns:
        The ``vtkMRMLScalarVolumeDisplayNode``. The node gets attributes ``MedXAI.Display.Colormap``
        (``diverging`` / ``sequential`` / the colour node ID), ``MedXAI.Display.Window`` ("lo hi")
        and ``MedXAI.Display.Threshold`` (the |a| cut-off).

    Raises:
        InputError: no voxels, no scene, an unknown colour map or colour node ID, or an opacity /
            percentile out of range.
    """
    imageData = checkVolumeNode(node, "attribution")
    scene = node.GetScene()
    if scene is None:
        raise InputError(f"{nodeLabel(node)} is not in a scene")
    if not 0.0 <= float(opacity) <= 1.0:
        raise InputError(f"opacity must be in [0, 1]; got {opacity}")
    if not 0.0 <= float(thresholdPercentile) < 100.0:
        raise InputError(f"the threshold percentile must be in [0, 100); got {thresholdPercentile}")
    if not 0.0 < float(windowPercentile) <= 100.0:
        raise InputError(f"the window percentile must be in (0, 100]; got {windowPercentile}")
    from vtk.util import numpy_support

    # a view of the node's voxels: no copy (a whole CT's map has ~80 M voxels; float64 copies of it cost
    # seconds and GBs), copies only where a percentile needs the magnitudes
    values = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(-1)
    if not np.isfinite(values).all():
        values = values[np.isfinite(values)]
    if values.size == 0:
        values = np.zeros(1, np.float32)
    amin, amax = float(values.min()), float(values.max())
    windowAt, threshold = 0.0, 0.0
    if windowPercentile < 100.0 or thresholdPercentile > 0:  # both percentiles of |a| from one partition
        windowAt, threshold = (float(v) for v in np.percentile(np.abs(values), [windowPercentile, thresholdPercentile]))
        windowAt = windowAt if windowPercentile < 100.0 else 0.0
        threshold = threshold if thresholdPercentile > 0 else 0.0
    m = windowAt or max(abs(amin), abs(amax)) or 1.0
    signed = amin < 0.0

    custom = None
    if colormap == "auto":
        kind = "diverging" if signed else "sequential"
    elif colormap in ("diverging", "sequential"):
        kind = colormap
    else:
        custom = scene.GetNodeByID(colormap) if isinstance(colormap, str) and colormap else None
        if custom is None or not custom.IsA("vtkMRMLColorNode"):
            raise InputError(
                f"unknown colour map {colormap!r}: use 'auto', 'diverging', 'sequential' or a colour node ID"
            )
        kind = "diverging" if signed else "sequential"  # how the window and threshold behave

    if symmetricWindow:
        lo, hi = (-m, m) if kind == "diverging" else (0.0, m)
    else:
        lo, hi = (amin, amax) if amax > amin else (amin - 0.5, amax + 0.5)

    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    if display is None or not display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        raise InputError(f"{nodeLabel(node)} has no scalar volume display; is it a scalar volume?")

    table = None
    applyThreshold = False
    if kind == "sequential":
        table = custom if custom is not None else _sharedTable(scene, "sequential")
        applyThreshold = threshold > 0.0
    elif custom is None and symmetricWindow and threshold == 0.0:
        table = _sharedTable(scene, "diverging")
    elif custom is not None and threshold == 0.0:
        table = custom
    else:
        base = _rgbaOfColorNode(custom) if custom is not None else _baseRgba("diverging")
        if custom is None:
            base[:, 3] = 1.0  # the neutral band is placed below, for this window
        band = max(threshold, 0.0 if custom is not None else (hi - lo) / _ENTRIES)
        table = _nodeTable(scene, node, _hideBand(base, lo, hi, band))

    wasModifying = display.StartModify()
    try:
        display.SetAndObserveColorNodeID(table.GetID())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(lo, hi)
        display.SetAutoThreshold(False)
        if applyThreshold:
            display.SetLowerThreshold(threshold)
            display.SetUpperThreshold(max(amax, threshold))
        display.SetApplyThreshold(applyThreshold)
        display.SetOpacity(float(opacity))
    finally:
        display.EndModify(wasModifying)
    _dropNodeTable(scene, node, table)

    node.SetAttribute("MedXAI.Display.Colormap", custom.GetID() if custom is not None else kind)
    node.SetAttribute("MedXAI.Display.Window", f"{lo!r} {hi!r}")
    node.SetAttribute("MedXAI.Display.Threshold", repr(threshold))
    for composite in nodesByClass(scene, "vtkMRMLSliceCompositeNode"):
        if composite.GetForegroundVolumeID() == node.GetID():
            composite.SetForegroundOpacity(float(opacity))
    if colorLegend is False or scene.IsNodeClassRegistered(_LEGEND_CLASS):  # a bare scene (a script) has no legends
        showColorLegend(node, colorLegend)
    return display


def showColorLegend(node, visible: bool = True):
    """Show (or hide) the colour legend of an attribution node: its colours and the window's values.

    The legend is the Colors module's default colour legend display node
    (``vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode``, what the Colors module's "Create" button
    and ``slicer.modules.colors.logic()`` make), created once per node and drawn by Slicer's colour
    legend displayable manager in every view that shows the node. Its title is the method (the node
    name is long), and its labels use 3 significant digits: attribution values are often far below 1
    and the default format ("%.1f") would label them all 0.0.

    Returns:
        The ``vtkMRMLColorLegendDisplayNode``, or None when hidden and there is none.

    Raises:
        InputError: the node has no display node yet, or the scene cannot create colour legends.
    """
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node)
    if legend is None and not visible:
        return None
    if legend is None:
        if node.GetDisplayNode() is None:
            raise InputError(f"{nodeLabel(node)} has no display node: apply the attribution display first")
        scene = node.GetScene()
        if scene is None or not scene.IsNodeClassRegistered(_LEGEND_CLASS):
            raise InputError(f"no colour legend can be created for {nodeLabel(node)}: the scene lacks the colour "
                             "legend node class (Slicer's Colors module registers it)")
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
        legend.SetTitleText(node.GetAttribute("MedXAI.MethodTitle") or node.GetName() or "")
        legend.SetLabelFormat("%.3g")
    legend.SetVisibility(bool(visible))
    return legend


def showInSliceViews(scene, backgroundNode, foregroundNode, opacity: float = 0.5, sliceLogics=None) -> int:
    """Show `backgroundNode` (the image) under `foregroundNode` (the attribution) in every slice view.

    Sets every ``vtkMRMLSliceCompositeNode`` of `scene`: background volume, foreground volume and
    foreground opacity. Passing None for a layer leaves that layer as it is.

    Args:
        sliceLogics: the views' ``vtkMRMLSliceLogic`` objects (a ``vtkCollection`` or an iterable; in
            Slicer ``slicer.app.applicationLogic().GetSliceLogics()``). A view whose background
            becomes `backgroundNode` is fitted to it and centred on it (``FitSliceToBackground``, as
            ``slicer.util.setSliceViewerLayers(fit=True)`` does); a view that already showed it keeps
            the user's zoom and position.

    Returns:
        The number of slice views updated (0 when the scene has no slice views, e.g. a bare scene).
    """
    if scene is None:
        raise InputError("no scene was given")
    if not 0.0 <= float(opacity) <= 1.0:
        raise InputError(f"opacity must be in [0, 1]; got {opacity}")
    toFit = []
    composites = nodesByClass(scene, "vtkMRMLSliceCompositeNode")
    for composite in composites:
        wasModifying = composite.StartModify()
        if backgroundNode is not None:
            if composite.GetBackgroundVolumeID() != backgroundNode.GetID():
                toFit.append(composite)
            composite.SetBackgroundVolumeID(backgroundNode.GetID())
        if foregroundNode is not None:
            composite.SetForegroundVolumeID(foregroundNode.GetID())
        composite.SetForegroundOpacity(float(opacity))
        composite.EndModify(wasModifying)
    for logic in _sliceLogics(sliceLogics):
        if logic.GetSliceCompositeNode() in toFit:
            logic.FitSliceToBackground()
    # The colour legend displayable manager re-checks which views show a volume only when a legend node
    # is modified or when the user changes a layer in a slice controller (composite interaction flags),
    # not when layers are set from code: nudge the legends of the volumes just shown.
    for node in (backgroundNode, foregroundNode):
        legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node) if node is not None else None
        if legend is not None:
            legend.Modified()
    return len(composites)


def _sliceLogics(sliceLogics) -> list:
    if sliceLogics is None:
        return []
    if hasattr(sliceLogics, "GetNumberOfItems"):  # a vtkCollection
        return [sliceLogics.GetItemAsObject(i) for i in range(sliceLogics.GetNumberOfItems())]
    return list(sliceLogics)
