"""Benchmark the explanation quality metrics against one plain forward pass.

Run from the repository root (not a pytest test)::

    .venv/bin/python Testing/benchmarks/bench_metrics.py [--quick] [--size N] [--device auto|cpu|cuda]
                                                         [--metrics a,b] [--method saliency] [--json OUT.json]

Case: MONAI UNet 3D segmenter (1 -> 3 classes, channels 16-128, 2 residual units, the
``bench_explain.py`` network), a seeded N(0, 1) input of 96^3 voxels (``--quick``: 48^3), target =
class 1 logit summed over the central box (a third of each axis), the map = ``--method`` (saliency
by default: the cheapest re-explanation for the robustness and randomisation metrics). Every metric
runs with its default parameters (deletion and insertion: 20 steps in batches of 8, i.e. 3 batched
forward passes of up to 8 inputs each) and a mask of the central box for the localisation family.

Columns: ``seconds`` is the metric's own time (``evaluate`` reports it per metric; the one forward
pass on the unperturbed input that every ``evaluate`` call makes is excluded), ``forward s`` the
median of three plain forward passes (batch 1, ``torch.inference_mode``) measured right before the
metric (the load of a shared machine drifts), ``x forward`` their ratio, and ``passes`` what the
metric runs in units of the model: ``fw`` forward passes (counting every batch item), ``expl``
re-explanations with the method. A batched forward pass of B inputs costs
less than B single ones where the device has spare parallelism (a GPU), about as much on a busy CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: MedXAILib

from monai.networks.nets import UNet  # noqa: E402

from MedXAILib import ImageVolume, Target, explain  # noqa: E402
from MedXAILib.evaluation import METRICS, evaluate  # noqa: E402
from MedXAILib.model import load_model, resolve_device  # noqa: E402
from MedXAILib.params import make_params  # noqa: E402

PASSES = {  # what each metric runs with default parameters, for the table
    "deletion": lambda p: f"{p.n_steps} fw",
    "insertion": lambda p: f"{p.n_steps} fw",
    "faithfulness_correlation": lambda p: f"{p.n_runs} fw",
    "road": lambda p: f"{p.n_steps} fw + {p.n_steps} CG solves",
    "infidelity": lambda p: f"{p.n_samples} fw",
    "max_sensitivity": lambda p: f"{p.n_samples} expl",
    "avg_sensitivity": lambda p: f"{p.n_samples} expl",
    "local_lipschitz": lambda p: f"{p.n_samples} expl",
    "noise_l2": lambda p: f"{p.n_samples} expl",
    "model_randomisation": lambda p: f"{p.stages + 1} expl",
    "random_logit": lambda p: "1 expl",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48^3 instead of 96^3")
    parser.add_argument("--size", type=int, help="edge of the cubic input (overrides --quick)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--metrics", help="comma-separated metric names (default: all)")
    parser.add_argument("--method", default="saliency", help="the method whose map is graded")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    size = args.size or (48 if args.quick else 96)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128), strides=(2, 2, 2),
               num_res_units=2)
    adapter = load_model(net, device=str(device), task="segmentation")
    array = torch.randn((1, size, size, size), generator=torch.Generator().manual_seed(1)).numpy()
    image = ImageVolume(array, np.eye(4))
    lo, hi = size // 3, 2 * size // 3 - 1
    target = Target(class_index=1, region="box", box=(lo, lo, lo, hi, hi, hi))
    mask = np.zeros(image.shape, bool)
    mask[lo:hi + 1, lo:hi + 1, lo:hi + 1] = True

    bound = adapter.bind(image.affine, image.shape)
    x = torch.as_tensor(image.array, device=device)[None]

    def forward_seconds() -> float:
        """Median of three plain forward passes (batch 1, inference mode)."""
        times = []
        with torch.inference_mode():
            for _ in range(3):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                bound(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
        return statistics.median(times)

    forward_seconds()  # warm-up
    forward = forward_seconds()
    attribution = explain(image, adapter, args.method, target)
    names = [m.strip() for m in args.metrics.split(",")] if args.metrics else METRICS.names()

    print(f"MedXAILib metrics benchmark: UNet, {size}^3 input, map = {args.method}, device {device} "
          f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    print(f"one forward pass: {forward:.3f} s (re-measured before every metric; the ratio uses that)")
    print(f"{'metric':<26} {'seconds':>9} {'forward s':>9} {'x forward':>10}  {'passes':<28} value")
    rows = []
    for name in names:
        info = METRICS.get(name)
        forward = forward_seconds()  # the machine's load may drift: measure next to the metric
        started = time.perf_counter()
        result = evaluate(image, adapter, attribution, target, [name], mask if info.needs_mask else None)[name]
        wall = time.perf_counter() - started
        seconds = result["seconds"]
        passes = PASSES.get(name, lambda p: "no model")(make_params(info.params))
        print(f"{name:<26} {seconds:9.3f} {forward:9.3f} {seconds / forward:10.1f}  {passes:<28} "
              f"{result['value']:.4g}", flush=True)
        rows.append({"metric": name, "seconds": seconds, "wall_seconds": wall, "forward_s": forward,
                     "x_forward": seconds / forward,
                     "passes": passes, "value": result["value"]})
    print("Each metric runs in its own evaluate() call here; in one call the four robustness metrics share "
          "one set of noisy explanations.")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": size, "device": str(device), "method": args.method,
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
