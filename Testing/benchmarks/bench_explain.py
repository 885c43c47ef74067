"""Benchmark every registered attribution method against forward/backward passes and peer libraries.

Run from the repository root (not a pytest test)::

    .venv/bin/python Testing/benchmarks/bench_explain.py [--quick] [--device auto|cpu|cuda]
        [--repeats N] [--methods a,b] [--impls medxai,captum,...] [--cases classifier,segmenter]
        [--models DIR] [--warmup-limit S] [--json OUT.json]
    .venv/bin/python Testing/benchmarks/bench_explain.py --targets [--target-repeats 5]
        [--cases classifier,segmenter,densenet121,unet] [--json OUT.json]

Peers (install with ``pip install -e .[test,bench]``): Captum, MONAI ``monai.visualize``, M3d-CAM
(``medcam``) and pytorch-grad-cam (``grad-cam``). A peer that is missing or fails prints a row with
the reason instead of numbers.

Cases (nothing downloaded): the shipped demo models on a CT phantom with one liver lesion
(``MedXAILib.demo.samples.ct_phantom(seed=1)``, lesion radius 10 mm, -50 HU):

* ``classifier``: ``lesion_classifier_ct`` (MONAI ResNet with instance norm, 1 -> 2 classes; spec
  intensity step: ``scale_intensity_range`` [-50, 150] HU -> [0, 1], clipped), target = "lesion"
  logit;
* ``segmenter``: ``phantom_segmenter`` (MONAI UNet with batch norm and PReLU, 8 classes; spec
  intensity step: ``scale_intensity_range`` [-200, 300] HU -> [0, 1], not clipped), target =
  "lesion" logit summed over the phantom's ground-truth lesion mask (``Target(region="mask")``).

Weights come from ``--models`` (default ``Resources/Models``, the shipped specs and weights) through
``MedXAILib.load_model``; the case line prints the spec and the weights' sha256. Only when a spec is
missing is the same architecture used with a seeded random initialisation, and then the case line
says so. Each case's own intensity steps (every non-spatial step of its spec's ``preprocessing``,
read from the spec and run through :class:`MedXAILib.model.preprocessing.Preprocessing`; without a
spec, those of ``MedXAILib.demo.training.demo_models``) are applied to the HU array beforehand, so the
bound model is the bare network and every peer sees exactly what MedXAILib's methods see. The
spatial steps (``spacing`` to 2 x 2 x 3 mm: a no-op on the default grid, not at ``--quick``'s
4 x 4 x 6 mm) and the segmenter's sliding window (one window at either size) are left out. Maps are
therefore with respect to the windowed input: where the classifier's window clips (outside
[-50, 150] HU), the bare network still has a gradient, unlike the same model with its preprocessing
(as ``sanity_randomisation.py`` runs it). Costs are unaffected apart from one cheap element-wise step.
Default size is the phantom's native grid, 96 x 96 x 64 voxels of 2 x 2 x 3 mm; ``--quick`` uses
the same anatomy at 48 x 48 x 32 voxels of 4 x 4 x 6 mm and smaller settings.

Rows per case:

* ``forward``: the bound model under ``torch.inference_mode`` (no map).
* ``forward+backward``: gradient of the target w.r.t. the input, the unit of the ``x f+b`` column.
* every method of ``MedXAILib.METHODS`` (``medxai``: the whole ``MedXAILib.explain(...)`` call),
  with the registry defaults except the sizes in :data:`BENCH_PARAMS` (sized for 2 CPU cores; the
  table prints them), then each peer implementation of the same method listed in
  :data:`REFERENCES`. Peers wrap the very same bound model and resolved target scorer (``f(x) =
  scorer(bound(x))``; module-based peers get :class:`ScoreModule`, whose one output channel is that
  score), use the same CAM layer (MedXAILib's automatic choice), the same occlusion window and
  stride, baselines, region maps, and the same number of samples or steps. New registry methods
  appear automatically; they get peer rows once listed in ``REFERENCES``.

Columns: ``seconds`` is the fastest of the timed runs after one warm-up run (the run least
disturbed by other work on a shared machine; the JSON output also has the median and every run);
``forward`` and ``forward+backward`` get at least 5 timed runs. A row whose warm-up already took
longer than ``--warmup-limit`` seconds is timed by that single run (``runs`` shows ``1*``).
``x f+b`` is seconds divided by the case's forward+backward seconds. ``explain()`` runs no pass
of its own: the method's passes resolve the target and give the provenance's output (ADR 0004), so
a medxai row is the method plus the provenance (prediction summary, finiteness checks). ``peak MB`` is the peak memory above the resting state (imports, model and input in memory)
during the warm-up and timed runs: on CPU the growth of the process's peak resident set (Linux
VmHWM, reset through /proc/self/clear_refs), on CUDA ``torch.cuda.max_memory_allocated``. Each row
runs in its own child process (forked from a forkserver that imported torch once), so peaks never
mix and hooks a peer leaves on a network die with its process.

``rel diff`` is ``max|medxai - peer| / max|peer|`` and ``corr`` the Pearson correlation of the two
maps. Compared at the peer's settings: where a peer fixes a variant (MONAI's Grad-CAM++ formula,
Captum's absolute LRP epsilon) the medxai map is recomputed with the matching parameters (listed in
``note``). Peers that min-max normalise their maps (M3d-CAM, pytorch-grad-cam; MONAI CAMs are run
with ``postprocessing`` = identity, so raw) are compared after min-max normalising both maps
(``[0,1]`` in ``note``). ``note`` says why a difference is expected: Monte-Carlo methods draw
different random numbers in each library; M3d-CAM normalises before upsampling and
pytorch-grad-cam upsamples with a cubic spline (``scipy.ndimage.zoom``) instead of trilinear
interpolation; module-based guided backpropagation and DeepLIFT in the peers only hook
``nn.ReLU`` (the UNet uses PReLU); Captum's DeepLIFT routes max pooling through ``max_unpool``,
which drops all but one contribution where pooling windows overlap.

CPU timing on a shared machine: the script sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before
starting the measuring processes, because spinning OpenMP threads inflated times 3-10x while other
processes used the cores; ``--threads`` sets torch's thread count; the header prints the load average.

``--targets`` measures the speed targets of issue 22 instead: for each case (the two demo models and
MONAI's DenseNet121 and UNet at 96^3, seeded random weights) and each target row, MedXAI's whole
``explain()`` call and its references (one forward+backward pass; the peers' CAMs on the same layer;
Captum at equal steps, samples and batch; MONAI's and Captum's occlusion at several batchings) run in
one child process: one warm-up each, then ``--target-repeats`` rounds in which each runs once, in a
rotating order, so a change of the machine's load hits them alike. Each peer gets its own copy of the
network (hooks a peer object keeps on its network slow no one else). The table prints the median
times, each ratio beside its target, whether it is met, and the maps' agreement.

pytorch-grad-cam imports ``torchvision`` at package level (only its image and box utilities use
it). torchvision cannot be installed beside this CPU torch without replacing torch, so when it is
missing the benchmark registers an inert stand-in module (every function in it raises) before the
import and marks those rows ``grad-cam (tv stub)``; the CAM code that runs is pytorch-grad-cam's own.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import types
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repository root: MedXAILib

import monai  # noqa: E402

import MedXAILib  # noqa: E402
from MedXAILib import METHODS, ImageVolume, Target  # noqa: E402
from MedXAILib.engine import explain  # noqa: E402
from MedXAILib.model import load_model, resolve_device  # noqa: E402
from MedXAILib.params import make_params  # noqa: E402
from MedXAILib.scoring import resolve_target  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Cases and per-method settings

CASES = {  # name -> task, demo model (or a MONAI network with seeded weights), class explained
    "classifier": SimpleNamespace(task="classification", demo="lesion_classifier_ct", class_index=1),
    "segmenter": SimpleNamespace(task="segmentation", demo="phantom_segmenter", class_index=7),
    # MONAI's DenseNet121 and the UNet of MONAI's spleen tutorial at 96^3 (issue 22), seeded random weights
    "densenet121": SimpleNamespace(task="classification", demo=None, class_index=1, network="DenseNet121",
                                   args=dict(spatial_dims=3, in_channels=1, out_channels=2)),
    "unet": SimpleNamespace(task="segmentation", demo=None, class_index=2, network="UNet",
                            args=dict(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256),
                                      strides=(2, 2, 2, 2), num_res_units=2, norm="batch")),
}
DEMO_CASES = ("classifier", "segmenter")
GRIDS = {False: ((96, 96, 64), (2.0, 2.0, 3.0)), True: ((48, 48, 32), (4.0, 4.0, 6.0))}  # by --quick
#: The MONAI networks' grid (96^3 of 2 mm; --quick: 48^3 of 4 mm) and the intensity step applied to the HU
#: array for them (the demo segmenter's: [-200, 300] HU to [0, 1], not clipped).
CUBE_GRIDS = {False: ((96, 96, 96), (2.0, 2.0, 2.0)), True: ((48, 48, 48), (4.0, 4.0, 4.0))}
CUBE_INTENSITY = [{"kind": "scale_intensity_range", "a_min": -200.0, "a_max": 300.0, "b_min": 0.0, "b_max": 1.0,
                   "clip": False}]


def case_grid(case_name: str, quick: bool) -> tuple:
    return (GRIDS if CASES[case_name].demo else CUBE_GRIDS)[quick]

#: method -> (default-size settings, --quick settings); everything else is the registry default.
#: Sized so that the slow rows stay affordable on 2 CPU cores; the table header prints them.
BENCH_PARAMS: dict[str, tuple[dict, dict]] = {
    "integrated_gradients": ({"n_steps": 16}, {"n_steps": 8}),
    "smoothgrad": ({"n_samples": 8}, {"n_samples": 4}),
    "gradient_shap": ({"n_samples": 8}, {"n_samples": 4}),
    "occlusion": ({"window": "32", "stride": "32"}, {"window": "16", "stride": "16"}),
    # coarse pass (window and stride x coarse_factor 2) = the occlusion row's boxes
    "adaptive_occlusion": ({"window": "16", "stride": "16"}, {"window": "8", "stride": "8"}),
    "rise": ({"n_masks": 64}, {"n_masks": 16}),
    "feature_ablation": ({"n_segments": 24}, {"n_segments": 8}),
    "lime": ({"n_segments": 24, "n_samples": 48}, {"n_segments": 8, "n_samples": 16}),
    "kernel_shap": ({"n_segments": 24, "n_samples": 48}, {"n_segments": 8, "n_samples": 16}),
}


def bench_params(method: str, quick: bool) -> dict:
    return dict(BENCH_PARAMS.get(method, ({}, {}))[int(quick)])


def intensity_steps(case_name: str, model_dir: Path) -> tuple[list[dict], str]:
    """The non-spatial preprocessing steps of the case's spec (where they come from, second)."""
    from MedXAILib.model.preprocessing import Preprocessing
    from MedXAILib.demo.training.demo_models import DEMO_MODELS

    if CASES[case_name].demo is None:
        return list(CUBE_INTENSITY), "bench_explain.CUBE_INTENSITY"
    demo = DEMO_MODELS[CASES[case_name].demo]
    spec = model_dir / f"{demo.name}.json"
    if spec.is_file():
        config, source = json.loads(spec.read_text()).get("preprocessing") or [], str(spec)
    else:
        config, source = demo.spec()["preprocessing"], f"MedXAILib.demo.training.demo_models ({spec} not found)"
    steps = Preprocessing.from_config(config).steps
    return [c for c, step in zip(config, steps) if not step.spatial], source


