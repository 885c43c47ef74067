"""Make ``MedXAILib`` and the module's ``MedXAIRuntime`` importable for the Runtime tests.

In Slicer, the module folder (``qt-scripted-modules``) is on ``sys.path`` and holds MedXAIRuntime,
MedXAIBridge and MedXAILib side by side; here the repository root holds MedXAILib and ``MedXAI/``
holds MedXAIRuntime, so both go on the path.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "MedXAI"

for _path in (str(MODULE_DIR), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
