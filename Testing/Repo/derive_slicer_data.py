#!/usr/bin/env python3
"""Derive the Slicer facts the repository tests check against, from Slicer's, CTK's, Qt's and the
Extensions Index's own files (read, never copied: only names, versions and lists are kept).

    python Testing/Repo/derive_slicer_data.py --slicer SLICER_GIT --ctk CTK_GIT --qt-include QT5_INCLUDE \\
        --index EXTENSIONS_INDEX_GIT

SLICER_GIT, CTK_GIT and EXTENSIONS_INDEX_GIT are git repositories (a clone or a bare mirror; files are
read with ``git show <revision>:<path>``); QT5_INCLUDE is a Qt 5.15 include folder (``QtCore``,
``QtWidgets``, ...; e.g. Debian's qtbase5-dev, unpacked). Writes, into Testing/Repo/data/:

- ``slicer_widget_api.json``: for each Slicer tag (:data:`SLICER_TAGS`), every widget class the module
  uses (MedXAI.ui and the classes the code creates or connects to) with its base class, Qt properties
  (``Q_PROPERTY``), signals (with the shorter signatures default arguments allow, as moc generates
  them) and slots, from the tag's headers, the CTK revision that tag builds (SuperBuild/External_CTK.cmake)
  and Qt 5.15 (what both tags build with by default);
- ``slicer_python_pins.json``: the Python version and the numpy, SciPy and SimpleITK versions each tag
  ships (SuperBuild/External_python-*.cmake; 5.10 builds SimpleITK from its fork, whose tag comment names
  the version);
- ``extension_index.json``: the categories the Extensions Index accepts (``ACCEPTED_EXTENSION_CATEGORIES``
  of ``scripts/check_description_files.py``) and the required keys, property types and enums of the
  extension catalog entry schema (Slicer's ``Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json``).

Every file records the repositories and revisions it read and the date. Re-run it when a Slicer release
is added or the module uses a new widget class.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import re
import subprocess
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SLICER_TAGS = ("v5.10.0", "v5.12.3")
SCHEMA = "Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json"

#: The classes to describe: MedXAI.ui's, those MedXAI's code creates or connects to, and their bases
#: (followed automatically up to QObject).
CLASSES = (
    # MedXAI.ui
    "qMRMLWidget", "qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget", "ctkCollapsibleButton", "ctkPathLineEdit",
    "ctkSliderWidget", "QLabel", "QPushButton", "QComboBox", "QCheckBox", "QSpinBox", "QTableWidget", "QGroupBox",
    "QProgressBar", "QFormLayout", "QHBoxLayout", "QVBoxLayout",
    # created or connected to in the code (forms.py, MedXAI.py)
    "QDoubleSpinBox", "QLineEdit", "QTimer", "QWidget", "qSlicerApplication",
)

#: Where each library keeps its headers.
SLICER_HEADER_DIRS = ("Libs/MRML/Widgets", "Base/QTGUI", "Base/QTCore", "Modules/Loadable/Segmentations/Widgets")
CTK_HEADER_DIRS = ("Libs/Widgets", "Libs/Core", "Libs/Visualization/VTK/Widgets")
QT_MODULES = ("QtWidgets", "QtCore", "QtGui")


def git_show(repo: Path, revision: str, path: str) -> Optional[str]:
    result = subprocess.run(["git", "-C", str(repo), "show", f"{revision}:{path}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def git_commit(repo: Path, revision: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", f"{revision}^{{commit}}"], capture_output=True,
                          text=True, check=True).stdout.strip()


# ------------------------------------------------------------------------------------------------
# Header parsing


_MACROS = re.compile(r"\b(?:QT_DEPRECATED\w*|Q_DECL_\w+|QT_\w+_EXPORT|Q_\w+_EXPORT|Q_SLICER_\w+_EXPORT|"
                     r"QMRML_WIDGETS_EXPORT|Q_REQUIRED_RESULT|Q_INVOKABLE|Q_SCRIPTABLE)\b(?:\s*\([^)]*\))?")


def _strip_comments(text: str) -> str:
    """Comments, preprocessor lines and the export / deprecation macros removed."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"^\s*#.*$", " ", text, flags=re.M)
    return _MACROS.sub(" ", text)


def _normalise_type(text: str) -> str:
    """A parameter type as Qt's normalised signatures write it: const and references dropped."""
    text = re.sub(r"\s*=\s*.*$", "", text.strip())  # default value
    text = re.sub(r"\bconst\b", "", text)
    text = text.replace("&", "")
    text = re.sub(r"\s+", " ", text).strip()
    # drop the parameter name: the last identifier after the type
    match = re.match(r"^(.*[\s*>])([A-Za-z_]\w*)$", text)
    if match and re.search(r"\w", match.group(1)) and match.group(1).strip() not in ("unsigned", "signed", "long", "short"):
        text = match.group(1)
    text = re.sub(r"\s*\*\s*", "*", text).strip()
    return re.sub(r"\s+", " ", text)


