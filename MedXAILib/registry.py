"""Registries of named components: attribution methods now, statistics and generators later.

An entry holds only light metadata (name, title, family, tasks, parameter dataclass, reference) and
the dotted path of its implementation, which is imported on first use. Listing methods therefore
works before torch is installed (the Slicer GUI fills its combo box this way).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import UnknownNameError

__all__ = ["Registry", "MethodInfo", "FAMILIES", "TASKS", "MAP_UNITS", "METHODS", "load_implementation"]

FAMILIES = ("gradient", "cam", "perturbation", "game-theoretic", "propagation", "counterfactual")
TASKS = ("classification", "segmentation")
#: What a method's map measures, which decides whether its channels can be compared:
#: ``score``: a contribution in the units of the explained score (logit, probability), so the maps
#: of a CT and a PET channel add up and their shares compare; ``gradient``: score per unit of input
#: intensity (per HU, per SUV), so channels with different units do not compare; ``layer``: a
#: layer's activations (CAM), computed after the network has mixed the channels, so one map is
#: split equally over them and says nothing about which channel decided.
MAP_UNITS = ("score", "gradient", "layer")


@dataclass(frozen=True)
class MethodInfo:
    """Metadata of one attribution method.

    Attributes:
        name: stable snake_case identifier used by the CLI, saved scenes and provenance.
        title: display name.
        family: one of :data:`FAMILIES`.
        tasks: the model tasks it supports (subset of :data:`TASKS`).
        params: the parameter dataclass (fields declared with :func:`MedXAILib.params.param`).
        reference: the paper that defines the method.
        summary: one line for listings and tooltips.
        implementation: ``"module:function"`` imported lazily by :meth:`load`.
        units: what the map measures, one of :data:`MAP_UNITS` (decides whether the maps of
            different input channels compare).
    """

    name: str
    title: str
    family: str
    tasks: tuple[str, ...]
    params: type
    reference: str
    summary: str
    implementation: str
    units: str = "score"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r} for {self.name}")
        if self.units not in MAP_UNITS:
            raise ValueError(f"unknown map units {self.units!r} for {self.name}")
        if not set(self.tasks) <= set(TASKS):
            raise ValueError(f"unknown task in {self.tasks!r} for {self.name}")

    def load(self) -> Callable[..., Any]:
        return load_implementation(self.implementation)


def load_implementation(path: str) -> Callable[..., Any]:
    """The function a registry entry names as ``"module:function"``, imported now (on first use)."""
    module_name, func_name = path.split(":")
    return getattr(importlib.import_module(module_name), func_name)


T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry mapping whose lookups suggest the closest name on a miss."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        name = entry.name  # type: ignore[attr-defined]
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            pass
        key = name.strip().lower().replace("-", "_").replace(" ", "_")
        if key in self._entries:
            return self._entries[key]
        close = difflib.get_close_matches(key, list(self._entries), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} '{name}'{hint} (known: {', '.join(sorted(self._entries))})"
        )

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


METHODS: Registry[MethodInfo] = Registry("method")
