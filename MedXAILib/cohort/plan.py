"""Planning a cohort: one run request per case, its seed, its folder, and whether it is done already.

A cohort case is a :class:`~MedXAILib.runs.RunRequest` like any other (kind ``qa_case``): the images
stay files (``image_files``) that the worker which runs the case reads, the seed is derived from the
cohort seed and the case id only (so the result does not depend on which worker runs it, or in which
order), and the request is written into the case's folder with its result. A case is complete when its
folder holds the same request, a valid result (:func:`MedXAILib.runs.has_result`) and every file the
result lists with its checksum: a re-run skips exactly those cases, and redoes a damaged or changed one.

Light: standard library, numpy and the light core.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..io.checksums import sha256_of
from ..runs import RunKind, RunRequest, has_result, read_request, read_result
from .manifest import CohortCase

__all__ = ["CohortOptions", "structure_file_stem", "file_sha256", "case_seed", "case_request", "case_folder", "case_complete", "CASES_FOLDER",
           "VOLATILE_KEYS"]

#: The folder of the case folders, inside the cohort folder.
CASES_FOLDER = "cases"
#: Provenance keys that change from run to run (left out of the case files, which repeat byte for byte).
VOLATILE_KEYS = ("created", "seconds")


@dataclass
class CohortOptions:
    """What every case of a cohort runs.

    Attributes:
        model_path: the segmenter (any format :func:`MedXAILib.load_model` reads), absolute, or
            ``totalsegmentator:TASK``.
        model_options: :func:`MedXAILib.load_model` keyword arguments (nnU-Net folds, configuration,
            checkpoint, mirroring; overrides), :data:`MedXAILib.runs.request.MODEL_OPTIONS`.
        model_sha256: the model's checksum (a retrained model makes every case stale).
        structures: ``"all"`` or a comma-separated list of class names.
        qa: :class:`MedXAILib.analysis.qa.QAOptions` as JSON.
        device: ``auto``, ``cpu``, ``cuda``; a worker given a GPU uses it.
        seed: the cohort seed (each case's own seed derives from it and the case id).
        trust_bundle: let a MONAI bundle's config run code.
        threads: torch threads per worker (1: results repeat exactly whatever the number of workers).
    """

    model_path: str
    model_sha256: str = ""
    structures: str = "all"
    qa: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    trust_bundle: bool = False
    threads: int = 1
    model_options: dict[str, Any] = field(default_factory=dict)


def structure_file_stem(name: str) -> str:
    """A structure's name as the stem of its files in a case folder (attribution, thumbnail)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "structure"


def case_seed(seed: int, case_id: str) -> int:
    """The case's seed: from the cohort seed and the case id only (31 bits)."""
    digest = hashlib.sha256(f"{int(seed)}:{case_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def case_folder(out: str | Path, case_id: str) -> Path:
    """``OUT/cases/<case_id>``."""
    return Path(out) / CASES_FOLDER / case_id


def case_request(case: CohortCase, options: CohortOptions) -> RunRequest:
    """The ``qa_case`` run request of one case (the images stay files: the worker reads them)."""
    arguments: dict[str, Any] = {"structures": options.structures, "options": dict(options.qa),
                                 "model_sha256": options.model_sha256, "case_id": case.case_id}
    if case.reference:
        arguments["reference_file"] = case.reference
    return RunRequest(kind=RunKind.qa_case, image=None, image_files=case.image_files, model_path=options.model_path,
                      arguments=arguments, device=options.device, seed=case_seed(options.seed, case.case_id),
                      trust_bundle=options.trust_bundle, model_options=options.model_options)


def _same_request(found: RunRequest, planned: RunRequest) -> bool:
    def key(request: RunRequest) -> str:
        return json.dumps({"kind": request.kind.value, "model": request.model_path, "files": list(request.image_files),
                           "arguments": request.arguments, "seed": request.seed, "trust": request.trust_bundle,
                           "model_options": request.model_options},
                          sort_keys=True, default=str)

    return key(found) == key(planned)


def file_sha256(path: str | Path) -> Optional[str]:
    """The file's SHA-256 (hex), or None when it cannot be read (a case folder damaged after the fact)."""
    try:
        return sha256_of(path)
    except OSError:
        return None


def case_complete(folder: str | Path, planned: Optional[RunRequest] = None) -> bool:
    """Whether `folder` holds a complete, undamaged result of the `planned` request.

    Checked: the request in the folder equals `planned` (same images, model and checksum, arguments and
    seed; the device may differ), the result is valid (:func:`MedXAILib.runs.has_result`), and every file
    the result lists (``data["files"]``) exists with its recorded SHA-256.
    """
    folder = Path(folder)
    if not folder.is_dir() or not has_result(folder):
        return False
    try:
        if planned is not None and not _same_request(read_request(folder), planned):
            return False
        files = read_result(folder).data.get("files") or {}
    except Exception:  # noqa: BLE001 - anything unreadable means: not complete, redo it
        return False
    if not files:
        return False
    return all(file_sha256(folder / name) == digest for name, digest in files.items())
