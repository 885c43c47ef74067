"""MedXAIRuntime.dependencies: what gets installed into Slicer's Python, and how pip is held back."""

from __future__ import annotations

import re
import sys

import pytest

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAIRuntime import dependencies
from MedXAIRuntime.dependencies import (
    constraintsText,
    installationPlan,
    missingRequirements,
    pipInstallArguments,
    readRequirements,
    requirementName,
    torchStatus,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

SHIPPED_WITH_SLICER_OR_PYTORCH = {"torch", "numpy", "simpleitk"}


def test_requirements_file_matches_pyproject_without_torch_numpy_and_simpleitk():
    pyproject = tomllib.loads((runtime_paths.ROOT / "pyproject.toml").read_text())
    expected = {
        requirementName(r).lower(): re.sub(r"\s+", "", r)
        for r in pyproject["project"]["dependencies"]
        if requirementName(r).lower() not in SHIPPED_WITH_SLICER_OR_PYTORCH
    }
    shipped = {requirementName(r).lower(): re.sub(r"\s+", "", r) for r in readRequirements()}
    assert shipped == expected


def test_never_installs_torch_or_the_library_with_pip():
    names = {requirementName(r).lower() for r in readRequirements()}
    assert not names & {"torch", "torchvision", "medxailib", "slicer-medxai", "shap", "slicer", "slicer-core"}


@pytest.mark.parametrize(
    "requirement, name",
    [("monai>=1.4,<1.7", "monai"), ("scikit-image>=0.22", "scikit-image"), ("monai[nibabel] >= 1.4", "monai"),
     ("SimpleITK", "SimpleITK")],
)
def test_requirement_name(requirement, name):
    assert requirementName(requirement) == name


def test_missing_requirements_checks_presence_and_range():
    versions = {"monai": "1.3.2", "scipy": "1.14.0", "scikit-image": None}
    missing = missingRequirements(["monai>=1.4,<1.7", "scipy>=1.10", "scikit-image>=0.22"], versions.get)
    assert missing == ["monai>=1.4,<1.7", "scikit-image>=0.22"]


def test_torch_status_reads_metadata_only():
    assert torchStatus(lambda name: None) == "missing"
    assert torchStatus(lambda name: "2.1.2+cu121") == "old"
    assert torchStatus(lambda name: "2.13.0+cpu") == "ok"


def test_constraints_pin_installed_packages_only():
    text = constraintsText({"torch": "2.13.0+cu126", "torchvision": None, "numpy": "2.2.1", "SimpleITK": "2.5.0"})
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ["torch==2.13.0+cu126", "numpy==2.2.1", "SimpleITK==2.5.0"]


def test_pip_arguments_for_slicer_5_10(tmp_path):
    path = tmp_path / "constraints.txt"
    assert pipInstallArguments(["monai>=1.4,<1.7", "scipy>=1.10"], path) == [
        "monai>=1.4,<1.7", "scipy>=1.10", "-c", str(path)]


def test_installation_plan_in_this_environment_needs_nothing():
    # the test environment has torch, MONAI, SciPy and scikit-image (pyproject.toml)
    assert installationPlan() == ("ok", [])
    assert dependencies.dependenciesReady()


def test_ensure_asks_once_and_declining_installs_nothing(monkeypatch):
    monkeypatch.setattr(dependencies, "_ready", False)
    monkeypatch.setattr(dependencies, "installationPlan", lambda: ("missing", ["monai>=1.4,<1.7"]))
    asked = []

    def decline(message, details):
        asked.append(details)
        return False

    monkeypatch.setattr(dependencies, "_installTorch", lambda: pytest.fail("installed torch after a decline"))
    monkeypatch.setattr(dependencies, "_pipInstall", lambda missing: pytest.fail("ran pip after a decline"))
    with pytest.raises(dependencies.DependencyError, match="cannot compute"):
        dependencies.ensureDependencies(decline)
    assert len(asked) == 1 and "PyTorch extension" in asked[0] and "monai" in asked[0]


def test_ensure_installs_torch_first_then_pip_and_checks_again(monkeypatch):
    monkeypatch.setattr(dependencies, "_ready", False)
    plans = [("missing", ["scipy>=1.10"]), ("ok", [])]
    monkeypatch.setattr(dependencies, "installationPlan", lambda: plans.pop(0))
    calls = []
    monkeypatch.setattr(dependencies, "_installTorch", lambda: calls.append("torch"))
    monkeypatch.setattr(dependencies, "_pipInstall", lambda missing: calls.append(("pip", list(missing))))
    dependencies.ensureDependencies(lambda message, details: True)
    assert calls == ["torch", ("pip", ["scipy>=1.10"])] and dependencies._ready


def test_ensure_reports_what_is_still_missing(monkeypatch):
    monkeypatch.setattr(dependencies, "_ready", False)
    plans = [("ok", ["monai>=1.4,<1.7"]), ("ok", ["monai>=1.4,<1.7"])]
    monkeypatch.setattr(dependencies, "installationPlan", lambda: plans.pop(0))
    monkeypatch.setattr(dependencies, "_pipInstall", lambda missing: None)  # e.g. testing mode: pip_ensure skipped
    with pytest.raises(dependencies.DependencyError, match="still missing.*monai"):
        dependencies.ensureDependencies(lambda message, details: True)


def test_old_torch_is_not_replaced(monkeypatch):
    monkeypatch.setattr(dependencies, "_ready", False)
    monkeypatch.setattr(dependencies, "installationPlan", lambda: ("old", []))
    with pytest.raises(dependencies.DependencyError, match="PyTorch Utils"):
        dependencies.ensureDependencies(lambda message, details: pytest.fail("must not offer to replace torch"))
