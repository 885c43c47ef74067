"""The compute devices the widget offers: auto, CPU, and each CUDA GPU with its name and memory.

torch is asked only when it is installed and the caller allows importing it (the widget does so
after the dependencies are in place), so opening the module never imports torch.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

__all__ = ["BASE_DEVICES", "deviceLabel", "listDevices", "torchAvailable"]

BASE_DEVICES: tuple[tuple[str, str], ...] = (
    ("auto", "Auto (first GPU if there is one, else CPU)"),
    ("cpu", "CPU"),
)


def deviceLabel(index: int, name: str, totalBytes: Optional[int]) -> str:
    """``GPU 0: NVIDIA H100 (79.2 GiB)``."""
    memory = f" ({totalBytes / 2**30:.1f} GiB)" if totalBytes else ""
    return f"GPU {index}: {name}{memory}"


def torchAvailable() -> bool:
    """Whether torch is installed (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def listDevices(queryTorch: bool = True) -> list[tuple[str, str]]:
    """``(value, label)`` pairs: auto, CPU, then ``cuda:N`` for every CUDA device torch sees.

    Args:
        queryTorch: import torch to list GPUs (only when it is installed); False lists auto and CPU.
    """
    devices = list(BASE_DEVICES)
    if not queryTorch or not torchAvailable():
        return devices
    try:
        import torch

        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                devices.append((f"cuda:{index}", deviceLabel(index, props.name, getattr(props, "total_memory", None))))
    except Exception:  # a broken CUDA set-up must not break the GUI; auto/CPU still work
        import logging

        logging.warning("MedXAI: could not list CUDA devices", exc_info=True)
    return devices