def make_case_data(case_name: str, quick: bool, model_dir: Path) -> dict:
    """The phantom (built once in the parent and sent to every child): the CT after the case's own
    spec intensity steps, and the lesion mask."""
    from MedXAILib.model.preprocessing import Grid, Preprocessing
    from MedXAILib.demo.samples import Lesion, ct_phantom

    shape, spacing = case_grid(case_name, quick)
    volume, labels, info = ct_phantom(1, shape, spacing,
                                      lesions=[Lesion(organ="liver", radius_mm=10.0, contrast_hu=-50.0)])
    config, source = intensity_steps(case_name, model_dir)
    steps = Preprocessing.from_config(config)
    with torch.no_grad():
        x = torch.as_tensor(volume.array, dtype=torch.float32)[None]
        array = steps.apply(x, steps.grids(Grid(volume.affine, tuple(shape))))[0].numpy().astype(np.float32)
    hu = volume.array[0]
    if config and config[-1].get("kind") == "scale_intensity_range" and config[-1].get("clip"):
        inside = float(np.mean((hu >= config[-1]["a_min"]) & (hu <= config[-1]["a_max"])))
    else:
        inside = None
    return dict(array=array, affine=volume.affine, lesion=labels == 7, lesion_voxels=int((labels == 7).sum()),
                intensity=config, intensity_source=source, inside_window=inside)


def build_network(case_name: str, model_dir: Path):
    """The demo network with its shipped weights (through load_model), or seeded random weights."""
    from monai.networks import nets

    from MedXAILib.demo.training.demo_models import DEMO_MODELS

    case = CASES[case_name]
    if case.demo is None:
        torch.manual_seed(0)
        return getattr(nets, case.network)(**case.args), f"MONAI {case.network}, seeded random weights (seed 0)"
    demo = DEMO_MODELS[case.demo]
    spec = model_dir / f"{demo.name}.json"
    if spec.is_file():
        network = load_model(spec, device="cpu").network
        weights = Path(json.loads(spec.read_text())["weights"])
        weights = weights if weights.is_absolute() else spec.parent / weights
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12] if weights.is_file() else "?"
        return network, f"{spec} (weights sha256 {digest})"
    torch.manual_seed(0)
    return getattr(nets, demo.network)(**demo.args), f"UNTRAINED seeded random init ({spec} not found)"


