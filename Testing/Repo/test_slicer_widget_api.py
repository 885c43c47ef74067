"""MedXAI.ui and the module's code use only widget classes, properties and signals that Slicer 5.10 and 5.12 have.

CI cannot start Slicer, so the widget API is checked against data derived from the headers of
Slicer v5.10.0 and v5.12.3, the CTK revision each builds and Qt 5.15 (data/slicer_widget_api.json,
written by derive_slicer_data.py, which records the commits it read). For each tag:

- every widget and layout class in MedXAI.ui is known;
- every property the .ui sets (standard properties; ``stdset="0"`` marks dynamic ones such as
  ``SlicerParameterName``) is a ``Q_PROPERTY`` of the class or a base class;
- every signal and slot of the .ui's connections exists on sender and receiver;
- every signal string given to ``connect()`` in MedXAI/ is a signal of the object's class, the class
  being read from the .ui (``ui.<name>``), from the constructor the name was assigned from
  (``qt.QSpinBox()``), or ``slicer.app`` (qSlicerApplication). A call whose object cannot be resolved
  is reported too, so the check never silently skips one.

The self-tests at the end feed broken inputs to show each rule can fail.
"""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = json.loads((Path(__file__).with_name("data") / "slicer_widget_api.json").read_text(encoding="utf-8"))
TAGS = sorted(DATA["tags"])
UI = ROOT / "MedXAI" / "Resources" / "UI" / "MedXAI.ui"


class Api:
    """One tag's classes, with lookups that follow the base classes."""

    def __init__(self, classes: dict):
        self.classes = classes

    def chain(self, name: str) -> list[dict]:
        found = []
        while name:
            info = self.classes.get(name)
            if info is None:
                break
            found.append(info)
            name = info["base"]
        return found

    def has(self, name: str, kind: str, member: str) -> bool:
        return any(member in info[kind] for info in self.chain(name))


def ui_problems(api: Api, ui_xml: str) -> list[str]:
    root = ET.fromstring(ui_xml)
    problems, classes = [], {}
    for element in root.iter():
        if element.tag not in ("widget", "layout"):
            continue
        name, cls = element.get("name"), element.get("class")
        classes[name] = cls
        if cls not in api.classes:
            problems.append(f"MedXAI.ui: {name} is a {cls}, which this Slicer does not have")
            continue
        for prop in element.findall("property"):
            if prop.get("stdset") == "0":
                continue  # a dynamic property (SlicerParameterName), any name is fine
            if not api.has(cls, "properties", prop.get("name")):
                problems.append(f"MedXAI.ui: {name} ({cls}) sets property '{prop.get('name')}', which {cls} "
                                "does not have")
    for connection in root.iter("connection"):
        sender, receiver = connection.find("sender").text, connection.find("receiver").text
        signal, slot = connection.find("signal").text, connection.find("slot").text
        if not api.has(classes.get(sender, ""), "signals", signal):
            problems.append(f"MedXAI.ui: {sender} ({classes.get(sender)}) has no signal {signal}")
        if not (api.has(classes.get(receiver, ""), "slots", slot) or api.has(classes.get(receiver, ""), "signals", slot)):
            problems.append(f"MedXAI.ui: {receiver} ({classes.get(receiver)}) has no slot {slot}")
    return problems


def _constructed(node: ast.AST) -> Optional[str]:
    """``QSpinBox`` for ``qt.QSpinBox(...)`` / ``ctk.ctkSliderWidget(...)``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
            and node.func.value.id in ("qt", "ctk", "slicer"):
        return node.func.attr
    return None


def _target_key(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def connect_problems(api: Api, source: str, where: str, uiClasses: dict[str, str]) -> list[str]:
    """Signals passed to ``X.connect("signal(args)", ...)`` in `source` that X's class does not have."""
    tree = ast.parse(source)
    moduleAssigned: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _constructed(node.value):
            for target in node.targets:
                key = _target_key(target)
                if key and key.startswith("self."):
                    moduleAssigned[key] = _constructed(node.value)
    problems = []
    for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        local: dict[str, list[tuple[int, str]]] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and _constructed(node.value):
                for target in node.targets:
                    key = _target_key(target)
                    if key:
                        local.setdefault(key, []).append((node.lineno, _constructed(node.value)))
        for call in ast.walk(function):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "connect"
                    and call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
                continue
            signal = re.sub(r"\s+", "", call.args[0].value)
            obj = call.func.value
            cls = None
            if isinstance(obj, ast.Attribute) and isinstance(obj.value, ast.Attribute) and obj.value.attr == "ui":
                cls = uiClasses.get(obj.attr)
            elif isinstance(obj, ast.Attribute) and isinstance(obj.value, ast.Name) and obj.value.id == "ui":
                cls = uiClasses.get(obj.attr)
            elif isinstance(obj, ast.Attribute) and isinstance(obj.value, ast.Name) and obj.value.id == "slicer" \
                    and obj.attr == "app":
                cls = "qSlicerApplication"
            else:
                key = _target_key(obj)
                earlier = [c for line, c in local.get(key, []) if line <= call.lineno]
                cls = earlier[-1] if earlier else moduleAssigned.get(key or "")
            if cls is None:
                problems.append(f"{where}:{call.lineno}: cannot tell the class of {ast.unparse(obj)} to check "
                                f"'{signal}'")
            elif cls not in api.classes:
                problems.append(f"{where}:{call.lineno}: {ast.unparse(obj)} is a {cls}, which this Slicer does not have")
            elif not api.has(cls, "signals", signal):
                problems.append(f"{where}:{call.lineno}: {cls} has no signal '{signal}'")
    return problems


