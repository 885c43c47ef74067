"""The cohort manifest: which cases, which files.

A manifest is either

- a CSV file with a header: one column per input channel, named ``image`` or ``image_<anything>``
  (``image_ct``, ``image_pet``: channels in column order, resampled onto the first), an optional
  ``case_id``, an optional ``reference`` (a reference segmentation, used for evaluation only: the true
  Dice of each structure), and any other columns (site, scanner, ...), carried into the cohort table.
  Relative paths are relative to the CSV's folder; or
- a folder of images: every image file directly in it (``.nrrd``, ``.nhdr``, ``.nii``, ``.nii.gz``,
  ``.mha``, ``.mhd``; ``.seg.nrrd`` files are left out) is one single-channel case named after the file.

Case ids name the case folders (``cases/<id>/``), so they are made of letters, digits, ``.``, ``_``
and ``-`` and are unique. Light: standard library only.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

__all__ = ["CohortCase", "read_manifest", "IMAGE_SUFFIXES", "safe_case_id"]

#: Image files a manifest folder's cases are made of.
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class CohortCase:
    """One case of a cohort.

    Attributes:
        case_id: names the case folder and the table rows.
        image_files: one file (or DICOM folder) per input channel, absolute.
        reference: a reference segmentation (evaluation only), absolute, or None.
        metadata: the manifest's other columns for this case (carried into the table).
    """

    case_id: str
    image_files: tuple[str, ...]
    reference: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def safe_case_id(text: str) -> str:
    """`text` made into a case id: characters other than letters, digits, ``._-`` become ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text.strip()).lstrip("._-")
    return cleaned[:128] or "case"


def _check_ids(cases: list[CohortCase], where: str) -> list[CohortCase]:
    seen: dict[str, int] = {}
    for index, case in enumerate(cases):
        if not _SAFE.match(case.case_id):
            raise InputError(f"{where}: case id {case.case_id!r} (case {index + 1}) must start with a letter or digit "
                             "and hold only letters, digits, '.', '_' and '-' (it names the case's folder)")
        if case.case_id in seen:
            raise InputError(f"{where}: case id {case.case_id!r} is used by cases {seen[case.case_id] + 1} and "
                             f"{index + 1}; case ids must be unique")
        seen[case.case_id] = index
    if not cases:
        raise InputError(f"{where} lists no case")
    return cases


def _read_csv(path: Path) -> list[CohortCase]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the manifest '{path}': {error}") from None
    rows = list(csv.reader(text.splitlines()))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise InputError(f"the manifest '{path}' is empty; it needs a header (image, case_id, reference, ...)")
    header = [cell.strip() for cell in rows[0]]
    if len(set(header)) != len(header):
        raise InputError(f"the manifest '{path}' repeats a column name: {', '.join(header)}")
    channels = [i for i, name in enumerate(header) if name == "image" or name.startswith("image_")]
    if not channels:
        raise InputError(f"the manifest '{path}' has no image column; name the input columns 'image' (one "
                         f"channel) or 'image_<name>' (one per channel); its columns: {', '.join(header)}")
    id_column = header.index("case_id") if "case_id" in header else None
    ref_column = header.index("reference") if "reference" in header else None
    other = [i for i in range(len(header)) if i not in channels and i not in (id_column, ref_column)]
    base = path.parent
    cases = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError(f"{path}, line {line}: {len(row)} values for {len(header)} columns")
        files = []
        for i in channels:
            value = row[i].strip()
            if not value:
                raise InputError(f"{path}, line {line}: the column '{header[i]}' is empty")
            files.append(str((base / value).resolve()) if not Path(value).is_absolute() else value)
        reference = row[ref_column].strip() if ref_column is not None else ""
        if reference and not Path(reference).is_absolute():
            reference = str((base / reference).resolve())
        case_id = row[id_column].strip() if id_column is not None else safe_case_id(_stem(Path(files[0])))
        cases.append(CohortCase(case_id, tuple(files), reference or None,
                                {header[i]: row[i].strip() for i in other}))
    return _check_ids(cases, f"the manifest '{path}'")


def _read_folder(folder: Path) -> list[CohortCase]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith(".")
                   and not p.name.lower().endswith(".seg.nrrd"))
    cases = [CohortCase(safe_case_id(_stem(p)), (str(p.resolve()),)) for p in files]
    return _check_ids(cases, f"the manifest folder '{folder}'")


def read_manifest(manifest: str | Path) -> list[CohortCase]:
    """The cases of a manifest (a CSV file or a folder of images), in manifest order.

    Raises:
        InputError: the manifest cannot be read, has no image column, an empty or malformed row, or case
            ids that are not unique or not usable as folder names (the message names the line).
    """
    path = Path(manifest)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise InputError(f"the manifest '{manifest}' does not exist; give a CSV file or a folder of images")
    if path.suffix.lower() not in (".csv", ".txt"):
        raise InputError(f"the manifest '{manifest}' is not a CSV file (.csv) or a folder of images")
    return _read_csv(path)
