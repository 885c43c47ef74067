"""The compute devices the widget offers: auto, CPU, and each CUDA GPU with its name and memory.

The GPUs are listed by a child process (``python -m MedXAIRuntime.devices``, :func:`probeCommand`)
that asks torch and prints one JSON line: asking torch in Slicer's own process would initialise
CUDA there, and the CUDA context costs hundreds of MB of GPU memory although every job that uses
the GPU runs in its own process. The widget runs the probe like any command (non-blocking,
:class:`~MedXAIRuntime.runners.CommandRunner`) once torch is installed, and fills the combo box when
it answers. Nothing here imports torch in the calling process.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Optional, Sequence, Union

__all__ = ["BASE_DEVICES", "deviceLabel", "listDevices", "torchAvailable", "probeCommand", "parseProbeLine",
           "probe", "main"]

BASE_DEVICES: tuple[tuple[str, str], ...] = (
    ("auto", "Auto (first GPU if there is one, else CPU)"),
    ("cpu", "CPU"),
)
_PROBE_KEY = "medxaiDevices"


def deviceLabel(index: int, name: str, totalBytes: Optional[int]) -> str:
    """``GPU 0: NVIDIA H100 (79.2 GiB)``."""
    memory = f" ({totalBytes / 2**30:.1f} GiB)" if totalBytes else ""
    return f"GPU {index}: {name}{memory}"


def torchAvailable() -> bool:
    """Whether torch is installed (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def listDevices(gpus: Sequence[dict] = ()) -> list[tuple[str, str]]:
    """``(value, label)`` pairs: auto, CPU, then ``cuda:N`` for each GPU the probe reported."""
    return list(BASE_DEVICES) + [(f"cuda:{gpu['index']}", deviceLabel(gpu["index"], gpu["name"], gpu.get("totalBytes")))
                                 for gpu in gpus]


def probeCommand(python: Union[str, object]) -> list[str]:
    """``python -m MedXAIRuntime.devices``: prints the GPUs torch sees as one JSON line."""
    return [str(python), "-m", "MedXAIRuntime.devices"]


def parseProbeLine(line: str) -> Optional[list[dict]]:
    """The GPUs of the probe's output line, or None for any other line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get(_PROBE_KEY), list):
        return None
    return [gpu for gpu in record[_PROBE_KEY] if isinstance(gpu, dict) and "index" in gpu and "name" in gpu]


def probe() -> list[dict]:
    """The CUDA devices torch sees in THIS process (the child's side; it initialises CUDA here)."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name, "totalBytes": getattr(props, "total_memory", None)})
    return gpus


def main() -> int:
    """``python -m MedXAIRuntime.devices``: one line ``{"medxaiDevices": [...]}``; a broken CUDA set-up lists none."""
    try:
        gpus = probe()
    except Exception as error:  # auto and CPU still work; say why on stderr
        print(f"MedXAI: could not list CUDA devices: {error}", file=sys.stderr)
        gpus = []
    print(json.dumps({_PROBE_KEY: gpus}), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main())
