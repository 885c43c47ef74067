"""Progress display for the command line: a bar on a terminal, or JSON lines for programs.

The JSON lines are :func:`MedXAILib.runs.protocol.json_lines`, the format every MedXAI process writes.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from ..runs.protocol import json_lines  # the one JSON-lines writer, shared with the run worker

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


def silent(fraction: float, message: str) -> None:
    """Progress sink that shows nothing (non-terminal output without --progress-json)."""
