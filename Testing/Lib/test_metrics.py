"""Explanation quality metrics: analytic cases, Captum agreement and the evaluate() contract.

Analytic cases use a linear classifier f_c(x) = w_c . x + b_c, for which everything is known in
closed form: input x gradient is exactly each voxel's contribution w_c x, so deletion/insertion
curves are cumulative sums, faithfulness correlation is 1, the gradient map has zero infidelity and
zero sensitivity. Agreement with Quantus is in ``test_quantus_agreement.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from MedXAILib import Cancelled, ImageVolume, Monitor, Target, explain
from MedXAILib.errors import GeometryError, InputError, ParameterError, UnknownNameError
from MedXAILib.evaluation import METRIC_FAMILIES, METRICS, cascading_randomisation, evaluate
from MedXAILib.evaluation.complexity import gini, shannon_entropy
from MedXAILib.evaluation.faithfulness import imputation_weights, infidelity_perturbations, noisy_linear_imputation
from MedXAILib.evaluation.metrics import default_metrics, derive_seed
from MedXAILib.evaluation.robustness import gaussian_perturbations
from MedXAILib.model import load_model
from MedXAILib.params import param_specs

from conftest import oblique_affine

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (20, 16, 12)


class LinearNet(torch.nn.Module):
    """f(x) = W x + b on the flattened volume: every attribution question has a closed form."""

    def __init__(self, n_voxels: int, n_classes: int = 3, seed: int = 0, tie_class_1_to_0: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(n_classes, n_voxels, generator=g, dtype=torch.float64)
        if tie_class_1_to_0:
            weight[1] = weight[0]
        self.weight = torch.nn.Parameter(weight)
        self.bias = torch.nn.Parameter(torch.randn(n_classes, generator=g, dtype=torch.float64))

    def forward(self, x):
        return (x.double().flatten(1) @ self.weight.T + self.bias).float()


@pytest.fixture
def linear():
    net = LinearNet(int(np.prod(SHAPE)))
    return load_model(net, task="classification", in_channels=1, device="cpu"), net


@pytest.fixture
def positive_volume() -> ImageVolume:
    rng = np.random.default_rng(4)  # positive intensities: x . w has a spread of signs through w only
    return ImageVolume((1.0 + rng.random(size=(1, *SHAPE))).astype(np.float32), oblique_affine())


def _contributions(net, volume, c):
    return (net.weight[c].detach().numpy().reshape(SHAPE) * volume.array[0].astype(np.float64))


def _score(net, volume, c, x=None):
    x = volume.array[0].astype(np.float64) if x is None else x
    return float(net.weight[c].detach().numpy() @ x.ravel() + net.bias[c].item())


# ------------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_every_family_with_documented_parameters():
    assert len(METRICS) == 19
    assert {m.family for m in METRICS} == set(METRIC_FAMILIES)
    for info in METRICS:
        assert info.reference and info.summary and info.title
        assert info.higher_is_better in (True, False, None)
        assert callable(info.load())
        for spec in param_specs(info.params):
            assert spec.help, f"{info.name}.{spec.name} has no help"
    assert [m.name for m in METRICS if m.needs_mask] == ["pointing_game", "energy_pointing_game",
                                                          "relevance_mass_accuracy", "relevance_rank_accuracy",
                                                          "top_k_iou", "auroc"]
    assert default_metrics(has_mask=False, has_method=False) == ["deletion", "insertion", "faithfulness_correlation",
                                                                 "road", "infidelity", "sparseness", "entropy"]
    with pytest.raises(UnknownNameError, match="did you mean 'deletion'"):
        METRICS.get("delection")


def test_metric_registry_imports_without_torch():
    """The Slicer form lists metrics before torch is installed: the package must import without it."""
    code = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "monai", "captum", "SimpleITK", "scipy", "skimage"}:
            raise ModuleNotFoundError(f"blocked: {name}", name=name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
from MedXAILib.evaluation import METRICS
from MedXAILib.params import param_specs
print(json.dumps({m.name: [s.name for s in param_specs(m.params)] for m in METRICS}))
"""
    result = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert listed["deletion"][:3] == ["n_steps", "order", "baseline"] and len(listed) == 19


