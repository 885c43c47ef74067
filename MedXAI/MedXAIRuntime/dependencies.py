"""Install what MedXAILib needs into Slicer's Python, on the first Apply and with the user's consent.

- torch is installed the way the PyTorch extension installs it (light-the-torch, which picks the
  build that matches the NVIDIA driver); pip never installs torch.
- The other packages (``Resources/requirements.txt``: MONAI, SciPy, scikit-image, PyYAML) are installed
  with pip, always under a constraints file that pins the installed torch, torchvision, numpy and
  SimpleITK, so pip can never replace them (a replaced torch or numpy breaks Slicer or the PyTorch
  extension).
- nnU-Net v2 models (and ``totalsegmentator:TASK``) also need ``dynamic-network-architectures``
  (:data:`NNUNET_REQUIREMENTS`), installed only when such a model is applied, with ``--no-deps`` in a pip
  step of its own (its declared requirements would bring another torch; see the constant).
- Both run in a child process (:mod:`MedXAIRuntime.installer`) with progress and Cancel: the PyTorch
  extension's ``installTorch`` and ``slicer.util.pip_install`` would block Slicer's main thread.

Nothing is installed or imported when Slicer loads the module (DESIGN.md, section 6). This module
decides what is missing and asks once (:func:`prepareInstallation`), and checks again afterwards
(:func:`finishInstallation`); all of it is plain Python, tested by pytest.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

__all__ = [
    "DependencyError",
    "MINIMUM_TORCH",
    "PINNED_PACKAGES",
    "NNUNET_REQUIREMENTS",
    "optionalRequirements",
    "requirementsPath",
    "readRequirements",
    "requirementName",
    "installedVersion",
    "missingRequirements",
    "constraintsText",
    "torchStatus",
    "installationPlan",
    "confirmationText",
    "prepareInstallation",
    "finishInstallation",
    "dependenciesReady",
    "nnunetReady",
]

MINIMUM_TORCH = "2.4"  # MONAI 1.6 needs torch >= 2.4 (pyproject.toml)
PINNED_PACKAGES = ("torch", "torchvision", "numpy", "SimpleITK")  # never to be replaced by pip

#: What nnU-Net v2 model folders need besides requirements.txt, installed with ``pip install --no-deps`` in a step
#: of its own (same constraints), and only when such a model is applied. MedXAILib.model.nnunet builds the networks
#: with dynamic_network_architectures (the package nnU-Net uses). Its metadata requires timm, which requires
#: torchvision, and pip would bring another (multi-GB CUDA) torch with it over the PyTorch extension's; and einops.
#: The U-Net classes nnU-Net plans name (dynamic_network_architectures.architectures.unet and everything it imports)
#: import only torch and numpy, which Slicer and the PyTorch extension provide: nothing else is needed at import time
#: (only the Primus/EVA architectures import timm and einops; Testing/Runtime/test_runtime_dependencies.py imports
#: the U-Nets with timm, einops and torchvision blocked). The range is MedXAILib.model.nnunet.INSTALL_HINT's
#: (0.4.4 is what nnunetv2 2.8 requires, and what is tested); no timm, no torchvision, ever.
NNUNET_REQUIREMENTS = ("dynamic-network-architectures>=0.4.4,<0.5",)

_ready = False
_nnunetReady = False


class DependencyError(RuntimeError):
    """A dependency is missing and cannot (or may not) be installed; the message says what to do."""


# ------------------------------------------------------------------------------------------------
# Pure helpers


def requirementsPath() -> Path:
    """``MedXAI/Resources/requirements.txt`` (beside this package in the source tree and in Slicer)."""
    return Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"


def readRequirements(path: Optional[Path] = None) -> list[str]:
    """Requirement strings of a requirements file (comments, blanks and pip options skipped)."""
    lines = []
    for line in Path(path or requirementsPath()).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirementName(requirement: str) -> str:
    """The distribution name of a requirement string (``"monai[nibabel]>=1.4"`` -> ``"monai"``)."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"cannot read a package name from requirement {requirement!r}")
    return match.group(1)


