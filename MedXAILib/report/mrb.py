"""Slicer scene bundles (``.mrb``) written without Slicer.

MedXAILib may not import Slicer (DESIGN.md, section 1), yet the demo should hand over a scene that
opens in 3D Slicer with the attribution already shown. An ``.mrb`` is a zip archive holding one
folder with a ``.mrml`` XML scene and the data files it names; this module writes both directly:

- volumes as NRRD files (:func:`MedXAILib.io.write_image`, so the exact geometry of the input)
  with a ``VolumeArchetypeStorage`` node, a ``Volume`` node and a ``VolumeDisplay`` node (window
  and level, colour node);
- the diverging colour map as a ``ColorTable`` node stored in a ``.ctbl`` colour file (the
  format every Slicer 5 reads): the 256-entry cool-to-warm table of the MedXAI module
  (``MedXAI Diverging``), transparent at its centre so zero relevance leaves the image unaltered,
  and by default also where |a| is below 10 % of the window, so weak relevance does not veil it;
- a segmentation as a ``.seg.nrrd`` file: a label map with the ``Segment<N>_*`` and
  ``Segmentation_*`` header fields of Slicer's ``vtkMRMLSegmentationStorageNode``, plus
  ``Segmentation``, ``SegmentationDisplay`` and ``SegmentationStorage`` nodes;
- the Red, Yellow and Green slice views (axial, sagittal, coronal) through a focus point, and their
  slice composite nodes: image as background, attribution as foreground with its opacity.

Element and attribute names follow what Slicer's own ``WriteXML`` methods write (checked against a
scene saved by slicer-core); see docs/adr/0002-scene-files-without-slicer.md.
``Testing/Bridge/test_demo_scene.py`` loads the bundles with slicer-core's ``vtkMRMLScene.ReadFromMRB``
and renders a slice view of them.
"""

from __future__ import annotations

import shutil
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from ..volume import ImageVolume

__all__ = ["DIVERGING_TABLE_NAME", "SceneSegmentation", "SceneVolume", "diverging_rgba", "table_name", "write_mrb",
           "write_seg_nrrd"]

DIVERGING_TABLE_NAME = "MedXAI Diverging"  # the name MedXAIBridge.display gives the same table
_ENTRIES = 256
# Moreland's cool-to-warm diverging map (matplotlib "coolwarm"), as in MedXAIBridge.display.
_DIVERGING = ((0.00, (0.2298, 0.2987, 0.7537)), (0.25, (0.5543, 0.6901, 0.9955)), (0.50, (0.8654, 0.8654, 0.8654)),
              (0.75, (0.9567, 0.5980, 0.4773)), (1.00, (0.7057, 0.0156, 0.1502)))
# Slicer's default slice orientations (vtkMRMLSliceNode presets; rows of the 3x3 slice-to-RAS matrix).
_ORIENTATIONS = {"Axial": ((-1, 0, 0), (0, 1, 0), (0, 0, 1)),
                 "Sagittal": ((0, 0, -1), (-1, 0, 0), (0, 1, 0)),
                 "Coronal": ((-1, 0, 0), (0, 0, 1), (0, 1, 0))}
_VIEWS = (("Red", "Axial", (0.952941, 0.290196, 0.2)), ("Yellow", "Sagittal", (0.929412, 0.835294, 0.298039)),
          ("Green", "Coronal", (0.431373, 0.690196, 0.352941)))


@dataclass
class SceneVolume:
    """A scalar volume of the scene.

    Attributes:
        name: node name (also the file name, made safe).
        volume: one-channel volume (further channels are summed).
        window: display window ``(low, high)``.
        colour: ``"grey"`` or ``"diverging"``.
        attributes: MRML node attributes (e.g. ``MedXAI.Provenance``).
        header: extra NRRD header fields (keys of letters, digits, ``_ . -``).
    """

    name: str
    volume: ImageVolume
    window: tuple[float, float]
    colour: str = "grey"
    attributes: dict[str, str] = field(default_factory=dict)
    header: dict[str, str] = field(default_factory=dict)


@dataclass
class SceneSegmentation:
    """A label map shown as segments: ``segments`` lists ``(label value, name, (r, g, b) in [0, 1])``."""

    name: str
    labels: np.ndarray
    affine: np.ndarray
    segments: Sequence[tuple[int, str, tuple[float, float, float]]]


