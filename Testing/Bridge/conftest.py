"""Fixtures for the bridge tests (every test module here is marked ``mrml``); helpers: mrmlTesting.py.

Without slicer-core the test modules are skipped (``pytest.importorskip`` in mrmlTesting.py); the
``test`` extra of pyproject.toml installs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# This folder (for mrmlTesting) and MedXAI/ (Slicer puts the module folder on sys.path, so MedXAIBridge
# is a top-level package there too).
for folder in (HERE, HERE.parents[1] / "MedXAI"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture
def scene():
    from mrmlTesting import newScene

    scene = newScene()
    yield scene
    scene.Clear(True)


@pytest.fixture
def sliceView(scene):
    from mrmlTesting import OffscreenSliceView

    view = OffscreenSliceView(scene)
    yield view
    view.close()