def installedVersion(name: str) -> Optional[str]:
    """The installed version of distribution `name`, or None (reads metadata; imports nothing)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _satisfied(requirement: str, version: Optional[str]) -> bool:
    if version is None:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no `packaging`: presence is all we can check
        return True
    try:
        return Requirement(requirement).specifier.contains(version, prereleases=True)
    except Exception:
        return True


def missingRequirements(
    requirements: Iterable[str], versionOf: Callable[[str], Optional[str]] = installedVersion
) -> list[str]:
    """The requirements that are not installed, or installed in a version outside their range."""
    return [req for req in requirements if not _satisfied(req, versionOf(requirementName(req)))]


def constraintsText(installed: Mapping[str, Optional[str]]) -> str:
    """A pip constraints file pinning each installed package of `installed` to its version.

    ``{"torch": "2.13.0", "numpy": "2.2.1", "torchvision": None}`` gives
    ``torch==2.13.0`` and ``numpy==2.2.1`` lines: with ``pip install -c`` pip may keep them but
    never upgrade, downgrade or replace them, and fails clearly when a package needs another version.
    """
    lines = ["# Written by MedXAI: packages that pip must not replace in Slicer's Python"]
    for name, version in installed.items():
        if version:
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def torchStatus(versionOf: Callable[[str], Optional[str]] = installedVersion, minimum: str = MINIMUM_TORCH) -> str:
    """``"missing"``, ``"old"`` or ``"ok"`` for the installed torch (from metadata: torch is not imported)."""
    version = versionOf("torch")
    if version is None:
        return "missing"
    return "ok" if _satisfied(f"torch>={minimum}", version.split("+")[0]) else "old"


def optionalRequirements(nnunet: bool = False) -> list[str]:
    """The requirements installed with ``--no-deps`` for what the run needs (:data:`NNUNET_REQUIREMENTS`)."""
    return list(NNUNET_REQUIREMENTS) if nnunet else []


def installationPlan(
    requirements: Optional[Sequence[str]] = None, versionOf: Callable[[str], Optional[str]] = installedVersion
) -> tuple[str, list[str]]:
    """What is needed: the torch status and the missing pip requirements."""
    requirements = readRequirements() if requirements is None else list(requirements)
    return torchStatus(versionOf), missingRequirements(requirements, versionOf)


# ------------------------------------------------------------------------------------------------
# Before and after an installation (the installation itself: MedXAIRuntime.installer, in a child process)


def dependenciesReady(nnunet: bool = False) -> bool:
    """True once everything is installed (checked from package metadata; remembered once true); `nnunet`:
    the nnU-Net network package too."""
    global _ready
    if not _ready:
        status, missing = installationPlan()
        _ready = status == "ok" and not missing
    return _ready and (not nnunet or nnunetReady())


def nnunetReady(versionOf: Callable[[str], Optional[str]] = installedVersion) -> bool:
    """True once :data:`NNUNET_REQUIREMENTS` are installed (metadata; remembered once true)."""
    global _nnunetReady
    if not _nnunetReady:
        _nnunetReady = not missingRequirements(NNUNET_REQUIREMENTS, versionOf)
    return _nnunetReady


def confirmationText(status: str, missing: Sequence[str], noDeps: Sequence[str] = ()) -> tuple[str, str]:
    """The question asked before installing, and its details (one line per package)."""
    items = []
    if status == "missing":
        items.append(f"PyTorch >= {MINIMUM_TORCH}, installed as the PyTorch extension does (light-the-torch picks "
                     "the build for your NVIDIA driver)")
    items += [f"{req} (pip)" for req in missing]
    items += [f"{req} (pip, without its declared requirements: builds nnU-Net networks)" for req in noDeps]
    message = (
        "MedXAI needs Python packages that are not installed yet. Installing them needs a network connection "
        "and can take several minutes; it runs in the background (Slicer stays usable, Cancel stops it). "
        "Install them now?"
    )
    return message, "\n".join(items)


def prepareInstallation(
    confirm: Callable[[str, str], bool],
    testing: bool = False,
    requirements: Optional[Sequence[str]] = None,
    versionOf: Callable[[str], Optional[str]] = installedVersion,
    nnunet: bool = False,
):
    """Decide what to install, asking the user once.

    Args:
        confirm: ``confirm(message, details) -> bool``; the widget shows an OK/Cancel dialog.
        testing: Slicer runs in testing mode: nothing may be installed (as ``slicer.packaging.pip_ensure``
            skips installing then).
        requirements, versionOf: what is required and how versions are read (defaults: the module's
            ``requirements.txt`` and the installed metadata).
        nnunet: the model is an nnU-Net folder: :data:`NNUNET_REQUIREMENTS` too (``--no-deps``).

    Returns:
        None when everything is installed, else the :class:`~MedXAIRuntime.installer.InstallPlan`
        the user agreed to (run it with :class:`~MedXAIRuntime.installer.InstallJob`).

    Raises:
        DependencyError: torch is too old (MedXAI never replaces it), Slicer is in testing mode, or
            the user declined.
    """
    global _ready
    status, missing = installationPlan(requirements, versionOf)
    noDeps = missingRequirements(optionalRequirements(nnunet), versionOf)
    if status == "old":
        raise DependencyError(
            f"PyTorch {versionOf('torch')} is too old for MedXAI (it needs {MINIMUM_TORCH} or newer). "
            f"Open the 'PyTorch Utils' module and install PyTorch with the version requirement >={MINIMUM_TORCH}."
        )
    if status == "ok" and not missing:
        _ready = True
        if not noDeps:
            return None
    still = (["torch"] if status != "ok" else []) + list(missing) + list(noDeps)
    if testing:
        raise DependencyError(f"Slicer runs in testing mode, where nothing is installed; missing: {', '.join(still)}")
    if not confirm(*confirmationText(status, missing, noDeps)):
        raise DependencyError("MedXAI cannot compute explanations until its Python packages are installed.")
    from .installer import InstallPlan

    return InstallPlan.forMissing(status, missing, noDeps)


def finishInstallation(requirements: Optional[Sequence[str]] = None,
                       versionOf: Callable[[str], Optional[str]] = installedVersion, nnunet: bool = False) -> None:
    """After the installer succeeded: check again in this process (it reads what the child installed).

    Raises:
        DependencyError: something is still missing (the message names it).
    """
    global _ready
    importlib.invalidate_caches()  # the child changed site-packages behind this interpreter's back
    status, missing = installationPlan(requirements, versionOf)
    missing = list(missing) + missingRequirements(optionalRequirements(nnunet), versionOf)
    if status != "ok" or missing:
        still = (["torch"] if status != "ok" else []) + list(missing)
        raise DependencyError(f"these packages are still missing after the installation: {', '.join(still)}. "
                              "Restart Slicer and apply again; the details show pip's output.")
    _ready = True
