"""Agreement of MedXAILib's explanation metrics with Quantus (a test-only dependency).

Quantus is shaped for batches of 2D images, but most of its metrics flatten whatever they get, so
they are fed our 3D arrays (1, C, I, J, K) with ``channel_first=True``; ROAD's imputation is 2D
only, so it runs on a (1, H, W) slice version of the same computation (a volume one voxel thick).
Settings are matched (no normalisation or abs unless ours does the same), and stochastic metrics
see the very same random draws: our draws are reproduced from the documented seed derivation and
handed to Quantus through its ``perturb_func`` hook or in place of ``np.random.choice``.

Not compared, and why: Quantus' MPRT re-initialises layers with its own seeds and leaves
normalisation layers at weight 1 / bias 0, while ``evaluation.randomisation`` (which the metric
reuses) also randomises them, so the randomised networks differ; Quantus' Infidelity removes
square patches (ours follows Yeh et al.'s Gaussian perturbation and is checked against Captum in
``test_metrics.py``); Quantus' RandomLogit SSIM runs on the flattened map (ours is a 3D SSIM), so
only its Spearman variant is compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import quantus  # the test extra lists it: a missing Quantus fails here, it is never skipped

from MedXAILib import ImageVolume, Target, explain
from MedXAILib.evaluation import evaluate
from MedXAILib.evaluation.faithfulness import noisy_linear_imputation, random_subsets
from MedXAILib.evaluation.metrics import derive_seed
from MedXAILib.evaluation.robustness import gaussian_perturbations
from MedXAILib.model import load_model

SEED = 3


class Wrapped(torch.nn.Module):
    """The bound model as Quantus sees it: inputs shaped like our batches (or 2D slices of them)."""

    def __init__(self, adapter, image, slice_2d=False):
        super().__init__()
        self.bound = adapter.bind(image.affine, image.shape)
        self.slice_2d = slice_2d

    def forward(self, x):
        return self.bound(x.unsqueeze(-1) if self.slice_2d else x)


@pytest.fixture
def case(classifier, volume):
    attribution = explain(volume, classifier, "saliency", seed=SEED)
    with torch.no_grad():
        label = int(classifier.bind(volume.affine, volume.shape)(torch.as_tensor(volume.array)[None]).argmax())
    mask = np.zeros(volume.shape, bool)
    mask[4:13, 3:11, 2:9] = True
    model = Wrapped(classifier, volume).eval()
    x = volume.array[None]  # (1, 1, I, J, K)
    a = attribution.array[None]
    return dict(image=volume, adapter=classifier, attribution=attribution, label=label, mask=mask,
                model=model, x=x, y=np.array([label]), a=a, s=mask[None, None].astype(np.float32))


def ours(case, metric, **params):
    return evaluate(case["image"], case["adapter"], case["attribution"], Target(), [metric], case["mask"],
                    params={metric: params} if params else None, seed=SEED)[metric]


def q(metric_cls, case, a=None, **kwargs):
    call = kwargs.pop("call", {})
    metric = metric_cls(disable_warnings=True, **kwargs)
    return metric(model=call.pop("model", None), x_batch=case["x"], y_batch=case["y"],
                  a_batch=case["a"] if a is None else a, s_batch=case["s"], channel_first=True, **call)


# ------------------------------------------------------------------------------------------------
# Complexity


def test_sparseness_matches_quantus(case):
    expected = q(quantus.Sparseness, case)[0]  # abs and max-normalisation, then Gini (+1e-7 offset)
    assert ours(case, "sparseness")["value"] == pytest.approx(expected, abs=1e-5)


def test_entropy_matches_quantus_complexity(case):
    expected = q(quantus.Complexity, case)[0]
    assert ours(case, "entropy")["value"] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Localisation


def test_relevance_mass_accuracy_matches_quantus_signed_and_positive(case):
    # Quantus sums the signed map; Arras et al. (and our default) count positive relevance only
    signed = q(quantus.RelevanceMassAccuracy, case, normalise=False)[0]
    # Quantus sums in float32, hence rel=1e-6
    assert ours(case, "relevance_mass_accuracy", positive_only=False)["value"] == pytest.approx(signed, rel=1e-6)
    positive = q(quantus.RelevanceMassAccuracy, case, a=np.clip(case["a"], 0, None), normalise=False)[0]
    assert ours(case, "relevance_mass_accuracy")["value"] == pytest.approx(positive, rel=1e-6)
    assert positive != pytest.approx(signed)


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")  # Quantus sizes data as x[2:]
def test_energy_pointing_game_matches_quantus_attribution_localisation(case):
    # Quantus' AttributionLocalisation with positive attributions is the energy-based pointing game
    expected = q(quantus.AttributionLocalisation, case, positive_attributions=True, abs=False, normalise=False)[0]
    assert ours(case, "energy_pointing_game")["value"] == pytest.approx(expected, rel=1e-6)


def test_relevance_rank_accuracy_matches_quantus(case):
    expected = q(quantus.RelevanceRankAccuracy, case)[0]
    assert ours(case, "relevance_rank_accuracy")["value"] == pytest.approx(expected, abs=1e-12)


def test_pointing_game_matches_quantus_for_a_hit_and_a_miss(case):
    peak = np.unravel_index(np.argmax(case["attribution"].summed), case["image"].shape)
    for inside in (True, False):
        mask = np.zeros(case["image"].shape, bool)
        mask[tuple(slice(max(p - 2, 0), p + 3) for p in peak)] = True
        if not inside:
            mask = ~mask
        c = dict(case, mask=mask, s=mask[None, None].astype(np.float32))
        expected = q(quantus.PointingGame, c)[0]
        assert expected == float(inside)
        assert ours(c, "pointing_game", tolerance_mm=0.0)["value"] == expected


def test_auroc_matches_quantus_auc(case):
    for absolute in (True, False):
        expected = q(quantus.AUC, case, abs=absolute)[0]  # sklearn roc_curve + trapezoid
        assert ours(case, "auroc", absolute=absolute)["value"] == pytest.approx(expected, abs=1e-9)


def test_top_k_precision_matches_quantus_top_k_intersection(case):
    n = case["mask"].size
    result = ours(case, "top_k_iou", k_fraction=0.05)
    assert result["k"] == round(0.05 * n)
    expected = q(quantus.TopKIntersection, case, k=result["k"])[0]
    assert result["precision"] == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# Faithfulness


def test_deletion_curve_matches_quantus_pixel_flipping(case):
    n_steps = 20
    n = case["mask"].size
    assert n % n_steps == 0
    result = ours(case, "deletion", n_steps=n_steps, baseline="min")  # Quantus' "black" is the minimum
    curve = q(quantus.PixelFlipping, case, features_in_step=n // n_steps, perturb_baseline="black",
              call=dict(model=case["model"], softmax=False))[0]
    np.testing.assert_allclose(result["curve"][1:], curve, rtol=1e-5, atol=1e-5)
    # Quantus' area: trapezoid with dx = 1 over the perturbed steps only
    full = np.asarray(result["curve"])
    quantus_auc = np.trapezoid(curve)
    assert result["value"] * n_steps == pytest.approx(quantus_auc + (full[0] + full[1]) / 2, rel=1e-5)


def test_faithfulness_correlation_matches_quantus_with_the_same_subsets(case, monkeypatch):
    n_runs, fraction = 12, 0.05
    n = case["mask"].size
    size = round(fraction * n)
    subsets = random_subsets(torch.Generator().manual_seed(derive_seed(SEED, "faithfulness_correlation")),
                             n, size, n_runs)
    draws = iter(subsets)
    monkeypatch.setattr(np.random, "choice", lambda *args, **kwargs: next(draws))
    expected = q(quantus.FaithfulnessCorrelation, case, nr_runs=n_runs, subset_size=size, perturb_baseline="black",
                 call=dict(model=case["model"], softmax=False))[0]
    monkeypatch.undo()
    result = ours(case, "faithfulness_correlation", n_runs=n_runs, subset_fraction=fraction, baseline="min")
    assert result["value"] == pytest.approx(expected, abs=1e-4)


class SliceNet(torch.nn.Module):
    """A small 3D CNN classifier that also runs on volumes one voxel thick (no pooling over K)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


