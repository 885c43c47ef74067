"""Scale and speed targets, measured side by side in one run (not a pytest test).

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python Testing/benchmarks/bench_scale.py [--device cpu|cuda]
        [--size 64,64,48] [--repeats 2] [--full-ct] [--only-full-ct] [--full-ct-shape 512,512,300]
        [--memory-budget auto|4GB] [--full-ct-kinds saliency,grad_cam,...] [--json OUT.json]

Rows (every time is the fastest of ``--repeats`` runs after one warm-up; one table at the end):

1. ``grad_cam``, the whole ``explain()`` call, vs the forward+backward pass (gradient of the target
   w.r.t. the input) of the same model and input. Target: <= 1.2x, also for a model's first call
   (which chooses the automatic layer in the CAM's own pass); the note gives the method alone on a
   prepared context too.
2. ``integrated_gradients`` (32 steps, batch 8, zeros baseline) vs Captum ``IntegratedGradients``
   at 32 steps and ``internal_batch_size=8``, same model, target and baseline. Target: <= 1.0x.
3. exhaustive ``occlusion`` vs MONAI ``OcclusionSensitivity`` and Captum ``Occlusion`` at the same
   window and stride (window = stride, MONAI's overlap 0, image-mean baseline) with the same map
   (``rel diff`` = max|ours - peer| / max|peer|; MONAI's map is turned into the score drop). Peers run
   at their default batching (MONAI ``n_batch=16``, Captum ``perturbations_per_eval=1``) and at ours.
   Target: >= 1.5x faster than each.
4. ``adaptive_occlusion`` vs exhaustive ``occlusion`` (fine window 8, stride 8, coarse factor 2,
   refine fraction 0.05); Spearman from a separate ``compare_exhaustive`` run. Target: >= 5x, >= 0.95.
5. exhaustive ``occlusion`` of a sliding-window segmenter (``--windowed-size`` 96 x 96 x 72, ROI
   48^3, overlap 0.25, window = stride = ``--windowed-window`` 24) vs MONAI ``OcclusionSensitivity``
   and Captum ``Occlusion`` around MONAI's ``sliding_window_inference`` (one run each): the same map,
   while ours recomputes per box only the windows that meet the box and the target region.
6. ``--full-ct``: a 512 x 512 x 300 CT-like volume, MONAI UNet, ROI 96^3, overlap 0.25, the latency of a
   first look from a loaded model: the windowed saliency and Grad-CAM of one structure (the lesion as a
   mask target, the whole ``explain`` call, a model's first: its window probe and automatic CAM layer
   included), saliency of the structure the model predicts (its region needs the whole output first),
   and saliency and Grad-CAM through the Slicer module's in-process runner on a slicer-core scene (the
   Bridge's conversions and the result node included), each against sliding-window inference alone
   (the faster of MONAI's ``sliding_window_inference`` and ours, both under inference mode). Each runs
   in its own subprocess, which counts the network's calls (passes over the windows) and reports its
   peak resident set over its whole life (``ru_maxrss``: phantom, model and call) and during the call
   alone (``VmHWM`` after a reset). ``--memory-budget`` sets the budget (default ``auto``);
   ``--full-ct-kinds`` picks the measurements. Targets: RSS <= 6 GB (CPU), time <= 4x.

The model is a MONAI UNet (instance norm, channels 8-16-32-64) with seeded random weights on a
synthetic CT-like phantom (body ellipsoid, organs, a small lesion; nothing downloaded); the target is
the lesion class summed over the lesion mask. On a shared CPU the times move with the load; the
header prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads distort shared-CPU timings

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Lib"))  # the tests' call counter

from MedXAILib import ImageVolume, Target, explain  # noqa: E402
from MedXAILib.methods import METHODS  # noqa: E402
from MedXAILib.methods.context import MethodContext  # noqa: E402
from MedXAILib.model import load_model  # noqa: E402
from MedXAILib.model.memory import parse_budget  # noqa: E402
from MedXAILib.monitor import Monitor  # noqa: E402
from MedXAILib.params import make_params  # noqa: E402
from references import CallCounter  # noqa: E402
from MedXAILib.scoring import resolve_target  # noqa: E402


def phantom(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in [0, 1] (body, two organs, a lesion) and the lesion mask.

    Built from per-axis coordinates and slab-wise noise, so a 512 x 512 x 300 phantom holds about two
    volumes at once (the benchmark's peak RSS is the attribution's, not the phantom's).
    """
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]

    def inside(c, r):
        d = [((a - np.float32(ci)) / np.float32(ri)) ** 2 for a, ci, ri in zip(axes, c, r)]
        return (d[0][:, None, None] + d[1][None, :, None]) + d[2][None, None, :] < 1

    volume = np.zeros(shape, np.float32)
    volume[inside((0, 0, 0), (0.9, 0.7, 0.95))] = 0.4
    volume[inside((0.3, 0.1, 0), (0.3, 0.25, 0.4))] = 0.55
    volume[inside((-0.35, -0.1, 0.1), (0.2, 0.2, 0.3))] = 0.65
    lesion = inside((0.32, 0.12, 0.05), (0.08, 0.08, 0.1))
    volume[lesion] = 0.45
    for i in range(shape[0]):  # the same draws as one call with size=shape, without a float64 volume
        volume[i] += rng.normal(scale=0.03, size=shape[1:]).astype(np.float32)
    return volume[None], lesion


