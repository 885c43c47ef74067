"""View layouts of the analysis panels: original | counterfactual | difference, tables and plots.

The counterfactual comparison uses a custom layout (registered once with
``vtkMRMLLayoutNode.AddLayoutDescription``, as Slicer's script repository shows): three slice views
side by side, each with its own slice composite node (``MedXAIOriginal``, ``MedXAICounterfactual``,
``MedXAIDifference``), in their own view group and linked, so scrolling, panning and zooming one
moves the other two. Which volume each view shows is set on the composite nodes found by their
layout name (:func:`setComparisonLayers`, MRML only, tested under slicer-core); the layout switch
itself needs the application (:func:`showComparisonLayout`).

:func:`showTableInLayout` and :func:`showChartInLayout` do what Segment Statistics and
``slicer.util.plot`` do: switch to a layout with a table (plot) view and select the node there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional
from xml.sax.saxutils import quoteattr

__all__ = [
    "COMPARISON_LAYOUT_ID",
    "COMPARISON_VIEWS",
    "ORIENTATIONS",
    "ComparisonView",
    "comparisonLayoutXml",
    "setComparisonLayers",
    "showComparisonLayout",
    "showTableInLayout",
    "showChartInLayout",
]

#: Built-in layout IDs are below 100 (vtkMRMLLayoutNode); custom ones may use any larger number.
COMPARISON_LAYOUT_ID = 7350
ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
COMPARISON_VIEW_GROUP = 7  # its own group: linking these views never moves Red/Yellow/Green


@dataclass(frozen=True)
class ComparisonView:
    """One view of the comparison: its layout name (singleton tag), label, colour and role."""

    layoutName: str
    label: str
    color: str
    role: str  # "original", "counterfactual" or "difference"


COMPARISON_VIEWS = (
    ComparisonView("MedXAIOriginal", "Original", "#808080", "original"),
    ComparisonView("MedXAICounterfactual", "Counterfactual", "#3C8DD6", "counterfactual"),
    ComparisonView("MedXAIDifference", "Difference", "#D6543C", "difference"),
)


def comparisonLayoutXml(orientation: str = "Axial") -> str:
    """The layout description: the three :data:`COMPARISON_VIEWS` side by side in `orientation`.

    Raises:
        ValueError: an orientation other than Axial, Coronal or Sagittal.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)}; got {orientation!r}")
    items = []
    for view in COMPARISON_VIEWS:
        items.append(
            "  <item>\n"
            f"   <view class=\"vtkMRMLSliceNode\" singletontag={quoteattr(view.layoutName)}>\n"
            f"    <property name=\"orientation\" action=\"default\">{orientation}</property>\n"
            f"    <property name=\"viewlabel\" action=\"default\">{view.label}</property>\n"
            f"    <property name=\"viewcolor\" action=\"default\">{view.color}</property>\n"
            f"    <property name=\"viewgroup\" action=\"default\">{COMPARISON_VIEW_GROUP}</property>\n"
            "   </view>\n"
            "  </item>\n"
        )
    return "<layout type=\"horizontal\" split=\"true\">\n" + "".join(items) + "</layout>\n"


def _compositeNodes(scene: Any) -> dict[str, Any]:
    from MedXAIBridge.nodes import nodesByClass

    return {node.GetLayoutName(): node for node in nodesByClass(scene, "vtkMRMLSliceCompositeNode")}


def _id(node: Any) -> Optional[str]:
    return node.GetID() if node is not None else None


def setComparisonLayers(scene: Any, original: Any, counterfactual: Any, difference: Any,
                        differenceOpacity: float = 0.6, link: bool = True) -> int:
    """Show the three volumes in the comparison views (whose composite nodes exist once the layout was shown).

    Original and counterfactual are the background of their views (nothing over them, so the two
    read alike); the difference is the foreground over the original, so where the change lies is seen
    on the anatomy. Views are linked (`link`) so they scroll together.

    Returns:
        The number of comparison views found and set (0 before the layout was shown).
    """
    layers = {
        "original": (original, None, 0.0),
        "counterfactual": (counterfactual, None, 0.0),
        "difference": (original, difference, float(differenceOpacity)),
    }
    composites = _compositeNodes(scene)
    count = 0
    for view in COMPARISON_VIEWS:
        composite = composites.get(view.layoutName)
        if composite is None:
            continue
        background, foreground, opacity = layers[view.role]
        wasModifying = composite.StartModify()
        composite.SetBackgroundVolumeID(_id(background))
        composite.SetForegroundVolumeID(_id(foreground))
        composite.SetForegroundOpacity(opacity)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(bool(link))
        composite.EndModify(wasModifying)
        count += 1
    return count


def showComparisonLayout(orientation: str = "Axial") -> None:
    """Register (or update) the comparison layout and switch the view layout to it (needs the application)."""
    import slicer

    layoutManager = slicer.app.layoutManager()
    layoutNode = layoutManager.layoutLogic().GetLayoutNode()
    xml = comparisonLayoutXml(orientation)
    if layoutNode.IsLayoutDescription(COMPARISON_LAYOUT_ID):
        layoutNode.SetLayoutDescription(COMPARISON_LAYOUT_ID, xml)
    else:
        layoutNode.AddLayoutDescription(COMPARISON_LAYOUT_ID, xml)
    layoutManager.setLayout(COMPARISON_LAYOUT_ID)
    for view in COMPARISON_VIEWS:  # the orientation of views that existed before is not reset by the XML
        widget = layoutManager.sliceWidget(view.layoutName)
        if widget is not None:
            widget.mrmlSliceNode().SetOrientation(orientation)


def showTableInLayout(tableNode: Any) -> None:
    """Switch to a layout with a table view and show `tableNode` there (as Segment Statistics does)."""
    import slicer

    layoutManager = slicer.app.layoutManager()
    layoutManager.setLayout(slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
    slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(tableNode.GetID())
    slicer.app.applicationLogic().PropagateTableSelection()


def showChartInLayout(chartNode: Any) -> None:
    """Switch to a layout with a plot view and show `chartNode` there (as ``slicer.util.plot`` does)."""
    import slicer

    slicer.modules.plots.logic().ShowChartInLayout(chartNode)
