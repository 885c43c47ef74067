#!/usr/bin/env python3
"""Resolve MedXAI/Resources/requirements.txt the way Slicer would, without installing anything.

    python Testing/Repo/resolve_requirements.py [--torch 2.13.0]

For each Slicer tag in data/slicer_python_pins.json (derived from its SuperBuild files), pip resolves
the requirements for that tag's Python (3.12, Linux x86_64 wheels) under the constraints the module's
installer writes in Slicer (MedXAIRuntime.installer): numpy, SciPy and SimpleITK pinned to the versions
the tag ships, and torch pinned to the one the PyTorch extension would have installed first (default:
the torch of this environment, what the tests run). That torch is already installed when pip runs, so
it enters the resolution as it is then: a dependency-free stand-in wheel ``torch-<version>+medxai``
(built here in a temporary folder; the local version label, like PyTorch's own ``+cu126``, keeps pip
from picking a PyPI build and resolving CUDA wheels that Slicer never downloads at that point).
``pip install --dry-run --report`` downloads package metadata only, from PyPI, ignoring the machine's
pip configuration. A MONAI or scikit-image release that needs another numpy or torch makes the
resolution fail here, before a Slicer user meets it (Testing/Repo/test_requirements_resolution.py).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PINS = json.loads((HERE / "data" / "slicer_python_pins.json").read_text(encoding="utf-8"))
REQUIREMENTS = ROOT / "MedXAI" / "Resources" / "requirements.txt"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
STAND_IN = "medxai"  # the local version label of the torch stand-in


def environment_torch() -> str:
    """This environment's torch version without a local build tag (``2.13.0+cpu`` -> ``2.13.0``)."""
    return importlib.metadata.version("torch").split("+")[0]


def constraints_text(tag: str, torch: Optional[str]) -> str:
    """What the installer pins in Slicer `tag`: its numpy, SciPy and SimpleITK, and the PyTorch extension's torch."""
    pins = PINS["tags"][tag]
    lines = [f"# Slicer {tag} (commit {pins['slicerCommit'][:12]}), Python {pins['python']}"]
    lines += [f"{name}=={pins[name]}" for name in ("numpy", "scipy", "SimpleITK")]
    if torch:
        lines.append(f"torch=={torch}+{STAND_IN}")
    return "\n".join(lines) + "\n"


def torch_stand_in(folder: Path, torch: str) -> Path:
    """A wheel named torch, version ``<torch>+medxai``, with no files and no dependencies."""
    version = f"{torch}+{STAND_IN}"
    info = f"torch-{version}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: medxai\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
              for path, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"torch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def pip_environment() -> dict[str, str]:
    """This environment without its pip configuration (mirrors, find-links, constraints): PyPI as a user has it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
    return env


def pip_command(tag: str, constraints: Path, report: Path, links: Path, python: str = sys.executable) -> list[str]:
    version = ".".join(PINS["tags"][tag]["python"].split(".")[:2])
    command = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
               "--python-version", version, "--only-binary=:all:", "--disable-pip-version-check",
               "--find-links", str(links)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    return command + ["-r", str(REQUIREMENTS), "-c", str(constraints)]


def resolve(tag: str, torch: Optional[str], timeout: float = 900.0, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """``{distribution: version}`` pip would install for Slicer `tag`.

    Raises:
        RuntimeError: pip cannot resolve (its last lines say why).
    """
    with tempfile.TemporaryDirectory() as folder:
        constraints, report = Path(folder) / "constraints.txt", Path(folder) / "report.json"
        constraints.write_text(constraints_text(tag, torch) + "".join(f"{line}\n" for line in extra), encoding="utf-8")
        if torch:
            torch_stand_in(Path(folder), torch)
        result = subprocess.run(pip_command(tag, constraints, report, Path(folder)), capture_output=True, text=True,
                                timeout=timeout, env=pip_environment())
        if result.returncode != 0 or not report.is_file():
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-12:])
            raise RuntimeError(f"Slicer {tag}: pip cannot resolve {REQUIREMENTS.name} under its pins:\n{tail}")
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}


def resolve_all(torch: Optional[str]) -> dict[str, dict[str, str]]:
    """Every tag at once (the resolutions wait on the network, not the CPU)."""
    tags = sorted(PINS["tags"])
    with ThreadPoolExecutor(len(tags)) as pool:
        return dict(zip(tags, pool.map(lambda tag: resolve(tag, torch), tags)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default=environment_torch(), help="torch version pinned (default: this environment's)")
    args = parser.parse_args(argv)
    failed = False
    for tag in sorted(PINS["tags"]):
        try:
            versions = resolve(tag, args.torch)
        except RuntimeError as error:
            print(error)
            failed = True
            continue
        picked = ", ".join(f"{name} {versions[name]}" for name in ("monai", "scikit-image", "scipy", "numpy", "torch")
                           if name in versions)
        print(f"Slicer {tag}: {picked}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