class ScoreModule(torch.nn.Module):
    """``x -> scorer(bound(x))`` as a (B, 1) output: the target score as the only class.

    Module-based peers (MONAI, M3d-CAM, pytorch-grad-cam, Captum's GuidedBackprop/DeepLift/LRP) need
    an ``nn.Module`` and a class index; with this wrapper their class 0 is exactly MedXAILib's
    target, including segmentation regions. The network is a registered child, so its layers are
    found as ``network.<name>``.
    """

    def __init__(self, network: torch.nn.Module, score: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.network = network
        self._score = score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._score(x).unsqueeze(1)


def setup(case_name: str, data: dict, device: str, model_dir: Path) -> SimpleNamespace:
    """Model, input, target, bound model, scorer, score module and the CAM layer, in a child process."""
    from MedXAILib.methods.layers import default_layer

    case = CASES[case_name]
    network, weights = build_network(case_name, model_dir)
    names = ["no lesion", "lesion"] if case.task == "classification" else None
    adapter = load_model(network, device=device, task=case.task, class_names=names, in_channels=1)
    image = ImageVolume(data["array"], data["affine"])
    target = Target(class_index=case.class_index) if case.task == "classification" else \
        Target(class_index=case.class_index, region="mask", mask=data["lesion"])
    bound = adapter.bind(image.affine, image.shape)
    x = torch.as_tensor(image.array, device=adapter.device).unsqueeze(0)
    with torch.no_grad():
        scorer = resolve_target(target, bound(x), adapter.task, adapter.output_activation,
                                spacing=image.spacing)
    f = lambda z: scorer(bound(z))  # noqa: E731
    layer = default_layer(adapter.network, adapter.task, x)
    modules = dict(adapter.network.named_modules())
    return SimpleNamespace(adapter=adapter, network=adapter.network, image=image, target=target, bound=bound,
                           x=x, scorer=scorer, f=f, module=ScoreModule(adapter.network, f).eval(),
                           layer=layer, layer_module=modules[layer], weights=weights, task=case.task)


def ctx_for(s: SimpleNamespace, seed: int = 0) -> SimpleNamespace:
    """What MedXAILib's baseline builders read from a MethodContext."""
    return SimpleNamespace(x=s.x, spacing=s.image.spacing, generator=torch.Generator().manual_seed(seed))


def region_labels(s: SimpleNamespace, p) -> torch.Tensor:
    """The supervoxels MedXAILib's region methods build for these parameters, as a Captum feature mask."""
    from MedXAILib.methods.regions import supervoxels

    labels = supervoxels(s.x[0].detach().cpu().numpy(), p.n_segments, p.compactness, spacing=s.image.spacing)
    return torch.as_tensor(labels, device=s.x.device)[None, None]


def leaf_input(s: SimpleNamespace) -> torch.Tensor:
    """A fresh copy of the input that requires grad.

    ``load_model`` freezes the network's parameters (attributions need input gradients only), so
    layer-hooking peers, which expect some tensor upstream of the layer to require grad, get it here.
    """
    return s.x.detach().clone().requires_grad_(True)


def channel_range(x: torch.Tensor) -> float:
    return float(x.max() - x.min())  # one input channel here: MedXAILib's per-channel range


# ------------------------------------------------------------------------------------------------
# Peer implementations: make(s, params) -> a no-argument callable returning the map


def _captum_saliency(s, p):
    from captum.attr import Saliency
    return lambda: Saliency(s.f).attribute(s.x, abs=p.absolute)


def _captum_input_x_gradient(s, p):
    from captum.attr import InputXGradient
    return lambda: InputXGradient(s.f).attribute(s.x)


def _captum_integrated_gradients(s, p, delta: bool = False):
    from captum.attr import IntegratedGradients

    from MedXAILib.methods.gradient import make_baseline  # the same baseline tensor as explain()
    ig = IntegratedGradients(s.f)

    def run():
        baseline = make_baseline(ctx_for(s), p.baseline, p.blur_sigma_mm)
        out = ig.attribute(s.x, baselines=baseline, n_steps=p.n_steps, method=p.integration,
                           internal_batch_size=p.batch_size, return_convergence_delta=delta)
        return out[0] if delta else out  # the map (its convergence delta is computed, not compared)
    return run


def _captum_smoothgrad(s, p):
    from captum.attr import NoiseTunnel, Saliency
    nt = NoiseTunnel(Saliency(s.f))
    kind = {"plain": "smoothgrad", "squared": "smoothgrad_sq", "vargrad": "vargrad"}[p.variant]
    return lambda: nt.attribute(s.x, nt_type=kind, nt_samples=p.n_samples, nt_samples_batch_size=p.batch_size,
                                stdevs=p.noise_level * channel_range(s.x), abs=False)


def _captum_gradient_shap(s, p):
    from captum.attr import GradientShap

    from MedXAILib.methods.gradient import make_baseline
    gs = GradientShap(s.f)

    def run():
        centre = make_baseline(ctx_for(s), p.baseline, p.blur_sigma_mm)
        g = torch.Generator().manual_seed(0)
        noise = torch.randn((p.n_samples, *s.x.shape[1:]), generator=g).to(s.x.device)
        baselines = centre + p.baseline_noise * channel_range(s.x) * noise  # the same distribution
        return gs.attribute(s.x, baselines=baselines, n_samples=p.n_samples,
                            stdevs=p.input_noise * channel_range(s.x))
    return run


def _captum_guided_backprop(s, p):
    from captum.attr import GuidedBackprop
    gbp = GuidedBackprop(s.module)
    return lambda: gbp.attribute(s.x, target=0)


def _captum_deeplift(s, p):
    from captum.attr import DeepLift

    from MedXAILib.methods.gradient import make_baseline
    for m in s.network.modules():  # Captum refuses ReLU(inplace=True); out of place is the same function
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    dl = DeepLift(s.module, eps=p.eps)

    def run():
        baseline = make_baseline(ctx_for(s), p.baseline, p.blur_sigma_mm)
        return dl.attribute(s.x, baselines=baseline, target=0)
    return run


LRP_EPSILON = 0.01  # absolute, as Captum's EpsilonRule


def _captum_lrp(s, p):
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule
    # Captum ships rules for 2D layers only; give the linear 3D layers of these networks LRP-epsilon.
    # Layers without a rule (PReLU, InstanceNorm3d) make Captum raise, which the row reports.
    linear = (torch.nn.Conv3d, torch.nn.ConvTranspose3d, torch.nn.Linear, torch.nn.BatchNorm3d,
              torch.nn.AdaptiveAvgPool3d, torch.nn.AvgPool3d)

    def run():
        for m in s.network.modules():  # Captum deletes the rules after every call
            if isinstance(m, linear):
                m.rule = EpsilonRule(epsilon=LRP_EPSILON)
        return LRP(s.module).attribute(s.x, target=0)

    def sums(ours: np.ndarray, theirs: np.ndarray) -> str:
        with torch.no_grad():
            score = float(s.f(s.x)[0])
        return f"relevance sums: Captum {theirs.sum():.3g}, medxai {ours.sum():.3g}, score {score:.3g}"
    run.extra = sums
    return run


def _captum_grad_cam(s, p):
    from captum.attr import LayerAttribution, LayerGradCam
    gc = LayerGradCam(s.f, s.layer_module)
    mode = "trilinear" if p.upsample == "trilinear" else "nearest"
    return lambda: LayerAttribution.interpolate(gc.attribute(s.x, relu_attributions=p.relu),
                                                tuple(s.x.shape[2:]), mode)


def _captum_occlusion(s, p):
    from captum.attr import Occlusion

    from MedXAILib.methods.perturbation import perturbation_baseline
    from MedXAILib.methods.regions import parse_triple
    occ = Occlusion(s.f)
    window = parse_triple(p.window, "window", integer=True)
    stride = parse_triple(p.stride, "stride", integer=True)
    baseline = perturbation_baseline(ctx_for(s), p.baseline, p.blur_sigma_mm)
    return lambda: occ.attribute(s.x, sliding_window_shapes=(1, *window), strides=(1, *stride),
                                 baselines=baseline, perturbations_per_eval=p.batch_size)


def _captum_feature_ablation(s, p):
    from captum.attr import FeatureAblation

    from MedXAILib.methods.perturbation import perturbation_baseline
    fa = FeatureAblation(s.f)

    def run():
        mask = region_labels(s, p)  # built inside the timed call, as explain() does
        baseline = perturbation_baseline(ctx_for(s), p.baseline, p.blur_sigma_mm)
        return fa.attribute(s.x, baselines=baseline, feature_mask=mask, perturbations_per_eval=p.batch_size)
    return run


def _captum_lime(s, p):
    from captum._utils.models.linear_model import SkLearnLinearRegression
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    from MedXAILib.methods.perturbation import perturbation_baseline
    lime = Lime(s.f, interpretable_model=SkLearnLinearRegression(),
                similarity_func=get_exp_kernel_similarity_function(p.distance, p.kernel_width))

    def run():
        mask = region_labels(s, p)
        baseline = perturbation_baseline(ctx_for(s), p.baseline, p.blur_sigma_mm)
        torch.manual_seed(0)  # Captum draws its coalitions from the global generator; explain(seed=0)
        return lime.attribute(s.x, baselines=baseline, feature_mask=mask, n_samples=p.n_samples,
                              perturbations_per_eval=p.batch_size)
    return run


def _captum_kernel_shap(s, p):
    from captum.attr import KernelShap

    from MedXAILib.methods.perturbation import perturbation_baseline
    ks = KernelShap(s.f)

    def run():
        mask = region_labels(s, p)
        baseline = perturbation_baseline(ctx_for(s), p.baseline, p.blur_sigma_mm)
        torch.manual_seed(0)
        return ks.attribute(s.x, baselines=baseline, feature_mask=mask, n_samples=p.n_samples,
                            perturbations_per_eval=p.batch_size)
    return run


def _monai_vanilla_grad(s, p):
    from monai.visualize import VanillaGrad
    vg = VanillaGrad(s.module)
    # VanillaGrad accumulates into x.grad, so each call gets a fresh leaf copy (batch size must be 1)
    run = lambda: vg(s.x.detach().clone(), index=0)  # noqa: E731
    return (lambda: run().abs()) if p.absolute else run


def _monai_smoothgrad(s, p):
    from monai.visualize import SmoothGrad
    sg = SmoothGrad(s.module, stdev_spread=p.noise_level, n_samples=p.n_samples, magnitude=False,
                    verbose=False)
    return lambda: sg(s.x.detach().clone(), index=0)


def _monai_guided_backprop(s, p):
    from monai.visualize import GuidedBackpropGrad
    gb = GuidedBackpropGrad(s.module)
    return lambda: gb(s.x.detach().clone(), index=0)


def _monai_cam(kind: str):
    def make(s, p):
        import monai.visualize as mv
        cam = getattr(mv, kind)(s.module, target_layers=f"network.{s.layer}", postprocessing=lambda m: m)
        return lambda: cam(leaf_input(s), class_idx=0)
    return make


def _monai_occlusion(s, p):
    from monai.visualize import OcclusionSensitivity

    from MedXAILib.methods.regions import parse_triple
    window = parse_triple(p.window, "window", integer=True)
    stride = parse_triple(p.stride, "stride", integer=True)
    if len(set(window)) != 1 or len(set(stride)) != 1 or p.baseline != "mean":
        raise NotImplementedError("MONAI: one cubic window and stride and the image-mean baseline only")
    occ = OcclusionSensitivity(s.module, mask_size=window[0], n_batch=p.batch_size,
                               overlap=1.0 - stride[0] / window[0], mode="mean_img", activate=False,
                               verbose=False)

    def run():
        with torch.no_grad():
            score = s.f(s.x)[0]
            occluded, _ = occ(s.x)  # mean score of the occluded inputs covering each voxel
        return score - torch.as_tensor(occluded).reshape(s.x.shape)  # MedXAILib/Captum: the mean drop
    return run


def _medcam(backend: str):
    def make(s, p):
        from medcam import medcam

        c = s.scorer.class_index
        if s.task == "classification":
            label = c
        else:  # M3d-CAM's segmentation target: the backward gradient is this mask on the logits
            region = s.scorer.region

            def label(logits):
                mask = torch.zeros_like(logits)
                mask[:, c] = region
                return mask
        # the bare network: its class c logit (or masked logits) is the target; no preprocessing here
        kw = {} if backend == "gbp" else {"layer": s.layer}
        model = medcam.inject(s.network, backend=backend, label=label, data_shape=list(s.x.shape[2:]),
                              return_attention=True, **kw)
        return lambda: model(leaf_input(s))[1]
    return make


def _import_pytorch_grad_cam():
    """Import pytorch_grad_cam; register an inert torchvision stand-in when torchvision is missing."""
    try:
        import torchvision  # noqa: F401
        stubbed = False
    except Exception:
        def refuse(*args, **kwargs):
            raise RuntimeError("torchvision is not installed (benchmark stand-in module)")

        tv = types.ModuleType("torchvision")
        transforms = types.ModuleType("torchvision.transforms")
        functional = types.ModuleType("torchvision.transforms.functional")
        ops = types.ModuleType("torchvision.ops")
        transforms.Compose = transforms.Normalize = transforms.ToTensor = refuse
        functional.resize = refuse
        ops.box_iou = refuse
        tv.transforms, tv.ops, transforms.functional = transforms, ops, functional
        tv.__benchmark_stub__ = True
        sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                            "torchvision.transforms.functional": functional, "torchvision.ops": ops})
        stubbed = True
    import pytorch_grad_cam

    return pytorch_grad_cam, stubbed


