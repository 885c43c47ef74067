"""A tiny CMake reader for the extension's CMakeLists.txt files, and the install tree they describe.

Slicer copies into the extension package only the files its CMake lists name (DESIGN.md, section 6).
:func:`python_targets` reads the ``slicerMacroBuildScriptedModule`` / ``ctkMacroCompilePythonScript``
calls; :func:`install_tree` lays out ``<prefix>/lib/Slicer-X.Y/qt-scripted-modules`` as the package
has it, from the lists alone: each scripted module's SCRIPTS and RESOURCES (a ``WITH_SUBDIR`` module
in its own sub-folder, as CTK's ``ctkMacroCompilePythonScript`` copies them) and each
``install(FILES ... DESTINATION ...)``.

The evaluator handles comments, quoted and bracket arguments, ``set`` / ``list(APPEND)`` /
``string(TOUPPER|TOLOWER)``, ``foreach(var items) ... endforeach()`` and ``${VAR}`` references,
which is all these files use. Used by Testing/Repo/test_packaging.py and
Testing/Runtime/test_runtime_install_layout.py.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parents[2]
#: What Slicer sets ``Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR`` to (``lib/Slicer-<major>.<minor>/qt-scripted-modules``).
QTSCRIPTEDMODULES_DIR = "lib/Slicer-5.10/qt-scripted-modules"

BUILD_MACROS = ("slicermacrobuildscriptedmodule", "ctkmacrocompilepythonscript")
MACRO_KEYWORDS = frozenset(
    {
        # slicerMacroBuildScriptedModule
        "NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE",
        # ctkMacroCompilePythonScript
        "TARGET_NAME", "SOURCE_DIR", "DESTINATION_DIR", "INSTALL_DIR", "NO_INSTALL_SUBDIR", "GLOBAL_TARGET",
    }
)


# ------------------------------------------------------------------------------------------------
# A tiny CMake reader


@dataclass
class Command:
    name: str  # lower case, as CMake command names are case-insensitive
    args: list[str]
    line: int


_VAR_REF = re.compile(r"\$\{([A-Za-z0-9_.+-]+)\}")


def _expand(text: str, variables: dict[str, str]) -> str:
    for _ in range(10):  # nested references such as ${${NAME}_SCRIPTS}
        expanded = _VAR_REF.sub(lambda m: variables.get(m.group(1), ""), text)
        if expanded == text:
            break
        text = expanded
    return text


def parse_cmake(text: str) -> list[Command]:
    """Commands of a CMake file, arguments still unexpanded (quoted ones marked by a leading \\0)."""
    commands: list[Command] = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            bracket = re.match(r"#\[(=*)\[", text[i:])
            if bracket:
                closing = f"]{bracket.group(1)}]"
                end = text.find(closing, i)
                end = n if end < 0 else end + len(closing)
            else:
                end = text.find("\n", i)
                end = n if end < 0 else end
            line += text.count("\n", i, end)
            i = end
        else:
            match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", text[i:])
            if not match:
                raise ValueError(f"line {line}: cannot parse CMake near {text[i:i + 40]!r}")
            start_line = line
            line += text.count("\n", i, i + match.end())
            i += match.end()
            args, depth, current = [], 0, None
            while True:
                if i >= n:
                    raise ValueError(f"line {start_line}: unterminated command {match.group(1)}")
                c = text[i]
                if c == '"':
                    end = i + 1
                    while end < n and text[end] != '"':
                        end += 2 if text[end] == "\\" else 1
                    args.append("\0" + text[i + 1 : end])
                    line += text.count("\n", i, end)
                    i = end + 1
                elif c == "#":
                    end = text.find("\n", i)
                    i = n if end < 0 else end
                elif c == "(":
                    depth += 1
                    current = (current or "") + c
                    i += 1
                elif c == ")" and depth == 0:
                    if current is not None:
                        args.append(current)
                    i += 1
                    break
                elif c == ")":
                    depth -= 1
                    current = (current or "") + c
                    i += 1
                elif c.isspace():
                    if current is not None:
                        args.append(current)
                        current = None
                    line += c == "\n"
                    i += 1
                else:
                    current = (current or "") + c
                    i += 1
            commands.append(Command(match.group(1).lower(), args, start_line))
    return commands


def evaluate(commands: Iterable[Command], variables: Optional[dict[str, str]] = None) -> tuple[list[Command], dict[str, str]]:
    """Expand variables (set, list(APPEND), string(TOUPPER/TOLOWER), foreach); return expanded commands."""
    variables = dict(variables or {})
    expanded_commands: list[Command] = []
    _evaluate(list(commands), variables, expanded_commands)
    return expanded_commands, variables


def _evaluate(commands: list[Command], variables: dict[str, str], expanded_commands: list[Command]) -> None:
    i = 0
    while i < len(commands):
        command = commands[i]
        i += 1
        if command.name == "foreach":
            depth, body = 1, []
            while i < len(commands) and depth:
                depth += {"foreach": 1, "endforeach": -1}.get(commands[i].name, 0)
                if depth:
                    body.append(commands[i])
                i += 1
            header = [item for arg in command.args for item in _expand(arg.lstrip("\0"), variables).split(";") if item]
            for item in header[1:]:
                variables[header[0]] = item
                _evaluate(body, variables, expanded_commands)
            continue
        args: list[str] = []
        for arg in command.args:
            if arg.startswith("\0"):
                args.append(_expand(arg[1:], variables))  # quoted: one argument, may hold ';'
            else:
                args += [item for item in _expand(arg, variables).split(";") if item != ""]
        if command.name == "set" and args:
            values = [a for a in args[1:] if a not in {"PARENT_SCOPE"}]
            variables[args[0]] = ";".join(values)
        elif command.name == "list" and len(args) >= 2 and args[0].upper() == "APPEND":
            old = [v for v in variables.get(args[1], "").split(";") if v]
            variables[args[1]] = ";".join(old + args[2:])
        elif command.name == "string" and len(args) == 3 and args[0] in {"TOUPPER", "TOLOWER"}:
            variables[args[2]] = args[1].upper() if args[0] == "TOUPPER" else args[1].lower()
        expanded_commands.append(Command(command.name, args, command.line))


@dataclass
class PythonTarget:
    """The files one build macro ships, as written in its SCRIPTS and RESOURCES."""

    macro: str
    line: int
    options: dict[str, list[str]] = field(default_factory=dict)

    @property
    def scripts(self) -> list[str]:
        # ctkMacroCompilePythonScript appends ".py" to script names without it
        return [s if s.endswith(".py") else f"{s}.py" for s in self.options.get("SCRIPTS", [])]

    @property
    def resources(self) -> list[str]:
        return list(self.options.get("RESOURCES", []))

    def flag(self, name: str) -> bool:
        return name in self.options


def python_targets(text: str, variables: Optional[dict[str, str]] = None) -> list[PythonTarget]:
    """The slicerMacroBuildScriptedModule / ctkMacroCompilePythonScript calls of a CMake file."""
    commands, _ = evaluate(parse_cmake(text), variables or {"CMAKE_CURRENT_SOURCE_DIR": "${CMAKE_CURRENT_SOURCE_DIR}"})
    targets = []
    for command in commands:
        if command.name in BUILD_MACROS:
            target = PythonTarget(command.name, command.line)
            key = None
            for arg in command.args:
                for item in arg.split(";"):
                    if item in MACRO_KEYWORDS:
                        key = item
                        target.options.setdefault(key, [])
                    elif key is not None and item:
                        target.options[key].append(item)
            targets.append(target)
    return targets


# ------------------------------------------------------------------------------------------------
# The install tree


def install_files(cmake_file: Path, qtscripted_dir: str = QTSCRIPTEDMODULES_DIR) -> dict[str, Path]:
    """``{path in the install tree: source file}`` for what `cmake_file` installs.

    A scripted module's SCRIPTS and RESOURCES go to ``<qt-scripted-modules>/<path>`` (``WITH_SUBDIR``:
    ``<qt-scripted-modules>/<source folder name>/<path>``); ``install(FILES f... DESTINATION d)`` puts
    each ``f`` at ``d/<name>``.
    """
    folder = cmake_file.parent
    variables = {"CMAKE_CURRENT_SOURCE_DIR": str(folder), "PROJECT_SOURCE_DIR": str(ROOT),
                 "CMAKE_SOURCE_DIR": str(ROOT), "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR": qtscripted_dir,
                 "Slicer_QTSCRIPTEDMODULES_LIB_DIR": qtscripted_dir, "CMAKE_BINARY_DIR": "<build>"}
    text = cmake_file.read_text(encoding="utf-8")
    files: dict[str, Path] = {}
    for target in python_targets(text, variables):
        prefix = f"{qtscripted_dir}/{folder.name}" if target.flag("WITH_SUBDIR") else qtscripted_dir
        for item in target.scripts + target.resources:
            files[f"{prefix}/{item}"] = folder / item
    commands, _ = evaluate(parse_cmake(text), variables)
    for command in commands:
        if command.name == "install" and command.args[:1] == ["FILES"]:
            sources = command.args[1:command.args.index("DESTINATION")]
            destination = command.args[command.args.index("DESTINATION") + 1]
            for source in sources:
                path = Path(source) if Path(source).is_absolute() else folder / source
                files[f"{destination}/{path.name}"] = path.resolve()
    return files


def install_tree(prefix: Path, cmake_files: Iterable[Path] = (ROOT / "MedXAILib" / "CMakeLists.txt",
                                                             ROOT / "MedXAI" / "CMakeLists.txt")) -> Path:
    """Copy what the extension installs into `prefix`; returns its qt-scripted-modules folder.

    Raises:
        FileNotFoundError: a listed file does not exist (the build would fail the same way).
    """
    for cmake_file in cmake_files:
        for relative, source in install_files(cmake_file).items():
            target = prefix / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return prefix / QTSCRIPTEDMODULES_DIR
