"""How often explain() runs the network, per method and target kind: each count held at its minimum.

A forward pre-hook on the network counts its calls during one ``explain()``. The tables below give
the minimum for every registered method and every target kind (issue 22): the target's resolution,
the prediction summary and every score come from the method's own passes (no pass of explain's own),
a CAM's automatic layer is chosen in the CAM's own pass, completeness checks reuse the endpoints the
method computed, and a batch the method runs anyway carries the input. A pass that comes back (an
engine pass before the method, a second pass for a CAM's layer, a separate completeness forward)
raises a count and fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from MedXAILib import ImageVolume, METHODS, Target, explain
from MedXAILib.model import load_model
from MedXAILib.model.memory import parse_budget
from references import CallCounter

# Small settings, so that every count is a small known number. Batches of 4 (2 for the path methods).
PARAMS = {
    "integrated_gradients": {"n_steps": 4, "batch_size": 2},
    "smoothgrad": {"n_samples": 4, "batch_size": 2},
    "gradient_shap": {"n_samples": 4, "batch_size": 2},
    "score_cam": {"batch_size": 4},
    "occlusion": {"window": "10,8,6", "stride": "10,8,6", "batch_size": 4},  # 2 x 2 x 2 = 8 boxes
    "adaptive_occlusion": {"window": "5,4,3", "stride": "5,4,3", "batch_size": 4},  # coarse: 8 boxes
    "rise": {"n_masks": 7, "batch_size": 4},
    "feature_ablation": {"regions": "grid", "grid_cell": "10,8,6", "batch_size": 4},  # 8 regions
    "lime": {"regions": "grid", "grid_cell": "10,8,6", "n_samples": 7, "batch_size": 4},
    "kernel_shap": {"regions": "grid", "grid_cell": "10,8,6", "n_samples": 8, "batch_size": 4},
}

_ONE = {"saliency", "input_x_gradient", "guided_backprop", "lrp", "grad_cam", "grad_cam_pp", "hires_cam",
        "xgrad_cam", "layer_cam"}

#: Network calls of one explain() on a model that has run before (its automatic CAM layer and the
#: perturbation batches' memory probe known), the same for every target kind: ``d`` is the result's
#: diagnostics where the count depends on what the run found.
EXPECTED = {
    **{name: 1 for name in _ONE},  # the method's one pass at the input resolves the target and gives the output
    "deeplift": 2,  # the baseline's pass and the input's; F(x) and F(baseline) for completeness from them
    "integrated_gradients": 1 + 2,  # one batch [input, baseline] (completeness, target, output), 2 path batches
    # 2 batches of sample points; a target that needs the output at the input gets the input's own forward
    # without gradient first (no pass of theirs evaluates the input: as a row of a gradient batch it would
    # cost a backward pass too, 8.0 s against 5.6 s for GradientSHAP on the demo UNet); any other target
    # leaves the prediction unevaluated (INPUT_UNEVALUATED)
    "smoothgrad": lambda d, free: 2 + (not free),
    "gradient_shap": lambda d, free: 2 + (not free),
    "score_cam": lambda d: 1 + math.ceil(d["channels"] / 4),  # the layer's pass, then masked inputs
    "occlusion": math.ceil((8 + 1) / 4),  # 8 boxes and the input, 4 a call
    "adaptive_occlusion": lambda d: math.ceil((d["n_coarse_boxes"] + 1) / 4) + math.ceil(d["n_refined_boxes"] / 4),
    "rise": math.ceil((7 + 1) / 4),
    "feature_ablation": math.ceil((8 + 1) / 4),
    "lime": math.ceil((7 + 1) / 4),
    "kernel_shap": math.ceil(8 / 4),  # its first coalition (every region present) is the input itself
}

#: Methods whose passes never evaluate the input: with a target fixed without the output at the input
#: (OUTPUT_FREE), the provenance records the prediction as not evaluated instead of paying a pass for it.
INPUT_UNEVALUATED = {"smoothgrad", "gradient_shap"}
#: Target kinds fixed without the output's values (its channel count suffices).
OUTPUT_FREE = {"class 1", "class", "mask", "box", "voxel", "boundary of a mask"}

SHAPE = (20, 16, 12)


def _volume() -> ImageVolume:
    rng = np.random.default_rng(0)
    array = rng.normal(size=(1, *SHAPE)).astype(np.float32)
    array[:, 4:14, 3:11, 2:9] += 1.5  # a block, so that predicted structures are not speckle
    return ImageVolume(array, np.diag([1.2, 1.0, 2.0, 1.0]))


def _classifier():
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=3, init_features=4, growth_rate=4,
                      block_config=(2, 2))
    return load_model(net, task="classification", class_names=["a", "b", "c"], in_channels=1, device="cpu")


def _segmenter(roi=None, budget=None):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
    adapter = load_model(net, task="segmentation", in_channels=1, device="cpu", roi_size=roi)
    if budget is not None:
        adapter.memory_budget = parse_budget(budget)
    return adapter


def _count(volume, adapter, method, target, params=None) -> tuple[int, dict]:
    counter = CallCounter(adapter.network)
    try:
        result = explain(volume, adapter, method, target, params if params is not None else PARAMS.get(method))
    finally:
        counter.remove()
    return counter.calls, result.provenance


def _warm(adapter, volume, target) -> None:
    """What a model does once per input shape: the automatic CAM layer and the memory probe."""
    for method in ("grad_cam", "occlusion"):
        explain(volume, adapter, method, target, PARAMS.get(method))


@pytest.fixture(scope="module")
def volume() -> ImageVolume:
    return _volume()


@pytest.fixture(scope="module")
def classifier(volume):
    adapter = _classifier()
    _warm(adapter, volume, Target(class_index=1))
    return adapter


@pytest.fixture(scope="module")
def segmenter(volume):
    adapter = _segmenter()
    _warm(adapter, volume, Target(class_index=1))
    return adapter


@pytest.fixture(scope="module")
def segmenter_targets(segmenter, volume) -> dict[str, Target]:
    bound = segmenter.bind(volume.affine, volume.shape)
    with torch.no_grad():
        labels = bound(torch.as_tensor(volume.array)[None])[0].argmax(0).numpy()
    assert (labels == 1).any() and not (labels == 1).all(), "the test segmenter must predict part of class 1"
    inside = tuple(int(v) for v in np.argwhere(labels == 1)[0])
    mask = np.zeros(SHAPE, bool)
    mask[5:12, 4:10, 3:8] = True
    return {
        "class": Target(class_index=1),
        "predicted": Target(class_index=1, region="predicted"),
        "component": Target(class_index=1, region="component", voxel=inside),
        "boundary": Target(class_index=1, region="boundary", band_mm=(2.0, 2.0)),
        "mask": Target(class_index=1, region="mask", mask=mask),
        "box": Target(class_index=2, region="box", box=(3, 3, 3, 9, 9, 9)),
        "voxel": Target(class_index=2, region="voxel", voxel=(10, 8, 6)),
        "boundary of a mask": Target(class_index=1, region="boundary", mask=mask, band_mm=(2.0, 2.0)),
    }


CLASSIFIER_TARGETS = {"predicted class": Target(), "class 1": Target(class_index=1)}


def _expected(method: str, diagnostics: dict, kind: str = "") -> int:
    value = EXPECTED[method]
    if method in INPUT_UNEVALUATED:
        return value(diagnostics, kind in OUTPUT_FREE)
    return value(diagnostics) if callable(value) else value


def _prediction_said(method: str, kind: str, prediction: dict) -> bool:
    """Whether the provenance says the prediction was not evaluated (and so holds no summary)."""
    unevaluated = method in INPUT_UNEVALUATED and kind in OUTPUT_FREE
    if unevaluated:
        assert prediction["evaluated"] is False and "input" in prediction["note"], prediction
    return unevaluated


def test_every_registered_method_has_an_expected_count():
    assert set(EXPECTED) == set(METHODS.names())


@pytest.mark.parametrize("kind", sorted(CLASSIFIER_TARGETS))
@pytest.mark.parametrize("method", [n for n in METHODS.names() if "classification" in METHODS.get(n).tasks])
def test_classifier_forward_calls_are_minimal(classifier, volume, method, kind):
    calls, provenance = _count(volume, classifier, method, CLASSIFIER_TARGETS[kind])
    assert calls == _expected(method, provenance["diagnostics"], kind), f"{method}, {kind}: {calls} calls"
    # the provenance stays complete: the prediction summary (or why there is none) and the resolved target
    if _prediction_said(method, kind, provenance["prediction"]):
        assert provenance["target"]["class_index"] == 1
        return
    assert provenance["prediction"]["predicted_class"] in (0, 1, 2)
    assert provenance["target"]["class_index"] == (1 if kind == "class 1" else provenance["prediction"]["predicted_class"])


SEGMENTER_KINDS = ["class", "predicted", "component", "boundary", "mask", "box", "voxel", "boundary of a mask"]


@pytest.mark.parametrize("kind", SEGMENTER_KINDS)
@pytest.mark.parametrize("method", [n for n in METHODS.names() if "segmentation" in METHODS.get(n).tasks])
def test_segmenter_forward_calls_are_minimal(segmenter, segmenter_targets, volume, method, kind):
    calls, provenance = _count(volume, segmenter, method, segmenter_targets[kind])
    assert calls == _expected(method, provenance["diagnostics"], kind), f"{method}, {kind}: {calls} calls"
    if not _prediction_said(method, kind, provenance["prediction"]):
        assert sum(provenance["prediction"]["voxels_per_class"]) == int(np.prod(SHAPE))
    assert provenance["target"]["region_voxels"] > 0


@pytest.mark.parametrize("kind, expected", [("class 1", 2), ("predicted class", 3)])
def test_path_endpoints_come_from_the_path_where_the_rule_has_them(classifier, volume, kind, expected):
    """The trapezoid rule's path holds both endpoints: a class given by index needs no other call; the
    predicted class needs the input's output before the first gradient, one batch [input]."""
    params = {"n_steps": 4, "batch_size": 2, "integration": "riemann_trapezoid"}
    calls, provenance = _count(volume, classifier, "integrated_gradients", CLASSIFIER_TARGETS[kind], params)
    assert calls == expected
    assert provenance["diagnostics"]["completeness_error"] >= 0


