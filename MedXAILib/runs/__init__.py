"""One run protocol for every kind of run: one request type, one worker, one result format.

The Slicer module's background jobs, its in-process runs, the ``medxai run`` command and (next) the
workers of a cohort all run a :class:`RunRequest` the same way:

- :mod:`.request`: :class:`RunRequest` (kind, image, model path, JSON arguments, arrays on the image
  grid, target, device, seed, trust) and :class:`RunResult` (named volumes and JSON data);
- :mod:`.kinds`: :data:`RUN_FUNCTIONS`, each kind's call of the library's public entry point (the
  one its ``medxai`` subcommand calls), and :func:`run_request` in this interpreter with a one-model
  cache;
- :mod:`.folder`: the request folder (``request.json`` + ``arrays.npz``, no pickle) and the result
  written into it atomically (``result.json`` last marks completion);
- :mod:`.worker`: ``python -m MedXAILib.runs FOLDER`` / ``medxai run FOLDER``;
- :mod:`.protocol`: the exit codes and JSON-lines progress every ``medxai`` process shares.

One cohort case is one request folder: a planner writes it (the image inline, or its files in
``image_files`` for the worker to read), any worker runs it, and :func:`has_result` tells a complete
case from one to redo.

Light at import (numpy and the light core); torch, MONAI and SimpleITK load when a run starts.
"""

from __future__ import annotations

from .folder import clear_result, has_result, read_request, read_result, write_request, write_result
from .kinds import RUN_FUNCTIONS, clear_model_cache, load_model_cached, run_request
from .protocol import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_INTERNAL, EXIT_OK, json_lines
from .request import RunKind, RunRequest, RunResult
from .worker import run_folder, serve

__all__ = [
    "RunKind", "RunRequest", "RunResult", "RUN_FUNCTIONS", "run_request", "load_model_cached", "clear_model_cache",
    "write_request", "read_request", "write_result", "read_result", "clear_result", "has_result",
    "run_folder", "serve", "json_lines", "EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_CANCELLED",
]
