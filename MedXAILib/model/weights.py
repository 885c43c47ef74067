"""Safe reading of model files: hashes, plain-weight state dicts, TorchScript and exported programs."""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError, UntrustedModelError

__all__ = [
    "sha256_of",
    "sniff_file",
    "load_state_dict",
    "apply_state_dict",
    "load_torchscript",
    "load_exported",
]


def sha256_of(*paths: Path) -> str:
    """SHA-256 over the bytes of `paths` in order (one file: the file's usual checksum)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def sniff_file(path: Path) -> str:
    """``"torchscript"``, ``"state_dict"`` (a torch.save archive), ``"exported"`` or ``"unknown"``."""
    if path.suffix == ".pt2":
        return "exported"
    if not zipfile.is_zipfile(path):
        return "unknown"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/data.pkl") for n in names):
        return "state_dict"
    return "unknown"


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load plain weights with ``torch.load(weights_only=True)``; never unpickle code.

    Accepts a bare state dict or one wrapped under ``"state_dict"``/``"model"`` (common checkpoint
    layouts) and strips a ``"module."`` prefix left by DataParallel.

    Raises:
        UntrustedModelError: the file holds pickled objects that would run code when loaded.
        ModelError: the file is missing, corrupted or not a PyTorch file.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UntrustedModelError(
            f"{path.name} contains pickled Python objects that would run code when loaded "
            f"({str(exc).strip().splitlines()[0][:160]}); MedXAI loads plain weights only. "
            "Re-save the weights with torch.save(model.state_dict(), path)."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(f"cannot read weights from {path}: corrupted or not a PyTorch file ({_first(exc)})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ModelError(f"{path.name} does not hold a state dict (a mapping of names to tensors)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_torchscript(path: Path) -> tuple[torch.nn.Module, dict[str, str]]:
    """Load a TorchScript archive and the text of its ``metadata.json`` extra file, if any."""
    extra = {"metadata.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch >= 2.14 deprecates TorchScript; still supported
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"cannot load TorchScript model {path}: corrupted or incompatible ({_first(exc)})") from None
    return module, extra


def load_exported(path: Path) -> torch.nn.Module:
    """Load a ``torch.export`` program (.pt2) as a callable module."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch.export raises many types for a damaged archive
        raise ModelError(f"cannot load exported program {path}: {_first(exc)}") from None
    return program.module()


def apply_state_dict(network: torch.nn.Module, state: dict[str, Any], source: Path) -> None:
    """Load `state` strictly, explaining mismatches in terms of keys and shapes."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"the weights in {source.name} do not fit the network definition: {_first(exc)} "
            "(check the network name and arguments in the spec or bundle)"
        ) from None


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
