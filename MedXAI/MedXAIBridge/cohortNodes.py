"""A cohort folder (``medxai cohort OUT``) in MRML: its table as a table node, and a row's case as its scene.

- :func:`cohortTableNode`: a NEW ``vtkMRMLTableNode`` holding ``OUT/table.csv`` (one row per case x
  structure, typed columns), which remembers its folder (attribute ``MedXAI.CohortFolder``);
- :func:`caseScenePath`: the ``.mrb`` scene of a row's case;
- :func:`loadCaseScene`: import that scene into the scene (image, predicted segmentation, entropy and
  attributions, the slice views set as the scene bundle says), first removing the nodes the previously
  loaded case brought, so browsing rows shows one case at a time and the table stays;
- :func:`cohortTableNodes`: the cohort table nodes of a scene (of one folder), so reopening a folder
  replaces its table;
- :func:`cohortSummary`: rows, cases, failed cases and the QA score the ``risk`` column holds.

Qt-free: the scene is passed in; importing a ``.mrb`` needs the scene's data I/O and cache managers,
which the Slicer application sets up (tests set them up themselves).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from MedXAILib.errors import InputError

from .nodes import nodesByClass
from .tables import tableNodeFromColumns

__all__ = ["cohortTableNode", "caseScenePath", "loadCaseScene", "cohortTableNodes", "cohortSummary", "CohortSummary",
           "FOLDER_ATTRIBUTE", "CASE_ATTRIBUTE", "RISK_COLUMN"]

#: Table node attribute holding the cohort folder.
FOLDER_ATTRIBUTE = "MedXAI.CohortFolder"
#: Attribute every node of a loaded case carries (its case id): they are removed when another case loads.
CASE_ATTRIBUTE = "MedXAI.CohortCase"
_TEXT = ("case_id", "status", "structure", "error", "scene")
#: The column holding each row's default QA score (``MedXAILib.cohort``: higher = less trustworthy).
RISK_COLUMN = "risk"
#: Columns that are no QA score, whatever their values (``MedXAILib.cohort.report.TABLE_COLUMNS``).
_NOT_SCORES = ("label", "predicted_voxels", "volume_mm3", "dice")


def _value(text: str, column: str) -> Any:
    if column in _TEXT:
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if column in ("label", "predicted_voxels") and math.isfinite(number) else number


def cohortTableNode(scene, folder: str | Path, name: Optional[str] = None):
    """A NEW table node with the cohort's ``table.csv`` (numbers as numbers, NaN where a score is undefined).

    Raises:
        InputError: no scene, or `folder` holds no cohort table.
    """
    folder = Path(folder)
    path = folder / "table.csv"
    if not path.is_file():
        raise InputError(f"'{folder}' holds no cohort table (table.csv); run 'medxai cohort MANIFEST --out {folder}'")
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    if not rows:
        raise InputError(f"the cohort table '{path}' is empty")
    header, body = rows[0], rows[1:]
    columns = {}
    for index, column in enumerate(header):
        values = [_value(row[index], column) for row in body]
        if any(isinstance(v, str) for v in values) and column not in _TEXT:
            values = [str(v) for v in values]  # a metadata column: text
        columns[column] = values
    node = tableNodeFromColumns(scene, name or f"Cohort QA: {folder.name}", columns)
    node.SetAttribute(FOLDER_ATTRIBUTE, str(folder.resolve()))
    return node


def caseScenePath(tableNode, row: int) -> Path:
    """The ``.mrb`` scene of the case in `row` (0-based) of a :func:`cohortTableNode`.

    Raises:
        InputError: the row is out of range, or its case has no scene (a failed case).
    """
    folder = tableNode.GetAttribute(FOLDER_ATTRIBUTE)
    table = tableNode.GetTable()
    if folder is None:
        raise InputError("this table node is not a cohort table (no MedXAI.CohortFolder attribute)")
    if not 0 <= row < table.GetNumberOfRows():
        raise InputError(f"row {row} is out of range: the table has {table.GetNumberOfRows()} rows")
    scene = table.GetColumnByName("scene").GetValue(row)
    case = table.GetColumnByName("case_id").GetValue(row)
    if not scene:
        error = table.GetColumnByName("error").GetValue(row)
        raise InputError(f"case {case} has no scene: it failed ({error})")
    path = Path(folder) / scene
    if not path.is_file():
        raise InputError(f"the scene of case {case} is missing: {path}")
    return path


def _nodeIds(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def loadCaseScene(scene, tableNode, row: int) -> list:
    """Import the scene of `row`'s case into `scene`, replacing the case loaded before.

    Returns:
        The nodes the case brought (tagged with :data:`CASE_ATTRIBUTE`).

    Raises:
        InputError: no scene for the row (see :func:`caseScenePath`) or Slicer cannot read it.
    """
    path = caseScenePath(tableNode, row)
    case = tableNode.GetTable().GetColumnByName("case_id").GetValue(row)
    previous = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    for node in previous:
        if node.GetAttribute(CASE_ATTRIBUTE) is not None:
            scene.RemoveNode(node)
    before = _nodeIds(scene)
    import slicer

    messages = slicer.vtkMRMLMessageCollection()
    if not scene.ReadFromMRB(str(path), False, messages):
        raise InputError(f"Slicer cannot read the scene of case {case} ({path}): "
                         f"{messages.GetAllMessagesAsString().strip()}")
    added = [scene.GetNodeByID(node_id) for node_id in sorted(_nodeIds(scene) - before)]
    for node in added:
        if node is not None and not node.GetSingletonTag():  # slice views stay: they now show this case
            node.SetAttribute(CASE_ATTRIBUTE, case)
    return [node for node in added if node is not None and node.GetAttribute(CASE_ATTRIBUTE) == case]


def cohortTableNodes(scene, folder: Optional[str | Path] = None) -> list:
    """The cohort table nodes in `scene` (those of `folder` only, when given)."""
    wanted = str(Path(folder).resolve()) if folder is not None else None
    return [node for node in nodesByClass(scene, "vtkMRMLTableNode")
            if node.GetAttribute(FOLDER_ATTRIBUTE) is not None
            and (wanted is None or node.GetAttribute(FOLDER_ATTRIBUTE) == wanted)]


@dataclass
class CohortSummary:
    """What a cohort table holds, for the module's status line.

    Attributes:
        rows: table rows (one per case x structure; one per failed case).
        cases: distinct case ids; failed: the ids of the failed cases, in table order.
        score: the QA score the ``risk`` column repeats (``entropy`` ...), or "" when no column matches.
        worst: (case id, structure, risk) of the highest finite risk, or None.
    """

    rows: int = 0
    cases: int = 0
    failed: list = field(default_factory=list)
    score: str = ""
    worst: Optional[tuple] = None


def _columns(table) -> dict[str, list]:
    out = {}
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        out[column.GetName()] = [column.GetValue(r) for r in range(table.GetNumberOfRows())]
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def cohortSummary(tableNode) -> CohortSummary:
    """Rows, cases, failed cases and the QA score of a :func:`cohortTableNode`.

    The table names its default QA score only as ``risk``; the score is the column equal to it on every row
    where it is defined (the cohort's report names the same one).
    """
    columns = _columns(tableNode.GetTable())
    cases = columns.get("case_id", [])
    status = columns.get("status", [""] * len(cases))
    summary = CohortSummary(rows=tableNode.GetTable().GetNumberOfRows(), cases=len(dict.fromkeys(cases)))
    summary.failed = list(dict.fromkeys(c for c, s in zip(cases, status) if s == "failed"))
    risk = columns.get(RISK_COLUMN)
    if not risk:
        return summary
    defined = [r for r, value in enumerate(risk) if _finite(value)]
    if defined:
        for name, values in columns.items():
            if name in (RISK_COLUMN, *_TEXT, *_NOT_SCORES) or not all(_finite(values[r]) for r in defined):
                continue
            if all(math.isclose(values[r], risk[r], rel_tol=1e-9, abs_tol=1e-12) for r in defined):
                summary.score = name
                break
        top = max(defined, key=lambda r: risk[r])
        structures = columns.get("structure", [""] * len(risk))
        summary.worst = (cases[top] if cases else "", structures[top], float(risk[top]))
    return summary
