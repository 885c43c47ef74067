"""Cohort-scale segmentation QA: explain, score and rank every structure of every case of a cohort.

A cohort case is a run request like any other (:mod:`MedXAILib.runs`, kind ``qa_case``); this package only
plans, distributes, resumes and tabulates:

- :mod:`.manifest`: the cases (a CSV with image, case_id, reference and metadata columns, or a folder);
- :mod:`.plan`: each case's run request, seed and folder, and whether it is complete already;
- :mod:`.case`: what a worker does with one case (run, write the files, commit the folder);
- :mod:`.executors`: Ray actors (a local instance by default, or a cluster) or this process; Ray is
  imported there only, when a run starts;
- :mod:`.report`: the table (CSV, Parquet) and report.html;
- :mod:`.driver`: :func:`run_cohort`, which ``medxai cohort`` calls.
"""

from __future__ import annotations

from .driver import LOCAL, OFF, CohortSummary, run_cohort
from .manifest import CohortCase, read_manifest
from .plan import CohortOptions, case_complete, case_folder, case_request, case_seed

__all__ = ["run_cohort", "CohortSummary", "LOCAL", "OFF", "CohortCase", "read_manifest", "CohortOptions",
           "case_complete", "case_folder", "case_request", "case_seed"]
