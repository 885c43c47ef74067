"""MedXAIBridge: Qt-free conversion between MRML nodes and MedXAILib objects (layer L1).

Modules (import the one you need, e.g. ``from MedXAIBridge import volumes``):

- ``volumes``: volume nodes <-> :class:`MedXAILib.volume.ImageVolume` (the one place where Slicer's
  (K, J, I) arrays and IJK -> RAS matrices meet MedXAILib's (C, I, J, K) arrays and affines).
- ``segments``: segments -> boolean masks / label maps on a volume's grid, and back to new
  segmentation nodes; the top-k% outline of an attribution map.
- ``results``: an :class:`MedXAILib.attribution.Attribution` -> a new scalar volume node carrying
  the provenance as node attributes, placed in a "MedXAI" subject-hierarchy folder.
- ``display``: colour tables, symmetric windows and thresholds for attribution nodes, their colour
  legends, and slice view layers (views newly showing the input are fitted to it).
- ``tables``: typed table nodes from plain Python columns.
- ``nodes``: the scene's node factories (``CreateNodeByClass``, ``GetNodesByClass``) with their
  reference released, so nothing MedXAI creates outlives the scene.

Rules (DESIGN.md, section 1): this package imports MRML classes through ``slicer``, the
``slicer.util`` array helpers, ``vtk``, ``numpy`` and MedXAILib, and never Qt, CTK, torch,
``slicer.app``, ``slicer.modules`` or ``slicer.mrmlScene``: the scene is always taken from a node
or passed in. That keeps it testable with the ``slicer-core`` wheel (``Testing/Bridge``).
Every function that creates a node creates a NEW node and never modifies its input nodes.
"""

__all__ = ["volumes", "segments", "results", "display", "tables", "nodes"]
