"""Perturbation methods (occlusion, RISE, feature ablation, LIME) and region maps.

References: Captum's Occlusion, FeatureAblation and Lime (an independent implementation) on the
same function (MedXAI's bound model followed by its target reducer), and analytic cases (a model
that only reads a box, additive and region-linear models). Captum's Lime fits its surrogate with
scikit-learn, which is not installed here; the comparison passes Captum an exact weighted least
squares written below, so Captum still does the sampling, the similarity kernel and the forwards.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum._utils.models.model import Model
from captum.attr import FeatureAblation, Lime, Occlusion

from MedXAILib import ImageVolume, ParameterError, Target, explain
from MedXAILib.methods.regions import grid_regions, label_regions, supervoxels

from conftest import two_structure_label_map
from references import masked_target, reference_function, relative_difference

SEED = 5








CASES = {
    "classifier": ("classifier", "volume", lambda v: Target(class_index=2)),
    "segmenter-masked": ("segmenter", "volume", masked_target),
    "two-channel": ("two_channel_segmenter", "two_channel_volume",
                    lambda v: Target(class_index=1, region="predicted")),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    model_fixture, volume_fixture, make_target = CASES[request.param]
    adapter = request.getfixturevalue(model_fixture)
    volume = request.getfixturevalue(volume_fixture)
    target = make_target(volume)
    forward, x = reference_function(adapter, volume, target)
    return adapter, volume, target, forward, x


class WeightedLeastSquares(Model):
    """Exact weighted least squares with an intercept (float64), a Captum surrogate model."""

    def fit(self, train_data, **kwargs):
        X, y, w = (t.double().numpy() for t in next(iter(train_data)))
        root = np.sqrt(w)
        design = np.hstack([X, np.ones((len(X), 1))]) * root[:, None]
        solution = np.linalg.lstsq(design, y * root, rcond=None)[0]
        self.coefficients = torch.as_tensor(solution[:-1])

    def representation(self):
        return self.coefficients

    def __call__(self, x):
        raise NotImplementedError


class BoxSum(torch.nn.Module):
    """A classifier whose class-0 score is the sum of the input inside a box (other voxels ignored)."""

    def __init__(self, box):
        super().__init__()
        self.box = box

    def forward(self, x):
        (i0, i1), (j0, j1), (k0, k1) = self.box
        inside = x[:, :, i0:i1, j0:j1, k0:k1].sum(dim=(1, 2, 3, 4))
        return torch.stack([inside, torch.zeros_like(inside)], dim=1)


class RegionModel(torch.nn.Module):
    """score = sum_r g_r(mean of x over region r) for a fixed region map (additive over regions)."""

    def __init__(self, labels, weights, nonlinear=True):
        super().__init__()
        one_hot = torch.nn.functional.one_hot(torch.as_tensor(labels), int(labels.max()) + 1).float()
        self.register_buffer("average", one_hot / one_hot.sum(dim=(0, 1, 2)))
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        self.nonlinear = nonlinear

    def region_means(self, x):
        return torch.einsum("bcijk,ijkr->br", x, self.average)

    def forward(self, x):
        means = self.region_means(x)
        terms = torch.tanh(3 * means) * self.weights if self.nonlinear else means * self.weights
        score = terms.sum(1)
        return torch.stack([score, -score], dim=1)


# ------------------------------------------------------------------------------------------------
# Regions


def test_grid_regions_tile_the_volume_in_order():
    labels = grid_regions((20, 16, 12), (8, 8, 5))
    assert labels.shape == (20, 16, 12) and labels.dtype == np.int64
    assert labels.max() + 1 == 3 * 2 * 3
    np.testing.assert_array_equal(np.unique(labels), np.arange(18))
    assert labels[0, 0, 0] == 0 and labels[19, 15, 11] == 17
    assert np.all(labels[:8, :8, :5] == 0) and np.all(labels[16:, 8:, 10:] == 17)


def test_supervoxels_are_deterministic_contiguous_and_connected(volume):
    from scipy import ndimage

    first = supervoxels(volume.array, 30, 0.3, spacing=volume.spacing)
    again = supervoxels(volume.array, 30, 0.3, spacing=volume.spacing)
    np.testing.assert_array_equal(first, again)
    n = first.max() + 1
    np.testing.assert_array_equal(np.unique(first), np.arange(n))
    assert 10 <= n <= 60
    for r in range(n):
        assert ndimage.label(first == r)[1] == 1


def test_supervoxels_are_isotropic_in_mm_on_an_anisotropic_grid():
    """A featureless volume with 4 mm slices: supervoxel extents in mm are alike along every axis."""
    spacing = (1.0, 1.0, 4.0)
    labels = supervoxels(np.zeros((48, 48, 12), np.float32), 64, 0.3, spacing=spacing)
    extents = []
    for r in range(labels.max() + 1):
        idx = np.argwhere(labels == r)
        extents.append((idx.max(0) - idx.min(0) + 1) * np.array(spacing))
    mean_mm = np.mean(extents, axis=0)
    assert mean_mm.max() / mean_mm.min() < 1.6, mean_mm


def test_supervoxels_of_several_channels(two_channel_volume):
    labels = supervoxels(two_channel_volume.array, 20, 0.3, spacing=two_channel_volume.spacing)
    assert labels.shape == two_channel_volume.shape and labels.min() == 0


def test_label_regions_keep_every_label_including_background():
    array = np.zeros((4, 4, 4))
    array[1:3, 1:3, 1:3] = 7
    array[0, 0, 0] = 3
    labels = label_regions(array[np.newaxis])
    np.testing.assert_array_equal(np.unique(labels), [0, 1, 2])
    assert labels[0, 0, 0] == 1 and labels[1, 1, 1] == 2 and labels[3, 3, 3] == 0


# ------------------------------------------------------------------------------------------------
# Occlusion


@pytest.mark.parametrize("baseline", ["zeros", "mean"])
def test_occlusion_matches_captum(case, baseline):
    adapter, volume, target, forward, x = case
    params = {"window": "5,4,3", "stride": "3,3,2", "baseline": baseline, "batch_size": 7}
    ours = explain(volume, adapter, "occlusion", target, params).array
    reference = 0.0 if baseline == "zeros" else x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x)
    c = volume.n_channels
    theirs = Occlusion(forward).attribute(
        x, sliding_window_shapes=(c, 5, 4, 3), strides=(1, 3, 3, 2), baselines=reference,
        perturbations_per_eval=9,
    )[0].numpy()
    # MedXAI splits a box's value equally across the channels perturbed together.
    assert relative_difference(ours * c, theirs) < 1e-4


def test_occlusion_per_channel_matches_captum_with_channel_windows(two_channel_segmenter, two_channel_volume):
    target = Target(class_index=1, region="predicted")
    forward, x = reference_function(two_channel_segmenter, two_channel_volume, target)
    params = {"window": "6", "stride": "4", "baseline": "zeros", "per_channel": True}
    result = explain(two_channel_volume, two_channel_segmenter, "occlusion", target, params)
    theirs = Occlusion(forward).attribute(
        x, sliding_window_shapes=(1, 6, 6, 6), strides=(1, 4, 4, 4), perturbations_per_eval=8
    )[0].numpy()
    assert relative_difference(result.array, theirs) < 1e-4
    assert not np.allclose(result.array[0], result.array[1])


def test_occlusion_in_mm_converts_with_the_spacing(classifier, volume):
    # spacing (0.8, 1.1, 2.0) mm: 4.4 mm -> 6, 4, 2 voxels; 2.2 mm -> 3, 2, 1 voxels
    result = explain(volume, classifier, "occlusion", Target(class_index=1),
                     {"window": "4.4", "stride": "2.2", "unit": "mm", "baseline": "zeros"})
    diag = result.provenance["diagnostics"]
    assert diag["window_voxels"] == [6, 4, 2] and diag["stride_voxels"] == [3, 2, 1]
    forward, x = reference_function(classifier, volume, Target(class_index=1))
    theirs = Occlusion(forward).attribute(x, sliding_window_shapes=(1, 6, 4, 2), strides=(1, 3, 2, 1),
                                          perturbations_per_eval=16)[0].numpy()
    assert relative_difference(result.array, theirs) < 1e-4


def test_occlusion_window_larger_than_the_image_is_clipped_with_a_warning(classifier, volume):
    result = explain(volume, classifier, "occlusion", Target(class_index=1),
                     {"window": "30,8,40", "stride": "4"})
    diag = result.provenance["diagnostics"]
    assert diag["window_voxels"] == [20, 8, 12] and diag["n_windows"] == 3
    assert any("clipped" in w for w in diag["warnings"])


def test_occlusion_stride_larger_than_the_window_is_clipped_with_a_warning(classifier, volume):
    diag = explain(volume, classifier, "occlusion", Target(class_index=1),
                   {"window": "4", "stride": "6"}).provenance["diagnostics"]
    assert diag["stride_voxels"] == [4, 4, 4]
    assert any("stride" in w for w in diag["warnings"])


@pytest.mark.parametrize("bad", [{"window": "4,4"}, {"window": "a"}, {"window": "0"}, {"stride": "2.5"}])
def test_occlusion_rejects_bad_window_or_stride(classifier, volume, bad):
    with pytest.raises(ParameterError):
        explain(volume, classifier, "occlusion", Target(class_index=1), bad)


def test_occlusion_is_exactly_zero_where_the_model_looks_at_nothing(volume):
    box = ((8, 12), (6, 10), (4, 8))
    window = 3
    result = explain(volume, BoxSum(box), "occlusion", Target(class_index=0),
                     {"window": str(window), "stride": "1", "baseline": "zeros", "batch_size": 16})
    attribution = result.array[0]
    idx = np.indices(volume.shape)
    # a voxel at least `window` voxels away from the box along some axis lies in no box touching it
    far = np.zeros(volume.shape, bool)
    for axis, (lo, hi) in enumerate(box):
        far |= (idx[axis] <= lo - window) | (idx[axis] >= hi - 1 + window)
    assert far.any() and np.all(attribution[far] == 0.0)
    inside = np.zeros(volume.shape, bool)
    inside[8:12, 6:10, 4:8] = True
    assert np.all(attribution[inside] != 0)


# ------------------------------------------------------------------------------------------------
# Feature ablation


def _labels_for(kind, volume):
    if kind == "grid":
        return {"regions": "grid", "grid_cell": "7,6,5"}, grid_regions(volume.shape, (7, 6, 5))
    return ({"regions": "supervoxels", "n_segments": 24},
            supervoxels(volume.array, 24, 0.3, spacing=volume.spacing))


@pytest.mark.parametrize("kind", ["grid", "supervoxels"])
def test_feature_ablation_matches_captum(case, kind):
    adapter, volume, target, forward, x = case
    params, labels = _labels_for(kind, volume)
    params.update(baseline="min", batch_size=5)
    ours = explain(volume, adapter, "feature_ablation", target, params)
    reference = x.amin(dim=(2, 3, 4), keepdim=True).expand_as(x)
    mask = torch.as_tensor(labels).view(1, 1, *volume.shape)
    theirs = FeatureAblation(forward).attribute(x, baselines=reference, feature_mask=mask,
                                                perturbations_per_eval=4)[0].numpy()
    c = volume.n_channels
    assert relative_difference(ours.array * c, theirs) < 1e-4
    assert ours.provenance["diagnostics"]["regions"]["n_regions"] == labels.max() + 1


def test_feature_ablation_per_channel_matches_captum(two_channel_segmenter, two_channel_volume):
    target = Target(class_index=1, region="predicted")
    forward, x = reference_function(two_channel_segmenter, two_channel_volume, target)
    labels = grid_regions(two_channel_volume.shape, 8)
    params = {"regions": "grid", "grid_cell": "8", "baseline": "zeros", "per_channel": True}
    ours = explain(two_channel_volume, two_channel_segmenter, "feature_ablation", target, params).array
    n = labels.max() + 1
    mask = torch.as_tensor(np.stack([labels, labels + n])).unsqueeze(0)  # feature c*R + r
    theirs = FeatureAblation(forward).attribute(x, feature_mask=mask, perturbations_per_eval=8)[0].numpy()
    assert relative_difference(ours, theirs) < 1e-4


def test_feature_ablation_is_complete_on_an_additive_model(volume):
    labels = grid_regions(volume.shape, (10, 8, 6))
    weights = np.linspace(-2, 3, labels.max() + 1)
    model = RegionModel(labels, weights)
    result = explain(volume, model, "feature_ablation", Target(class_index=0),
                     {"regions": "grid", "grid_cell": "10,8,6", "baseline": "mean"})
    attribution = result.array[0]
    values = np.array([attribution[labels == r][0] for r in range(labels.max() + 1)])
    for r in range(labels.max() + 1):  # one value per region, painted on all of its voxels
        assert np.all(attribution[labels == r] == values[r])
    x = torch.as_tensor(volume.array).unsqueeze(0)
    b = x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x)
    with torch.no_grad():
        gap = float(model(x)[0, 0] - model(b)[0, 0])
    assert values.sum() == pytest.approx(gap, rel=1e-5, abs=1e-6)


def test_feature_ablation_over_the_structures_of_a_label_map(tmp_path, volume):
    path = tmp_path / "labels.nrrd"
    label_array = two_structure_label_map(volume, path, (3, 7))
    weights = [0.5, -1.0, 2.0]  # background, label 3, label 7
    model = RegionModel(label_regions(label_array), weights, nonlinear=False)
    result = explain(volume, model, "feature_ablation", Target(class_index=0),
                     {"regions": "labels", "label_map": str(path), "baseline": "zeros"})
    diag = result.provenance["diagnostics"]
    assert diag["regions"]["label_values"] == [0, 3, 7]
    x = volume.array[0]
    expected = {str(v): w * x[label_array == v].mean() for v, w in zip((0, 3, 7), weights)}
    for key, value in expected.items():
        assert diag["region_values"][key] == pytest.approx(value, rel=1e-4, abs=1e-6)
    assert result.array[0][label_array == 7] == pytest.approx(expected["7"], rel=1e-4)


def test_a_label_map_on_another_grid_is_resampled_onto_the_image(tmp_path, classifier, volume):
    from MedXAILib.io import read_label_map, write_image

    coarse = np.zeros((10, 8, 6), np.float32)
    coarse[1:5, 1:6, 1:4] = 5
    affine = volume.affine.copy()
    affine[:3, :3] *= 2  # voxels twice as large, same origin
    path = tmp_path / "coarse_labels.nrrd"
    write_image(ImageVolume(coarse, affine), path)
    on_image = read_label_map(path, reference=volume).array[0]
    result = explain(volume, classifier, "feature_ablation", Target(class_index=1),
                     {"regions": "labels", "label_map": str(path)})
    assert result.provenance["diagnostics"]["regions"]["label_values"] == [0, 5]
    structure = result.array[0][on_image == 5]
    background = result.array[0][on_image == 0]
    assert structure.size and np.all(structure == structure[0]) and np.all(background == background[0])
    assert set(result.provenance["diagnostics"]["region_values"]) == {"0", "5"}


def test_labels_regions_need_a_label_map(classifier, volume):
    with pytest.raises(ParameterError, match="label_map"):
        explain(volume, classifier, "feature_ablation", Target(class_index=1), {"regions": "labels"})


def test_per_channel_ablation_finds_the_channel_the_model_reads(two_channel_volume):
    class FirstChannel(torch.nn.Module):
        def forward(self, x):
            s = (x[:, 0] ** 2).flatten(1).sum(1)
            return torch.stack([s, -s], 1)

    result = explain(two_channel_volume, FirstChannel(), "feature_ablation", Target(class_index=0),
                     {"regions": "grid", "grid_cell": "5", "per_channel": True, "baseline": "zeros"})
    assert np.all(result.array[1] == 0) and np.abs(result.array[0]).sum() > 0
    assert result.channel_shares == [1.0, 0.0]
    shared = explain(two_channel_volume, FirstChannel(), "feature_ablation", Target(class_index=0),
                     {"regions": "grid", "grid_cell": "5", "baseline": "zeros"})
    np.testing.assert_array_equal(shared.array[0], shared.array[1])
    np.testing.assert_allclose(shared.array.sum(0), result.array[0], rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# RISE


def test_rise_concentrates_in_the_box_the_model_reads():
    """score = sum of x*m over a box: the saliency rises above its offset (the mean score) there."""
    box = ((6, 12), (5, 11), (4, 9))
    volume = ImageVolume(np.ones((1, 20, 16, 12), np.float32), np.eye(4))
    result = explain(volume, BoxSum(box), "rise", Target(class_index=0),
                     {"n_masks": 2000, "cells": 6, "batch_size": 64})
    saliency = result.array[0] - result.provenance["diagnostics"]["mean_score"]
    inside = np.zeros(volume.shape, bool)
    inside[6:12, 5:11, 4:9] = True
    assert saliency[inside].mean() > 3 * saliency[~inside].std()
    assert abs(saliency[~inside].mean()) < 0.1 * saliency[inside].mean()
    top = np.argsort(saliency.ravel())[-inside.sum():]
    assert inside.ravel()[top].mean() > 0.75
    assert inside[np.unravel_index(saliency.argmax(), volume.shape)]


def test_rise_normalisation_is_expected_score_over_p(volume):
    """With a constant score c, S = c * sum_i m_i / (N p), whose mean over voxels is about c."""

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 2), 3.0) + 0 * x.sum()

    result = explain(volume, Constant(), "rise", Target(class_index=0), {"n_masks": 1000, "probability": 0.3})
    assert result.array.mean() == pytest.approx(3.0, rel=0.05)
    assert result.provenance["diagnostics"]["mean_score"] == pytest.approx(3.0)


def test_rise_does_not_depend_on_the_batch_size(segmenter, volume):
    target = Target(class_index=1, region="predicted")
    a = explain(volume, segmenter, "rise", target, {"n_masks": 40, "batch_size": 3}, seed=2).array
    b = explain(volume, segmenter, "rise", target, {"n_masks": 40, "batch_size": 16}, seed=2).array
    c = explain(volume, segmenter, "rise", target, {"n_masks": 40, "batch_size": 16}, seed=3).array
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, c)


def test_rise_per_channel_draws_a_mask_per_channel(two_channel_segmenter, two_channel_volume):
    target = Target(class_index=1, region="predicted")
    shared = explain(two_channel_volume, two_channel_segmenter, "rise", target, {"n_masks": 32}).array
    np.testing.assert_array_equal(shared[0], shared[1])
    split = explain(two_channel_volume, two_channel_segmenter, "rise", target,
                    {"n_masks": 32, "per_channel": True}).array
    assert not np.allclose(split[0], split[1])


# ------------------------------------------------------------------------------------------------
# LIME


@pytest.mark.parametrize("distance,width", [("cosine", 1.0), ("euclidean", 40.0)])
def test_lime_matches_captum_with_the_same_seed(case, distance, width):
    """Same seed -> same Bernoulli draws as Captum's Lime, same kernel weights, same fit."""
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    adapter, volume, target, forward, x = case
    labels = grid_regions(volume.shape, (7, 6, 5))
    params = {"regions": "grid", "grid_cell": "7,6,5", "n_samples": 60, "baseline": "zeros",
              "distance": distance, "kernel_width": width, "batch_size": 6}
    ours = explain(volume, adapter, "lime", target, params, seed=SEED).array
    lime = Lime(forward, interpretable_model=WeightedLeastSquares(),
                similarity_func=get_exp_kernel_similarity_function(distance, width))
    torch.manual_seed(SEED)
    theirs = lime.attribute(x, feature_mask=torch.as_tensor(labels).view(1, 1, *volume.shape),
                            n_samples=60, perturbations_per_eval=6)[0].numpy()
    assert relative_difference(ours * volume.n_channels, theirs) < 1e-4