def unet(channels=(8, 16, 32, 64)):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=channels,
                strides=(2,) * (len(channels) - 1),
                num_res_units=1, norm="instance")


def setup(shape, device, roi=None, channels=(8, 16, 32, 64)) -> SimpleNamespace:
    array, lesion = phantom(shape)
    image = ImageVolume(array, np.diag([1.0, 1.0, 1.5, 1.0]))
    adapter = load_model(unet(channels), task="segmentation", in_channels=1, device=device,
                         roi_size=roi)
    target = Target(class_index=2, region="mask", mask=lesion)
    bound = adapter.bind(image.affine, image.shape)
    x = torch.as_tensor(array, device=adapter.device).unsqueeze(0)
    with torch.no_grad():
        output = bound(x)
    scorer = resolve_target(target, output, "segmentation", spacing=image.spacing)
    return SimpleNamespace(image=image, adapter=adapter, target=target, bound=bound, x=x, scorer=scorer,
                           output=output, f=lambda v: scorer(bound(v)))


def timed(run, repeats: int) -> tuple[float, object]:
    out = run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = run()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def timed_pair(ours, theirs, repeats: int) -> tuple[tuple[float, object], tuple[float, object]]:
    """Fastest of `repeats` runs of each after one warm-up each, the two interleaved (so a change of
    the machine's load hits both alike)."""
    out = [ours(), theirs()]
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, run in enumerate((ours, theirs)):
            sync()
            start = time.perf_counter()
            out[i] = run()
            sync()
            best[i] = min(best[i], time.perf_counter() - start)
    return (best[0], out[0]), (best[1], out[1])


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def method_only(s, name: str, params: dict):
    info = METHODS.get(name)
    p = make_params(info.params, params)

    def run():
        ctx = MethodContext(x=s.x, model=s.bound, scorer=s.scorer, image=s.image, monitor=Monitor(),
                            generator=torch.Generator().manual_seed(0), output=s.output)
        return info.load()(ctx, p)
    return run


def rel_diff(ours, peer) -> float:
    ours = np.asarray(torch.as_tensor(ours).detach().cpu(), dtype=np.float64).reshape(-1)
    peer = np.asarray(torch.as_tensor(peer).detach().cpu(), dtype=np.float64).reshape(-1)
    return float(np.abs(ours - peer).max() / max(np.abs(peer).max(), 1e-30))


def forward_backward(s):
    def run():
        v = s.x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(s.f(v).sum(), v)
        return g
    return run


def row(name, seconds, reference, target, ok, note=""):
    return {"row": name, "seconds": round(seconds, 3), "reference_s": round(reference, 3),
            "ratio": round(seconds / reference, 3) if reference else None, "target": target,
            "met": ok, "note": note}


