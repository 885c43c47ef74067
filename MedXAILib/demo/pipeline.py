"""The built-in demo: the main job end to end on a CT phantom with the shipped demo models.

``medxai demo [--out DIR]`` (and ``make demo``) runs without any download, in a few minutes on a
laptop CPU:

1. draws a CT phantom (:func:`MedXAILib.demo.samples.ct_phantom`) with one liver lesion of known centre
   and radius, on held-out seeds (never a training phantom), and its PET channel
   (:func:`MedXAILib.demo.samples.pet_channel`);
2. segments the CT with the shipped ``phantom_segmenter`` and classifies CT + PET with
   ``lesion_classifier_petct`` (``Resources/Models``, see their model cards; the CT-only classifier
   is the weaker of the two on held-out phantoms, and the demo shows per-channel relevance;
   ``Testing/benchmarks/demo_choices.py`` prints both classifiers on the demo phantoms);
3. explains both with integrated gradients, Grad-CAM and saliency: the classifier's ``lesion``
   logit (Grad-CAM at the ResNet's third block, see :data:`LAYERS`), and the segmenter's
   ``lesion`` score summed over the predicted lesion component at the lesion centre;
4. measures how much relevance falls in the true lesion compared with its share of the volume
   (and, for the classifier, each channel's share), runs the cascading randomisation sanity check
   for saliency on the classifier, compares the classifier's methods with quality metrics and asks
   the classifier what it says when the lesion is inpainted (:mod:`MedXAILib.demo.sections`);
5. writes into DIR: ``image.nrrd`` (CT), ``pet.nrrd``, ``lesion_mask.nrrd`` (truth),
   ``segmentation.seg.nrrd`` (the predicted label map with class names), one
   ``attribution_<model>_<method>.nrrd`` per map (input geometry, provenance in the header),
   ``comparison/``, ``counterfactual/``, ``figures/*.png``, ``summary.json``, ``report.html`` and
   ``scene.mrb`` (3D Slicer: the CT and PET, the classifier's integrated gradients as foreground
   over the CT, and the segmentation as segments).

Without the shipped weights it falls back to a tiny classifier trained on the spot on a simpler
phantom (no segmenter) and says so. ``small=True`` takes fewer integration steps (what the tests
run). The phantom stays the same: the segmenter pads a smaller grid to its 96 x 96 x 64 window,
so a smaller grid would save little and change what the models see.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..volume import ImageVolume

__all__ = [
    "SEGMENTER",
    "CLASSIFIER",
    "METHODS",
    "PHANTOM_SEED",
    "DemoCase",
    "DemoModel",
    "demo_case",
    "display_limit",
    "load_demo_models",
    "lesion_statistics",
    "open_hint",
    "run_demo",
    "synthetic_ct",
    "train_tiny_classifier",
]

SEGMENTER, CLASSIFIER = "phantom_segmenter", "lesion_classifier_petct"
CT_WINDOW = (-160.0, 240.0)  # display window (abdomen, W 400 / L 40)
PET_WINDOW = (0.0, 10.0)  # SUV
_WINDOWS = {"CT": CT_WINDOW, "PET": PET_WINDOW}
#: The units of each input channel, for the figures and the counterfactual's change per channel.
CHANNEL_UNITS = {"CT": "HU", "PET": "SUV"}
#: Display smoothing (Gaussian standard deviation, mm) of the figures' projection row; never applied to
#: a saved map or to any number (see MedXAILib.report.figures).
DISPLAY_SMOOTH_MM = 3.0
PHANTOM_SEED = 3_000_000  # + seed: held out (training seeds < 1_000_000; evaluation 1_000_000 and 2_000_000 on)
METHODS = ("integrated_gradients", "grad_cam", "saliency")
HIDDEN = 0.1  # in the Slicer scene, |relevance| below this fraction of the window is transparent
# Grad-CAM of the shipped classifier (a ResNet) at its third block: the automatic choice, the last
# block, has cells of 16 voxels (32 x 32 x 48 mm), coarser than the 18 mm lesion, and its map
# spreads over the whole body; the third block's cells are 16 x 16 x 24 mm
# (Testing/benchmarks/demo_choices.py measures both).
LAYERS = {("classifier", "grad_cam"): {"layer": "layer3"}}
COLOURS = {1: (0.89, 0.76, 0.62), 2: (0.72, 0.33, 0.22), 3: (0.55, 0.30, 0.62), 4: (0.95, 0.80, 0.20),
           5: (0.55, 0.75, 0.95), 6: (0.98, 0.98, 0.86), 7: (0.10, 0.95, 0.25)}
Log = Callable[[str], None]


@dataclass
class DemoCase:
    """The input: a CT (+ PET) volume, its true labels and lesion (mask, centre voxel, description)."""

    image: ImageVolume
    labels: np.ndarray
    class_names: list[str]
    lesion: np.ndarray
    centre_ijk: np.ndarray
    info: dict[str, Any]

    @cached_property
    def ct(self) -> ImageVolume:
        """The CT channel alone (the segmenter's input, the figures' background)."""
        if self.image.n_channels == 1:
            return self.image
        return self.image.with_array(self.image.array[:1], channel_names=["CT"])

    def input_for(self, model: "DemoModel") -> ImageVolume:
        """The channels `model` takes: CT and PET, or CT alone."""
        return self.image if model.adapter.in_channels in (None, self.image.n_channels) else self.ct


@dataclass
class DemoModel:
    """A loaded demo model and what the report says about it."""

    role: str  # "classifier" or "segmenter"
    adapter: Any
    name: str
    title: str
    card: Optional[Path] = None
    metrics: dict[str, Any] = field(default_factory=dict)
    fallback: bool = False


# ------------------------------------------------------------------------------------------------
# Data and models


def demo_case(seed: int = 0) -> DemoCase:
    """A held-out CT phantom (96 x 96 x 64 voxels of 2 x 2 x 3 mm) with one liver lesion (radius 9 mm, -45 HU,
    SUV 8) and its PET channel: a two-channel (CT, PET) volume."""
    from .samples import Lesion, ct_phantom, pet_channel

    ct, labels, info = ct_phantom(PHANTOM_SEED + int(seed), lesions=[Lesion("liver", radius_mm=9.0,
                                                                            contrast_hu=-45.0, suv=8.0)])
    image = ImageVolume(np.concatenate([ct.array, pet_channel(labels, info).array]), ct.affine,
                        channel_names=["CT", "PET"], meta=dict(ct.meta))
    lesion = labels == info["class_names"].index("lesion")
    centre = np.asarray(info["lesions"][0]["centre_ijk"], dtype=float)
    return DemoCase(image, labels, list(info["class_names"]), lesion, centre, info["lesions"][0])


def _card(folder: Path, name: str) -> tuple[str, dict[str, Any]]:
    card = folder / f"{name}.md"
    title = name
    if card.is_file():
        first = card.read_text(encoding="utf-8").splitlines()[0]
        title = first.lstrip("# ").split(" (`")[0] or name
    metrics_file = folder / f"{name}.metrics.json"
    metrics = json.loads(metrics_file.read_text())["metrics"] if metrics_file.is_file() else {}
    return title, metrics


def load_demo_models(model_dir: Optional[Path] = None, log: Log = print) -> dict[str, DemoModel]:
    """The shipped segmenter and CT classifier found in `model_dir` (default ``Resources/Models``)."""
    from ..model import load_model
    from .training.demo_models import default_model_dir

    folder = Path(model_dir) if model_dir is not None else default_model_dir()
    models = {}
    for role, name in (("segmenter", SEGMENTER), ("classifier", CLASSIFIER)):
        spec = folder / f"{name}.json"
        if spec.is_file():
            title, metrics = _card(folder, name)
            card = folder / f"{name}.md"
            models[role] = DemoModel(role, load_model(spec, device="cpu"), name, title,
                                     card if card.is_file() else None, metrics)
        else:
            log(f"  (no shipped {role}: {spec} is missing)")
    return models


def synthetic_ct(rng: np.random.Generator, lesion: bool) -> tuple[ImageVolume, np.ndarray]:
    """The fallback phantom: a soft-tissue ellipsoid in air (32 x 32 x 24), optionally with a bright lesion."""
    shape, spacing = (32, 32, 24), (1.5, 1.5, 2.5)
    ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = (np.array(shape) - 1) / 2
    body = ((ii - centre[0]) / 14) ** 2 + ((jj - centre[1]) / 12) ** 2 + ((kk - centre[2]) / 11) ** 2 <= 1
    array = np.where(body, 40.0, -1000.0) + rng.normal(0, 12, shape)
    mask = np.zeros(shape, bool)
    if lesion:
        radius = rng.uniform(2.5, 4.0)
        c = centre + rng.uniform(-5, 5, 3) * np.array([1, 1, 0.6])
        mask = ((ii - c[0]) ** 2 + (jj - c[1]) ** 2 + ((kk - c[2]) * spacing[2] / spacing[0]) ** 2) <= radius**2
        mask &= body
        array = np.where(mask, array + 110.0, array)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-24.0, -30.0, 15.0)
    return ImageVolume(array.astype(np.float32)[None], affine, channel_names=["CT"], meta={"source": "synthetic"}), mask


def train_tiny_classifier(seed: int = 0, steps: int = 200, log: Optional[Log] = None):
    """The fallback model: a MONAI ``Classifier`` trained for seconds on :func:`synthetic_ct` phantoms."""
    import torch
    from monai.networks.nets import Classifier

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Classifier(in_shape=[1, 32, 32, 24], classes=2, channels=[4, 8, 16], strides=[2, 2, 2])
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    for step in range(steps):
        labels = rng.integers(0, 2, 8)
        batch = np.stack([synthetic_ct(rng, bool(y))[0].array for y in labels])
        x = torch.as_tensor(np.clip((batch + 200.0) / 500.0, 0, 1))
        loss = torch.nn.functional.cross_entropy(net(x), torch.as_tensor(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if log and (step + 1) % 50 == 0:
            log(f"  training step {step + 1}/{steps}: loss {loss.item():.3f}")
    return net.eval()


def _fallback(seed: int, out: Path, log: Log) -> tuple[DemoModel, DemoCase]:
    from ..model import load_model, save_spec_model

    log("  Shipped weights are missing: FALLING BACK to a tiny classifier trained now on a simple phantom "
        "(no segmenter). Run `python -m MedXAILib.demo.training` to create Resources/Models.")
    net = train_tiny_classifier(seed, log=log)
    spec = save_spec_model(
        net, "Classifier", {"in_shape": [1, 32, 32, 24], "classes": 2, "channels": [4, 8, 16], "strides": [2, 2, 2]},
        out / "fallback_classifier.json", task="classification", class_names=["no lesion", "lesion"], in_channels=1,
        preprocessing=[{"kind": "scale_intensity_range", "a_min": -200.0, "a_max": 300.0, "b_min": 0.0,
                        "b_max": 1.0, "clip": True}])
    image, mask = synthetic_ct(np.random.default_rng(seed + 1000), lesion=True)
    centre = np.argwhere(mask).mean(axis=0)
    info = {"organ": "body", "centre_ijk": centre.round(3).tolist(), "n_voxels": int(mask.sum())}
    case = DemoCase(image, mask.astype(np.uint8), ["background", "lesion"], mask, centre, info)
    model = DemoModel("classifier", load_model(spec, device="cpu"), "fallback_classifier",
                      "Tiny lesion classifier trained on the spot (fallback)", fallback=True)
    return model, case


# ------------------------------------------------------------------------------------------------
# Prediction, targets, explanations and statistics


def _predict(model: DemoModel, image: ImageVolume) -> np.ndarray:
    import torch

    with torch.no_grad():
        x = torch.as_tensor(image.array[np.newaxis])
        return model.adapter.bind(image.affine, image.shape)(x)[0].float().numpy()


def _segmenter_target(predicted: np.ndarray, case: DemoCase, lesion_class: int):
    """The predicted lesion component nearest to the true lesion centre (or the true lesion as a mask)."""
    from ..target import Target

    voxels = np.argwhere(predicted == lesion_class)
    if len(voxels) == 0:
        return Target(lesion_class, region="mask", mask=case.lesion), "the true lesion (the segmenter found none)"
    spacing = case.image.spacing
    nearest = voxels[np.argmin((((voxels - case.centre_ijk) * spacing) ** 2).sum(axis=1))]
    return (Target(lesion_class, region="component", voxel=tuple(int(v) for v in nearest)),
            f"the predicted lesion component containing voxel {tuple(int(v) for v in nearest)}")


def _clean(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else round(float(value), 6)
    return int(value) if isinstance(value, np.integer) else value


def _region(case: DemoCase, grow_mm: float) -> np.ndarray:
    """The true lesion grown by `grow_mm` (the region the counterfactual replaces)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~case.lesion, sampling=case.image.spacing) <= grow_mm


