"""Enforce the import rules of DESIGN.md, section 1, by walking the AST of every source file.

| layer                      | must never import                                                   |
|----------------------------|---------------------------------------------------------------------|
| MedXAILib (anywhere)       | slicer, vtk, qt, ctk, MedXAI* (the Slicer module's packages and the |
|                            | web viewer), trame, wslink, aiohttp                                 |
| MedXAILib light core       | at module level: anything but stdlib, numpy and other light modules |
|                            | (so never torch, monai, captum, SimpleITK, scipy)                   |
| MedXAI/MedXAIBridge/**     | qt, ctk, torch (anywhere); slicer.app / slicer.modules /            |
|                            | slicer.mrmlScene (take the scene from the node)                     |
| MedXAI/MedXAI.py,          | at module level: torch, monai, captum, or a MedXAILib module        |
| MedXAI/MedXAIRuntime/**    | outside the light core (Slicer loads these at start-up, before the  |
|                            | heavy dependencies are installed)                                   |
| MedXAIViewer/** (web)      | qt, ctk, torch, monai, captum, MedXAIRuntime, the MedXAI module;    |
|                            | slicer.app / slicer.modules / slicer.mrmlScene (ADR 0003)           |
| MedXAIViewer/command.py    | at module level: anything but stdlib and MedXAILib (``medxai``      |
|                            | loads it through its entry point, with or without the viewer extra) |
| MedXAIViewer/folder.py     | slicer, vtk, trame, wslink, aiohttp (it reads headers only)         |

"Module level" means executed on import: everything outside function bodies, except imports
guarded by ``if TYPE_CHECKING:``. The light core is :data:`LIGHT_MODULES`; a module that should be
importable without torch is added there, and then it is checked like the rest of the core.
A light module may import another MedXAILib module at module level only if that one is light too,
so the whole import closure of the light core stays light; a subprocess test confirms it by
importing the light core with torch, monai, captum, SimpleITK and scipy blocked.

Each checker is a pure function of a source string, and the self-tests at the end feed it
forbidden code to prove every rule can fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB_NAME = "MedXAILib"
LIB_DIR = ROOT / LIB_NAME
MODULE_DIR = ROOT / "MedXAI"
VIEWER_DIR = ROOT / "MedXAIViewer"

# MedXAILib modules that must import with stdlib + numpy only (relative to MedXAILib; "__init__"
# is the package itself, "pkg" is pkg/__init__.py, "pkg.*" is every module of the sub-package).
# Entries that do not exist (yet) are ignored.
LIGHT_MODULES: tuple[str, ...] = (
    "__init__",
    "_version",
    "allocator",  # imported by the run worker's entry point (runs is light)
    "errors",
    "volume",
    "target",
    "attribution",
    "registry",
    "params",
    "monitor",
    "geometry",
    "io",  # io/__init__.py: image functions load lazily, on first use
    "io.atomic",
    "io.jsondata",
    "io.checksums",
    "model",  # model/__init__.py: its public names load on first use
    "model.folders",  # which folders are nnU-Net / TotalSegmentator models: the module offers their options first
    "runs",  # the run protocol: the Slicer module builds requests at start-up, before torch exists
    "runs.*",
    "methods",  # methods/__init__.py: the method registry, populated by the catalog below
    "methods.catalog",  # catalog/__init__.py
    "methods.catalog.*",  # one module per family: parameter dataclasses and registry entries
    "counterfactual",  # the generator registry, goals and report: listed by the GUI before torch exists
    "counterfactual.catalog",
    "counterfactual.goals",
    "counterfactual.report",
    "evaluation",  # the metric registry: listed by the GUI before torch exists
    "evaluation.metrics",
    "evaluation.compare",
)

# Third-party packages that the light core must not load (a GUI lists methods before they exist).
HEAVY_PACKAGES = frozenset({"torch", "monai", "captum", "SimpleITK", "scipy"})
# What the light core may import at module level besides the standard library and itself.
LIGHT_ALLOWED_THIRD_PARTY = frozenset({"numpy"})
# What MedXAI.py and MedXAIRuntime must not import while Slicer loads the module.
APP_LOAD_FORBIDDEN = frozenset({"torch", "monai", "captum"})
# Slicer application / GUI bindings that the library must never touch.
SLICER_PACKAGES = frozenset({"slicer", "vtk", "vtkmodules", "qt", "ctk", "PythonQt", "mrml"})
SLICER_PACKAGE_PREFIXES = ("vtk", "qSlicer", "qMRML")  # vtkITK, vtkSegmentationCorePython, ...
QT_PACKAGES = frozenset({"qt", "ctk", "PythonQt"})
QT_PACKAGE_PREFIXES = ("qSlicer", "qMRML")  # PythonQt-wrapped Slicer widget libraries
BRIDGE_FORBIDDEN_SLICER_ATTRIBUTES = frozenset({"app", "modules", "mrmlScene"})
# The web viewer's server stack: only MedXAIViewer may import it.
WEB_PACKAGES = frozenset({"wslink", "aiohttp"})
WEB_PACKAGE_PREFIXES = ("trame",)
# The Slicer application's own packages, which the web viewer (running without Slicer) must not import.
SLICER_APP_PACKAGES = frozenset({"MedXAIRuntime", "MedXAI"})

STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


# ------------------------------------------------------------------------------------------------
# Collecting imports


@dataclass(frozen=True)
class ImportRef:
    """One import statement (or importlib.import_module / __import__ call with a literal name)."""

    module: str  # dotted name as written, without the leading dots of a relative import
    names: tuple[str, ...]  # imported names of a ``from ... import``; empty for ``import x``
    level: int  # number of leading dots (0 = absolute)
    lineno: int
    module_level: bool  # executed when the file is imported
    type_checking: bool  # inside ``if TYPE_CHECKING:``
    is_from: bool
    dynamic: bool = False

    @property
    def top(self) -> str:
        return self.module.split(".")[0] if self.level == 0 else ""

    def describe(self) -> str:
        dots = "." * self.level
        if self.dynamic:
            return f"import_module({dots}{self.module!r})"
        if self.is_from:
            return f"from {dots}{self.module} import {', '.join(self.names)}"
        return f"import {self.module}"


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _dynamic_import_name(node: ast.Call) -> Optional[str]:
    func = node.func
    is_import_call = (isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )
    if is_import_call and node.args:
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def collect_imports(tree: ast.AST) -> list[ImportRef]:
    """Every import in `tree`, with whether it runs at import time."""
    found: list[ImportRef] = []

    def visit(node: ast.AST, in_function: bool, in_tc: bool) -> None:
        module_level = not in_function and not in_tc
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(ImportRef(alias.name, (), 0, node.lineno, module_level, in_tc, False))
        elif isinstance(node, ast.ImportFrom):
            names = tuple(alias.name for alias in node.names)
            found.append(
                ImportRef(node.module or "", names, node.level, node.lineno, module_level, in_tc, True)
            )
        elif isinstance(node, ast.Call):
            name = _dynamic_import_name(node)
            if name is not None:
                level = len(name) - len(name.lstrip("."))
                found.append(
                    ImportRef(name.lstrip("."), (), level, node.lineno, module_level, in_tc, False, True)
                )
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.iter_child_nodes(node):
                visit(child, True, in_tc)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            visit(node.test, in_function, in_tc)
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, in_tc)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, in_function, in_tc)

    visit(tree, False, False)
    return found


# ------------------------------------------------------------------------------------------------
# Module names of MedXAILib


def module_name_of(relpath: str) -> str:
    """Dotted module name of a repo-relative path: "MedXAILib/methods/__init__.py" -> "MedXAILib.methods"."""
    parts = list(Path(relpath).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(relpath: str) -> str:
    name = module_name_of(relpath)
    return name if Path(relpath).name == "__init__.py" else name.rpartition(".")[0]


def resolve(ref: ImportRef, relpath: str) -> Optional[str]:
    """Absolute dotted name of the module an import names (None: relative beyond the top level)."""
    if ref.level == 0:
        return ref.module
    base = _package_of(relpath).split(".")
    if ref.level - 1 >= len(base):
        return None
    base = base[: len(base) - (ref.level - 1)]
    return ".".join(base + ([ref.module] if ref.module else []))


def repo_modules(lib_dir: Path = LIB_DIR) -> frozenset[str]:
    """Dotted names of every module and package of MedXAILib on disk."""
    names = set()
    for path in _python_files(lib_dir):
        names.add(module_name_of(path.relative_to(lib_dir.parent).as_posix()))
    return frozenset(names)


def imported_modules(ref: ImportRef, relpath: str, existing: Iterable[str]) -> list[str]:
    """The modules whose code runs for `ref`: each package on the way, and imported submodules."""
    target = resolve(ref, relpath)
    if target is None:
        return []
    parts = target.split(".")
    chain = [".".join(parts[: i + 1]) for i in range(len(parts))]
    if ref.is_from:
        existing = set(existing)
        chain += [f"{target}.{name}" for name in ref.names if f"{target}.{name}" in existing]
    return chain


def light_module_names(entries: Iterable[str] = LIGHT_MODULES, existing: Optional[Iterable[str]] = None) -> frozenset[str]:
    """Absolute dotted names of the light core (entries that exist, when `existing` is given)."""
    existing = set(repo_modules() if existing is None else existing)
    names = set()
    for entry in entries:
        if entry == "__init__":
            names.add(LIB_NAME)
        elif entry.endswith(".*"):
            prefix = f"{LIB_NAME}.{entry[:-2]}"
            names.add(prefix)
            names.update(name for name in existing if name.startswith(prefix + "."))
        else:
            names.add(f"{LIB_NAME}.{entry}")
    return frozenset(name for name in names if name in existing)


# ------------------------------------------------------------------------------------------------
# Checkers: each returns "path:line: message" strings, empty when the source obeys the rule


def _matches(top: str, names: frozenset[str], prefixes: tuple[str, ...]) -> bool:
    return top in names or top.startswith(prefixes)


def _is_module_package(top: str) -> bool:
    return top.startswith("MedXAI") and top != LIB_NAME


def check_library_source(source: str, relpath: str) -> list[str]:
    """MedXAILib never imports slicer, vtk, qt, ctk or the Slicer module's packages, anywhere."""
    problems = []
    for ref in collect_imports(ast.parse(source, relpath)):
        if _matches(ref.top, SLICER_PACKAGES, SLICER_PACKAGE_PREFIXES):
            problems.append(
                f"{relpath}:{ref.lineno}: `{ref.describe()}`: MedXAILib must not import Slicer, VTK or Qt "
                "(it is a pure library; MRML conversion belongs in MedXAI/MedXAIBridge)"
            )
        elif _is_module_package(ref.top):
            problems.append(
                f"{relpath}:{ref.lineno}: `{ref.describe()}`: MedXAILib must not import the Slicer module "
                "or the web viewer (dependencies point from MedXAI and MedXAIViewer to MedXAILib, never back; "
                "the viewer's command is found through the medxai.commands entry point)"
            )
        elif _matches(ref.top, WEB_PACKAGES, WEB_PACKAGE_PREFIXES):
            problems.append(
                f"{relpath}:{ref.lineno}: `{ref.describe()}`: MedXAILib must not import the web viewer's "
                "server stack (trame, wslink, aiohttp belong in MedXAIViewer)"
            )
    return problems


