"""Static packaging checks for what CI cannot build: the Slicer extension's CMake lists and the .ui.

Slicer copies into the extension package only the files listed in the CMakeLists.txt files, and
silently leaves the rest out (DESIGN.md, section 6). These tests compare the lists with the files
on disk, check the top-level extension metadata, and check that every ``self.ui.<name>`` used by
the module widget exists in MedXAI/Resources/UI/MedXAI.ui.

The CMake is read with the tiny evaluator of cmake_lists.py (comments, quoted and bracket arguments,
``set`` / ``list(APPEND)``, ``foreach`` and ``${VAR}`` references, which is all these files use).
Self-tests at the end feed the checks broken inputs to prove they can fail.
"""

from __future__ import annotations

import ast
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Optional

import pytest
from cmake_lists import PythonTarget, evaluate, install_files, parse_cmake, python_targets

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "MedXAI"
LIB_DIR = ROOT / "MedXAILib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedXAI.ui"

# Folders with their own CMakeLists.txt (tests run by ctest), never shipped as module files.
NOT_SHIPPED_DIRS = frozenset({"Testing", "__pycache__"})

# ------------------------------------------------------------------------------------------------
# Comparing lists with the disk


def shipped_files_on_disk(folder: Path) -> set[str]:
    """Files under `folder` that must be listed: all but CMakeLists, tests, caches and hidden files."""
    files = set()
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if not path.is_file() or path.name == "CMakeLists.txt" or path.suffix in {".pyc", ".pyo"}:
            continue
        if any(part in NOT_SHIPPED_DIRS or part.startswith(".") or part.endswith(".egg-info") for part in relative.parts):
            continue
        files.add(relative.as_posix())
    return files


def list_problems(target: PythonTarget, folder: Path, on_disk: set[str], what: str) -> list[str]:
    """Differences between a macro's SCRIPTS + RESOURCES and the files on disk under `folder`."""
    problems = []
    listed = target.scripts + target.resources
    for item in listed:
        if item.startswith("${CMAKE_CURRENT_SOURCE_DIR}") or Path(item).is_absolute() or ".." in Path(item).parts:
            problems.append(
                f"{what}: '{item}' must be a path relative to {folder.name}/ inside it (absolute or ../ paths "
                "are copied outside qt-scripted-modules and left out of the package)"
            )
    for item in sorted({i for i in listed if listed.count(i) > 1}):
        problems.append(f"{what}: '{item}' is listed more than once")
    for item in listed:
        if not (folder / item).is_file():
            problems.append(f"{what}: lists '{item}', which does not exist in {folder.name}/")
    for item in sorted(on_disk - set(listed)):
        kind = "SCRIPTS" if item.endswith(".py") else "RESOURCES"
        problems.append(f"{what}: '{folder.name}/{item}' is not listed in {kind}, so it would be left out of the extension")
    return problems


def the_target(cmake_file: Path) -> PythonTarget:
    targets = python_targets(cmake_file.read_text(encoding="utf-8"))
    assert len(targets) == 1, f"{cmake_file}: expected one build macro call, found {len(targets)}"
    return targets[0]


# ------------------------------------------------------------------------------------------------
# self.ui.<name> against the .ui


def ui_object_names(ui_xml: str) -> set[str]:
    """Object names that slicer.util.childWidgetVariables exposes: widgets, layouts, actions, ..."""
    root = ET.fromstring(ui_xml)
    kinds = {"widget", "layout", "action", "actiongroup", "buttongroup"}
    return {element.get("name") for element in root.iter() if element.tag in kinds and element.get("name")}


def ui_names_used(source: str) -> dict[str, int]:
    """``self.ui.<name>`` read in `source` (name -> first line); names the code assigns are excluded."""
    used: dict[str, int] = {}
    assigned = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            if isinstance(node.ctx, ast.Store):
                assigned.add(node.attr)
            else:
                used.setdefault(node.attr, node.lineno)
    return {name: line for name, line in used.items() if name not in assigned}


