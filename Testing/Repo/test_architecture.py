"""The architecture stays visible: layers in order, no import cycles, no private names across modules.

``MedXAILib``'s top level reads from the types up to the applications (:data:`LAYERS`); a module may
import its own layer and the layers below it, never one above. Every import counts, also one inside a
function: a lazy import still ties two modules together. Across the library and the Slicer module's
packages, a name starting with ``_`` is never imported from another module (a helper that crosses a
module boundary gets a public name). The self-tests at the end prove each rule can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: MedXAILib's top-level modules and packages, lowest layer first (docs/developer-guide.md, "Layers").
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("types", frozenset({"_version", "errors", "volume", "target", "attribution", "registry", "params", "monitor",
                         "provenance", "io", "regions", "allocator"})),
    ("model", frozenset({"model"})),
    ("target resolution", frozenset({"scoring"})),
    ("methods", frozenset({"methods"})),
    ("engine", frozenset({"engine"})),
    ("analyses", frozenset({"analysis", "evaluation", "counterfactual"})),
    ("runs and reports", frozenset({"runs", "report"})),
    ("applications", frozenset({"cli", "demo", "cohort", "__init__", "__main__"})),
)

#: Packages whose modules never import each other's private names.
PRIVATE_NAME_PACKAGES = (ROOT / "MedXAILib", ROOT / "MedXAI" / "MedXAIBridge", ROOT / "MedXAI" / "MedXAIRuntime")


def modules_of(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted module name: (file, is_package)}`` for every .py file under `package_dir`."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def imports_of(module: str, is_package: bool, source: str) -> Iterator[tuple[str, str | None, int]]:
    """``(absolute module, imported name or None, line)`` for every import in `source`, lazy ones too."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield target, alias.name, node.lineno


def import_graph(package_dir: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> modules it imports (inside the package), and the private-name imports found."""
    modules = modules_of(package_dir)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for name, (path, is_package) in modules.items():
        for target, imported, line in imports_of(name, is_package, path.read_text(encoding="utf-8")):
            full = f"{target}.{imported}" if imported and f"{target}.{imported}" in modules else target
            while full and full not in modules:
                full = full.rpartition(".")[0]
            if not full or full == name:
                continue
            graph[name].add(full)
            if imported and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{path.relative_to(package_dir.parent)}:{line}: imports private `{imported}` "
                               f"from {target}")
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Imports from a module to a top-level room of a higher layer, and top-level rooms no layer names."""
    rank = {room: position for position, (_, rooms) in enumerate(layers) for room in rooms}
    names = [title for title, _ in layers]

    def room(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else "__init__"

    problems = []
    for module in sorted(graph):
        if room(module) not in rank:
            problems.append(f"{module}: the top-level room '{room(module)}' is in no layer; add it to LAYERS")
            continue
        for other in sorted(graph[module]):
            if room(other) in rank and rank[room(other)] > rank[room(module)]:
                problems.append(f"{module} ({names[rank[room(module)]]}) imports {other} "
                                f"({names[rank[room(other)]]}), a higher layer")
    return problems


# ------------------------------------------------------------------------------------------------
# The rules on the real tree


def test_medxailib_has_no_import_cycle():
    graph, _ = import_graph(ROOT / "MedXAILib")
    assert not cycles(graph), "\n".join(" <-> ".join(c) for c in cycles(graph))


def test_medxailib_imports_only_its_own_or_lower_layers():
    graph, _ = import_graph(ROOT / "MedXAILib")
    problems = layer_violations(graph)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package", PRIVATE_NAME_PACKAGES, ids=lambda p: p.name)
def test_no_private_name_is_imported_from_another_module(package):
    _, private = import_graph(package)
    assert not private, "\n".join(private)


def test_every_top_level_room_is_in_a_layer():
    rooms = {p.stem if p.suffix == ".py" else p.name for p in (ROOT / "MedXAILib").iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    named = set().union(*(r for _, r in LAYERS))
    assert rooms <= named, f"rooms in no layer: {sorted(rooms - named)}"


# ------------------------------------------------------------------------------------------------
# Each rule can fail


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "MedXAILib"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_a_lazy_import_cycle_is_found(tmp_path):
    package = _package(tmp_path, {
        "__init__.py": "",
        "regions.py": "def f():\n    from .analysis import g\n",
        "analysis/__init__.py": "from ..regions import f\n",
    })
    graph, _ = import_graph(package)
    assert cycles(graph) == [["MedXAILib.analysis", "MedXAILib.regions"]]


def test_an_upward_import_is_a_layer_violation(tmp_path):
    package = _package(tmp_path, {
        "__init__.py": "",
        "scoring.py": "def f():\n    from .analysis.boundary import g\n",
        "analysis/__init__.py": "",
        "analysis/boundary.py": "from ..scoring import f\n",
        "gadgets.py": "",
    })
    graph, _ = import_graph(package)
    problems = layer_violations(graph)
    assert any("MedXAILib.scoring (target resolution) imports MedXAILib.analysis.boundary" in p for p in problems)
    assert any("'gadgets' is in no layer" in p for p in problems)
    assert not any(p.startswith("MedXAILib.analysis.boundary") for p in problems)


def test_a_private_import_is_found_with_its_line(tmp_path):
    package = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "def _helper():\n    pass\n",
        "b.py": "import os\n\nfrom .a import _helper\n",
        "c.py": "from .a import __doc__\n",
    })
    _, private = import_graph(package)
    assert private == ["MedXAILib/b.py:3: imports private `_helper` from MedXAILib.a"]
