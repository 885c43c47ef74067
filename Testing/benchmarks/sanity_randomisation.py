"""Cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018) for every registered method.

Run from the repository root (not a pytest test)::

    .venv/bin/python Testing/benchmarks/sanity_randomisation.py [--models DIR] [--methods a,b]
        [--cases classifier,segmenter] [--stages N] [--threshold T] [--json OUT.json]

For each method of ``MedXAILib.METHODS`` and each shipped demo model, loaded with
``MedXAILib.load_model`` from ``--models`` (default ``Resources/Models``: the shipped specs and
trained weights; the output names the spec, and only a missing spec falls back to an UNTRAINED
seeded stand-in, said in the output), the spec's preprocessing included, so inputs are in HU and
maps are with respect to HU: the classifier's spacing step (a no-op on the phantom grid) and clipped
soft-tissue window ([-50, 150] HU -> [0, 1]; outside it the gradient through the clip is zero, in the
trained and the randomised model alike), the segmenter's spacing step, unclipped [-200, 300] HU
window and single sliding window,
:func:`MedXAILib.evaluation.cascading_randomisation` explains the same target with the trained
network and after re-initialising its parameterised layers cumulatively from the output towards the
input in ``--stages`` steps (default 3; the last step has every layer random). Inputs (nothing
downloaded; the native phantom grid, 96 x 96 x 64 voxels of 2 x 2 x 3 mm, in HU):

* ``classifier`` (``lesion_classifier_ct``): the CT channel of ``classifier_case(1)`` (one liver
  lesion); target: the "lesion" class logit.
* ``segmenter`` (``phantom_segmenter``): ``segmenter_case(1_000_000)`` (the first held-out
  evaluation phantom, two liver lesions); target: the "lesion" logit summed over the lesion the
  trained model predicts (``region="predicted"``), or over the ground-truth lesion mask when the
  model predicts no lesion voxel (the table's ``target`` column says which).

Criterion (stated in the output): a method **passes** when the Spearman rank correlation of the
absolute maps, original vs. fully randomised network, over the whole volume, is below
``--threshold`` (default 0.5): the map then depends on what the network learned. SSIM of the
absolute maps (scaled to [0, 1]) and the signed Spearman correlation are reported beside it, and
Spearman(|a|) within a region of interest ("in the ROI"; see :class:`NearTarget`; it does not
change the verdict): for the segmenter the voxels within ``--near-mm`` (default 10 mm) of the target
region (far from a small target the |a| ranks of gradient maps do not depend on the weights, and
those voxels dominate a whole-volume rank correlation); for a model whose preprocessing clips the
intensities (the CT classifier) the voxels inside the window (outside it every gradient map is 0
for any weights, and those shared zeros dominate a whole-volume rank correlation). A method whose
original map is constant (e.g. a CAM with no positive evidence for the target) cannot be tested
and is marked ``n/a``.

Slow methods run with the reduced settings of :data:`SANITY_PARAMS` (printed in the output);
everything else uses the registry defaults. ``seconds/expl`` is the mean wall time of one
explanation (the run's total divided by stages + 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
# Spinning OpenMP threads inflate CPU times several-fold when other processes share the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import MedXAILib  # noqa: E402
from MedXAILib import METHODS, ImageVolume, Target  # noqa: E402
from MedXAILib.errors import MedXAIError  # noqa: E402
from MedXAILib.evaluation import cascading_randomisation, randomisation  # noqa: E402
from MedXAILib.model import load_model  # noqa: E402
from MedXAILib.demo.training.demo_models import (  # noqa: E402
    CLASSIFIER_CT,
    SEG_EVAL_SEEDS,
    SEGMENTER,
    classifier_case,
    segmenter_case,
)

LESION = 7  # the phantom's lesion label and the segmenter's lesion channel

#: method -> settings used here (everything else: registry defaults), sized for 2 CPU cores.
SANITY_PARAMS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"n_samples": 8},
    "gradient_shap": {"n_samples": 8},
    "score_cam": {"batch_size": 16},
    "occlusion": {"window": "24", "stride": "24"},
    "adaptive_occlusion": {"window": "12", "stride": "12"},  # coarse pass: occlusion's 24 / 24 boxes
    "rise": {"n_masks": 64},
    "feature_ablation": {"n_segments": 30},
    "lime": {"n_segments": 30, "n_samples": 60},
    "kernel_shap": {"n_segments": 30, "n_samples": 60},
}


class NearTarget:
    """Spearman(|a|) restricted to a region of interest (ROI) of the volume, besides the whole volume.

    * Segmenter: the voxels within ``mm`` of the target region. Whole-volume statistics are
      dominated by the far field: on the demo UNet, most voxels lie far from a small lesion, hold
      little of the attribution, and their |a| ranks do not depend on the weights.
    * Clipping intensity window (the CT classifier's [-50, 150] HU): the voxels inside the window.
      Outside it the clip's gradient is zero, so every gradient-based map is exactly 0 there for the
      trained and the randomised network alike, and those shared zeros (tied ranks) raise the
      whole-volume rank correlation whatever the weights.

    This second number looks where the map can depend on the weights. It wraps
    ``randomisation.map_similarity`` (looked up at call time by ``cascading_randomisation``) and
    records one value per stage; the returned similarities are unchanged.
    """

    def __init__(self, mm: float = 10.0):
        self.mm, self.roi, self.label, self.values = mm, None, None, []
        self._original = randomisation.map_similarity
        randomisation.map_similarity = self

    def set_region(self, region: np.ndarray | None, spacing) -> None:
        from scipy import ndimage

        self.values = []
        self.roi = None if region is None else \
            ndimage.distance_transform_edt(~region, sampling=spacing) <= self.mm
        self.label = None if region is None else f"<= {self.mm:g} mm of the target"

    def set_roi(self, roi: np.ndarray | None, label: str | None) -> None:
        self.values, self.roi, self.label = [], roi, label

    def __call__(self, a, b):
        if self.roi is not None:
            x, y = (np.abs(np.asarray(m).sum(axis=0))[self.roi] for m in (a, b))
            self.values.append(float(spearmanr(x, y).statistic) if np.ptp(x) and np.ptp(y) else 0.0)
        return self._original(a, b)


def window_roi(model, image: ImageVolume) -> np.ndarray | None:
    """Voxels inside every clipping ``scale_intensity_range`` window of the model's preprocessing.

    Only when the spatial steps keep the input grid (the phantom grid for the demo models); else None.
    """
    from MedXAILib.model.preprocessing import Grid, ScaleIntensityRange

    steps = model.preprocessing.steps
    grids = model.preprocessing.grids(Grid(image.affine, tuple(image.shape)))
    if any(tuple(g.shape) != tuple(image.shape) or not np.allclose(g.affine, image.affine) for g in grids):
        return None
    roi = None
    for step in steps:
        if isinstance(step, ScaleIntensityRange) and step.clip:
            inside = np.all((image.array >= step.a_min) & (image.array <= step.a_max), axis=0)
            roi = inside if roi is None else roi & inside
    return roi


def load_demo(demo, model_dir: Path):
    """The shipped spec through load_model; without it an untrained stand-in, loaded the same way."""
    spec = model_dir / f"{demo.name}.json"
    if spec.is_file():
        return load_model(spec, device="cpu"), str(spec)
    from monai.networks import nets

    from MedXAILib.model.loading import save_spec_model

    torch.manual_seed(0)
    network = getattr(nets, demo.network)(**demo.args)
    folder = Path(tempfile.mkdtemp(prefix="medxai_untrained_"))
    path = save_spec_model(network, demo.network, demo.args, folder / f"{demo.name}.json", **demo.spec())
    return load_model(path, device="cpu"), \
        f"UNTRAINED seeded stand-in ({spec} not found): the test says nothing about the methods"


def load_case(name: str, model_dir: Path):
    """(model adapter, input volume, target, target description, model source) for one demo model."""
    if name == "classifier":
        model, source = load_demo(CLASSIFIER_CT, model_dir)
        volume, label = classifier_case(1)
        assert label == 1
        image = ImageVolume(volume.array[:1], volume.affine, channel_names=["CT"], meta=dict(volume.meta))
        return model, image, Target(class_index=1), "class 'lesion' logit", source
    model, source = load_demo(SEGMENTER, model_dir)
    image, labels = segmenter_case(SEG_EVAL_SEEDS[0])
    with torch.no_grad():
        output = model.bind(image.affine, image.shape)(torch.as_tensor(image.array)[None])
    predicted = int((output[0].argmax(0) == LESION).sum())
    if predicted:
        return model, image, Target(class_index=LESION, region="predicted"), \
            f"'lesion' logit over the predicted lesion ({predicted} voxels)", source
    mask = labels == LESION
    return model, image, Target(class_index=LESION, region="mask", mask=mask), \
        f"'lesion' logit over the ground-truth lesion ({int(mask.sum())} voxels; none predicted)", source


def fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=ROOT / "Resources" / "Models")
    ap.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    ap.add_argument("--cases", default="classifier,segmenter")
    ap.add_argument("--stages", type=int, default=3, help="cumulative randomisation stages (default 3)")
    ap.add_argument("--threshold", type=float, default=0.5,
                    help="pass: Spearman(|a|) after full randomisation below this (default 0.5)")
    ap.add_argument("--near-mm", type=float, default=10.0,
                    help="segmenter: also report Spearman(|a|) within this distance of the target (mm)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    methods = [METHODS.get(n.strip()).name for n in args.methods.split(",")] if args.methods else \
        [info.name for info in METHODS]
    started = time.perf_counter()
    load = "/".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print("# Cascading randomisation sanity check (Adebayo et al. 2018)\n")
    print(f"MedXAILib {MedXAILib.__version__}, torch {torch.__version__}, "
          f"python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {load} (1/5/15 min); "
          f"models from {args.models}; {args.stages} stages, seed 0.")
    print(f"Pass: Spearman(|a|) between the original map and the map after full randomisation < "
          f"{args.threshold}. Settings other than the registry defaults: "
          + "; ".join(f"{m} {', '.join(f'{k}={v}' for k, v in p.items())}" for m, p in SANITY_PARAMS.items())
          + ".\n")
    near = NearTarget(args.near_mm)
    rows = []
    for case in [c.strip() for c in args.cases.split(",")]:
        model, image, target, described, source = load_case(case, args.models)
        if model.task == "segmentation":  # the region cascading_randomisation fixes from the trained model
            near.set_region(randomisation._fixed_target(image, model, target).mask, image.spacing)
        else:
            roi = window_roi(model, image)
            near.set_roi(roi, None if roi is None else
                         f"inside the clipped intensity window ({roi.mean():.1%} of the voxels)")
        print(f"- {case}: {model.model_id} ({model.task}) from {source}; "
              f"input {image.meta.get('source', '?')} {'x'.join(map(str, image.shape))}; target {described}; "
              f"preprocessing {json.dumps(model.preprocessing.describe())}; "
              f"ROI column: {near.label or 'none'}",
              flush=True)
        for method in methods:
            row = dict(method=method, model=case)
            near.values = []
            t0 = time.perf_counter()
            try:
                original, steps = cascading_randomisation(image, model, method, target,
                                                          SANITY_PARAMS.get(method), stages=args.stages,
                                                          seed=0)
            except MedXAIError as exc:
                row.update(result="error", note=str(exc).splitlines()[0][:120])
                rows.append(row)
                print(f"  {method}: error {row['note']}", file=sys.stderr, flush=True)
                continue
            seconds = (time.perf_counter() - t0) / (len(steps) + 1)
            first, last = steps[0], steps[-1]
            row.update(first_spearman_abs=first.spearman_abs, first_ssim=first.ssim_abs,
                       first_layers=f"{first.layers_randomised}/{first.layers_total}",
                       full_spearman_abs=last.spearman_abs, full_ssim=last.ssim_abs,
                       full_spearman=last.spearman, seconds=seconds,
                       full_spearman_abs_roi=near.values[-1] if near.values else None, roi=near.label,
                       steps=[vars(s) for s in steps])
            if np.ptp(original) == 0:
                row.update(result="n/a", note="the trained model's map is constant: nothing to test")
            else:
                row["result"] = "pass" if last.spearman_abs < args.threshold else "FAIL"
                row["note"] = ""
            rows.append(row)
            in_roi = f", in the ROI {near.values[-1]:.3f}" if near.values else ""
            print(f"  {method}: {row['result']} (Spearman|a| {last.spearman_abs:.3f}{in_roi}, "
                  f"{seconds:.1f} s/expl)",
                  file=sys.stderr, flush=True)
    print()
    header = ["method", "model", "Spearman(abs) stage 1", "SSIM stage 1", "Spearman(abs) full", "SSIM full",
              "Spearman(signed) full", "Spearman(abs) full, in the ROI", "result",
              "seconds/expl", "note"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        cells = [r["method"], r["model"],
                 f"{fmt(r.get('first_spearman_abs'))} ({r.get('first_layers', '-')} layers)"
                 if r.get("first_layers") else "-",
                 fmt(r.get("first_ssim")), fmt(r.get("full_spearman_abs")), fmt(r.get("full_ssim")),
                 fmt(r.get("full_spearman")), fmt(r.get("full_spearman_abs_roi")),
                 f"**{r['result']}**" if r["result"] != "pass" else "pass",
                 fmt(r.get("seconds"), ".2f"), r.get("note", "")]
        print("| " + " | ".join(cells) + " |")
    counts = {k: sum(r["result"] == k for r in rows) for k in ("pass", "FAIL", "n/a", "error")}
    load = "/".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"\n{counts['pass']} pass, {counts['FAIL']} fail, {counts['n/a']} n/a, {counts['error']} error; "
          f"total {time.perf_counter() - started:.0f} s; load average at the end {load}")
    if args.json:
        args.json.write_text(json.dumps(dict(threshold=args.threshold, stages=args.stages, rows=rows),
                                        indent=2, default=float))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