def test_lime_recovers_a_model_linear_in_the_regions(volume):
    labels = grid_regions(volume.shape, (10, 8, 6))
    weights = np.linspace(-2, 3, labels.max() + 1)
    result = explain(volume, RegionModel(labels, weights, nonlinear=False), "lime", Target(class_index=0),
                     {"regions": "grid", "grid_cell": "10,8,6", "baseline": "zeros", "n_samples": 40})
    means = np.array([volume.array[0][labels == r].mean() for r in range(labels.max() + 1)])
    np.testing.assert_allclose(result.array[0], (weights * means)[labels], rtol=1e-4, atol=1e-6)
    assert result.provenance["diagnostics"]["surrogate_r2"] == pytest.approx(1.0, abs=1e-6)


def test_lime_warns_when_the_fit_is_under_determined(classifier, volume):
    diag = explain(volume, classifier, "lime", Target(class_index=1),
                   {"regions": "grid", "grid_cell": "4", "n_samples": 10}).provenance["diagnostics"]
    assert any("under-determine" in w for w in diag["warnings"])


def test_lime_refuses_a_kernel_so_narrow_that_every_weight_is_zero(classifier, volume):
    with pytest.raises(ParameterError, match="kernel_width"):
        explain(volume, classifier, "lime", Target(class_index=1),
                {"regions": "grid", "grid_cell": "10", "distance": "euclidean", "kernel_width": 1e-6,
                 "n_samples": 8})
