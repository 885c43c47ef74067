"""Pre-flight of the Extensions Index's checks, offline: what its CI would reject is caught here first.

The Index runs ``scripts/check_description_files.py`` on the submitted MedXAI.json (Slicer/ExtensionsIndex,
commit recorded in data/extension_index.json): the JSON schema, LF line endings, the category against
``ACCEPTED_EXTENSION_CATEGORIES``, the repository name, the top-level CMakeLists.txt (the project name
and every ``EXTENSION_ICONURL`` / ``EXTENSION_SCREENSHOTURLS`` image, which it downloads), a licence file
at the repository root, and the repository size. The downloads cannot run here, so each URL must point
into this repository (``raw.githubusercontent.com/<owner>/<repo>/<branch>/<path>``) at a PNG that exists.
The data file (categories and the schema's rules) is derived by derive_slicer_data.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
INDEX = json.loads((Path(__file__).with_name("data") / "extension_index.json").read_text(encoding="utf-8"))
ENTRY_FILE = ROOT / "MedXAI.json"
#: SHA-256 of the Apache License 2.0 text as the Apache Software Foundation publishes it (LICENSE-2.0.txt).
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
PNG = b"\x89PNG\r\n\x1a\n"


def cmake_metadata(text: str) -> dict[str, str]:
    """The ``set(EXTENSION_... "...")`` values and the project name, read as the Index's checker reads them."""
    values = dict(re.findall(r'set\s*\((EXTENSION_\w+)\s*"([^"]*)"', text))
    project = re.search(r"project\s*\(\s*([^\s)]+)", text, flags=re.I)
    values["project"] = project.group(1) if project else ""
    return values


def schema_problems(entry: dict, schema: dict) -> list[str]:
    """Validate `entry` against the schema's rules kept in the data file (draft-07 subset it uses)."""
    problems = [f"missing required key '{key}'" for key in schema["required"] if key not in entry]
    types = {"string": str, "array": list, "boolean": bool, "integer": int}
    for key, value in entry.items():
        rule = schema["properties"].get(key)
        if rule is None:
            if not schema["additionalProperties"]:
                problems.append(f"unknown key '{key}'")
            continue
        expected = types[rule["type"]]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            problems.append(f"'{key}' must be a {rule['type']}")
            continue
        if "enum" in rule and value not in rule["enum"]:
            problems.append(f"'{key}' must be one of {rule['enum']}")
        if "minimum" in rule and not rule["minimum"] <= value <= rule["maximum"]:
            problems.append(f"'{key}' must be between {rule['minimum']} and {rule['maximum']}")
        if rule.get("items") and not all(isinstance(item, types[rule["items"]]) for item in value):
            problems.append(f"every item of '{key}' must be a {rule['items']}")
    return problems


def url_problems(url: str, homepage: str, root: Path) -> list[str]:
    """A raw.githubusercontent.com URL of this repository must name a PNG file that exists here."""
    owner_repo = urlsplit(homepage).path.strip("/")
    parts = urlsplit(url)
    prefix = f"/{owner_repo}/"
    if parts.scheme != "https" or parts.netloc != "raw.githubusercontent.com" or not parts.path.startswith(prefix):
        return [f"{url} is not a raw.githubusercontent.com URL of {owner_repo}"]
    path = root / parts.path[len(prefix):].split("/", 1)[1]  # after the branch
    if not path.is_file():
        return [f"{url} names {path.relative_to(root)}, which is not in the repository"]
    if not path.read_bytes().startswith(PNG) or path.suffix.lower() != ".png":
        return [f"{url} names {path.relative_to(root)}, which is not a PNG image"]
    return []


# ------------------------------------------------------------------------------------------------


def test_entry_matches_the_catalog_schema_and_uses_lf_line_endings():
    raw = ENTRY_FILE.read_bytes()
    assert b"\r" not in raw, "the Index accepts LF line endings only"
    entry = json.loads(raw)
    assert entry["$schema"].split("#")[0] == INDEX["schema"]["id"].split("#")[0]
    assert schema_problems(entry, INDEX["schema"]) == []


