"""Cascading model-parameter randomisation (Adebayo et al. 2018)."""

from __future__ import annotations

import numpy as np
import torch

from MedXAILib import Target, explain
from MedXAILib.evaluation import cascading_randomisation, map_similarity


def test_similarity_is_one_for_identical_maps_and_near_zero_for_independent_ones():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1, 16, 14, 12))
    same = map_similarity(a, a.copy())
    assert same["spearman"] == 1.0 and same["spearman_abs"] == 1.0 and same["ssim_abs"] > 0.999
    other = map_similarity(a, rng.normal(size=a.shape))
    assert abs(other["spearman"]) < 0.05 and abs(other["spearman_abs"]) < 0.05 and other["ssim_abs"] < 0.1


def test_gradient_map_decorrelates_as_layers_are_randomised_and_the_model_is_untouched(classifier, volume):
    before = {k: v.clone() for k, v in classifier.network.state_dict().items()}
    original, steps = cascading_randomisation(volume, classifier, "saliency", stages=3, seed=1)
    assert [s.layers_randomised for s in steps] == sorted(s.layers_randomised for s in steps)
    assert steps[-1].layers_randomised == steps[-1].layers_total > 0
    assert steps[-1].spearman_abs < 0.6 and abs(steps[-1].spearman) < 0.5
    for key, value in classifier.network.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was modified"
    # the original map is the trained model's map of its predicted class (the default target)
    np.testing.assert_array_equal(original, explain(volume, classifier, "saliency").array)


def test_segmenter_target_region_is_fixed_from_the_trained_model(segmenter, volume):
    _, steps = cascading_randomisation(volume, segmenter, "saliency", Target(class_index=1, region="predicted"),
                                       stages=2)
    assert len(steps) == 2 and all(np.isfinite([s.spearman, s.spearman_abs, s.ssim_abs]).all() for s in steps)