def test_road_imputation_and_curve_match_quantus_on_a_slice():
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    torch.manual_seed(1)
    adapter = load_model(SliceNet(), task="classification", in_channels=1, device="cpu")
    rng = np.random.default_rng(1)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(16, 16)), 0), 1)  # structured, so imputation is visible
    image = ImageVolume(smooth[None, :, :, None].astype(np.float32), np.diag([0.9, 0.9, 3.0, 1.0]))
    attribution = explain(image, adapter, "saliency")
    x2d, a2d = image.array[..., 0], attribution.array[..., 0]  # (1, H, W)
    order = np.argsort(-a2d.ravel())
    # the imputation itself: our 3D conjugate-gradient solve vs Quantus' sparse direct solve
    removed = order[:100]
    theirs = quantus_imputation(x2d, removed, noise=0.0)
    mask = np.zeros(16 * 16, bool)
    mask[removed] = True
    mine = noisy_linear_imputation(torch.as_tensor(image.array), torch.as_tensor(mask.reshape(16, 16, 1)),
                                   image.spacing, tol=1e-10)
    np.testing.assert_allclose(mine.numpy()[..., 0], theirs, rtol=1e-5, atol=1e-5 * np.ptp(smooth))
    assert np.abs(theirs - x2d).max() > 0.1 * np.ptp(smooth)  # the removed voxels really changed
    # the whole curve: Quantus' ROAD (0/1 per percentage) and the scores of Quantus-imputed inputs
    result = evaluate(image, adapter, attribution, metrics=["road"],
                      params={"road": {"noise": 0, "tolerance": 1e-8}})["road"]
    percentages = [10 * k for k in range(1, 10)]
    model = Wrapped(adapter, image, slice_2d=True).eval()
    label = int(model(torch.as_tensor(x2d[None])).detach().argmax())
    road = quantus.ROAD(percentages=percentages, noise=0.0, disable_warnings=True)
    flags = road(model=model, x_batch=x2d[None], y_batch=np.array([label]), a_batch=a2d[None],
                 channel_first=True, softmax=False)
    assert [bool(flags[p]) for p in percentages] == result["predicted"][1:]
    assert len(set(result["predicted"])) == 2  # the prediction flips along the way: a real comparison
    scores = []
    for p in percentages:
        filled = quantus_imputation(x2d, order[: int(x2d.size * p / 100)], noise=0.0)
        with torch.no_grad():
            scores.append(float(model(torch.as_tensor(filled[None], dtype=torch.float32))[0, label]))
    np.testing.assert_allclose(result["curve"][1:], scores, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Robustness and randomisation


def _explain_func(case, method):
    def explain_func(model, inputs, targets, **kwargs):
        maps = [explain(case["image"].with_array(np.asarray(x, np.float32)), case["adapter"], method,
                        Target(class_index=int(t)), seed=SEED).array for x, t in zip(inputs, targets)]
        return np.stack(maps)

    return explain_func


def _replay(noises):
    draws = iter(noises)

    def perturb_func(arr, indices, **kwargs):
        return arr + next(draws).reshape(arr.shape)

    return perturb_func


@pytest.mark.parametrize("metric,quantus_name", [("max_sensitivity", "MaxSensitivity"),
                                                 ("avg_sensitivity", "AvgSensitivity"),
                                                 ("local_lipschitz", "LocalLipschitzEstimate")])
def test_robustness_matches_quantus_with_the_same_noise(case, metric, quantus_name):
    n, sigma = 4, 0.1
    generator = torch.Generator().manual_seed(derive_seed(SEED, "robustness"))
    noises = [e.numpy() for e in gaussian_perturbations(torch.as_tensor(case["x"]), sigma, n, generator)]
    # Quantus divides each map by its own max |value| for the Lipschitz estimate only (its defaults)
    normalise = metric == "local_lipschitz"
    attribution = explain(case["image"], case["adapter"], "input_x_gradient", seed=SEED)
    c = dict(case, attribution=attribution, a=attribution.array[None])
    expected = q(getattr(quantus, quantus_name), c, nr_samples=n, perturb_func=_replay(noises),
                 normalise=normalise, abs=False,
                 call=dict(model=case["model"], explain_func=_explain_func(case, "input_x_gradient")))[0]
    result = ours(c, metric, sigma=sigma, n_samples=n)
    assert result["value"] == pytest.approx(expected, rel=1e-4)
    assert result["value"] > 0


def test_random_logit_spearman_matches_quantus(case):
    from quantus.functions.similarity_func import correlation_spearman

    seed = 42
    np.random.seed(seed)  # Quantus' own draw of the other class, replayed
    index = np.random.randint(0, 2, 1)[0]
    other = [c for c in range(3) if c != case["label"]][index]
    expected = q(quantus.RandomLogit, case, num_classes=3, seed=seed, similarity_func=correlation_spearman,
                 normalise=False, abs=False,
                 call=dict(model=case["model"], explain_func=_explain_func(case, "saliency")))[0]
    result = ours(case, "random_logit", other_class=other)
    assert result["other_class"] == other
    assert result["spearman"] == pytest.approx(expected, abs=1e-9)
