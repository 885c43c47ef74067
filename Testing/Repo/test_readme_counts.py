"""The numbers the README states about the registries are the registries' own (they drifted once: 19 methods
stated while `medxai methods` listed 20)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_counts_match_the_registries():
    from MedXAILib.evaluation import METRICS
    from MedXAILib.methods import METHODS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    methods = re.search(r"(\d+) attribution methods", text)
    metrics = re.search(r"(\d+) quality metrics", text)
    assert methods and int(methods.group(1)) == len(METHODS), (methods and methods.group(0), len(METHODS))
    assert metrics and int(metrics.group(1)) == len(METRICS), (metrics and metrics.group(0), len(METRICS))
