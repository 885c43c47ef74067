"""explain(): targets, errors, determinism, progress and cancel, provenance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedXAILib import (
    Cancelled,
    InputError,
    ModelError,
    Monitor,
    Target,
    TargetError,
    explain,
)
from MedXAILib.scoring import resolve_target


def test_classifier_defaults_to_the_predicted_class(classifier, volume):
    result = explain(volume, classifier, "saliency")
    predicted = result.provenance["prediction"]["predicted_class"]
    assert result.provenance["target"]["class_index"] == predicted
    assert result.provenance["target_name"] == ["a", "b", "c"][predicted]


def test_segmentation_regions_resolve_as_documented(segmenter, volume):
    bound = segmenter.bind(volume.affine, volume.shape)
    with torch.no_grad():
        output = bound(torch.as_tensor(volume.array)[None])
    labels = output[0].argmax(0).numpy()
    predicted = resolve_target(Target(class_index=1, region="predicted"), output, "segmentation")
    assert predicted.region_voxels == int((labels == 1).sum())

    seed_voxel = tuple(int(v) for v in np.argwhere(labels == 1)[0])
    component = resolve_target(Target(class_index=1, region="component", voxel=seed_voxel), output, "segmentation")
    from scipy import ndimage

    cc, _ = ndimage.label(labels == 1)
    assert component.region_voxels == int((cc == cc[seed_voxel]).sum())

    voxel = resolve_target(Target(class_index=2, region="voxel", voxel=(3, 4, 5)), output, "segmentation")
    assert float(voxel(output)) == pytest.approx(float(output[0, 2, 3, 4, 5]))
    mean = resolve_target(Target(class_index=2, region="box", box=(0, 0, 0, 1, 1, 1), reduction="mean"),
                          output, "segmentation")
    assert float(mean(output)) == pytest.approx(float(output[0, 2, :2, :2, :2].mean()), rel=1e-6)


def test_voxel_target_relevance_peaks_at_the_voxel(segmenter, volume):
    result = explain(volume, segmenter, "saliency", Target(class_index=1, region="voxel", voxel=(10, 8, 6)))
    peak = np.unravel_index(np.abs(result.summed).argmax(), volume.shape)
    assert np.abs(np.array(peak) - (10, 8, 6)).max() <= 2


def test_target_sensitivity_different_classes_give_different_maps(classifier, volume):
    a = explain(volume, classifier, "saliency", Target(class_index=0)).array
    b = explain(volume, classifier, "saliency", Target(class_index=1)).array
    assert not np.allclose(a, b)


def test_noise_baseline_depends_on_the_seed_only(classifier, volume):
    params = {"baseline": "noise", "n_steps": 4}
    a = explain(volume, classifier, "integrated_gradients", Target(class_index=1), params, seed=1).array
    b = explain(volume, classifier, "integrated_gradients", Target(class_index=1), params, seed=1).array
    c = explain(volume, classifier, "integrated_gradients", Target(class_index=1), params, seed=2).array
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_progress_reaches_one_and_increases(segmenter, volume):
    seen = []
    explain(volume, segmenter, "integrated_gradients", Target(class_index=1), {"n_steps": 8, "batch_size": 2},
            monitor=Monitor(lambda f, m: seen.append((f, m))))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("path points" in m for _, m in seen)


def test_cancel_raises_and_leaves_hooks_and_graph_clean(segmenter, volume):
    monitor = Monitor()
    calls = []

    def cancel_after_two(fraction, message):
        calls.append(fraction)
        if len(calls) == 2:
            monitor.cancel()

    monitor._callback = cancel_after_two
    with pytest.raises(Cancelled):
        explain(volume, segmenter, "integrated_gradients", Target(class_index=1), {"n_steps": 16, "batch_size": 2},
                monitor=monitor)
    assert not any(p.requires_grad for p in segmenter.network.parameters())
    # the model still works after a cancelled run
    assert explain(volume, segmenter, "saliency", Target(class_index=1)).array.shape == volume.array.shape


def test_provenance_records_everything_needed_to_reproduce(classifier, volume):
    p = explain(volume, classifier, "integrated_gradients", Target(class_index=2), {"n_steps": 4}, seed=7).provenance
    assert p["method"] == "integrated_gradients" and p["parameters"]["n_steps"] == 4
    assert p["seed"] == 7 and p["device"] == "cpu" and p["seconds"] > 0
    assert {"medxai", "torch", "monai", "numpy", "SimpleITK", "python"} <= set(p["versions"])
    assert p["target"]["class_index"] == 2 and "completeness_error" in p["diagnostics"]
    assert p["input"]["spacing_mm"] == pytest.approx(list(volume.spacing), abs=1e-6)


@pytest.mark.parametrize(
    "make_call, error, fragment",
    [
        (lambda v, c, s: explain(v, s, "saliency", Target(class_index=7, region="predicted")), TargetError,
         "out of range"),
        (lambda v, c, s: explain(v, c, "saliency", Target(class_index=3)), TargetError, "out of range"),
        (lambda v, c, s: explain(v, s, "saliency", Target(region="predicted")), TargetError, "needs a class"),
        (lambda v, c, s: explain(v, c, "saliency", Target(class_index=1, region="voxel", voxel=(1, 1, 1))),
         TargetError, "needs a segmentation model"),
        (lambda v, c, s: explain(v, s, "saliency", Target(class_index=1, region="mask",
                                                          mask=np.zeros(v.shape, bool))), TargetError, "covers no voxel"),
        (lambda v, c, s: explain(v.with_array(np.concatenate([v.array, v.array])), s, "saliency",
                                 Target(class_index=1)), ModelError, "takes 1 input channel"),
    ],
)
def test_bad_targets_and_inputs_raise_clear_errors(make_call, error, fragment, volume, classifier, segmenter):
    with pytest.raises(error, match=None) as info:
        make_call(volume, classifier, segmenter)
    assert fragment in str(info.value)


def test_non_finite_voxels_are_refused(segmenter, volume):
    volume.array[0, 2, 3, 4] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        explain(volume, segmenter, "saliency", Target(class_index=1))


@pytest.mark.parametrize("where", ["one voxel", "the whole map"])
def test_a_map_with_non_finite_values_is_refused(volume, where):
    """A finite output whose gradient is not (a square root at zero): the map is refused, not returned."""
    class RootAtZero(torch.nn.Module):
        def forward(self, x):
            root = torch.sqrt(x).mean((1, 2, 3, 4))  # d sqrt / dx is infinite at 0
            return torch.stack([root, -root], dim=1)

    image = volume.with_array(np.ones_like(volume.array))
    image.array[0, 2, 3, 4] = 0.0
    if where == "the whole map":
        image.array[:] = 0.0
    with pytest.raises(ModelError, match="produced non-finite values"):
        explain(image, RootAtZero(), "saliency", Target(class_index=0))


def test_empty_predicted_structure_is_refused(volume):
    class Background(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x + 10, x * 0], dim=1)  # class 1 is never the argmax

    with pytest.raises(TargetError, match="predicts no voxel of class 1"):
        explain(volume, Background(), "saliency", Target(class_index=1, region="predicted"))
