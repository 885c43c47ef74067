"""The Cohort QA section's Qt-free parts on real MRML (slicer-core): what a cohort table holds, in one line.

The table is written by MedXAILib's own cohort writer (``MedXAILib.cohort.report``: the columns and CSV of
``medxai cohort``), with the ``risk`` column holding the default QA score as the driver fills it, and opened
as the section opens it (``MedXAIBridge.cohortNodes.cohortTableNode``). Loading the rows' scenes is covered
by ``Testing/Bridge/test_cohort_table.py`` (a cohort actually run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import runtime_paths

sys.path.insert(0, str(runtime_paths.ROOT / "Testing" / "Bridge"))
import mrmlTesting  # noqa: E402  (the Bridge tests' scene helpers; needs slicer-core)

from MedXAIBridge.cohortNodes import FOLDER_ATTRIBUTE, cohortSummary, cohortTableNode, cohortTableNodes  # noqa: E402
from MedXAILib.errors import InputError  # noqa: E402
from MedXAIRuntime import cohortPanel, cohortTable  # noqa: E402

pytestmark = pytest.mark.mrml


@pytest.fixture
def scene():
    scene = mrmlTesting.newScene()
    yield scene
    scene.Clear(True)


def _row(case: str, structure: str, label: int, entropy: float, tta: float, **extra) -> dict:
    from MedXAILib.analysis.qa import DEFAULT_SCORE

    scores = {"entropy": entropy, "tta_variance": tta, "xai_outside": 0.5, "dice": 0.9}
    return {"case_id": case, "status": "done", "structure": structure, "label": label, **scores,
            "risk": scores[DEFAULT_SCORE], "scene": f"cases/{case}/scene.mrb", **extra}


def _cohort(folder: Path, rows: list[dict]) -> Path:
    from MedXAILib.cohort.report import table_columns, write_table_csv

    folder.mkdir(parents=True, exist_ok=True)
    write_table_csv(table_columns(rows), folder / "table.csv")
    return folder


ROWS = [
    _row("c1", "liver", 1, 0.12, 0.02, site="A"),
    _row("c1", "spleen", 2, 0.31, 0.05, site="A"),
    _row("c2", "liver", 1, 0.27, 0.31, site="B"),
    {"case_id": "c3", "status": "failed", "error": "cannot read ct3.nrrd: not an image", "site": "A"},
]


def test_the_summary_counts_rows_cases_failures_and_names_the_qa_score(scene, tmp_path):
    from MedXAILib.analysis.qa import DEFAULT_SCORE

    node = cohortTableNode(scene, _cohort(tmp_path / "out", ROWS))
    summary = cohortSummary(node)
    assert (summary.rows, summary.cases, summary.failed) == (4, 3, ["c3"])
    assert summary.score == DEFAULT_SCORE == "entropy"  # the column the risk column repeats
    assert summary.worst == ("c1", "spleen", pytest.approx(0.31))
    expected = "4 rows: 3 cases, 1 failed (c3). QA score: entropy (risk column); highest 0.31: c1 spleen."
    assert cohortPanel.summaryText(summary) == expected
    assert cohortPanel.tableSummaryText(node) == expected  # straight from the node


def test_a_table_without_scores_or_failures_still_reads(scene, tmp_path):
    rows = [dict(_row("c1", "liver", 1, 0.2, 0.1), risk=0.7)]  # a risk no column repeats
    summary = cohortSummary(cohortTableNode(scene, _cohort(tmp_path / "a", rows)))
    assert (summary.cases, summary.failed, summary.score) == (1, [], "")
    assert cohortPanel.summaryText(summary) == "1 row: 1 case. QA score: risk column; highest 0.7: c1 liver."
    failed = [{"case_id": f"c{i}", "status": "failed", "error": "x"} for i in range(7)]
    summary = cohortSummary(cohortTableNode(scene, _cohort(tmp_path / "b", failed)))
    assert summary.worst is None
    assert cohortPanel.summaryText(summary) == "7 rows: 7 cases, 7 failed (c0, c1, c2, c3, c4, ...)."


def test_reopening_finds_the_folders_earlier_table_and_errors_are_one_line(scene, tmp_path):
    first, other = _cohort(tmp_path / "one", ROWS), _cohort(tmp_path / "two", ROWS[:1])
    a, b, c = cohortTableNode(scene, first), cohortTableNode(scene, other), cohortTableNode(scene, first)
    scene.AddNewNodeByClass("vtkMRMLTableNode", "not a cohort")
    assert cohortTableNodes(scene, first) == [a, c] and cohortTableNodes(scene, other) == [b]
    assert cohortTableNodes(scene) == [a, b, c] and a.GetAttribute(FOLDER_ATTRIBUTE) == str(first.resolve())
    with pytest.raises(InputError) as error:
        cohortTableNode(scene, tmp_path / "empty")
    line = cohortTable.errorLine(error.value)
    assert "holds no cohort table (table.csv)" in line and "medxai cohort MANIFEST" in line and "\n" not in line
    assert cohortTable.errorLine(RuntimeError("first\nsecond")) == "first"
    assert cohortTable.errorLine(KeyError()) == "KeyError"
