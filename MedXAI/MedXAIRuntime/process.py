"""Qt-free subprocess plumbing for running MedXAI processes next to Slicer.

Everything here is plain Python (no qt, no slicer), so it is unit tested with pytest:

- :func:`parseOutputLine` reads one line of the JSON-lines progress every MedXAI process writes
  (:mod:`MedXAILib.runs.protocol`);
- :func:`lastErrorLine` picks the message to show from the process's stderr;
- :func:`popenKeywords` starts the process in its own session / process group, and
  :func:`killProcessTree` ends it together with every process it started (the PythonSlicer
  launcher starts the real interpreter as a child, and killing only the launcher would leave the
  child running: DESIGN.md, section 6); :func:`terminateProcessTree` does the same without making the
  caller wait: it sends the polite signal and returns, and a thread escalates to a forced kill and
  reaps the process (the GUI's Cancel must return to the event loop at once);
- :class:`BackgroundProcess` reads stdout on a thread into a queue that the caller drains without
  blocking (the Qt runner drains it from a ``QTimer``).

The exit codes (``process.EXIT_OK``, ``EXIT_BAD_INPUT``, ``EXIT_CANCELLED``, ...) are those of
:mod:`MedXAILib.runs.protocol`, re-exported here.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from MedXAILib.runs.protocol import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_INTERNAL, EXIT_OK  # the one definition

__all__ = [
    "EXIT_OK",
    "EXIT_INTERNAL",
    "EXIT_BAD_INPUT",
    "EXIT_CANCELLED",
    "ProgressEvent",
    "DoneEvent",
    "LogLine",
    "parseOutputLine",
    "lastErrorLine",
    "libraryRoot",
    "runtimeRoot",
    "childEnvironment",
    "pythonExecutable",
    "popenKeywords",
    "killProcessTree",
    "terminateProcessTree",
    "isProcessAlive",
    "BackgroundProcess",
]



# ------------------------------------------------------------------------------------------------
# Parsing the output


@dataclass(frozen=True)
class ProgressEvent:
    """One ``{"progress": f, "message": m, "elapsed_s": t}`` line."""

    fraction: float
    message: str
    elapsedSeconds: float


@dataclass(frozen=True)
class DoneEvent:
    """The final ``{"done": true, "outputs": [...]}`` line."""

    outputs: tuple[str, ...]


@dataclass(frozen=True)
class LogLine:
    """Any other output line (library warnings, prints)."""

    text: str


OutputEvent = Union[ProgressEvent, DoneEvent, LogLine]


def parseOutputLine(line: str) -> Optional[OutputEvent]:
    """Parse one stdout line of a MedXAI process (``--progress-json``, the run worker); None for a blank line.

    Lines that are not the protocol's JSON objects come back as :class:`LogLine`, so a stray print from a
    library never breaks the progress display.
    """
    text = line.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict):
            if record.get("done") is True:
                outputs = record.get("outputs") or []
                return DoneEvent(tuple(str(p) for p in outputs))
            if "progress" in record:
                try:
                    fraction = min(max(float(record["progress"]), 0.0), 1.0)
                    elapsed = float(record.get("elapsed_s", 0.0))
                except (TypeError, ValueError):
                    return LogLine(text)
                return ProgressEvent(fraction, str(record.get("message", "")), elapsed)
    return LogLine(text)


def lastErrorLine(stderrText: str, returnCode: Optional[int] = None) -> str:
    """The line to show the user from a failed run's stderr.

    MedXAI processes print ``medxai: error: <reason>`` for bad input (exit code 2); the reason is returned
    without the prefix. Otherwise the last non-empty line is returned (for a Python traceback,
    that is the exception), or a generic message naming the exit code.
    """
    lines = [line.strip() for line in (stderrText or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("medxai: error:"):
            return line[len("medxai: error:"):].strip()
    if lines:
        return lines[-1]
    if returnCode is not None and returnCode < 0:
        return f"the process was ended by signal {-returnCode}"
    return f"the process failed with exit code {returnCode}" if returnCode is not None else "the process failed"


# ------------------------------------------------------------------------------------------------
# Environment


def libraryRoot() -> Path:
    """The folder that holds the ``MedXAILib`` package (``qt-scripted-modules`` in Slicer)."""
    import MedXAILib

    return Path(MedXAILib.__file__).resolve().parent.parent


def runtimeRoot() -> Path:
    """The folder that holds the ``MedXAIRuntime`` package (``qt-scripted-modules`` in Slicer, like
    :func:`libraryRoot`; ``MedXAI/`` in the source tree)."""
    return Path(__file__).resolve().parent.parent


def childEnvironment(base: Optional[Mapping[str, str]] = None, root: Optional[Path] = None) -> dict[str, str]:
    """`base` (default: this process's environment) with MedXAILib and MedXAIRuntime importable
    (``python -m MedXAIRuntime.demo`` and the installer run there) and unbuffered output."""
    env = dict(os.environ if base is None else base)
    root = libraryRoot() if root is None else root
    roots = list(dict.fromkeys([str(root), str(runtimeRoot())]))  # one folder in Slicer, two in the source tree
    existing = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(roots + ([existing] if existing else []))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def pythonExecutable() -> str:
    """PythonSlicer inside Slicer (Slicer sets ``sys.executable`` to it), else this interpreter."""
    import shutil

    # Inside the Slicer application `slicer` is imported and has `app`; looking it up in sys.modules
    # never imports a `slicer` package (slicer-core would load all of MRML just to answer no).
    if getattr(sys.modules.get("slicer"), "app", None) is not None:
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


# ------------------------------------------------------------------------------------------------
# Starting and killing process trees


def popenKeywords() -> dict[str, Any]:
    """``subprocess.Popen`` keywords that make the process the root of a tree we can kill.

    POSIX: a new session, so the process leads its own process group (``os.killpg``).
    Windows: a new process group and no console window (as ``slicer.util.launchConsoleProcess``).
    """
    if os.name == "nt":
        info = subprocess.STARTUPINFO()  # type: ignore[attr-defined]
        info.dwFlags |= subprocess.STARTF_USESHOWWINDOW  # type: ignore[attr-defined]
        info.wShowWindow = 0  # SW_HIDE
        return {
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP,  # type: ignore[attr-defined]
            "startupinfo": info,
        }
    return {"start_new_session": True}


def isProcessAlive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as ended)."""
    try:
        import psutil

        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    except ImportError:
        pass
    if os.name == "nt":  # pragma: no cover - Windows without psutil
        result = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/NH"], capture_output=True, text=True)
        return str(pid) in result.stdout
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _descendants(pid: int) -> list[int]:
    """PIDs of every process `pid` started (children, grandchildren, ...); [] without psutil."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _groupAlive(pgid: int) -> bool:
    """True while a live (non-zombie) process remains in process group `pgid` (POSIX)."""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # after the command name: state, ppid, pgrp, ...
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def killProcessTree(process: Union[subprocess.Popen, int], timeout: float = 3.0,
                    descendants: Optional[Sequence[int]] = None) -> None:
    """End `process` and every process it started: politely first, then by force after `timeout`.

    POSIX: SIGTERM (which the ``medxai`` CLI turns into a clean cancel: exit code 130, nothing
    written) to the process group made by :func:`popenKeywords` and to every descendant psutil
    can see (psutil is optional), then SIGKILL to whatever is still alive after `timeout` seconds.
    Windows: psutil's terminate/kill on the tree, or ``taskkill /T /F`` without psutil.
    Blocks up to about twice `timeout`; the GUI uses :func:`terminateProcessTree`.

    Args:
        descendants: the tree's PIDs when known from before a first signal (a child whose parent
            has already died is no longer found as a descendant).
    """
    popen = process if isinstance(process, subprocess.Popen) else None
    pid = popen.pid if popen is not None else int(process)
    descendants = list(descendants) if descendants is not None else _descendants(pid)

    if os.name == "nt":  # pragma: no cover - Windows
        try:
            import psutil

            processes = []
            for p in [pid, *descendants]:
                try:
                    processes.append(psutil.Process(p))
                except psutil.NoSuchProcess:
                    pass
            for p in processes:
                try:
                    p.terminate()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(processes, timeout=timeout)
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        except ImportError:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True)
        if popen is not None:
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
        return

    try:
        pgid: Optional[int] = os.getpgid(pid)
    except ProcessLookupError:
        # The leader is gone (e.g. a launcher that was killed alone); a process group started by us
        # with popenKeywords outlives its leader while its members run, and keeps the leader's id.
        pgid = pid if popen is not None and _groupAlive(pid) else None
    group = pgid if pgid is not None and pgid == pid and pgid != os.getpgid(0) else None

    def signalAll(sig: int) -> None:
        try:
            if group is not None:
                os.killpg(group, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for child in descendants:
            try:
                os.kill(child, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def anyAlive() -> bool:
        if popen is not None:
            popen.poll()  # reap the leader so it does not linger as a zombie
        if group is not None and _groupAlive(group):
            return True
        return any(isProcessAlive(p) for p in [pid, *descendants])

    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not anyAlive():
            break
        signalAll(sig)
        deadline = time.monotonic() + timeout
        while anyAlive() and time.monotonic() < deadline:
            time.sleep(0.05)
    if popen is not None:
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()


def terminateProcessTree(process: Union[subprocess.Popen, int], timeout: float = 3.0,
                         onEnded: Optional[Callable[[], None]] = None) -> threading.Thread:
    """Ask `process` and every process it started to end, and return at once.

    POSIX: SIGTERM goes to the process group (and the descendants psutil sees) before this returns,
    so the run stops now; a daemon thread then waits up to `timeout` seconds, kills what is left
    (:func:`killProcessTree`), reaps the process and finally calls `onEnded()` (on that thread: it
    must not touch Qt or MRML; removing a temporary folder is what it is for). Windows: the thread
    does everything (``taskkill`` and psutil calls can take a while).

    Returns:
        The thread (tests join it).
    """
    popen = process if isinstance(process, subprocess.Popen) else None
    pid = popen.pid if popen is not None else int(process)
    descendants = _descendants(pid)  # now: once the launcher has died its children are orphans
    if os.name != "nt":
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            pgid = None
        targets = []
        if pgid is not None and pgid == pid and pgid != os.getpgid(0):
            targets.append(lambda: os.killpg(pid, signal.SIGTERM))
        else:
            targets.append(lambda: os.kill(pid, signal.SIGTERM))
        targets += [lambda child=child: os.kill(child, signal.SIGTERM) for child in descendants]
        for send in targets:
            try:
                send()
            except (ProcessLookupError, PermissionError):
                pass

    def reap() -> None:
        try:
            killProcessTree(process, timeout, descendants)
        finally:
            if onEnded is not None:
                try:
                    onEnded()
                except Exception:  # a cleanup error must not kill the thread silently
                    import logging

                    logging.exception("MedXAI: cleaning up after a stopped process failed")

    thread = threading.Thread(target=reap, name="MedXAI-process-reaper", daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------------------------------------
# A process whose stdout is read on a thread


_END = object()


@dataclass
class BackgroundProcess:
    """Run `command`, collect stdout lines on a thread, and let the caller poll without blocking.

    stderr goes to `stderrPath` (a file, so a chatty process can never block on a full pipe), or is
    merged into stdout when `stderrPath` is None.
    """

    command: Sequence[str]
    cwd: Optional[Union[str, Path]] = None
    env: Optional[Mapping[str, str]] = None
    stderrPath: Optional[Union[str, Path]] = None
    popen: Optional[subprocess.Popen] = field(default=None, init=False)
    _queue: "queue.Queue[Any]" = field(default_factory=queue.Queue, init=False, repr=False)
    _readerDone: bool = field(default=False, init=False)
    _thread: Optional[threading.Thread] = field(default=None, init=False, repr=False)
    _stderrFile: Any = field(default=None, init=False, repr=False)

    def start(self) -> None:
        if self.popen is not None:
            raise RuntimeError("the process was already started")
        if self.stderrPath is not None:
            self._stderrFile = open(self.stderrPath, "w", encoding="utf-8", errors="replace")
            stderr: Any = self._stderrFile
        else:
            stderr = subprocess.STDOUT
        try:
            self.popen = subprocess.Popen(
                [str(c) for c in self.command],
                cwd=None if self.cwd is None else str(self.cwd),
                env=None if self.env is None else dict(self.env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **popenKeywords(),
            )
        finally:
            self._closeStderr()  # the child holds its own copy of the file
        self._thread = threading.Thread(target=self._read, name="MedXAI-output-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        try:
            for line in self.popen.stdout:
                self._queue.put(line.rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put(_END)

    def readLines(self) -> list[str]:
        """Every stdout line received since the last call (never blocks)."""
        lines = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self._readerDone = True
            else:
                lines.append(item)
        return lines

    @property
    def pid(self) -> Optional[int]:
        return None if self.popen is None else self.popen.pid

    def poll(self) -> Optional[int]:
        """The exit code once the process has ended and :meth:`readLines` has returned all its output."""
        if self.popen is None or not self._readerDone:
            return None
        return self.popen.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until the process ends (tests and scripts; the GUI polls instead)."""
        assert self.popen is not None
        code = self.popen.wait(timeout=timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        return code

    def kill(self, timeout: float = 3.0) -> None:
        """End the process and all its children and wait for it (see :func:`killProcessTree`)."""
        if self.popen is not None:
            killProcessTree(self.popen, timeout=timeout)
            if self._thread is not None:
                self._thread.join(timeout)

    def terminate(self, timeout: float = 3.0, onEnded: Optional[Callable[[], None]] = None) -> Optional[threading.Thread]:
        """End the process and all its children without waiting (see :func:`terminateProcessTree`)."""
        if self.popen is None:
            if onEnded is not None:
                onEnded()
            return None
        return terminateProcessTree(self.popen, timeout=timeout, onEnded=onEnded)

    def stderrText(self) -> str:
        if self.stderrPath is None:
            return ""
        try:
            return Path(self.stderrPath).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _closeStderr(self) -> None:
        if self._stderrFile is not None:
            try:
                self._stderrFile.close()
            finally:
                self._stderrFile = None
