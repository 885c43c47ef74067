"""Runs of the MedXAI module without Qt: building requests, the in-process run and the background job.

Everything the module computes with a model (an explanation, boundary uncertainty, an evaluation, a
comparison of methods, a counterfactual) is one :class:`MedXAILib.runs.RunRequest`, already converted
from MRML by the Bridge, and comes back as one :class:`MedXAILib.runs.RunResult` (named volumes on the
input grid and JSON data), whichever way it ran:

- :func:`runInProcess`: :func:`MedXAILib.runs.run_request` in this interpreter, with a
  :class:`~MedXAILib.monitor.Monitor` for progress and cancel (one cached model);
- :class:`RunJob`: writes the request into a temporary folder (:func:`MedXAILib.runs.write_request`),
  starts ``python -m MedXAILib.runs FOLDER`` (PythonSlicer in Slicer), is polled for its JSON-lines
  progress without blocking, and reads the result back (:func:`MedXAILib.runs.read_result`); Cancel
  stops the whole process tree without waiting. The temporary folder is always removed.
  :class:`ProcessJob`, its base, is the same mechanism for any MedXAI child process (the package
  installer of :mod:`MedXAIRuntime.installer` is one).

:func:`explainRequest` and :func:`analysisRequest` are the Slicer-style constructors the widget and
the panels use. Nothing here imports qt or slicer, and MedXAILib.runs is imported inside the
functions (torch, MONAI and SimpleITK load only when a run starts), so Slicer can load this file
before they are installed.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from MedXAILib.errors import MedXAIError
from MedXAILib.monitor import Monitor
from MedXAILib.target import Target
from MedXAILib.volume import ImageVolume

from . import process

if TYPE_CHECKING:
    from MedXAILib.runs import RunRequest, RunResult

__all__ = [
    "KIND_TITLES", "explainRequest", "analysisRequest", "kindTitle", "runInProcess", "runCommand",
    "RunOutcome", "RunProcessError", "ProcessJob", "RunJob",
]

ProgressCallback = Callable[[float, str], None]

#: What each kind of run is called in messages ("Starting the explanation process").
KIND_TITLES = {
    "explain": "explanation",
    "boundary_uncertainty": "uncertainty analysis",
    "evaluate": "evaluation",
    "compare_methods": "comparison",
    "counterfactual": "counterfactual",
}


def kindTitle(request: Any) -> str:
    """The word for `request`'s kind in messages."""
    kind = getattr(getattr(request, "kind", None), "value", getattr(request, "kind", ""))
    return KIND_TITLES.get(str(kind), "computation")


def explainRequest(
    image: ImageVolume,
    modelPath: str,
    method: str = "integrated_gradients",
    params: Optional[Mapping[str, Any]] = None,
    target: Optional[Target] = None,
    device: str = "auto",
    seed: int = 0,
    trustBundle: bool = False,
    modelOptions: Optional[Mapping[str, Any]] = None,
) -> "RunRequest":
    """The :class:`~MedXAILib.runs.RunRequest` of an explanation.

    Args:
        image: the input, one channel per input volume, on the first volume's grid.
        modelPath: TorchScript file, exported program, MONAI bundle folder, model spec JSON, nnU-Net v2 folder
            or ``totalsegmentator:TASK``.
        method: a registered method name.
        params: the method's parameters (names and values as in its parameter dataclass).
        target: what to explain; a ``mask`` or ``boundary`` target carries its mask.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds every random draw.
        trustBundle: let a MONAI bundle's config run code.
        modelOptions: ``MedXAILib.load_model`` keywords with JSON values (the nnU-Net folds, configuration,
            checkpoint and mirroring, a TotalSegmentator task's structure: :func:`MedXAIRuntime.modelPaths.modelOptions`);
            None or empty: the loader's defaults.
    """
    from MedXAILib.runs import RunRequest

    return RunRequest(kind="explain", image=image, model_path=modelPath,
                      arguments={"method": method, "params": dict(params or {})}, target=target,
                      device=device, seed=int(seed), trust_bundle=bool(trustBundle),
                      model_options=dict(modelOptions or {}))


def analysisRequest(
    base: "RunRequest",
    kind: str,
    arguments: Mapping[str, Any],
    arrays: Optional[Mapping[str, Any]] = None,
    target: Optional[Target] = None,
) -> "RunRequest":
    """Another kind of run on `base`'s input with its model, device, seed and trust.

    Args:
        base: usually the Explain section's request (:meth:`MedXAILogic.buildRequest`).
        kind: ``boundary_uncertainty``, ``evaluate``, ``compare_methods`` or ``counterfactual``.
        arguments: the kind's JSON arguments (:class:`MedXAILib.runs.RunKind`).
        arrays: the kind's arrays on the image grid (``mask``, ``attribution``, ``region``).
        target: what is evaluated (None for the kinds that take no target).
    """
    return dataclasses.replace(base, kind=kind, arguments=dict(arguments), arrays=dict(arrays or {}), target=target)


