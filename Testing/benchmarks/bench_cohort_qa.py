"""Does a QA score find failed segmentations? Failure detection on a phantom cohort (not a pytest test).

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python Testing/benchmarks/bench_cohort_qa.py [--per-mode 8] [--workers 2]
        [--out /tmp/medxai-qa-cohort] [--json results.json]

The cohort: CT phantoms (``MedXAILib.demo.samples.ct_phantom``, the default 96 x 96 x 64 grid of 2 x 2 x 3
mm, held-out seeds from 5,000,000) segmented by the shipped, trained ``phantom_segmenter``, ``--per-mode``
cases for each of six conditions, severities drawn per case from the ranges below, so the true Dice of
every structure is known from the phantom's labels:

==============  ============================================================================================
clean           the default phantom (two liver lesions)
noise           white Gaussian noise of 100-400 HU added (the training noise was 10-20 HU, correlated)
shift           every voxel shifted by +100 to +300 HU (a calibration error)
artefact        metal-like streaks: 6-12 lines of +-600 to +-1500 HU through one point in the axial slices of
                a 30-60 mm slab, and a 3 mm metal bead of 3000 HU at that point
truncated       the field of view cut to 30-60 % of the grid along I from one side (labels cut alike)
contrast        the two liver lesions hyperdense, +40 to +120 HU over the liver (training: -70 to -35 HU)
==============  ============================================================================================

Every case goes through ``medxai cohort``'s library call (``run_cohort``: Ray, ``--workers`` workers, all
seven structures, the default test-time ensemble of the identity and three 2-voxel shifts). For each score
of :data:`MedXAILib.analysis.qa.SCORES` the script reports the area under the risk-coverage curve (AURC,
Zenk et al., Medical Image Analysis 2025) against the true risk 1 - Dice, per structure (every case x
structure row) and per case (the mean score against 1 - mean Dice), beside the oracle (the true risks
themselves) and the random level (the mean risk). Lower is better. It also prints the mean Dice and the
mean of each score per condition, so the table can be read against what the cohort holds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MODES = ("clean", "noise", "shift", "artefact", "truncated", "contrast")


def make_case(mode: str, seed: int):
    """(image, labels, severity) of one phantom case with the given failure mode."""
    from MedXAILib.demo.samples import Lesion, ct_phantom

    rng = np.random.default_rng(seed)
    if mode == "contrast":
        contrast = float(rng.uniform(40.0, 120.0))
        image, labels, _ = ct_phantom(seed, lesions=[Lesion("liver", contrast_hu=contrast),
                                                     Lesion("liver", contrast_hu=contrast)])
        return image, labels, contrast
    image, labels, _ = ct_phantom(seed)
    array = image.array.copy()
    severity = 0.0
    if mode == "noise":
        severity = float(rng.uniform(100.0, 400.0))
        array += rng.normal(0.0, severity, array.shape).astype(np.float32)
    elif mode == "shift":
        severity = float(rng.uniform(100.0, 300.0))
        array += severity
    elif mode == "artefact":
        severity = float(rng.uniform(600.0, 1500.0))
        body = np.argwhere(labels > 0)
        centre = body[rng.integers(len(body))]
        spacing = image.spacing
        half = int(rng.uniform(15.0, 30.0) / spacing[2])
        k0, k1 = max(centre[2] - half, 0), min(centre[2] + half + 1, array.shape[3])
        ii, jj = np.meshgrid(np.arange(array.shape[1]), np.arange(array.shape[2]), indexing="ij")
        di, dj = (ii - centre[0]) * spacing[0], (jj - centre[1]) * spacing[1]
        streaks = np.zeros(ii.shape, np.float32)
        for _ in range(int(rng.integers(6, 13))):
            angle = rng.uniform(0.0, np.pi)
            distance = np.abs(di * np.sin(angle) - dj * np.cos(angle))
            streaks += np.where(distance < 1.5, severity * rng.choice([-1.0, 1.0]), 0.0).astype(np.float32)
        bead = np.sqrt(di ** 2 + dj ** 2) <= 3.0
        streaks[bead] = 3000.0
        array[0, :, :, k0:k1] += streaks[:, :, None]
    elif mode == "truncated":
        severity = float(rng.uniform(0.30, 0.60))
        keep = int(round(severity * array.shape[1]))
        start = 0 if rng.random() < 0.5 else array.shape[1] - keep
        from MedXAILib.volume import ImageVolume

        affine = image.affine.copy()
        affine[:3, 3] = (image.affine @ np.array([start, 0, 0, 1.0]))[:3]
        cut = ImageVolume(array[:, start:start + keep].copy(), affine, channel_names=["CT"])
        return cut, labels[start:start + keep].copy(), severity
    return image.with_array(array, channel_names=["CT"]), labels, severity


def build_cohort(folder: Path, per_mode: int) -> Path:
    from MedXAILib.io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["case_id,image,reference,mode,severity"]
    for m, mode in enumerate(MODES):
        for i in range(per_mode):
            seed = 5_000_000 + 1000 * m + i
            case = f"{mode}{i:02d}"
            image, labels, severity = make_case(mode, seed)
            if not (folder / f"{case}.nrrd").exists():
                write_image(image, folder / f"{case}.nrrd")
                write_image(image.with_array(labels[np.newaxis].astype(np.float32)), folder / f"{case}_ref.nrrd")
            lines.append(f"{case},{case}.nrrd,{case}_ref.nrrd,{mode},{severity:.4g}")
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-mode", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray", default="local", help="local, off, or a cluster address")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medxai-qa-cohort"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from MedXAILib.analysis.qa import SCORES, XAI_SCORES, aurc
    from MedXAILib.cohort import run_cohort

    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    manifest = build_cohort(args.out / "inputs", args.per_mode)
    started = time.perf_counter()
    summary = run_cohort(manifest, ROOT / "Resources" / "Models" / "phantom_segmenter.json", args.out / "cohort",
                         workers=args.workers, ray=args.ray,
                         on_event=lambda e: print(json.dumps(e), flush=True) if e["event"] != "started" else None)
    seconds = time.perf_counter() - started
    table = summary.table
    ok = np.array([s == "done" or s == "skipped" for s in table["status"]])
    dice = np.asarray(table["dice"], float)[ok]
    risk = 1.0 - dice
    cases = np.asarray(table["case_id"])[ok]
    modes = np.asarray(table["mode"])[ok]
    ids = list(dict.fromkeys(cases))
    case_risk = np.array([risk[cases == c].mean() for c in ids])
    results: dict = {"cases": len(ids), "rows": int(ok.sum()), "seconds": round(seconds, 1), "scores": {}}
    print(f"\n{len(ids)} cases, {int(ok.sum())} case x structure rows, {seconds:.0f} s; failed: {summary.failed}")
    print("\n| score | AURC per structure | AURC per case |\n|---|---|---|")
    for name in SCORES:
        values = np.asarray(table[name], float)[ok]
        per_case = np.array([np.nanmean(values[cases == c]) if np.isfinite(values[cases == c]).any() else math.nan
                             for c in ids])
        row = {"structure": aurc(values, risk), "case": aurc(per_case, case_risk)}
        results["scores"][name] = row
        print(f"| {name} | {row['structure']:.4f} | {row['case']:.4f} |")
    # does an explanation score add to the best baseline? the mean of the two scores' ranks (0..1)
    def ranks(values):
        values = np.where(np.isnan(values), np.inf, values)
        return np.argsort(np.argsort(values, kind="stable"), kind="stable") / max(len(values) - 1, 1)

    for name in XAI_SCORES:
        combined = (ranks(np.asarray(table["entropy"], float)[ok]) + ranks(np.asarray(table[name], float)[ok])) / 2
        per_case = np.array([combined[cases == c].mean() for c in ids])
        row = {"structure": aurc(combined, risk), "case": aurc(per_case, case_risk)}
        results["scores"][f"entropy+{name}"] = row
        print(f"| entropy + {name} (mean rank) | {row['structure']:.4f} | {row['case']:.4f} |")
    # within one kind of structure: is a score more than a proxy for "small, hard structure"?
    structures = np.asarray(table["structure"])[ok]
    kinds = list(dict.fromkeys(structures))
    for name in SCORES:
        values = np.asarray(table[name], float)[ok]
        results["scores"][name]["within_structure"] = float(np.mean(
            [aurc(values[structures == k], risk[structures == k]) for k in kinds]))
    within_oracle = float(np.mean([aurc(risk[structures == k], risk[structures == k]) for k in kinds]))
    within_random = float(np.mean([risk[structures == k].mean() for k in kinds]))
    results["oracle"] = {"structure": aurc(risk, risk), "case": aurc(case_risk, case_risk), "within_structure": within_oracle}
    results["random"] = {"structure": float(risk.mean()), "case": float(case_risk.mean()),
                         "within_structure": within_random}
    for name in ("oracle", "random"):
        print(f"| {name} | {results[name]['structure']:.4f} | {results[name]['case']:.4f} |")
    best = min(SCORES, key=lambda n: results["scores"][n]["structure"])
    results["best_structure"] = best
    print(f"\nbest per structure: {best}; best per case: "
          f"{min(SCORES, key=lambda n: results['scores'][n]['case'])}")
    print("\n| score | AURC within each structure (mean over the 7) |\n|---|---|")
    for name in SCORES:
        print(f"| {name} | {results['scores'][name]['within_structure']:.4f} |")
    print(f"| oracle | {within_oracle:.4f} |\n| random | {within_random:.4f} |")
    print("\n| condition | mean Dice | " + " | ".join(SCORES) + " |\n|---|---|" + "---|" * len(SCORES))
    results["modes"] = {}
    for mode in MODES:
        inside = modes == mode
        means = {name: float(np.nanmean(np.asarray(table[name], float)[ok][inside])) for name in SCORES}
        results["modes"][mode] = {"dice": float(dice[inside].mean()), **means}
        print(f"| {mode} | {dice[inside].mean():.3f} | " + " | ".join(f"{means[n]:.3g}" for n in SCORES) + " |")
    print("\n| structure | mean Dice | rows with Dice < 0.5 |\n|---|---|---|")
    results["structures"] = {}
    for name in dict.fromkeys(structures):
        inside = structures == name
        results["structures"][name] = {"dice": float(dice[inside].mean()), "failures": int((dice[inside] < 0.5).sum())}
        print(f"| {name} | {dice[inside].mean():.3f} | {int((dice[inside] < 0.5).sum())} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