# ------------------------------------------------------------------------------------------------
# Faithfulness: analytic cases on a linear model


def test_deletion_and_insertion_curves_are_cumulative_contributions(linear, positive_volume):
    adapter, net = linear
    attribution = explain(positive_volume, adapter, "input_x_gradient")
    c = int(attribution.provenance["target"]["class_index"])
    contributions = _contributions(net, positive_volume, c)
    np.testing.assert_allclose(attribution.summed, contributions, rtol=1e-5, atol=1e-6)
    n_steps, n = 16, contributions.size
    params = {m: {"n_steps": n_steps, "baseline": "zeros", "batch_size": 5} for m in ("deletion", "insertion")}
    out = evaluate(positive_volume, adapter, attribution, metrics=["deletion", "insertion"], params=params)
    ranked = np.sort(contributions.ravel())[::-1]
    counts = n * np.arange(n_steps + 1) // n_steps
    removed = np.concatenate([[0.0], np.cumsum(ranked)])[counts]
    expected_deletion = _score(net, positive_volume, c) - removed
    expected_insertion = net.bias[c].item() + removed
    np.testing.assert_allclose(out["deletion"]["curve"], expected_deletion, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out["insertion"]["curve"], expected_insertion, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out["deletion"]["fractions"], counts / n)
    trapezoid = np.sum((expected_deletion[1:] + expected_deletion[:-1]) / 2 * np.diff(counts / n))
    assert out["deletion"]["value"] == pytest.approx(trapezoid, rel=1e-4)
    assert out["deletion"]["higher_is_better"] is False and out["insertion"]["higher_is_better"] is True
    # least relevant first: the curve falls slowest, so its area is the largest of all orders
    lerf = evaluate(positive_volume, adapter, attribution, metrics=["deletion"],
                    params={"deletion": {"n_steps": n_steps, "baseline": "zeros", "order": "lerf"}})["deletion"]
    assert lerf["higher_is_better"] is True and lerf["value"] > out["deletion"]["value"]
    np.testing.assert_allclose(lerf["curve"], _score(net, positive_volume, c) - np.concatenate(
        [[0.0], np.cumsum(ranked[::-1])])[counts], rtol=1e-4, atol=1e-3)


def test_supervoxel_deletion_removes_whole_regions_in_order_of_mean_relevance(linear, positive_volume):
    from MedXAILib.methods.regions import supervoxels

    adapter, net = linear
    attribution = explain(positive_volume, adapter, "input_x_gradient")
    c = int(attribution.provenance["target"]["class_index"])
    params = {"n_steps": 5, "features": "supervoxels", "n_segments": 12, "baseline": "zeros"}
    out = evaluate(positive_volume, adapter, attribution, metrics=["deletion"],
                   params={"deletion": params})["deletion"]
    labels = supervoxels(positive_volume.array, 12, 0.3, spacing=positive_volume.spacing)
    regions = labels.max() + 1
    contributions = _contributions(net, positive_volume, c).ravel()
    sums = np.bincount(labels.ravel(), weights=contributions, minlength=regions)
    sizes = np.bincount(labels.ravel(), minlength=regions)
    order = np.argsort(-sums / sizes, kind="stable")
    counts = regions * np.arange(6) // 5
    expected = [_score(net, positive_volume, c) - sums[order[:k]].sum() for k in counts]
    np.testing.assert_allclose(out["curve"], expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out["fractions"], [sizes[order[:k]].sum() / labels.size for k in counts])
    assert out["n_features"] == regions and out["fractions"][-1] == 1.0


def test_faithfulness_correlation_is_one_for_exact_contributions(linear, positive_volume):
    adapter, _ = linear
    attribution = explain(positive_volume, adapter, "input_x_gradient")
    out = evaluate(positive_volume, adapter, attribution, metrics=["faithfulness_correlation"],
                   params={"faithfulness_correlation": {"n_runs": 20, "baseline": "zeros"}})
    assert out["faithfulness_correlation"]["value"] == pytest.approx(1.0, abs=1e-6)
    # a map unrelated to the model correlates about zero
    noise = np.random.default_rng(0).normal(size=attribution.array.shape).astype(np.float32)
    other = evaluate(positive_volume, adapter, noise, metrics=["faithfulness_correlation"],
                     params={"faithfulness_correlation": {"n_runs": 20, "baseline": "zeros"}})
    assert abs(other["faithfulness_correlation"]["value"]) < 0.6