def bench_small(args) -> list[dict]:
    shape = tuple(int(v) for v in args.size.split(","))
    s = setup(shape, args.device)
    rows = []
    (cam, _), (fb, _) = timed_pair(lambda: explain(s.image, s.adapter, "grad_cam", s.target), forward_backward(s),
                                   args.repeats)
    cam_method, _ = timed(method_only(s, "grad_cam", {}), args.repeats)

    def first_run():  # a model's first CAM chooses the layer in its own pass (methods.cam.traced_layer_maps)
        for key in [k for k in s.adapter._probe_cache if k[0] == "cam_layer"]:
            del s.adapter._probe_cache[key]
        return explain(s.image, s.adapter, "grad_cam", s.target)
    first, _ = timed(first_run, args.repeats)
    rows.append(row("grad_cam explain() / forward+backward", cam, fb, "<= 1.2x", cam <= 1.2 * fb and first <= 1.2 * fb,
                    f"a model's first call {first:.3f} s = {first / fb:.2f}x; the method alone on a prepared "
                    f"context {cam_method:.3f} s = {cam_method / fb:.2f}x"))

    from captum.attr import IntegratedGradients
    ig_params = {"n_steps": 32, "batch_size": 8, "baseline": "zeros"}
    ig = IntegratedGradients(s.f)
    (ours_ig, ig_map), (theirs_ig, captum_map) = timed_pair(
        lambda: explain(s.image, s.adapter, "integrated_gradients", s.target, ig_params),
        lambda: ig.attribute(s.x, baselines=torch.zeros_like(s.x), n_steps=32, method="gausslegendre",
                             internal_batch_size=8), args.repeats)
    rows.append(row("integrated_gradients 32 steps / Captum", ours_ig, theirs_ig, "<= 1.0x",
                    ours_ig <= theirs_ig, f"rel diff {rel_diff(ig_map.array, captum_map[0]):.1e}; "
                    "ours: the whole explain() call, with its completeness check"))

    window = args.occlusion_window
    occ_params = {"window": str(window), "stride": str(window), "baseline": "mean", "batch_size": 8}
    ours_occ, occ = timed(lambda: explain(s.image, s.adapter, "occlusion", s.target, occ_params),
                          args.repeats)
    for label, peer in occlusion_peers(s, window):
        seconds, peer_map = timed(peer, max(1, args.repeats - 1))
        diff = rel_diff(occ.array, peer_map)
        rows.append(row(f"occlusion / {label}", ours_occ, seconds, ">= 1.5x faster",
                        seconds >= 1.5 * ours_occ and diff <= 1e-4, f"rel diff {diff:.1e}"))

    fine = {"window": "8", "stride": "8", "baseline": "mean", "batch_size": 8}
    exhaustive, _ = timed(lambda: explain(s.image, s.adapter, "occlusion", s.target, fine), 1)
    adaptive_params = {**fine, "coarse_factor": 2, "refine_fraction": 0.05}
    adaptive, result = timed(lambda: explain(s.image, s.adapter, "adaptive_occlusion", s.target,
                                             adaptive_params), 1)
    check = explain(s.image, s.adapter, "adaptive_occlusion", s.target,
                    {**adaptive_params, "compare_exhaustive": True})
    rho = check.provenance["diagnostics"]["spearman_exhaustive"]
    rho_relevant = check.provenance["diagnostics"]["spearman_exhaustive_relevant"]
    relevant = check.provenance["diagnostics"]["relevant_voxel_fraction"]
    d = result.provenance["diagnostics"]
    rows.append(row("adaptive_occlusion / exhaustive occlusion", adaptive, exhaustive,
                    ">= 5x faster, rho >= 0.95",
                    exhaustive >= 5 * adaptive and rho >= 0.95,
                    f"Spearman {rho:.3f} (over the {relevant:.0%} relevant voxels {rho_relevant:.3f}); "
                    f"forwards {d['n_forward']} vs {d['n_forward_exhaustive']}"))
    return rows


def occlusion_peers(s, window: int):
    from captum.attr import Occlusion
    from monai.visualize import OcclusionSensitivity

    from MedXAILib.methods.perturbation import perturbation_baseline

    baseline = perturbation_baseline(SimpleNamespace(x=s.x, spacing=s.image.spacing,
                                                     generator=torch.Generator()), "mean")

    class Score(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, v):
            return s.f(v).unsqueeze(1)

    module = Score(s.adapter.network).eval()

    def monai(batch):
        occ = OcclusionSensitivity(module, mask_size=window, n_batch=batch, overlap=0.0, mode="mean_img",
                                   activate=False, verbose=False)

        def run():
            with torch.no_grad():
                occluded, _ = occ(s.x)
                return (s.f(s.x)[0] - torch.as_tensor(occluded).reshape(s.x.shape))
        return run

    def captum(batch):
        occ = Occlusion(s.f)
        return lambda: occ.attribute(s.x, sliding_window_shapes=(1, window, window, window),
                                     strides=(1, window, window, window), baselines=baseline,
                                     perturbations_per_eval=batch)
    return [("MONAI OcclusionSensitivity (n_batch 16)", monai(16)), ("MONAI (n_batch 8)", monai(8)),
            ("Captum Occlusion (1 per eval)", captum(1)), ("Captum (8 per eval)", captum(8))]


