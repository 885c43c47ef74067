"""The Evaluate section: explanation quality metrics of a result, or a comparison of methods.

Two modes (:class:`EvaluateMode`):

- **Score the selected result**: :func:`MedXAILib.evaluation.evaluate` of a result volume, with the
  Explain section's target, the selected metrics and, for localisation metrics, a reference segment
  (e.g. the lesion). The result's provenance names the method that made it (robustness and
  randomisation metrics re-run it).
- **Compare methods**: :func:`MedXAILib.evaluation.compare_methods` explains with every checked
  method (each with its parameters from the Explain section), grades every map with the same
  metrics and ranks the methods.

Both are runs (a :class:`MedXAILib.runs.RunRequest` of kind ``evaluate`` or ``compare_methods``), in
the background by default: metrics explain and perturb many times. Results are shown in the section's
table, saved as a table node with units, and the deletion / insertion / ROAD curves are plotted. Metric
and method choices are kept in the parameter node as comma-separated names (:func:`parseNames`,
:func:`formatNames`).

Everything but :class:`EvaluateSection` is Qt-free.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence

from MedXAILib.errors import InputError
from MedXAILib.io import json_safe

from . import analysisNodes, jobs

if TYPE_CHECKING:
    from MedXAILib.runs import RunRequest, RunResult

__all__ = [
    "EvaluateMode",
    "DEFAULT_METRICS",
    "parseNames",
    "formatNames",
    "formatValue",
    "metricEntries",
    "scoreRows",
    "comparisonRows",
    "scoresColumns",
    "comparisonColumns",
    "curveSeries",
    "buildEvaluateRequest",
    "buildCompareRequest",
    "showScores",
    "showComparison",
    "EvaluateSection",
]

#: Checked by default: fast metrics that need neither a mask nor re-running the method.
DEFAULT_METRICS = ("deletion", "insertion", "sparseness")
CURVE_METRICS = ("deletion", "insertion", "road")  # MedXAILib.evaluation.compare.CURVE_METRICS


class EvaluateMode(enum.Enum):
    """What the Evaluate button does. The parameter node stores the member name."""

    result = "result"
    compare = "compare"

    def label(self) -> str:
        """Text shown in the combo box (``parameterNodeWrapper`` calls it for enum choices)."""
        return {EvaluateMode.result: "Score the selected result",
                EvaluateMode.compare: "Compare methods (explain with each, then score)"}[self]


def parseNames(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (order kept, repeats dropped)."""
    out: list[str] = []
    for part in (text or "").split(","):
        name = part.strip()
        if name and name not in out:
            out.append(name)
    return out


def formatNames(names: Iterable[str]) -> str:
    """The inverse of :func:`parseNames` (stable text for the parameter node)."""
    return ",".join(parseNames(",".join(names)))


def formatValue(value: Any) -> str:
    """A metric value for the table: 4 significant digits, ``n/a`` for missing or NaN."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "n/a"
    return f"{number:.4g}"


def _direction(higherIsBetter: Any) -> str:
    return {True: "higher is better", False: "lower is better"}.get(higherIsBetter, "descriptive")


def metricEntries() -> list[tuple[str, str, str]]:
    """``(name, title, tooltip)`` of every registered metric (imports the metric registry).

    Raises:
        ImportError: the library's dependencies are not installed yet.
    """
    from MedXAILib.evaluation.metrics import METRICS

    entries = []
    for info in METRICS:
        needs = []
        if info.needs_mask:
            needs.append("needs a reference region")
        if info.needs_method:
            needs.append("re-runs the method")
        tip = f"{info.summary}\nFamily: {info.family}; {_direction(info.higher_is_better)}" + \
              (f"; {', '.join(needs)}" if needs else "") + f".\nReference: {info.reference}"
        entries.append((info.name, info.title, tip))
    return entries


def _title(name: str, titles: Optional[Mapping[str, str]]) -> str:
    return (titles or {}).get(name, name)


def scoreRows(scores: Mapping[str, Mapping[str, Any]], titles: Optional[Mapping[str, str]] = None) -> list[tuple[str, str]]:
    """``(metric, value)`` rows of :func:`~MedXAILib.evaluation.evaluate`'s result, with the better direction."""
    rows = []
    for name, result in scores.items():
        value = formatValue(result.get("value"))
        direction = _direction(result.get("higher_is_better"))
        warning = result.get("warning")
        chance = result.get("chance")  # localisation: what a map without information scores
        direction += f"; chance {formatValue(chance)}" if chance is not None else ""
        rows.append((_title(name, titles), f"{value} ({direction})" + (f" - {warning}" if warning else "")))
    return rows