def runInProcess(request: "RunRequest", monitor: Optional[Monitor] = None) -> "RunResult":
    """Run `request` in this interpreter; MedXAILib errors and :class:`~MedXAILib.errors.Cancelled` rise."""
    from MedXAILib.runs import run_request

    return run_request(request, monitor)


def runCommand(python: str, folder: Path) -> list[str]:
    """``python -m MedXAILib.runs FOLDER``: the worker of every background run."""
    return [str(python), "-m", "MedXAILib.runs", str(folder)]


class RunProcessError(MedXAIError):
    """A background run failed; the message is its own one-line reason."""

    def __init__(self, message: str, returnCode: Optional[int] = None, log: str = ""):
        super().__init__(message)
        self.returnCode = returnCode
        self.log = log


@dataclass
class RunOutcome:
    """How a run ended: exactly one of `result`, `error` or `cancelled` is set."""

    result: Optional["RunResult"] = None
    error: Optional[BaseException] = None
    cancelled: bool = False
    seconds: float = 0.0
    log: str = ""

    @property
    def succeeded(self) -> bool:
        return self.result is not None

    @property
    def attribution(self) -> Any:
        """An explanation's :class:`~MedXAILib.attribution.Attribution` (None without a result)."""
        return None if self.result is None else self.result.attribution()


