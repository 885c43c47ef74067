"""A file written completely or not at all."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from ..errors import InputError

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to `path` through a hidden file in the same folder and a rename.

    A reader never sees a partial file, and a failure (full disk, Ctrl-C) leaves any earlier file at
    `path` intact. The file gets the usual umask permissions (``tempfile.mkstemp`` would make it 0600).

    Raises:
        InputError: the folder does not exist, `path` is a folder, or the write failed (one line).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write '{path}': the folder '{path.parent}' does not exist")
    if path.is_dir():
        raise InputError(f"cannot write '{path}': it is a folder")
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "xb") as stream:
            stream.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise InputError(f"cannot write '{path}': {error.strerror or error}") from None
        raise
    return path