def _uiClasses(ui_xml: str) -> dict[str, str]:
    return {e.get("name"): e.get("class") for e in ET.fromstring(ui_xml).iter() if e.tag in ("widget", "layout")}


@pytest.mark.parametrize("tag", TAGS)
def test_every_ui_class_property_and_connection_exists_in_slicer(tag):
    problems = ui_problems(Api(DATA["tags"][tag]["classes"]), UI.read_text(encoding="utf-8"))
    assert not problems, f"Slicer {tag}:\n" + "\n".join(problems)


@pytest.mark.parametrize("tag", TAGS)
def test_every_connected_signal_exists_in_slicer(tag):
    api, uiClasses = Api(DATA["tags"][tag]["classes"]), _uiClasses(UI.read_text(encoding="utf-8"))
    problems, calls = [], 0
    for path in sorted((ROOT / "MedXAI").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        calls += source.count(".connect(\"")
        problems += connect_problems(api, source, str(path.relative_to(ROOT)), uiClasses)
    assert calls > 30, "no connect() calls found: is the module where this test looks?"
    assert not problems, f"Slicer {tag}:\n" + "\n".join(problems)


def test_the_data_names_its_sources_and_both_tags():
    assert TAGS == ["v5.10.0", "v5.12.3"]
    for tag in TAGS:
        entry = DATA["tags"][tag]
        assert re.fullmatch(r"[0-9a-f]{40}", entry["slicerCommit"]) and re.fullmatch(r"[0-9a-f]{7,40}", entry["ctkCommit"])
        classes = entry["classes"]
        assert classes["QPushButton"]["base"] == "QAbstractButton" and "clicked(bool)" in classes["QAbstractButton"]["signals"]
        assert "clicked()" in classes["QAbstractButton"]["signals"]  # a default argument gives both signatures
        assert classes["QObject"]["base"] is None
    assert DATA["script"] == "Testing/Repo/derive_slicer_data.py" and (ROOT / DATA["script"]).is_file()


# ------------------------------------------------------------------------------------------------
# Self-tests

BROKEN_UI = """<?xml version="1.0" encoding="UTF-8"?>
<ui version="4.0"><class>MedXAI</class>
 <widget class="qMRMLWidget" name="MedXAI">
  <layout class="QVBoxLayout" name="layout">
   <item><widget class="qMRMLNodeComboBox" name="inputSelector">
    <property name="noneEnabled"><bool>true</bool></property>
    <property name="noneEnabledd"><bool>true</bool></property>
    <property name="SlicerParameterName" stdset="0"><string>inputVolume</string></property>
   </widget></item>
   <item><widget class="QFancyButton" name="applyButton"/></item>
  </layout>
 </widget>
 <connections><connection><sender>MedXAI</sender><signal>mrmlSceneChanged(vtkMRMLScene*)</signal>
  <receiver>inputSelector</receiver><slot>setMRMLScene(vtkMRMLScene*)</slot></connection>
  <connection><sender>MedXAI</sender><signal>sceneChanged(vtkMRMLScene*)</signal>
  <receiver>inputSelector</receiver><slot>setMRMLScene(vtkMRMLScene*)</slot></connection></connections>
</ui>"""


def test_the_ui_check_reports_unknown_classes_properties_and_signals():
    problems = ui_problems(Api(DATA["tags"][TAGS[0]]["classes"]), BROKEN_UI)
    assert len(problems) == 3, problems
    assert "noneEnabledd" in problems[0] and "QFancyButton" in problems[1] and "sceneChanged" in problems[2]


def test_the_connect_check_resolves_each_kind_of_object_and_reports_wrong_signals():
    source = (
        "class W:\n"
        "    def setup(self):\n"
        "        self.ui.applyButton.connect('clicked(bool)', self.f)\n"
        "        self.ui.applyButton.connect('clicked(int)', self.f)\n"
        "        self._timer = qt.QTimer()\n"
        "        self._timer.connect('timeout()', self.f)\n"
        "        slicer.app.connect('startupCompleted()', self.f)\n"
        "        spin = qt.QSpinBox()\n"
        "        spin.connect('valueChanged(double)', self.f)\n"
        "        mystery.connect('valueChanged(int)', self.f)\n"
    )
    problems = connect_problems(Api(DATA["tags"][TAGS[0]]["classes"]), source, "w.py", {"applyButton": "QPushButton"})
    assert len(problems) == 3, problems
    assert "w.py:4" in problems[0] and "clicked(int)" in problems[0]
    assert "w.py:9" in problems[1] and "QSpinBox has no signal 'valueChanged(double)'" in problems[1]
    assert "w.py:10" in problems[2] and "cannot tell the class" in problems[2]
