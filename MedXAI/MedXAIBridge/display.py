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

from MedXAILib.errors import InputError

from .volumes import checkVolumeNode, nodeLabel

__all__ = ["applyAttributionDisplay", "showInSliceViews", "DIVERGING_TABLE_NAME", "SEQUENTIAL_TABLE_NAME"]

DIVERGING_TABLE_NAME = "MedXAI Diverging"
SEQUENTIAL_TABLE_NAME = "MedXAI Sequential"
_TABLE_ATTRIBUTE = "MedXAI.ColorTable"  # "diverging" / "sequential" on shared tables, "node" on per-node ones
_NODE_TABLE_ATTRIBUTE = "MedXAI.Display.ColorNodeID"  # on the attribution node: its per-node table
_ENTRIES = 256

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
    table = scene.CreateNodeByClass("vtkMRMLColorTableNode")
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
    tables = scene.GetNodesByClass("vtkMRMLColorTableNode")
    for i in range(tables.GetNumberOfItems()):
        table = tables.GetItemAsObject(i)
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
                            thresholdPercentile: float = 0.0):
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
    from vtk.util import numpy_support

    values = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).astype(np.float64, copy=False)
    values = values[np.isfinite(values)]
    if values.size == 0:
        values = np.zeros(1)
    magnitude = np.abs(values)
    m = float(magnitude.max()) or 1.0
    amin, amax = float(values.min()), float(values.max())
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
    threshold = float(np.percentile(magnitude, thresholdPercentile)) if thresholdPercentile > 0 else 0.0

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
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        if composite.GetForegroundVolumeID() == node.GetID():
            composite.SetForegroundOpacity(float(opacity))
    return display


def showInSliceViews(scene, backgroundNode, foregroundNode, opacity: float = 0.5) -> int:
    """Show `backgroundNode` (the image) under `foregroundNode` (the attribution) in every slice view.

    Sets every ``vtkMRMLSliceCompositeNode`` of `scene`: background volume, foreground volume and
    foreground opacity. Passing None for a layer leaves that layer as it is.

    Returns:
        The number of slice views updated (0 when the scene has no slice views, e.g. a bare scene).
    """
    if scene is None:
        raise InputError("no scene was given")
    if not 0.0 <= float(opacity) <= 1.0:
        raise InputError(f"opacity must be in [0, 1]; got {opacity}")
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        wasModifying = composite.StartModify()
        if backgroundNode is not None:
            composite.SetBackgroundVolumeID(backgroundNode.GetID())
        if foregroundNode is not None:
            composite.SetForegroundVolumeID(foregroundNode.GetID())
        composite.SetForegroundOpacity(float(opacity))
        composite.EndModify(wasModifying)
    return composites.GetNumberOfItems()
