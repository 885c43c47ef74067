"""The method parameter form, generated from a method's parameter dataclass.

Every method declares its parameters as a dataclass whose fields carry a default, a range or
choices, a unit and a help text (:func:`MedXAILib.params.param`). :func:`MedXAILib.params.param_specs`
turns it into :class:`~MedXAILib.params.ParamSpec` objects, and :class:`ParameterForm` turns those
into widgets: ``QCheckBox`` for bool, ``QComboBox`` for choices, ``QSpinBox`` / ``QDoubleSpinBox``
with the declared range for numbers, ``QLineEdit`` for free text; the help is the tooltip. A new
method therefore needs no GUI code.

The parameter node keeps the values of every method the user touched as one JSON string
(``{"integrated_gradients": {"n_steps": 64}, ...}``), so switching methods does not lose settings
and a saved scene restores them. The widget-independent parts (:func:`widgetSpec`,
:func:`decodeMethodParameters`, :func:`valuesForMethod`, ...) are plain Python, tested by pytest;
``qt`` is imported only when a form is built.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from MedXAILib.errors import ParameterError
from MedXAILib.params import ParamSpec, make_params, param_specs

__all__ = [
    "WidgetSpec",
    "widgetSpec",
    "labelFor",
    "toolTipFor",
    "decodeMethodParameters",
    "encodeMethodParameters",
    "valuesForMethod",
    "ParameterForm",
]

INT_LIMIT = 2**31 - 1  # QSpinBox holds a C int
FLOAT_LIMIT = 1e9  # unbounded floats: a wide but finite QDoubleSpinBox range


@dataclass(frozen=True)
class WidgetSpec:
    """How one parameter is shown: widget kind and its settings."""

    name: str
    kind: str  # "checkbox" | "combo" | "spin" | "doublespin" | "line"
    label: str
    toolTip: str
    default: Any
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    decimals: int = 0
    singleStep: float = 1.0
    suffix: str = ""
    items: tuple[str, ...] = ()
    choices: tuple[Any, ...] = ()


def labelFor(spec: ParamSpec) -> str:
    """``n_steps`` -> ``N steps:``; ``blur_sigma_mm`` -> ``Blur sigma (mm):`` when the unit is mm."""
    words = spec.name.split("_")
    if spec.unit and words and words[-1] == spec.unit:
        words = words[:-1]
    text = " ".join(words).strip() or spec.name
    text = text[0].upper() + text[1:]
    if spec.unit:
        text += f" ({spec.unit})"
    return text + ":"


def toolTipFor(spec: ParamSpec) -> str:
    """The help text plus the default and the allowed values."""
    parts = [spec.help.strip()] if spec.help else []
    if isinstance(spec.default, str):
        details = [f"Default: {spec.default}" if spec.default else "Default: empty"]
    else:
        details = [f"Default: {spec.default!r}"]
    if spec.range is not None:
        lo, hi = spec.range
        details.append(f"range {'-inf' if lo is None else lo} to {'inf' if hi is None else hi}")
    if spec.choices:
        details.append("one of " + ", ".join(str(c) for c in spec.choices))
    parts.append("; ".join(details) + f" (parameter '{spec.name}').")
    return "\n".join(parts)


def _decimals(spec: ParamSpec) -> int:
    values = [abs(float(v)) for v in (spec.default, *(spec.range or ())) if v is not None and float(v) != 0]
    if not values:
        return 3
    smallest = min(values)
    # enough decimals to show the smallest meaningful value with 2 significant digits, at least 2
    return int(min(max(2, 1 - math.floor(math.log10(smallest)) + 1), 8))


def _singleStep(spec: ParamSpec, decimals: int) -> float:
    default = abs(float(spec.default)) if spec.default not in (None, 0) else 0.0
    if default > 0:
        return max(10 ** (math.floor(math.log10(default)) - 1), 10**-decimals)
    if spec.range is not None and None not in spec.range:
        span = float(spec.range[1]) - float(spec.range[0])
        if span > 0:
            return max(10 ** (math.floor(math.log10(span)) - 2), 10**-decimals)
    return 10 ** -min(decimals, 2)


def widgetSpec(spec: ParamSpec) -> WidgetSpec:
    """The widget for one :class:`ParamSpec` (the pure part of building the form)."""
    common = dict(name=spec.name, label=labelFor(spec), toolTip=toolTipFor(spec), default=spec.default)
    if spec.choices:
        return WidgetSpec(kind="combo", items=tuple(str(c) for c in spec.choices), choices=tuple(spec.choices), **common)
    if spec.type is bool:
        return WidgetSpec(kind="checkbox", **common)
    suffix = f" {spec.unit}" if spec.unit else ""
    lo, hi = spec.range if spec.range is not None else (None, None)
    if spec.type is int:
        return WidgetSpec(
            kind="spin",
            minimum=max(int(lo), -INT_LIMIT) if lo is not None else -INT_LIMIT,
            maximum=min(int(hi), INT_LIMIT) if hi is not None else INT_LIMIT,
            suffix=suffix,
            **common,
        )
    if spec.type is float:
        decimals = _decimals(spec)
        return WidgetSpec(
            kind="doublespin",
            minimum=float(lo) if lo is not None else -FLOAT_LIMIT,
            maximum=float(hi) if hi is not None else FLOAT_LIMIT,
            decimals=decimals,
            singleStep=_singleStep(spec, decimals),
            suffix=suffix,
            **common,
        )
    return WidgetSpec(kind="line", **common)


# ------------------------------------------------------------------------------------------------
# Values kept in the parameter node


def decodeMethodParameters(text: str) -> dict[str, dict[str, Any]]:
    """The ``{method: {name: value}}`` mapping stored as JSON; {} for empty or damaged text."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}