def _non_light_medxailib(ref: ImportRef, relpath: str, light: frozenset[str], existing: frozenset[str]) -> list[str]:
    return [
        name
        for name in imported_modules(ref, relpath, existing)
        if (name == LIB_NAME or name.startswith(LIB_NAME + ".")) and name not in light
    ]


def _module_level_imports(
    source: str, relpath: str, light: Optional[frozenset[str]], existing: Optional[frozenset[str]]
) -> tuple[list[tuple[ImportRef, str]], frozenset[str], frozenset[str]]:
    """The imports that run when `source` is imported, each with its "path:line: `import`" prefix,
    and the light core and the existing modules (computed when not given)."""
    existing = repo_modules() if existing is None else existing
    light = light_module_names(existing=existing) if light is None else light
    refs = [(ref, f"{relpath}:{ref.lineno}: `{ref.describe()}`")
            for ref in collect_imports(ast.parse(source, relpath)) if ref.module_level]
    return refs, light, existing


def check_light_source(
    source: str,
    relpath: str,
    light: Optional[frozenset[str]] = None,
    existing: Optional[frozenset[str]] = None,
) -> list[str]:
    """At module level a light-core module imports only stdlib, numpy and other light modules."""
    refs, light, existing = _module_level_imports(source, relpath, light, existing)
    problems = []
    for ref, where in refs:
        if ref.level == 0 and ref.top in HEAVY_PACKAGES:
            problems.append(
                f"{where}: the light core must import without {ref.top} (the Slicer GUI lists methods "
                "before it is installed); import it inside the function that needs it"
            )
            continue
        if ref.level == 0 and ref.top != LIB_NAME and ref.top not in STDLIB | LIGHT_ALLOWED_THIRD_PARTY:
            problems.append(
                f"{where}: the light core may import only the standard library and numpy at module "
                "level; import it inside the function that needs it"
            )
            continue
        for name in _non_light_medxailib(ref, relpath, light, existing):
            problems.append(
                f"{where}: loads {name}, which is not in the light core; import it inside a function, "
                "or add it to LIGHT_MODULES in Testing/Repo/test_import_rules.py if it is light"
            )
    return problems