@pytest.mark.parametrize("method", ["grad_cam", "grad_cam_pp", "hires_cam", "xgrad_cam", "layer_cam", "score_cam"])
def test_a_models_first_cam_chooses_its_layer_in_its_own_pass(volume, method):
    adapter = _segmenter()  # fresh: no layer chosen yet
    calls, provenance = _count(volume, adapter, method, Target(class_index=1, region="predicted"))
    assert provenance["diagnostics"]["layer_automatic"]
    assert calls == _expected(method, provenance["diagnostics"])
    again, repeat = _count(volume, adapter, method, Target(class_index=1, region="predicted"))
    assert again == calls and repeat["diagnostics"]["layer"] == provenance["diagnostics"]["layer"]


def _segresnet():
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8, blocks_down=(1, 1),
                     blocks_up=(1,))


def _dynunet():
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    return DynUNet(3, 1, 3, [3, 3, 3], [1, 2, 2], [2, 2], filters=(4, 8, 16), deep_supervision=True,
                   deep_supr_num=1)


@pytest.mark.parametrize("build, layer, calls", [
    (_segresnet, "up_layers.0", 1),  # registered before up_samples, runs after it: the choice is in the graph
    (_dynunet, "skip_layers", 2),  # the predicted head runs after the choice: the one case of a second pass
])
def test_a_first_cam_whose_layer_the_registration_order_mispredicts(volume, build, layer, calls):
    """The first automatic CAM hooks the layer the registration order predicts and traces the real choice
    in the same pass; a choice the prediction does not reach costs one more pass, never another map."""
    adapter = load_model(build(), task="segmentation", in_channels=1, device="cpu")
    first, provenance = _count(volume, adapter, "grad_cam", Target(class_index=1, region="predicted"))
    assert provenance["diagnostics"]["layer"] == layer and provenance["diagnostics"]["layer_automatic"]
    assert first == calls
    again, _ = _count(volume, adapter, "grad_cam", Target(class_index=1, region="predicted"))
    assert again == 1
    automatic = explain(volume, load_model(build(), task="segmentation", in_channels=1, device="cpu"),
                        "grad_cam", Target(class_index=1, region="predicted"))
    named = explain(volume, adapter, "grad_cam", Target(class_index=1, region="predicted"), {"layer": layer})
    scale = np.abs(named.array).max()
    assert scale > 0
    np.testing.assert_allclose(automatic.array, named.array, rtol=1e-5, atol=1e-6 * scale)