def _grad_cam_lib(kind: str):
    def make(s, p):
        pgc, _ = _import_pytorch_grad_cam()
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        cam = getattr(pgc, kind)(model=s.module, target_layers=[s.layer_module])
        targets = [ClassifierOutputTarget(0)]
        run = lambda: torch.as_tensor(cam(input_tensor=leaf_input(s), targets=targets))  # noqa: E731

        def raw(ours: np.ndarray, theirs: np.ndarray) -> str:
            """The peer's own layer-resolution CAM, ReLU'd and upsampled like MedXAILib's, vs raw medxai."""
            store = cam.activations_and_grads
            acts = [a.cpu().numpy() for a in store.activations]
            grads = [g.cpu().numpy() for g in store.gradients]
            layer_map = cam.get_cam_image(s.x, s.layer_module, targets, acts[0], grads[0], False)
            layer_map = torch.as_tensor(np.maximum(layer_map, 0))[:, None].float()
            up = torch.nn.functional.interpolate(layer_map, size=tuple(s.x.shape[2:]), mode="trilinear",
                                                 align_corners=False)
            return f"raw layer map: rel diff {compare(ours, _as_map(up, ours.shape), False)['rel_diff']:.1e}"
        run.extra = raw
        return run
    return make


BOTH = ("classification", "segmentation")


