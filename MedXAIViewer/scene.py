"""The MRML scene behind the page: a result folder loaded into a slicer-core scene through MedXAIBridge.

Nodes, colours and layers are made exactly as the Slicer module makes them (DESIGN.md, section 7: the web
viewer reuses MedXAIBridge): ``volumes.volumeNodeFromImageVolume`` for the image,
``results.createAttributionNode`` for each attribution (provenance as node attributes, a reference to
the image), ``segments.segmentationNodeFromLabelMap`` for the segmentation (shown as outlines), and
``display.applyAttributionDisplay`` / ``display.showInSliceViews`` for the colour table, window,
threshold and opacity. The per-structure table is :func:`MedXAILib.analysis.statistics.structure_statistics`
of the map over the segmentation, the library's one definition of those measures.

Attributions load when first shown and stay cached. :meth:`ViewerScene.release` removes every node the
folder added (the views and their slice nodes stay), so an idle server holds no volumes.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

try:
    import MedXAIBridge  # noqa: F401  (installed with the package: pyproject maps it from MedXAI/)
except ImportError:  # a source checkout run without installing: Slicer's own layout, MedXAI/ on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedXAI"))

from MedXAIBridge import display, results, segments, volumes  # noqa: E402
from MedXAIBridge.nodes import nodesByClass  # noqa: E402

from MedXAILib.attribution import PROVENANCE_KEY, Attribution  # noqa: E402
from MedXAILib.errors import first_line  # noqa: E402

from .folder import AttributionFile, ResultFolder  # noqa: E402

__all__ = ["DisplaySettings", "ViewerScene", "SLICE_VIEWS", "STATISTIC_COLUMNS", "provenance_rows"]

#: The three slice views (singleton tags of trame-slicer's layouts, Slicer's names) and their orientation.
SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
#: The columns of MedXAILib's statistics table shown on the page, in this order, when the library has them
#: (the page shows whatever of these the library computes; centres, masses and the like stay in its CSV).
STATISTIC_COLUMNS = ("structure", "voxels", "volume_mm3", "share_abs", "share_positive", "density_ratio",
                     "abs_rank_accuracy", "rank_accuracy", "pointing_hit", "peak_distance_mm", "top_dice", "mean",
                     "max", "boundary_interior_ratio")
_LEGEND_ENTRIES = 256


@dataclass
class DisplaySettings:
    """The attribution display of the Slicer module's panel (``MedXAIBridge.display.applyAttributionDisplay``).

    ``threshold`` is a percentile of |a|: voxels below it are transparent. ``window`` is the percentile of
    |a| at which the symmetric window ends (more saturates). The viewer starts at 95 and 99.9 (the module at
    0 and 100), close to what the demo's Slicer scene shows: otherwise a few extreme voxels set the window,
    and the near-zero relevance of most voxels, drawn in the diverging map's pale centre colours, veils the
    image when a reviewer first opens a folder.
    """

    colormap: str = "auto"
    opacity: float = 0.5
    symmetric: bool = True
    threshold: float = 95.0
    window: float = 99.9


def _problem(path: Path, error: BaseException) -> str:
    return f"{path.name}: {first_line(error)}"


class ViewerScene:
    """One result folder shown in a scene's slice views (see the module docstring).

    Args:
        scene: the ``vtkMRMLScene`` of the views (trame-slicer's ``SlicerApp.scene``); the nodes present
            now (views, colour tables, layout) are never removed by :meth:`release`.
    """

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self._baseline = self._node_ids()
        self.folder: Optional[ResultFolder] = None
        self.image_node = None
        self.segmentation_node = None
        self.labels: Optional[np.ndarray] = None
        self.names: list[str] = []
        self._attributions: dict[int, Any] = {}
        self._statistics: dict[int, dict[str, list]] = {}
        self.current: Optional[int] = None
        self.problems: list[str] = []

    # -- loading -------------------------------------------------------------------------------------

    def _node_ids(self) -> set[str]:
        nodes = self.scene.GetNodes()
        return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}

    @property
    def added_nodes(self) -> int:
        """How many nodes the folder added to the scene (0 once released)."""
        return len(self._node_ids() - self._baseline)

    def load(self, folder: ResultFolder) -> None:
        """Show `folder`: its image and segmentation now, its attributions when selected."""
        from MedXAILib.io import read_label_map

        self.release()
        self.folder = folder
        self.problems = list(folder.problems)
        image = None
        if folder.image is not None:
            try:
                image = _read_image(folder)
                if image.n_channels > 1:
                    image = image.with_array(image.array[:1])
                self.image_node = volumes.volumeNodeFromImageVolume(self.scene, image, folder.image.name)
                imageDisplay = self.image_node.GetDisplayNode()
                if folder.image_window is not None:
                    imageDisplay.SetAutoWindowLevel(False)
                    imageDisplay.SetWindowLevelMinMax(*folder.image_window)
                display.showInSliceViews(self.scene, self.image_node, None, 0.0)
            except Exception as error:  # noqa: BLE001 - a damaged file is a problem on the page, not a crash
                self.problems.append(_problem(folder.image, error))
        if folder.segmentation is not None and self.image_node is None:
            self.problems.append(f"{folder.segmentation.name}: not shown, there is no image to place it on")
        elif folder.segmentation is not None:
            try:
                labelVolume = read_label_map(folder.segmentation, reference=image)
                self.labels = np.rint(labelVolume.array[0]).astype(np.int64)
                named = _segment_names(labelVolume.meta.get("header", {}))
                top = int(self.labels.max()) if self.labels.size else 0
                self.names = ["background"] + [named.get(v, (f"label {v}", None))[0] for v in range(1, top + 1)]
                self.segmentation_node = segments.segmentationNodeFromLabelMap(
                    self.scene, self.labels, self.image_node, self.names[1:], "Segmentation")
                _colour_segments(self.segmentation_node, named)
                segmentationDisplay = self.segmentation_node.GetDisplayNode()
                segmentationDisplay.SetVisibility2DFill(False)  # outlines only, over the attribution
                segmentationDisplay.SetVisibility2DOutline(True)
                segmentationDisplay.SetSliceIntersectionThickness(2)
            except Exception as error:  # noqa: BLE001 - as above: the views show the rest
                self.problems.append(_problem(folder.segmentation, error))
                self.labels, self.names = None, []
        for tag in SLICE_VIEWS:
            sliceNode = self.scene.GetSingletonNode(tag, "vtkMRMLSliceNode")
            if sliceNode is not None:
                sliceNode.SetSliceVisible(True)  # the three planes, with their layers, in the 3D view

    def _attribution_node(self, index: int):
        if index in self._attributions:
            return self._attributions[index]
        from MedXAILib.io import read_image

        entry: AttributionFile = self.folder.attributions[index]
        volume = read_image(entry.path)
        attribution = Attribution(array=volume.array, affine=volume.affine, provenance=dict(entry.provenance))
        if self.image_node is not None:
            node = results.createAttributionNode(attribution, self.image_node, name=entry.label)
        else:  # no image to hang it on: a plain volume node with the same attributes
            node = volumes.volumeNodeFromImageVolume(self.scene, attribution.to_volume(), entry.label)
            node.SetAttribute(results.RESULT_ATTRIBUTE, "attribution")
            node.SetAttribute(PROVENANCE_KEY, attribution.provenance_json())
        self._attributions[index] = node
        return node

    def show(self, index: int, settings: DisplaySettings) -> Any:
        """Show attribution `index` over the image with `settings`, the slices through its focus point.

        Raises:
            MedXAIError: the file cannot be read or is not on the image grid (the page shows the
                message; what was shown before stays).
        """
        node = self._attribution_node(index)
        self.current = index
        self.apply(settings)
        self.focus()
        return node

    def apply(self, settings: DisplaySettings) -> None:
        """Apply `settings` to the shown attribution, as the module's display panel does."""
        if self.current is None:
            return
        node = self._attributions[self.current]
        # colorLegend=False: the page draws the legend beside the views, from the same colour table
        display.applyAttributionDisplay(node, settings.colormap, settings.opacity, settings.symmetric,
                                        settings.threshold, settings.window, colorLegend=False)
        if self.image_node is not None:
            display.showInSliceViews(self.scene, self.image_node, node, settings.opacity)
        else:
            display.showInSliceViews(self.scene, node, None, 0.0)

    def focus(self) -> Optional[tuple[float, float, float]]:
        """Move the slices through the attribution's focus: its target voxel when it has one, else its peak."""
        if self.current is None:
            return None
        node = self._attributions[self.current]
        provenance = results.attributionProvenance(node)
        target = provenance.get("target") if isinstance(provenance.get("target"), dict) else {}
        voxel = target.get("voxel")
        if not (isinstance(voxel, list) and len(voxel) == 3):
            array = volumes.imageVolumeFromNode(node).array[0]
            voxel = list(np.unravel_index(int(np.argmax(array)), array.shape))
        ras = volumes.ijkToRas(node) @ np.array([*map(float, voxel), 1.0])
        for tag in SLICE_VIEWS:
            sliceNode = self.scene.GetSingletonNode(tag, "vtkMRMLSliceNode")
            if sliceNode is not None:
                sliceNode.JumpSliceByOffsetting(*map(float, ras[:3]))
        return tuple(float(v) for v in ras[:3])

    def set_outlines(self, visible: bool) -> None:
        if self.segmentation_node is not None:
            self.segmentation_node.GetDisplayNode().SetVisibility(bool(visible))

    def release(self) -> None:
        """Remove every node the folder added (volumes, colour tables, segmentation); keep the views.

        The slice layers let go of the volumes first and the data nodes go before their display nodes and
        colour tables, in one batch: removed the other way round, the slice pipelines run on half-removed
        nodes (VTK errors, and a crash of the server process was seen).
        """
        import slicer

        for composite in nodesByClass(self.scene, "vtkMRMLSliceCompositeNode"):
            composite.SetBackgroundVolumeID(None)
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)
        self.scene.StartState(slicer.vtkMRMLScene.BatchProcessState)
        try:
            for first in (True, False):
                for node_id in sorted(self._node_ids() - self._baseline):
                    node = self.scene.GetNodeByID(node_id)
                    if node is not None and node.IsA("vtkMRMLDisplayableNode") == first:
                        self.scene.RemoveNode(node)
        finally:
            self.scene.EndState(slicer.vtkMRMLScene.BatchProcessState)
        self.image_node = self.segmentation_node = self.labels = None
        self.names, self.current, self.folder = [], None, None
        self._attributions.clear()
        self._statistics.clear()

    # -- what the page shows beside the views --------------------------------------------------------

    def statistics(self) -> dict[str, list]:
        """MedXAILib's per-structure table of the shown attribution over the segmentation (empty without one)."""
        if self.current is None or self.labels is None:
            return {}
        if self.current not in self._statistics:
            from MedXAILib.analysis.statistics import structure_statistics

            node = self._attributions[self.current]
            volume = volumes.imageVolumeFromNode(node)
            self._statistics[self.current] = structure_statistics(volume.array[0], self.labels, self.names,
                                                                  volume.affine)
        return self._statistics[self.current]

    def provenance(self) -> dict[str, Any]:
        if self.current is None:
            return {}
        return results.attributionProvenance(self._attributions[self.current])

    def legend(self) -> dict[str, Any]:
        """The colour bar of the shown attribution as drawn: PNG (transparent entries checkered), window, cut-off."""
        if self.current is None:
            return {}
        node = self._attributions[self.current]
        displayNode = node.GetDisplayNode()
        colorNode = displayNode.GetColorNode()
        lo, hi = displayNode.GetWindowLevelMin(), displayNode.GetWindowLevelMax()
        rgba = np.zeros((_LEGEND_ENTRIES, 4))
        lookup = colorNode.GetLookupTable()
        count = colorNode.GetNumberOfColors()
        values = lo + (np.arange(_LEGEND_ENTRIES) + 0.5) / _LEGEND_ENTRIES * (hi - lo)
        entry = [0.0, 0.0, 0.0, 0.0]
        for i in range(_LEGEND_ENTRIES):
            if lookup is not None and count > 0:
                lookup.GetTableValue(min(count - 1, int(i * count / _LEGEND_ENTRIES)), entry)
            rgba[i] = entry
        if displayNode.GetApplyThreshold():  # sequential maps: the display node's own threshold
            rgba[values < displayNode.GetLowerThreshold(), 3] = 0.0
        threshold = float(node.GetAttribute("MedXAI.Display.Threshold") or 0.0)
        colormap = node.GetAttribute("MedXAI.Display.Colormap") or ""
        names = {"diverging": display.DIVERGING_TABLE_NAME, "sequential": display.SEQUENTIAL_TABLE_NAME}
        return {"png": _legend_png(rgba), "lo": float(lo), "hi": float(hi), "threshold": threshold,
                "colormap": colormap, "table": names.get(colormap, colorNode.GetName()), "label": node.GetName()}


