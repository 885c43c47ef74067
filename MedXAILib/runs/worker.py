"""The worker: run the request in a folder, speaking the command line's protocol.

``python -m MedXAILib.runs FOLDER`` and ``medxai run FOLDER`` both call :func:`serve`: the Slicer
module's background jobs start it with PythonSlicer, and a cohort worker can call :func:`run_folder`
(or :func:`serve`) for each case's folder. The protocol (:mod:`MedXAILib.runs.protocol`):

- progress as JSON lines on stdout, then ``{"done": true, "outputs": [...], "warnings": [...]}``;
- exit code 0 with ``result.json`` (and ``result.npz`` for volumes) written into FOLDER;
- exit code 2 and one line ``medxai: error: <reason>`` on stderr for bad input (a MedXAILib error);
- exit code 130 on Ctrl-C or SIGTERM (how Slicer's Cancel stops it), no result in FOLDER;
- exit code 1 with a traceback for anything unexpected (a bug).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from ..errors import Cancelled, InputError, MedXAIError
from ..monitor import Monitor
from .folder import clear_result, read_request, write_result
from .kinds import run_request
from .protocol import EXIT_OK, interrupts_raise, json_lines, write_cancelled, write_done, write_error
from .request import RunResult

__all__ = ["run_folder", "serve", "main", "USAGE"]

USAGE = "usage: python -m MedXAILib.runs FOLDER (a folder holding a run request)"


def run_folder(folder: str | Path, monitor: Optional[Monitor] = None, model: Any = None) -> tuple[list[Path], RunResult]:
    """Run the request in `folder` and write its result there.

    A previous result is removed first, so the folder never shows a result this run did not make.

    Args:
        folder: holds ``request.json`` and ``arrays.npz`` (:func:`~MedXAILib.runs.folder.write_request`).
        monitor: progress and cancel.
        model: a loaded model to use instead of the request's model path.

    Returns:
        the files written (``result.json`` last) and the result.

    Raises:
        MedXAIError: bad input; Cancelled: the monitor was cancelled. No result is left in either case.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"'{folder}' is not a folder; give the folder holding the run request")
    request = read_request(folder)
    clear_result(folder)
    result = run_request(request, monitor, model=model)
    return write_result(result, folder), result


def serve(folder: str | Path, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    """:func:`run_folder` with the protocol around it; returns the exit code.

    SIGINT and SIGTERM cancel cleanly while it runs (SIGINT too when the process started with it
    ignored, as the children of a background shell do).
    """
    with interrupts_raise():
        try:
            written, result = run_folder(folder, Monitor(json_lines(stdout), min_interval_s=0.1))
        except (KeyboardInterrupt, Cancelled):
            clear_result(folder)  # a result completed just before the signal is withdrawn too: cancelled means none
            return write_cancelled(stderr)
        except MedXAIError as error:
            return write_error(str(error), stderr)
    write_done(written, result.warnings, stdout)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m MedXAILib.runs FOLDER``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        return write_error(USAGE)
    return serve(args[0])
