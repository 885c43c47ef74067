"""The two ways the MedXAI widget runs a :class:`MedXAILib.runs.RunRequest`, and a plain command runner.

Both run every kind of run (explanations and the analyses of the other sections) and have the same
interface::

    runner.start(request, onProgress, onFinished)   # onProgress(fraction, message, elapsedSeconds)
    runner.cancel()                                 # onFinished(RunOutcome) is still called once
    runner.running

- :class:`InProcessRunner` runs :func:`MedXAILib.runs.run_request` on the main thread (only the main
  thread touches MRML and Qt), processing application events at every progress update so the Cancel
  button and the progress bar stay alive. For light runs: no start-up cost, but the GUI is only as
  responsive as the run's progress updates.
- :class:`SubprocessRunner` runs ``python -m MedXAILib.runs FOLDER`` (PythonSlicer) through
  :class:`~MedXAIRuntime.jobs.RunJob` and polls it with a ``qt.QTimer``: Slicer stays fully
  responsive, a crash of the computation cannot take Slicer down, and Cancel stops the whole
  process tree and returns at once (the kill finishes on a thread). :meth:`SubprocessRunner.startJob`
  runs any other :class:`~MedXAIRuntime.jobs.ProcessJob` the same way: the package installation
  (:class:`~MedXAIRuntime.installer.InstallJob`) uses it.

:func:`chooseRunMode` picks one for the ``auto`` run mode. :class:`CommandRunner` runs any other
command (the demo's training) the same non-blocking way.

Qt and slicer are imported lazily (the default scheduler and event processor), and both can be
injected, so the runners are exercised by pytest without Slicer (``Testing/Runtime``).
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Any, Callable, Optional

from MedXAILib.errors import Cancelled
from MedXAILib.monitor import Monitor

from .jobs import ProcessJob, RunJob, RunOutcome, kindTitle, runInProcess

__all__ = [
    "RunMode", "InProcessRunner", "SubprocessRunner", "CommandRunner", "chooseRunMode", "resolveRunMode",
    "isLightRun", "RUN_MODES", "LIGHT_FAMILIES", "LIGHT_KINDS", "LIGHT_VOXELS",
]

ProgressCallback = Callable[[float, str, float], None]
FinishedCallback = Callable[[RunOutcome], None]
Scheduler = Callable[[int, Callable[[], None]], None]


class RunMode(enum.Enum):
    """Where the computation runs. The parameter node stores the member name."""

    auto = "auto"
    inProcess = "inProcess"
    subprocess = "subprocess"

    def label(self) -> str:
        """Text shown in the combo box (``parameterNodeWrapper`` calls it for enum choices)."""
        return {
            RunMode.auto: "Automatic (light jobs in Slicer, heavy ones in the background)",
            RunMode.inProcess: "In Slicer (no start-up time; Slicer waits)",
            RunMode.subprocess: "In a background process (Slicer stays responsive)",
        }[self]


RUN_MODES = tuple(mode.value for mode in RunMode)
LIGHT_FAMILIES = ("gradient", "cam")  # explanations of a few forward/backward passes
# Uncertainty is a handful of forward passes (flips, dropout samples); evaluations and comparisons
# explain many times and counterfactuals optimise, so ``auto`` runs them where Cancel is immediate.
LIGHT_KINDS = ("boundary_uncertainty",)
LIGHT_VOXELS = 2**22  # about 160^3 voxels (all channels together)


def isLightRun(request: Any) -> bool:
    """Whether `request` is light enough to run in Slicer: a gradient or CAM explanation, or a
    :data:`LIGHT_KINDS` analysis, on at most :data:`LIGHT_VOXELS` voxels.
    """
    import MedXAILib

    if request.voxel_count > LIGHT_VOXELS:
        return False
    kind = getattr(request.kind, "value", request.kind)
    if kind == "explain":
        return MedXAILib.METHODS.get(request.arguments.get("method", "")).family in LIGHT_FAMILIES
    return kind in LIGHT_KINDS


def chooseRunMode(mode: Any, request: Any) -> str:
    """``inProcess`` or ``subprocess`` for `request` in `mode` (``auto`` decides by :func:`isLightRun`)."""
    value = getattr(mode, "value", mode)
    return resolveRunMode(mode, value == "auto" and isLightRun(request))


def resolveRunMode(mode: Any, light: bool) -> str:
    """``inProcess`` or ``subprocess`` for `mode` (a :class:`RunMode` or its value).

    ``auto`` runs `light` jobs (the caller judges the weight) in process, the rest in a subprocess.
    """
    value = getattr(mode, "value", mode)
    if value not in RUN_MODES:
        raise ValueError(f"unknown run mode {mode!r}; use one of {', '.join(RUN_MODES)}")
    if value != "auto":
        return value
    return "inProcess" if light else "subprocess"


def _defaultProcessEvents() -> None:
    import slicer

    slicer.app.processEvents()


def _defaultScheduler(delayMs: int, callback: Callable[[], None]) -> None:
    import qt

    qt.QTimer.singleShot(delayMs, callback)


class InProcessRunner:
    """Runs a request on the calling (main) thread; returns after `onFinished` was called.

    `run(request, monitor)` computes the result (:func:`~MedXAIRuntime.jobs.runInProcess` unless given).
    """

    def __init__(self, processEvents: Optional[Callable[[], None]] = None,
                 run: Optional[Callable[[Any, Monitor], Any]] = None):
        self._processEvents = processEvents or _defaultProcessEvents
        self._run = run or runInProcess
        self._monitor: Optional[Monitor] = None

    @property
    def running(self) -> bool:
        return self._monitor is not None

    def start(self, request: Any, onProgress: ProgressCallback, onFinished: FinishedCallback) -> None:
        if self.running:
            raise RuntimeError("a computation is already running")
        started = time.monotonic()

        def progress(fraction: float, message: str) -> None:
            onProgress(fraction, message, time.monotonic() - started)
            self._processEvents()  # lets Cancel be clicked; the monitor checks it next

        self._monitor = Monitor(progress, min_interval_s=0.1)
        outcome = RunOutcome()
        try:
            self._processEvents()
            outcome.result = self._run(request, self._monitor)
        except Cancelled:
            outcome.cancelled = True
        except Exception as error:  # delivered to the widget, which shows it
            logging.exception("MedXAI: the %s failed", kindTitle(request))
            outcome.error = error
        finally:
            self._monitor = None
            outcome.seconds = time.monotonic() - started
        onFinished(outcome)

    def cancel(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()


class SubprocessRunner:
    """Runs a request in a :class:`~MedXAIRuntime.jobs.RunJob` (``python -m MedXAILib.runs FOLDER``), or any
    :class:`~MedXAIRuntime.jobs.ProcessJob`, and polls it without blocking."""

    def __init__(
        self,
        python: Optional[str] = None,
        pollIntervalMs: int = 100,
        scheduler: Optional[Scheduler] = None,
        env: Optional[dict] = None,
    ):
        self._python = python
        self._pollIntervalMs = pollIntervalMs
        self._schedule = scheduler or _defaultScheduler
        self._env = env
        self._job: Optional[ProcessJob] = None
        self._onProgress: Optional[ProgressCallback] = None
        self._onFinished: Optional[FinishedCallback] = None

    @property
    def running(self) -> bool:
        return self._job is not None

    @property
    def job(self) -> Optional[ProcessJob]:
        return self._job

    def environment(self) -> Optional[dict]:
        """The child's base environment: the one given, else Slicer's start-up environment."""
        return self._env if self._env is not None else _startupEnvironment()

    def start(self, request: Any, onProgress: ProgressCallback, onFinished: FinishedCallback) -> None:
        if self.running:
            raise RuntimeError("a computation is already running")
        self.startJob(RunJob(request, python=self._python, env=self.environment()), onProgress, onFinished)

    def startJob(self, job: ProcessJob, onProgress: ProgressCallback, onFinished: FinishedCallback) -> None:
        """Start `job` (not started yet) and poll it like a request's run; a job without its own
        environment or interpreter gets the runner's."""
        if self.running:
            raise RuntimeError("a computation is already running")
        if job.env is None:
            job.env = self.environment()
        if self._python and not job.pythonGiven:
            job.python = self._python
        job.start()  # errors writing the inputs or starting the process rise to the caller
        self._job, self._onProgress, self._onFinished = job, onProgress, onFinished
        onProgress(0.0, f"Starting the {job.what} process", 0.0)
        self._schedule(self._pollIntervalMs, self._poll)

    def _poll(self) -> None:
        job = self._job
        if job is None:
            return
        try:
            for fraction, message in job.poll():
                self._onProgress(fraction, message, job.elapsedSeconds)
        except Exception as error:  # never leave a timer loop with an exception
            logging.exception("MedXAI: polling the %s process failed", job.what)
            job.cancel()
            self._finish(RunOutcome(error=error, seconds=job.elapsedSeconds))
            return
        if job.finished:
            self._finish(job.outcome())
        else:
            self._schedule(self._pollIntervalMs, self._poll)

    def _finish(self, outcome: Any) -> None:
        job, onFinished = self._job, self._onFinished
        self._job = self._onProgress = self._onFinished = None
        if job is not None:
            job.cleanup()
        if onFinished is not None:
            onFinished(outcome)

    def cancel(self) -> None:
        """Stop the process tree; `onFinished` reports the cancel right away, without waiting for the kill."""
        job = self._job
        if job is None:
            return
        job.cancel()
        self._finish(job.outcome())


