"""Keep freed buffers in the process: glibc's malloc settings, on request, for processes MedXAI owns.

glibc serves every allocation above its mmap threshold (128 KiB, raised adaptively to at most 32 MiB)
with a fresh mapping of zeroed pages and unmaps it when it is freed. A network pass over a volume
allocates and frees the same large activation buffers again and again, so every pass page-faults
them in anew. With both thresholds raised, freed buffers go back to the heap and are reused: on the
2-core development machine whole ``explain()`` calls took 0.62x to 1.0x the time, a whole
``medxai demo`` 0.92x, for 6 to 20 % more peak memory (the heap keeps what it freed)
(``Testing/benchmarks/bench_allocator.py``; docs/user-guide.md, "Speed on the CPU").

Off by default: ``MEDXAI_ALLOCATOR=keep`` turns it on for the ``medxai`` command, the background run
worker and the cohort's Ray workers (:func:`from_environment`; the cohort hands its choice to them).
It is process-wide, so it is never set by a library call: a Python session or Slicer keeps its own
allocator. A process whose allocator was chosen already (``MALLOC_*`` variables or ``GLIBC_TUNABLES``,
or jemalloc, tcmalloc or mimalloc preloaded) is left alone. See docs/adr/0006-allocator-on-request.md.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "OLD_GLIBC_CAP", "TRIM_THRESHOLD", "CHOICE", "choice", "from_environment",
           "keep_freed_buffers", "kept", "is_glibc"]

#: Allocations up to this size come from the heap (reused when freed) instead of their own mapping.
MMAP_THRESHOLD = 1 << 30
#: The largest mmap threshold glibc before 2.35 accepts (64-bit).
OLD_GLIBC_CAP = 32 << 20
#: Free memory at the top of the heap beyond this is returned to the system.
TRIM_THRESHOLD = 1 << 30
#: ``MEDXAI_ALLOCATOR=keep`` keeps freed buffers in MedXAI's own processes; ``system`` (the default) does not.
CHOICE = "MEDXAI_ALLOCATOR"

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> parameter numbers
_kept = False


def choice() -> str:
    """``MEDXAI_ALLOCATOR``: ``keep`` or ``system`` (unset or empty).

    Raises:
        InputError: any other value.
    """
    value = os.environ.get(CHOICE, "").strip().lower() or "system"
    if value not in ("keep", "system"):
        from .errors import InputError

        raise InputError(f"{CHOICE} must be 'keep' or 'system'; got {os.environ[CHOICE]!r}")
    return value


def from_environment() -> bool:
    """:func:`keep_freed_buffers` where ``MEDXAI_ALLOCATOR=keep`` asks for it (the entry points of MedXAI's
    own processes call this first); True when the buffers are kept.

    Raises:
        InputError: see :func:`choice`.
    """
    return keep_freed_buffers() if choice() == "keep" else False


def keep_freed_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds in this process (once); True when they are set.

    False (nothing changed) off glibc, or where the allocator was chosen already (see the module
    docstring).
    """
    global _kept
    if _kept:
        return True
    if "GLIBC_TUNABLES" in os.environ or any(name.startswith("MALLOC_") for name in os.environ):
        return False  # the user's own settings win
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    if not sys.platform.startswith("linux") or not is_glibc():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # the mmap threshold first: glibc before 2.35 refuses one above 32 MiB (then that cap serves buffers
    # up to it), and the trim threshold is set only once it holds (setting either one stops glibc from
    # moving the mmap threshold on its own, which alone would leave it at 128 KiB)
    if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or libc.mallopt(_M_MMAP_THRESHOLD, OLD_GLIBC_CAP)):
        return False
    _kept = bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept


def is_glibc() -> bool:
    """Whether this process runs on the GNU C library (whose allocator this module sets)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not a GNU C library (musl), or no confstr
        return False


def kept() -> bool:
    """Whether :func:`keep_freed_buffers` changed this process's allocator."""
    return _kept
