"""KernelSHAP over regions.

References: Captum's KernelShap with the same seed (MedXAI draws the same coalitions from its seeded
generator that Captum draws from the global one; Captum's scikit-learn surrogate is replaced by an
exact weighted least squares because scikit-learn is not installed here), the exact Shapley values
of a model linear in the region indicators, and exact Shapley values by enumerating all 2^6
coalitions of a nonlinear model.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from captum.attr import KernelShap
from torch.distributions.categorical import Categorical

from MedXAILib import ImageVolume, Target, explain
from MedXAILib.methods.game_theoretic import shapley_kernel_coalitions
from MedXAILib.methods.regions import grid_regions

from conftest import two_structure_label_map
from test_perturbation import (  # noqa: F401  (`case` is a fixture, used by name)
    RegionModel,
    WeightedLeastSquares,
    case,
    relative_difference,
    reference_function,
)

SEED = 7


def test_coalitions_are_captums_draws_from_the_same_seed():
    m = 9
    sizes = torch.arange(m, dtype=torch.float)
    probs = torch.tensor(m - 1) / (sizes * (m - sizes))
    probs[0] = 0.0
    explainer = KernelShap(lambda x: x.sum(1))
    draws = explainer.kernel_shap_perturb_generator(
        torch.zeros(1, m), num_select_distribution=Categorical(probs), num_interp_features=m
    )
    torch.manual_seed(SEED)
    theirs = torch.cat([next(draws) for _ in range(60)])
    ours = shapley_kernel_coalitions(60, m, torch.Generator().manual_seed(SEED))
    torch.testing.assert_close(ours, theirs)
    assert ours[0].sum() == m and ours[1].sum() == 0
    assert set(ours[2:].sum(1).tolist()) <= set(range(1, m))


def test_coalition_sizes_follow_the_shapley_kernel():
    m = 6
    sizes = shapley_kernel_coalitions(20000, m, torch.Generator().manual_seed(0))[2:].sum(1).numpy()
    k = np.arange(1, m)
    expected = (m - 1) / (k * (m - k))
    expected /= expected.sum()
    observed = np.bincount(sizes, minlength=m)[1:] / len(sizes)
    np.testing.assert_allclose(observed, expected, atol=0.015)


@pytest.mark.parametrize("kind", ["grid", "supervoxels"])
def test_kernel_shap_matches_captum_with_the_same_seed(case, kind):
    adapter, volume, target, forward, x = case
    if kind == "grid":
        params, labels = {"regions": "grid", "grid_cell": "7,6,5"}, grid_regions(volume.shape, (7, 6, 5))
    else:
        from MedXAILib.methods.regions import supervoxels

        params = {"regions": "supervoxels", "n_segments": 20}
        labels = supervoxels(volume.array, 20, 0.3, spacing=volume.spacing)
    params.update(n_samples=90, baseline="mean", batch_size=8)
    ours = explain(volume, adapter, "kernel_shap", target, params, seed=SEED)
    explainer = KernelShap(forward)
    explainer.interpretable_model = WeightedLeastSquares()
    torch.manual_seed(SEED)
    theirs = explainer.attribute(
        x,
        baselines=x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x),
        feature_mask=torch.as_tensor(labels).view(1, 1, *volume.shape),
        n_samples=90,
        perturbations_per_eval=8,
    )[0].numpy()
    assert relative_difference(ours.array * volume.n_channels, theirs) < 1e-4


def test_kernel_shap_per_channel_matches_captum(two_channel_segmenter, two_channel_volume):
    target = Target(class_index=1, region="predicted")
    forward, x = reference_function(two_channel_segmenter, two_channel_volume, target)
    labels = grid_regions(two_channel_volume.shape, 8)
    n = labels.max() + 1
    params = {"regions": "grid", "grid_cell": "8", "per_channel": True, "n_samples": 60, "baseline": "zeros"}
    ours = explain(two_channel_volume, two_channel_segmenter, "kernel_shap", target, params, seed=SEED).array
    explainer = KernelShap(forward)
    explainer.interpretable_model = WeightedLeastSquares()
    torch.manual_seed(SEED)
    theirs = explainer.attribute(x, feature_mask=torch.as_tensor(np.stack([labels, labels + n])).unsqueeze(0),
                                 n_samples=60, perturbations_per_eval=8)[0].numpy()
    assert relative_difference(ours, theirs) < 1e-4
    assert not np.allclose(ours[0], ours[1])


def test_kernel_shap_is_exact_for_a_model_linear_in_the_regions(volume):
    """score = sum_r w_r * mean(x over r): the Shapley value of r is w_r * (mean x_r - mean b_r)."""
    labels = grid_regions(volume.shape, (10, 8, 6))
    weights = np.linspace(-2, 3, labels.max() + 1)
    result = explain(volume, RegionModel(labels, weights, nonlinear=False), "kernel_shap",
                     Target(class_index=0),
                     {"regions": "grid", "grid_cell": "10,8,6", "baseline": "min", "n_samples": 30})
    x = volume.array[0]
    exact = np.array([w * (x[labels == r].mean() - x.min()) for r, w in enumerate(weights)])
    np.testing.assert_allclose(result.array[0], exact[labels], rtol=1e-4, atol=1e-5)
    diag = result.provenance["diagnostics"]
    assert abs(diag["completeness_error"]) < 1e-4 and diag["surrogate_r2"] == pytest.approx(1.0, abs=1e-6)


class Interactions(torch.nn.Module):
    """A nonlinear score of six region means, with interactions between regions."""

    def __init__(self, labels):
        super().__init__()
        self.regions = RegionModel(labels, np.ones(labels.max() + 1))

    def forward(self, x):
        m = self.regions.region_means(x) * 4
        score = m[:, 0] * m[:, 1] + torch.tanh(m[:, 2]) * m[:, 3] + torch.relu(m[:, 4] + m[:, 5]) ** 2
        return torch.stack([score, -score], dim=1)


def exact_shapley(model, x, baseline, labels):
    n = int(labels.max()) + 1

    def value(coalition):
        keep = torch.as_tensor(np.isin(labels, list(coalition)))
        with torch.no_grad():
            return float(model(torch.where(keep, x, baseline))[0, 0])

    values = {s: value(s) for k in range(n + 1) for s in itertools.combinations(range(n), k)}
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for s in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                phi[i] += weight * (values[tuple(sorted(s + (i,)))] - values[s])
    return phi, values[tuple(range(n))] - values[()]


def test_kernel_shap_converges_to_exact_shapley_values_of_six_regions():
    rng = np.random.default_rng(3)
    volume = ImageVolume(rng.uniform(0.0, 1.0, size=(1, 20, 16, 12)).astype(np.float32), np.eye(4))
    labels = grid_regions(volume.shape, (10, 16, 4))
    assert labels.max() + 1 == 6
    model = Interactions(labels)
    x = torch.as_tensor(volume.array).unsqueeze(0)
    phi, gap = exact_shapley(model, x, torch.zeros_like(x), labels)
    assert phi.sum() == pytest.approx(gap, rel=1e-6)
    result = explain(volume, model, "kernel_shap", Target(class_index=0),
                     {"regions": "grid", "grid_cell": "10,16,4", "baseline": "zeros", "n_samples": 4000,
                      "batch_size": 256})
    estimate = np.array([result.array[0][labels == r][0] for r in range(6)])
    assert np.abs(estimate - phi).max() < 0.05 * np.abs(phi).max(), (estimate, phi)
    assert estimate.sum() == pytest.approx(gap, rel=1e-3)


def test_kernel_shap_does_not_depend_on_the_batch_size(segmenter, volume):
    target = Target(class_index=1, region="predicted")
    params = {"regions": "grid", "grid_cell": "10,8,6", "n_samples": 24}
    a = explain(volume, segmenter, "kernel_shap", target, dict(params, batch_size=1), seed=1).array
    b = explain(volume, segmenter, "kernel_shap", target, dict(params, batch_size=13), seed=1).array
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_kernel_shap_over_label_map_structures_reports_each_structure(tmp_path, volume):
    from MedXAILib.methods.regions import label_regions

    path = tmp_path / "structures.nii.gz"
    label_array = two_structure_label_map(volume, path, (4, 9))
    weights = [1.0, -2.0, 0.5]
    model = RegionModel(label_regions(label_array), weights, nonlinear=False)
    diag = explain(volume, model, "kernel_shap", Target(class_index=0),
                   {"regions": "labels", "label_map": str(path), "baseline": "zeros", "n_samples": 20}
                   ).provenance["diagnostics"]
    x = volume.array[0]
    for value, weight in zip((0, 4, 9), weights):
        expected = weight * x[label_array == value].mean()
        assert diag["region_values"][str(value)] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_kernel_shap_warns_when_the_fit_is_under_determined(classifier, volume):
    diag = explain(volume, classifier, "kernel_shap", Target(class_index=1),
                   {"regions": "grid", "grid_cell": "4", "n_samples": 12}).provenance["diagnostics"]
    assert any("under-determine" in w for w in diag["warnings"])


def test_kernel_shap_with_a_single_region_gives_the_whole_score_difference(classifier, volume):
    result = explain(volume, classifier, "kernel_shap", Target(class_index=1),
                     {"regions": "grid", "grid_cell": "64", "baseline": "zeros"})
    diag = result.provenance["diagnostics"]
    assert diag["n_players"] == 1 and diag["n_samples"] == 2
    assert any("clipped" in w for w in diag["warnings"])
    gap = diag["score_input"] - diag["score_baseline"]
    np.testing.assert_allclose(result.array, gap, rtol=1e-4)