def test_category_is_one_the_index_accepts_and_matches_the_cmake():
    entry = json.loads(ENTRY_FILE.read_text(encoding="utf-8"))
    metadata = cmake_metadata((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert entry["category"] in INDEX["categories"], f"'{entry['category']}' is not accepted: {INDEX['categories']}"
    assert metadata["EXTENSION_CATEGORY"] == entry["category"]


def test_names_follow_the_index_rules():
    entry = json.loads(ENTRY_FILE.read_text(encoding="utf-8"))
    metadata = cmake_metadata((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert metadata["project"] == ENTRY_FILE.stem == "MedXAI"  # the extension name, not starting with "Slicer"
    repository = Path(urlsplit(entry["scm_url"]).path).stem
    assert repository.startswith("Slicer"), "the Index wants the repository named Slicer<Name>"
    assert urlsplit(entry["scm_url"]).scheme in ("https", "git")


def test_icon_and_every_screenshot_url_resolve_to_png_files_here():
    metadata = cmake_metadata((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    urls = [metadata["EXTENSION_ICONURL"], *metadata["EXTENSION_SCREENSHOTURLS"].split()]
    assert len(urls) >= 2, "an icon and at least one screenshot"
    problems = [p for url in urls for p in url_problems(url, metadata["EXTENSION_HOMEPAGE"], ROOT)]
    assert not problems, "\n".join(problems)


def test_licence_at_the_root_is_the_apache_2_text_the_package_declares():
    licence = ROOT / "LICENSE"
    assert licence.is_file(), "the Index requires a LICENSE (or COPYING) file at the repository root"
    assert hashlib.sha256(licence.read_bytes()).hexdigest() == APACHE_2_SHA256
    assert re.search(r'^license = "Apache-2.0"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), flags=re.M)


def test_repository_stays_far_below_the_index_size_limit():
    total = 0
    for folder, subfolders, files in os.walk(ROOT):  # hidden folders (.git, .venv) and outputs pruned
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("__pycache__", "medxai-out")]
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    assert total < 50 * 2**20  # the Index's limit is 100 MB


# ------------------------------------------------------------------------------------------------
# Self-tests


def test_schema_check_reports_each_kind_of_mistake():
    entry = {"$schema": "x", "category": 3, "scm_url": "u", "tier": 9, "scm_type": "svn", "build_dependencies": [1],
             "extra": True}
    problems = schema_problems(entry, INDEX["schema"])
    assert "'category' must be a string" in problems and "unknown key 'extra'" in problems
    assert any("'tier' must be between" in p for p in problems) and any("'scm_type'" in p for p in problems)
    assert any("build_dependencies" in p for p in problems)
    assert schema_problems({}, INDEX["schema"]) == ["missing required key '$schema'", "missing required key 'category'",
                                                    "missing required key 'scm_url'"]


@pytest.mark.parametrize("url, fragment", [
    ("https://raw.githubusercontent.com/medxai/SlicerMedXAI/main/Resources/Screenshots/404.png", "not in the repository"),
    ("https://raw.githubusercontent.com/other/Repo/main/Resources/Screenshots/1.png", "not a raw.githubusercontent"),
    ("https://raw.githubusercontent.com/medxai/SlicerMedXAI/main/LICENSE", "not a PNG"),
])
def test_url_check_reports_missing_foreign_and_non_image_files(url, fragment):
    [problem] = url_problems(url, "https://github.com/medxai/SlicerMedXAI", ROOT)
    assert fragment in problem


def test_the_categories_came_from_the_index_with_their_source():
    assert "Analysis" in INDEX["categories"] and "Explainable AI" not in INDEX["categories"]
    assert re.fullmatch(r"[0-9a-f]{40}", INDEX["categoriesSource"]["commit"]) and INDEX["derived"]
