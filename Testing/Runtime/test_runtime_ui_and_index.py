"""Static checks of what only Slicer loads: MedXAI.ui and the extension-index entry MedXAI.json."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import runtime_paths

UI = runtime_paths.MODULE_DIR / "Resources" / "UI" / "MedXAI.ui"
SLICER_WIDGETS = {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"}  # need setMRMLScene


def _root():
    return ET.parse(UI).getroot()


def test_ui_top_level_is_a_qmrmlwidget_named_after_the_module():
    root = _root()
    top = root.find("widget")
    assert root.find("class").text == "MedXAI" and top.get("class") == "qMRMLWidget" and top.get("name") == "MedXAI"


def test_every_mrml_widget_receives_the_scene():
    root = _root()
    mrml = {w.get("name") for w in root.iter("widget") if w.get("class") in SLICER_WIDGETS}
    connected = {
        c.find("receiver").text
        for c in root.iter("connection")
        if c.find("sender").text == "MedXAI"
        and c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"
    }
    assert mrml and mrml == connected


def test_every_non_qt_class_is_declared_as_a_custom_widget():
    root = _root()
    used = {w.get("class") for w in root.iter("widget")}
    declared = {c.find("class").text for c in root.iter("customwidget")}
    assert {c for c in used if not c.startswith("Q")} <= declared
    for custom in root.iter("customwidget"):
        assert custom.find("header").text == custom.find("class").text + ".h"


def test_object_names_follow_what_widget_type():
    suffixes = ("Button", "CheckBox", "ComboBox", "SpinBox", "SliderWidget", "Selector", "LineEdit", "Label",
                "ProgressBar", "TableWidget", "GroupBox", "CollapsibleButton")
    names = [w.get("name") for w in _root().iter("widget")][1:]
    assert len(names) == len(set(names))
    assert [n for n in names if not n.lower().endswith(tuple(s.lower() for s in suffixes))] == []


def test_bound_widgets_name_existing_parameters():
    source = (runtime_paths.MODULE_DIR / "MedXAI.py").read_text()
    block = source.split("class MedXAIParameterNode:")[1].split("\n#\n")[0]
    parameters = set(re.findall(r"^    (\w+):", block, re.M))
    bound = {p.find("string").text for p in _root().iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound and bound <= parameters


def test_extension_index_entry_matches_the_cmake_metadata():
    entry = json.loads((runtime_paths.ROOT / "MedXAI.json").read_text())
    cmake = (runtime_paths.ROOT / "CMakeLists.txt").read_text()
    category = re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', cmake).group(1)
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]+)"\)', cmake).group(1).split(";")
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', cmake).group(1)
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-v1.0.")
    assert set(entry) <= {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                          "build_subdirectory", "enabled", "tier"}
    assert entry["category"] == category
    assert entry["build_dependencies"] == depends == ["PyTorch"]
    assert entry["scm_url"].removesuffix(".git") == homepage
    assert entry["tier"] in (1, 3, 5) and entry["build_subdirectory"] == "."
