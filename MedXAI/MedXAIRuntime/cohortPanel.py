"""The Cohort QA section: open the table of a ``medxai cohort`` folder, then load a case by selecting its row.

``medxai cohort MANIFEST --model M --out DIR`` writes ``DIR/table.csv`` (one row per case x structure, the
failed cases with their error), ``DIR/cases/<id>/scene.mrb`` and ``DIR/report.html``. The section opens the
table as a table node in the layout's table view (:func:`MedXAIRuntime.cohortTable.openCohortFolder`);
selecting a row imports that case's scene, replacing the case shown before. The status line says what the
table holds (:func:`summaryText`) and, in one line, why a case cannot be shown.

The folder and the table node are kept in the parameter node (``cohortFolder``, ``cohortTable``).
Everything but :class:`CohortSection` is Qt-free.
"""

from __future__ import annotations

import logging
from typing import Any

from MedXAILib.errors import MedXAIError

from .cohortTable import errorLine

__all__ = ["summaryText", "tableSummaryText", "CohortSection"]


def summaryText(summary: Any) -> str:
    """One line for a :class:`MedXAIBridge.cohortNodes.CohortSummary`:
    ``"4 rows: 3 cases, 1 failed (c2). QA score: entropy (risk column); highest 0.61: c1 liver."``"""
    text = f"{summary.rows} row{'s' if summary.rows != 1 else ''}: {summary.cases} case{'s' if summary.cases != 1 else ''}"
    if summary.failed:
        shown = ", ".join(summary.failed[:5]) + (", ..." if len(summary.failed) > 5 else "")
        text += f", {len(summary.failed)} failed ({shown})"
    text += "."
    if summary.worst is not None:
        case, structure, value = summary.worst
        score = f"{summary.score} (risk column)" if summary.score else "risk column"
        text += f" QA score: {score}; highest {value:.3g}: {case}{' ' + structure if structure else ''}."
    return text


def tableSummaryText(tableNode: Any) -> str:
    """:func:`summaryText` of a cohort table node."""
    from MedXAIBridge.cohortNodes import cohortSummary

    return summaryText(cohortSummary(tableNode))


class CohortSection:
    """Connects the Cohort QA section of MedXAI.ui to :mod:`MedXAIRuntime.cohortTable` (the widget is the `host`)."""

    def __init__(self, host: Any):
        self.host = host
        self._summaryFor = None  # (node ID, rows) the status line describes
        self._summary = ""
        ui = host.ui
        ui.cohortFolderPathLineEdit.connect("currentPathChanged(QString)", self.onFolderChanged)
        ui.cohortOpenButton.connect("clicked(bool)", self.onOpen)

    def updateGUI(self, p: Any) -> None:
        ui = self.host.ui
        if ui.cohortFolderPathLineEdit.currentPath != p.cohortFolder:
            ui.cohortFolderPathLineEdit.currentPath = p.cohortFolder
        ui.cohortOpenButton.enabled = bool(p.cohortFolder) and not self.host.busy()
        node = p.cohortTable
        key = None if node is None else (node.GetID(), node.GetTable().GetNumberOfRows())
        if key != self._summaryFor:  # a restored scene, or the table was removed
            self._summaryFor = key
            self._summary = ""
            if node is not None:
                try:
                    self._summary = tableSummaryText(node)
                    if not self._following(node):  # a saved scene's table: selecting a row loads its case again
                        from . import cohortTable

                        cohortTable.showTable(node, self.onCaseLoaded, self.onCaseError)
                except Exception as error:  # noqa: BLE001 - not a cohort table after all: say so, in one line
                    self._summary = f"Not a cohort table: {errorLine(error)}"
            self._setStatus(self._summary)

    @staticmethod
    def _following(node: Any) -> bool:
        from . import cohortTable

        return any(table is node for table in cohortTable.followedTables())

    def _setStatus(self, text: str) -> None:
        self.host.ui.cohortStatusLabel.text = text

    def onFolderChanged(self, path: str) -> None:
        p = self.host.parameterNode()
        if p is not None and not self.host.updating():
            p.cohortFolder = str(path).strip()

    def onOpen(self) -> None:
        import slicer

        from . import cohortTable

        p = self.host.parameterNode()
        if p is None or not p.cohortFolder:
            return
        try:
            with slicer.util.WaitCursor():
                node = cohortTable.openCohortFolder(p.cohortFolder, self.onCaseLoaded, self.onCaseError)
        except Exception as error:  # noqa: BLE001 - no table.csv, unreadable table: one line, never a trace
            if not isinstance(error, MedXAIError):
                logging.exception("MedXAI: the cohort table could not be opened")
            message = f"Cannot open the cohort: {errorLine(error)}"
            self._setStatus(message)
            slicer.util.errorDisplay(message)
            return
        p.cohortTable = node  # updateGUI writes the summary
        self.host.setStatus(f"Cohort table: {node.GetName()}. Select a row in the table view to load its case.")

    def onCaseLoaded(self, case: str, nodes: list) -> None:
        self._setStatus(f"{self._summary}\nCase {case} loaded ({len(nodes)} nodes).".strip())

    def onCaseError(self, message: str) -> None:
        import slicer

        self._setStatus(f"{self._summary}\n{message}".strip())
        slicer.util.showStatusMessage(f"MedXAI cohort: {message}", 5000)
