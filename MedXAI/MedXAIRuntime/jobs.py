"""Explain jobs without Qt: what to run, the in-process run, and the subprocess job.

:class:`ExplainRequest` is everything one Apply needs, already converted from MRML by the Bridge
(an :class:`~MedXAILib.volume.ImageVolume` and a :class:`~MedXAILib.target.Target`). Two ways run it:

- :func:`runInProcess`: :func:`MedXAILib.explain` in this interpreter, with a
  :class:`~MedXAILib.monitor.Monitor` for progress and cancel;
- :class:`ExplainJob`: writes the inputs to temporary NRRD files with :mod:`MedXAILib.io`, starts
  ``python -m MedXAILib explain ... --progress-json`` (PythonSlicer in Slicer), is polled for
  progress, and reads the attribution back. The temporary folder is always removed.

:class:`BackgroundJob` is that subprocess lifecycle without the explain-specific parts; the
analysis panels' :class:`~MedXAIRuntime.tasks.TaskJob` shares it.

Nothing here imports qt or slicer; torch, MONAI and SimpleITK are imported inside the functions
that need them, so Slicer can load this file before they are installed.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from MedXAILib.attribution import PROVENANCE_KEY, Attribution
from MedXAILib.errors import InputError, MedXAIError
from MedXAILib.monitor import Monitor
from MedXAILib.target import Target
from MedXAILib.volume import ImageVolume

from . import process

__all__ = [
    "ExplainRequest", "Outcome", "RunOutcome", "BackgroundProcessError", "ExplainProcessError",
    "runInProcess", "BackgroundJob", "ExplainJob",
]

ProgressCallback = Callable[[float, str], None]


@dataclass
class ExplainRequest:
    """One explanation to compute.

    Attributes:
        image: the input, one channel per input volume, on the first volume's grid.
        modelPath: TorchScript file, exported program, MONAI bundle folder or model spec JSON.
        method: a registered method name.
        params: the method's parameters (names and values as in its parameter dataclass).
        target: what to explain; a ``mask`` target carries its boolean (I, J, K) mask.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds every random draw.
        trustBundle: let a MONAI bundle's config run code.
    """

    image: ImageVolume
    modelPath: str
    method: str = "integrated_gradients"
    params: dict[str, Any] = field(default_factory=dict)
    target: Optional[Target] = None
    device: str = "auto"
    seed: int = 0
    trustBundle: bool = False

    @property
    def voxelCount(self) -> int:
        i, j, k = self.image.shape
        return int(i) * int(j) * int(k) * self.image.n_channels


class BackgroundProcessError(MedXAIError):
    """A MedXAI subprocess failed; the message is its own one-line reason."""

    def __init__(self, message: str, returnCode: Optional[int] = None, log: str = ""):
        super().__init__(message)
        self.returnCode = returnCode
        self.log = log


class ExplainProcessError(BackgroundProcessError):
    """The explain subprocess failed; the message is its own one-line reason."""


@dataclass
class Outcome:
    """How a run ended: exactly one of `result`, `error` or `cancelled` is set."""

    result: Any = None
    error: Optional[BaseException] = None
    cancelled: bool = False
    seconds: float = 0.0
    log: str = ""

    @property
    def succeeded(self) -> bool:
        return self.result is not None


class RunOutcome(Outcome):
    """How an explanation ended; its `result` is the :class:`~MedXAILib.attribution.Attribution`."""

    @property
    def attribution(self) -> Optional[Attribution]:
        return self.result

    @attribution.setter
    def attribution(self, value: Optional[Attribution]) -> None:
        self.result = value


# ------------------------------------------------------------------------------------------------
# In-process


_modelCache: dict[tuple, Any] = {}


def loadModelCached(request: ExplainRequest) -> Any:
    """Load the request's model, reusing the last one when path, file time, device and trust match."""
    from MedXAILib.model import load_model

    path = Path(request.modelPath)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    key = (str(path.resolve()) if path.exists() else str(path), stamp, request.device, request.trustBundle)
    if key not in _modelCache:
        _modelCache.clear()  # keep at most one model in memory
        _modelCache[key] = load_model(path, trust_bundle=request.trustBundle, device=request.device)
    return _modelCache[key]


def runInProcess(request: ExplainRequest, monitor: Optional[Monitor] = None) -> Attribution:
    """Run :func:`MedXAILib.explain` for `request` in this interpreter.

    MedXAILib errors and :class:`~MedXAILib.errors.Cancelled` rise to the caller.
    """
    from MedXAILib.engine import explain

    monitor = monitor or Monitor()
    monitor.update(0.0, "Loading the model")
    model = loadModelCached(request)
    return explain(
        request.image,
        model,
        request.method,
        request.target,
        request.params,
        monitor=monitor,
        seed=request.seed,
    )


# ------------------------------------------------------------------------------------------------
# Subprocess