def comparisonRows(data: Mapping[str, Any], titles: Optional[Mapping[str, str]] = None) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a comparison: one row per metric, one column per method, then the mean rank.

    Raises:
        InputError: the comparison holds no method.
    """
    table = data.get("table") or {}
    methods = list(table.get("method") or [])
    if not methods:
        raise InputError("the comparison holds no method")
    headers = ["Metric", *methods]
    rows = []
    separation = data.get("separation") or {}
    for metric, values in table.items():
        if metric == "method":
            continue
        # a metric on which all methods score alike says so, as the library's comparison does
        flat = isinstance(separation.get(metric), Mapping) and separation[metric].get("separates") is False
        rows.append([_title(metric, titles) + (" (does not separate)" if flat else ""),
                     *[formatValue(v) for v in values]])
    ranks = {entry["method"]: entry.get("mean_rank") for entry in (data.get("ranking") or []) if isinstance(entry, Mapping)}
    if ranks:
        rows.append(["Mean rank (lower is better)", *[formatValue(ranks.get(m)) for m in methods]])
    return headers, rows


def scoresColumns(scores: Mapping[str, Mapping[str, Any]]) -> dict[str, list]:
    """Table columns of an evaluation: metric, value, direction, seconds (and a warning, if any)."""
    columns: dict[str, list] = {"metric": [], "value": [], "higher_is_better": [], "seconds": [], "warning": []}
    for name, result in scores.items():
        columns["metric"].append(name)
        value = result.get("value")
        columns["value"].append(float("nan") if value is None else float(value))
        columns["higher_is_better"].append({True: "yes", False: "no"}.get(result.get("higher_is_better"), "-"))
        columns["seconds"].append(float(result.get("seconds") or 0.0))
        columns["warning"].append(str(result.get("warning") or ""))
    return columns


def comparisonColumns(data: Mapping[str, Any]) -> dict[str, list]:
    """Table columns of a comparison: one row per method, one column per metric, then the mean rank."""
    table = data.get("table") or {}
    methods = list(table.get("method") or [])
    columns: dict[str, list] = {"method": methods}
    for metric, values in table.items():
        if metric != "method":
            columns[metric] = [float("nan") if v is None else float(v) for v in values]
    ranks = {e["method"]: e.get("mean_rank") for e in (data.get("ranking") or []) if isinstance(e, Mapping)}
    columns["mean_rank"] = [float("nan") if ranks.get(m) is None else float(ranks[m]) for m in methods]
    return columns


def curveSeries(curves: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]) -> dict[str, dict[str, list]]:
    """Per curve metric, a table: ``fraction`` and one column per method (methods whose fractions differ are left out).

    Args:
        curves: ``{method: {metric: {"fractions": [...], "curve": [...]}}}`` (a single evaluation
            uses its result's name as the method).
    """
    tablesByMetric: dict[str, dict[str, list]] = {}
    for method, byMetric in curves.items():
        for metric, curve in byMetric.items():
            fractions = list(curve.get("fractions") or [])
            values = list(curve.get("curve") or [])
            if not fractions or len(fractions) != len(values):
                continue
            table = tablesByMetric.setdefault(metric, {"fraction": fractions})
            if table["fraction"] != fractions:
                continue
            table[method] = [float("nan") if v is None else float(v) for v in values]
    return {metric: table for metric, table in tablesByMetric.items() if len(table) > 1}


# ------------------------------------------------------------------------------------------------
# Logic


def _referenceMask(p: Any) -> Any:
    from MedXAIBridge import segments

    if p.evaluateSegmentation is None or not p.evaluateSegmentId:
        return None
    return segments.maskFromSegment(p.evaluateSegmentation, p.evaluateSegmentId, p.inputVolume)


def buildEvaluateRequest(logic: Any, p: Any) -> RunRequest:
    """Score the selected result with the Explain section's model, input and target.

    Raises:
        InputError: no result selected, or a result on another grid than the input.
    """
    from MedXAIBridge import results, volumes

    node = p.evaluateAttribution or p.outputVolume
    if node is None:
        raise InputError("Select the result to evaluate.")
    request = logic.buildRequest(p)
    attribution = volumes.imageVolumeFromNode(node)
    if not attribution.same_grid(request.image):
        raise InputError(f"the result '{node.GetName()}' is not on the grid of the input volume "
                         f"'{p.inputVolume.GetName()}'; select the input it was computed on")
    provenance = results.attributionProvenance(node)
    arrays = {"attribution": attribution.array}
    mask = _referenceMask(p)
    if mask is not None:
        arrays["mask"] = mask
    metrics = parseNames(p.evaluateMetrics)
    return jobs.analysisRequest(request, "evaluate", {"metrics": metrics or None, "provenance": json_safe(provenance)},
                                arrays=arrays, target=request.target)


def buildCompareRequest(logic: Any, p: Any) -> RunRequest:
    """Compare the checked methods (all methods for the model's task when none is checked).

    Each method runs with its parameters from the Explain section (the parameter node's JSON).
    """
    import MedXAILib

    from . import forms

    request = logic.buildRequest(p)
    methods = [MedXAILib.METHODS.get(name).name for name in parseNames(p.evaluateMethods)]
    if not methods:
        raise InputError("Check the methods to compare.")
    stored = forms.decodeMethodParameters(p.methodParameters)
    methodParams = {name: forms.valuesForMethod(MedXAILib.METHODS.get(name).params, stored.get(name))
                    for name in methods}
    arrays = {}
    mask = _referenceMask(p)
    if mask is not None:
        arrays["mask"] = mask
    return jobs.analysisRequest(
        request, "compare_methods",
        {"methods": methods, "metrics": parseNames(p.evaluateMetrics) or None, "method_params": methodParams},
        arrays=arrays, target=request.target)


def _plotCurves(scene: Any, tablesByMetric: Mapping[str, Mapping[str, list]], name: str):
    if not tablesByMetric:
        return None
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle("fraction of voxels perturbed")
    chart.SetYAxisTitle("score")
    import slicer

    for metric, columns in tablesByMetric.items():
        table = analysisNodes.tableNode(scene, f"{name} · {metric}", columns, units={})
        for method in [c for c in columns if c != "fraction"]:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{method} · {metric}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("fraction")
            series.SetYColumnName(method)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetUniqueColor()
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def showScores(p: Any, result: RunResult, referenceNode: Any) -> tuple[Any, Any]:
    """NEW table (and curve chart) nodes for an evaluation of `referenceNode`; ``p.evaluateTable`` becomes the table."""
    scores = result.data.get("scores") or {}
    scene = referenceNode.GetScene()
    name = f"{referenceNode.GetName()} · evaluation"
    table = analysisNodes.tableNode(scene, name, scoresColumns(scores), units={"seconds": "s"})
    table.SetAttribute(analysisNodes.RESULT_ATTRIBUTE, "evaluation")
    curves = {"result": {m: r for m, r in scores.items() if m in CURVE_METRICS and isinstance(r, Mapping)}}
    chart = _plotCurves(scene, curveSeries(curves), f"{name} curves")
    p.evaluateTable = table
    return table, chart


def showComparison(p: Any, result: RunResult, referenceNode: Any) -> tuple[Any, Any]:
    """NEW table (and curve chart) nodes for a comparison; ``p.evaluateTable`` becomes the table."""
    scene = referenceNode.GetScene()
    name = f"{referenceNode.GetName()} · method comparison"
    table = analysisNodes.tableNode(scene, name, comparisonColumns(result.data), units={})
    table.SetAttribute(analysisNodes.RESULT_ATTRIBUTE, "evaluation")
    chart = _plotCurves(scene, curveSeries(result.data.get("curves") or {}), f"{name} curves")
    p.evaluateTable = table
    return table, chart


# ------------------------------------------------------------------------------------------------
# The Qt part


class EvaluateSection:
    """Connects the Evaluate section of MedXAI.ui to the functions above (the widget is the `host`)."""

    def __init__(self, host: Any):
        self.host = host
        self._titles: dict[str, str] = {}
        self._filling = False
        ui = host.ui
        ui.evaluateAttributionSelector.addAttribute("vtkMRMLScalarVolumeNode", analysisNodes.RESULT_ATTRIBUTE,
                                                    "attribution")
        ui.evaluateTableSelector.addAttribute("vtkMRMLTableNode", analysisNodes.RESULT_ATTRIBUTE, "evaluation")
        ui.evaluateSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentChanged)
        ui.evaluateSegmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        ui.evaluateMetricsTableWidget.connect("itemChanged(QTableWidgetItem*)", self.onChecksChanged)
        ui.evaluateMethodsTableWidget.connect("itemChanged(QTableWidgetItem*)", self.onChecksChanged)
        ui.evaluateApplyButton.connect("clicked(bool)", self.onApply)
        self._fillMethods()
        # The metric registry imports without torch (MedXAILib.evaluation); if it cannot be imported
        # yet, the metrics are listed when the section is next opened.
        ui.evaluateCollapsibleButton.connect("contentsCollapsed(bool)", self.onCollapsed)
        self.onCollapsed(False)

    def _fillList(self, table: Any, entries: Sequence[tuple[str, str, str]]) -> None:
        import qt

        self._filling = True
        try:
            table.setRowCount(len(entries))
            for row, (name, title, tip) in enumerate(entries):
                item = qt.QTableWidgetItem(title)
                item.setData(qt.Qt.UserRole, name)
                item.setToolTip(tip)
                item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
                item.setCheckState(qt.Qt.Unchecked)
                table.setItem(row, 0, item)
            table.horizontalHeader().setStretchLastSection(True)
        finally:
            self._filling = False

    def _fillMethods(self) -> None:
        import MedXAILib

        entries = [(info.name, info.title, f"{info.summary}\nReference: {info.reference}") for info in MedXAILib.METHODS]
        self._fillList(self.host.ui.evaluateMethodsTableWidget, entries)

    def onCollapsed(self, collapsed: bool) -> None:
        if collapsed or self.host.ui.evaluateMetricsTableWidget.rowCount:
            return
        try:
            entries = metricEntries()
        except ImportError as error:
            logging.info(f"MedXAI: the metrics are listed once the dependencies are installed ({error})")
            return
        self._titles = {name: title for name, title, _ in entries}
        self._fillList(self.host.ui.evaluateMetricsTableWidget, entries)
        p = self.host.parameterNode()
        if p is not None:
            self.updateGUI(p)

    @staticmethod
    def _checked(table: Any) -> list[str]:
        import qt

        names = []
        for row in range(table.rowCount):
            item = table.item(row, 0)
            if item is not None and item.checkState() == qt.Qt.Checked:
                names.append(item.data(qt.Qt.UserRole))
        return names

    def _setChecked(self, table: Any, names: Sequence[str]) -> None:
        import qt

        self._filling = True
        try:
            for row in range(table.rowCount):
                item = table.item(row, 0)
                if item is None:
                    continue
                state = qt.Qt.Checked if item.data(qt.Qt.UserRole) in names else qt.Qt.Unchecked
                if item.checkState() != state:
                    item.setCheckState(state)
        finally:
            self._filling = False

    def updateGUI(self, p: Any) -> None:
        ui = self.host.ui
        if ui.evaluateSegmentSelector.currentNode() != p.evaluateSegmentation:
            ui.evaluateSegmentSelector.setCurrentNode(p.evaluateSegmentation)
        if p.evaluateSegmentation is not None and ui.evaluateSegmentSelector.currentSegmentID() != p.evaluateSegmentId:
            ui.evaluateSegmentSelector.setCurrentSegmentID(p.evaluateSegmentId)
        self._setChecked(ui.evaluateMetricsTableWidget, parseNames(p.evaluateMetrics))
        self._setChecked(ui.evaluateMethodsTableWidget, parseNames(p.evaluateMethods))
        compare = p.evaluateMode is EvaluateMode.compare
        for widget in (ui.evaluateMethodsLabel, ui.evaluateMethodsTableWidget):
            widget.visible = compare
        for widget in (ui.evaluateAttributionLabel, ui.evaluateAttributionSelector):
            widget.visible = not compare
        ready = p.inputVolume is not None and bool(p.modelPath) and not self.host.busy()
        ui.evaluateApplyButton.enabled = ready and (compare or (p.evaluateAttribution or p.outputVolume) is not None)

    def onChecksChanged(self, item: Any = None) -> None:
        import slicer

        p = self.host.parameterNode()
        if p is None or self._filling or self.host.updating():
            return
        ui = self.host.ui
        with slicer.util.NodeModify(p):
            if ui.evaluateMetricsTableWidget.rowCount:  # not listed yet: keep the stored choice
                p.evaluateMetrics = formatNames(self._checked(ui.evaluateMetricsTableWidget))
            p.evaluateMethods = formatNames(self._checked(ui.evaluateMethodsTableWidget))

    def onSegmentChanged(self, *args: Any) -> None:
        import slicer

        p = self.host.parameterNode()
        if p is None or self.host.updating():
            return
        with slicer.util.NodeModify(p):
            p.evaluateSegmentation = self.host.ui.evaluateSegmentSelector.currentNode()
            p.evaluateSegmentId = self.host.ui.evaluateSegmentSelector.currentSegmentID() or ""

    def onApply(self) -> None:
        p = self.host.parameterNode()
        compare = p.evaluateMode is EvaluateMode.compare
        try:
            request = buildCompareRequest(self.host.logic, p) if compare else buildEvaluateRequest(self.host.logic, p)
        except Exception as error:
            self.host.showError("The evaluation cannot start.", error)
            return
        reference = p.inputVolume if compare else (p.evaluateAttribution or p.outputVolume)

        def onResult(result: RunResult) -> str:
            from . import layouts

            table, chart = (showComparison if compare else showScores)(p, result, reference)
            self._showRows(result, compare)
            if chart is not None:
                layouts.showChartInLayout(chart)
            return table.GetName()

        self.host.runAnalysis(request, onResult, "comparison" if compare else "evaluation")

    def _showRows(self, result: RunResult, compare: bool) -> None:
        import qt

        widget = self.host.ui.evaluateResultsTableWidget
        if compare:
            headers, rows = comparisonRows(result.data, self._titles)
        else:
            headers, rows = ["Metric", "Value"], [list(r) for r in scoreRows(result.data.get("scores") or {}, self._titles)]
        widget.clear()
        widget.setColumnCount(len(headers))
        widget.setHorizontalHeaderLabels(headers)
        widget.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(text)
                widget.setItem(r, c, item)
        widget.resizeColumnsToContents()