def _read_image(folder: ResultFolder) -> Any:
    """The folder's image: its file, or the volume file inside its scene bundle (copied to a temporary file)."""
    import tempfile
    import zipfile

    from MedXAILib.io import read_image

    if folder.image_member is None:
        return read_image(folder.image)
    suffix = "".join(Path(folder.image_member).suffixes[-2:]) if folder.image_member.endswith(".gz") else Path(
        folder.image_member).suffix
    with tempfile.TemporaryDirectory(prefix="medxai-view-") as scratch:
        copy = Path(scratch) / f"image{suffix}"  # our own name: a member's path never becomes a file path
        with zipfile.ZipFile(folder.image) as archive:
            copy.write_bytes(archive.read(folder.image_member))
        image = read_image(copy)
    image.meta["source"] = f"{folder.image.name}:{folder.image_member}"
    return image


def _segment_names(header: dict[str, str]) -> dict[int, tuple[str, Optional[tuple[float, float, float]]]]:
    """Label value -> (name, colour) from a ``.seg.nrrd`` header (``Segment<N>_Name``, ``_LabelValue``, ``_Color``)."""
    named = {}
    n = 0
    while f"Segment{n}_Name" in header:
        try:
            value = int(header.get(f"Segment{n}_LabelValue", n + 1))
        except ValueError:
            value = n + 1
        colour = None
        try:
            parts = [float(v) for v in header.get(f"Segment{n}_Color", "").split()]
            colour = tuple(parts) if len(parts) == 3 else None
        except ValueError:
            colour = None
        named[value] = (header[f"Segment{n}_Name"], colour)
        n += 1
    return named


