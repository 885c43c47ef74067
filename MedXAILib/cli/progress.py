"""Progress display for the command line: a bar on a terminal, JSON lines for programs, plain lines for logs.

The JSON lines are :func:`MedXAILib.runs.protocol.json_lines`, the format every MedXAI process writes.
:func:`plain_lines` is for long commands whose output goes to a file or a pipe (a batch job's log):
one line every few seconds with the fraction done, the elapsed time and an estimate of the rest.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from ..runs.protocol import json_lines  # the one JSON-lines writer, shared with the run worker

__all__ = ["terminal_bar", "json_lines", "plain_lines", "silent"]


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


def plain_lines(stream: TextIO | None = None, every_s: float = 10.0) -> Callable[[float, str], None]:
    """Plain progress lines for a log: ``progress  42%  12.3 s elapsed, about 17 s left: message``.

    A line appears when `every_s` seconds have passed since the last one, when the message's first
    word changes (a new stage), and at the end, so a log shows that a long run is alive without
    flooding it.
    """
    stream = stream or sys.stdout
    started = time.monotonic()
    state = {"last": -float("inf"), "stage": None}

    def show(fraction: float, message: str) -> None:
        now = time.monotonic()
        stage = (message.split(":")[0].split(" ")[0] if message else "")
        if fraction < 1.0 and now - state["last"] < every_s and stage == state["stage"]:
            return
        state["last"], state["stage"] = now, stage
        elapsed = now - started
        left = f", about {elapsed * (1 - fraction) / fraction:.0f} s left" if 0.02 < fraction < 1.0 else ""
        stream.write(f"progress {fraction * 100:3.0f}%  {elapsed:.1f} s elapsed{left}: {message}\n")
        stream.flush()

    return show


def silent(fraction: float, message: str) -> None:
    """Progress sink that shows nothing (non-terminal output without --progress-json)."""