@dataclass(frozen=True)
class Ref:
    """A peer implementation of a method.

    Attributes:
        tasks: the cases it runs on.
        make: ``make(s, params) -> run``; ``run()`` returns the map.
        params: parameters the medxai map is recomputed with for the comparison (the peer's fixed
            variant); None: the medxai row's own map.
        minmax: compare after min-max normalising both maps (the peer normalises).
        note: why a difference is expected (empty: it should agree to float round-off).
        seg_note: replaces ``note`` on the segmenter.
    """

    tasks: tuple
    make: Callable
    params: Optional[dict] = None
    minmax: bool = False
    note: str = ""
    seg_note: Optional[str] = None


_MC = "Monte-Carlo: each library draws its own noise"
_GC = "[0,1]; cubic-spline zoom, not trilinear"
_MED = "[0,1]; normalised before upsampling"
REFERENCES: dict[tuple[str, str], Ref] = {
    ("saliency", "captum"): Ref(BOTH, _captum_saliency),
    ("saliency", "monai"): Ref(BOTH, _monai_vanilla_grad),
    ("input_x_gradient", "captum"): Ref(BOTH, _captum_input_x_gradient),
    ("integrated_gradients", "captum"): Ref(BOTH, _captum_integrated_gradients),
    ("smoothgrad", "captum"): Ref(BOTH, _captum_smoothgrad, note=_MC),
    ("smoothgrad", "monai"): Ref(BOTH, _monai_smoothgrad, note=_MC),
    ("gradient_shap", "captum"): Ref(BOTH, _captum_gradient_shap, note=_MC),
    ("guided_backprop", "captum"): Ref(BOTH, _captum_guided_backprop,
                                       seg_note="Captum hooks nn.ReLU only; the UNet has PReLU"),
    ("guided_backprop", "monai"): Ref(BOTH, _monai_guided_backprop,
                                      note="MONAI swaps modules named '*relu*'; MONAI's ResNet names them "
                                           "'act'",
                                      seg_note="MONAI swaps modules named '*relu*' only; the UNet has PReLU"),
    ("guided_backprop", "medcam"): Ref(BOTH, _medcam("gbp"), minmax=True, note="[0,1]",
                                       seg_note="[0,1]; M3d-CAM hooks nn.ReLU only; UNet has PReLU"),
    ("deeplift", "captum"): Ref(BOTH, _captum_deeplift,
                                note="Captum refuses MONAI ResNet's reused 'act' ReLU modules",
                                seg_note="Captum has no PReLU rule (passes its gradient)"),
    ("lrp", "captum"): Ref(BOTH, _captum_lrp,
                           params={"rule": "epsilon", "epsilon": LRP_EPSILON, "epsilon_relative": False},
                           note=f"epsilon={LRP_EPSILON} absolute, both; Captum has no LRP rule for "
                                "InstanceNorm3d (the ResNet's norm)",
                           seg_note="Captum has no LRP rule for PReLU"),
    ("grad_cam", "captum"): Ref(BOTH, _captum_grad_cam),
    ("grad_cam", "monai"): Ref(BOTH, _monai_cam("GradCAM"), note="postprocessing=identity"),
    ("grad_cam", "medcam"): Ref(BOTH, _medcam("gcam"), minmax=True, note=_MED),
    ("grad_cam", "grad-cam"): Ref(BOTH, _grad_cam_lib("GradCAM"), minmax=True, note=_GC),
    ("grad_cam_pp", "monai"): Ref(BOTH, _monai_cam("GradCAMpp"), params={"variant": "monai"}, minmax=True,
                                  note="variant=monai; [0,1] (MONAI multiplies by exp(score))",
                                  seg_note="variant=monai; [0,1]; MONAI multiplies by exp(score): the region "
                                           "sum overflows"),
    ("grad_cam_pp", "medcam"): Ref(BOTH, _medcam("gcampp"), params={"variant": "monai"}, minmax=True,
                                   note="variant=monai; " + _MED,
                                   seg_note="M3d-CAM's segmentation weights: exp of each masked logit"),
    ("grad_cam_pp", "grad-cam"): Ref(BOTH, _grad_cam_lib("GradCAMPlusPlus"), minmax=True,
                                     note=_GC + "; eps 1e-6"),
    ("hires_cam", "grad-cam"): Ref(BOTH, _grad_cam_lib("HiResCAM"), minmax=True, note=_GC),
    ("xgrad_cam", "grad-cam"): Ref(BOTH, _grad_cam_lib("XGradCAM"), minmax=True, note=_GC),
    ("layer_cam", "grad-cam"): Ref(BOTH, _grad_cam_lib("LayerCAM"), minmax=True, note=_GC),
    ("score_cam", "grad-cam"): Ref(BOTH, _grad_cam_lib("ScoreCAM"), minmax=True,
                                   note="[0,1]; softmax over channel scores"),
    ("occlusion", "captum"): Ref(BOTH, _captum_occlusion),
    ("occlusion", "monai"): Ref(BOTH, _monai_occlusion, note="score(x) - MONAI's map"),
    ("feature_ablation", "captum"): Ref(BOTH, _captum_feature_ablation),
    ("lime", "captum"): Ref(BOTH, _captum_lime, note="SkLearnLinearRegression, seed 0"),
    ("kernel_shap", "captum"): Ref(BOTH, _captum_kernel_shap, note="seed 0"),
}
IMPL_LABELS = {"grad-cam": "grad-cam"}  # replaced by "grad-cam (tv stub)" when torchvision is stubbed


# ------------------------------------------------------------------------------------------------
# Measurement (each in its own child process)


def method_params(method: str, quick: bool, extra: Optional[dict] = None):
    return make_params(METHODS.get(method).params, {**bench_params(method, quick), **(extra or {})})


def make_run(s: SimpleNamespace, row: str, impl: str, quick: bool):
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
    params = method_params(row, quick)
    if impl == "medxai":
        return lambda: explain(s.image, s.adapter, row, s.target, params)  # the Attribution
    return REFERENCES[(row, impl)].make(s, params)


def diagnostics_note(diagnostics: dict) -> str:
    """The checks explain() records, in a few words: completeness / conservation errors, warnings."""
    parts = []
    for key, label in (("completeness_relative_error", "completeness err"),
                       ("conservation_relative_error", "conservation err")):
        if isinstance(diagnostics.get(key), (int, float)):
            parts.append(f"{label} {diagnostics[key]:.1%}")
    for key in ("surrogate_r2",):
        if isinstance(diagnostics.get(key), (int, float)):
            parts.append(f"R^2 {diagnostics[key]:.2f}")
    warnings_ = diagnostics.get("warnings") or []
    if warnings_:
        more = f" (+{len(warnings_) - 1})" if len(warnings_) > 1 else ""
        parts.append(f"WARNING: {warnings_[0][:90]}{more}")
    return "; ".join(parts)


def _proc_kb(key: str):
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        return next((int(line.split()[1]) for line in fh if line.startswith(key + ":")), None)
    return None


def _as_map(out, shape) -> Optional[np.ndarray]:
    if out is None:
        return None
    array = torch.as_tensor(out).detach().float().cpu().numpy()
    if array.size != int(np.prod(shape)):
        raise ValueError(f"map of shape {array.shape} does not match the input {tuple(shape)}")
    return array.reshape(shape)


def _minmax(m: np.ndarray) -> np.ndarray:
    span = float(m.max() - m.min())
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def compare(ours: np.ndarray, peer: np.ndarray, minmax: bool) -> dict:
    if minmax:
        ours, peer = _minmax(ours), _minmax(peer)
    out = {"rel_diff": float(np.abs(ours - peer).max() / max(np.abs(peer).max(), np.finfo(np.float32).tiny))}
    a, b = ours.ravel().astype(np.float64), peer.ravel().astype(np.float64)
    out["corr"] = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return out