class BackgroundJob:
    """A MedXAI subprocess for one request, polled without blocking.

    Usage::

        job = ExplainJob(request)         # or another subclass
        job.start()                       # writes the inputs, starts the process
        while not job.finished:
            for fraction, message in job.poll(): ...
        outcome = job.outcome()           # reads the result; the temporary folder is removed

    A subclass writes its inputs and names the command (:meth:`_prepare`), reads the result back
    (:meth:`_readResult`), and sets the outcome and error types and `what` it runs (in messages).
    """

    what = "background"
    tempPrefix = "MedXAI-"
    outcomeType: Callable[..., Outcome] = Outcome
    errorType: Callable[..., BaseException] = BackgroundProcessError

    def __init__(
        self,
        request: Any,
        python: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        tempRoot: Optional[str] = None,
    ):
        self.request = request
        self.python = python or process.pythonExecutable()
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
        self._started = 0.0
        self._outcome: Optional[Outcome] = None

    # -- what a subclass provides ------------------------------------------------------------

    def _prepare(self, folder: Path) -> list[str]:
        """Write the inputs into `folder`; return the command to run."""
        raise NotImplementedError

    def _readResult(self) -> Any:
        """The result the finished process left in :attr:`folder`."""
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return process.childEnvironment(self.env, process.libraryRoot())

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Write the inputs into a new temporary folder and start the process."""
        self._started = time.monotonic()
        self.folder = Path(tempfile.mkdtemp(prefix=self.tempPrefix, dir=self.tempRoot))
        try:
            self.command = self._prepare(self.folder)
            logging.info("MedXAI: starting %s", " ".join(self.command))
            self._process = process.BackgroundProcess(
                self.command,
                cwd=process.libraryRoot(),  # `-m MedXAILib` finds the package shipped beside the module
                env=self._environment(),
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
        """Stop the process and all its children; :meth:`outcome` then reports a cancel."""
        self._cancelled = True
        if self._process is not None and self.returnCode is None:
            self._process.kill()
            self._process.readLines()
            self.returnCode = self._process.popen.returncode if self._process.popen is not None else -1

    def wait(self, timeout: Optional[float] = None, onProgress: Optional[ProgressCallback] = None) -> Outcome:
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

    def outcome(self) -> Outcome:
        """The result once finished: read it back (or the error), then remove the temporary folder."""
        if self._outcome is not None:
            return self._outcome
        if not self.finished:
            raise RuntimeError(f"the {self.what} process is still running")
        stderr = self._process.stderrText() if self._process is not None else ""
        log = "\n".join(self.logLines + ([stderr] if stderr else []))
        outcome = self.outcomeType(seconds=self.elapsedSeconds, log=log)
        try:
            if self._cancelled or self.returnCode == process.EXIT_CANCELLED:
                outcome.cancelled = True
            elif self.returnCode == process.EXIT_OK:
                outcome.result = self._readResult()
            else:
                message = process.lastErrorLine(stderr, self.returnCode)
                logging.error("MedXAI %s failed (exit code %s):\n%s", self.what, self.returnCode, stderr)
                outcome.error = self.errorType(message, self.returnCode, log)
        except Exception as error:  # reading the result back failed
            outcome.error = error
        finally:
            self.cleanup()
        self._outcome = outcome
        return outcome

    def cleanup(self) -> None:
        """Stop the process if it still runs and remove the temporary folder."""
        popen = self._process.popen if self._process is not None else None
        if popen is not None and popen.poll() is None:
            self._process.kill()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __del__(self) -> None:  # a job dropped while running must not leave a process behind
        try:
            self.cleanup()
        except Exception:
            pass


class ExplainJob(BackgroundJob):
    """``python -m MedXAILib explain`` for one :class:`ExplainRequest`, polled without blocking."""

    what = "explain"
    outcomeType = RunOutcome
    errorType = ExplainProcessError

    def _prepare(self, folder: Path) -> list[str]:
        from MedXAILib.io import write_image  # SimpleITK: only when a job runs

        image = self.request.image
        imagePaths = []
        for channel in range(image.n_channels):
            path = folder / f"image_{channel}.nrrd"
            write_image(image.with_array(image.array[channel : channel + 1]), path, compress=False)
            imagePaths.append(path)
        maskPath = None
        target = self.request.target
        if target is not None and target.region == "mask":
            maskPath = folder / "target_mask.nrrd"
            mask = np.asarray(target.mask).astype(np.float32)[np.newaxis]
            write_image(image.with_array(mask), maskPath)
        return process.explainCommand(
            self.python,
            imagePaths,
            self.request.modelPath,
            folder / "attribution.nrrd",
            summaryPath=folder / "summary.json",
            method=self.request.method,
            params=self.request.params,
            target=target,
            maskPath=maskPath,
            device=self.request.device,
            seed=self.request.seed,
            trustBundle=self.request.trustBundle,
        )

    def _readResult(self) -> Attribution:
        from MedXAILib.io import read_image

        assert self.folder is not None
        out = self.folder / "attribution.nrrd"
        if not out.is_file():
            raise InputError("the explain process ended without writing its attribution file")
        volume = read_image(out)
        summary = self.folder / "summary.json"
        provenance: dict[str, Any] = {}
        if summary.is_file():
            provenance = json.loads(summary.read_text(encoding="utf-8")).get("provenance", {})
        elif PROVENANCE_KEY in volume.meta.get("header", {}):
            provenance = json.loads(volume.meta["header"][PROVENANCE_KEY])
        return Attribution(array=volume.array, affine=volume.affine, provenance=provenance)