def test_a_cam_after_an_in_place_change_of_its_layer_takes_the_hooked_pass():
    """DenseNet applies ReLU(inplace=True) to its automatic layer's output: the traced pass hands that
    ReLU a copy, so the first CAM still needs one pass, and equals the CAM at the named layer."""
    volume = _volume()
    first, provenance = _count(volume, _classifier(), "grad_cam", Target(class_index=1))
    assert first == 1 and provenance["diagnostics"]["layer"] == "features"
    named = explain(volume, _classifier(), "grad_cam", Target(class_index=1), {"layer": "features"})
    automatic = explain(volume, _classifier(), "grad_cam", Target(class_index=1))
    np.testing.assert_allclose(automatic.array, named.array, rtol=1e-5, atol=1e-6 * np.abs(named.array).max())


# ------------------------------------------------------------------------------------------------
# Sliding windows: ROI 10 x 8 x 6 over 20 x 16 x 12 with overlap 0.25 -> 27 windows

WINDOWED = ["saliency", "input_x_gradient", "guided_backprop", "grad_cam", "layer_cam", "deeplift"]
#: Passes over the windows (each one network call per window at one window a call), by whether the
#: target is read off the output: the gradient pass resolves a mask itself; a predicted region needs
#: the whole output first, a separate pass (stated in the diagnostics as target_pass).
WINDOW_PASSES = {"saliency": (1, 2), "input_x_gradient": (1, 2), "guided_backprop": (1, 2), "grad_cam": (1, 2),
                 "layer_cam": (1, 2), "deeplift": (2, 3)}