def measure(case_name: str, data: dict, row: str, impl: str, repeats: int, device: str, model_dir: str,
            quick: bool, warmup_limit: float, reference: Optional[np.ndarray], threads: int) -> dict:
    """Runs in a fresh child process: warm-up, timed runs, peak memory, comparison with medxai."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    s = setup(case_name, data, device, Path(model_dir))
    run = make_run(s, row, impl, quick)
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
    t0 = time.perf_counter()
    out = run()
    sync()
    first = time.perf_counter() - t0
    times, runs = [first], "1*"
    if impl == "torch":
        repeats = max(repeats, 5)  # the denominators of the x f+b column: worth a few more runs
    if first <= warmup_limit:
        times, runs = [], str(repeats)
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
    result = dict(seconds=min(times), median_seconds=statistics.median(times), times=times, runs=runs,
                  peak_mb=peak_mb, layer=s.layer, weights=s.weights)
    if impl == "medxai":
        result["map"] = _as_map(out.array, s.x.shape[1:])
        result["diagnostics"] = diagnostics_note(out.provenance.get("diagnostics", {}))
    elif impl != "torch":
        ref = REFERENCES[(row, impl)]
        if ref.params is not None or reference is None:  # the medxai map at the peer's settings (untimed)
            params = method_params(row, quick, ref.params)
            reference = explain(s.image, s.adapter, row, s.target, params).array
        ours, theirs = _as_map(reference, s.x.shape[1:]), _as_map(out, s.x.shape[1:])
        bad = int((~np.isfinite(theirs)).sum())
        if bad:  # e.g. MONAI's Grad-CAM++ multiplies by exp(score), which overflows for region sums
            result["extra"] = f"peer map has {bad} non-finite voxels"
            return result
        result.update(compare(ours, theirs, ref.minmax))
        if getattr(run, "extra", None) is not None:
            result["extra"] = run.extra(ours, theirs)
    return result


# ------------------------------------------------------------------------------------------------
# Speed targets (issue 22): whole calls as the user pays them, side by side, interleaved

#: Settings of the target rows, equal for MedXAI and the peer (steps, samples, batch, window, stride).
TARGET_SETTINGS = {
    "demo": {"integrated_gradients": {"n_steps": 16, "batch_size": 8},
             "smoothgrad": {"n_samples": 8, "batch_size": 8},
             "gradient_shap": {"n_samples": 8, "batch_size": 8},  # Captum's GradientShap: one batch of all
             "occlusion": {"window": "32", "stride": "32", "batch_size": 8}},
    "cube": {"integrated_gradients": {"n_steps": 8, "batch_size": 4},
             "smoothgrad": {"n_samples": 4, "batch_size": 4},
             "gradient_shap": {"n_samples": 4, "batch_size": 4},
             "occlusion": {"window": "48", "stride": "48", "batch_size": 4}},
}
#: Peer batchings tried for exhaustive occlusion ("at their best batching"): MONAI's n_batch, Captum's
#: perturbations_per_eval.
OCCLUSION_BATCHINGS = {"demo": {"monai": (8, 16, 32), "captum": (1, 8, 16)},
                       "cube": {"monai": (4, 8), "captum": (1, 4)}}


def target_groups(case_name: str) -> list[dict]:
    """The target rows of a case: MedXAI's whole explain() call against its reference implementations."""
    kind = "demo" if CASES[case_name].demo else "cube"
    settings = TARGET_SETTINGS[kind]
    cams = ["captum", "monai", "medcam", "grad-cam"]
    fb = "<= 1.05x one forward+backward"
    # beside the guided row, not in its ratio: what Captum pays for the same rule ("context": timed, printed)
    groups = [dict(row=m, method=m, params={}, refs=["forward+backward"], limit=1.05, target=fb,
                   context=["captum"] if m == "guided_backprop" else [])
              for m in ("saliency", "input_x_gradient", "guided_backprop")]
    groups += [dict(row="grad_cam", method="grad_cam", params={}, refs=cams, limit=1.0,
                    target="<= the fastest peer's CAM, same layer"),
               dict(row="grad_cam, a model's first call", method="grad_cam", params={}, refs=cams, limit=1.0,
                    first=True, target="<= the fastest peer's CAM, same layer")]
    # the same work on both sides: Captum's integrated gradients without its convergence delta against
    # MedXAI's without its completeness check, and the two checks against each other (each scores the
    # input and the baseline once more)
    groups += [dict(row="integrated_gradients (completeness check off, as Captum's default)",
                    method="integrated_gradients", params={**settings["integrated_gradients"], "completeness": False},
                    refs=["captum"], limit=1.0, target="<= 1.0x Captum, equal steps and batch"),
               dict(row="integrated_gradients with its completeness check vs Captum with its convergence delta",
                    method="integrated_gradients", params=settings["integrated_gradients"],
                    refs=["captum+delta"], limit=1.0, target="<= 1.0x Captum, equal steps and batch")]
    groups += [dict(row=m, method=m, params=settings[m], refs=["captum"], limit=1.0,
                    target="<= 1.0x Captum, equal samples and batch") for m in ("smoothgrad", "gradient_shap")]
    batchings = OCCLUSION_BATCHINGS[kind]
    for peer in ("monai", "captum"):
        groups.append(dict(row=f"occlusion vs {'MONAI' if peer == 'monai' else 'Captum'} (best batching)",
                           method="occlusion", params=settings["occlusion"], limit=1 / 1.5,
                           refs=[f"{peer}:{b}" for b in batchings[peer]], target=">= 1.5x faster, same map"))
    return groups


def peer_view(s: SimpleNamespace) -> SimpleNamespace:
    """`s` with a network of the peer's own (a deep copy): hooks a peer keeps on its network (MONAI's and
    pytorch-grad-cam's CAM objects, M3d-CAM's injection) never slow down the other implementations."""
    import copy

    from MedXAILib.model.windows import network_call

    network = copy.deepcopy(s.network)
    score = s.scorer
    f = lambda z: score(network_call(network, z))  # noqa: E731  (the bound model without preprocessing)
    modules = dict(network.named_modules())
    return SimpleNamespace(**{**vars(s), "network": network, "f": f, "module": ScoreModule(network, f).eval(),
                              "layer_module": modules[s.layer]})


def _occlusion_peer(s: SimpleNamespace, peer: str, batch: int, settings: dict):
    from MedXAILib.methods.catalog.perturbation import OcclusionParams

    p = make_params(OcclusionParams, {**settings, "batch_size": batch})
    return (_monai_occlusion if peer == "monai" else _captum_occlusion)(s, p)