class ProcessJob:
    """A MedXAI child process that speaks the JSON-lines protocol, polled without blocking.

    The one mechanism behind every background run of the module: :class:`RunJob` (an explanation or
    an analysis: ``python -m MedXAILib.runs FOLDER``) and :class:`MedXAIRuntime.installer.InstallJob`
    (the Python packages: ``python -m MedXAIRuntime.installer FOLDER``). A subclass writes its inputs
    into a new temporary folder and names the command (:meth:`prepare`), and reads its result back
    (:meth:`readResult`); this class starts the process, parses progress, log lines and the final
    ``done`` line, turns a failure into :class:`RunProcessError` with the process's own reason, and
    removes the folder.

    Usage::

        job.start()                       # writes the inputs, starts the process
        while not job.finished:
            for fraction, message in job.poll(): ...
        outcome = job.outcome()           # reads the result; the temporary folder is removed

    :meth:`cancel` returns at once: the process tree is asked to stop now, and a thread kills what is
    left, reaps it and removes the folder (:func:`MedXAIRuntime.process.terminateProcessTree`).
    """

    tempPrefix = "MedXAI-job-"
    what = "computation"

    def __init__(self, python: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                 tempRoot: Optional[str] = None):
        self.python = python or process.pythonExecutable()
        self.pythonGiven = python is not None
        self.env = env
        self.tempRoot = tempRoot
        self.folder: Optional[Path] = None
        self.command: list[str] = []
        self.fraction = 0.0
        self.message = ""
        self.logLines: list[str] = []
        self.outputs: tuple[str, ...] = ()
        self.returnCode: Optional[int] = None
        self._process: Optional[process.BackgroundProcess] = None
        self._cancelled = False
        self._stopping = False
        self._started = 0.0
        self._outcome: Optional[RunOutcome] = None

    # -- what a kind of job provides

    def prepare(self, folder: Path) -> list[str]:
        """Write the inputs into `folder` (new, empty) and return the command to run."""
        raise NotImplementedError

    def readResult(self, folder: Path) -> Any:
        """The result after the process exited with 0."""
        raise NotImplementedError

    # -- running

    def start(self) -> None:
        """Write the inputs into a new temporary folder and start the process."""
        self._started = time.monotonic()
        self.folder = Path(tempfile.mkdtemp(prefix=self.tempPrefix, dir=self.tempRoot))
        try:
            self.command = self.prepare(self.folder)
            logging.info("MedXAI: starting %s", " ".join(self.command))
            root = process.libraryRoot()
            self._process = process.BackgroundProcess(
                self.command,
                cwd=root,  # `-m MedXAILib.runs` finds the package shipped beside the module
                env=process.childEnvironment(self.env, root),
                stderrPath=self.folder / "stderr.txt",
            )
            self._process.start()
        except BaseException:
            self.cleanup()
            raise

    @property
    def running(self) -> bool:
        return self._process is not None and self.returnCode is None

    @property
    def finished(self) -> bool:
        return self.returnCode is not None

    @property
    def elapsedSeconds(self) -> float:
        return time.monotonic() - self._started if self._started else 0.0

    def poll(self) -> list[tuple[float, str]]:
        """Progress updates since the last call; sets :attr:`returnCode` when the process has ended."""
        if self._process is None or self.returnCode is not None:
            return []
        updates = []
        for line in self._process.readLines():
            event = process.parseOutputLine(line)
            if isinstance(event, process.ProgressEvent):
                self.fraction, self.message = max(self.fraction, event.fraction), event.message
                updates.append((self.fraction, self.message))
            elif isinstance(event, process.DoneEvent):
                self.outputs = event.outputs
            elif isinstance(event, process.LogLine):
                self.logLines.append(event.text)
                logging.info("MedXAI %s: %s", self.what, event.text)
        self.returnCode = self._process.poll()
        return updates

    def cancel(self) -> None:
        """Stop the process and all its children without waiting; :meth:`outcome` then reports a cancel.

        The tree gets SIGTERM now (the worker exits 130 and writes nothing); a thread kills what is
        still alive after a few seconds and then removes the temporary folder.
        """
        self._cancelled = True
        if self._process is not None and self.returnCode is None:
            self.returnCode = process.EXIT_CANCELLED
            self._stop()

    def wait(self, timeout: Optional[float] = None, onProgress: Optional[ProgressCallback] = None) -> RunOutcome:
        """Poll until the process ends (scripts and tests; the GUI uses a timer instead)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            for fraction, message in self.poll():
                if onProgress is not None:
                    onProgress(fraction, message)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                break
            time.sleep(0.05)
        return self.outcome()

    def outcome(self) -> RunOutcome:
        """The result once finished: read it back (or the error), then remove the temporary folder."""
        if self._outcome is not None:
            return self._outcome
        if not self.finished:
            raise RuntimeError(f"the {self.what} process is still running")
        stderr = self._process.stderrText() if self._process is not None and not self._stopping else ""
        log = "\n".join(self.logLines + ([stderr] if stderr else []))
        outcome = RunOutcome(seconds=self.elapsedSeconds, log=log)
        try:
            if self._cancelled or self.returnCode == process.EXIT_CANCELLED:
                outcome.cancelled = True
            elif self.returnCode == process.EXIT_OK:
                outcome.result = self.readResult(self.folder)
            else:
                message = process.lastErrorLine(stderr, self.returnCode)
                logging.error("MedXAI %s failed (exit code %s):\n%s", self.what, self.returnCode, log)
                outcome.error = RunProcessError(message, self.returnCode, log)
        except Exception as error:  # reading the result back failed
            outcome.error = error
        finally:
            self.cleanup()
        self._outcome = outcome
        return outcome

    def cleanup(self) -> None:
        """Stop the process if it still runs (without waiting) and remove the temporary folder."""
        popen = self._process.popen if self._process is not None else None
        if popen is not None and popen.poll() is None:
            self._stop()
        elif not self._stopping:
            _removeFolder(self.folder)
            self.folder = None

    def _stop(self) -> None:
        """Terminate the tree in the background; the folder is removed once the process has ended."""
        if self._stopping:
            return
        self._stopping = True
        folder, self.folder = self.folder, None
        self._process.terminate(onEnded=lambda: _removeFolder(folder))

    def __del__(self) -> None:  # a job dropped while running must not leave a process behind
        try:
            self.cleanup()
        except Exception:
            pass


def _removeFolder(folder: Optional[Path]) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


class RunJob(ProcessJob):
    """``python -m MedXAILib.runs FOLDER`` for one :class:`~MedXAILib.runs.RunRequest`.

    The request is written into the folder (:func:`MedXAILib.runs.write_request`) and the
    :class:`~MedXAILib.runs.RunResult` read back (:func:`MedXAILib.runs.read_result`).
    """

    tempPrefix = "MedXAI-run-"

    def __init__(
        self,
        request: "RunRequest",
        python: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        tempRoot: Optional[str] = None,
    ):
        super().__init__(python, env, tempRoot)
        self.request = request
        self.what = kindTitle(request)

    def prepare(self, folder: Path) -> list[str]:
        from MedXAILib.runs import write_request

        write_request(self.request, folder)
        return runCommand(self.python, folder)

    def readResult(self, folder: Path) -> "RunResult":
        from MedXAILib.runs import read_result

        return read_result(folder)
