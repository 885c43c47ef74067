"""The output guard: a user's files are never overwritten, and a run's outputs appear all together or not at all.

Every command that writes goes through one :class:`OutputSet`:

1. **Before any work**, each output path is checked: the suffix it needs, a file where a file is meant
   (a folder where a folder is meant), an existing parent folder, no two outputs on one path, and never
   an input. Paths are compared after resolving links, and by file identity (device and inode) where
   both exist, so a symbolic or hard link to an input is caught too. An output inside an input folder (a
   MONAI bundle, an nnU-Net folder, a DICOM series) is refused as well.
2. **While the run works**, every output is written into a hidden staging folder beside its final place
   (:meth:`OutputSet.staged`): same file system, so the final move is a rename. Sidecars a writer adds
   (a NIfTI's JSON) are staged with it.
3. **At the end**, :meth:`OutputSet.commit` moves every staged file into place. An existing file there
   is first renamed aside and restored if any later move fails; an input is never replaced, even one
   that only turns up inside an output folder at this point. A failure or Ctrl-C before the commit leaves
   nothing (:meth:`OutputSet.discard`, also on leaving a ``with`` block by an exception).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..errors import InputError

__all__ = ["Output", "OutputSet", "resolved", "same_file", "LEFTOVER_PREFIXES"]

_STAGING_PREFIX = ".medxai-staging-"
_BACKUP_PREFIX = ".medxai-replaced-"
#: Names of the staging and set-aside entries a commit makes: one that a killed process left behind is
#: never a committed output and may be removed.
LEFTOVER_PREFIXES = (_STAGING_PREFIX, _BACKUP_PREFIX)


@dataclass(frozen=True)
class Output:
    """One output of a run.

    Attributes:
        option: how the user named it, for messages (``--out``, ``--json``).
        path: where it goes.
        suffixes: the endings it may have (lower case); empty: any.
        folder: a folder the run fills (created if missing) rather than one file.
        whole: a folder committed as one unit: one rename puts the whole staged folder in place (an
            earlier folder there is replaced), so a reader sees all of it or none of it (a cohort's case).
    """

    option: str
    path: Path
    suffixes: tuple[str, ...] = ()
    folder: bool = False
    whole: bool = False


def resolved(path: str | os.PathLike, option: str = "path") -> Path:
    """`path` with links resolved; a link loop or an unreadable link is an InputError."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop before Python 3.13
        raise InputError(f"{option} {path}: cannot resolve the path ({error})") from None


def same_file(a: Path, b: Path) -> bool:
    """Whether two resolved paths are one file: equal, or the same device and inode (a hard link)."""
    if a == b:
        return True
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _companions(path: Path) -> list[Path]:
    """Files a writer adds beside `path`: a NIfTI file's JSON sidecar (where its metadata goes)."""
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return [path.with_name(path.name[: -len(suffix)] + ".json")]
    return []


def _inside(path: Path, folder: Path) -> bool:
    return folder in path.parents


class OutputSet:
    """The outputs of one run, guarded against its inputs and committed together.

    Args:
        outputs: the run's outputs; None paths (options not given) are skipped.
        inputs: ``(option, path)`` of every file or folder the run reads: images, masks, labels,
            attribution maps, model files and model folders.

    Raises:
        InputError: an output that would overwrite an input, or is otherwise unusable (one line naming
            the option).
    """

    def __init__(self, outputs: Iterable[Output], inputs: Iterable[tuple[str, Optional[str | os.PathLike]]] = ()):
        self.outputs = [o for o in outputs if o.path is not None]
        self.inputs = [(option, resolved(path, option)) for option, path in inputs if path]
        self._staging: dict[Path, Path] = {}  # final parent folder -> its staging folder
        self.committed = False
        self.check()

    # -- before the work ----------------------------------------------------------------------

    def check(self) -> None:
        """Refuse unusable outputs and any output that is, or lies inside, an input."""
        seen: dict[Path, str] = {}
        for output in self.outputs:
            path = resolved(output.path, output.option)
            for option, source in self.inputs:
                if any(same_file(written, source) for written in (path, *_companions(path))):
                    raise InputError(f"{output.option} {output.path} is an input file ({option} {source}); "
                                     "MedXAI never overwrites its inputs: choose another path")
                if _inside(path, source):
                    raise InputError(f"{output.option} {output.path} lies inside the input folder {option} {source}; "
                                     "MedXAI never overwrites its inputs: choose another path")
            if output.whole:
                for option, source in self.inputs:
                    if _inside(source, path):
                        raise InputError(f"{output.option} {output.path} holds the input {option} {source}, and "
                                         "it is replaced as a whole; MedXAI never overwrites its inputs: choose "
                                         "another path")
            if output.folder:
                if path.exists() and not path.is_dir():
                    raise InputError(f"{output.option} {output.path} is a file; give a folder")
            elif path.is_dir():
                raise InputError(f"{output.option} {output.path} is a folder; give a file name")
            name = Path(output.path).name
            if output.suffixes and not name.lower().endswith(output.suffixes):
                endings = output.suffixes[0] if len(output.suffixes) == 1 else f"one of {', '.join(output.suffixes)}"
                raise InputError(f"{output.option} must end in {endings}; got {name}")
            if not path.parent.is_dir():
                raise InputError(f"{output.option} {output.path}: the folder '{path.parent}' does not exist")
            if path in seen:
                raise InputError(f"{output.option} and {seen[path]} name the same file {output.path}")
            seen[path] = output.option

    # -- during the work ----------------------------------------------------------------------

    def staged(self, path: str | os.PathLike) -> Path:
        """Where to write the output that will end up at `path` (one of this set's outputs).

        A folder output's staged folder exists already; write into it.
        """
        final = resolved(path)
        for output in self.outputs:
            if resolved(output.path) == final:
                break
        else:
            raise ValueError(f"{path} is not an output of this run")
        staging = self._staging.get(final.parent)
        if staging is None:
            staging = final.parent / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
            try:
                staging.mkdir()
            except OSError as error:
                raise InputError(f"{output.option} {output.path}: cannot write in '{final.parent}' "
                                 f"({error.strerror or error})") from None
            self._staging[final.parent] = staging
        target = staging / final.name
        if output.folder:
            target.mkdir(exist_ok=True)
        return target

    def part(self, path: str | os.PathLike, inputs: Iterable[tuple[str, Optional[str | os.PathLike]]] = ()
             ) -> "OutputSet":
        """A folder inside one of this set's folder outputs, guarded and committed on its own, as a whole.

        A run that writes many units (a cohort's cases) commits each one when it is done, so a crash or a
        Ctrl-C keeps the finished ones; each unit appears complete or not at all (:attr:`Output.whole`).

        Args:
            path: the unit's folder, inside (or below) a folder output of this set.
            inputs: the unit's own inputs (a case's images), checked with this set's.

        Raises:
            InputError: `path` is not inside a folder output, or would overwrite an input.
        """
        final = resolved(path)
        for output in self.outputs:
            if output.folder and _inside(final, resolved(output.path)):
                return OutputSet([Output(output.option, final, folder=True, whole=True)],
                                 [*((option, source) for option, source in self.inputs), *inputs])
        raise InputError(f"{path} lies in no output folder of this run")

    # -- after the work -----------------------------------------------------------------------

    def _moves(self) -> list[tuple[Path, Path]]:
        moves = []
        for parent, staging in self._staging.items():
            for source in sorted(p for p in staging.rglob("*") if not p.is_dir()):
                moves.append((source, parent / source.relative_to(staging)))
        return moves

    def commit(self) -> list[Path]:
        """Move every staged file into place; all or nothing. Returns the final paths.

        Raises:
            InputError: a move failed (the earlier state is restored) or would replace an input.
        """
        if self.committed:
            return []
        if any(output.whole for output in self.outputs):
            return self._commit_whole()
        moves = self._moves()
        for _, destination in moves:
            for option, source in self.inputs:
                if same_file(resolved(destination), source):
                    self.discard()
                    raise InputError(f"writing {destination} would overwrite the input {option}; nothing was "
                                     "written")
        done: list[tuple[Path, Optional[Path]]] = []  # (destination, where the replaced file was put)
        try:
            for source, destination in moves:
                destination.parent.mkdir(parents=True, exist_ok=True)
                backup = None
                if destination.exists() or destination.is_symlink():
                    if destination.is_dir():
                        raise InputError(f"cannot write {destination}: a folder is in the way")
                    backup = destination.with_name(f"{_BACKUP_PREFIX}{uuid.uuid4().hex}-{destination.name}")
                    os.replace(destination, backup)
                done.append((destination, backup))
                os.replace(source, destination)
        except BaseException as error:
            for destination, backup in reversed(done):
                if destination.exists() and not destination.is_dir():
                    destination.unlink()
                if backup is not None:
                    os.replace(backup, destination)
            self.discard()
            if isinstance(error, OSError):
                raise InputError(f"cannot write {destination}: {error.strerror or error}; nothing was written") from None
            raise
        for _, backup in done:
            if backup is not None:
                backup.unlink(missing_ok=True)
        self.discard()
        self.committed = True
        return [destination for _, destination in moves]

    def _commit_whole(self) -> list[Path]:
        """Each whole folder output: its staged folder renamed into place (an earlier folder there set aside
        first and removed after), all or nothing."""
        done: list[tuple[Path, Optional[Path]]] = []
        try:
            for output in self.outputs:
                final = resolved(output.path)
                staged = self._staging[final.parent] / final.name if final.parent in self._staging else None
                if staged is None or not staged.is_dir():
                    continue
                backup = None
                if final.exists() or final.is_symlink():
                    if not final.is_dir():
                        raise InputError(f"cannot write {final}: a file is in the way")
                    backup = final.with_name(f"{_BACKUP_PREFIX}{uuid.uuid4().hex}-{final.name}")
                    os.replace(final, backup)
                done.append((final, backup))
                os.replace(staged, final)
        except BaseException as error:
            for final, backup in reversed(done):
                if backup is not None:
                    if final.is_dir():
                        shutil.rmtree(final, ignore_errors=True)
                    os.replace(backup, final)
            self.discard()
            if isinstance(error, OSError):
                raise InputError(f"cannot write {final}: {error.strerror or error}; nothing was written") from None
            raise
        for _, backup in done:
            if backup is not None:
                shutil.rmtree(backup, ignore_errors=True)
        self.discard()
        self.committed = True
        return [final for final, _ in done]

    def discard(self) -> None:
        """Remove what was staged (after a failure, a cancel, or the commit)."""
        for staging in self._staging.values():
            shutil.rmtree(staging, ignore_errors=True)
        self._staging.clear()

    def final_paths(self, paths: Sequence[str | os.PathLike]) -> list[Path]:
        """Staged paths mapped to where :meth:`commit` puts them (others unchanged)."""
        out = []
        for path in paths:
            path = Path(path)
            for parent, staging in self._staging.items():
                if path == staging or staging in path.parents:
                    path = parent / path.relative_to(staging)
                    break
            out.append(path)
        return out

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.discard()
