"""Whole explain() calls with glibc's default allocator and with freed buffers kept (not a pytest test).

Run from the repository root::

    .venv/bin/python Testing/benchmarks/bench_allocator.py [--cases classifier,segmenter,unet]
        [--methods saliency,smoothgrad,occlusion] [--repeats 5] [--rounds 2] [--threads 2] [--json OUT.json]

With ``MEDXAI_ALLOCATOR=keep`` the ``medxai`` command, the background run worker and the cohort's Ray
workers raise glibc's mmap and trim thresholds (:mod:`MedXAILib.allocator`); a library call never does.
The setting is process-wide, so each side runs in child processes of its own: ``system`` (glibc's
defaults) and ``kept`` (:func:`~MedXAILib.allocator.keep_freed_buffers` first), alternating for
``--rounds`` rounds.
Each child runs every (case, method) once to warm up and then ``--repeats`` times, with the settings of
``bench_explain.py --targets`` on its cases (the shipped demo models, MONAI's UNet at 96^3), and reports
the medians and its peak RSS (the whole workload's). Printed: per row the median over the rounds of each
side, the ratio kept / system, and each side's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = ROOT / "Resources" / "Models"


def child(cases: list[str], methods: list[str], repeats: int, threads: int) -> dict:
    """The workload in this process: {"rows": {"case method": median s}, "peak_rss_mb": ...}."""
    import torch

    sys.path.insert(0, str(HERE))
    import bench_explain as bench
    from MedXAILib import allocator, explain

    torch.set_num_threads(threads)
    rows = {}
    for case in cases:
        data = bench.make_case_data(case, False, MODELS)
        s = bench.setup(case, data, "cpu", MODELS)
        settings = bench.TARGET_SETTINGS["demo" if bench.CASES[case].demo else "cube"]
        for method in methods:
            params = settings.get(method, {})
            explain(s.image, s.adapter, method, s.target, params)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                explain(s.image, s.adapter, method, s.target, params)
                times.append(time.perf_counter() - started)
            rows[f"{case} {method}"] = statistics.median(times)
    return {"rows": rows, "kept": allocator.kept(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_child(side: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    command = [sys.executable, __file__, "--child", side, "--cases", args.cases, "--methods", args.methods,
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{side} child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="classifier,segmenter,unet")
    ap.add_argument("--methods", default="saliency,smoothgrad,occlusion")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each child")
    ap.add_argument("--json")
    ap.add_argument("--child", choices=("system", "kept"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child == "kept":
            from MedXAILib.allocator import keep_freed_buffers

            if not keep_freed_buffers():
                raise SystemExit("the allocator could not be changed here (not glibc, or MALLOC_* set)")
        print(json.dumps(child(args.cases.split(","), args.methods.split(","), args.repeats, args.threads)))
        return 0

    started = time.perf_counter()
    runs: dict[str, list[dict]] = {"system": [], "kept": []}
    for round_index in range(args.rounds):
        for side in ("system", "kept") if round_index % 2 == 0 else ("kept", "system"):
            print(f"  round {round_index + 1}: {side} ...", file=sys.stderr, flush=True)
            runs[side].append(_run_child(side, args))
    assert all(r["kept"] for r in runs["kept"]) and not any(r["kept"] for r in runs["system"])
    print(f"load average {'/'.join(f'{v:.2f}' for v in os.getloadavg())}, {args.rounds} rounds of "
          f"{args.repeats} calls, {time.perf_counter() - started:.0f} s")
    print(f"{'row':28s} {'system s':>9s} {'kept s':>9s} {'kept/system':>12s}")
    table = {}
    for row in runs["system"][0]["rows"]:
        system = statistics.median(r["rows"][row] for r in runs["system"])
        kept = statistics.median(r["rows"][row] for r in runs["kept"])
        table[row] = {"system_s": system, "kept_s": kept, "ratio": kept / system}
        print(f"{row:28s} {system:9.3f} {kept:9.3f} {kept / system:12.2f}")
    rss = {side: max(r["peak_rss_mb"] for r in runs[side]) for side in runs}
    print(f"peak RSS (MB, the largest child): system {rss['system']:.0f}, kept {rss['kept']:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": table, "peak_rss_mb": rss, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