def encodeMethodParameters(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Stable JSON for the parameter node (sorted keys, so unchanged values do not mark it modified)."""
    return json.dumps({k: dict(v) for k, v in data.items()}, sort_keys=True)


def valuesForMethod(paramsClass: type, stored: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """Valid values for every parameter of `paramsClass`: the stored ones where they still validate,
    defaults elsewhere (a scene saved with another version may hold unknown or out-of-range values)."""
    specs = param_specs(paramsClass)
    values = {spec.name: spec.default for spec in specs}
    for spec in specs:
        if stored and spec.name in stored:
            try:
                values[spec.name] = getattr(make_params(paramsClass, {spec.name: stored[spec.name]}), spec.name)
            except (ParameterError, TypeError, ValueError):
                pass  # keep the default
    return values


# ------------------------------------------------------------------------------------------------
# The Qt form


class ParameterForm:
    """Widgets for a list of :class:`ParamSpec` inside `container` (a widget with a layout).

    Args:
        container: the widget that holds the form; its layout receives one inner widget with a
            ``QFormLayout`` that is replaced on every :meth:`build`.
        onChanged: called with no argument whenever the user changes a value.
    """

    def __init__(self, container: Any, onChanged: Optional[Callable[[], None]] = None):
        self.container = container
        self.onChanged = onChanged
        self.specs: list[WidgetSpec] = []
        self.widgets: dict[str, Any] = {}
        self._inner: Any = None
        self._updating = False

    def build(self, specs: Sequence[ParamSpec], values: Optional[Mapping[str, Any]] = None) -> None:
        """Replace the form with widgets for `specs`, showing `values` (defaults where missing)."""
        import qt

        self.clear()
        self._inner = qt.QWidget()
        formLayout = qt.QFormLayout(self._inner)
        formLayout.setContentsMargins(0, 0, 0, 0)
        self.specs = [widgetSpec(spec) for spec in specs]
        for ws in self.specs:
            widget = self._createWidget(qt, ws)
            widget.toolTip = ws.toolTip
            widget.objectName = f"{ws.name}ParameterWidget"
            label = qt.QLabel(ws.label)
            label.toolTip = ws.toolTip
            formLayout.addRow(label, widget)
            self.widgets[ws.name] = widget
        if not self.specs:
            note = qt.QLabel("This method has no parameters.")
            note.enabled = False
            formLayout.addRow(note)
        self.container.layout().addWidget(self._inner)
        self.setValues(values or {})

    def _createWidget(self, qt: Any, ws: WidgetSpec) -> Any:
        if ws.kind == "checkbox":
            widget = qt.QCheckBox()
            widget.connect("toggled(bool)", self._changed)
        elif ws.kind == "combo":
            widget = qt.QComboBox()
            for item in ws.items:
                widget.addItem(item)
            widget.connect("currentIndexChanged(int)", self._changed)
        elif ws.kind == "spin":
            widget = qt.QSpinBox()
            widget.setRange(int(ws.minimum), int(ws.maximum))
            widget.suffix = ws.suffix
            widget.connect("valueChanged(int)", self._changed)
        elif ws.kind == "doublespin":
            widget = qt.QDoubleSpinBox()
            widget.decimals = ws.decimals  # before the range and value, which it rounds
            widget.setRange(ws.minimum, ws.maximum)
            widget.singleStep = ws.singleStep
            widget.suffix = ws.suffix
            widget.connect("valueChanged(double)", self._changed)
        else:
            widget = qt.QLineEdit()
            widget.connect("textChanged(QString)", self._changed)
        return widget

    def _changed(self, *_: Any) -> None:
        if not self._updating and self.onChanged is not None:
            self.onChanged()

    def values(self) -> dict[str, Any]:
        """The current values, typed as the parameter dataclass declares them."""
        out: dict[str, Any] = {}
        for ws in self.specs:
            widget = self.widgets[ws.name]
            if ws.kind == "checkbox":
                out[ws.name] = bool(widget.checked)
            elif ws.kind == "combo":
                index = widget.currentIndex
                out[ws.name] = ws.choices[index] if 0 <= index < len(ws.choices) else ws.default
            elif ws.kind == "spin":
                out[ws.name] = int(widget.value)
            elif ws.kind == "doublespin":
                out[ws.name] = float(widget.value)
            else:
                out[ws.name] = str(widget.text)
        return out

    def setValues(self, values: Mapping[str, Any]) -> None:
        """Show `values` (names not in the form are ignored) without calling `onChanged`.

        Widgets that already show their value are left alone, so a line edit being typed in keeps
        its cursor when the parameter node echoes the change back.
        """
        current = self.values()
        self._updating = True
        try:
            for ws in self.specs:
                value = values.get(ws.name, ws.default)
                if ws.name in current and current[ws.name] == value and type(current[ws.name]) is type(value):
                    continue
                widget = self.widgets[ws.name]
                if ws.kind == "checkbox":
                    widget.checked = bool(value)
                elif ws.kind == "combo":
                    widget.currentIndex = ws.choices.index(value) if value in ws.choices else ws.choices.index(ws.default)
                elif ws.kind == "spin":
                    widget.value = int(value)
                elif ws.kind == "doublespin":
                    widget.value = float(value)
                else:
                    widget.text = str(value)
        finally:
            self._updating = False

    def clear(self) -> None:
        """Remove the current widgets."""
        if self._inner is not None:
            self.container.layout().removeWidget(self._inner)
            self._inner.hide()
            self._inner.deleteLater()
            self._inner = None
        self.specs, self.widgets = [], {}
