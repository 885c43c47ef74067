"""The input guard for image files: damage and undefined voxels that a reader would hide.

SimpleITK's NIfTI reader fills the voxels of a ``.nii.gz`` that ends early with zeros and turns NaN
and infinite voxels into 0 (NRRD and MetaImage readers report both). :func:`check_nifti` therefore
reads a NIfTI file's raw data itself, in chunks: the gzip stream must end where its header says and
pass its checksum, the data must be as long as the header's dimensions say, and floating-point voxels
must be finite. :func:`check_finite_voxels` is the same finiteness rule for a volume read in any format.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["check_nifti", "check_finite_voxels"]

_CHUNK = 16 * 1024 * 1024
#: NIfTI datatype codes of the float types whose voxels can be NaN or infinite.
_FLOATS = {16: "f4", 64: "f8"}


def _header(head: bytes, path: Path) -> tuple[str, int, int, int, int]:
    """``(byte order, datatype, bitpix, voxel count, vox_offset)`` of a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348 and len(head) >= 348:
            dims = struct.unpack(order + "8h", head[40:56])
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            break
        if size == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        raise InputError(f"cannot read image '{path}': it has no NIfTI header")
    rank = int(dims[0])
    if not 1 <= rank <= 7 or any(d < 1 for d in dims[1:rank + 1]):
        raise InputError(f"cannot read image '{path}': its NIfTI header has invalid dimensions {dims[:rank + 1]}")
    count = int(np.prod([int(d) for d in dims[1:rank + 1]], dtype=np.int64))
    return order, int(datatype), int(bitpix), count, max(int(offset), 352 if size == 348 else 544)


def check_nifti(path: str | Path) -> None:
    """Refuse a NIfTI file whose data is cut short, whose gzip stream is damaged, or that holds NaN/inf.

    Raises:
        InputError: one line saying what is wrong, where, and how much.
    """
    path = Path(path)
    compressed = path.name.lower().endswith(".gz")
    opener = gzip.open if compressed else open
    nan = inf = 0
    try:
        with opener(path, "rb") as stream:
            head = stream.read(544)
            order, datatype, bitpix, count, offset = _header(head, path)
            expected = count * bitpix // 8
            dtype = np.dtype(order + _FLOATS[datatype]) if datatype in _FLOATS else None
            step = dtype.itemsize if dtype is not None else 1
            data = head[offset:offset + expected]
            if offset > len(head):
                stream.read(offset - len(head))  # header extensions
            received = 0
            while True:
                need, more = expected - received - len(data), b""
                if need > 0:
                    more = stream.read(min(_CHUNK, need))
                    data += more
                usable = len(data) - len(data) % step
                if dtype is not None and usable:
                    values = np.frombuffer(data[:usable], dtype)
                    nan += int(np.isnan(values).sum())
                    inf += int(np.isinf(values).sum())
                received, data = received + usable, data[usable:]
                if received >= expected or (need > 0 and not more):
                    break
            while compressed and stream.read(_CHUNK):  # read to the end: the checksum is checked there
                pass
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        reason = "its compressed data ends early" if isinstance(error, EOFError) else f"its compressed data is damaged ({error})"
        raise InputError(f"cannot read image '{path}': {reason}; the file is incomplete or corrupt") from None
    except OSError as error:
        raise InputError(f"cannot read image '{path}': {error.strerror or error}") from None
    if received < expected:
        raise InputError(f"cannot read image '{path}': it ends early ({received} of {expected} data bytes); the "
                         "file is incomplete")
    if nan or inf:
        raise InputError(_non_finite_message(path, nan, inf, count))


def _non_finite_message(path: Path | str, nan: int, inf: int, count: int) -> str:
    what = " and ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else "") if p)
    return (f"'{path}' holds {what} voxel(s) of {count} ({100 * (nan + inf) / count:.3g} %); MedXAI explains "
            "only defined values: replace them (e.g. with the background value) first")


def check_finite_voxels(array: np.ndarray, path: Path | str) -> None:
    """Refuse a volume read from `path` that holds NaN or infinite voxels, saying how many."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        nan = int(np.isnan(array).sum())
        raise InputError(_non_finite_message(path, nan, int(array.size) - nan - int(np.isfinite(array).sum()),
                                             int(array.size)))