@pytest.fixture(scope="module")
def windowed_targets(segmenter_targets) -> dict[str, Target]:
    return {"mask": segmenter_targets["mask"], "predicted": segmenter_targets["predicted"]}


@pytest.mark.parametrize("kind", ["mask", "predicted"])
@pytest.mark.parametrize("method", WINDOWED)
def test_windowed_passes_one_window_a_call(volume, windowed_targets, method, kind):
    adapter = _segmenter(roi=(10, 8, 6), budget="1KB")
    adapter.overlap = 0.25
    _warm(adapter, volume, windowed_targets["mask"])
    calls, provenance = _count(volume, adapter, method, windowed_targets[kind])
    windows = provenance["memory"]["windows"]
    assert windows > 1 and provenance["memory"]["windows_per_call"] == 1
    passes = WINDOW_PASSES[method][kind == "predicted"]
    assert calls == passes * windows
    assert ("target_pass" in provenance["diagnostics"]) == (kind == "predicted")


@pytest.mark.parametrize("kind", ["mask", "predicted"])
@pytest.mark.parametrize("method", WINDOWED)
def test_windowed_passes_share_the_call_when_every_window_fits_in_it(volume, windowed_targets, method, kind):
    """With every window in one network call (the budget says so), a predicted region is read off that
    call's blended output before its backward pass: no pass of its own."""
    adapter = _segmenter(roi=(10, 8, 6), budget="2GB")
    adapter.overlap = 0.25
    _warm(adapter, volume, windowed_targets["mask"])
    calls, provenance = _count(volume, adapter, method, windowed_targets[kind])
    assert provenance["memory"]["windows_per_call"] == provenance["memory"]["windows"] > 1
    assert calls == WINDOW_PASSES[method][0]
    assert "target_pass" not in provenance["diagnostics"]


