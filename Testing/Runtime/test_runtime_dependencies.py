"""MedXAIRuntime.dependencies: what gets installed into Slicer's Python, and how pip is held back."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import runtime_paths  # puts MedXAIRuntime and MedXAILib on sys.path

from MedXAIRuntime import dependencies
from MedXAIRuntime.dependencies import (
    constraintsText,
    installationPlan,
    missingRequirements,
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


def test_installation_plan_in_this_environment_needs_nothing():
    # the test environment has torch, MONAI, SciPy, scikit-image and PyYAML (pyproject.toml)
    assert installationPlan() == ("ok", [])
    assert dependencies.dependenciesReady()
    assert dependencies.prepareInstallation(lambda message, details: pytest.fail("nothing to ask")) is None


def _versions(installed: dict):
    return lambda name: installed.get(name)


REQUIREMENTS = ["monai>=1.4,<1.7", "scipy>=1.10"]


def test_prepare_asks_once_and_a_decline_plans_nothing():
    asked = []

    def decline(message, details):
        asked.append((message, details))
        return False

    with pytest.raises(dependencies.DependencyError, match="cannot compute"):
        dependencies.prepareInstallation(decline, requirements=REQUIREMENTS, versionOf=_versions({"scipy": "1.13.1"}))
    [(message, details)] = asked
    assert "in the background" in message and "Cancel" in message
    assert "light-the-torch" in details and "monai>=1.4,<1.7 (pip)" in details and "scipy" not in details


def test_prepare_plans_torch_first_then_the_missing_pip_packages():
    plan = dependencies.prepareInstallation(lambda message, details: True, requirements=REQUIREMENTS,
                                            versionOf=_versions({"scipy": "1.9.0"}))
    assert plan.torch and plan.torchRequirement == f">={dependencies.MINIMUM_TORCH}"
    assert plan.requirements == REQUIREMENTS  # scipy 1.9 is outside its range: upgraded under the pins
    plan = dependencies.prepareInstallation(lambda message, details: True, requirements=REQUIREMENTS,
                                            versionOf=_versions({"torch": "2.13.0+cu126", "scipy": "1.13.1"}))
    assert not plan.torch and plan.requirements == ["monai>=1.4,<1.7"]


def test_testing_mode_and_an_old_torch_install_nothing():
    with pytest.raises(dependencies.DependencyError, match="testing mode.*torch, monai"):
        dependencies.prepareInstallation(lambda m, d: pytest.fail("must not ask"), testing=True,
                                         requirements=REQUIREMENTS, versionOf=_versions({"scipy": "1.13.1"}))
    with pytest.raises(dependencies.DependencyError, match="PyTorch Utils"):
        dependencies.prepareInstallation(lambda m, d: pytest.fail("must not offer to replace torch"),
                                         requirements=REQUIREMENTS, versionOf=_versions({"torch": "2.1.2+cu121"}))


def test_finish_reports_what_is_still_missing():
    with pytest.raises(dependencies.DependencyError, match="still missing.*torch, monai"):
        dependencies.finishInstallation(REQUIREMENTS, _versions({"scipy": "1.13.1"}))
    dependencies.finishInstallation(REQUIREMENTS, _versions({"torch": "2.13.0", "scipy": "1.13.1", "monai": "1.6.1"}))


# ------------------------------------------------------------------------------------------------
# nnU-Net models: dynamic-network-architectures, without its declared requirements

NNUNET = "dynamic-network-architectures>=0.4.4,<0.5"


def test_the_nnunet_requirement_is_medxailibs_and_never_brings_timm_or_torchvision():
    assert dependencies.NNUNET_REQUIREMENTS == (NNUNET,)
    assert dependencies.optionalRequirements(False) == [] and dependencies.optionalRequirements(True) == [NNUNET]
    assert not {requirementName(r).lower() for r in readRequirements()} & {"dynamic-network-architectures", "timm"}
    pyproject = (runtime_paths.ROOT / "pyproject.toml").read_text()
    assert f'pip install --no-deps "{NNUNET}"' in pyproject
    pytest.importorskip("torch")
    from MedXAILib.model.nnunet import INSTALL_HINT

    assert f"pip install --no-deps '{NNUNET}'" in INSTALL_HINT


def test_an_nnunet_model_adds_its_package_to_the_plan_only_when_missing():
    ready = {"torch": "2.13.0+cu126", "monai": "1.6.1", "scipy": "1.13.1"}
    assert dependencies.prepareInstallation(lambda m, d: pytest.fail("nothing to ask"), requirements=REQUIREMENTS,
                                            versionOf=_versions(ready), nnunet=False) is None
    asked = []
    plan = dependencies.prepareInstallation(lambda m, d: asked.append(d) or True, requirements=REQUIREMENTS,
                                            versionOf=_versions(ready), nnunet=True)
    assert not plan.torch and plan.requirements == [] and plan.noDepsRequirements == [NNUNET]
    assert asked == [f"{NNUNET} (pip, without its declared requirements: builds nnU-Net networks)"]
    installed = dict(ready, **{"dynamic-network-architectures": "0.4.4"})
    assert dependencies.prepareInstallation(lambda m, d: pytest.fail("nothing to ask"), requirements=REQUIREMENTS,
                                            versionOf=_versions(installed), nnunet=True) is None
    old = dict(ready, **{"dynamic-network-architectures": "0.3.1"})  # outside the range: installed again
    plan = dependencies.prepareInstallation(lambda m, d: True, requirements=REQUIREMENTS, versionOf=_versions(old),
                                            nnunet=True)
    assert plan.noDepsRequirements == [NNUNET]
    plan = dependencies.prepareInstallation(lambda m, d: True, requirements=REQUIREMENTS,
                                            versionOf=_versions({"scipy": "1.13.1"}), nnunet=True)
    assert plan.torch and plan.requirements == ["monai>=1.4,<1.7"] and plan.noDepsRequirements == [NNUNET]
    with pytest.raises(dependencies.DependencyError, match="testing mode.*dynamic-network-architectures"):
        dependencies.prepareInstallation(lambda m, d: pytest.fail("must not ask"), testing=True,
                                         requirements=REQUIREMENTS, versionOf=_versions(ready), nnunet=True)
    with pytest.raises(dependencies.DependencyError, match="still missing.*dynamic-network-architectures"):
        dependencies.finishInstallation(REQUIREMENTS, _versions(ready), nnunet=True)
    dependencies.finishInstallation(REQUIREMENTS, _versions(installed), nnunet=True)


def test_this_environment_has_the_nnunet_package():
    pytest.importorskip("dynamic_network_architectures")
    assert dependencies.nnunetReady() and dependencies.dependenciesReady(nnunet=True)


def test_the_unets_import_with_only_torch_and_numpy():
    """What --no-deps leaves out (timm, einops, and torchvision through timm) is not needed for nnU-Net's U-Nets."""
    pytest.importorskip("dynamic_network_architectures")
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('timm', 'einops', 'torchvision'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy, torch\n"
        "before = set(sys.modules)\n"
        "from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new - {'dynamic_network_architectures', 'torch', 'numpy'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-2] == "[]", f"the U-Nets import more than torch and numpy: {out.stdout}"
