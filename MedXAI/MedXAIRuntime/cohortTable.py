"""Browse a cohort in Slicer: open a ``medxai cohort`` folder's table, and load a row's case by selecting it.

Slicer-application glue over :mod:`MedXAIBridge.cohortNodes`:

- :func:`openCohortFolder`: the table node (replacing an earlier one of the same folder), shown in the
  layout's table view;
- :func:`loadRow`: the row's case scene imported into the application's scene (the previous case's nodes
  removed, the table kept);
- :func:`followSelection`: selecting a row of a ``qMRMLTableView`` loads its case; :func:`showTable` does
  both for a table node already in the scene (a saved scene's).

The module's Cohort QA section (:mod:`MedXAIRuntime.cohortPanel`) calls these; from the Python console:
``from MedXAIRuntime import cohortTable; cohortTable.openCohortFolder("/path/OUT")``.
Nothing here imports torch or MONAI (the table is read from CSV).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

from MedXAILib.errors import MedXAIError, first_line

__all__ = ["openCohortFolder", "showTable", "loadRow", "followSelection", "followedTables", "errorLine"]

#: The selection handler connected last: (selection model, handler, table node), disconnected before another is
#: connected, so reopening a folder never loads a case twice (or from a removed table).
_following: list = []


def openCohortFolder(folder: str | Path, onLoaded: Optional[Callable[[str, list], None]] = None,
                     onError: Optional[Callable[[str], None]] = None):
    """Open `folder`'s cohort table as a table node and show it in the table view; returns the node.

    An earlier table node of the same folder is removed (the table is read again: a re-run may have
    changed it). `onLoaded(caseId, nodes)` and `onError(message)` are called when a selected row's case
    loads or cannot (see :func:`followSelection`).

    Raises:
        InputError: the folder holds no cohort table (``MedXAIBridge.cohortNodes.cohortTableNode``).
    """
    import slicer

    from MedXAIBridge.cohortNodes import cohortTableNode, cohortTableNodes

    earlier = cohortTableNodes(slicer.mrmlScene, folder)
    node = cohortTableNode(slicer.mrmlScene, folder)
    for old in earlier:
        slicer.mrmlScene.RemoveNode(old)
    showTable(node, onLoaded, onError)
    return node


def showTable(tableNode, onLoaded: Optional[Callable[[str, list], None]] = None,
              onError: Optional[Callable[[str], None]] = None) -> None:
    """Show a cohort table node in the layout's table view and load a row's case when it is selected (also
    for a table restored with a saved scene)."""
    import slicer

    layoutManager = slicer.app.layoutManager()
    if layoutManager is None:
        return
    layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
    selection = slicer.app.applicationLogic().GetSelectionNode()
    selection.SetActiveTableID(tableNode.GetID())
    slicer.app.applicationLogic().PropagateTableSelection()
    tableWidget = layoutManager.tableWidget(0)
    if tableWidget is not None:
        followSelection(tableWidget.tableView(), tableNode, onLoaded, onError)


#: The first line of an error's message: what the section and the status bar show.
errorLine = first_line


def loadRow(tableNode, row: int) -> list:
    """Load the case of `row` (0-based) into the application's scene; returns the nodes it brought."""
    import slicer

    from MedXAIBridge.cohortNodes import loadCaseScene

    return loadCaseScene(slicer.mrmlScene, tableNode, row)


def followedTables() -> list:
    """The table nodes whose selected rows load their cases now."""
    return [table for _, _, table in _following]


def _stopFollowing() -> None:
    while _following:
        model, handler, _ = _following.pop()
        try:
            model.selectionChanged.disconnect(handler)
        except Exception:  # noqa: BLE001 - the view (and its model) may be gone
            pass


def followSelection(tableView, tableNode, onLoaded: Optional[Callable[[str, list], None]] = None,
                    onError: Optional[Callable[[str], None]] = None) -> None:
    """Load a row's case whenever a cell of that row is selected in `tableView` (a ``qMRMLTableView``).

    Replaces the handler an earlier call connected. A case that cannot load (a failed case, a missing
    scene) is reported as one line: ``onError(message)``, else in the status bar.
    """
    import slicer

    def selected(*_args: Any) -> None:
        rows = tableView.selectedIndexes()
        if not rows or tableNode.GetScene() is None:
            return
        row = rows[0].row() - (1 if tableNode.GetUseFirstColumnAsRowHeader() else 0)
        try:
            nodes = loadRow(tableNode, row)
        except Exception as error:  # noqa: BLE001 - a failed case: say why in one line
            message = errorLine(error)
            if not isinstance(error, MedXAIError):  # not the case's own reason: keep the trace in the log
                logging.exception("MedXAI cohort: the case could not be loaded")
            if onError is not None:
                onError(message)
            else:
                slicer.util.showStatusMessage(f"MedXAI cohort: {message}", 5000)
            return
        if onLoaded is not None:
            case = tableNode.GetTable().GetColumnByName("case_id").GetValue(row)
            onLoaded(case, nodes)

    _stopFollowing()
    model = tableView.selectionModel()
    model.selectionChanged.connect(selected)
    _following.append((model, selected, tableNode))