def bench_windowed_occlusion(args) -> list[dict]:
    """Occlusion of a sliding-window segmenter (ROI 48^3): ours vs MONAI and Captum around MONAI's
    ``sliding_window_inference``, same window, stride and baseline."""
    from captum.attr import Occlusion
    from monai.inferers import sliding_window_inference
    from monai.visualize import OcclusionSensitivity

    from MedXAILib.methods.perturbation import perturbation_baseline

    shape = tuple(int(v) for v in args.windowed_size.split(","))
    roi, window = (48, 48, 48), args.windowed_window
    s = setup(shape, args.device, roi=roi)
    network = s.adapter.network
    f = lambda v: s.scorer(sliding_window_inference(v, roi, 4, network, overlap=0.25))  # noqa: E731
    params = {"window": str(window), "stride": str(window), "baseline": "mean", "batch_size": 8}
    baseline = perturbation_baseline(SimpleNamespace(x=s.x, spacing=s.image.spacing,
                                                     generator=torch.Generator()), "mean")

    class Score(torch.nn.Module):
        def forward(self, v):
            return f(v).unsqueeze(1)

    def monai():
        occ = OcclusionSensitivity(Score().eval(), mask_size=window, n_batch=16, overlap=0.0, mode="mean_img",
                                   activate=False, verbose=False)
        with torch.no_grad():
            occluded, _ = occ(s.x)
            return f(s.x)[0] - torch.as_tensor(occluded).reshape(s.x.shape)

    def captum():
        return Occlusion(f).attribute(s.x, sliding_window_shapes=(1, window, window, window),
                                      strides=(1, window, window, window), baselines=baseline)

    ours, result = timed(lambda: explain(s.image, s.adapter, "occlusion", s.target, params), 1)
    d = result.provenance["diagnostics"]
    rows = []
    for label, peer in (("MONAI OcclusionSensitivity (n_batch 16)", monai),
                        ("Captum Occlusion (1 per eval)", captum)):
        start = time.perf_counter()
        peer_map = peer()
        seconds = time.perf_counter() - start
        diff = rel_diff(result.array, peer_map)
        rows.append(row(f"windowed occlusion / {label}", ours, seconds, ">= 1.5x faster",
                        seconds >= 1.5 * ours and diff <= 1e-4,
                        f"{args.windowed_size}, ROI 48^3, window {window}: {d['n_forward']} boxes, "
                        f"{d['windows_run']} windows run vs {d['n_forward'] * d['windows_per_input']}; "
                        f"rel diff {diff:.1e}"))
    return rows


# ------------------------------------------------------------------------------------------------
# Full-size CT, each measurement in its own process


