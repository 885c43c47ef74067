"""Every MRML factory call in the Slicer module releases the reference it is handed.

``vtkMRMLScene.CreateNodeByClass`` and ``GetNodesByClass`` return an object with a reference owned
by the caller (they are not marked ``VTK_NEWINSTANCE``); in Python that reference must be dropped
with ``UnRegister(None)`` or the object leaks (Slicer developer guide, "Memory management", v5.10.0
``Docs/developer_guide/advanced_topics.md``). The rule checked here: each call's result is assigned
to a name, and the same function calls ``<name>.UnRegister(...)`` after it. MedXAI routes both
factories through ``MedXAIBridge/nodes.py``; the check keeps any new call site honest. The
self-tests at the end prove it can fail. (Testing/Bridge/test_ownership.py measures the leak itself.)
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FACTORIES = frozenset({"CreateNodeByClass", "GetNodesByClass"})


def ownership_problems(source: str, where: str) -> list[str]:
    """Factory calls in `source` whose reference is not released in the same function."""
    tree = ast.parse(source)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    problems = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in FACTORIES):
            continue
        factory = call.func.attr
        parent = parents.get(call)
        scope = parent
        while scope is not None and not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
            scope = parents.get(scope)
        target = None
        if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name):
            target = parent.targets[0].id
        if target is None:
            problems.append(f"{where}:{call.lineno}: the result of {factory} must be assigned to a name and "
                            "released with <name>.UnRegister(None) (or use MedXAIBridge.nodes)")
            continue
        released = any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "UnRegister"
            and isinstance(n.func.value, ast.Name) and n.func.value.id == target and n.lineno >= call.lineno
            for n in ast.walk(scope)
        )
        if not released:
            problems.append(f"{where}:{call.lineno}: {target} = ...{factory}(...) is never released with "
                            f"{target}.UnRegister(None): the object leaks (use MedXAIBridge.nodes)")
    return problems


def test_every_factory_call_in_the_module_releases_its_reference():
    problems = []
    for path in sorted([*(ROOT / "MedXAI").rglob("*.py"), *(ROOT / "MedXAIViewer").rglob("*.py")]):
        problems += ownership_problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems, "\n" + "\n".join(problems)


def test_the_factories_are_only_called_in_the_bridge_helper():
    callers = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "MedXAI").rglob("*.py"), *(ROOT / "MedXAIViewer").rglob("*.py")]
                     if any(f"{name}(" in p.read_text(encoding="utf-8") for name in FACTORIES))
    assert callers == ["MedXAI/MedXAIBridge/nodes.py"], callers


# ------------------------------------------------------------------------------------------------
# Self-tests


def test_check_accepts_a_released_node_and_collection():
    source = (
        "def f(scene):\n"
        "    node = scene.CreateNodeByClass('vtkMRMLScalarVolumeNode')\n"
        "    node.UnRegister(None)\n"
        "    nodes = scene.GetNodesByClass('vtkMRMLModelNode')\n"
        "    nodes.UnRegister(scene)\n"
        "    return node, nodes\n"
    )
    assert ownership_problems(source, "x.py") == []


def test_check_flags_a_node_that_is_never_released():
    source = "def f(scene):\n    node = scene.CreateNodeByClass('vtkMRMLScalarVolumeNode')\n    scene.AddNode(node)\n"
    [problem] = ownership_problems(source, "x.py")
    assert "x.py:2" in problem and "never released" in problem


def test_check_flags_an_unassigned_collection_and_a_release_in_another_function():
    source = (
        "def f(scene):\n"
        "    for n in scene.GetNodesByClass('vtkMRMLModelNode'):\n"
        "        pass\n"
        "def g(scene):\n"
        "    nodes = scene.GetNodesByClass('vtkMRMLModelNode')\n"
        "def h(nodes):\n"
        "    nodes.UnRegister(None)\n"
    )
    problems = ownership_problems(source, "x.py")
    assert len(problems) == 2
    assert "x.py:2" in problems[0] and "must be assigned" in problems[0]
    assert "x.py:5" in problems[1] and "never released" in problems[1]