def diverging_rgba(hidden: float = 0.0) -> np.ndarray:
    """(256, 4) RGBA in [0, 1] of the diverging table.

    The two centre entries are transparent, and so is every entry whose value lies within
    ``hidden`` (a fraction of the window's half-width) of zero: Slicer's slice views show an entry
    either fully or not at all (the colour table's alpha is combined with a logical AND), so weak
    relevance can only be hidden, not faded.
    """
    x = (np.arange(_ENTRIES) + 0.5) / _ENTRIES
    positions = [p for p, _ in _DIVERGING]
    rgb = np.stack([np.interp(x, positions, [c[ch] for _, c in _DIVERGING]) for ch in range(3)], axis=1)
    rgba = np.concatenate([rgb, np.ones((_ENTRIES, 1))], axis=1)
    rgba[_ENTRIES // 2 - 1 : _ENTRIES // 2 + 1, 3] = 0.0
    rgba[np.abs(2 * x - 1) < hidden, 3] = 0.0
    return rgba


def table_name(hidden: float) -> str:
    """The colour table's name: ``MedXAI Diverging``, with the hidden band when there is one."""
    return DIVERGING_TABLE_NAME + (f" (|a| < {hidden:.0%} hidden)" if hidden > 0 else "")


# ------------------------------------------------------------------------------------------------
# Data files


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "node"


def _write_ctbl(path: Path, rgba: np.ndarray) -> None:
    """A Slicer colour file: ``index name r g b a`` per line, 0-255 (vtkMRMLColorTableStorageNode)."""
    lines = ["# Color table file " + path.name, f"# {len(rgba)} values"]
    lines += [f"{i} entry{i} " + " ".join(str(int(round(255 * v))) for v in row) for i, row in enumerate(rgba)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _extent(mask: np.ndarray) -> str:
    index = np.argwhere(mask)
    lo, hi = index.min(axis=0), index.max(axis=0)
    return " ".join(f"{a} {b}" for a, b in zip(lo, hi))


def write_seg_nrrd(path: Path, segmentation: SceneSegmentation) -> list[str]:
    """Write `segmentation` as a one-layer ``.seg.nrrd``: a uint8 label map any NRRD reader takes,
    with the segment fields Slicer reads. Returns the names of the (non-empty) segments written."""
    import SimpleITK as sitk

    from ..io import to_sitk

    labels = np.asarray(segmentation.labels)
    if labels.ndim != 3 or labels.min() < 0 or labels.max() > 255:
        raise InputError("a segmentation needs an (I, J, K) label map with values 0-255")
    image = sitk.Cast(to_sitk(ImageVolume(labels.astype(np.float32)[np.newaxis], segmentation.affine)),
                      sitk.sitkUInt8)
    geometry = ";".join(f"{v:.10g}" for v in np.asarray(segmentation.affine, float).ravel())
    geometry += ";" + ";".join(f"0;{n - 1}" for n in labels.shape) + ";"
    fields = {"Segmentation_MasterRepresentation": "Binary labelmap",
              "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
              "Segmentation_ReferenceImageExtentOffset": "0 0 0",
              "Segmentation_ConversionParameters": f"Reference image geometry|{geometry}|&"}
    written = []
    for value, name, colour in segmentation.segments:
        mask = labels == int(value)
        if not mask.any():
            continue
        n = len(written)
        fields.update({f"Segment{n}_ID": f"Segment_{int(value)}", f"Segment{n}_Name": name,
                       f"Segment{n}_NameAutoGenerated": "0",
                       f"Segment{n}_Color": " ".join(f"{float(c):.6g}" for c in colour),
                       f"Segment{n}_ColorAutoGenerated": "0", f"Segment{n}_Extent": _extent(mask),
                       f"Segment{n}_LabelValue": str(int(value)), f"Segment{n}_Layer": "0",
                       f"Segment{n}_Tags": ""})
        written.append(name)
    for key, value in fields.items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(path), True)
    return written


# ------------------------------------------------------------------------------------------------
# MRML


def _numbers(values) -> str:
    return " ".join(f"{float(v):.10g}" for v in np.ravel(values))


def _attributes(values: dict[str, str]) -> str:
    """MRML's ``attributes`` value: ``name:value;...`` with ``%`` and ``;`` percent-encoded."""
    return ";".join(f"{k}:{str(v).replace('%', '%25').replace(';', '%3B')}" for k, v in values.items())


def _references(values: dict[str, str]) -> str:
    return "".join(f"{role}:{node};" for role, node in values.items())


class _Scene:
    def __init__(self) -> None:
        self.root = ET.Element("MRML", version="Slicer4.4.0", userTags="")
        self.counts: dict[str, int] = {}

    def new_id(self, cls: str) -> str:
        self.counts[cls] = self.counts.get(cls, 0) + 1
        return f"vtkMRML{cls}{self.counts[cls]}"

    def add(self, tag: str, node_id: str, name: str, **attrs: str) -> None:
        ET.SubElement(self.root, tag, {"id": node_id, "name": name, **{k: str(v) for k, v in attrs.items()}})

    def storage(self, tag: str, cls: str, filename: str, **attrs: str) -> str:
        node_id = self.new_id(cls)
        self.add(tag, node_id, tag, hideFromEditors="true", fileName=filename, useCompression="1",
                 readState="0", writeState="0", **attrs)
        return node_id

    def volume(self, item: SceneVolume, filename: str, colour_ids: dict[str, str],
               references: dict[str, str]) -> str:
        node_id, display = self.new_id("ScalarVolumeNode"), self.new_id("ScalarVolumeDisplayNode")
        storage = self.storage("VolumeArchetypeStorage", "VolumeArchetypeStorageNode", filename,
                               centerImage="0", UseOrientationFromFile="1")
        lo, hi = (float(v) for v in item.window)
        self.add("VolumeDisplay", display, "VolumeDisplay", hideFromEditors="true", visibility="true",
                 colorNodeID=colour_ids[item.colour], window=f"{hi - lo:.10g}", level=f"{(hi + lo) / 2:.10g}",
                 autoWindowLevel="0", applyThreshold="0", autoThreshold="0", interpolate="1",
                 upperThreshold=f"{hi:.10g}", lowerThreshold=f"{lo:.10g}")
        spacing = item.volume.spacing
        attrs = {"attributes": _attributes(item.attributes)} if item.attributes else {}
        references = {"display": display, "storage": storage, **references}
        self.add("Volume", node_id, item.name, hideFromEditors="false", references=_references(references),
                 spacing=_numbers(spacing), origin=_numbers(item.volume.origin),
                 ijkToRASDirections=_numbers(item.volume.direction), **attrs)
        return node_id

    def colour_table(self, filename: str, hidden: float) -> str:
        node_id = self.new_id("ColorTableNode")
        storage = self.storage("ColorTableStorage", "ColorTableStorageNode", filename)
        # the module's own shared table is "diverging"; a banded one must not be taken for it
        kind = "diverging" if hidden == 0 else "diverging-band"
        self.add("ColorTable", node_id, table_name(hidden), hideFromEditors="false", type="13",
                 numcolors=str(_ENTRIES), references=_references({"storage": storage}),
                 attributes=_attributes({"MedXAI.ColorTable": kind, "Category": "MedXAI"}),
                 description="MedXAI: cool-to-warm diverging map for signed relevance in a symmetric window, "
                             f"transparent where |a| < {hidden:.0%} of the window")
        return node_id

    def segmentation(self, name: str, filename: str, reference_id: str) -> str:
        node_id, display = self.new_id("SegmentationNode"), self.new_id("SegmentationDisplayNode")
        storage = self.storage("SegmentationStorage", "SegmentationStorageNode", filename)
        self.add("SegmentationDisplay", display, "SegmentationDisplay", hideFromEditors="true", visibility="true",
                 visibility2D="true", visibility3D="true", Visibility2DFill="false", Visibility2DOutline="true",
                 Opacity2DFill="0.3", Opacity2DOutline="1", opacity="1")
        self.add("Segmentation", node_id, name, hideFromEditors="false", SourceRepresentationName="Binary labelmap",
                 references=_references({"display": display, "storage": storage,
                                         "referenceImageGeometryRef": reference_id}))
        return node_id

    def views(self, background: str, foreground: Optional[str], opacity: float, focus: np.ndarray,
              centre: np.ndarray, field_of_view: float) -> None:
        presets = {f"orientationMatrix{k}": _numbers(v) for k, v in _ORIENTATIONS.items()}
        for layout, orientation, colour in _VIEWS:
            slice_to_ras = np.eye(4)
            slice_to_ras[:3, :3] = _ORIENTATIONS[orientation]
            normal = slice_to_ras[:3, 2]  # the plane passes through the focus, centred on the volume
            slice_to_ras[:3, 3] = centre + normal * float(normal @ (focus - centre))
            self.add("Slice", self.new_id("SliceNode"), layout, hideFromEditors="false", singletonTag=layout,
                     layoutName=layout, layoutLabel=layout[0], layoutColor=_numbers(colour),
                     orientation=orientation, orientationReference=orientation,
                     sliceToRAS=_numbers(slice_to_ras), fieldOfView=_numbers((field_of_view, field_of_view, 1)),
                     dimensions="256 256 1", **presets)
            references = {"backgroundVolume": background, **({"foregroundVolume": foreground} if foreground else {})}
            self.add("SliceComposite", self.new_id("SliceCompositeNode"), "SliceComposite", hideFromEditors="true",
                     singletonTag=layout, layoutName=layout, references=_references(references),
                     compositing="0", foregroundOpacity=f"{opacity:.6g}", labelOpacity="1",
                     doPropagateVolumeSelection="0")

    def write(self, path: Path) -> None:
        ET.indent(self.root, space=" ")
        ET.ElementTree(self.root).write(path, encoding="UTF-8", xml_declaration=True)


# ------------------------------------------------------------------------------------------------
# Public API


def write_mrb(
    path: str | Path,
    volumes: Sequence[SceneVolume],
    segmentation: Optional[SceneSegmentation] = None,
    background: int = 0,
    foreground: Optional[int] = None,
    foreground_opacity: float = 0.5,
    focus_ras: Optional[Sequence[float]] = None,
    hidden: float = 0.1,
) -> Path:
    """Write a Slicer scene bundle holding `volumes` (and `segmentation`), ready to look at.

    Args:
        path: the ``.mrb`` file to write (replaced atomically).
        volumes: scalar volumes; attribution volumes use ``colour="diverging"``.
        segmentation: a label map shown as segments (outlines) in the slice views.
        background: index into `volumes` of the image shown as the background layer.
        foreground: index of the volume shown as the foreground layer (None: none).
        foreground_opacity: the foreground layer's opacity in the slice views.
        focus_ras: RAS point (mm) the three slice planes pass through (each view stays centred on
            the background volume); default: the background's centre.
        hidden: diverging volumes are transparent where |a| is below this fraction of their window's
            half-width (weak relevance would otherwise veil the image in light grey); 0 hides only
            the two centre entries, as the MedXAI module's ``MedXAI Diverging`` table does.

    Returns:
        The path written.

    Raises:
        InputError: an empty scene, a bad index, colour or opacity, or a missing output folder.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write '{path}': the folder '{path.parent}' does not exist")
    if not volumes or not 0 <= background < len(volumes) or (
            foreground is not None and not 0 <= foreground < len(volumes)):
        raise InputError("a scene needs at least one volume and valid background/foreground indices")
    if not 0.0 <= float(foreground_opacity) <= 1.0:
        raise InputError(f"foreground opacity must be in [0, 1]; got {foreground_opacity}")
    if not 0.0 <= float(hidden) < 1.0:
        raise InputError(f"the hidden band must be a fraction in [0, 1); got {hidden}")
    from ..io import write_image

    base = volumes[background].volume
    corners = np.array([[i, j, k, 1.0] for i in (0, base.shape[0] - 1) for j in (0, base.shape[1] - 1)
                        for k in (0, base.shape[2] - 1)]) @ base.affine.T
    centre = corners[:, :3].mean(axis=0)
    focus = np.asarray(focus_ras if focus_ras is not None else centre, dtype=float)
    field_of_view = float(np.ptp(corners[:, :3], axis=0).max()) * 1.05
    stem = _safe(path.stem) or "scene"
    tmp = Path(tempfile.mkdtemp(prefix=".medxai-mrb-", dir=path.parent))
    try:
        folder = tmp / stem
        (folder / "Data").mkdir(parents=True)
        scene = _Scene()
        colour_ids = {"grey": "vtkMRMLColorTableNodeGrey"}
        if any(v.colour == "diverging" for v in volumes):
            _write_ctbl(folder / "Data" / "MedXAI_Diverging.ctbl", diverging_rgba(float(hidden)))
            colour_ids["diverging"] = scene.colour_table("Data/MedXAI_Diverging.ctbl", float(hidden))
        files: set[str] = set()
        ids: dict[int, str] = {}
        for index in [background] + [i for i in range(len(volumes)) if i != background]:
            item = volumes[index]
            if item.colour not in colour_ids:
                raise InputError(f"unknown colour {item.colour!r}: use 'grey' or 'diverging'")
            file = _safe(item.name)
            while file in files:
                file += "_"
            files.add(file)
            volume = item.volume if item.volume.n_channels == 1 else item.volume.with_array(
                item.volume.array.sum(axis=0))
            write_image(volume, folder / "Data" / f"{file}.nrrd", metadata=item.header)
            # an attribution refers to its input as the MedXAI module's result nodes do
            references = {"MedXAI.InputVolume": ids[background]} if item.colour == "diverging" else {}
            ids[index] = scene.volume(item, f"Data/{file}.nrrd", colour_ids, references)
        if segmentation is not None:
            write_seg_nrrd(folder / "Data" / f"{_safe(segmentation.name)}.seg.nrrd", segmentation)
            scene.segmentation(segmentation.name, f"Data/{_safe(segmentation.name)}.seg.nrrd", ids[background])
        scene.views(ids[background], ids[foreground] if foreground is not None else None,
                    float(foreground_opacity), focus, centre, field_of_view)
        scene.write(folder / f"{stem}.mrml")
        partial = tmp / "bundle.mrb"
        with zipfile.ZipFile(partial, "w") as archive:
            for file in sorted(folder.rglob("*")):
                if file.is_file():  # the NRRD voxels are gzip-compressed already
                    compression = zipfile.ZIP_STORED if file.suffix == ".nrrd" else zipfile.ZIP_DEFLATED
                    archive.write(file, file.relative_to(tmp).as_posix(), compress_type=compression)
        shutil.move(str(partial), str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