def peak_rss() -> int:
    """Peak resident set of this process so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Start the kernel's peak-RSS count (VmHWM) afresh (Linux >= 4.0); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def vm_hwm() -> int:
    """VmHWM of /proc/self/status in bytes (0 where absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


FULL_CT_KINDS = ("inference", "saliency", "grad_cam", "saliency-predicted", "slicer-saliency", "slicer-grad_cam")
FULL_CT_CLASSES = ["background", "organ", "lesion"]


def full_ct_child(kind: str, shape, device: str, budget: str) -> None:
    """One measurement in a fresh process, from a loaded model to the map.

    ``inference``: sliding-window inference (ours and MONAI's); ``saliency`` / ``grad_cam``: the map of the
    lesion (a mask target: one structure) through :func:`MedXAILib.explain`, a model's first call (its
    window probe and, for Grad-CAM, its automatic layer included); ``saliency-predicted``: saliency of the
    structure the model predicts (class 2), whose region needs the whole output first; ``slicer-<method>``:
    the same through the Slicer module's in-process runner on an MRML scene (slicer-core), the Bridge's
    conversions included: volume node and segment -> ImageVolume and mask -> RunRequest ->
    InProcessRunner -> result node with its display.
    """
    array, lesion = phantom(shape)
    image = ImageVolume(array, np.diag([1.0, 1.0, 1.5, 1.0]))
    network = unet((16, 32, 64, 128))
    result: dict = {"kind": kind}
    if kind.startswith("slicer-"):
        del image
        result.update(full_ct_slicer(kind.split("-", 1)[1], array, lesion, network, device))
        result.update(peak_rss=peak_rss(), peak_rss_call=vm_hwm())
        print(json.dumps(result))
        return
    adapter = load_model(network, task="segmentation", in_channels=1, device=device, roi_size=(96, 96, 96))
    adapter.overlap = 0.25
    target = Target(class_index=2, region="mask", mask=lesion)
    bound = adapter.bind(image.affine, image.shape)
    result["windows"] = bound.plan().n_windows
    reset_peak_rss()
    if kind == "inference":
        from monai.inferers import sliding_window_inference

        x = torch.as_tensor(array, device=adapter.device).unsqueeze(0)
        with torch.inference_mode():
            start = time.perf_counter()
            y = sliding_window_inference(x, (96, 96, 96), 1, adapter.network, overlap=0.25)
            sync()
            result["monai_seconds"] = time.perf_counter() - start
            del y
            adapter.memory_budget = parse_budget(budget)
            start = time.perf_counter()
            bound(x)
            sync()
            result["ours_seconds"] = time.perf_counter() - start
        result["seconds"] = min(result["monai_seconds"], result["ours_seconds"])
        result["per_call"] = bound.windows_per_call()
    else:
        method = kind.split("-")[0]
        if kind.endswith("-predicted"):
            target = Target(class_index=2, region="predicted")
        counter = CallCounter(adapter.network)
        start = time.perf_counter()
        attribution = explain(image, adapter, method, target, memory_budget=budget)
        sync()
        result["seconds"] = time.perf_counter() - start
        counter.remove()
        result["calls"] = counter.calls
        result["per_call"] = attribution.provenance["memory"]["windows_per_call"]
        result["budget_bytes"] = attribution.provenance["memory"]["budget_bytes"]
        result["target_pass"] = attribution.provenance["diagnostics"].get("target_pass")
        result["region_voxels"] = attribution.provenance["target"]["region_voxels"]
    result.update(peak_rss=peak_rss(), peak_rss_call=vm_hwm(),
                  peak_gpu=torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0)
    print(json.dumps(result))


def full_ct_slicer(method: str, array: np.ndarray, lesion: np.ndarray, network, device: str) -> dict:
    """The module's Apply without its widget: MedXAILogic.buildRequest, the in-process runner and
    showResult's node and display (MedXAI.py), on a slicer-core scene. Times each part."""
    import tempfile

    sys.path.insert(0, str(ROOT / "MedXAI"))  # where Slicer finds MedXAIBridge and MedXAIRuntime
    import slicer

    from MedXAIBridge import display, results, segments, volumes
    from MedXAIRuntime import jobs, runners
    from MedXAILib.model import save_spec_model
    from MedXAILib.runs.kinds import load_model_cached

    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)  # Slicer's default colour nodes, which the display uses
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    slicer.mrmlScene = scene
    volume = volumes.volumeNodeFromImageVolume(scene, ImageVolume(array, np.diag([1.0, 1.0, 1.5, 1.0])), "CT")
    del array
    segmentation = segments.segmentationNodeFromLabelMap(scene, lesion.astype(np.uint8), volume, ["lesion"],
                                                         "Segmentation")
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    folder = Path(tempfile.mkdtemp(prefix="medxai-bench-"))
    args = dict(spatial_dims=3, in_channels=1, out_channels=3, channels=[16, 32, 64, 128], strides=[2, 2, 2],
                num_res_units=1, norm="instance")
    spec = save_spec_model(network, "UNet", args, folder / "unet.json", task="segmentation", in_channels=1,
                           class_names=FULL_CT_CLASSES, roi_size=[96, 96, 96], overlap=0.25)
    model = load_model_cached(str(spec), device)  # "from a loaded model": the runner finds it cached
    reset_peak_rss()
    counter = CallCounter(model.network)
    times = {}
    start = time.perf_counter()
    image = volumes.imageVolumeFromNodes([volume])
    mask = segments.maskFromSegment(segmentation, segment_id, volume)
    target = Target(class_index=2, region="mask", mask=mask)
    request = jobs.explainRequest(image, str(spec), method, {}, target, device, 0, False)
    times["bridge_in"] = time.perf_counter() - start
    outcome = []
    runner = runners.InProcessRunner(processEvents=lambda: None)
    mark = time.perf_counter()
    runner.start(request, lambda fraction, message, elapsed: None, outcome.append)
    sync()
    times["run"] = time.perf_counter() - mark
    if outcome[0].error is not None:
        raise outcome[0].error
    mark = time.perf_counter()
    node = results.createAttributionNode(outcome[0].attribution, volume)
    display.applyAttributionDisplay(node)
    times["bridge_out"] = time.perf_counter() - mark
    seconds = time.perf_counter() - start
    counter.remove()
    provenance = outcome[0].attribution.provenance
    return {"seconds": seconds, **times, "calls": counter.calls,
            "windows": provenance["memory"]["windows"], "per_call": provenance["memory"]["windows_per_call"],
            "budget_bytes": provenance["memory"]["budget_bytes"], "explain_seconds": provenance["seconds"]}


