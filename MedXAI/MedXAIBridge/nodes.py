"""The scene's node factories with their ownership handed over correctly.

``vtkMRMLScene.CreateNodeByClass`` and ``vtkMRMLScene.GetNodesByClass`` are factory methods that are
not marked ``VTK_NEWINSTANCE``: the object they return already holds one reference that belongs to
the caller, and Python adds its own. Without ``UnRegister(None)`` the extra reference is never
released, so every created node (and its voxel array) and every collection leaks, and a leaked
collection keeps each node it listed alive after the scene is closed (Slicer developer guide,
"Advanced topics: Memory management", v5.10.0 ``Docs/developer_guide/advanced_topics.md``).

MedXAI calls the two factories only here; ``Testing/Repo/test_mrml_ownership.py`` checks that
every other call site in MedXAI/ releases the factory's reference. (``slicer.util.getNodesByClass``
releases it too, but reads ``slicer.mrmlScene`` whatever scene it is given, so the Bridge cannot
use it.)
"""

from __future__ import annotations

from typing import Any

__all__ = ["createNode", "nodesByClass"]


def createNode(scene: Any, className: str) -> Any:
    """A new node of `className` with the scene's default settings, not yet added to `scene`.

    The returned Python object is the node's only owner until :meth:`vtkMRMLScene.AddNode` adds the
    scene's reference (so a node that is never added is freed with its last Python reference).

    Returns:
        The node, or None when `className` is not a registered node class.
    """
    node = scene.CreateNodeByClass(className)
    if node is not None:
        node.UnRegister(None)  # the factory's reference; Python keeps its own
    return node


def nodesByClass(scene: Any, className: str) -> list:
    """The nodes of `className` (subclasses included) in `scene`, as a list (no collection is kept)."""
    collection = scene.GetNodesByClass(className)
    collection.UnRegister(None)  # the factory's reference; freed with the Python object below
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