def measure_targets(case_name: str, data: dict, group: dict, repeats: int, device: str, model_dir: str,
                    quick: bool, threads: int) -> dict:
    """One target row in a fresh child process: every implementation warmed up once, then `repeats` rounds
    in which each runs once (the order rotating), so a change of load hits them alike; medians."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    s = setup(case_name, data, device, Path(model_dir))
    method = group["method"]
    params = make_params(METHODS.get(method).params, group["params"])
    sync = torch.cuda.synchronize if s.adapter.device.type == "cuda" else (lambda: None)

    def ours():
        if group.get("first"):  # a model's first CAM: the automatic layer is not known yet
            for key in [k for k in s.adapter._probe_cache if k[0] == "cam_layer"]:
                del s.adapter._probe_cache[key]
        return explain(s.image, s.adapter, method, s.target, params)

    runs = {"medxai": ours}
    for ref in [*group["refs"], *group.get("context", [])]:
        if ref == "forward+backward":
            runs[ref] = make_run(s, "forward+backward", "torch", quick)
        elif ref == "captum+delta":
            runs[ref] = _captum_integrated_gradients(peer_view(s), params, delta=True)
        elif ref.startswith(("monai:", "captum:")):
            peer, batch = ref.split(":")
            runs[ref] = _occlusion_peer(peer_view(s), peer, int(batch), group["params"])
        else:
            runs[ref] = REFERENCES[(method, ref)].make(peer_view(s), params)
    out: dict = {"times": {}, "maps": {}, "errors": {}}
    maps = {}
    for name, run in list(runs.items()):  # warm-up, and the maps to compare
        try:
            result = run()
            sync()
            maps[name] = _as_map(result.array if name == "medxai" else result, s.x.shape[1:]) \
                if name != "forward+backward" else None
        except Exception as exc:  # a failing peer is reported, not fatal
            out["errors"][name] = _short_error(exc)
            del runs[name]
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync()
            start = time.perf_counter()
            runs[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    out["times"] = times
    ours_map = maps.get("medxai")
    for name, peer_map in maps.items():
        if name == "medxai" or peer_map is None or ours_map is None:
            continue
        ref = REFERENCES.get((method, name.split(":")[0].split("+")[0]))
        minmax = bool(ref and ref.minmax)
        if np.isfinite(peer_map).all():
            out["maps"][name] = {**compare(ours_map, peer_map, minmax), "minmax": minmax}
    out["layer"] = s.layer
    out["diagnostics"] = diagnostics_note(explain(s.image, s.adapter, method, s.target, params)
                                          .provenance.get("diagnostics", {}))
    return out


def run_targets(args, cases: list[str], ctx) -> list[dict]:
    """The target table: each row's ratio beside its target, and whether it is met."""
    rows = []
    for case_name in cases:
        data = make_case_data(case_name, args.quick, args.models)
        load = "/".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
        print(f"  targets, {case_name}: load average {load} (1/5/15 min)", file=sys.stderr, flush=True)
        for group in target_groups(case_name):
            if args.methods and group["method"] not in args.methods.split(","):
                continue
            print(f"  measuring target {case_name}: {group['row']} ...", file=sys.stderr, flush=True)
            try:
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    res = pool.submit(measure_targets, case_name, data, group, args.target_repeats, args.device,
                                      str(args.models), args.quick, args.threads).result()
            except Exception as exc:
                rows.append(dict(case=case_name, row=group["row"], target=group["target"], met=None,
                                 note="FAILED " + _short_error(exc)))
                continue
            medians = {k: statistics.median(v) for k, v in res["times"].items() if v}
            context = {k: v for k, v in medians.items() if k in group.get("context", [])}
            peers = {k: v for k, v in medians.items() if k != "medxai" and k not in context}
            entry = dict(case=case_name, row=group["row"], target=group["target"], times=res["times"],
                         maps=res["maps"], errors=res["errors"], layer=res["layer"])
            if "medxai" not in medians or not peers:
                entry.update(met=None, note="; ".join(f"{k}: {v}" for k, v in res["errors"].items()))
                rows.append(entry)
                continue
            best = min(peers, key=peers.get)
            ratio = medians["medxai"] / peers[best]
            notes = [f"{k} {v:.3f} s" for k, v in sorted(peers.items(), key=lambda kv: kv[1]) if k != best]
            notes += [f"{k} {v:.3f} s ({v / peers[best]:.2f}x {best}; not a target reference)"
                      for k, v in context.items()]
            notes += [f"{k}: rel diff {m['rel_diff']:.1e}{' [0,1]' if m['minmax'] else ''}, corr {m['corr']:.4f}"
                      for k, m in res["maps"].items()]
            notes += [f"{k} failed: {e}" for k, e in res["errors"].items()]
            if res.get("diagnostics"):
                notes.append(res["diagnostics"])
            entry.update(ours_s=medians["medxai"], reference=best, reference_s=peers[best], ratio=ratio,
                         met=ratio <= group["limit"] + 1e-12, note="; ".join(notes))
            if group["limit"] < 1:
                entry["speedup"] = 1 / ratio
            rows.append(entry)
        load = "/".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
        print(f"  targets, {case_name} done: load average {load}", file=sys.stderr, flush=True)
    print_targets(rows, args.target_repeats)
    return rows


def print_targets(rows: list[dict], repeats: int) -> None:
    print(f"Targets (issue 22): whole calls, median of {repeats} interleaved runs after a warm-up; "
          "ratio = MedXAI / the fastest reference")
    head = ["case", "row", "ours s", "reference", "ref s", "ratio", "target", "met"]
    cells = []
    for r in rows:
        ratio = r.get("ratio")
        shown = "-" if ratio is None else (f"{ratio:.2f} ({r['speedup']:.2f}x faster)" if "speedup" in r
                                           else f"{ratio:.2f}")
        cells.append([r["case"], r["row"], "-" if r.get("ours_s") is None else f"{r['ours_s']:.3f}",
                      r.get("reference", "-"), "-" if r.get("reference_s") is None else f"{r['reference_s']:.3f}",
                      shown, r["target"], {True: "yes", False: "NO", None: "?"}[r.get("met")]])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)] if cells else [len(h) for h in head]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for r, c in zip(rows, cells):
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)) + (f"  | {r['note']}" if r.get("note") else ""))
    met = sum(1 for r in rows if r.get("met"))
    print(f"met: {met} of {len(rows)}", flush=True)
    print()


# ------------------------------------------------------------------------------------------------
# Table


def rows_for(task: str, only: list[str], impls: list[str]) -> list[tuple[str, str]]:
    rows = [("forward", "torch"), ("forward+backward", "torch")]
    for info in METHODS:
        if (info.tasks and task not in info.tasks) or (only and info.name not in only):
            continue
        if not impls or "medxai" in impls:
            rows.append((info.name, "medxai"))
        rows += [(info.name, impl) for (name, impl), ref in REFERENCES.items()
                 if name == info.name and task in ref.tasks and (not impls or impl in impls)]
    return rows