def bench_full_ct(args) -> list[dict]:
    results = {}
    for kind in args.full_ct_kinds.split(","):
        command = [sys.executable, __file__, "--child", kind, "--full-ct-shape", args.full_ct_shape,
                   "--device", args.device, "--memory-budget", args.memory_budget]
        load = os.getloadavg()[0]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the {kind} child failed:\n{done.stderr[-3000:]}")
        results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
        results[kind]["load"] = (load, os.getloadavg()[0])
        print(f"# {kind}: {json.dumps(results[kind])}", flush=True)
    inf = results.get("inference")
    rows = []
    for kind, res in results.items():
        if kind == "inference":
            continue
        gb = res["peak_rss"] / 2**30
        cam = "grad_cam" in kind  # a model's first CAM also traces one window to choose its layer
        passes = (res["calls"] - 1 - cam) / res["windows"]
        note = (f"{args.full_ct_shape}, {res['windows']} windows, {res['per_call']} per call (budget "
                f"{res['budget_bytes'] / 2**30:.2f} GB); {res['calls']} network calls: the window probe, "
                f"{'the layer choice on one window, ' if cam else ''}{passes:g} pass(es) over the windows; "
                f"peak RSS {gb:.2f} GB (during the call {res['peak_rss_call'] / 2**30:.2f} GB); load "
                f"{res['load'][0]:.1f} -> {res['load'][1]:.1f}")
        if res.get("target_pass"):
            note += "; a separate pass resolved the predicted region"
        if kind.startswith("slicer-"):
            note += (f"; Bridge in {res['bridge_in']:.2f} s, runner {res['run']:.1f} s (explain() itself "
                     f"{res['explain_seconds']:.1f} s), result node and display {res['bridge_out']:.2f} s")
        if inf is not None:
            note += f"; inference MONAI {inf['monai_seconds']:.1f} s, ours {inf['ours_seconds']:.1f} s"
        if args.device.startswith("cuda"):
            note += f"; peak GPU {res.get('peak_gpu', 0) / 2**30:.2f} GB"
        reference = inf["seconds"] if inf is not None else float("nan")
        ok = res["seconds"] <= 4 * reference and gb <= 6.0 if inf is not None else False
        rows.append(row(f"full CT {kind} / sliding-window inference", res["seconds"], reference,
                        "<= 4x, RSS <= 6 GB", ok, note))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="64,64,48")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--occlusion-window", type=int, default=16)
    parser.add_argument("--windowed-size", default="96,96,72", help="phantom of the windowed occlusion row")
    parser.add_argument("--windowed-window", type=int, default=24, help="its occlusion window and stride")
    parser.add_argument("--full-ct", action="store_true")
    parser.add_argument("--only-full-ct", action="store_true")
    parser.add_argument("--full-ct-shape", default="512,512,300")
    parser.add_argument("--memory-budget", default="auto",
                        help="memory budget of the full-CT runs (4GB, 500MB or auto)")
    parser.add_argument("--full-ct-kinds", default=",".join(FULL_CT_KINDS),
                        help=f"full-CT measurements, comma-separated: {', '.join(FULL_CT_KINDS)}")
    parser.add_argument("--json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.full_ct_shape.split(","))
    if args.child:
        full_ct_child(args.child, shape, args.device, args.memory_budget)
        return 0
    print(f"# device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}, phantom {args.size}")
    rows = [] if args.only_full_ct else bench_small(args) + bench_windowed_occlusion(args)
    if args.full_ct or args.only_full_ct:
        rows += bench_full_ct(args)
    print(f"{'row':52s} {'ours s':>8s} {'ref s':>8s} {'ratio':>6s}  {'target':26s} {'met':5s} note")
    for r in rows:
        print(f"{r['row']:52s} {r['seconds']:8.3f} {r['reference_s']:8.3f} {r['ratio']:6.2f}  "
              f"{r['target']:26s} "
              f"{'yes' if r['met'] else 'NO':5s} {r['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
