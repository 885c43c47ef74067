"""Benchmark MedXAILib.explain() against plain forward/backward passes, Captum and MONAI.

Run from the repository root (not a pytest test)::

    .venv/bin/python Testing/benchmarks/bench_explain.py [--quick] [--device auto|cpu|cuda]
                                                         [--repeats N] [--json OUT.json]

Two cases, seeded random input (N(0, 1) voxels) and seeded model initialisation, nothing downloaded:

* ``densenet121``: MONAI DenseNet121 3D classifier (1 -> 2 classes), 64^3 input, target = class 1 logit.
* ``unet``: MONAI UNet 3D segmenter (1 -> 3 classes, channels 16-128, 2 residual units), 96^3 input,
  target = class 1 logit summed over the central box (a third of each axis).

``--quick`` uses 32^3 and 48^3 inputs and one repeat; ``--methods a,b`` restricts the method rows
(perturbation and CAM methods can take many minutes each on a CPU at full size). Rows per case:

* ``forward``: the bound model under ``torch.inference_mode`` (no map).
* ``forward+backward``: gradient of the target w.r.t. the input, the unit cost of gradient methods.
* every method of ``MedXAILib.METHODS`` that supports the case's task, with its default parameters
  (integrated gradients: 32 Gauss-Legendre points in batches of 8): ``medxai`` is the whole
  ``MedXAILib.explain(...)`` call; ``captum`` is the same method in Captum (Saliency(abs=False),
  InputXGradient, IntegratedGradients with the same n_steps, method, internal_batch_size and the
  baseline tensor MedXAILib builds for its default baseline kind) and ``monai`` is
  ``monai.visualize.VanillaGrad`` (saliency, classifiers only: MONAI scores the whole output
  channel, so it cannot express a box target). References wrap the very same ``BoundModel`` and
  reduce its output with the same resolved target scorer, so the arithmetic is identical. New
  methods appear automatically, with a reference only if one is listed in ``REFERENCES``.

Columns: ``seconds`` is the median of ``--repeats`` runs after one warm-up run. ``x f+b`` is seconds
divided by the case's forward+backward seconds: about 1 for saliency and input x gradient, about
n_steps (32) for integrated gradients, less if batching path points pays off. ``explain()`` also runs
one no-grad forward to resolve the target and record the prediction (and integrated gradients two
more for its completeness check), so medxai rows sit roughly ``forward / forward+backward`` above
the bare method; compare medxai with captum in the same method for the library's own overhead.
``peak MB`` is the peak memory above the resting state (imports, model and input already in
memory) during the warm-up and the timed runs: on CPU the growth of the process's peak resident set
(Linux VmHWM, reset via /proc/self/clear_refs; ru_maxrss where that is unavailable), on CUDA
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus what was allocated
before. Each measurement runs in its own child process (forked from a forkserver that imported
torch once, saving ~1 s of imports per row), so peaks never mix. ``rel diff`` is
``max|map - captum| / max|captum|`` for the same method: ~1e-6 means float32 round-off only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: MedXAILib

import captum  # noqa: E402
import monai  # noqa: E402
from monai.networks.nets import DenseNet121, UNet  # noqa: E402

import MedXAILib  # noqa: E402
from MedXAILib import METHODS, ImageVolume, Target  # noqa: E402
from MedXAILib.engine import explain  # noqa: E402
from MedXAILib.model import load_model, resolve_device  # noqa: E402
from MedXAILib.params import make_params  # noqa: E402
from MedXAILib.scoring import resolve_target  # noqa: E402

CASES = {  # name -> task, input size (default, --quick), seeded network builder
    "densenet121": ("classification", 64, 32,
                    lambda: DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)),
    "unet": ("segmentation", 96, 48,
             lambda: UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128),
                          strides=(2, 2, 2), num_res_units=2)),
}


def setup(case_name: str, size: int, device: str) -> SimpleNamespace:
    """Seeded model and input, the bound model and the resolved target scorer."""
    task, _, _, build = CASES[case_name]
    torch.manual_seed(0)
    adapter = load_model(build(), device=device, task=task)
    array = torch.randn((1, size, size, size), generator=torch.Generator().manual_seed(1)).numpy()
    image = ImageVolume(array, np.eye(4))
    lo, hi = size // 3, 2 * size // 3 - 1  # segmenters: the central box, a third of each axis
    target = Target(class_index=1) if task == "classification" else \
        Target(class_index=1, region="box", box=(lo, lo, lo, hi, hi, hi))
    bound = adapter.bind(image.affine, image.shape)
    x = torch.as_tensor(image.array, device=adapter.device).unsqueeze(0)
    with torch.no_grad():
        scorer = resolve_target(target, bound(x), adapter.task, adapter.output_activation)
    return SimpleNamespace(adapter=adapter, image=image, target=target, bound=bound, x=x, scorer=scorer,
                           f=lambda z: scorer(bound(z)))


def _captum_saliency(s, p):
    from captum.attr import Saliency
    return lambda: Saliency(s.f).attribute(s.x, abs=p.absolute)


def _captum_input_x_gradient(s, p):
    from captum.attr import InputXGradient
    return lambda: InputXGradient(s.f).attribute(s.x)


def _captum_integrated_gradients(s, p):
    from captum.attr import IntegratedGradients
    from MedXAILib.methods.gradient import make_baseline  # the same baseline tensor as explain()
    ig = IntegratedGradients(s.f)
    ctx = SimpleNamespace(x=s.x, spacing=s.image.spacing, generator=None)

    def run():
        ctx.generator = torch.Generator().manual_seed(0)  # as explain(seed=0), for 'noise'
        baseline = make_baseline(ctx, p.baseline, p.blur_sigma_mm)
        return ig.attribute(s.x, baselines=baseline, n_steps=p.n_steps, method=p.integration,
                            internal_batch_size=p.batch_size)
    return run


def _monai_vanilla_grad(s, p):
    from monai.visualize import VanillaGrad
    vg = VanillaGrad(s.bound)  # backpropagates logits[:, index].sum(): the classifier's target
    # VanillaGrad accumulates into x.grad, so each call gets a fresh leaf copy (batch size must be 1)
    run = lambda: vg(s.x.detach().clone(), index=s.scorer.class_index)  # noqa: E731
    return (lambda: run().abs()) if p.absolute else run


BOTH = ("classification", "segmentation")  # (method, implementation) -> (tasks, make(s, params))
REFERENCES = {
    ("saliency", "captum"): (BOTH, _captum_saliency),
    ("saliency", "monai"): (("classification",), _monai_vanilla_grad),
    ("input_x_gradient", "captum"): (BOTH, _captum_input_x_gradient),
    ("integrated_gradients", "captum"): (BOTH, _captum_integrated_gradients),
}


def make_run(s: SimpleNamespace, row: str, impl: str):
    """A no-argument callable doing one measured unit of work; returns the map (or None)."""
    if row == "forward":
        def run():
            with torch.inference_mode():
                s.bound(s.x)
        return run
    if row == "forward+backward":
        def run():
            z = s.x.detach().requires_grad_(True)
            return torch.autograd.grad(s.f(z).sum(), z)[0]
        return run
    params = make_params(METHODS.get(row).params, None)
    if impl == "medxai":
        return lambda: explain(s.image, s.adapter, row, s.target, params).array
    return REFERENCES[(row, impl)][1](s, params)


def _proc_kb(key: str):
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        return next((int(line.split()[1]) for line in fh if line.startswith(key + ":")), None)
    return None


def measure(case_name: str, size: int, row: str, impl: str, repeats: int, device: str) -> dict:
    """Runs in a fresh child process: warm-up, `repeats` timed runs, peak memory, the map."""
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    s = setup(case_name, size, device)
    run = make_run(s, row, impl)
    cuda = s.adapter.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _proc_kb("VmRSS") or 0
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak RSS to the current RSS (Linux >= 4.0)
    out = run()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = run()
        sync()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_kb = _proc_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mb = (peak_kb - base) / 1024
    out = None if out is None else torch.as_tensor(out).detach().float().cpu().reshape(s.x.shape[1:]).numpy()
    return dict(seconds=statistics.median(times), times=times, peak_mb=peak_mb, map=out)


def rows_for(task: str, only: list[str]) -> list[tuple[str, str]]:
    rows = [("forward", "torch"), ("forward+backward", "torch")]
    for info in METHODS:
        if (info.tasks and task not in info.tasks) or (only and info.name not in only):
            continue
        rows.append((info.name, "medxai"))
        rows += [(info.name, impl) for (name, impl), (tasks, _) in REFERENCES.items()
                 if name == info.name and task in tasks]
    return rows


def rel_diff(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(np.float32).tiny))


def header(device: torch.device, args) -> dict:
    info = dict(device=str(device), torch=torch.__version__, monai=monai.__version__,
                captum=captum.__version__, medxai=MedXAILib.__version__, python=platform.python_version(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), repeats=args.repeats,
                quick=args.quick, methods=args.methods or "all")
    if hasattr(os, "getloadavg"):  # other work on the machine makes CPU timings noisy
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_table(rows: list[dict]) -> None:
    cols = [("case", "case", "s"), ("method", "method", "s"), ("impl", "implementation", "s"),
            ("seconds", "seconds", ".4f"), ("x f+b", "ratio_fwd_bwd", ".2f"),
            ("peak MB", "peak_mb", ".1f"), ("rel diff vs captum", "rel_diff_vs_captum", ".2e")]
    fmt = lambda v, spec: "-" if v is None else v if isinstance(v, str) else format(v, spec)  # noqa: E731
    cells = [[fmt(r.get(key), spec) for _, key, spec in cols] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) if i < 3 else v.rjust(w)  # noqa: E731
                                  for i, (v, w) in enumerate(zip(vals, widths)))
    print(line([title for title, _, _ in cols]))
    print(line(["-" * w for w in widths]))
    for c in cells:
        print(line(c))
    print(flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="32^3 / 48^3 inputs and one repeat")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--repeats", type=int, help="timed runs per row (default 3; 1 with --quick)")
    ap.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    only = [METHODS.get(n.strip()).name for n in args.methods.split(",")] if args.methods else []
    args.repeats = args.repeats or (1 if args.quick else 3)
    device = resolve_device(args.device)
    info = header(device, args)
    print("MedXAILib explain() benchmark")
    print("  " + ", ".join(f"{k}={v}" for k, v in info.items()) + "\n", flush=True)

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    if ctx.get_start_method() == "forkserver":
        # import the heavy libraries once in the server ("__main__" itself is not preloaded on 3.11)
        ctx.set_forkserver_preload(["torch", "scipy.ndimage", "monai.networks.nets", "monai.visualize",
                                    "captum.attr", "MedXAILib.engine"])
    results = []
    for case_name, (task, full_size, quick_size, _) in CASES.items():
        size = quick_size if args.quick else full_size
        case_label = f"{case_name} {size}^3"
        rows, maps = [], {}
        for row, impl in rows_for(task, only):
            print(f"  measuring {case_label}: {row} / {impl} ...", file=sys.stderr, flush=True)
            entry = dict(case=case_label, method=row, implementation=impl)
            try:
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    res = pool.submit(measure, case_name, size, row, impl, args.repeats, str(device)).result()
            except Exception as exc:  # keep going: one failing reference must not hide the rest
                entry["error"] = f"{type(exc).__name__}: {exc}"
                print(f"    failed: {entry['error']}", file=sys.stderr, flush=True)
                res = dict(seconds="error", map=None)
            maps[(row, impl)] = res.pop("map")
            rows.append({**entry, **res})
        fb = next((r.get("seconds") for r in rows if r["method"] == "forward+backward"), None)
        for r in rows:
            if isinstance(r["seconds"], float) and isinstance(fb, float):
                r["ratio_fwd_bwd"] = r["seconds"] / fb
            ref = maps.get((r["method"], "captum"))
            if r["implementation"] == "captum" and ref is not None:
                r["rel_diff_vs_captum"] = "ref"
            elif ref is not None and maps.get((r["method"], r["implementation"])) is not None:
                r["rel_diff_vs_captum"] = rel_diff(maps[(r["method"], r["implementation"])], ref)
        print_table(rows)
        results += rows
    if args.json:
        args.json.write_text(json.dumps(dict(header=info, rows=results), indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