def lesion_statistics(attribution: Any, case: DemoCase) -> dict[str, Any]:
    """Where the relevance lies relative to the true structures, the lesion in particular.

    The lesion's numbers are the localisation metrics of :mod:`MedXAILib.evaluation.localisation`
    with their registry defaults (the definitions the method comparison uses, on the channel sum):
    the pointing game (the map's maximum within 5 mm of the lesion, with its distance), relevance
    mass accuracy (the lesion's share of the positive relevance), relevance rank accuracy and AUROC,
    each with its chance level, and the verdict of
    :func:`~MedXAILib.evaluation.localisation.localisation_verdict`. Per structure of the true label
    map: :func:`MedXAILib.statistics.structure_statistics`. Per input channel (when the method tells
    the channels apart): its share of |relevance|, its relevance summed over the lesion region (the
    lesion grown by :data:`~MedXAILib.demo.sections.GROW_MM`, the region the counterfactual
    replaces) and over the image, and the distance from its maximum to the lesion.
    """
    from ..analysis.statistics import structure_statistics
    from ..attribution import Attribution
    from ..evaluation.localisation import (auroc_score, localisation_verdict, pointing_game_score,
                                           relevance_mass_accuracy_score, relevance_rank_accuracy_score)
    from ..evaluation.metrics import PointingGameParams
    from .sections import GROW_MM

    if not isinstance(attribution, Attribution):
        attribution = Attribution(np.asarray(attribution, np.float32)[np.newaxis] if np.ndim(attribution) == 3
                                  else np.asarray(attribution, np.float32), case.image.affine)
    a = attribution.summed.astype(np.float64)
    spacing = case.image.spacing
    tolerance = PointingGameParams().tolerance_mm
    pointing = pointing_game_score(a, case.lesion, spacing, tolerance)
    mass = relevance_mass_accuracy_score(a, case.lesion)
    rank = relevance_rank_accuracy_score(a, case.lesion)
    area = auroc_score(np.abs(a), case.lesion)
    labels = np.where(case.lesion, len(case.class_names) - 1, case.labels)  # the lesion is the last class
    table = structure_statistics(a, labels, case.class_names, case.image.affine)
    rows = {name: {col: _clean(table[col][i]) for col in table if col != "structure"}
            for i, name in enumerate(table["structure"])}
    lesion = rows[case.class_names[-1]]
    volume_share = lesion["voxels"] / a.size
    region = _region(case, GROW_MM)
    channels = []
    summary = attribution.channel_summary()
    if len(summary["names"]) > 1 and summary["resolved"]:
        for c, name in enumerate(summary["names"]):
            channel = attribution.array[c].astype(np.float64)
            peak = pointing_game_score(channel, case.lesion, spacing, tolerance)
            channels.append({"channel": name, "share_abs": round(summary["shares"][c], 4),
                             "sum": _clean(float(channel.sum())),
                             "sum_in_lesion_region": _clean(float(channel[region].sum())),
                             "peak_distance_mm": round(peak["distance_mm"], 2)})
    return {"lesion_volume_share": round(volume_share, 6),
            "positive_share_in_lesion": round(mass["value"], 6) if np.isfinite(mass["value"]) else 0.0,
            "positive_ratio": round(mass["value"] / volume_share, 3) if np.isfinite(mass["value"]) else 0.0,
            "abs_share_in_lesion": lesion["share_abs"], "abs_ratio": lesion["density_ratio"],
            "pointing_game": {"value": pointing["value"], "distance_mm": round(pointing["distance_mm"], 2),
                              "chance": round(pointing["chance"], 6), "tolerance_mm": tolerance,
                              "max_voxel": pointing["max_voxel"]},
            "relevance_rank_accuracy": {"value": round(rank["value"], 6), "chance": round(rank["chance"], 6),
                                        "k": rank["k"]},
            "auroc": {"value": round(area["value"], 6), "chance": 0.5},
            "verdict": localisation_verdict(pointing, rank),
            "peak_distance_mm": round(pointing["distance_mm"], 2),
            "channels": channels, "lesion_region_grow_mm": GROW_MM,
            "structures": {name: {k: row[k] for k in ("voxels", "volume_share", "share_abs", "share_positive",
                                                     "density_ratio", "abs_rank_accuracy", "peak_distance_mm")}
                           for name, row in rows.items()}}


