"""Progress reporting and cancellation for long work.

A :class:`Monitor` receives progress in [0, 1] with a message and is asked, between units of work,
whether the caller wants to stop. Cancelling raises :class:`~MedXAILib.errors.Cancelled` from the
next :meth:`Monitor.check` so that the worker unwinds without writing anything.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from .errors import Cancelled

__all__ = ["Monitor", "Cancelled"]

ProgressCallback = Callable[[float, str], None]


class Monitor:
    """Progress sink plus cancel flag, safe to cancel from another thread.

    Args:
        callback: called as ``callback(fraction, message)`` on every :meth:`update`.
        min_interval_s: updates closer together than this are not forwarded (the final 1.0 always is),
            so tight loops do not flood a terminal or a GUI event queue.
    """

    def __init__(self, callback: Optional[ProgressCallback] = None, min_interval_s: float = 0.0):
        self._callback = callback
        self._min_interval_s = min_interval_s
        self._cancel = threading.Event()
        self._last_emit = -float("inf")
        self._offset, self._scale = 0.0, 1.0
        self.fraction = 0.0
        self.message = ""
        self.started = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def cancel(self) -> None:
        """Ask the worker to stop at its next :meth:`check`."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if :meth:`cancel` was called."""
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")

    def update(self, fraction: float, message: str = "") -> None:
        """Report progress (``fraction`` of the current stage) and check for cancellation."""
        self.check()
        overall = self._offset + self._scale * min(max(float(fraction), 0.0), 1.0)
        self.fraction = max(self.fraction, overall)
        if message:
            self.message = message
        now = time.monotonic()
        if self._callback is not None and (
            now - self._last_emit >= self._min_interval_s or self.fraction >= 1.0
        ):
            self._last_emit = now
            self._callback(self.fraction, self.message)

    def stage(self, start: float, stop: float) -> "_Stage":
        """Context manager mapping a sub-task's progress [0, 1] onto [start, stop] of the whole."""
        return _Stage(self, start, stop)


class _Stage:
    def __init__(self, monitor: Monitor, start: float, stop: float):
        self._monitor, self._start, self._stop = monitor, start, stop

    def __enter__(self) -> Monitor:
        m = self._monitor
        self._saved = (m._offset, m._scale)
        m._offset = self._saved[0] + self._saved[1] * self._start
        m._scale = self._saved[1] * (self._stop - self._start)
        return m

    def __exit__(self, *exc) -> None:
        self._monitor._offset, self._monitor._scale = self._saved
