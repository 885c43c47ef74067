"""The built-in demo and what it is made of (an application, like the command line).

- :mod:`.pipeline`: ``medxai demo`` end to end (:func:`run_demo`) and the demo case the tests,
  benchmarks and the Slicer module share;
- :mod:`.sections`: the demo's method comparison and counterfactual sections;
- :mod:`.samples`: synthetic CT and PET phantoms with known truth, and the MNI T1 template;
- :mod:`.training`: ``medxai train-demo``, deterministic training of the shipped demo models.

Nothing below :mod:`MedXAILib.cli` imports this package.
"""

from __future__ import annotations

from .pipeline import *  # noqa: F403  (the demo's public names are its pipeline's)
from .pipeline import __all__  # noqa: F401