def _explain(model: DemoModel, case: DemoCase, target, small: bool, seed: int, log: Log) -> dict[str, Any]:
    from ..engine import explain

    results = {}
    for method in METHODS:
        params = {"n_steps": 8 if small else 32} if method == "integrated_gradients" else {}
        if not model.fallback:
            params.update(LAYERS.get((model.role, method), {}))
        started = time.perf_counter()
        results[method] = explain(case.input_for(model), model.adapter, method, target, params, seed=seed)
        log(f"  {model.role:10s} {method:22s} {time.perf_counter() - started:6.1f} s")
    return results


def _randomisation(model: DemoModel, case: DemoCase, small: bool, seed: int) -> list[dict[str, Any]]:
    from ..evaluation.randomisation import cascading_randomisation
    from ..target import Target

    _, steps = cascading_randomisation(case.input_for(model), model.adapter, "saliency", Target(class_index=1),
                                       stages=3 if small else 5, seed=seed)
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(step).items()} for step in steps]


# ------------------------------------------------------------------------------------------------
# Outputs


def display_limit(attribution: np.ndarray) -> float:
    """The symmetric display window's half-width: the 99.9th percentile of |a| (a few extreme voxels
    saturate instead of washing out the rest of the map), or max |a| when that is 0."""
    magnitude = np.abs(np.asarray(attribution, dtype=np.float64))
    return float(np.percentile(magnitude, 99.9)) or float(magnitude.max()) or 1.0