def _slicer_aliases(tree: ast.AST) -> set[str]:
    aliases = {"slicer"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "slicer" or (alias.name.startswith("slicer.") and alias.asname is None):
                    aliases.add(alias.asname or "slicer")
    return aliases


def check_bridge_source(source: str, relpath: str) -> list[str]:
    """MedXAIBridge is Qt-free and torch-free, and never reaches for the application or its scene."""
    tree = ast.parse(source, relpath)
    problems = []
    for ref in collect_imports(tree):
        where = f"{relpath}:{ref.lineno}: `{ref.describe()}`"
        if _matches(ref.top, QT_PACKAGES, QT_PACKAGE_PREFIXES):
            problems.append(f"{where}: the Bridge is Qt-free (it runs under slicer-core); GUI code goes in MedXAI.py or MedXAIRuntime")
        elif ref.top == "torch":
            problems.append(f"{where}: the Bridge must not import torch; MedXAILib does the maths")
        elif ref.top == "slicer" and ref.is_from and ref.module == "slicer":
            for name in sorted(set(ref.names) & BRIDGE_FORBIDDEN_SLICER_ATTRIBUTES):
                problems.append(f"{where}: the Bridge must not use slicer.{name} (take the scene from the node)")
    aliases = _slicer_aliases(tree)
    for node in ast.walk(tree):
        attr = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            attr = node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in aliases
            and isinstance(node.args[1], ast.Constant)
        ):
            attr = node.args[1].value
        if attr in BRIDGE_FORBIDDEN_SLICER_ATTRIBUTES:
            problems.append(
                f"{relpath}:{node.lineno}: slicer.{attr}: the Bridge must not use the application or the "
                "global scene (take the scene from the node: node.GetScene())"
            )
    return problems


