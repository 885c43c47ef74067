"""Progress display for the command line: a bar on a terminal, or JSON lines for programs."""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, TextIO

__all__ = ["terminal_bar", "json_lines", "silent"]


def terminal_bar(stream: TextIO | None = None, width: int = 30) -> Callable[[float, str], None]:
    """A one-line bar redrawn in place on stderr: ``[#####-----]  45%  message  (3.2 s)``."""
    stream = stream or sys.stderr  # looked up now, not at import, so redirection works
    started = time.monotonic()

    def show(fraction: float, message: str) -> None:
        filled = int(round(width * fraction))
        line = f"\r[{'#' * filled}{'-' * (width - filled)}] {fraction * 100:3.0f}%  {message[:60]:<60} ({time.monotonic() - started:.1f} s)"
        stream.write(line)
        if fraction >= 1.0:
            stream.write("\n")
        stream.flush()

    return show


def json_lines(stream: TextIO | None = None) -> Callable[[float, str], None]:
    """One JSON object per update on stdout: ``{"progress": 0.45, "message": "...", "elapsed_s": 3.2}``."""
    stream = stream or sys.stdout  # looked up now, not at import, so redirection works
    started = time.monotonic()

    def emit(fraction: float, message: str) -> None:
        record = {"progress": round(fraction, 4), "message": message, "elapsed_s": round(time.monotonic() - started, 3)}
        stream.write(json.dumps(record) + "\n")
        stream.flush()

    return emit


def silent(fraction: float, message: str) -> None:
    """Progress sink that shows nothing (non-terminal output without --progress-json)."""
