"""Parameter dataclasses with ranges, choices and help.

A method's parameters are a dataclass whose fields are declared with :func:`param`. The metadata
drives validation, the CLI (``--param name=value``), ``medxai methods`` and the Slicer form, so a new
method needs no front-end code.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from .errors import ParameterError

__all__ = ["param", "ParamSpec", "param_specs", "make_params", "params_to_dict"]


def param(
    default: Any,
    *,
    help: str,
    range: Optional[tuple[Optional[float], Optional[float]]] = None,
    choices: Optional[Sequence[Any]] = None,
    unit: str = "",
) -> Any:
    """Declare a dataclass field with a default, a help text, and optionally a range or choices.

    Args:
        default: default value (also what the GUI shows first).
        help: one sentence for tooltips and ``medxai methods``.
        range: inclusive (low, high); ``None`` on either side means unbounded.
        choices: the allowed values.
        unit: unit shown beside the value (``"mm"``, ``"voxels"``).
    """
    meta = {"help": help, "range": range, "choices": tuple(choices) if choices else None, "unit": unit}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamSpec:
    """What a front end needs to show and validate one parameter."""

    name: str
    type: type
    default: Any
    help: str
    range: Optional[tuple[Optional[float], Optional[float]]]
    choices: Optional[tuple[Any, ...]]
    unit: str

    def describe(self) -> str:
        parts = [f"{self.name} ({self.type.__name__}, default {self.default!r}"]
        if self.choices:
            parts.append(f", one of {', '.join(map(str, self.choices))}")
        if self.range:
            lo, hi = self.range
            parts.append(f", range [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]")
        if self.unit:
            parts.append(f", {self.unit}")
        return "".join(parts) + f"): {self.help}"


def param_specs(cls: type) -> list[ParamSpec]:
    """The :class:`ParamSpec` of every field of a parameter dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        specs.append(
            ParamSpec(
                name=f.name,
                type=hints[f.name],
                default=f.default,
                help=meta.get("help", ""),
                range=meta.get("range"),
                choices=meta.get("choices"),
                unit=meta.get("unit", ""),
            )
        )
    return specs


def _convert(spec: ParamSpec, value: Any) -> Any:
    if spec.type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ParameterError(f"parameter '{spec.name}' must be true or false; got {value!r}")
    if spec.type in (int, float):
        if isinstance(value, bool):
            raise ParameterError(f"parameter '{spec.name}' must be a number; got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ParameterError(
                f"parameter '{spec.name}' must be a number; got {value!r}"
            ) from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ParameterError(f"parameter '{spec.name}' must be a finite number; got {value!r}")
        if spec.type is int:
            if number != int(number):
                raise ParameterError(f"parameter '{spec.name}' must be a whole number; got {value!r}")
            return int(number)
        return number
    return spec.type(value)


def _validate(spec: ParamSpec, value: Any) -> None:
    if spec.choices is not None and value not in spec.choices:
        raise ParameterError(
            f"parameter '{spec.name}' must be one of {', '.join(map(str, spec.choices))}; "
            f"got {value!r}"
        )
    if spec.range is not None:
        lo, hi = spec.range
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ParameterError(
                f"parameter '{spec.name}' must lie in [{lo}, {hi}]; got {value!r}"
            )


def make_params(cls: type, values: Optional[Mapping[str, Any]] = None) -> Any:
    """Build and validate a parameter dataclass from a mapping (strings allowed, as from a CLI).

    Raises:
        ParameterError: unknown name (with the closest known one), bad type, out of range or choice.
    """
    values = dict(values or {})
    specs = {s.name: s for s in param_specs(cls)}
    for name in values:
        if name not in specs:
            close = difflib.get_close_matches(name, specs, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            known = ", ".join(specs) or "none"
            raise ParameterError(f"unknown parameter '{name}' (known: {known}){hint}")
    converted = {}
    for name, spec in specs.items():
        value = _convert(spec, values[name]) if name in values else spec.default
        _validate(spec, value)
        converted[name] = value
    return cls(**converted)


def params_to_dict(params: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a parameter dataclass instance."""
    return dataclasses.asdict(params) if params is not None else {}
