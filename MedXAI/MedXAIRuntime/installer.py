"""Installing MedXAI's Python packages in a child process, with progress, Cancel and pip's own reasons.

Slicer must never wait for a download: the PyTorch extension's ``installTorch`` and
``slicer.util.pip_install`` both run pip on the main thread (SlicerPyTorch
``PyTorchUtils/PyTorchUtils.py``, Slicer v5.10.0 ``Base/Python/slicer/util.py``), and offline pip
retries for minutes. So the widget writes an :class:`InstallPlan` and runs
``python -m MedXAIRuntime.installer FOLDER`` (PythonSlicer) through the same
:class:`~MedXAIRuntime.runners.SubprocessRunner` as the explanations (:class:`InstallJob`); the child
does, with JSON-lines progress (:mod:`MedXAILib.runs.protocol`):

1. torch, when missing, the way the PyTorch extension installs it (``installTorch(askConfirmation=False,
   torchVersionRequirement=">=2.4")``): ``pip install light-the-torch>=0.5`` if needed, then
   ``python -m light_the_torch install torch>=2.4 torchvision``, which picks the build that matches
   the NVIDIA driver;
2. a constraints file pinning the installed torch, torchvision, numpy and SimpleITK
   (:func:`MedXAIRuntime.dependencies.constraintsText`), so pip can never replace them;
3. ``python -m pip install <missing> -c constraints.txt`` (``Resources/requirements.txt``);
4. for an nnU-Net model, ``python -m pip install --no-deps <missing> -c constraints.txt``
   (:data:`MedXAIRuntime.dependencies.NNUNET_REQUIREMENTS`: dynamic-network-architectures without the
   timm -> torchvision -> torch its metadata declares);
5. a check that everything is now installed, written to ``result.json``.

A failure exits with code 2 and one line ``medxai: error: <why>. <what to do>``; pip's own last lines
are in the job's log (the dialog's details). Cancel stops the tree like any run; a package pip was
unpacking at that moment may be left half-installed, which the next installation repairs.
Plain Python: the child has no Slicer application.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import dependencies
from .jobs import ProcessJob

__all__ = ["InstallPlan", "InstallJob", "InstallError", "installCommand", "pipArguments", "torchArguments",
           "explainFailure", "OFFLINE_PATTERNS", "main"]

PLAN_FILE, RESULT_FILE, CONSTRAINTS_FILE = "plan.json", "result.json", "constraints.txt"
LIGHT_THE_TORCH = "light-the-torch>=0.5"  # what PyTorchUtils._installLightTheTorch installs
LOG_TAIL = 15  # lines of pip's output kept for the error details

#: pip output that means the package index could not be reached (no network, proxy, firewall, DNS).
OFFLINE_PATTERNS = (
    "Failed to establish a new connection", "NewConnectionError", "Temporary failure in name resolution",
    "Name or service not known", "nodename nor servname provided", "Network is unreachable",
    "Connection refused", "ConnectTimeoutError", "Read timed out", "ProxyError", "SSLError",
    "getaddrinfo failed", "No route to host",
)


class InstallError(RuntimeError):
    """A step failed; the message is the one line the user reads (why, and what to do)."""


@dataclass
class InstallPlan:
    """What the child installs.

    Attributes:
        torch: install torch (and torchvision) the PyTorch extension's way.
        torchRequirement: the version range for torch, e.g. ``">=2.4"``.
        requirements: pip requirement strings (the missing lines of ``requirements.txt``).
        noDepsRequirements: requirements installed afterwards in a pip step of their own with ``--no-deps``
            (the missing :data:`~MedXAIRuntime.dependencies.NNUNET_REQUIREMENTS`).
        pinned: distributions the constraints file pins to their installed version.
        pipOptions: extra pip options (e.g. ``["--index-url", URL]``), appended to every pip call.
    """

    torch: bool = False
    torchRequirement: str = f">={dependencies.MINIMUM_TORCH}"
    requirements: list[str] = field(default_factory=list)
    noDepsRequirements: list[str] = field(default_factory=list)
    pinned: list[str] = field(default_factory=lambda: list(dependencies.PINNED_PACKAGES))
    pipOptions: list[str] = field(default_factory=list)

    @classmethod
    def forMissing(cls, torchStatus: str, missing: Sequence[str], noDeps: Sequence[str] = ()) -> "InstallPlan":
        """The plan for :func:`MedXAIRuntime.dependencies.installationPlan`'s answer (and the missing
        ``--no-deps`` requirements)."""
        return cls(torch=torchStatus == "missing", requirements=list(missing), noDepsRequirements=list(noDeps))

    def write(self, folder: Path) -> Path:
        path = Path(folder) / PLAN_FILE
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> "InstallPlan":
        data = json.loads((Path(folder) / PLAN_FILE).read_text(encoding="utf-8"))
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def installCommand(python: str, folder: Path) -> list[str]:
    """``python -m MedXAIRuntime.installer FOLDER``."""
    return [str(python), "-m", "MedXAIRuntime.installer", str(folder)]


def pipArguments(requirements: Sequence[str], constraints: Optional[Path], options: Sequence[str] = (),
                 noDeps: bool = False) -> list[str]:
    """``pip install`` arguments: no version check (it needs the network), ``--no-deps`` where asked, the
    constraints, the options."""
    args = ["install", "--disable-pip-version-check", *(["--no-deps"] if noDeps else []), *requirements]
    if constraints is not None:
        args += ["-c", str(constraints)]
    return args + list(options)


def torchArguments(torchRequirement: str) -> list[str]:
    """``light_the_torch`` arguments, as PyTorchUtils builds them without a forced backend."""
    return ["install", f"torch{torchRequirement}", "torchvision"]


def explainFailure(what: str, lines: Sequence[str]) -> str:
    """One line for the user: why `what` failed (from pip's output `lines`) and what to do."""
    text = "\n".join(lines)
    if any(pattern in text for pattern in OFFLINE_PATTERNS):
        return (f"installing {what} failed: the Python package index could not be reached (no network "
                "connection, or a proxy or firewall blocks it). Connect to the internet (behind a proxy, set "
                "HTTPS_PROXY before starting Slicer) and click Apply again, or install the packages by hand "
                "with PythonSlicer -m pip install")
    reason = next((line.strip() for line in reversed(lines) if line.strip().startswith("ERROR:")), "")
    if not reason:
        reason = next((line.strip() for line in reversed(lines) if line.strip()), "pip gave no reason")
    if "(from versions: none)" in text:
        todo = ("pip found no release at all: check the network connection (offline, proxy or firewall) and click "
                "Apply again; if you are online, report the details below")
    elif "No matching distribution" in text or "Could not find a version" in text or "ResolutionImpossible" in text:
        todo = ("no release fits this Slicer's Python and the versions Slicer pins (numpy, SimpleITK, torch); "
                "update MedXAI, or report the details below")
    else:
        todo = "see the details below (pip's last lines); fix the cause and click Apply again"
    return f"installing {what} failed: {reason} ({todo})"


# ------------------------------------------------------------------------------------------------
# The child process

_PIP_STEP = re.compile(r"^(Collecting|Downloading|Installing collected packages|Building wheel|Successfully installed)")


def _run(command: Sequence[str], what: str, progress: Callable[[float, str], None], span: tuple[float, float]) -> None:
    """Run `command`, echo its output as log lines, turn pip's steps into progress; raise InstallError."""
    lo, hi = span
    progress(lo, f"Installing {what}")
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, encoding="utf-8", errors="replace", bufsize=1)
    tail: list[str] = []
    steps = 0
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            if not line:
                continue
            print(line, flush=True)  # the parent keeps it in the job's log
            tail = (tail + [line])[-LOG_TAIL:]
            if _PIP_STEP.match(line.strip()):
                steps += 1
                fraction = lo + (hi - lo) * (1.0 - 0.8 ** steps)  # pip does not say how many steps remain
                progress(fraction, f"Installing {what}: {line.strip()[:100]}")
        code = process.wait()
    finally:
        if process.poll() is None:  # interrupted (Cancel): the whole group gets the signal too
            process.kill()
    if code != 0:
        raise InstallError(explainFailure(what, tail))
    progress(hi, f"Installed {what}")


