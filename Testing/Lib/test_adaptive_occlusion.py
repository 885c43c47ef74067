"""Adaptive (coarse-to-fine) occlusion: exact where refined, close in rank to exhaustive occlusion, cheaper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedXAILib import ImageVolume, Target, explain
from MedXAILib.methods.perturbation import BoxGrid
from MedXAILib.model import load_model

SHAPE = (48, 48, 36)


class LocalSegmenter(torch.nn.Module):
    """Two 3x3x3 convolutions: a segmenter whose voxels see only their neighbourhood (like a CT organ net)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(),
                                        torch.nn.Conv3d(4, 2, 3, padding=1))

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def phantom() -> tuple[ImageVolume, np.ndarray]:
    """A noisy body with one small bright 'organ' block (a lesion-sized target in a larger volume)."""
    rng = np.random.default_rng(5)
    array = rng.normal(scale=0.2, size=(1, *SHAPE)).astype(np.float32)
    organ = np.zeros(SHAPE, bool)
    organ[20:26, 18:24, 14:19] = True
    array[0][organ] += 3.0
    return ImageVolume(array, np.diag([1.0, 1.0, 1.5, 1.0])), organ


def _model():
    return load_model(LocalSegmenter(), task="segmentation", in_channels=1, device="cpu")


PARAMS = {"window": "4", "stride": "4", "coarse_factor": 2, "refine_fraction": 0.05, "batch_size": 32}


def test_adaptive_occlusion_ranks_like_exhaustive_with_fewer_forwards(phantom):
    image, organ = phantom
    target = Target(class_index=1, region="mask", mask=organ)
    result = explain(image, _model(), "adaptive_occlusion", target, {**PARAMS, "compare_exhaustive": True})
    d = result.provenance["diagnostics"]
    assert d["spearman_exhaustive"] >= 0.95
    assert d["n_forward"] * 5 <= d["n_forward_exhaustive"]
    assert 0 < d["n_refined_boxes"] < d["n_forward_exhaustive"]


def test_the_check_also_reports_the_spearman_over_the_relevant_voxels(phantom):
    """The headline is the whole-map Spearman; the relevant-voxel figure is reported beside it."""
    image, organ = phantom
    target = Target(class_index=1, region="mask", mask=organ)
    d = explain(image, _model(), "adaptive_occlusion", target,
                {**PARAMS, "compare_exhaustive": True}).provenance["diagnostics"]
    assert 0 < d["relevant_voxel_fraction"] < 1
    assert -1 <= d["spearman_exhaustive_relevant"] <= 1
    assert d["spearman_exhaustive"] >= 0.95


def test_refined_voxels_equal_exhaustive_occlusion_exactly(phantom):
    image, organ = phantom
    target = Target(class_index=1, region="mask", mask=organ)
    adaptive = explain(image, _model(), "adaptive_occlusion", target, PARAMS).array
    exhaustive = explain(image, _model(), "occlusion", target,
                         {"window": "4", "stride": "4", "batch_size": 32}).array
    near = np.zeros(SHAPE, bool)
    near[20:26, 18:24, 14:19] = True  # inside the organ every covering fine box touches the refined region
    np.testing.assert_allclose(adaptive[0][near], exhaustive[0][near], rtol=1e-5, atol=1e-7)
    assert np.abs(exhaustive).max() > 0


def test_spearman_check_is_only_run_when_asked(phantom):
    image, organ = phantom
    target = Target(class_index=1, region="mask", mask=organ)
    d = explain(image, _model(), "adaptive_occlusion", target, PARAMS).provenance["diagnostics"]
    assert "spearman_exhaustive" not in d


def test_box_grid_spreads_values_as_an_explicit_loop():
    grid = BoxGrid((11, 9, 7), (4, 3, 5), (3, 2, 4))
    values = torch.randn((2, *grid.positions), generator=torch.Generator().manual_seed(0))
    expected = torch.zeros((2, 11, 9, 7))
    for position in np.ndindex(*grid.positions):
        expected[(slice(None), *grid.box(position))] += values[(slice(None), *position)].view(2, 1, 1, 1)
    torch.testing.assert_close(grid.spread(values), expected, rtol=1e-6, atol=1e-6)


def test_box_grid_finds_the_boxes_touching_a_mask():
    grid = BoxGrid((11, 9, 7), (4, 3, 5), (3, 2, 4))
    mask = torch.zeros((11, 9, 7), dtype=torch.bool)
    mask[10, 0, 6] = True
    hits = grid.touching(mask)
    expected = np.zeros(grid.positions, bool)
    for position in np.ndindex(*grid.positions):
        expected[position] = bool(mask[grid.box(position)].any())
    np.testing.assert_array_equal(hits.numpy(), expected)
    assert hits.sum() >= 1


def test_the_memory_budget_caps_the_perturbation_batch(phantom):
    image, organ = phantom
    model = _model()
    model.memory_budget = 1024  # bytes: one perturbed input per forward pass
    d = explain(image, model, "occlusion", Target(class_index=1, region="mask", mask=organ),
                {"window": "16", "stride": "16", "batch_size": 8}).provenance["diagnostics"]
    assert d["batch_size_used"] == 1
