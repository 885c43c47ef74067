"""Install what MedXAILib needs into Slicer's Python, on the first Apply and with the user's consent.

- torch comes from the PyTorch extension: ``PyTorchUtils.PyTorchUtilsLogic().installTorch(...)``,
  which picks the build that matches the NVIDIA driver. pip never installs torch.
- The other packages (``Resources/requirements.txt``: MONAI, SciPy, scikit-image) are installed with
  ``slicer.packaging.pip_ensure`` (Slicer 5.12) or ``slicer.util.pip_install`` (Slicer 5.10), always
  under a constraints file that pins the installed torch, torchvision, numpy and SimpleITK, so pip
  can never replace them (a replaced torch or numpy breaks Slicer or the PyTorch extension).

Nothing is installed or imported when Slicer loads the module (DESIGN.md, section 6). The functions
that only compute (requirement parsing, missing packages, the constraints text, pip arguments) are
plain Python and tested by pytest; :func:`ensureDependencies` needs the Slicer application.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

__all__ = [
    "DependencyError",
    "MINIMUM_TORCH",
    "PINNED_PACKAGES",
    "requirementsPath",
    "readRequirements",
    "requirementName",
    "installedVersion",
    "missingRequirements",
    "constraintsText",
    "pipInstallArguments",
    "torchStatus",
    "installationPlan",
    "ensureDependencies",
    "dependenciesReady",
]

MINIMUM_TORCH = "2.4"  # MONAI 1.6 needs torch >= 2.4 (pyproject.toml)
PINNED_PACKAGES = ("torch", "torchvision", "numpy", "SimpleITK")  # never to be replaced by pip
REQUESTER = "MedXAI"

_ready = False


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


def pipInstallArguments(requirements: Sequence[str], constraintsPath: Optional[Path] = None) -> list[str]:
    """The argument list for ``slicer.util.pip_install`` (5.10: ``pip install <args>``)."""
    args = list(requirements)
    if constraintsPath is not None:
        args += ["-c", str(constraintsPath)]
    return args


def torchStatus(versionOf: Callable[[str], Optional[str]] = installedVersion, minimum: str = MINIMUM_TORCH) -> str:
    """``"missing"``, ``"old"`` or ``"ok"`` for the installed torch (from metadata: torch is not imported)."""
    version = versionOf("torch")
    if version is None:
        return "missing"
    return "ok" if _satisfied(f"torch>={minimum}", version.split("+")[0]) else "old"


def installationPlan(
    requirements: Optional[Sequence[str]] = None, versionOf: Callable[[str], Optional[str]] = installedVersion
) -> tuple[str, list[str]]:
    """What is needed: the torch status and the missing pip requirements."""
    requirements = readRequirements() if requirements is None else list(requirements)
    return torchStatus(versionOf), missingRequirements(requirements, versionOf)


# ------------------------------------------------------------------------------------------------
# Inside Slicer


def dependenciesReady() -> bool:
    """True once :func:`ensureDependencies` succeeded in this session (or nothing was missing)."""
    global _ready
    if not _ready:
        status, missing = installationPlan()
        _ready = status == "ok" and not missing
    return _ready


def _writeConstraints() -> Path:
    importlib.invalidate_caches()  # see what the PyTorch extension has just installed
    text = constraintsText({name: installedVersion(name) for name in PINNED_PACKAGES})
    handle = tempfile.NamedTemporaryFile("w", prefix="MedXAI-constraints-", suffix=".txt", delete=False, encoding="utf-8")
    with handle:
        handle.write(text)
    logging.info("MedXAI: pip constraints %s:\n%s", handle.name, text)
    return Path(handle.name)


def _installTorch() -> None:
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise DependencyError(
            "MedXAI needs the PyTorch extension. Install 'PyTorch' from the Extensions Manager, restart "
            "Slicer, and apply again."
        ) from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.torchInstalled():
        return
    logging.info("MedXAI: installing PyTorch with the PyTorch extension (this can take several minutes)")
    torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=f">={MINIMUM_TORCH}")
    if torch is None:
        raise DependencyError("PyTorch was not installed; MedXAI cannot compute explanations without it.")


def _pipInstall(missing: Sequence[str]) -> None:
    import slicer

    constraints = _writeConstraints()
    try:
        try:
            import slicer.packaging as packaging  # Slicer >= 5.12
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(list(missing), constraints=constraints, prompt_install=False, requester=REQUESTER)
        else:  # Slicer 5.10
            slicer.util.pip_install(pipInstallArguments(missing, constraints))
    finally:
        constraints.unlink(missing_ok=True)


def ensureDependencies(confirm: Callable[[str, str], bool]) -> None:
    """Make torch, MONAI and the rest importable, installing what is missing after `confirm`.

    Args:
        confirm: ``confirm(message, details) -> bool``, called once when something must be
            installed; the widget shows it as an OK/Cancel dialog. Nothing is installed on False.

    Raises:
        DependencyError: the PyTorch extension is missing, torch is too old, the user declined,
            or the packages are still missing after installing (e.g. in testing mode, where
            ``pip_ensure`` installs nothing).
    """
    global _ready
    if _ready:
        return
    status, missing = installationPlan()
    if status == "old":
        raise DependencyError(
            f"PyTorch {installedVersion('torch')} is too old for MedXAI (it needs {MINIMUM_TORCH} or newer). "
            f"Open the 'PyTorch Utils' module and install PyTorch with the version requirement >={MINIMUM_TORCH}."
        )
    if status == "ok" and not missing:
        _ready = True
        return
    items = []
    if status == "missing":
        items.append(f"PyTorch >= {MINIMUM_TORCH}, installed by the PyTorch extension (it picks the GPU build)")
    items += [f"{req} (pip)" for req in missing]
    message = (
        "MedXAI needs Python packages that are not installed yet. Installing them needs a network "
        "connection and can take several minutes. Install them now?"
    )
    if not confirm(message, "\n".join(items)):
        raise DependencyError("MedXAI cannot compute explanations until its Python packages are installed.")
    if status == "missing":
        _installTorch()
    if missing:
        _pipInstall(missing)
    importlib.invalidate_caches()
    status, missing = installationPlan()
    if status != "ok" or missing:
        still = (["torch"] if status != "ok" else []) + list(missing)
        raise DependencyError(
            f"these packages are still missing after the installation: {', '.join(still)}. "
            "See the Python console for pip's output."
        )
    _ready = True
