"""Fixtures for the web viewer's tests (MedXAIViewer); helpers: viewer_testing.py.

The browser tests need the ``viewer`` extra (trame-slicer on slicer-core) and are skipped without it, like the
bridge tests without slicer-core; they need Debian's chromium and fail without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# This folder (viewer_testing), the repository (MedXAIViewer) and MedXAI/ (MedXAIBridge, as Slicer sees it).
for folder in (HERE, ROOT, ROOT / "MedXAI"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's binary, never a downloaded one) driven by Playwright."""
    pytest.importorskip("trame_slicer", reason="the viewer tests need the viewer extra (pip install -e '.[viewer]')")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (test extra)")
    from viewer_testing import chromium

    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium(),
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield instance
        instance.close()
