"""Cohort throughput and the shared structure pass, measured side by side (not a pytest test).

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python Testing/benchmarks/bench_cohort_scale.py [--cases 8] [--repeats 3]
        [--device cpu|cuda] [--skip-cohort] [--skip-structures] [--json OUT.json]

1. **Cases per hour** with 1 and then 2 Ray workers (a local instance each time, 1 CPU and 1 torch thread
   per worker) over the same ``--cases`` clean CT phantoms (96 x 96 x 64 voxels of 2 x 2 x 3 mm), all seven
   structures of the shipped ``phantom_segmenter``, the default test-time ensemble (4 members), saliency.
   The rate counts from the first case's start to the last case's end (the events of ``run_cohort``); the
   wall time with Ray's start and the workers' model loading is printed beside it. Scaling efficiency is
   rate(2) / (2 rate(1)). Per-case seconds, CPU seconds (all threads of the worker: on a machine shared
   with other jobs, a worker may get much less than its core, and wall time then says little) and the
   worker's peak resident set during a case (``VmHWM`` after a reset at the case's start) come from the
   same events.
2. **K structures at once**: ``explain_structures`` of the 8 classes (background included) of one phantom
   against 8 ``explain`` calls of one class each (saliency, predicted-structure targets), interleaved,
   fastest of ``--repeats`` after a warm-up; the maps agree (max relative difference printed). Target:
   <= 0.5x the sum.
3. With ``--device cuda``: the same cohort in this process on the GPU (``ray=off``), per-case seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "Resources" / "Models" / "phantom_segmenter.json"


def build(folder: Path, n: int) -> Path:
    from MedXAILib.demo.samples import ct_phantom
    from MedXAILib.io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["case_id,image"]
    for i in range(n):
        if not (folder / f"s{i:02d}.nrrd").exists():
            image, _, _ = ct_phantom(6_000_000 + i)
            write_image(image, folder / f"s{i:02d}.nrrd")
        lines.append(f"s{i:02d},s{i:02d}.nrrd")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def cohort_rate(manifest: Path, out: Path, workers: int, ray: str = "local", device: str = "auto") -> dict:
    from MedXAILib.cohort import run_cohort

    started = time.perf_counter()
    summary = run_cohort(manifest, MODEL, out, workers=workers, ray=ray, device=device)
    wall = time.perf_counter() - started
    events = summary.events
    first = min(e["time"] for e in events if e["event"] == "started")
    last = max(e["time"] for e in events if e["event"] == "done")
    done = [e for e in events if e["event"] == "done"]
    span = last - first
    return {"workers": workers, "cases": len(done), "span_s": round(span, 1), "wall_s": round(wall, 1),
            "cases_per_hour": round(3600 * len(done) / span, 1),
            "case_seconds_median": round(statistics.median(e["seconds"] for e in done), 2),
            "case_cpu_seconds_median": round(statistics.median(e["cpu_seconds"] for e in done), 2),
            "peak_rss_mb_median": round(statistics.median(e["peak_rss_mb"] for e in done), 1),
            "peak_rss_mb_max": round(max(e["peak_rss_mb"] for e in done), 1), "failed": summary.failed}


def structures_ratio(repeats: int, device: str) -> dict:
    from MedXAILib import load_model
    from MedXAILib.demo.samples import ct_phantom
    from MedXAILib.engine import explain, explain_structures
    from MedXAILib.target import Target

    model = load_model(MODEL, device=device)
    image, _, _ = ct_phantom(6_100_000)
    targets = [Target(class_index=k, region="predicted") for k in range(8)]
    explain_structures(image, model, targets[:2])  # warm-up
    explain(image, model, "saliency", targets[1])
    single_times, shared_times, difference = [], [], 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        singles = [explain(image, model, "saliency", target) for target in targets]
        single_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        shared = explain_structures(image, model, targets)
        shared_times.append(time.perf_counter() - t)
        difference = max(difference, max(float(np.abs(a.array - b.array).max() / np.abs(a.array).max())
                                         for a, b in zip(singles, shared)))
    return {"k": len(targets), "singles_s": round(min(single_times), 3), "shared_s": round(min(shared_times), 3),
            "ratio": round(min(shared_times) / min(single_times), 3), "max_rel_difference": difference,
            "singles_all_s": [round(t, 3) for t in single_times], "shared_all_s": [round(t, 3) for t in shared_times]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medxai-scale-cohort"))
    parser.add_argument("--skip-cohort", action="store_true")
    parser.add_argument("--skip-structures", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    print(f"load average at start: {os.getloadavg()[0]:.1f}; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs; device {args.device}", flush=True)
    results: dict = {"load_average_start": os.getloadavg()[0]}
    manifest = build(args.out / "inputs", args.cases)
    if not args.skip_structures:
        results["structures"] = structures_ratio(args.repeats, args.device)
        print("K structures at once:", json.dumps(results["structures"]), flush=True)
    if not args.skip_cohort and args.device == "cpu":
        import shutil

        rates = []
        for workers in (1, 2):
            shutil.rmtree(args.out / f"cohort{workers}", ignore_errors=True)
            rates.append(cohort_rate(manifest, args.out / f"cohort{workers}", workers))
            print("cohort:", json.dumps(rates[-1]), flush=True)
        results["cohort"] = rates
        results["scaling_efficiency"] = round(rates[1]["cases_per_hour"] / (2 * rates[0]["cases_per_hour"]), 3)
        print("scaling efficiency:", results["scaling_efficiency"])
    if args.device.startswith("cuda"):
        import shutil

        shutil.rmtree(args.out / "cohort-gpu", ignore_errors=True)
        results["gpu"] = cohort_rate(manifest, args.out / "cohort-gpu", 1, ray="off", device=args.device)
        results["gpu"]["device_name"] = torch.cuda.get_device_name(0)
        print("gpu:", json.dumps(results["gpu"]), flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    results["load_average_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
