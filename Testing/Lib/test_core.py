"""Light core: parameters, registry, monitor, targets and volumes (no torch needed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from MedXAILib import (
    METHODS,
    Cancelled,
    ImageVolume,
    InputError,
    Monitor,
    ParameterError,
    Target,
    TargetError,
    UnknownNameError,
    make_params,
    param,
    param_specs,
)
from MedXAILib.registry import FAMILIES, TASKS


@dataclass
class Example:
    steps: int = param(10, range=(1, 100), help="How many.")
    width: float = param(2.5, range=(0.0, None), unit="mm", help="How wide.")
    mode: str = param("a", choices=("a", "b"), help="Which.")
    flag: bool = param(False, help="Whether.")


def test_params_convert_strings_and_keep_defaults():
    p = make_params(Example, {"steps": "20", "width": "0.5", "flag": "yes"})
    assert (p.steps, p.width, p.mode, p.flag) == (20, 0.5, "a", True)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"steps": "0"}, "must lie in [1, 100]"),
        ({"steps": "2.5"}, "whole number"),
        ({"width": "wide"}, "must be a number"),
        ({"mode": "c"}, "one of a, b"),
        ({"flag": "maybe"}, "true or false"),
        ({"step": "3"}, "did you mean 'steps'"),
    ],
)
def test_params_reject_bad_values_with_a_reason(values, fragment):
    with pytest.raises(ParameterError, match=None) as info:
        make_params(Example, values)
    assert fragment in str(info.value)


def test_param_specs_carry_ranges_choices_units_and_help():
    specs = {s.name: s for s in param_specs(Example)}
    assert specs["steps"].range == (1, 100) and specs["steps"].type is int
    assert specs["mode"].choices == ("a", "b")
    assert specs["width"].unit == "mm" and specs["width"].help == "How wide."
    assert "default 10" in specs["steps"].describe()


def test_every_registered_method_is_well_formed():
    assert {"saliency", "input_x_gradient", "integrated_gradients"} <= set(METHODS.names())
    for info in METHODS:
        assert info.family in FAMILIES and set(info.tasks) <= set(TASKS)
        assert info.reference and info.summary and info.title
        make_params(info.params)  # defaults validate
        for spec in param_specs(info.params):
            assert spec.help, f"{info.name}.{spec.name} has no help"
        assert callable(info.load())


def test_unknown_method_suggests_the_closest_name():
    with pytest.raises(UnknownNameError, match="did you mean 'integrated_gradients'"):
        METHODS.get("integrated_gradient")
    assert METHODS.get("Integrated-Gradients").name == "integrated_gradients"


def test_monitor_scales_stages_and_cancels():
    seen = []
    monitor = Monitor(lambda f, m: seen.append((round(f, 3), m)))
    with monitor.stage(0.5, 1.0):
        monitor.update(0.5, "half of the second half")
    assert seen == [(0.75, "half of the second half")]
    monitor.cancel()
    with pytest.raises(Cancelled):
        monitor.update(0.9, "too late")


def test_target_validation():
    with pytest.raises(TargetError, match="needs its box"):
        Target(class_index=1, region="box")
    with pytest.raises(TargetError, match="must not be below"):
        Target(class_index=1, region="box", box=(5, 5, 5, 1, 9, 9))
    with pytest.raises(TargetError, match="region must be one of"):
        Target(region="sphere")
    with pytest.raises(TargetError, match="outside the image grid"):
        Target(class_index=1, region="voxel", voxel=(0, 0, 99)).region_mask((4, 4, 4))
    with pytest.raises(TargetError, match="covers no voxel"):
        Target(class_index=1, region="box", box=(10, 10, 10, 12, 12, 12)).region_mask((4, 4, 4))


def test_box_is_inclusive_and_clipped_to_the_grid():
    mask = Target(class_index=0, region="box", box=(1, 0, 2, 2, 9, 2)).region_mask((4, 3, 5))
    assert mask.sum() == 2 * 3 * 1 and mask[1, 0, 2] and mask[2, 2, 2] and not mask[3, 0, 2]


def test_volume_checks_shape_affine_and_finiteness():
    with pytest.raises(InputError, match="3 spatial dimensions"):
        ImageVolume(np.zeros((2, 3)), np.eye(4))
    with pytest.raises(InputError, match="singular"):
        ImageVolume(np.zeros((2, 3, 4)), np.diag([1.0, 0.0, 1.0, 1.0]))
    v = ImageVolume(np.zeros((2, 3, 4)), np.diag([0.5, 1.0, 3.0, 1.0]))
    assert v.array.shape == (1, 2, 3, 4) and v.array.dtype == np.float32
    np.testing.assert_allclose(v.spacing, [0.5, 1.0, 3.0])
    v.array[0, 1, 2, 3] = np.nan
    with pytest.raises(InputError, match=r"first at channel, i, j, k = \(0, 1, 2, 3\)"):
        v.check_finite()