@pytest.mark.parametrize("score", ["logit", "probability"])
@pytest.mark.parametrize("method", ["saliency", "grad_cam"])
def test_a_shared_windowed_call_gives_the_map_of_a_separate_resolving_pass(volume, windowed_targets, method, score):
    """The predicted region read off the one call's blended output is the region of a separate pass: same
    map, same target, same output (a probability target is not linear in the output: its dS/dy comes
    from that output too)."""
    target = Target(class_index=1, region="predicted", score=score)
    maps = {}
    for budget in ("1KB", "2GB"):
        adapter = _segmenter(roi=(10, 8, 6), budget=budget)
        adapter.overlap = 0.25
        maps[budget] = explain(volume, adapter, method, target, {"relu": False} if method == "grad_cam" else None)
    separate, shared = maps["1KB"], maps["2GB"]
    assert "target_pass" in separate.provenance["diagnostics"] and "target_pass" not in shared.provenance["diagnostics"]
    assert shared.provenance["target"]["region_voxels"] == separate.provenance["target"]["region_voxels"]
    assert shared.provenance["prediction"] == separate.provenance["prediction"]
    scale = np.abs(separate.array).max()
    assert scale > 0
    np.testing.assert_allclose(shared.array, separate.array, rtol=1e-4, atol=1e-5 * scale)


def test_explain_keeps_every_check_of_the_output_it_no_longer_runs_itself(volume):
    """A non-finite output in the target region is refused in the method's own pass, before its
    backward pass; one outside the region is a warning in the provenance."""
    from MedXAILib import ModelError

    class NaNCorner(torch.nn.Module):
        def forward(self, x):
            y = torch.cat([x, -x, 0.5 * x], dim=1)
            y[..., :2, :2, :2] = float("nan")
            return y

    model = load_model(NaNCorner(), task="segmentation", in_channels=1, device="cpu")
    with pytest.raises(ModelError, match="NaN or infinite"):
        explain(volume, model, "saliency", Target(class_index=1))
    mask = np.zeros(SHAPE, bool)
    mask[10:14, 8:12, 6:9] = True
    for method in ("saliency", "integrated_gradients", "smoothgrad"):  # maps of gradients stay finite
        result = explain(volume, model, method, Target(class_index=1, region="mask", mask=mask), PARAMS.get(method))
        warnings = result.provenance["diagnostics"]["warnings"]
        assert sum("outside the target region" in w for w in warnings) == 1, (method, warnings)
        with pytest.raises(ModelError, match="NaN or infinite"):
            explain(volume, model, method, Target(class_index=1), PARAMS.get(method))


@pytest.mark.parametrize("kind, expected", [("class 1", 2), ("predicted class", 3)])
def test_integrated_gradients_without_its_completeness_check_runs_the_path_alone(classifier, volume, kind,
                                                                                   expected):
    """completeness off: the 2 path batches, and the input's own pass only where the target needs it; the
    map is the one with the check, and the provenance says the prediction was not evaluated otherwise."""
    params = {"n_steps": 4, "batch_size": 2}
    calls, provenance = _count(volume, classifier, "integrated_gradients", CLASSIFIER_TARGETS[kind],
                               {**params, "completeness": False})
    assert calls == expected
    assert "completeness_error" not in provenance["diagnostics"]
    assert ("predicted_class" in provenance["prediction"]) == (kind == "predicted class")
    checked = explain(volume, classifier, "integrated_gradients", CLASSIFIER_TARGETS[kind], params)
    unchecked = explain(volume, classifier, "integrated_gradients", CLASSIFIER_TARGETS[kind],
                        {**params, "completeness": False})
    assert checked.provenance["diagnostics"]["completeness_error"] >= 0
    np.testing.assert_array_equal(unchecked.array, checked.array)
