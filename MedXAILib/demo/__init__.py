"""The built-in demo and what it is made of (an application, like the command line).

- :mod:`.pipeline`: ``medxai demo`` end to end (:func:`run_demo`) and the demo case the tests,
  benchmarks and the Slicer module share;
- :mod:`.sections`: the demo's method comparison and counterfactual sections;
- :mod:`.samples`: synthetic CT and PET phantoms with known truth, and the MNI T1 template;
- :mod:`.training`: ``medxai train-demo``, deterministic training of the shipped demo models.

Nothing below :mod:`MedXAILib.cli` imports this package.
"""

from __future__ import annotations

from .pipeline import (
    CLASSIFIER,
    demo_case,
    DemoCase,
    DemoModel,
    display_limit,
    lesion_statistics,
    load_demo_models,
    METHODS,
    open_hint,
    PHANTOM_SEED,
    run_demo,
    SEGMENTER,
    synthetic_ct,
    train_tiny_classifier,
)

__all__ = [
    "SEGMENTER",
    "CLASSIFIER",
    "METHODS",
    "PHANTOM_SEED",
    "DemoCase",
    "DemoModel",
    "demo_case",
    "display_limit",
    "load_demo_models",
    "lesion_statistics",
    "open_hint",
    "run_demo",
    "synthetic_ct",
    "train_tiny_classifier",
]