def _split_parameters(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "<(":
            depth += 1
        elif char in ">)":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [p for p in parts if p.strip() and p.strip() != "void"]


def _signatures(name: str, parameters: str) -> list[str]:
    """``name(types)``, plus one per default argument left out (moc makes each a signature)."""
    params = [p for p in _split_parameters(parameters) if "QPrivateSignal" not in p]
    types = [_normalise_type(p) for p in params]
    required = sum(1 for p in params if "=" not in p)
    return [f"{name}({','.join(types[:n])})" for n in range(required, len(types) + 1)]


def parse_header(text: str, class_name: str) -> Optional[dict]:
    """Base class, properties, signals and slots of `class_name` in a header's text (None if absent)."""
    text = _strip_comments(text)
    match = re.search(r"\bclass\s+(?:\w+\s+)*?" + re.escape(class_name) + r"\b\s*(?::\s*([^{]*))?\{", text)
    if not match:
        return None
    bases = re.findall(r"public\s+([\w:]+)", match.group(1) or "")
    depth, start = 0, match.end() - 1
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            break
    body = text[start + 1:end]
    properties = sorted(set(re.findall(r"Q_PROPERTY\s*\(\s*(?:[\w:<>,\s]+?)[\s*&]+(\w+)\s+(?:READ|MEMBER|WRITE)\b", body)))
    signals, slots = set(), set()
    section = None
    for line in body.split(";"):
        line = line.strip()
        while True:
            access = re.match(r"^(public|protected|private)?\s*(Q_SIGNALS|signals|Q_SLOTS|slots)?\s*:(?!:)", line)
            if not access or not (access.group(1) or access.group(2)):
                break
            kind = access.group(2) or ""
            section = "signals" if kind in ("Q_SIGNALS", "signals") else (
                "slots" if kind in ("Q_SLOTS", "slots") and access.group(1) == "public" else None)
            line = line[access.end():].strip()
        declaration = re.search(r"(\w+)\s*\(((?:[^()]|\([^()]*\))*)\)\s*(?:const)?\s*(?:override|final)?\s*(?:=\s*0)?\s*$",
                                line, flags=re.S)
        if section and declaration and not line.startswith(("Q_PROPERTY", "Q_OBJECT", "Q_DECLARE", "typedef")) \
                and declaration.group(1) not in ("Q_PROPERTY", "Q_ENUMS", "Q_FLAGS", "Q_ENUM", "Q_FLAG"):
            target = signals if section == "signals" else slots
            target.update(_signatures(declaration.group(1), declaration.group(2)))
    return {"base": bases[0] if bases else None, "properties": properties, "signals": sorted(signals),
            "slots": sorted(slots)}


# ------------------------------------------------------------------------------------------------
# Finding headers


class Sources:
    """Header lookup across Slicer (at a tag), the CTK revision that tag builds, and Qt."""

    def __init__(self, slicer: Path, tag: str, ctk: Path, qt_include: Path):
        self.slicer, self.tag, self.ctk, self.qt = slicer, tag, ctk, qt_include
        external = git_show(slicer, tag, "SuperBuild/External_CTK.cmake") or ""
        match = re.search(r"Slicer_\$\{proj\}_GIT_TAG\s*\n\s*\"([0-9a-f]{7,40})\"", external)
        if not match:
            raise SystemExit(f"{tag}: cannot find the CTK revision in SuperBuild/External_CTK.cmake")
        self.ctk_revision = match.group(1)

    def header(self, class_name: str) -> tuple[str, str, str]:
        """(library, path, text) of the header declaring `class_name`."""
        if class_name.startswith("Q") and class_name[1:2].isupper():
            for module in QT_MODULES:
                forward = self.qt / module / class_name  # Qt's class-named header includes the real one
                if forward.is_file():
                    included = re.search(r'#include\s+"([^"]+)"', forward.read_text(encoding="utf-8"))
                    path = self.qt / module / included.group(1)
                    return "Qt", f"{module}/{path.name}", path.read_text(encoding="utf-8", errors="replace")
        elif class_name.startswith("ctk"):
            for folder in CTK_HEADER_DIRS:
                text = git_show(self.ctk, self.ctk_revision, f"{folder}/{class_name}.h")
                if text:
                    return "CTK", f"{folder}/{class_name}.h", text
        else:
            for folder in SLICER_HEADER_DIRS:
                text = git_show(self.slicer, self.tag, f"{folder}/{class_name}.h")
                if text:
                    return "Slicer", f"{folder}/{class_name}.h", text
        raise SystemExit(f"{self.tag}: no header found for {class_name}")


def describe(sources: Sources, classes=CLASSES) -> dict:
    found: dict[str, dict] = {}
    pending = list(classes)
    while pending:
        name = pending.pop(0)
        if name in found:
            continue
        library, path, text = sources.header(name)
        info = parse_header(text, name)
        if info is None:
            raise SystemExit(f"{sources.tag}: {path} does not declare class {name}")
        found[name] = {"library": library, "header": path, **info}
        if info["base"] and info["base"] not in found:
            pending.append(info["base"])
    return dict(sorted(found.items()))


# ------------------------------------------------------------------------------------------------
# Python pins and the Extensions Index


def python_pins(slicer: Path, tag: str) -> dict:
    def wheel_pin(name: str) -> Optional[str]:
        text = git_show(slicer, tag, f"SuperBuild/External_python-{name}.cmake") or ""
        match = re.search(r"^\s*" + re.escape(name.lower()) + r"==([\w.]+)", text, flags=re.M | re.I)
        return match.group(1) if match else None

    cmake = git_show(slicer, tag, "CMakeLists.txt") or ""
    python = re.search(r'set\(Slicer_REQUIRED_PYTHON_VERSION "([\d.]+)"\)', cmake).group(1)
    simpleitk = wheel_pin("SimpleITK")
    source = "SuperBuild/External_python-SimpleITK.cmake"
    if simpleitk is None:  # built from Slicer's SimpleITK fork: its tag's comment names the version
        text = git_show(slicer, tag, "SuperBuild/External_SimpleITK.cmake") or ""
        simpleitk = re.search(r"slicer-v(\d+\.\d+\.\d+)", text).group(1)
        source = "SuperBuild/External_SimpleITK.cmake"
    return {"python": python, "numpy": wheel_pin("numpy"), "scipy": wheel_pin("scipy"), "SimpleITK": simpleitk,
            "files": ["CMakeLists.txt", "SuperBuild/External_python-numpy.cmake",
                      "SuperBuild/External_python-scipy.cmake", source]}


def index_data(index: Path, slicer: Path) -> dict:
    script = git_show(index, "HEAD", "scripts/check_description_files.py")
    # only the list literal is evaluated (the script itself may use syntax newer than this Python)
    literal = re.search(r"^ACCEPTED_EXTENSION_CATEGORIES\s*=\s*(\[.*?\])", script, flags=re.M | re.S).group(1)
    categories = ast.literal_eval(literal)
    schema = json.loads(git_show(slicer, "HEAD", SCHEMA))
    properties = {name: {key: value for key, value in spec.items() if key in ("type", "enum", "minimum", "maximum")}
                  for name, spec in schema["properties"].items()}
    for name, spec in schema["properties"].items():
        if "items" in spec:
            properties[name]["items"] = spec["items"].get("type")
    return {"categories": sorted(categories),
            "schema": {"id": schema["$id"], "required": schema["required"],
                       "additionalProperties": schema.get("additionalProperties", True), "properties": properties}}


# ------------------------------------------------------------------------------------------------


def _write(name: str, data: dict) -> None:
    DATA.mkdir(exist_ok=True)
    path = DATA / name
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(HERE.parents[1])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slicer", type=Path, required=True, help="Slicer/Slicer git repository")
    parser.add_argument("--ctk", type=Path, required=True, help="commontk/CTK git repository")
    parser.add_argument("--qt-include", type=Path, required=True, help="a Qt 5.15 include folder")
    parser.add_argument("--qt-version", default="5.15.8", help="the version of those headers (recorded)")
    parser.add_argument("--index", type=Path, required=True, help="Slicer/ExtensionsIndex git repository")
    args = parser.parse_args(argv)
    today = datetime.date.today().isoformat()

    tags, pins = {}, {}
    for tag in SLICER_TAGS:
        sources = Sources(args.slicer, tag, args.ctk, args.qt_include)
        tags[tag] = {"slicerCommit": git_commit(args.slicer, tag), "ctkCommit": sources.ctk_revision,
                     "classes": describe(sources)}
        pins[tag] = {"slicerCommit": git_commit(args.slicer, tag), **python_pins(args.slicer, tag)}
    _write("slicer_widget_api.json", {
        "derived": today, "script": "Testing/Repo/derive_slicer_data.py",
        "sources": {"slicer": "https://github.com/Slicer/Slicer", "ctk": "https://github.com/commontk/CTK",
                    "qt": f"Qt {args.qt_version} headers (qtbase5-dev), the Qt 5.15 both tags build with"},
        "tags": tags})
    _write("slicer_python_pins.json", {
        "derived": today, "script": "Testing/Repo/derive_slicer_data.py",
        "source": "https://github.com/Slicer/Slicer", "tags": pins})
    index = index_data(args.index, args.slicer)
    _write("extension_index.json", {
        "derived": today, "script": "Testing/Repo/derive_slicer_data.py",
        "categoriesSource": {"repository": "https://github.com/Slicer/ExtensionsIndex",
                             "file": "scripts/check_description_files.py", "name": "ACCEPTED_EXTENSION_CATEGORIES",
                             "commit": git_commit(args.index, "HEAD")},
        "schemaSource": {"repository": "https://github.com/Slicer/Slicer", "file": SCHEMA,
                         "commit": git_commit(args.slicer, "HEAD")},
        **index})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