def ui_problems(source: str, ui_xml: Optional[str], what: str = "MedXAI.py") -> list[str]:
    used = ui_names_used(source)
    if not used:
        return []
    if ui_xml is None:
        return [f"{what} uses self.ui.{', self.ui.'.join(sorted(used))} but Resources/UI/MedXAI.ui does not exist"]
    names = ui_object_names(ui_xml)
    return [
        f"{what}:{line}: self.ui.{name} is not an object name in Resources/UI/MedXAI.ui"
        for name, line in sorted(used.items(), key=lambda item: item[1])
        if name not in names
    ]


# ------------------------------------------------------------------------------------------------
# The repository


def _problems(problems: list[str]) -> str:
    return "\n" + "\n".join(problems)


def test_module_cmake_lists_every_module_file():
    target = the_target(MODULE_DIR / "CMakeLists.txt")
    assert target.macro == "slicermacrobuildscriptedmodule"
    assert target.options.get("NAME") == ["MedXAI"]
    assert target.flag("WITH_GENERIC_TESTS")
    assert "MedXAI.py" in target.scripts
    assert "Resources/Icons/MedXAI.png" in target.resources
    problems = list_problems(target, MODULE_DIR, shipped_files_on_disk(MODULE_DIR), "MedXAI/CMakeLists.txt")
    assert not problems, _problems(problems)


def test_library_cmake_lists_every_library_file():
    target = the_target(LIB_DIR / "CMakeLists.txt")
    # docs/adr/0001-library-beside-module.md: shipped as the package folder
    # <qt-scripted-modules>/MedXAILib, like Slicer's own Modules/Scripted/DICOMLib.
    assert target.macro == "slicermacrobuildscriptedmodule"
    assert target.options.get("NAME") == ["MedXAILib"]
    assert target.flag("WITH_SUBDIR"), "without WITH_SUBDIR the files land beside MedXAI.py, not in MedXAILib/"
    assert not target.flag("WITH_GENERIC_TESTS"), "MedXAILib is a library, not a module: no generic module tests"
    assert "__init__.py" in target.scripts
    problems = list_problems(target, LIB_DIR, shipped_files_on_disk(LIB_DIR), "MedXAILib/CMakeLists.txt")
    assert not problems, _problems(problems)


def test_every_shipped_demo_model_is_installed_beside_the_library():
    """Resources/Models goes to <qt-scripted-modules>/Resources/Models, where MedXAILib looks for its
    default models (the folder beside the MedXAILib package) and the module's demo selects them."""
    from cmake_lists import QTSCRIPTEDMODULES_DIR

    models = ROOT / "Resources" / "Models"
    installed = {path: source for path, source in install_files(MODULE_DIR / "CMakeLists.txt").items()
                 if path.startswith(f"{QTSCRIPTEDMODULES_DIR}/Resources/Models/")}
    assert {Path(path).name for path in installed} == {f.name for f in models.iterdir() if f.is_file()}
    assert all(source == (models / Path(path).name).resolve() for path, source in installed.items())
    library = install_files(LIB_DIR / "CMakeLists.txt")
    assert f"{QTSCRIPTEDMODULES_DIR}/MedXAILib/__init__.py" in library  # the folder beside Resources/Models


def test_cmake_reader_runs_foreach_and_install_files(tmp_path):
    (tmp_path / "CMakeLists.txt").write_text(
        "set(ITEMS a.txt b.txt)\nset(FILES)\nforeach(item ${ITEMS})\n  list(APPEND FILES ${CMAKE_CURRENT_SOURCE_DIR}/d/${item})\n"
        "endforeach()\ninstall(FILES ${FILES} DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Data COMPONENT x)\n")
    files = install_files(tmp_path / "CMakeLists.txt", "qsm")
    assert files == {"qsm/Data/a.txt": (tmp_path / "d" / "a.txt").resolve(), "qsm/Data/b.txt": (tmp_path / "d" / "b.txt").resolve()}