def _startupEnvironment() -> Optional[dict]:
    """Slicer's environment from before its launcher changed it (what PythonSlicer expects).

    ``slicer.util.launchConsoleProcess`` starts processes in this environment by default; outside
    Slicer, None (inherit this process's environment).
    """
    try:
        import slicer.util

        return dict(slicer.util.startupEnvironment())
    except Exception:  # not inside the Slicer application (PythonSlicer, pytest)
        return None


class CommandRunner:
    """Runs any command (e.g. ``python -m MedXAILib demo``) and polls it without blocking.

    `onFinished(returnCode, message)` is called once: 0 and "" on success, the exit code and the
    last line of stderr on failure, :data:`~MedXAIRuntime.process.EXIT_CANCELLED` after :meth:`cancel`.
    """

    def __init__(self, pollIntervalMs: int = 200, scheduler: Optional[Scheduler] = None):
        self._pollIntervalMs = pollIntervalMs
        self._schedule = scheduler or _defaultScheduler
        self._process = None
        self._onLine: Optional[Callable[[str], None]] = None
        self._onFinished: Optional[Callable[[int, str], None]] = None
        self._folder = None

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(
        self,
        command: list,
        onFinished: Callable[[int, str], None],
        onLine: Optional[Callable[[str], None]] = None,
        env: Optional[dict] = None,
    ) -> None:
        import tempfile
        from pathlib import Path

        from . import process

        if self.running:
            raise RuntimeError("a command is already running")
        root = process.libraryRoot()
        self._folder = Path(tempfile.mkdtemp(prefix="MedXAI-command-"))
        background = process.BackgroundProcess(
            command,
            cwd=root,
            env=process.childEnvironment(env if env is not None else _startupEnvironment(), root),
            stderrPath=self._folder / "stderr.txt",
        )
        logging.info("MedXAI: starting %s", " ".join(str(c) for c in command))
        background.start()
        self._process, self._onLine, self._onFinished = background, onLine, onFinished
        self._schedule(self._pollIntervalMs, self._poll)

    def _poll(self) -> None:
        background = self._process
        if background is None:
            return
        for line in background.readLines():
            logging.info("MedXAI: %s", line)
            if self._onLine is not None:
                self._onLine(line)
        code = background.poll()
        if code is None:
            self._schedule(self._pollIntervalMs, self._poll)
        else:
            self._finish(code)

    def _finish(self, code: int, cancelled: bool = False) -> None:
        import shutil

        from . import process

        background, onFinished = self._process, self._onFinished
        stderr = background.stderrText() if background is not None and not cancelled else ""
        message = "" if code == 0 else process.lastErrorLine(stderr, code)
        if code != 0 and stderr:
            logging.error("MedXAI: the command failed (exit code %s):\n%s", code, stderr)
        self._process = self._onLine = self._onFinished = None
        if self._folder is not None and not cancelled:  # after a cancel the reaper thread removes it
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = None
        if onFinished is not None:
            onFinished(code, message)

    def cancel(self) -> None:
        """Stop the command's process tree without waiting; `onFinished` reports the cancel at once."""
        import shutil

        from . import process

        if self._process is not None:
            folder = self._folder
            self._process.terminate(onEnded=lambda: shutil.rmtree(folder, ignore_errors=True) if folder else None)
            self._finish(process.EXIT_CANCELLED, cancelled=True)
