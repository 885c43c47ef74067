"""Browse a cohort in Slicer: open a ``medxai cohort`` folder's table, and load a row's case by selecting it.

Slicer-application glue over :mod:`MedXAIBridge.cohortNodes`:

- :func:`openCohortFolder`: the table node, shown in the layout's table view;
- :func:`loadRow`: the row's case scene imported into the application's scene (the previous case's nodes
  removed, the table kept);
- :func:`followSelection`: selecting a row of a ``qMRMLTableView`` loads its case.

From the Python console: ``from MedXAIRuntime import cohortTable; cohortTable.openCohortFolder("/path/OUT")``.
Nothing here imports torch or MONAI (the table is read from CSV).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["openCohortFolder", "loadRow", "followSelection"]


def openCohortFolder(folder: str | Path):
    """Open `folder`'s cohort table as a table node and show it in the table view; returns the node."""
    import slicer

    from MedXAIBridge.cohortNodes import cohortTableNode

    node = cohortTableNode(slicer.mrmlScene, folder)
    layoutManager = slicer.app.layoutManager()
    if layoutManager is not None:
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(node.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        tableWidget = layoutManager.tableWidget(0)
        if tableWidget is not None:
            followSelection(tableWidget.tableView(), node)
    return node


def loadRow(tableNode, row: int) -> list:
    """Load the case of `row` (0-based) into the application's scene; returns the nodes it brought."""
    import slicer

    from MedXAIBridge.cohortNodes import loadCaseScene

    return loadCaseScene(slicer.mrmlScene, tableNode, row)


def followSelection(tableView, tableNode) -> None:
    """Load a row's case whenever a cell of that row is selected in `tableView` (a ``qMRMLTableView``)."""
    import slicer

    def selected(*_args) -> None:
        rows = tableView.selectedIndexes()
        if not rows:
            return
        row = rows[0].row() - (1 if tableNode.GetUseFirstColumnAsRowHeader() else 0)
        try:
            loadRow(tableNode, row)
        except Exception as error:  # noqa: BLE001 - a failed case: say why in the status bar
            slicer.util.showStatusMessage(f"MedXAI cohort: {error}", 5000)

    tableView.selectionModel().selectionChanged.connect(selected)
