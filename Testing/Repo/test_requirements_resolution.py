"""MedXAI/Resources/requirements.txt resolves under what Slicer 5.10 and 5.12 pin (resolve_requirements.py).

The pins (numpy, SciPy, SimpleITK, Python) come from each tag's SuperBuild files (data/slicer_python_pins.json,
derived by derive_slicer_data.py). The offline tests check the constraints and the torch stand-in; the
resolution itself asks PyPI for package metadata (nothing is installed), so it runs only where
``MEDXAI_NETWORK_TESTS=1`` is set (CI sets it in .ci/run): a MONAI or scikit-image release that conflicts
with Slicer's numpy or with a recent torch then fails CI before a user meets it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from resolve_requirements import PINS, constraints_text, environment_torch, resolve, resolve_all, torch_stand_in

NETWORK = os.environ.get("MEDXAI_NETWORK_TESTS") == "1"


def test_constraints_pin_what_each_slicer_ships():
    assert sorted(PINS["tags"]) == ["v5.10.0", "v5.12.3"]
    text = constraints_text("v5.10.0", "2.13.0")
    assert "numpy==2.0.2" in text and "scipy==1.13.1" in text and "SimpleITK==2.5.2" in text
    assert "torch==2.13.0+medxai" in text
    assert "numpy==2.4.6" in constraints_text("v5.12.3", None) and "torch" not in constraints_text("v5.12.3", None)
    assert all(PINS["tags"][tag]["python"].startswith("3.12") for tag in PINS["tags"])


def test_the_torch_stand_in_is_an_installable_wheel_without_dependencies(tmp_path):
    torch_stand_in(tmp_path, "2.13.0")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(tmp_path),
                             "--dry-run", "--ignore-installed", "--quiet", "--disable-pip-version-check",
                             "torch==2.13.0+medxai"], capture_output=True, text=True,
                            env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.skipif(not NETWORK, reason="asks PyPI for metadata: set MEDXAI_NETWORK_TESTS=1")
def test_requirements_resolve_under_both_slicer_pins_and_a_conflict_is_reported():
    torch = environment_torch()
    resolved = resolve_all(torch)
    for tag, versions in resolved.items():
        pins = PINS["tags"][tag]
        assert versions["numpy"] == pins["numpy"] and versions["scipy"] == pins["scipy"], (tag, versions)
        assert versions["torch"] == f"{torch}+medxai", (tag, versions)
        assert {"monai", "scikit-image", "pyyaml"} <= set(versions), (tag, versions)
    with pytest.raises(RuntimeError, match="cannot resolve"):  # the check can fail
        resolve("v5.12.3", torch, extra=("monai==1.4.0",))  # MONAI 1.4 needs numpy < 2