def _installed(name: str) -> Optional[str]:
    importlib.invalidate_caches()
    return dependencies.installedVersion(name)


def install(plan: InstallPlan, folder: Path, progress: Callable[[float, str], None],
            python: Optional[str] = None) -> dict:
    """Carry out `plan` in this interpreter's environment; returns the installed versions.

    Raises:
        InstallError: a step failed, or something is still missing afterwards.
    """
    python = python or sys.executable
    pip = [python, "-m", "pip"]
    if plan.torch:
        if _installed("light-the-torch") is None:
            _run(pip + pipArguments([LIGHT_THE_TORCH], None, plan.pipOptions), "light-the-torch (PyTorch's installer)",
                 progress, (0.0, 0.1))
        _run([python, "-m", "light_the_torch", *torchArguments(plan.torchRequirement)], "PyTorch", progress,
             (0.1, 0.6))
    constraints = Path(folder) / CONSTRAINTS_FILE
    constraints.write_text(dependencies.constraintsText({name: _installed(name) for name in plan.pinned}),
                           encoding="utf-8")
    start = 0.6 if plan.torch else 0.0
    middle = 0.85 if plan.noDepsRequirements else 0.95
    if plan.requirements:
        _run(pip + pipArguments(plan.requirements, constraints, plan.pipOptions), ", ".join(
            dependencies.requirementName(r) for r in plan.requirements), progress, (start, middle))
    if plan.noDepsRequirements:  # after the others: nothing installed later can pull in what --no-deps left out
        _run(pip + pipArguments(plan.noDepsRequirements, constraints, plan.pipOptions, noDeps=True), ", ".join(
            dependencies.requirementName(r) for r in plan.noDepsRequirements), progress,
             (middle if plan.requirements else start, 0.95))
    importlib.invalidate_caches()
    status, missing = dependencies.installationPlan(plan.requirements)
    missing = list(missing) + dependencies.missingRequirements(plan.noDepsRequirements)
    still = (["torch"] if plan.torch and status != "ok" else []) + list(missing)
    if still:
        raise InstallError(f"installing finished but these packages are still missing: {', '.join(still)} "
                           "(see the details below; restart Slicer and click Apply again)")
    progress(1.0, "Installed")
    names = (["torch", "torchvision"] if plan.torch else []) + [dependencies.requirementName(r) for r in
                                                                 [*plan.requirements, *plan.noDepsRequirements]]
    return {name: _installed(name) for name in names}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m MedXAIRuntime.installer FOLDER``; returns the exit code (0, 2, 130)."""
    from MedXAILib.runs.protocol import EXIT_OK, interrupts_raise, json_lines, write_cancelled, write_done, write_error

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        return write_error("usage: python -m MedXAIRuntime.installer FOLDER (a folder holding plan.json)")
    folder = Path(args[0])
    with interrupts_raise():
        try:
            versions = install(InstallPlan.read(folder), folder, json_lines())
            result = folder / RESULT_FILE
            result.write_text(json.dumps({"installed": versions}, indent=1), encoding="utf-8")
        except KeyboardInterrupt:
            return write_cancelled()
        except (InstallError, OSError, ValueError) as error:
            return write_error(str(error))
    write_done([result])
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# In Slicer


class InstallJob(ProcessJob):
    """The installer as a background job (run it with ``SubprocessRunner.startJob``); the result is
    ``{"installed": {name: version}}``."""

    tempPrefix = "MedXAI-install-"
    what = "installation"

    def __init__(self, plan: InstallPlan, python: Optional[str] = None, env=None, tempRoot: Optional[str] = None):
        super().__init__(python, env, tempRoot)
        self.plan = plan

    def prepare(self, folder: Path) -> list[str]:
        self.plan.write(folder)
        return installCommand(self.python, folder)

    def readResult(self, folder: Path) -> dict:
        return json.loads((Path(folder) / RESULT_FILE).read_text(encoding="utf-8"))


if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main())
