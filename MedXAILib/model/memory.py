"""Memory budget: how many bytes a run may use, and how many windows or perturbed inputs fit in it.

The budget is a number of bytes (``"4GB"``, ``"500MB"``) or ``"auto"``: half of the memory free
now on the device that runs the model (``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` of
``/proc/meminfo`` or psutil on the CPU), and on the CPU at most :data:`AUTO_CPU_CAP`, running
:data:`AUTO_CPU_WINDOWS` window per network call: on the CPU more windows per call bought no speed
in our measurements, only memory. The whole-volume buffers of a run (input, its gradient, the
weights, the blended output) are counted by the caller as the ``fixed`` part of
:func:`items_per_call`.

Sizes of network calls come from one probe: the bytes autograd saves for backward during one
window's forward pass (counted with ``torch.autograd.graph.saved_tensors_hooks``), which is what a
backward pass must hold per window.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Optional

import torch

from ..errors import InputError

__all__ = ["MIN_BUDGET", "parse_budget", "free_bytes", "resolve_budget", "saved_bytes", "items_per_call", "AUTO_FRACTION",
           "AUTO_CPU_CAP", "AUTO_CPU_WINDOWS"]

#: Share of the free memory an ``auto`` budget takes (the rest is left to the system and the caller).
AUTO_FRACTION = 0.5
#: Most an ``auto`` budget takes on the CPU (bytes).
AUTO_CPU_CAP = 4 * 2**30
#: Windows per network call under an ``auto`` budget on the CPU. Measured with 96^3 windows of a MONAI
#: UNet (docs/scale.md): batching 2 to 32 windows per call ran no faster per window on the CPU (32 per
#: call: 1.2x slower) and multiplied the memory.
AUTO_CPU_WINDOWS = 1
#: Backward needs the saved activations plus gradient buffers of about their size.
GRAD_FACTOR = 2.0
#: Without autograd only a few live activations (skip connections) exist at once.
NO_GRAD_FACTOR = 0.5
_UNITS = {"": 1, "B": 1, "KB": 2**10, "K": 2**10, "MB": 2**20, "M": 2**20, "GB": 2**30, "G": 2**30,
          "TB": 2**40, "T": 2**40, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


#: The smallest budget the command line accepts: less cannot hold the tensors of even a small window.
MIN_BUDGET = 64 * 2**20


def parse_budget(text: Optional[str | int | float], minimum: int = 1) -> Optional[int]:
    """``"4GB"``, ``"500MB"``, ``"1.5G"``, a number of bytes, or ``"auto"``/``None`` (-> ``None``).

    Units are binary (1 GB = 2^30 bytes), as free-memory tools report them. `minimum` is the smallest
    budget accepted (the command line asks for :data:`MIN_BUDGET`; tests use tiny budgets on purpose to
    force one window per network call).

    Raises:
        InputError: anything else, or a budget that is not positive.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        cleaned = str(text).strip().upper().replace(" ", "")
        if cleaned in ("", "AUTO"):
            return None
        match = re.fullmatch(r"([0-9]*\.?[0-9]+)([A-Z]*)", cleaned)
        if not match or match.group(2) not in _UNITS:
            raise InputError(f"memory budget must be 'auto' or a size such as 4GB or 500MB; got {text!r}")
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if not value > 0:
        raise InputError(f"memory budget must be positive; got {text!r}")
    if value < minimum:
        raise InputError(f"a memory budget of {text} cannot hold one window or batch; give at least "
                         f"{minimum // 2**20}MB (or 'auto')")
    return int(value)


def free_bytes(device: torch.device) -> int:
    """Memory free now on `device`: CUDA free memory, or the host's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    psutil = _psutil()
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30  # unknown platform: assume a modest 4 GiB


@functools.lru_cache(maxsize=1)  # a failed import is searched for again on every try (~0.4 ms a call)
def _psutil() -> Any:
    """psutil, when installed (optional: /proc/meminfo serves Linux without it), else None."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def resolve_budget(budget: Optional[int], device: torch.device) -> int:
    """`budget` bytes, or the ``auto`` share of the free memory on `device` when it is ``None``
    (on the CPU at most :data:`AUTO_CPU_CAP`)."""
    if budget:
        return int(budget)
    share = int(AUTO_FRACTION * free_bytes(device))
    return share if device.type == "cuda" else min(share, AUTO_CPU_CAP)


def saved_bytes(run) -> int:
    """Bytes of the tensors autograd saves for backward while `run()` executes (a probe forward).

    Storage shared by several saved tensors (a parameter saved by many calls) counts once. Autograd
    is on for the probe even under ``torch.no_grad`` or ``torch.inference_mode``.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, functional)
            pass
        return t

    with torch.inference_mode(False), torch.enable_grad():  # also when called under inference mode
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    return int(sum(seen.values()))


def items_per_call(budget: int, fixed: int, per_item: int, most: int) -> int:
    """How many items of `per_item` bytes fit beside `fixed` bytes in `budget`: in [1, `most`]."""
    if per_item <= 0:
        return max(1, most)
    return int(max(1, min(most, (budget - fixed) // per_item)))