def check_app_load_source(
    source: str,
    relpath: str,
    light: Optional[frozenset[str]] = None,
    existing: Optional[frozenset[str]] = None,
) -> list[str]:
    """MedXAI.py and MedXAIRuntime load without torch/monai (Slicer imports them at start-up)."""
    refs, light, existing = _module_level_imports(source, relpath, light, existing)
    problems = []
    for ref, where in refs:
        if ref.level == 0 and ref.top in APP_LOAD_FORBIDDEN:
            problems.append(
                f"{where}: Slicer imports this file at start-up, before {ref.top} is installed; import it "
                "inside the function that needs it"
            )
        elif ref.level == 0 and ref.top == LIB_NAME:
            for name in _non_light_medxailib(ref, relpath, light, existing):
                problems.append(
                    f"{where}: loads {name}, which is outside MedXAILib's light core (it may import "
                    "torch/monai); import it inside the function that needs it"
                )
    return problems


def check_viewer_source(source: str, relpath: str) -> list[str]:
    """MedXAIViewer runs without Slicer: no Qt, no Slicer application or module code, no model maths."""
    tree = ast.parse(source, relpath)
    problems = []
    for ref in collect_imports(tree):
        where = f"{relpath}:{ref.lineno}: `{ref.describe()}`"
        if _matches(ref.top, QT_PACKAGES, QT_PACKAGE_PREFIXES):
            problems.append(f"{where}: the web viewer runs without Qt (trame draws the page)")
        elif ref.top in APP_LOAD_FORBIDDEN:
            problems.append(f"{where}: the web viewer shows results; it never runs a model (no {ref.top})")
        elif ref.top in SLICER_APP_PACKAGES:
            problems.append(f"{where}: the web viewer runs without the Slicer application; it reuses "
                            "MedXAIBridge only")
    aliases = _slicer_aliases(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr in BRIDGE_FORBIDDEN_SLICER_ATTRIBUTES):
            problems.append(f"{relpath}:{node.lineno}: slicer.{node.attr}: there is no Slicer application or "
                            "global scene in the web viewer (use its own scene)")
    return problems


