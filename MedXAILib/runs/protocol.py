"""The contract every MedXAI process keeps with whoever started it: exit codes and JSON-lines progress.

The ``medxai`` subcommands and the run worker (``python -m MedXAILib.runs FOLDER``) share it, so a
program reads any of them the same way:

- stdout: one JSON object per progress update, ``{"progress": f, "message": m, "elapsed_s": t}``
  (:func:`json_lines`), and ``{"done": true, "outputs": [...], "warnings": [...]}`` at the end
  (:func:`write_done`);
- exit code :data:`EXIT_OK` (0) when everything was written; :data:`EXIT_BAD_INPUT` (2) with one line
  ``medxai: error: <reason>`` on stderr (:func:`write_error`) and nothing written; :data:`EXIT_CANCELLED`
  (130, the shell's code for SIGINT) on Ctrl-C or SIGTERM, nothing written; :data:`EXIT_INTERNAL` (1)
  with a traceback for a bug.

Standard library only: the command line imports it before anything heavy.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from typing import Any, Callable, Iterator, Sequence, TextIO

__all__ = [
    "EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_CANCELLED", "ERROR_PREFIX",
    "json_lines", "write_done", "write_error", "write_cancelled", "interrupts_raise",
]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
ERROR_PREFIX = "medxai: error: "


def json_lines(stream: TextIO | None = None) -> Callable[[float, str], None]:
    """A progress sink writing one JSON object per update: ``{"progress": 0.45, "message": "...", "elapsed_s": 3.2}``.

    Args:
        stream: where to write (default: stdout, looked up now so redirection works). Each line is
            flushed at once: the reader shows progress while the process runs.
    """
    stream = stream or sys.stdout
    started = time.monotonic()

    def emit(fraction: float, message: str) -> None:
        record = {"progress": round(fraction, 4), "message": message, "elapsed_s": round(time.monotonic() - started, 3)}
        stream.write(json.dumps(record) + "\n")
        stream.flush()

    return emit


def write_done(outputs: Sequence[Any], warnings: Sequence[str] = (), stream: TextIO | None = None) -> None:
    """The final ``{"done": true, "outputs": [...], "warnings": [...]}`` line (outputs as strings)."""
    stream = stream or sys.stdout
    stream.write(json.dumps({"done": True, "outputs": [str(p) for p in outputs], "warnings": list(warnings)}) + "\n")
    stream.flush()


def write_error(message: str, stream: TextIO | None = None) -> int:
    """Write ``medxai: error: <message>`` as one line on stderr; returns :data:`EXIT_BAD_INPUT`."""
    stream = stream or sys.stderr
    stream.write(ERROR_PREFIX + " ".join(str(message).split()) + "\n")  # one line, whatever the message holds
    stream.flush()
    return EXIT_BAD_INPUT


def write_cancelled(stream: TextIO | None = None) -> int:
    """Say on stderr that the run was cancelled and nothing written; returns :data:`EXIT_CANCELLED`."""
    stream = stream or sys.stderr
    stream.write("\nmedxai: cancelled; nothing was written\n")
    stream.flush()
    return EXIT_CANCELLED


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`KeyboardInterrupt` (a clean cancel); restored after.

    SIGINT is set explicitly because a process started from a background shell inherits an ignored
    SIGINT, and Python installs its own handler only when SIGINT was not ignored. SIGTERM is how a
    parent (Slicer's Cancel, a cohort scheduler) stops a run. Outside the main thread nothing changes:
    only the main thread may set signal handlers.
    """
    previous: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _raise_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