def test_gradient_of_a_linear_model_has_zero_infidelity_and_beta_never_hurts(linear, positive_volume):
    adapter, _ = linear
    saliency = explain(positive_volume, adapter, "saliency")
    raw = evaluate(positive_volume, adapter, saliency, metrics=["infidelity"],
                   params={"infidelity": {"normalize": False, "n_samples": 6}})["infidelity"]
    assert raw["value"] <= 1e-8 * raw["mean_squared_score_drop"] and raw["mean_squared_score_drop"] > 1
    noise = np.random.default_rng(1).normal(size=saliency.array.shape).astype(np.float32)
    plain, scaled = (evaluate(positive_volume, adapter, noise, metrics=["infidelity"],
                              params={"infidelity": {"normalize": flag, "n_samples": 6}})["infidelity"]
                     for flag in (False, True))
    assert 0 < scaled["value"] <= plain["value"]


def test_infidelity_matches_captum(classifier, volume):
    from captum.metrics import infidelity as captum_infidelity

    attribution = explain(volume, classifier, "saliency")
    bound = classifier.bind(volume.affine, volume.shape)
    c = attribution.provenance["target"]["class_index"]
    x = torch.as_tensor(volume.array)[None]
    for normalize in (False, True):
        out = evaluate(volume, classifier, attribution, metrics=["infidelity"], seed=7,
                       params={"infidelity": {"n_samples": 5, "normalize": normalize, "batch_size": 2}})
        generator = torch.Generator().manual_seed(derive_seed(7, "infidelity"))
        noise = torch.cat(list(infidelity_perturbations(x, 0.1, 5, generator)))

        def perturb(inputs):
            return noise, inputs - noise

        expected = captum_infidelity(lambda z: bound(z)[:, c], perturb, x, torch.as_tensor(attribution.array)[None],
                                     n_perturb_samples=5, normalize=normalize)
        assert out["infidelity"]["value"] == pytest.approx(float(expected), rel=1e-4)


def test_road_imputation_reproduces_a_linear_ramp_and_adds_the_asked_noise():
    spacing = (0.8, 1.1, 2.0)
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    ramp = (3.0 * i * spacing[0] - 1.5 * j * spacing[1] + 0.7 * k * spacing[2] + 10.0)[None]
    removed = np.zeros(SHAPE, bool)
    removed[1:-1, 1:-1, 1:-1] = np.random.default_rng(0).random((18, 14, 10)) < 0.6
    removed[5:12, 4:10, 3:8] = True  # a solid block: imputed from imputed neighbours too
    filled = noisy_linear_imputation(torch.as_tensor(ramp), torch.as_tensor(removed), spacing, tol=1e-10).numpy()
    # 1/d^2 weights are symmetric, so a linear function is its own neighbour mean away from the border
    np.testing.assert_allclose(filled, ramp, atol=1e-6 * np.ptp(ramp))
    noisy = noisy_linear_imputation(torch.as_tensor(ramp), torch.as_tensor(removed), spacing,
                                    torch.tensor([2.0]), torch.Generator().manual_seed(0)).numpy()
    residual = (noisy - ramp)[0]
    assert residual[~removed].max() == 0 and residual[removed].std() == pytest.approx(2.0, rel=0.05)
    weights = imputation_weights(spacing)
    assert weights.sum() == pytest.approx(1.0) and weights[1, 1, 1] == 0
    assert weights[0, 1, 1] / weights[1, 1, 0] == pytest.approx((spacing[2] / spacing[0]) ** 2)