def _segments(class_names: list[str], labels: np.ndarray) -> list[tuple[int, str, tuple[float, float, float]]]:
    return [(v, name, COLOURS.get(v if len(class_names) > 2 else 7, (0.8, 0.8, 0.2)))
            for v, name in enumerate(class_names) if v and np.any(labels == v)]


def _label(method: str, model: DemoModel) -> str:
    from ..methods import METHODS as REGISTRY

    return f"{REGISTRY.get(method).title}: {model.role}"


def _scene(out: Path, case: DemoCase, labels: np.ndarray, class_names: list[str],
           results: list[tuple[DemoModel, str, Any]]) -> Path:
    from ..attribution import PROVENANCE_KEY
    from ..report.mrb import SceneSegmentation, SceneVolume, write_mrb

    volumes = [SceneVolume("CT phantom", case.ct, CT_WINDOW)]
    if case.image.n_channels > 1:
        volumes.append(SceneVolume("PET phantom", case.image.with_array(case.image.array[1:]), PET_WINDOW))
    foreground = None
    for model, method, attribution in results:
        provenance = attribution.provenance_json()
        channels = attribution.channel_summary()
        shown = [(_label(method, model), attribution.summed, None)]
        if len(channels["names"]) > 1 and channels["resolved"]:  # each channel's map too, over its own image
            shown += [(f"{_label(method, model)} [{name}]", attribution.array[c], name)
                      for c, name in enumerate(channels["names"])]
        for name, values, channel in shown:
            m = display_limit(values)
            attributes = {
                "MedXAI.Result": "attribution", PROVENANCE_KEY: provenance, "MedXAI.Method": method,
                "MedXAI.MethodTitle": attribution.provenance["method_title"], "MedXAI.Model": model.name,
                "MedXAI.Target": str(attribution.provenance.get("target_name")),
                "MedXAI.Created": attribution.provenance["created"], "MedXAI.Display.Colormap": "diverging",
                "MedXAI.Display.Window": f"{-m!r} {m!r}", "MedXAI.Display.Threshold": repr(HIDDEN * m)}
            if channel is not None:
                attributes["MedXAI.Channel"] = channel
            volumes.append(SceneVolume(name, case.image.with_array(values[np.newaxis].astype(np.float32),
                                                                   channel_names=[]), (-m, m), "diverging",
                                       attributes, {PROVENANCE_KEY: provenance}))
            if foreground is None and model.role == "classifier" and method == "integrated_gradients":
                foreground = len(volumes) - 1
    segmentation = SceneSegmentation("segmentation", labels, case.image.affine, _segments(class_names, labels))
    focus = (case.image.affine @ np.append(case.centre_ijk, 1.0))[:3]
    return write_mrb(out / "scene.mrb", volumes, segmentation, 0, foreground, 0.5, focus, HIDDEN)