def peer_versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("captum", "monai", "medcam", "grad-cam", "torchvision"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def header(device: torch.device, args) -> dict:
    info = dict(device=str(device), torch=torch.__version__, medxai=MedXAILib.__version__,
                python=platform.python_version(), cpu_count=os.cpu_count(), torch_threads=args.threads,
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                repeats=args.repeats, quick=args.quick, methods=args.methods or "all", **peer_versions())
    if hasattr(os, "getloadavg"):  # other work on the machine makes CPU timings noisy
        info["load_avg_1_5_15min"] = "/".join(f"{v:.2f}" for v in os.getloadavg())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


COLUMNS = [("case", "case", "s"), ("method", "method", "s"), ("impl", "implementation", "s"),
           ("seconds", "seconds", ".3f"), ("runs", "runs", "s"), ("x f+b", "ratio_fwd_bwd", ".2f"),
           ("peak MB", "peak_mb", ".0f"), ("rel diff", "rel_diff", ".1e"), ("corr", "corr", ".4f"),
           ("note", "note", "s")]


def print_table(rows: list[dict]) -> None:
    fmt = lambda v, spec: "-" if v is None else v if isinstance(v, str) else format(v, spec)  # noqa: E731
    cells = [[fmt(r.get(key), spec) for _, key, spec in COLUMNS] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(COLUMNS)]
    left = {0, 1, 2, 4, len(COLUMNS) - 1}
    line = lambda vals: "  ".join(v.ljust(w) if i in left else v.rjust(w)  # noqa: E731
                                  for i, (v, w) in enumerate(zip(vals, widths))).rstrip()
    print(line([title for title, _, _ in COLUMNS]))
    print(line(["-" * w for w in widths]))
    for c in cells:
        print(line(c))
    print(flush=True)


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:150] if text else ''}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="48x48x32 phantom and the --quick settings")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--repeats", type=int,
                    help="timed runs per method row after the warm-up (default 3)")
    ap.add_argument("--warmup-limit", type=float, default=5.0,
                    help="rows whose warm-up run takes longer are timed by that run alone (seconds)")
    ap.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    ap.add_argument("--impls",
                    help="comma-separated implementations: medxai, captum, monai, medcam, grad-cam")
    ap.add_argument("--cases", help="comma-separated cases: classifier, segmenter (the shipped demo models, the "
                    "default), densenet121, unet (MONAI networks at 96^3; --targets runs all four by default)")
    ap.add_argument("--models", type=Path, default=ROOT / "Resources" / "Models",
                    help="folder with the demo model specs (default Resources/Models)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch CPU threads in every measurement (default: torch's default here)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--targets", action="store_true",
                    help="only the speed targets of issue 22 (ratios beside targets, interleaved runs)")
    ap.add_argument("--target-repeats", type=int, default=5, help="interleaved timed rounds per target row")
    args = ap.parse_args(argv)
    # Spinning OpenMP threads inflate CPU timings 3-10x when other processes share the cores;
    # sleeping ones cost nothing measurable when the machine is idle. Children inherit this.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    only = [METHODS.get(n.strip()).name for n in args.methods.split(",")] if args.methods else []
    impls = [n.strip() for n in args.impls.split(",")] if args.impls else []
    cases = [n.strip() for n in args.cases.split(",")] if args.cases else list(DEMO_CASES)
    args.repeats = args.repeats or 3
    device = resolve_device(args.device)
    info = header(device, args)
    started = time.perf_counter()
    print("MedXAILib explain() benchmark")
    print("  " + ", ".join(f"{k}={v}" for k, v in info.items()))
    settings = {m: bench_params(m, args.quick) for m in BENCH_PARAMS if not only or m in only}
    print("  bench settings (else registry defaults): "
          + "; ".join(f"{m} {', '.join(f'{k}={v}' for k, v in p.items())}" for m, p in settings.items()))
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        with contextlib.suppress(Exception):
            _, stubbed = _import_pytorch_grad_cam()
            if stubbed:
                IMPL_LABELS["grad-cam"] = "grad-cam (tv stub)"
                print("  pytorch-grad-cam: torchvision missing; inert stand-in registered for its import")
    print(flush=True)

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    if ctx.get_start_method() == "forkserver":
        # import the heavy libraries once in the server ("__main__" itself is not preloaded on 3.11)
        ctx.set_forkserver_preload(["torch", "scipy.ndimage", "monai.networks.nets", "monai.visualize",
                                    "captum.attr", "MedXAILib.engine", "MedXAILib.methods.layers"])
    if args.targets:
        cases = [n.strip() for n in args.cases.split(",")] if args.cases else list(CASES)
        rows = run_targets(args, cases, ctx)
        if hasattr(os, "getloadavg"):
            print("load average at the end (1/5/15 min): " + "/".join(f"{v:.2f}" for v in os.getloadavg()))
        print(f"total wall time {time.perf_counter() - started:.0f} s")
        if args.json:
            args.json.write_text(json.dumps(dict(header=info, targets=rows), indent=2, default=str))
            print(f"results written to {args.json}")
        return 0
    results = []
    for case_name in cases:
        case = CASES[case_name]
        data = make_case_data(case_name, args.quick, args.models)
        shape, spacing = case_grid(case_name, args.quick)
        rows, maps, meta = [], {}, {}
        for row, impl in rows_for(case.task, only, impls):
            print(f"  measuring {case_name}: {row} / {impl} ...", file=sys.stderr, flush=True)
            entry = dict(case=case_name, method=row, implementation=IMPL_LABELS.get(impl, impl))
            if impl not in ("torch", "medxai"):
                ref = REFERENCES[(row, impl)]
                note = ref.seg_note if case.task == "segmentation" and ref.seg_note is not None else ref.note
                entry["note"] = note or "same maths: round-off only"
            try:
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    res = pool.submit(measure, case_name, data, row, impl, args.repeats, str(device),
                                      str(args.models), args.quick, args.warmup_limit,
                                      maps.get((row, "medxai")), args.threads).result()
            except Exception as exc:  # keep going: one failing peer must not hide the rest
                entry["error"] = _short_error(exc)
                entry["note"] = "; ".join(n for n in (entry.get("note"), "FAILED " + entry["error"]) if n)
                print(f"    failed: {entry['error']}", file=sys.stderr, flush=True)
                res = dict(seconds=None)
            if res.get("extra"):
                entry["note"] += "; " + res.pop("extra")
            if res.get("map") is not None:
                maps[(row, impl)] = res.pop("map")
            meta.update({k: res.pop(k) for k in ("layer", "weights") if k in res})
            rows.append({**entry, **res})
        fb = next((r.get("seconds") for r in rows if r["method"] == "forward+backward"), None)
        for r in rows:
            if isinstance(r.get("seconds"), float) and isinstance(fb, float):
                r["ratio_fwd_bwd"] = r["seconds"] / fb
            if r["implementation"] == "medxai":
                settings = ", ".join(f"{k}={v}" for k, v in bench_params(r["method"], args.quick).items())
                r["note"] = "; ".join(n for n in (settings, r.pop("diagnostics", "")) if n) or None
        region = f" over the lesion mask ({data['lesion_voxels']} voxels)"
        window = "" if data["inside_window"] is None else \
            f" ({data['inside_window']:.1%} of the voxels inside the clipped window)"
        print(f"{case_name}: {case.task}, {'x'.join(map(str, shape))} voxels of "
              f"{'x'.join(map(str, spacing))} mm, target class {case.class_index}"
              f"{region if case.task == 'segmentation' else ''}; "
              f"model {meta.get('weights', '?')}; CAM layer '{meta.get('layer', '?')}'; "
              f"applied to the HU array: {json.dumps(data['intensity'])} from {data['intensity_source']}"
              f"{window}")
        info.setdefault("cases", {})[case_name] = dict(
            weights=meta.get("weights"), layer=meta.get("layer"), intensity=data["intensity"],
            intensity_source=data["intensity_source"], inside_window=data["inside_window"],
            lesion_voxels=data["lesion_voxels"])
        print_table(rows)
        results += rows
    if hasattr(os, "getloadavg"):
        print("load average at the end (1/5/15 min): " + "/".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(dict(header=info, rows=results), indent=2, default=str))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
