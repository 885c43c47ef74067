"""File checksums: the SHA-256 recorded for models (provenance) and for a cohort case's files (resume checks)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_of"]


def sha256_of(*paths: str | Path) -> str:
    """SHA-256 over the bytes of `paths` in order (one file: the file's usual checksum), read in 1 MiB blocks.

    Raises:
        OSError: a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