def check_viewer_command_source(source: str, relpath: str) -> list[str]:
    """The ``medxai view`` module loads with the standard library and MedXAILib only (heavy imports in run)."""
    problems = []
    for ref in collect_imports(ast.parse(source, relpath)):
        if ref.module_level and ref.level == 0 and ref.top not in STDLIB and ref.top != LIB_NAME:
            problems.append(f"{relpath}:{ref.lineno}: `{ref.describe()}`: `medxai` loads this module for every "
                            "command, with or without the viewer extra; import it inside run()")
    return problems


def check_viewer_pure_source(source: str, relpath: str) -> list[str]:
    """The folder reader needs neither slicer-core nor trame (it reads file headers only)."""
    problems = []
    for ref in collect_imports(ast.parse(source, relpath)):
        if _matches(ref.top, SLICER_PACKAGES, SLICER_PACKAGE_PREFIXES) or _matches(
                ref.top, WEB_PACKAGES, WEB_PACKAGE_PREFIXES) or ref.top == "MedXAIBridge":
            problems.append(f"{relpath}:{ref.lineno}: `{ref.describe()}`: the folder reader must work without "
                            "slicer-core and trame")
    return problems


# ------------------------------------------------------------------------------------------------
# The repository


def _python_files(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path


def _relpath(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _run(files: Iterable[Path], checker: Callable[[str, str], list[str]]) -> list[str]:
    problems = []
    for path in files:
        problems += checker(path.read_text(encoding="utf-8"), _relpath(path))
    return problems


def _report(problems: list[str]) -> str:
    return "\n" + "\n".join(problems)


def _module_path(name: str) -> Optional[Path]:
    relative = Path(*name.split("."))
    for candidate in (ROOT / relative / "__init__.py", (ROOT / relative).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def test_layout_is_where_the_rules_expect_it():
    assert (LIB_DIR / "errors.py").is_file() and (LIB_DIR / "volume.py").is_file(), LIB_DIR
    assert light_module_names() >= {f"{LIB_NAME}.errors", f"{LIB_NAME}.volume"}


def test_every_source_file_parses():
    problems = []
    for path in [*_python_files(LIB_DIR), *_python_files(MODULE_DIR)]:
        try:
            ast.parse(path.read_text(encoding="utf-8"), _relpath(path))
        except SyntaxError as error:
            problems.append(f"{_relpath(path)}:{error.lineno}: {error.msg}")
    assert not problems, _report(problems)


def test_library_never_imports_slicer_qt_or_the_module():
    problems = _run(_python_files(LIB_DIR), check_library_source)
    assert not problems, _report(problems)


def test_light_core_imports_only_stdlib_numpy_and_light_modules():
    files = [_module_path(name) for name in sorted(light_module_names())]
    problems = _run([path for path in files if path is not None], check_light_source)
    assert not problems, _report(problems)


def test_bridge_is_qt_free_torch_free_and_scene_free():
    problems = _run(_python_files(MODULE_DIR / "MedXAIBridge"), check_bridge_source)
    assert not problems, _report(problems)


def test_module_and_runtime_load_without_torch():
    files = [MODULE_DIR / "MedXAI.py", *_python_files(MODULE_DIR / "MedXAIRuntime")]
    problems = _run([path for path in files if path.is_file()], check_app_load_source)
    assert not problems, _report(problems)


def test_viewer_never_imports_qt_torch_or_the_slicer_application():
    problems = _run(_python_files(VIEWER_DIR), check_viewer_source)
    assert not problems, _report(problems)


def test_viewer_command_loads_with_stdlib_and_medxailib_only():
    assert (VIEWER_DIR / "command.py").is_file()
    problems = _run([VIEWER_DIR / "command.py"], check_viewer_command_source)
    assert not problems, _report(problems)


def test_viewer_folder_reader_needs_no_slicer_core_or_trame():
    assert (VIEWER_DIR / "folder.py").is_file()
    problems = _run([VIEWER_DIR / "folder.py"], check_viewer_pure_source)
    assert not problems, _report(problems)


BLOCKING_IMPORTER = """
import importlib, importlib.abc, json, sys

BLOCKED = set(json.loads(sys.argv[1]))
attempts = []


class BlockHeavyPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            attempts.append(fullname)
            raise ModuleNotFoundError(f"blocked by test_import_rules: {fullname}", name=fullname)
        return None


sys.meta_path.insert(0, BlockHeavyPackages())
sys.path.insert(0, sys.argv[2])
for name in json.loads(sys.argv[3]):
    importlib.import_module(name)
print(json.dumps(attempts))
"""


def import_with_heavy_packages_blocked(modules: list[str], blocked: Iterable[str] = HEAVY_PACKAGES) -> subprocess.CompletedProcess:
    """Import `modules` in a fresh interpreter in which the `blocked` packages cannot be found."""
    return subprocess.run(
        [sys.executable, "-c", BLOCKING_IMPORTER, json.dumps(sorted(blocked)), str(ROOT), json.dumps(modules)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_light_core_imports_with_heavy_packages_blocked():
    # Only modules whose file exists are imported: the library is still being written.
    wanted = [LIB_NAME] + [f"{LIB_NAME}.{name}" for name in ("registry", "params", "monitor", "volume")]
    modules = [name for name in dict.fromkeys(wanted + sorted(light_module_names())) if _module_path(name)]
    result = import_with_heavy_packages_blocked(modules)
    assert result.returncode == 0, f"importing {modules} without {sorted(HEAVY_PACKAGES)} failed:\n{result.stderr}"
    attempts = json.loads(result.stdout.strip().splitlines()[-1])
    assert attempts == [], f"the light core tried to import {attempts} (even if it caught the ImportError)"


# ------------------------------------------------------------------------------------------------
# Self-tests: every rule can fail


def _src(code: str) -> str:
    return textwrap.dedent(code).lstrip()


EXISTING = frozenset({"MedXAILib", "MedXAILib.errors", "MedXAILib.volume", "MedXAILib.engine", "MedXAILib.methods",
                      "MedXAILib.methods.catalog", "MedXAILib.methods.gradient"})
LIGHT = frozenset({"MedXAILib", "MedXAILib.errors", "MedXAILib.volume", "MedXAILib.methods", "MedXAILib.methods.catalog"})


@pytest.mark.parametrize(
    "source",
    [
        "import slicer\n",
        "def f():\n    from slicer.util import arrayFromVolume\n",
        "import vtk\n",
        "from vtkmodules.vtkCommonCore import vtkObject\n",
        "import qt\n",
        "import ctk\n",
        "if TYPE_CHECKING:\n    import slicer\n",
        "import MedXAI\n",
        "from MedXAIBridge import volumes\n",
        "import importlib\nimportlib.import_module('slicer')\n",
    ],
)
def test_library_checker_reports_forbidden_imports(source):
    assert check_library_source(source, "MedXAILib/example.py")


@pytest.mark.parametrize(
    "source",
    [
        "import torch\n",
        "import torch.nn.functional as F\n",
        "from monai.networks import nets\n",
        "import captum\n",
        "import SimpleITK as sitk\n",
        "from scipy import ndimage\n",
        "class A:\n    import torch\n",
        "try:\n    import torch\nexcept ImportError:\n    torch = None\n",
        "import pandas\n",
        "from .engine import explain\n",
        "from . import engine\n",
        "from MedXAILib.methods import gradient\n",
        "import MedXAILib.engine\n",
        "__import__('torch')\n",
    ],
)
def test_light_checker_reports_heavy_or_non_light_imports(source):
    assert check_light_source(source, "MedXAILib/registry.py", LIGHT, EXISTING)


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations\nimport dataclasses, json\nimport numpy as np\n",
        "from .errors import InputError\nfrom . import volume\nfrom .methods import catalog\n",
        "def f():\n    import torch\n    from .engine import explain\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n",
        "import typing\nif typing.TYPE_CHECKING:\n    from .engine import explain\n",
        "f = lambda: __import__('torch')\n",
    ],
)
def test_light_checker_accepts_stdlib_numpy_light_and_lazy_imports(source):
    assert check_light_source(source, "MedXAILib/registry.py", LIGHT, EXISTING) == []


def test_light_checker_resolves_relative_imports_from_subpackages():
    source = "from ..engine import explain\n"
    assert check_light_source(source, "MedXAILib/methods/catalog.py", LIGHT, EXISTING)
    assert check_light_source("from . import gradient\n", "MedXAILib/methods/__init__.py", LIGHT, EXISTING)
    assert check_light_source("from ..errors import InputError\n", "MedXAILib/methods/catalog.py", LIGHT, EXISTING) == []


def test_light_module_names_expand_wildcards_and_skip_missing():
    existing = frozenset({"MedXAILib", "MedXAILib.errors", "MedXAILib.stats", "MedXAILib.stats.base"})
    names = light_module_names(("__init__", "errors", "geometry", "stats.*"), existing)
    assert names == existing


@pytest.mark.parametrize(
    "source",
    [
        "import qt\n",
        "def f():\n    import ctk\n",
        "import qSlicerSegmentationsModuleWidgetsPythonQt\n",
        "def f():\n    import torch\n",
        "import slicer\nscene = slicer.mrmlScene\n",
        "import slicer\ndef f():\n    return slicer.app.applicationVersion\n",
        "import slicer\nlogic = slicer.modules.volumes.logic()\n",
        "import slicer as sl\nsl.mrmlScene.AddNewNodeByClass('vtkMRMLScalarVolumeNode')\n",
        "import slicer.util\nslicer.app.processEvents()\n",
        "from slicer import mrmlScene\n",
        "import slicer\ngetattr(slicer, 'app')\n",
    ],
)
def test_bridge_checker_reports_qt_torch_and_global_scene(source):
    assert check_bridge_source(source, "MedXAI/MedXAIBridge/volumes.py")


def test_bridge_checker_accepts_mrml_vtk_numpy_and_the_library():
    source = _src(
        """
        import numpy as np
        import vtk
        import slicer
        from slicer.util import arrayFromVolume, updateVolumeFromArray
        from MedXAILib.volume import ImageVolume

        def toNode(node):
            scene = node.GetScene()
            return scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"), slicer.vtkMRMLScalarVolumeNode
        """
    )
    assert check_bridge_source(source, "MedXAI/MedXAIBridge/volumes.py") == []


@pytest.mark.parametrize(
    "source",
    [
        "import torch\n",
        "import monai\n",
        "from monai.networks.nets import UNet\n",
        "from MedXAILib.engine import explain\n",
        "import MedXAILib.engine\n",
        "from MedXAILib.methods import gradient\n",
    ],
)
def test_app_checker_reports_heavy_imports_at_load(source):
    assert check_app_load_source(source, "MedXAI/MedXAI.py", LIGHT, EXISTING)


def test_app_checker_accepts_qt_slicer_light_core_and_lazy_heavy_imports():
    source = _src(
        """
        import qt
        import ctk
        import slicer
        import MedXAILib
        from MedXAILib.volume import ImageVolume
        from MedXAILib import methods

        def onApplyButton(self):
            import torch
            from MedXAILib.engine import explain
        """
    )
    assert check_app_load_source(source, "MedXAI/MedXAIRuntime/runners.py", LIGHT, EXISTING) == []


@pytest.mark.parametrize(
    "source",
    [
        "import MedXAIViewer\n",
        "def f():\n    from MedXAIViewer.app import ViewerApp\n",
        "import trame\n",
        "from trame_slicer.core import SlicerApp\n",
        "def f():\n    import wslink\n",
        "from aiohttp import web\n",
    ],
)
def test_library_checker_reports_the_web_viewer_and_its_stack(source):
    assert check_library_source(source, "MedXAILib/cli/main.py")


@pytest.mark.parametrize(
    "source",
    [
        "import qt\n",
        "def f():\n    import torch\n",
        "from monai.networks import nets\n",
        "import MedXAIRuntime.jobs\n",
        "from MedXAI import MedXAILogic\n",
        "import slicer\nslicer.mrmlScene.Clear()\n",
        "import slicer\ndef f():\n    return slicer.app\n",
    ],
)
def test_viewer_checker_reports_qt_models_and_the_slicer_application(source):
    assert check_viewer_source(source, "MedXAIViewer/app.py")


def test_viewer_checker_accepts_slicer_core_trame_and_the_bridge():
    source = _src(
        """
        import slicer
        from trame.app import get_server
        from trame_slicer.core import SlicerApp
        from MedXAIBridge import display
        from MedXAILib.io import read_image

        def f(scene):
            return slicer.vtkMRMLScalarVolumeNode, scene
        """
    )
    assert check_viewer_source(source, "MedXAIViewer/app.py") == []


@pytest.mark.parametrize(
    "source", ["import slicer\n", "from trame.app import get_server\n", "import numpy\n", "import SimpleITK\n"])
def test_viewer_command_checker_reports_heavy_imports_at_load(source):
    assert check_viewer_command_source(source, "MedXAIViewer/command.py")


def test_viewer_command_checker_accepts_stdlib_medxailib_and_lazy_imports():
    source = "import argparse\nfrom MedXAILib.cli import common\ndef run(args):\n    from .app import ViewerApp\n"
    assert check_viewer_command_source(source, "MedXAIViewer/command.py") == []


@pytest.mark.parametrize(
    "source", ["import slicer\n", "def f():\n    import vtk\n", "import trame_slicer\n", "import MedXAIBridge\n"])
def test_viewer_pure_checker_reports_slicer_and_trame(source):
    assert check_viewer_pure_source(source, "MedXAIViewer/folder.py")
    assert check_viewer_pure_source("import csv\nimport SimpleITK as sitk\n", "MedXAIViewer/folder.py") == []


def test_blocking_importer_blocks_heavy_packages():
    result = import_with_heavy_packages_blocked(["json", "sqlite3"], blocked=["sqlite3"])
    assert result.returncode != 0 and "blocked by test_import_rules: sqlite3" in result.stderr
    result = import_with_heavy_packages_blocked(["json"], blocked=["sqlite3"])
    assert result.returncode == 0 and json.loads(result.stdout) == []
    # An attempt that the importing code catches (optional-dependency pattern) is still reported.
    result = import_with_heavy_packages_blocked(["decimal"], blocked=["_decimal"])
    assert result.returncode == 0 and json.loads(result.stdout) == ["_decimal"]


# ------------------------------------------------------------------------------------------------
# Ray: MedXAILib/cohort only, and only when a cohort runs (DESIGN.md, section 7)

COHORT_DIR = LIB_DIR / "cohort"


def check_ray_source(source: str, relpath: str) -> list[str]:
    """Ray is imported only inside MedXAILib/cohort, and there only inside functions (when the command runs)."""
    problems = []
    for ref in collect_imports(ast.parse(source, relpath)):
        if ref.top != "ray":
            continue
        if not relpath.startswith(f"{LIB_NAME}/cohort/"):
            problems.append(f"{relpath}:{ref.lineno}: `{ref.describe()}`: only MedXAILib/cohort may import Ray")
        elif ref.module_level:
            problems.append(f"{relpath}:{ref.lineno}: `{ref.describe()}`: Ray loads only when a cohort runs; "
                            "import it inside the function that needs it")
    return problems


def test_ray_is_imported_only_by_the_cohort_package_and_lazily():
    assert COHORT_DIR.is_dir()
    files = [*_python_files(LIB_DIR), *_python_files(MODULE_DIR), *_python_files(VIEWER_DIR)]
    problems = _run(files, check_ray_source)
    assert not problems, _report(problems)


@pytest.mark.parametrize("source, relpath", [
    ("import ray\n", "MedXAILib/cohort/executors.py"),
    ("from ray.util import ActorPool\n", "MedXAILib/cohort/driver.py"),
    ("def f():\n    import ray\n", "MedXAILib/engine.py"),
    ("def f():\n    import ray\n", "MedXAI/MedXAIRuntime/jobs.py"),
])
def test_ray_checker_reports_ray_outside_the_cohort_or_at_import(source, relpath):
    assert check_ray_source(source, relpath)


def test_ray_checker_accepts_a_lazy_import_in_the_cohort():
    assert not check_ray_source("def f():\n    import ray\n    return ray\n", "MedXAILib/cohort/executors.py")
