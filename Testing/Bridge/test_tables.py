"""Table nodes from Python columns: column types, values, units, errors."""

from __future__ import annotations

import math

import mrmlTesting  # noqa: F401  (skips these tests without slicer-core)
import numpy as np
import pytest

import vtk
from MedXAIBridge.tables import tableNodeFromColumns
from MedXAILib.errors import InputError

pytestmark = pytest.mark.mrml

COLUMNS = {
    "Structure": ["liver", "spleen", "tumour"],
    "Voxels": [120345, 20011, 812],
    "Mean relevance": [0.013, -0.002, 0.41],
    "Share": np.array([0.31, 0.05, 0.64]),
    "Label": np.array([1, 2, 3], dtype=np.uint8),
    "Huge": [2**40, 1, 2],
    "Volume": [12.5, None, 3],
    "Inside": [True, False, True],
}


def _column(node, name):
    return node.GetTable().GetColumnByName(name)


def test_columns_are_typed_and_filled(scene):
    node = tableNodeFromColumns(scene, "Relevance per structure", COLUMNS, units={"Volume": "mL", "Share": "%"})

    assert node.IsA("vtkMRMLTableNode") and node.GetName() == "Relevance per structure"
    assert node.GetNumberOfColumns() == len(COLUMNS) and node.GetNumberOfRows() == 3
    assert [node.GetColumnName(i) for i in range(node.GetNumberOfColumns())] == list(COLUMNS)
    types = {name: _column(node, name).GetClassName() for name in COLUMNS}
    assert types == {
        "Structure": "vtkStringArray",
        "Voxels": "vtkIntArray",
        "Mean relevance": "vtkDoubleArray",
        "Share": "vtkDoubleArray",
        "Label": "vtkIntArray",
        "Huge": "vtkLongLongArray",
        "Volume": "vtkDoubleArray",
        "Inside": "vtkIntArray",
    }
    assert node.GetColumnType("Voxels") == vtk.VTK_INT and node.GetColumnType("Structure") == vtk.VTK_STRING
    assert [_column(node, "Structure").GetValue(i) for i in range(3)] == COLUMNS["Structure"]
    assert [_column(node, "Voxels").GetValue(i) for i in range(3)] == COLUMNS["Voxels"]
    assert [_column(node, "Huge").GetValue(i) for i in range(3)] == COLUMNS["Huge"]
    assert [_column(node, "Mean relevance").GetValue(i) for i in range(3)] == COLUMNS["Mean relevance"]
    assert [_column(node, "Inside").GetValue(i) for i in range(3)] == [1, 0, 1]
    volume = [_column(node, "Volume").GetValue(i) for i in range(3)]
    assert volume[0] == 12.5 and math.isnan(volume[1]) and volume[2] == 3.0
    assert node.GetColumnUnitLabel("Volume") == "mL" and node.GetColumnUnitLabel("Share") == "%"
    assert node.GetColumnUnitLabel("Voxels") == ""
    assert node.GetUseColumnTitleAsColumnHeader()
    assert node.GetCellText(2, 0) == "tumour"


def test_every_call_makes_a_new_node(scene):
    a = tableNodeFromColumns(scene, "t", {"x": [1]})
    b = tableNodeFromColumns(scene, "t", {"x": [1]})
    assert a is not b and a.GetID() != b.GetID()


def test_refusals(scene):
    with pytest.raises(InputError, match="same length"):
        tableNodeFromColumns(scene, "t", {"a": [1, 2], "b": [1]})
    with pytest.raises(InputError, match="at least one column"):
        tableNodeFromColumns(scene, "t", {})
    with pytest.raises(InputError, match="not in the table"):
        tableNodeFromColumns(scene, "t", {"a": [1]}, units={"b": "mm"})
    with pytest.raises(InputError, match="list or array"):
        tableNodeFromColumns(scene, "t", {"a": "text"})
