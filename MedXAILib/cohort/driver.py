"""``run_cohort``: manifest -> run requests -> workers -> table and report.

The driver plans and tabulates; the workers run (:mod:`.executors`). Every case folder is a part of the
output guard committed by its worker as soon as the case is done (:meth:`MedXAILib.io.outputs.OutputSet.part`),
so an interrupted run keeps every finished case and a re-run does only the rest. The table, the report and
the run log go into the cohort folder through the guard's staging, committed at the end::

    OUT/cases/<id>/...   one folder per case (see MedXAILib.cohort.case)
    OUT/table.csv        one row per case x structure (failed cases: one row with the error)
    OUT/table.parquet    the same table
    OUT/report.html      the least trustworthy structures first, with thumbnails and links to the scenes
    OUT/log.jsonl        every run's events: started, done, skipped, failed, retried (with worker process,
                         seconds, peak memory), appended run after run
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import InputError
from ..io.outputs import LEFTOVER_PREFIXES, Output, OutputSet
from ..monitor import Monitor
from .manifest import read_manifest
from .plan import CASES_FOLDER, CohortOptions, case_complete, case_folder, case_request

__all__ = ["run_cohort", "CohortSummary", "LOCAL", "OFF"]

#: ``ray`` values: start a local Ray instance (the default), or run in this process without Ray.
LOCAL, OFF = "local", "off"


@dataclass
class CohortSummary:
    """What a cohort run did.

    Attributes:
        cases: cases in the manifest.
        done, skipped, failed: case ids by outcome (skipped: complete from an earlier run).
        table: the table's columns.
        events: this run's events (the lines it added to ``log.jsonl``).
        default_score: the score the report ranks by.
        seconds: wall time of the run.
    """

    cases: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    table: dict[str, list] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    default_score: str = ""
    seconds: float = 0.0


def _stale_staging(cases: Path) -> None:
    """Remove staging folders that workers killed mid-case left behind (never a committed case)."""
    if cases.is_dir():
        for path in cases.iterdir():
            if path.is_dir() and path.name.startswith(LEFTOVER_PREFIXES):
                shutil.rmtree(path, ignore_errors=True)


def run_cohort(manifest: str | Path, model: str | Path, out: str | Path, *, structures: str = "all",
               method: str = "saliency", params: Optional[dict[str, Any]] = None, workers: int = 2,
               ray: Optional[str] = LOCAL, device: str = "auto", seed: int = 0, trust_bundle: bool = False,
               model_options: Optional[dict[str, Any]] = None,
               qa: Optional[dict[str, Any]] = None, outputs: Optional[OutputSet] = None,
               monitor: Optional[Monitor] = None, on_event: Optional[Callable[[dict[str, Any]], None]] = None,
               threads: int = 1) -> CohortSummary:
    """Explain, score and tabulate every case of a cohort.

    Args:
        manifest: a CSV file or a folder of images (:func:`MedXAILib.cohort.manifest.read_manifest`).
        model: the segmenter (any format :func:`MedXAILib.load_model` reads, ``totalsegmentator:TASK`` too).
        out: the cohort folder (created; cases already complete in it are skipped).
        structures: ``"all"`` or a comma-separated list of class names.
        method, params: the attribution method (``saliency`` and ``input_x_gradient`` share one gradient
            pass among the structures).
        workers: Ray workers.
        ray: ``"local"`` (start a local Ray instance, stopped at the end), ``"off"`` (this process, no Ray),
            or an address (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``) of a running cluster.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: the cohort seed (each case's seed derives from it and the case id).
        trust_bundle: let a MONAI bundle's config run code.
        model_options: :func:`MedXAILib.load_model` keyword arguments, JSON values (nnU-Net folds,
            configuration, checkpoint, mirroring; overrides): every worker loads the model with them.
        qa: :class:`MedXAILib.analysis.qa.QAOptions` fields (test-time transforms, distances, budget).
        outputs: the command's output guard holding `out` as a folder output (the table, report and log are
            staged there and committed by the caller); None: one is made here and committed at the end.
        monitor: progress (per case) and cancel.
        on_event: called with every event as it happens.
        threads: torch threads per worker.

    Raises:
        InputError: a bad manifest, model, structure or option (before any case runs); Ray missing.
        Cancelled, KeyboardInterrupt: stopped; finished cases stay committed, the rest leaves nothing.
    """
    from ..allocator import choice as allocator_choice
    from ..analysis.qa import DEFAULT_SCORE, QAOptions, resolve_structures
    from ..model import load_model
    from ..runs import load_model_cached, read_result
    from .executors import import_ray, run_locally, run_on_ray
    from .report import table_columns, write_report, write_table_csv, write_table_parquet

    started = time.perf_counter()
    monitor = monitor or Monitor()
    if int(workers) < 1:
        raise InputError(f"--workers must be >= 1; got {workers}")
    if ray != OFF:
        import_ray(local=ray in (None, LOCAL))  # says how to install it before anything runs
    allocator = allocator_choice()  # MEDXAI_ALLOCATOR for Ray's workers, checked before any case
    cases = read_manifest(manifest)
    qa_options = QAOptions(**{"method": method, "params": dict(params or {}), **dict(qa or {})})
    from ..methods import METHODS
    from ..params import make_params

    make_params(METHODS.get(qa_options.method).params, qa_options.params)  # bad names fail now
    from ..model.totalsegmentator import is_totalsegmentator
    from ..runs.request import check_model_options

    model_options = check_model_options(model_options)
    named = [name.strip() for name in str(structures).split(",") if name.strip()]
    if is_totalsegmentator(model) and len(named) == 1 and named[0] != "all":
        model_options.setdefault("structure", named[0])  # a task made of several models: the part predicting it
    model_path = str(model) if is_totalsegmentator(model) else str(Path(model).resolve())
    if ray == OFF:  # the cases run in this process: the worker takes this model from the cache, not a second load
        adapter = load_model_cached(model_path, device, trust_bundle, model_options)
    else:  # the workers load their own; this process keeps none while they run
        adapter = load_model(model_path, trust_bundle=trust_bundle, device="cpu", **model_options)
    if adapter.task == "classification":
        raise InputError("a cohort QA run needs a segmentation model; this one is a classifier")
    resolve_structures(structures, adapter.class_names or [])
    options = CohortOptions(model_path=model_path, model_sha256=adapter.sha256 or "", structures=structures,
                            qa=qa_options.to_json(), device=device, seed=seed, trust_bundle=trust_bundle,
                            threads=threads, model_options=model_options)
    del adapter
    out = Path(out)
    own_guard = outputs is None
    if own_guard:
        outputs = OutputSet([Output("out", out, folder=True)], [("manifest", manifest), ("model", model_path)])
    (out / CASES_FOLDER).mkdir(parents=True, exist_ok=True)
    _stale_staging(out / CASES_FOLDER)

    events: list[dict[str, Any]] = []
    outcomes: dict[str, dict[str, Any]] = {}
    total = len(cases)

    def emit(event: dict[str, Any]) -> None:
        event = {"time": round(time.time(), 3), **event}
        events.append(event)
        if event["event"] in ("done", "skipped", "failed"):
            monitor.update(len([e for e in events if e["event"] in ("done", "skipped", "failed")]) / total,
                           f"case {event['case']}: {event['event']}")
        if on_event is not None:
            on_event(event)

    jobs = []
    monitor.update(0.0, f"Planning {total} cases")
    for case in cases:
        request = case_request(case, options)
        folder = case_folder(out, case.case_id)
        if case_complete(folder, request):
            outcomes[case.case_id] = {"case": case.case_id, "status": "skipped",
                                      "rows": read_result(folder).data.get("rows") or []}
            emit({"event": "skipped", "case": case.case_id})
            continue
        inputs = [("manifest image", f) for f in case.image_files]
        inputs += [("manifest reference", case.reference)] if case.reference else []
        jobs.append((case.case_id, request, outputs.part(folder, inputs)))
    worker_args = {"model_path": model_path, "device": device, "trust_bundle": trust_bundle, "threads": threads,
                   "default_score": DEFAULT_SCORE, "model_options": model_options}
    try:
        if jobs:
            if ray == OFF:
                found = run_locally(jobs, worker_args, emit, monitor)
            else:
                found = run_on_ray(jobs, worker_args, emit, workers=workers,
                                   address=None if ray in (None, LOCAL) else ray, monitor=monitor,
                                   allocator=allocator)
            outcomes.update({o["case"]: o for o in found})
    finally:
        _stale_staging(out / CASES_FOLDER)
    rows = []
    for case in cases:
        outcome = outcomes.get(case.case_id, {"status": "failed", "error": "the case did not run", "rows": []})
        scene = f"{CASES_FOLDER}/{case.case_id}/scene.mrb"
        base = {"case_id": case.case_id, "status": outcome["status"], "error": outcome.get("error")}
        if outcome["status"] == "failed" or not outcome.get("rows"):
            rows.append({**base, "scene": "", **case.metadata})
            continue
        for row in outcome["rows"]:
            rows.append({**base, **row, "risk": row.get(DEFAULT_SCORE), "scene": scene, **case.metadata})
    columns = table_columns(rows)
    summary = CohortSummary(cases=total, table=columns, events=events, default_score=DEFAULT_SCORE,
                            done=[c.case_id for c in cases if outcomes.get(c.case_id, {}).get("status") == "done"],
                            skipped=[c.case_id for c in cases if outcomes.get(c.case_id, {}).get("status") == "skipped"],
                            failed=[c.case_id for c in cases if outcomes.get(c.case_id, {}).get("status", "failed") == "failed"])
    summary.seconds = round(time.perf_counter() - started, 3)
    staged = outputs.staged(out)
    write_table_csv(columns, staged / "table.csv")
    write_table_parquet(columns, staged / "table.parquet")
    facts = {"cases": total, "done in this run": len(summary.done), "complete from earlier runs": len(summary.skipped),
             "failed": len(summary.failed), "model": model_path, "structures": structures,
             "method": qa_options.method, "default QA score": DEFAULT_SCORE,
             "workers": "this process" if ray == OFF else f"{workers} Ray workers ({ray or LOCAL})"}
    write_report(staged / "report.html", columns, facts, DEFAULT_SCORE)
    previous = (out / "log.jsonl").read_text(encoding="utf-8") if (out / "log.jsonl").is_file() else ""
    run = {"event": "run", "cases": total, "done": len(summary.done), "skipped": len(summary.skipped),
           "failed": len(summary.failed), "workers": workers if ray != OFF else 0, "ray": ray,
           "seconds": summary.seconds}
    (staged / "log.jsonl").write_text(previous + "".join(json.dumps(e, default=str) + "\n" for e in [*events, run]),
                                      encoding="utf-8")
    if own_guard:
        outputs.commit()
    return summary
