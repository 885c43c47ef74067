"""Typed table nodes from plain Python columns (statistics per structure, run summaries, ...)."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Mapping, Optional, Sequence

import numpy as np
import vtk

from MedXAILib.errors import InputError

__all__ = ["tableNodeFromColumns"]

_INT32 = (-(2**31), 2**31 - 1)


def _columnKind(values: Sequence) -> str:
    """``"int"``, ``"long"``, ``"double"`` or ``"string"`` for a column's values."""
    array = np.asarray(values) if len(values) else np.zeros(0)
    if array.dtype.kind in "biu" and array.ndim == 1:
        if array.size and (array.min() < _INT32[0] or array.max() > _INT32[1]):
            return "long"
        return "int"
    if array.dtype.kind == "f" and array.ndim == 1:
        return "double"
    # Mixed Python objects: numbers (and None as a missing number) stay numeric, anything else is text.
    present = [v for v in values if v is not None]
    integers = all(isinstance(v, (Integral, np.integer, bool, np.bool_)) for v in present)
    if present and integers and len(present) == len(values):
        ints = [int(v) for v in present]
        return "long" if min(ints) < _INT32[0] or max(ints) > _INT32[1] else "int"
    if present and all(isinstance(v, (Real, np.number)) and not isinstance(v, str) for v in present):
        return "double"
    return "string"


def _vtkColumn(name: str, values: Sequence):
    kind = _columnKind(values)
    if kind == "string":
        column = vtk.vtkStringArray()
        column.SetNumberOfValues(len(values))
        for i, value in enumerate(values):
            column.SetValue(i, "" if value is None else str(value))
    else:
        column = {"int": vtk.vtkIntArray, "long": vtk.vtkLongLongArray, "double": vtk.vtkDoubleArray}[kind]()
        column.SetNumberOfTuples(len(values))
        for i, value in enumerate(values):
            if kind == "double":
                column.SetValue(i, math.nan if value is None else float(value))
            else:
                column.SetValue(i, int(value))
    column.SetName(name)
    return column


def tableNodeFromColumns(scene, name: str, columns: Mapping[str, Sequence],
                         units: Optional[Mapping[str, str]] = None):
    """A NEW ``vtkMRMLTableNode`` with one typed column per entry of `columns` (in order).

    Column types: integers (Python ``int``/``bool`` or integer numpy arrays) -> ``vtkIntArray``
    (``vtkLongLongArray`` beyond 32 bits); other numbers -> ``vtkDoubleArray`` (``None`` becomes
    NaN); anything else -> ``vtkStringArray`` (``None`` becomes ""). Column names are used as
    headers; `units` sets the displayed unit label of the named columns (``SetColumnUnitLabel``).

    Raises:
        InputError: no scene, no columns, columns of different lengths, a non-string column name,
            or a unit for a column that does not exist.
    """
    if scene is None:
        raise InputError("no scene was given to create the table node in")
    if not columns:
        raise InputError("a table needs at least one column")
    lengths = {}
    for key, values in columns.items():
        if not isinstance(key, str) or not key:
            raise InputError(f"column names must be non-empty strings; got {key!r}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise InputError(f"column '{key}' must be a list or array of values")
        lengths[key] = len(values)
    if len(set(lengths.values())) > 1:
        found = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise InputError(f"all columns must have the same length; got {found}")
    for key in units or {}:
        if key not in columns:
            raise InputError(f"a unit is given for column '{key}', which is not in the table")

    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name or "Table")
    wasModifying = node.StartModify()
    try:
        node.SetUseColumnTitleAsColumnHeader(True)
        table = node.GetTable()
        for key, values in columns.items():
            table.AddColumn(_vtkColumn(key, list(values) if not isinstance(values, np.ndarray) else values))
        for key, unit in (units or {}).items():
            node.SetColumnUnitLabel(key, str(unit))
        table.Modified()
    finally:
        node.EndModify(wasModifying)
    return node