def _receptive_field(results: list[tuple[DemoModel, str, Any]]) -> Optional[np.ndarray]:
    """The segmenter target's receptive field: the box around the voxels where its saliency is not exactly 0.

    Outside it no input change can alter the target's score, so every gradient-based map is exactly 0
    there: the hard-edged square of the segmenter's maps.
    """
    saliency = next((a for m, method, a in results if m.role == "segmenter" and method == "saliency"), None)
    if saliency is None:
        return None
    support = np.any(saliency.array != 0, axis=0)
    if not support.any() or support.all():
        return None
    lo, hi = np.argwhere(support).min(axis=0), np.argwhere(support).max(axis=0) + 1
    box = np.zeros(support.shape, bool)
    box[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return box


def _quantity(units: str, channel: str, score: str) -> str:
    """What a map's colours show, in its units (the demo targets are logits)."""
    if units == "gradient":
        return f"gradient ({score} per {CHANNEL_UNITS.get(channel, 'unit')} of {channel})"
    if units == "layer":
        return "layer relevance (arbitrary units)"
    return f"relevance ({score} contribution)"


def _figures(out: Path, case: DemoCase, labels: np.ndarray, class_names: list[str],
             results: list[tuple[DemoModel, str, Any]], log: Log) -> dict[str, Any]:
    """Input figures, and per map one figure per input channel over its own image (one figure when the
    method cannot tell the channels apart or the input has one channel)."""
    from ..errors import MedXAIError
    from ..report import figures
    from .sections import GROW_MM

    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    paths: dict[str, Any] = {}
    receptive = _receptive_field(results)
    try:
        names = dict(enumerate(class_names))
        colours = {v: c for v, _, c in _segments(class_names, labels)}
        figures.prediction_figure(folder / "prediction.png", case.ct, labels, colours, names, case.centre_ijk,
                                  "Input CT phantom and predicted segmentation (planes through the lesion centre)",
                                  CT_WINDOW, case.lesion)
        paths["prediction"] = "figures/prediction.png"
        if case.image.n_channels > 1:
            figures.prediction_figure(folder / "pet.png", case.image, np.zeros(labels.shape, np.uint8), {}, names,
                                      case.centre_ijk, "Input PET channel (SUV 0-10; planes through the lesion "
                                      "centre)", PET_WINDOW, case.lesion, channel=1)
            paths["pet"] = "figures/pet.png"
        for model, method, attribution in results:
            target = attribution.provenance.get("target_name")
            score = (attribution.provenance.get("target") or {}).get("score", "logit")
            channels = attribution.channel_summary()
            image = case.input_for(model)
            outlines = [(receptive, "#00e5ff")] if model.role == "segmenter" and receptive is not None else []
            note = ("green: true lesion; cross: the map's maximum (pointing game)"
                    + ("; dashed cyan: the target's receptive field" if outlines else ""))
            per_channel = len(channels["names"]) > 1 and channels["resolved"]
            region = _region(case, GROW_MM) if per_channel else None
            shown = {}
            if per_channel:
                limits = [display_limit(attribution.array[c]) for c in range(len(channels["names"]))]
                shared = max(limits) if channels["units"] == "score" else None  # one scale where units agree
                for c, name in enumerate(channels["names"]):
                    values = attribution.array[c]
                    path = folder / f"{model.role}_{method}_{name}.png"
                    where = (f"{float(values[region].sum()):+.2g} {score} in the lesion region, "
                             if channels["units"] == "score" else "")
                    figures.attribution_figure(
                        path, image, values, case.centre_ijk,
                        f"{_label(method, model)}, target '{target}': {name} channel over the {name}\n"
                        f"({where}{100 * channels['shares'][c]:.1f} % of all |relevance|)", _WINDOWS.get(name, CT_WINDOW),
                        case.lesion, note.replace("the map's maximum (pointing game)", f"the {name} channel's maximum"),
                        shared or limits[c], _quantity(channels["units"], name, score), channel=c,
                        smooth_mm=DISPLAY_SMOOTH_MM, peak_ijk=np.unravel_index(int(np.argmax(values)), values.shape),
                        outlines=outlines)
                    shown[name] = f"figures/{path.name}"
            else:
                values = attribution.summed
                path = folder / f"{model.role}_{method}.png"
                agnostic = (" (one map for every channel: the method cannot tell them apart)"
                            if len(channels["names"]) > 1 else "")
                figures.attribution_figure(
                    path, image, values, case.centre_ijk, f"{_label(method, model)} ({model.name}), target "
                    f"'{target}'{agnostic}", CT_WINDOW, case.lesion, note, display_limit(values),
                    _quantity(channels["units"], "CT", score), smooth_mm=DISPLAY_SMOOTH_MM,
                    peak_ijk=np.unravel_index(int(np.argmax(values)), values.shape), outlines=outlines)
                shown["sum" if agnostic else "CT"] = f"figures/{path.name}"
            paths[f"{model.role}/{method}"] = shown
    except MedXAIError as error:  # matplotlib missing: everything else is still written
        log(f"  figures skipped: {error}")
    return paths


def _counterfactual_figures(out: Path, case: DemoCase, result: Any, log: Log) -> dict[str, str]:
    """The counterfactual's change per channel, over that channel of the counterfactual, in its own units."""
    from ..errors import MedXAIError
    from ..report import figures

    paths = {}
    names = list(result.difference.channel_names or ["CT"])
    try:
        for c, name in enumerate(names):
            difference = result.difference.array[c]
            unit = CHANNEL_UNITS.get(name, "image units")
            path = out / "figures" / f"counterfactual_inpaint_{name}.png"
            figures.attribution_figure(path, result.volume, difference, case.centre_ijk,
                                       f"Counterfactual: the lesion inpainted in every channel; {name} channel "
                                       f"(colours: change of the {name} in {unit})", _WINDOWS.get(name, CT_WINDOW),
                                       case.lesion, "green outline: the true lesion; the region replaced is the "
                                       "lesion grown by 8 mm", float(np.abs(difference).max()) or 1.0,
                                       quantity=f"change in {unit}", channel=c)
            paths[name] = f"figures/{path.name}"
    except MedXAIError as error:
        log(f"  counterfactual figures skipped: {error}")
    return paths


def _model_entry(model: DemoModel, out: Path) -> dict[str, Any]:
    entry = {"name": model.name, "title": model.title, "task": model.adapter.task, "fallback": model.fallback,
             "class_names": model.adapter.class_names, "sha256": model.adapter.sha256, "metrics": {
                 k: v for k, v in model.metrics.items() if k in ("dice", "mean_dice_foreground", "auc", "accuracy",
                                                                  "n", "n_positive")}}
    if model.card is not None:
        (out / "model_cards").mkdir(exist_ok=True)
        shutil.copyfile(model.card, out / "model_cards" / model.card.name)
        entry["card"] = f"model_cards/{model.card.name}"
        text = model.card.read_text(encoding="utf-8").split("\n\n")
        entry["card_summary"] = text[1].strip() if len(text) > 1 else ""
    return entry


def run_demo(out: Path, quiet: bool = False, seed: int = 0, small: bool = False,
             model_dir: Optional[Path] = None) -> int:
    """Segment, classify and explain a phantom, and write files, figures, report and scene into `out`.

    Args:
        out: output folder (created; files of an earlier run are replaced).
        quiet: print nothing.
        seed: picks the phantom (a held-out one) and seeds every method.
        small: quicker settings for tests: 8 instead of 32 integration steps, 3 randomisation stages.
        model_dir: where the demo models are (default ``Resources/Models``).

    Returns:
        0 (the CLI's exit code).
    """
    from .. import __version__
    from ..io import write_image
    from ..provenance import library_versions, timestamp
    from ..report.html import write_report
    from ..report.mrb import SceneSegmentation, write_seg_nrrd
    from .sections import compare_demo_methods, inpaint_lesion
    from ..target import Target
    from .training.metrics import dice_per_class

    log = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log("MedXAI demo: segment, classify and explain a CT phantom with a liver lesion (nothing is downloaded)")
    models, notes = load_demo_models(model_dir, log), []
    if "classifier" in models:
        case = demo_case(seed)
    else:
        models["classifier"], case = _fallback(seed, out, log)
        models.pop("segmenter", None)
        notes.append("FALLBACK: the shipped weights (Resources/Models) are missing; a tiny classifier was trained "
                     "on the spot on a simple phantom, and there is no segmenter.")
    classifier, segmenter = models["classifier"], models.get("segmenter")
    logits = _predict(classifier, case.input_for(classifier))
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    names = list(classifier.adapter.class_names or ["no lesion", "lesion"])
    prediction: dict[str, Any] = {"classifier": {
        "probabilities": {n: round(float(p), 4) for n, p in zip(names, probabilities)},
        "predicted": names[int(np.argmax(probabilities))]}}
    # one rounding (4 decimals) for the console, summary.json and the report, so they never disagree
    log(f"  classifier: P(lesion) = {prediction['classifier']['probabilities'][names[1]]:.4f}")
    if segmenter is not None:
        labels = np.argmax(_predict(segmenter, case.input_for(segmenter)), axis=0).astype(np.uint8)
        class_names = list(segmenter.adapter.class_names)
        dice = dice_per_class(labels, case.labels, len(class_names))
        prediction["segmentation"] = {
            "file": "segmentation.seg.nrrd", "class_names": class_names,
            "voxels_per_class": {n: int((labels == v).sum()) for v, n in enumerate(class_names)},
            "dice_vs_truth": {n: None if np.isnan(d) else round(float(d), 4) for n, d in zip(class_names, dice)}}
        log(f"  segmenter: lesion Dice {prediction['segmentation']['dice_vs_truth']['lesion']}")
    else:
        labels, class_names = case.lesion.astype(np.uint8), ["background", "lesion (truth)"]
        notes.append("No segmenter: segmentation.seg.nrrd holds the TRUE lesion, not a prediction.")

    log("Explaining ...")
    targets = [(classifier, Target(class_index=1), "the classifier's 'lesion' logit")]
    if segmenter is not None:
        target, text = _segmenter_target(labels, case, class_names.index("lesion"))
        targets.append((segmenter, target, f"the segmenter's 'lesion' logit summed over {text}"))
    results, records = [], []
    for model, target, text in targets:
        for method, attribution in _explain(model, case, target, small, seed, log).items():
            results.append((model, method, attribution))
            file = f"attribution_{model.role}_{method}.nrrd"
            attribution.save(out / file)  # one map per input channel
            p = attribution.provenance
            record = {"model": model.role, "model_name": model.name, "method": method,
                      "method_title": p["method_title"], "reference": p.get("reference"), "target": text,
                      "target_spec": p["target"], "parameters": p["parameters"], "file": file, "file_sum": file,
                      "seconds": p["seconds"], "diagnostics": p["diagnostics"],
                      "display_limit": display_limit(attribution.summed),
                      "statistics": lesion_statistics(attribution, case), "channels": attribution.channel_summary(),
                      "channel_shares": dict(zip(case.input_for(model).channel_names or ["CT"],
                                                 (round(v, 4) for v in attribution.channel_shares)))}
            if attribution.array.shape[0] > 1:  # the sum as its own file (what Slicer shows)
                record["file_sum"] = f"attribution_{model.role}_{method}_sum.nrrd"
                attribution.save_sum(out / record["file_sum"])
            records.append(record)
    log("Sanity check: cascading randomisation of the classifier (saliency) ...")
    randomisation = _randomisation(classifier, case, small, seed)
    log("Comparing the classifier's maps (faithfulness, localisation, complexity) ...")
    comparison = compare_demo_methods(case.input_for(classifier), classifier.adapter,
                                      {m: a for model, m, a in results if model is classifier}, targets[0][1],
                                      case.lesion, out, small, seed)
    log(f"  ranking: {', '.join(r['method'] for r in comparison['ranking'])}")
    log("Counterfactual: the classifier without the lesion (inpainting) ...")
    inpainted, counterfactual = inpaint_lesion(case.input_for(classifier), classifier.adapter, case.lesion, out, seed)
    log(f"  P(lesion) {counterfactual['probability_before']:.4f} -> {counterfactual['probability_after']:.4f}"
        f" (goal {'reached' if counterfactual['reached'] else 'NOT reached'})")
    for row in counterfactual.get("per_channel_inpainting", []):
        log(f"  lesion removed from {row['channel']} only: P(lesion) {row['probability_after']:.4f}")

    log("Writing files, figures, report and scene ...")
    write_image(case.ct, out / "image.nrrd", metadata={"MedXAI.Source": str(case.image.meta.get("source"))})
    if case.image.n_channels > 1:
        write_image(case.image.with_array(case.image.array[1:], channel_names=["PET"]), out / "pet.nrrd")
    write_image(case.image.with_array(case.lesion.astype(np.float32)), out / "lesion_mask.nrrd")
    write_seg_nrrd(out / "segmentation.seg.nrrd", SceneSegmentation("segmentation", labels, case.image.affine,
                                                                    _segments(class_names, labels)))
    figure_paths = _figures(out, case, labels, class_names, results, log)
    counterfactual["figures"] = _counterfactual_figures(out, case, inpainted, log)
    counterfactual["figure"] = next(iter(counterfactual["figures"].values()), None)
    for record in records:
        record["figures"] = figure_paths.get(f"{record['model']}/{record['method']}") or {}
        record["figure"] = next(iter(record["figures"].values()), None)
    _scene(out, case, labels, class_names, results)
    centre_ras = (case.image.affine @ np.append(case.centre_ijk, 1.0))[:3]
    summary = {
        "medxai_version": __version__, "created": timestamp(), "seed": seed, "small": small,
        "fallback": classifier.fallback, "notes": notes,
        "image": {"file": "image.nrrd", "source": case.image.meta.get("source"), "shape": list(case.image.shape),
                  "spacing_mm": [round(float(v), 4) for v in case.image.spacing], "display_window_hu": CT_WINDOW,
                  "channels": list(case.image.channel_names or ["CT"])},
        "pet": {"file": "pet.nrrd", "display_window_suv": PET_WINDOW} if case.image.n_channels > 1 else None,
        "channel_units": {name: CHANNEL_UNITS.get(name, "") for name in case.image.channel_names or ["CT"]},
        "display_smoothing_mm": DISPLAY_SMOOTH_MM,
        "lesion": {"file": "lesion_mask.nrrd", **{k: case.info[k] for k in ("organ", "radius_mm", "contrast_hu", "suv")
                                                 if k in case.info},
                   "centre_ijk": [round(float(v), 3) for v in case.centre_ijk],
                   "centre_ras": [round(float(v), 3) for v in centre_ras], "n_voxels": int(case.lesion.sum()),
                   "volume_share": round(float(case.lesion.mean()), 6)},
        "models": {role: _model_entry(model, out) for role, model in models.items()},
        "prediction": prediction, "attributions": records,
        "randomisation": {"model": "classifier", "method": "saliency", "steps": randomisation},
        "comparison": comparison, "counterfactual": counterfactual,
        "figures": figure_paths, "scene": "scene.mrb", "report": "report.html", "versions": library_versions(),
    }
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    write_report(out / "report.html", summary)
    log(f"\nDone in {summary['seconds']:.0f} s.")
    for note in notes:
        log(f"  NOTE: {note}")
    log("Does the map find the true lesion? (pointing game: the map's maximum within 5 mm; rank accuracy: "
        "share of its K most relevant voxels inside, K = the lesion's size; chance in brackets)")
    for r in records:
        s = r["statistics"]
        log(f"  {r['model']:10s} {r['method']:22s} {s['verdict']['verdict']:17s} maximum {s['peak_distance_mm']:6.1f} mm "
            f"away, rank accuracy {s['relevance_rank_accuracy']['value']:.2f} "
            f"({s['relevance_rank_accuracy']['chance']:.4f}), positive relevance in the lesion "
            f"{s['positive_share_in_lesion']:.1%} ({s['lesion_volume_share']:.2%})")
    return 0


def open_hint(out: str | Path) -> str:
    """What to open in the demo folder `out`, and with what (printed once the folder is complete)."""
    out = Path(out)
    return (f"\nOpen:\n  {out / 'report.html'}   in a web browser: figures, numbers, model cards, provenance\n"
            f"  {out / 'scene.mrb'}     in 3D Slicer (drag and drop): the CT with the classifier's integrated "
            "gradients as foreground, the segmentation as segments\n"
            f"  {out / 'summary.json'}  everything above as JSON\n"
            f"  medxai view {out}   the same views in any browser, without Slicer (make view; or first "
            "pip install -e '.[viewer]')")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("medxai-out")))
