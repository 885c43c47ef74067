"""The request folder: how a run travels to a worker and its result comes back.

A folder holds one run::

    FOLDER/arrays.npz     the image, its affine, the request's arrays and the target's mask
    FOLDER/request.json   kind, model path, arguments, target, device, seed, trust (written last)
    FOLDER/result.npz     the result's volumes (written by the worker)
    FOLDER/result.json    the result's data, the volumes' names and metadata, the checksum of
                          result.npz (written last: its presence marks a complete result)

Every file is written with :func:`MedXAILib.io.write_atomic` (complete or absent) and arrays go through
``.npz`` without pickle, so a folder can be read by another process, another machine (a cohort
worker) or after a crash without trusting anything but its bytes. :func:`read_result` checks the
checksum, so a re-run can tell a complete result from a damaged one.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from ..io import json_safe, write_atomic
from ..volume import ImageVolume
from .request import RunRequest, RunResult, target_from_json, target_to_json

__all__ = [
    "REQUEST_FILE", "REQUEST_ARRAYS", "RESULT_FILE", "RESULT_ARRAYS", "FORMAT_VERSION",
    "write_request", "read_request", "write_result", "read_result", "clear_result", "has_result",
]

REQUEST_FILE, REQUEST_ARRAYS = "request.json", "arrays.npz"
RESULT_FILE, RESULT_ARRAYS = "result.json", "result.npz"
FORMAT_VERSION = 1


def _strict_json(value: Any, what: str) -> str:
    """`value` as strict JSON text; anything without a JSON form is refused by name."""

    def refuse(obj: Any) -> Any:
        raise InputError(f"the {what} must be JSON values; {type(obj).__name__} has no JSON form")

    return json.dumps(json_safe(value), allow_nan=False, default=refuse)


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, **{name: np.asarray(array) for name, array in arrays.items()})
    return stream.getvalue()


def _load_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"cannot read the {what} '{path}': {error}") from None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the {what} '{path}': {error}") from None
    if not isinstance(value, dict):
        raise InputError(f"the {what} '{path}' is not a JSON object")
    return value


def _check_version(spec: Mapping[str, Any], path: Path) -> None:
    version = spec.get("version")
    if version != FORMAT_VERSION:
        raise InputError(f"'{path}' has format version {version!r}; this MedXAI reads version {FORMAT_VERSION}")


# ------------------------------------------------------------------------------------------------
# Requests


def write_request(request: RunRequest, folder: str | Path) -> list[Path]:
    """Write `request` into the existing `folder`: ``arrays.npz`` first, ``request.json`` last.

    Returns:
        the two files written.

    Raises:
        InputError: the folder does not exist, or an argument has no JSON form.
    """
    folder = Path(folder)
    target, target_arrays = target_to_json(request.target)
    spec = {
        "version": FORMAT_VERSION,
        "kind": request.kind.value,
        "model_path": request.model_path,
        "model_options": request.model_options,
        "arguments": request.arguments,
        "target": target,
        "device": request.device,
        "seed": int(request.seed),
        "trust_bundle": bool(request.trust_bundle),
        "image_files": list(request.image_files),
        "channel_names": list(request.image.channel_names) if request.image is not None else [],
    }
    text = _strict_json(spec, "run's arguments")  # before anything is written
    arrays: dict[str, np.ndarray] = {f"arg.{name}": array for name, array in request.arrays.items()}
    arrays.update({f"target.{name}": array for name, array in target_arrays.items()})
    if request.image is not None:
        arrays["image"], arrays["image.affine"] = request.image.array, request.image.affine
    written = [write_atomic(folder / REQUEST_ARRAYS, _npz_bytes(arrays))]
    written.append(write_atomic(folder / REQUEST_FILE, text + "\n"))
    return written


def read_request(folder: str | Path) -> RunRequest:
    """The request written into `folder` by :func:`write_request`.

    Raises:
        InputError: no request in the folder, a damaged file, or a request that is not valid.
    """
    folder = Path(folder)
    path = folder / REQUEST_FILE
    if not path.is_file():
        raise InputError(f"'{folder}' holds no run request ({REQUEST_FILE})")
    spec = _read_json(path, "run request")
    _check_version(spec, path)
    arrays = _load_npz(folder / REQUEST_ARRAYS, "run request's arrays")
    image = None
    if "image" in arrays and "image.affine" in arrays:
        image = ImageVolume(arrays["image"], arrays["image.affine"], channel_names=list(spec.get("channel_names") or []))
    target_arrays = {k[len("target."):]: v for k, v in arrays.items() if k.startswith("target.")}
    try:
        return RunRequest(
            kind=spec.get("kind", ""),
            image=image,
            model_path=spec.get("model_path", ""),
            model_options=spec.get("model_options") or {},
            arguments=spec.get("arguments") or {},
            arrays={k[len("arg."):]: v for k, v in arrays.items() if k.startswith("arg.")},
            target=target_from_json(spec.get("target"), target_arrays),
            device=spec.get("device", "auto"),
            seed=int(spec.get("seed", 0)),
            trust_bundle=bool(spec.get("trust_bundle", False)),
            image_files=tuple(spec.get("image_files") or ()),
        )
    except TypeError as error:  # a field that Target or RunRequest does not know
        raise InputError(f"the run request '{path}' is not valid: {error}") from None


# ------------------------------------------------------------------------------------------------
# Results


def clear_result(folder: str | Path) -> None:
    """Remove a previous result from `folder` (``result.json`` first: a complete-looking result never stays behind)."""
    folder = Path(folder)
    for name in (RESULT_FILE, RESULT_ARRAYS):
        (folder / name).unlink(missing_ok=True)


def write_result(result: RunResult, folder: str | Path) -> list[Path]:
    """Write `result` into `folder`: ``result.npz`` (the volumes) first, ``result.json`` last.

    Nothing stays behind when writing fails or is interrupted: the folder then holds no result.

    Returns:
        the files written, ``result.json`` last.

    Raises:
        InputError: the data has no JSON form, or a file cannot be written.
    """
    folder = Path(folder)
    volumes = {name: {"channel_names": list(volume.channel_names),
                      "meta": json.loads(json.dumps(json_safe(volume.meta or {}), default=str))}
               for name, volume in result.volumes.items()}  # metadata is descriptive: best effort
    spec: dict[str, Any] = {"version": FORMAT_VERSION, "data": result.data, "warnings": list(result.warnings),
                            "volumes": volumes}
    arrays: dict[str, np.ndarray] = {}
    for name, volume in result.volumes.items():
        arrays[f"{name}.array"], arrays[f"{name}.affine"] = volume.array, volume.affine
    payload = _npz_bytes(arrays) if arrays else b""
    if arrays:
        spec["arrays"] = {"file": RESULT_ARRAYS, "sha256": hashlib.sha256(payload).hexdigest()}
    text = _strict_json(spec, "run's result data")  # before anything is written
    written: list[Path] = []
    try:
        if arrays:
            written.append(write_atomic(folder / RESULT_ARRAYS, payload))
        written.append(write_atomic(folder / RESULT_FILE, text + "\n"))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def read_result(folder: str | Path) -> RunResult:
    """The result written into `folder` by :func:`write_result`, its volumes checked against their checksum.

    Raises:
        InputError: no complete result (the run ended without writing it) or a damaged one.
    """
    folder = Path(folder)
    path = folder / RESULT_FILE
    if not path.is_file():
        raise InputError("the run ended without writing its result")
    spec = _read_json(path, "run result")
    _check_version(spec, path)
    volumes: dict[str, ImageVolume] = {}
    described = spec.get("volumes") or {}
    if described:
        stored = spec.get("arrays") or {}
        arrays_path = folder / str(stored.get("file", RESULT_ARRAYS))
        try:
            payload = arrays_path.read_bytes()
        except OSError as error:
            raise InputError(f"the run's result is incomplete: cannot read '{arrays_path}': {error.strerror}") from None
        if hashlib.sha256(payload).hexdigest() != stored.get("sha256"):
            raise InputError(f"the run's result is damaged: '{arrays_path}' does not match its checksum")
        arrays = _load_npz(arrays_path, "run result's volumes")
        for name, info in described.items():
            volumes[name] = ImageVolume(arrays[f"{name}.array"], arrays[f"{name}.affine"],
                                        channel_names=list(info.get("channel_names") or []),
                                        meta=dict(info.get("meta") or {}))
    return RunResult(volumes=volumes, data=dict(spec.get("data") or {}), warnings=list(spec.get("warnings") or []))


def has_result(folder: str | Path) -> bool:
    """True when `folder` holds a complete, undamaged result (a cohort's resume check)."""
    try:
        read_result(folder)
    except InputError:
        return False
    return True
