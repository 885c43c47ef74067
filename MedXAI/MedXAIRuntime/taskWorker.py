"""``python -m MedXAIRuntime.taskWorker FOLDER``: run one :class:`~MedXAIRuntime.tasks.TaskRequest` in a subprocess.

:class:`~MedXAIRuntime.tasks.TaskJob` writes the request into FOLDER (``request.json``,
``arrays.npz``) and starts this module with PythonSlicer. It follows the ``medxai`` command line's
contracts, so the job reads it exactly like ``medxai explain --progress-json``:

- progress as one JSON line per update on stdout (``{"progress": f, "message": m, "elapsed_s": t}``)
  and ``{"done": true, "outputs": [...]}`` at the end;
- exit code 0 with ``result.json`` (and ``result.npz`` for volumes) written into FOLDER;
- exit code 2 and one line ``medxai: error: <reason>`` on stderr for bad input (a MedXAILib error);
- exit code 130 on Ctrl-C or SIGTERM (which is how Cancel stops it), nothing written;
- exit code 1 with a traceback for anything unexpected.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["main"]

EXIT_OK, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 2, 130


def _emitter(stream: Any = None):
    started = time.monotonic()
    stream = stream or sys.stdout

    def emit(fraction: float, message: str) -> None:
        record = {"progress": round(fraction, 4), "message": message, "elapsed_s": round(time.monotonic() - started, 3)}
        stream.write(json.dumps(record) + "\n")
        stream.flush()

    return emit


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the request in the folder given as the only argument; returns the exit code."""
    from MedXAILib.errors import Cancelled, MedXAIError
    from MedXAILib.monitor import Monitor

    from MedXAIRuntime import tasks

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.stderr.write("medxai: error: usage: python -m MedXAIRuntime.taskWorker FOLDER (an existing folder)\n")
        return EXIT_BAD_INPUT
    folder = Path(args[0])
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        request = tasks.readRequest(folder)
        result = tasks.runTask(request, Monitor(_emitter(), min_interval_s=0.1))
        outputs = tasks.writeResult(result, folder)
        sys.stdout.write(json.dumps({"done": True, "outputs": [str(p) for p in outputs]}) + "\n")
        sys.stdout.flush()
        return EXIT_OK
    except (KeyboardInterrupt, Cancelled):
        sys.stderr.write("\nmedxai: cancelled; nothing was written\n")
        return EXIT_CANCELLED
    except MedXAIError as error:
        sys.stderr.write(f"medxai: error: {error}\n")
        return EXIT_BAD_INPUT
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover - run as a subprocess
    sys.exit(main())