def _colour_segments(node: Any, named: dict[int, tuple[str, Optional[tuple]]]) -> None:
    segmentation = node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        colour = named.get(segment.GetLabelValue(), ("", None))[1]
        if colour is not None:
            segment.SetColor(*colour)


def _legend_png(rgba: np.ndarray, height: int = 14) -> str:
    """A data URL: the colour bar over a light/dark checkerboard, so transparent entries show as such."""
    from PIL import Image

    width = len(rgba)
    y, x = np.mgrid[0:height, 0:width]
    board = np.where(((x // 7) + (y // 7)) % 2 == 0, 0.85, 0.55)[..., None] * np.ones(3)
    alpha = rgba[None, :, 3:4]
    pixels = (rgba[None, :, :3] * alpha + board * (1.0 - alpha)) * 255.0
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def provenance_rows(provenance: dict[str, Any]) -> list[dict[str, str]]:
    """The provenance as (key, value) rows for the page, most useful first; nested values as compact JSON."""
    first = ("method_title", "method", "model", "target_name", "target", "parameters", "prediction", "created",
             "seed", "device", "seconds", "reference", "diagnostics", "input", "versions")
    keys = [k for k in first if k in provenance] + sorted(k for k in provenance if k not in first)
    rows = []
    for key in keys:
        value = provenance[key]
        if key == "model" and isinstance(value, dict):
            value = {k: value[k] for k in ("id", "task", "sha256", "source", "class_names") if k in value}
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        rows.append({"key": key, "value": text if len(text) <= 400 else text[:400] + " …"})
    return rows

