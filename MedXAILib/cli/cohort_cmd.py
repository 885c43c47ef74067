"""``medxai cohort``: explain, score and rank every structure of every case of a cohort (on Ray)."""

from __future__ import annotations

import argparse
import json
import sys

from . import common

__all__ = ["register", "run", "EXIT_CASES_FAILED"]

#: Exit code of a run that finished with failed cases (their rows hold the errors; stderr counts them).
#: 1, 2 and 130 already mean an internal error, bad input and a cancel, and an exit code holds 8 bits,
#: so the count itself is on stderr and in the final ``{"done": ...}`` line rather than in the code.
EXIT_CASES_FAILED = 3


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cohort", help="segmentation QA of a whole cohort: explain, score and rank every structure (Ray)",
        description="For every case of MANIFEST: the prediction, the attribution of each requested structure "
        "(all structures from one shared gradient pass), the test-time ensemble's uncertainty, relevance "
        "statistics and QA scores, in OUT/cases/<id>/ (NRRD, seg.nrrd, JSON, a Slicer .mrb scene), committed "
        "case by case; then OUT/table.csv, OUT/table.parquet (one row per case x structure) and OUT/report.html "
        "(the least trustworthy structures first). A re-run skips complete cases. Exit code 0, or 3 when "
        "some cases failed (their rows hold the errors).")
    parser.add_argument("manifest", metavar="MANIFEST",
                        help="CSV (columns image or image_<channel>..., optional case_id, optional reference "
                             "segmentation for evaluation only, any metadata) or a folder of images")
    parser.add_argument("--model", required=True, help="the segmenter: " + common.MODEL_HELP)
    parser.add_argument("--out", required=True, metavar="DIR", help="the cohort folder (created if missing)")
    parser.add_argument("--structures", default="all", metavar="all|NAMES",
                        help="comma-separated class names, or all (every class but the first, default)")
    parser.add_argument("--method", default="saliency", help="attribution method (default saliency; saliency "
                        "and input_x_gradient share one gradient pass among the structures)")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="method parameter; repeatable")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="Ray workers, one model each (default 2; each gets a GPU share when there are GPUs)")
    parser.add_argument("--ray", default=None, metavar="ADDRESS|off",
                        help="join a running Ray cluster (auto, HOST:PORT or ray://HOST:PORT); off runs the cases "
                             "one by one in this process. Default: a local Ray instance, stopped at the end")
    qa = parser.add_argument_group("QA options")
    qa.add_argument("--tta", default="identity,shift_i,shift_j,shift_k", metavar="T1,T2,...",
                    help="test-time transforms of the ensemble: identity, shift_i/j/k, flip_i/j/k (mirrors only "
                         "for models trained with them)")
    qa.add_argument("--near-mm", type=float, default=10.0, metavar="MM",
                    help="relevance farther than this from a structure counts as outside it (default 10)")
    qa.add_argument("--band-mm", type=float, default=3.0, metavar="MM",
                    help="half-width of the band around a structure's surface (default 3)")
    parser.add_argument("--trust-bundle", action="store_true", help="allow a bundle's config to run code")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--memory-budget", default="2GB", metavar="SIZE",
                        help="memory each worker's model may use (default 2GB: fixed, so every worker batches "
                             "windows alike and results repeat exactly)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (each case's seed derives from it and "
                        "its id)")
    parser.add_argument("--progress-json", action="store_true",
                        help="progress and events (started, done, failed, retried, with worker processes) as "
                             "JSON lines on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_model_options(parser)
    common.declare_io(parser, ("manifest", "model"), [common.OutputOption("out", folder=True)])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..cohort import run_cohort
    from ..errors import Cancelled, InputError
    from ..model.memory import parse_budget

    parse_budget(args.memory_budget)  # a bad size fails before anything runs
    if args.near_mm <= 0 or args.band_mm <= 0:
        raise InputError("--near-mm and --band-mm must be > 0")
    monitor = common.monitor_from_args(args)

    def on_event(event: dict) -> None:
        if args.progress_json:
            print(json.dumps({"event": event["event"], **{k: v for k, v in event.items() if k != "event"}},
                             default=str), flush=True)

    try:
        summary = run_cohort(args.manifest, args.model, args.out, structures=args.structures, method=args.method,
                             params=common.parse_params(args.param), workers=args.workers,
                             ray=args.ray if args.ray is not None else "local", device=args.device, seed=args.seed,
                             trust_bundle=args.trust_bundle, model_options=common.model_options(args),
                             outputs=args.outputs, monitor=monitor, on_event=on_event,
                             qa={"tta": [t.strip() for t in args.tta.split(",") if t.strip()],
                                 "near_mm": args.near_mm, "band_mm": args.band_mm,
                                 "memory_budget": args.memory_budget})
    except (KeyboardInterrupt, Cancelled):  # unlike other commands, the finished cases stay
        sys.stderr.write(f"\nmedxai: cancelled; the cases completed so far are kept in {args.out}/cases, and a "
                         "re-run does the rest\n")
        return common.EXIT_CANCELLED
    warnings = []
    if summary.failed:
        warnings.append(f"{len(summary.failed)} of {summary.cases} cases failed ({', '.join(summary.failed[:5])}"
                        f"{', ...' if len(summary.failed) > 5 else ''}); their rows in table.csv hold the errors")
    common.finish(args, warnings=warnings)
    if not (args.quiet or args.progress_json):
        print(f"{summary.cases} cases: {len(summary.done)} done, {len(summary.skipped)} complete already, "
              f"{len(summary.failed)} failed; ranked by {summary.default_score} in {args.out}/report.html")
    return EXIT_CASES_FAILED if summary.failed else common.EXIT_OK
