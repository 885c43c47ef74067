"""MedXAIRuntime.forms: the parameter form generated from each method's parameter dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAILib import METHODS, param, param_specs
from MedXAIRuntime.forms import (
    FLOAT_LIMIT,
    INT_LIMIT,
    decodeMethodParameters,
    encodeMethodParameters,
    labelFor,
    valuesForMethod,
    widgetSpec,
)

ALL_SPECS = [(info.name, spec) for info in METHODS for spec in param_specs(info.params)]


@pytest.mark.parametrize("method, spec", ALL_SPECS, ids=[f"{m}.{s.name}" for m, s in ALL_SPECS])
def test_every_registered_parameter_gets_a_widget_that_holds_its_default(method, spec):
    ws = widgetSpec(spec)
    assert ws.kind in {"checkbox", "combo", "spin", "doublespin", "line"}
    assert ws.label.endswith(":") and spec.help.strip()[:20] in ws.toolTip
    if ws.kind == "combo":
        assert spec.default in ws.choices and len(ws.items) == len(ws.choices)
    elif ws.kind == "checkbox":
        assert spec.type is bool
    elif ws.kind in ("spin", "doublespin"):
        assert ws.minimum <= spec.default <= ws.maximum
        if ws.kind == "doublespin":
            assert round(spec.default, ws.decimals) == spec.default, "the spin box would round the default"
            assert 0 < ws.singleStep <= max(abs(spec.default), 1.0)
    else:
        assert spec.type is str


@dataclass
class Example:
    steps: int = param(32, range=(1, None), help="Steps.")
    sigma_mm: float = param(8.0, range=(0.0, None), unit="mm", help="Width.")
    tiny: float = param(1e-4, range=(1e-6, 1.0), help="Tolerance.")
    free: float = param(0.5, help="Unbounded.")
    mode: str = param("a", choices=("a", "b"), help="Mode.")
    flag: bool = param(False, help="Flag.")
    name: str = param("", help="Name.")


def test_widget_settings_for_ranges_units_and_precision():
    specs = {s.name: widgetSpec(s) for s in param_specs(Example)}
    assert (specs["steps"].kind, specs["steps"].minimum, specs["steps"].maximum) == ("spin", 1, INT_LIMIT)
    assert specs["sigma_mm"].suffix == " mm" and specs["sigma_mm"].label == "Sigma (mm):"
    assert specs["sigma_mm"].maximum == FLOAT_LIMIT
    assert specs["tiny"].decimals >= 6 and specs["tiny"].singleStep <= 1e-4
    assert (specs["free"].minimum, specs["free"].maximum) == (-FLOAT_LIMIT, FLOAT_LIMIT)
    assert specs["mode"].items == ("a", "b")
    assert specs["flag"].kind == "checkbox" and specs["name"].kind == "line"
    assert "Default: empty" in specs["name"].toolTip


def test_labels():
    spec = {s.name: s for s in param_specs(Example)}
    assert labelFor(spec["steps"]) == "Steps:"


def test_method_parameters_json_round_trip_and_damaged_text():
    data = {"integrated_gradients": {"n_steps": 64, "baseline": "zeros"}, "saliency": {"absolute": True}}
    text = encodeMethodParameters(data)
    assert decodeMethodParameters(text) == data
    assert encodeMethodParameters(decodeMethodParameters(text)) == text  # stable: no spurious Modified events
    assert decodeMethodParameters("") == {} and decodeMethodParameters("{oops") == {}
    assert decodeMethodParameters('["a"]') == {} and decodeMethodParameters('{"m": 3}') == {}


def test_values_keep_valid_stored_values_and_drop_the_rest():
    stored = {"steps": "64", "sigma_mm": -3.0, "mode": "z", "flag": True, "unknown": 1}
    values = valuesForMethod(Example, stored)
    assert values == {"steps": 64, "sigma_mm": 8.0, "tiny": 1e-4, "free": 0.5, "mode": "a", "flag": True, "name": ""}
    assert valuesForMethod(Example, None)["steps"] == 32


def test_values_for_every_method_validate():
    from MedXAILib.params import make_params

    for info in METHODS:
        make_params(info.params, valuesForMethod(info.params, {}))