def test_top_level_cmake_is_a_pytorch_dependent_extension():
    raw = parse_cmake((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    commands, variables = evaluate(raw)
    assert commands[0].name == "cmake_minimum_required"
    assert ["MedXAI"] in [c.args for c in commands if c.name == "project"]
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert variables.get(f"EXTENSION_{key}"), f"EXTENSION_{key} is missing or empty"
    assert "PyTorch" in variables.get("EXTENSION_DEPENDS", "").split(";")
    assert ["Slicer", "REQUIRED"] in [c.args for c in commands if c.name == "find_package"]
    subdirectories = {c.args[0]: c.line for c in commands if c.name == "add_subdirectory"}
    assert "MedXAILib" in subdirectories and "MedXAI" in subdirectories, subdirectories
    assert subdirectories["MedXAILib"] < subdirectories["MedXAI"]
    includes = {c.args[0]: c.line for c in raw if c.name == "include"}  # unexpanded: ${Slicer_...}
    assert set(includes) == {"${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"}
    assert includes["${Slicer_USE_FILE}"] < min(subdirectories.values())
    assert max(subdirectories.values()) < includes["${Slicer_EXTENSION_GENERATE_CONFIG}"] < includes["${Slicer_EXTENSION_CPACK}"]


def test_every_self_ui_name_exists_in_the_ui_file():
    source = (MODULE_DIR / "MedXAI.py").read_text(encoding="utf-8")
    ui_xml = UI_FILE.read_text(encoding="utf-8") if UI_FILE.is_file() else None
    problems = ui_problems(source, ui_xml)
    assert not problems, _problems(problems)


# ------------------------------------------------------------------------------------------------
# Self-tests: every check can fail

MODULE_CMAKE = textwrap.dedent(
    """
    set(MODULE_NAME Demo)  # a comment with (parentheses)
    set(MODULE_PYTHON_SCRIPTS
      ${MODULE_NAME}.py
      DemoLib/__init__
      )
    list(APPEND MODULE_PYTHON_SCRIPTS DemoLib/extra.py)
    set(MODULE_PYTHON_RESOURCES
      "Resources/Icons/${MODULE_NAME}.png"
      )
    #[[ a bracket comment
        slicerMacroBuildScriptedModule(NAME Ignored SCRIPTS ignored.py) ]]
    slicerMacroBuildScriptedModule(
      NAME ${MODULE_NAME}
      SCRIPTS ${MODULE_PYTHON_SCRIPTS}
      RESOURCES ${MODULE_PYTHON_RESOURCES}
      WITH_GENERIC_TESTS
      )
    if(BUILD_TESTING)
      slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)
    endif()
    """
)


def test_cmake_reader_expands_module_lists():
    [target] = python_targets(MODULE_CMAKE)
    assert target.options["NAME"] == ["Demo"]
    assert target.scripts == ["Demo.py", "DemoLib/__init__.py", "DemoLib/extra.py"]
    assert target.resources == ["Resources/Icons/Demo.png"]
    assert target.flag("WITH_GENERIC_TESTS") and not target.flag("WITH_SUBDIR")


def test_cmake_reader_reads_ctk_macro_with_quoted_lists():
    text = 'set(LIB_SCRIPTS __init__ sub/mod)\nctkMacroCompilePythonScript(TARGET_NAME L SCRIPTS "${LIB_SCRIPTS}" RESOURCES "" DESTINATION_DIR ${X}/L INSTALL_DIR y)\n'
    [target] = python_targets(text)
    assert target.scripts == ["__init__.py", "sub/mod.py"] and target.resources == []


def _tree(tmp_path: Path, files: Iterable[str]) -> Path:
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    return tmp_path


def test_list_check_passes_when_lists_match(tmp_path):
    folder = _tree(tmp_path, ["Demo.py", "DemoLib/__init__.py", "DemoLib/extra.py", "Resources/Icons/Demo.png",
                              "CMakeLists.txt", "Testing/Python/DemoTest.py", "__pycache__/Demo.cpython-312.pyc"])
    [target] = python_targets(MODULE_CMAKE)
    assert list_problems(target, folder, shipped_files_on_disk(folder), "demo") == []


def test_list_check_reports_unlisted_files(tmp_path):
    folder = _tree(tmp_path, ["Demo.py", "DemoLib/__init__.py", "DemoLib/extra.py", "Resources/Icons/Demo.png",
                              "DemoLib/forgotten.py", "Resources/UI/Demo.ui"])
    [target] = python_targets(MODULE_CMAKE)
    problems = list_problems(target, folder, shipped_files_on_disk(folder), "demo")
    assert len(problems) == 2
    assert "DemoLib/forgotten.py' is not listed in SCRIPTS" in problems[0] + problems[1]
    assert "Resources/UI/Demo.ui' is not listed in RESOURCES" in problems[0] + problems[1]


def test_list_check_reports_listed_files_that_do_not_exist(tmp_path):
    folder = _tree(tmp_path, ["Demo.py", "DemoLib/__init__.py", "Resources/Icons/Demo.png"])
    [target] = python_targets(MODULE_CMAKE)
    problems = list_problems(target, folder, shipped_files_on_disk(folder), "demo")
    assert problems == [f"demo: lists 'DemoLib/extra.py', which does not exist in {folder.name}/"]


def test_list_check_reports_paths_outside_the_folder_and_duplicates(tmp_path):
    folder = _tree(tmp_path, ["a.py"])
    [target] = python_targets("slicerMacroBuildScriptedModule(NAME L SCRIPTS a.py a ../Other/b.py WITH_SUBDIR)")
    problems = list_problems(target, folder, shipped_files_on_disk(folder), "demo")
    assert any("must be a path relative" in p for p in problems)
    assert any("listed more than once" in p for p in problems)


UI_XML = textwrap.dedent(
    """\
    <?xml version="1.0" encoding="UTF-8"?>
    <ui version="4.0">
     <class>MedXAI</class>
     <widget class="qMRMLWidget" name="MedXAI">
      <layout class="QVBoxLayout" name="verticalLayout">
       <item>
        <widget class="qMRMLNodeComboBox" name="inputVolumeSelector"/>
       </item>
       <item>
        <widget class="QPushButton" name="applyButton">
         <property name="text"><string>Apply</string></property>
        </widget>
       </item>
      </layout>
     </widget>
    </ui>
    """
)


def test_ui_check_accepts_names_in_the_ui_and_names_the_code_creates():
    source = "class W:\n    def setup(self):\n        self.ui.applyButton.connect('clicked(bool)', self.onApply)\n" \
             "        self.ui.inputVolumeSelector.setMRMLScene(None)\n        self.ui.extraLabel = None\n" \
             "        self.ui.extraLabel.text = 'x'\n"
    assert ui_problems(source, UI_XML) == []
    assert "verticalLayout" in ui_object_names(UI_XML)


def test_ui_check_reports_names_missing_from_the_ui():
    source = "class W:\n    def setup(self):\n        self.ui.applyButton.enabled = True\n        self.ui.cancelButton.enabled = False\n"
    problems = ui_problems(source, UI_XML)
    assert problems == ["MedXAI.py:4: self.ui.cancelButton is not an object name in Resources/UI/MedXAI.ui"]


def test_ui_check_reports_self_ui_without_a_ui_file():
    assert ui_problems("def f(self):\n    return self.ui.applyButton\n", None)
    assert ui_problems("def f(self):\n    return 1\n", None) == []


@pytest.mark.parametrize("text", ["set(A b", 'set(A "b)'])
def test_cmake_reader_rejects_unterminated_commands(text):
    with pytest.raises(ValueError):
        parse_cmake(text)
