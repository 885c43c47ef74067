"""What a result folder holds, read without slicer-core: images, attributions, segmentation, cohort table.

:func:`scan_folder` looks at the files of one folder (never below it, except ``cases/<id>/`` of a cohort)
and sorts them by what their headers say, reading headers only (SimpleITK's ``ReadImageInformation``):

- an **attribution** carries ``MedXAI.Provenance`` in its header (NRRD, MetaImage) or in its NIfTI JSON
  sidecar, as ``medxai explain``, ``medxai demo`` and :meth:`MedXAILib.attribution.Attribution.save`
  write it; its label is "method · model · structure" from that provenance;
- a **segmentation** is a ``.seg.nrrd`` (Slicer's segmentation file, ``Segment<N>_*`` header fields),
  else an image whose name says ``seg``, ``label`` or ``mask`` (such files are never taken for the image);
- the **image** is the one a ``summary.json`` names (the demo's), else ``image.*``, else the first other
  scalar volume that is not a derived map (``MedXAI.Map`` in its header, e.g. a cohort case's entropy);
  a folder without one (a cohort case) takes the background volume of its Slicer scene ``scene.mrb``,
  read from the archive without unpacking it.

A **cohort** folder (``medxai cohort``, issue 18) has a table ``table.csv`` (or ``cohort.csv``) at its top
and one result folder per case under ``cases/<id>/``. Rows are ranked least trustworthy first: by a
``rank`` column when there is one, else by ``risk`` (high first, the cohort's default QA score), else by
``qa_score``, ``confidence`` or ``score`` (low first); a row without a score comes first, as in the cohort
report (it needs a look).

Nothing here raises for a damaged or missing file: each becomes a line in ``problems``, which the page
shows, and the rest of the folder is still shown. :func:`inside` is the one check that a path stays
inside the folder (the viewer reads and serves nothing else).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from MedXAILib.attribution import PROVENANCE_KEY
from MedXAILib.cohort.plan import CASES_FOLDER

__all__ = ["AttributionFile", "CohortRow", "ResultFolder", "IMAGE_SUFFIXES", "inside", "scan_folder",
           "read_cohort_table", "cohort_table", "score_column", "attribution_label"]

IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")
COHORT_TABLES = ("table.csv", "cohort.csv")  # medxai cohort's table; a hand-made one
SCENE_FILE = "scene.mrb"
_SEGMENTATION_WORDS = re.compile(r"seg|label|mask", re.IGNORECASE)


@dataclass
class AttributionFile:
    """One attribution map of the folder: its file, provenance and a readable label."""

    path: Path
    provenance: dict[str, Any]
    label: str


@dataclass
class CohortRow:
    """One row of a cohort table: a case (and structure) with its QA score; ``folder`` is None when missing."""

    case: str
    structure: str
    score: Optional[float]
    error: str
    folder: Optional[Path]
    values: dict[str, str]


@dataclass
class ResultFolder:
    """The viewer's reading of one result folder (see the module docstring)."""

    root: Path
    image: Optional[Path] = None
    image_member: Optional[str] = None  # set when `image` is a scene bundle: the volume's file inside it
    image_window: Optional[tuple[float, float]] = None
    segmentation: Optional[Path] = None
    attributions: list[AttributionFile] = field(default_factory=list)
    cohort: list[CohortRow] = field(default_factory=list)
    cohort_columns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # files worth opening on their own (report, scene)
    problems: list[str] = field(default_factory=list)

    @property
    def is_cohort(self) -> bool:
        return bool(self.cohort)


def inside(root: Path, relative: str | os.PathLike) -> Optional[Path]:
    """The existing file `relative` names under `root`, or None when it would leave `root`.

    Absolute paths, ``..`` and symbolic links that point outside `root` are refused (after resolving,
    so an encoded or roundabout path is judged by where it really leads).
    """
    text = str(relative)
    if not text or "\x00" in text or Path(text).is_absolute() or text.startswith(("/", "\\")):
        return None
    base = Path(root).resolve()
    try:
        target = (base / text).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if target != base and base not in target.parents:
        return None
    return target


def _image_suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


def _header(path: Path) -> tuple[dict[str, str], int]:
    """Header fields and component count of an image file (voxels are not read)."""
    import SimpleITK as sitk

    from MedXAILib.io.images import add_sidecar  # SimpleITK too: loaded with the first image

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # RuntimeError for a damaged or foreign file
    header = add_sidecar(path, {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()})
    return header, reader.GetNumberOfComponents()


