"""Where gradient search changes the demo image, with the defaults before and after issue 19.

Run from the repository root (not a pytest test; 5 to 20 minutes on a 2-core CPU)::

    OMP_NUM_THREADS=2 .venv/bin/python Testing/benchmarks/counterfactual_defaults.py [--seed 0]

On the demo phantom (``demo_case(seed)``: CT + PET, one liver lesion of radius 9 mm) it asks the
shipped PET/CT classifier's ``gradient_search`` for P(lesion) <= 0.1 (the user guide's example) with
three settings:

1. ``before``: ``goal_weight=1, smooth_mm=0``, the defaults before issue 19;
2. ``calibrated``: the calibrated goal weight only (``goal_weight=0, smooth_mm=0``);
3. ``defaults``: the defaults now (calibrated goal weight, change made through a 3 mm Gaussian).

For each it prints whether the goal was reached and after how many steps, the voxels changed above
noise (in ml and as a share of the image), how many of them lie within 10 mm of the lesion, the
share of sum |change| within 10 mm of the lesion, the structures the changed voxels lie in, and the
largest change per channel (HU, SUV).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from MedXAILib.counterfactual import Goal, generate_counterfactual  # noqa: E402
from MedXAILib.demo import demo_case, load_demo_models  # noqa: E402

SETTINGS = {"before": {"goal_weight": 1.0, "smooth_mm": 0.0}, "calibrated": {"goal_weight": 0.0, "smooth_mm": 0.0},
            "defaults": {}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: " + ", ".join(SETTINGS))
    args = parser.parse_args()
    case = demo_case(args.seed)
    classifier = load_demo_models(log=lambda *_: None)["classifier"].adapter
    near = ndimage.distance_transform_edt(~case.lesion, sampling=case.image.spacing) <= 10.0
    print(f"demo phantom {args.seed}: {case.image.shape} voxels, lesion {int(case.lesion.sum())} voxels")
    for name in args.settings.split(","):
        started = time.perf_counter()
        result = generate_counterfactual(case.image, classifier, Goal("class_probability", 1, target_probability=0.1),
                                         generator="gradient_search", params=SETTINGS[name], seed=args.seed)
        delta = result.difference.array.astype(np.float64)
        noise = result.metrics["sparsity"]["noise_level"]
        changed = np.zeros(delta.shape[1:], bool)
        for c, sigma in enumerate(noise):
            changed |= np.abs(delta[c]) > sigma
        spread = result.metrics["minimality"]
        total = np.abs(delta).sum(axis=0)
        where = {n: int((changed & (case.labels == v)).sum()) for v, n in enumerate(case.class_names)}
        print(f"\n{name} {SETTINGS[name] or '(library defaults)'}: goal "
              f"{'reached' if result.reached else 'NOT reached'} after {result.provenance['diagnostics'].get('steps')} "
              f"steps, P(lesion) {result.metrics['validity']['before']:.4f} -> {result.metrics['validity']['after']:.4f}"
              f" ({time.perf_counter() - started:.0f} s)")
        print(f"  changed above noise: {spread['changed_voxels']} voxels = {spread['changed_ml']:.1f} ml = "
              f"{spread['changed_share_of_image']:.2%} of the image; {int((changed & near).sum())} within 10 mm of "
              f"the lesion; {total[near].sum() / max(total.sum(), 1e-30):.0%} of sum |change| within 10 mm")
        print("  changed voxels per true structure: " + ", ".join(f"{n} {v}" for n, v in where.items() if v))
        print("  largest change per channel: " + ", ".join(f"{n} {v:.3g}" for n, v in
                                                         spread["max_abs_per_channel"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