def test_road_curve_uses_the_imputed_inputs(linear, positive_volume):
    adapter, net = linear
    attribution = explain(positive_volume, adapter, "input_x_gradient")
    c = int(attribution.provenance["target"]["class_index"])
    out = evaluate(positive_volume, adapter, attribution, metrics=["road"],
                   params={"road": {"noise": 0, "tolerance": 1e-8}})["road"]
    assert out["fractions"] == pytest.approx([k / 10 for k in range(10)])
    order = np.argsort(-attribution.summed.ravel(), kind="stable")
    for step in (1, 5, 9):
        removed = np.zeros(positive_volume.array.size, bool)
        removed[order[: positive_volume.array.size * step // 10]] = True
        filled = noisy_linear_imputation(torch.as_tensor(positive_volume.array),
                                         torch.as_tensor(removed.reshape(SHAPE)), positive_volume.spacing, tol=1e-8)
        assert out["curve"][step] == pytest.approx(_score(net, positive_volume, c, filled.numpy()[0].astype(
            np.float64)), rel=1e-4)
    assert len(out["predicted"]) == 10 and out["predicted"][0] is True


# ------------------------------------------------------------------------------------------------
# Robustness


def test_sensitivity_and_lipschitz_have_closed_forms_on_a_linear_model(linear, positive_volume):
    adapter, net = linear
    metrics = ["max_sensitivity", "avg_sensitivity", "local_lipschitz", "noise_l2"]
    params = {m: {"n_samples": 3, "sigma": 0.05} for m in metrics}
    params["local_lipschitz"]["normalise"] = "none"
    gradient = explain(positive_volume, adapter, "saliency")  # constant in x: perfectly robust
    out = evaluate(positive_volume, adapter, gradient, metrics=metrics, params=params, seed=2)
    assert all(out[m]["value"] == 0.0 for m in metrics)
    contributions = explain(positive_volume, adapter, "input_x_gradient", seed=0)
    out = evaluate(positive_volume, adapter, contributions, metrics=metrics, params=params, seed=2)
    c = int(contributions.provenance["target"]["class_index"])
    w = net.weight[c].detach().numpy().reshape(SHAPE)
    x = torch.as_tensor(positive_volume.array)[None]
    noises = [e[0, 0].double().numpy() for e in gaussian_perturbations(
        x, 0.05, 3, torch.Generator().manual_seed(derive_seed(2, "robustness")))]
    changes = [np.linalg.norm(w * e) / np.linalg.norm(contributions.array) for e in noises]
    assert out["max_sensitivity"]["value"] == pytest.approx(max(changes), rel=1e-4)
    assert out["avg_sensitivity"]["value"] == pytest.approx(np.mean(changes), rel=1e-4)
    assert out["local_lipschitz"]["value"] == pytest.approx(max(np.linalg.norm(w * e) / np.linalg.norm(e)
                                                                for e in noises), rel=1e-4)
    assert 0 < out["noise_l2"]["value"] < 2


def test_max_sensitivity_matches_captum(classifier, volume):
    from captum.metrics import sensitivity_max

    attribution = explain(volume, classifier, "saliency", seed=1)
    c = attribution.provenance["target"]["class_index"]
    out = evaluate(volume, classifier, attribution, metrics=["max_sensitivity"], seed=5,
                   params={"max_sensitivity": {"n_samples": 3, "sigma": 0.1}})
    x = torch.as_tensor(volume.array)[None]
    generator = torch.Generator().manual_seed(derive_seed(5, "robustness"))
    noise = torch.cat(list(gaussian_perturbations(x, 0.1, 3, generator)))

    def explanation(inputs):
        if isinstance(inputs, tuple):  # Captum passes x itself as a tuple and expects one back
            return (explanation(inputs[0]),)
        return torch.stack([torch.as_tensor(explain(volume.with_array(z.numpy()), classifier, "saliency",
                                                    Target(class_index=c), seed=1).array) for z in inputs])

    expected = sensitivity_max(explanation, x, perturb_func=lambda inputs: inputs + noise, n_perturb_samples=3)
    assert out["max_sensitivity"]["value"] == pytest.approx(float(expected), rel=1e-4)
    assert out["max_sensitivity"]["value"] > 0.01


# ------------------------------------------------------------------------------------------------
# Localisation: analytic cases


def _mask():
    mask = np.zeros(SHAPE, bool)
    mask[5:8, 5:8, 2:5] = True
    return mask


def _local(volume, model, array, metric, mask=None, **params):
    return evaluate(volume, model, array.astype(np.float32), metrics=[metric],
                    mask=_mask() if mask is None else mask, params={metric: params} if params else None)[metric]


def test_pointing_game_tolerance_is_a_distance_in_mm(classifier, volume):
    relevance = -np.ones(SHAPE)
    relevance[6, 6, 7] = 5.0  # three voxels of 2.0 mm beyond the mask's last slice k = 4
    for tolerance, hit in ((0.0, 0.0), (5.9, 0.0), (6.1, 1.0)):
        out = _local(volume, classifier, relevance, "pointing_game", tolerance_mm=tolerance)
        assert out["value"] == hit and out["distance_mm"] == pytest.approx(6.0)
    relevance[6, 6, 3] = 5.0  # a tied maximum inside the mask hits
    assert _local(volume, classifier, relevance, "pointing_game", tolerance_mm=0.0)["value"] == 1.0
    # the strongest negative relevance points only with absolute=True
    relevance[:] = 0.0
    relevance[6, 6, 3], relevance[0, 0, 0] = -9.0, 1.0
    assert _local(volume, classifier, relevance, "pointing_game", tolerance_mm=0.0)["value"] == 0.0
    assert _local(volume, classifier, relevance, "pointing_game", tolerance_mm=0.0, absolute=True)["value"] == 1.0


def test_mass_energy_rank_iou_and_auroc_on_a_constructed_map(classifier, volume):
    mask = _mask()  # 27 voxels
    relevance = -0.5 * np.ones(SHAPE)
    relevance[mask] = 2.0
    relevance[0, 0, :10] = 1.0  # ten positive voxels outside
    assert _local(volume, classifier, relevance, "energy_pointing_game")["value"] == pytest.approx(54 / 64)
    assert _local(volume, classifier, relevance, "relevance_mass_accuracy")["value"] == pytest.approx(54 / 64)
    signed_total = 54 + 10 - 0.5 * (relevance.size - 37)
    assert _local(volume, classifier, relevance, "relevance_mass_accuracy", positive_only=False)["value"] == \
        pytest.approx(54 / signed_total)
    ell = mask.copy()
    ell[5:8, 5:8, 3:5] = False
    ell[5, 5, 3:5] = True  # an L-shape: its bounding box is the whole 3x3x3 block
    assert _local(volume, classifier, relevance, "energy_pointing_game", mask=ell)["value"] == pytest.approx(22 / 64)
    assert _local(volume, classifier, relevance, "energy_pointing_game", mask=ell,
                  bounding_box=True)["value"] == pytest.approx(54 / 64)
    relevance[mask] = 0.0
    relevance[5, 5:8, 2:5] = 3.0  # 9 of the 27 mask voxels on top, then the 10 outside, then the rest
    # top 27: those 9 mask voxels, the 10 outside positives, then 8 of the other 18 mask voxels (0 > -0.5)
    rank = _local(volume, classifier, relevance, "relevance_rank_accuracy")
    assert rank["value"] == pytest.approx(17 / 27) and rank["k"] == 27
    iou = _local(volume, classifier, relevance, "top_k_iou")
    assert iou["precision"] == pytest.approx(17 / 27) and iou["value"] == pytest.approx(17 / 37)
    assert _local(volume, classifier, relevance, "top_k_iou", k_fraction=9 / relevance.size)["value"] == \
        pytest.approx(9 / 27)
    separated = np.where(mask, 1.0, 0.1)
    assert _local(volume, classifier, separated, "auroc")["value"] == 1.0
    assert _local(volume, classifier, -separated, "auroc", absolute=False)["value"] == 0.0
    assert _local(volume, classifier, np.ones(SHAPE), "auroc")["value"] == 0.5


def test_complexity_extremes():
    one_hot = np.zeros(100)
    one_hot[3] = -4.0
    assert gini(one_hot) == pytest.approx(99 / 100) and shannon_entropy(one_hot) == 0.0
    assert gini(np.full(100, 2.0)) == pytest.approx(0.0, abs=1e-12)
    assert shannon_entropy(np.full(100, 2.0)) == pytest.approx(np.log(100))
    assert np.isnan(gini(np.zeros(5))) and np.isnan(shannon_entropy(np.zeros(5)))


# ------------------------------------------------------------------------------------------------
# Randomisation


def test_model_randomisation_reuses_the_cascading_test(classifier, volume):
    attribution = explain(volume, classifier, "saliency", seed=4)
    out = evaluate(volume, classifier, attribution, metrics=["model_randomisation"],
                   params={"model_randomisation": {"stages": 2}})["model_randomisation"]
    target = Target(class_index=attribution.provenance["target"]["class_index"])
    _, steps = cascading_randomisation(volume, classifier, "saliency", target, stages=2, seed=4)
    assert out["value"] == steps[-1].spearman_abs and len(out["stages"]) == 2
    assert out["ssim_abs"] == steps[-1].ssim_abs and out["value"] < 0.6


def test_random_logit_is_one_for_a_class_with_the_same_weights(volume):
    net = LinearNet(int(np.prod(SHAPE)), tie_class_1_to_0=True)
    adapter = load_model(net, task="classification", in_channels=1, device="cpu")
    attribution = explain(volume, adapter, "saliency", Target(class_index=0))
    same = evaluate(volume, adapter, attribution, Target(class_index=0), ["random_logit"],
                    params={"random_logit": {"other_class": 1}})["random_logit"]
    assert same["spearman"] == pytest.approx(1.0) and same["ssim_abs"] == pytest.approx(1.0)
    other = evaluate(volume, adapter, attribution, Target(class_index=0), ["random_logit"],
                     params={"random_logit": {"other_class": 2}})["random_logit"]
    assert abs(other["spearman"]) < 0.1 and other["value"] < 0.5
    drawn = [evaluate(volume, adapter, attribution, Target(class_index=0), ["random_logit"], seed=s)
             ["random_logit"]["other_class"] for s in range(6)]
    assert set(drawn) == {1, 2}
    with pytest.raises(ParameterError, match="other than the target"):
        evaluate(volume, adapter, attribution, Target(class_index=0), ["random_logit"],
                 params={"random_logit": {"other_class": 0}})


# ------------------------------------------------------------------------------------------------
# evaluate(): contract


def test_segmenter_and_two_channel_inputs(segmenter, volume, two_channel_segmenter, two_channel_volume):
    target = Target(class_index=1, region="predicted")
    attribution = explain(volume, segmenter, "saliency", target)
    metrics = ["deletion", "road", "infidelity", "max_sensitivity", "random_logit", "entropy"]
    params = {"deletion": {"n_steps": 4}, "road": {"n_steps": 2}, "infidelity": {"n_samples": 3},
              "max_sensitivity": {"n_samples": 2}}
    out = evaluate(volume, segmenter, attribution, target, metrics, params=params)
    assert all(np.isfinite(out[m]["value"]) for m in metrics) and "predicted" not in out["road"]
    band = Target(class_index=1, region="boundary", score="margin")  # fixed as a mask, margin kept
    out = evaluate(volume, segmenter, explain(volume, segmenter, "saliency", band), band,
                   ["deletion", "max_sensitivity"],
                   params={"deletion": {"n_steps": 2}, "max_sensitivity": {"n_samples": 1}})
    assert np.isfinite(out["deletion"]["value"]) and np.isfinite(out["max_sensitivity"]["value"])
    both = explain(two_channel_volume, two_channel_segmenter, "input_x_gradient", target)
    for array in (both.array, both.array.sum(0, keepdims=True)):  # per channel, or channel-summed as saved
        out = evaluate(two_channel_volume, two_channel_segmenter, array, target, ["deletion", "infidelity"],
                       params={"deletion": {"n_steps": 3}, "infidelity": {"n_samples": 2}})
        assert np.isfinite(out["infidelity"]["value"]) and np.isfinite(out["deletion"]["value"])


def test_deletion_runs_batched_forward_passes(linear, positive_volume):
    adapter, net = linear
    calls = []
    net.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    attribution = explain(positive_volume, adapter, "input_x_gradient")
    calls.clear()
    evaluate(positive_volume, adapter, attribution, metrics=["deletion"],
             params={"deletion": {"n_steps": 20, "batch_size": 8}})
    assert calls == [1, 8, 8, 4]  # the input once, then 20 perturbed inputs in batches of 8


def test_results_repeat_with_a_seed_and_inputs_stay_untouched(classifier, volume):
    attribution = explain(volume, classifier, "saliency")
    before = (volume.array.copy(), attribution.array.copy())
    metrics = ["faithfulness_correlation", "infidelity", "avg_sensitivity"]
    params = {"faithfulness_correlation": {"n_runs": 8}, "infidelity": {"n_samples": 4},
              "avg_sensitivity": {"n_samples": 2}}
    first, again, other = (evaluate(volume, classifier, attribution, metrics=metrics, params=params, seed=s)
                           for s in (1, 1, 2))
    assert all(first[m]["value"] == again[m]["value"] for m in metrics)
    assert all(first[m]["value"] != other[m]["value"] for m in metrics)
    np.testing.assert_array_equal(volume.array, before[0])
    np.testing.assert_array_equal(attribution.array, before[1])
    # a metric's draws do not depend on which other metrics run
    alone = evaluate(volume, classifier, attribution, metrics=["infidelity"],
                     params={"infidelity": params["infidelity"]}, seed=1)
    assert alone["infidelity"]["value"] == first["infidelity"]["value"]


def test_bad_requests_raise_typed_errors_with_the_fix(classifier, volume):
    attribution = explain(volume, classifier, "saliency")
    cases = [
        (dict(metrics=["auroc"]), InputError, "pass mask="),
        (dict(metrics=["auroc"], mask=np.zeros(SHAPE)), InputError, "mask is empty"),
        (dict(metrics=["auroc"], mask=np.ones(SHAPE)), InputError, "whole image"),
        (dict(metrics=["auroc"], mask=np.ones((4, 4, 4))), GeometryError, "resample it"),
        (dict(metrics=["entropie"]), UnknownNameError, "did you mean 'entropy'"),
        (dict(metrics=["deletion"], params={"deletion": {"n_step": 3}}), ParameterError, "did you mean 'n_steps'"),
        (dict(metrics=["deletion"], params={"deletion": {"n_steps": 0}}), ParameterError, "must lie in"),
        (dict(metrics=["deletion"], params={"insertion": {"n_steps": 3}}), ParameterError, "not evaluated"),
        (dict(metrics=["max_sensitivity"], method="salency"), UnknownNameError, "did you mean 'saliency'"),
    ]
    for kwargs, error, fragment in cases:
        with pytest.raises(error, match=fragment):
            evaluate(volume, classifier, attribution, **kwargs)
    with pytest.raises(ParameterError, match="re-run the explanation method"):
        evaluate(volume, classifier, attribution.array, metrics=["max_sensitivity"])  # no provenance
    with pytest.raises(GeometryError, match="on this image"):
        evaluate(volume, classifier, attribution.array[:, :10], metrics=["entropy"])
    shifted = volume.with_array(volume.array)
    shifted.affine[0, 3] += 5.0
    with pytest.raises(GeometryError, match="affine"):
        evaluate(shifted, classifier, attribution, metrics=["entropy"])
    nan_map = attribution.array.copy()
    nan_map[0, 1, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        evaluate(volume, classifier, nan_map, metrics=["entropy"])


def test_progress_rises_to_one_and_cancel_stops_within_a_second(classifier, volume):
    attribution = explain(volume, classifier, "saliency")
    seen = []
    monitor = Monitor(lambda fraction, message: seen.append((fraction, message)))
    evaluate(volume, classifier, attribution, metrics=["deletion", "entropy", "max_sensitivity"],
             params={"max_sensitivity": {"n_samples": 2}}, monitor=monitor)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 5
    assert any("Deletion" in m for _, m in seen) and any("noisy input" in m for _, m in seen)

    monitor = Monitor()
    timer = threading.Timer(0.3, monitor.cancel)
    started = time.monotonic()
    timer.start()
    with pytest.raises(Cancelled):  # 5000 deletion steps one at a time would take far longer
        evaluate(volume, classifier, attribution, metrics=["deletion"],
                 params={"deletion": {"n_steps": 5000, "batch_size": 1}}, monitor=monitor)
    assert time.monotonic() - started < 1.3