def _first_line(error: BaseException) -> str:
    """One line of an error; for SimpleITK the part after ``sitk::ERROR:`` (before it: C++ file names)."""
    text = str(error)
    if "sitk::ERROR:" in text:
        text = text.rsplit("sitk::ERROR:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def attribution_label(provenance: dict[str, Any], fallback: str) -> str:
    """"Method · model · structure" from an attribution's provenance (`fallback` when it has none)."""
    method = provenance.get("method_title") or provenance.get("method")
    model = provenance.get("model")
    if isinstance(model, dict):
        model = model.get("id") or model.get("name") or (Path(str(model.get("source", ""))).stem or None)
    target = provenance.get("target") if isinstance(provenance.get("target"), dict) else {}
    structure = provenance.get("target_name")
    if not structure and target.get("class_index") is not None:
        structure = f"class {target['class_index']}"
    if structure and target.get("region") not in (None, "class"):
        structure = f"{structure} ({target['region']})"
    parts = [str(p) for p in (method, model, structure) if p]
    return " · ".join(parts) if parts else fallback


def _summary(root: Path, problems: list[str]) -> dict[str, Any]:
    path = root / "summary.json"
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        problems.append(f"summary.json: cannot be read ({_first_line(error)}); the folder is shown without it")
        return {}
    return value if isinstance(value, dict) else {}


def _number(text: Any) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def score_column(columns: list[str]) -> Optional[str]:
    """The column a cohort table is ranked by (see the module docstring), or None."""
    return next((c for c in ("rank", "risk", "qa_score", "confidence", "score") if c in columns), None)


def cohort_table(root: Path) -> Optional[Path]:
    """The cohort table at the top of `root`, when there is one."""
    return next((root / name for name in COHORT_TABLES if (root / name).is_file()), None)


def read_cohort_table(root: Path, problems: list[str]) -> tuple[list[CohortRow], list[str]]:
    """The rows of the cohort table ranked least trustworthy first, and its column names."""
    path = cohort_table(root) or root / COHORT_TABLES[0]
    name = path.name
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            records = [dict(r) for r in reader]
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(f"{name}: cannot be read ({_first_line(error)})")
        return [], []
    case_key = next((c for c in ("case", "case_id", "id") if c in columns), None)
    if case_key is None:
        problems.append(f"{name}: no 'case' or 'case_id' column; the cohort list cannot be shown")
        return [], columns
    score_key = score_column(columns)
    rows = []
    for record in records:
        case = (record.get(case_key) or "").strip()
        plain = case not in ("", ".", "..") and "/" not in case and "\\" not in case
        folder = inside(root, Path(CASES_FOLDER) / case) if plain else None
        error = (record.get("error") or "").strip()
        cases = (root / CASES_FOLDER).resolve()
        if case and (folder is None or not folder.is_dir() or folder.parent != cases):  # one level below cases/
            folder = None
            error = error or f"the case folder {CASES_FOLDER}/{case} is missing"
        rows.append(CohortRow(case=case, structure=(record.get("structure") or "").strip(),
                              score=_number(record.get(score_key)) if score_key else None, error=error,
                              folder=folder, values={k: (v or "") for k, v in record.items() if k}))
    descending = score_key == "risk"

    def order(row: CohortRow) -> tuple:
        missing = row.score is None
        value = 0.0 if missing else (-row.score if descending else row.score)
        return (not missing, value, row.case, row.structure)

    rows.sort(key=order)
    missing = [r.case for r in rows if r.folder is None and r.case]
    if missing:
        problems.append(f"{name}: {len(missing)} case folder(s) missing under {CASES_FOLDER}/ "
                        f"({', '.join(sorted(set(missing))[:5])})")
    return rows, columns


def _references(node: ET.Element) -> dict[str, str]:
    """An MRML node's ``references="role:id;role:id;"`` as a dict."""
    pairs = (item.split(":", 1) for item in (node.get("references") or "").split(";") if ":" in item)
    return {role: ref for role, ref in pairs}


def _scene_background(bundle: Path, problems: list[str]) -> tuple[Optional[str], Optional[tuple[float, float]]]:
    """The archive member holding the Red view's background volume of a ``.mrb``, and its display window."""
    try:
        with zipfile.ZipFile(bundle) as archive:
            names = archive.namelist()
            scene_name = next((n for n in names if n.endswith(".mrml")), None)
            if scene_name is None:
                raise ValueError("no .mrml scene inside")
            scene = ET.fromstring(archive.read(scene_name))
    except (OSError, zipfile.BadZipFile, ValueError, ET.ParseError) as error:
        problems.append(f"{bundle.name}: cannot be read ({_first_line(error)})")
        return None, None
    by_id = {node.get("id"): node for node in scene}
    composites = [n for n in scene if n.tag == "SliceComposite"]
    composites.sort(key=lambda n: n.get("layoutName") != "Red")
    volume_id = next((_references(n).get("backgroundVolume") for n in composites if _references(n).get(
        "backgroundVolume")), None)
    volume = by_id.get(volume_id) or next((n for n in scene if n.tag == "Volume"), None)
    if volume is None:
        return None, None
    storage = by_id.get(_references(volume).get("storage"))
    member = None
    if storage is not None and storage.get("fileName"):
        member = (Path(scene_name).parent / storage.get("fileName")).as_posix()
    if member not in names:
        problems.append(f"{bundle.name}: its image volume's file is not in the archive")
        return None, None
    shown = by_id.get(_references(volume).get("display"))
    window = None
    if shown is not None and _number(shown.get("window")) and _number(shown.get("level")) is not None:
        width, level = float(shown.get("window")), float(shown.get("level"))
        window = (level - width / 2.0, level + width / 2.0)
    return member, window


def scan_folder(root: str | os.PathLike) -> ResultFolder:
    """Read what `root` holds (headers only). Never raises for the folder's content; see ``problems``.

    Raises:
        NotADirectoryError: `root` is not an existing folder (the command turns this into its error).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"'{root}' is not a folder")
    folder = ResultFolder(root=root)
    if cohort_table(root) is not None:
        folder.cohort, folder.cohort_columns = read_cohort_table(root, folder.problems)
    elif (root / CASES_FOLDER).is_dir():
        folder.problems.append(f"{CASES_FOLDER}/ is here but no {' or '.join(COHORT_TABLES)}: the cohort list "
                               "cannot be shown")
    summary = _summary(root, folder.problems)
    for name in ("report.html", SCENE_FILE, "summary.json", *COHORT_TABLES):
        if (root / name).is_file():
            folder.links.append(name)

    named_image = (summary.get("image") or {}).get("file") if isinstance(summary.get("image"), dict) else None
    window = (summary.get("image") or {}).get("display_window_hu") if isinstance(summary.get("image"), dict) else None
    if isinstance(window, list) and len(window) == 2 and all(_number(v) is not None for v in window):
        folder.image_window = (float(window[0]), float(window[1]))
    order = {r.get("file"): i for i, r in enumerate(summary.get("attributions") or []) if isinstance(r, dict)}
    for record in summary.get("attributions") or []:
        name = record.get("file") if isinstance(record, dict) else None
        if name and inside(root, name) is None:
            folder.problems.append(f"{name}: named in summary.json but missing")
    if named_image and inside(root, named_image) is None:
        folder.problems.append(f"{named_image}: named in summary.json as the image but missing")

    plain: list[Path] = []
    labels: list[Path] = []
    for path in sorted(p for p in root.iterdir() if p.is_file() and _image_suffix(p)):
        if inside(root, path.name) is None:
            folder.problems.append(f"{path.name}: points outside the folder; not shown")
            continue
        if _image_suffix(path) == ".seg.nrrd":
            labels.insert(0, path)
            continue
        try:
            header, components = _header(path)
        except (RuntimeError, OSError) as error:
            folder.problems.append(f"{path.name}: cannot be read ({_first_line(error)})")
            continue
        if PROVENANCE_KEY in header:
            try:
                provenance = json.loads(header[PROVENANCE_KEY])
            except ValueError:
                provenance = {}
                folder.problems.append(f"{path.name}: its provenance is not valid JSON; shown without it")
            if not isinstance(provenance, dict):
                provenance = {}
            stem = path.name[: -len(_image_suffix(path))]
            folder.attributions.append(AttributionFile(path, provenance, attribution_label(provenance, stem)))
        elif components == 1 and _SEGMENTATION_WORDS.search(path.name):
            labels.append(path)  # a label map (or a truth mask): never taken for the image
        elif components == 1 and "MedXAI.Map" not in header:
            plain.append(path)
    folder.attributions.sort(key=lambda a: (order.get(a.path.name, len(order)), a.label))
    folder.segmentation = labels[0] if labels else None
    by_name = {p.name: p for p in plain}
    folder.image = (by_name.get(named_image or "") or next((p for p in plain if p.name.startswith("image.")), None)
                    or (plain[0] if plain else None))
    if folder.image is None and (root / SCENE_FILE).is_file():
        folder.image_member, window = _scene_background(root / SCENE_FILE, folder.problems)
        if folder.image_member is not None:
            folder.image, folder.image_window = root / SCENE_FILE, folder.image_window or window
    if folder.image is None and not folder.is_cohort:
        folder.problems.append("no image in the folder: the attribution is shown on its own")
    if not folder.attributions and not folder.is_cohort:
        folder.problems.append("no attribution in the folder (a NRRD, MetaImage or NIfTI with MedXAI provenance)")
    return folder
