"""Exact attribution through sliding-window inference with bounded memory.

The windowed backward (:mod:`MedXAILib.model.window_gradient`) and the windowed CAMs must equal the
direct computation that holds the whole graph: autograd through MONAI's own
``sliding_window_inference`` (and hooks over all windows for CAMs), on a volume small enough for both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedXAILib import Cancelled, ImageVolume, Monitor, Target, explain
from MedXAILib.errors import InputError
from MedXAILib.methods import context as context_module
from MedXAILib.model import Preprocessing, load_model
from MedXAILib.model import window_gradient
from MedXAILib.model import memory
from MedXAILib.model.memory import items_per_call, parse_budget
from MedXAILib.provenance import channel_argmax, summarise_prediction
from MedXAILib.scoring import resolve_target

SHAPE, ROI, OVERLAP = (48, 40, 32), (24, 24, 24), 0.5


def _unet(seed: int = 0):
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)


def _model(mode: str, budget="auto", preprocessing=None, device="cpu"):
    adapter = load_model(_unet(), task="segmentation", in_channels=1, device=device, roi_size=ROI,
                         preprocessing=preprocessing)
    adapter.overlap, adapter.blend_mode = OVERLAP, mode
    adapter.memory_budget = parse_budget(budget)
    return adapter


@pytest.fixture
def image() -> ImageVolume:
    rng = np.random.default_rng(3)
    array = rng.normal(size=(1, *SHAPE)).astype(np.float32)
    array[:, 10:30, 8:28, 6:22] += 2.0  # a bright block, so the predicted structures are not noise
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    affine[:3, 3] = (-30.0, 12.0, 100.0)
    return ImageVolume(array, affine)


def _direct_gradient(adapter, image, target):
    """d score / d input with autograd through MONAI's sliding_window_inference (whole graph held)."""
    from monai.inferers import sliding_window_inference

    bound = adapter.bind(image.affine, image.shape)
    x = torch.as_tensor(image.array).unsqueeze(0).requires_grad_(True)

    def forward(v):
        z = adapter.preprocessing.apply(v, bound.grids)
        y = sliding_window_inference(z, ROI, 4, adapter.network, overlap=OVERLAP, mode=adapter.blend_mode)
        return adapter.preprocessing.invert_output(torch.as_tensor(y), bound.grids)

    with torch.no_grad():
        scorer = resolve_target(target, forward(x), "segmentation", spacing=image.spacing)
    score = scorer(forward(x))
    (grad,) = torch.autograd.grad(score.sum(), x)
    return grad[0].numpy(), float(score.detach())


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("score", ["logit", "probability", "margin"])
def test_windowed_saliency_equals_autograd_through_monai(image, mode, score):
    adapter = _model(mode, budget="1KB")  # one window per call: many separate backward passes
    target = Target(class_index=1, region="predicted", score=score)
    result = explain(image, adapter, "saliency", target)
    expected, _ = _direct_gradient(_model(mode), image, target)
    memory = result.provenance["memory"]
    assert memory["windows"] == 18 and memory["windows_per_call"] == 1
    np.testing.assert_allclose(result.array, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_masked_and_mean_targets_and_resampling_preprocessing(image):
    """A mask target averaged over its voxels, with a spacing step: windows live on the network grid."""
    steps = Preprocessing.from_config([{"kind": "spacing", "pixdim": [2.0, 1.5, 2.0]},
                                       {"kind": "normalize_intensity"}])
    mask = np.zeros(SHAPE, bool)
    mask[12:26, 10:20, 8:20] = True
    target = Target(class_index=2, region="mask", mask=mask, reduction="mean")
    adapter = _model("gaussian", budget="1KB", preprocessing=steps)
    result = explain(image, adapter, "saliency", target)
    expected, _ = _direct_gradient(_model("gaussian", preprocessing=steps), image, target)
    assert result.provenance["memory"]["windows"] > 1
    np.testing.assert_allclose(result.array, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_window_backward_returns_the_score(image):
    adapter = _model("gaussian", budget="1KB")
    target = Target(class_index=1, region="predicted")
    _, expected_score = _direct_gradient(_model("gaussian"), image, target)
    bound = adapter.bind(image.affine, image.shape)
    x = torch.as_tensor(image.array).unsqueeze(0)
    with torch.no_grad():
        scorer = resolve_target(target, bound(x), "segmentation")
    found = bound.gradient(x, scorer)
    assert float(found.scores[0]) == pytest.approx(expected_score, rel=1e-5)


def _whole_graph(monkeypatch):
    """Make MethodContext take the direct path: autograd through the stitched output, whole graph."""
    monkeypatch.setattr(context_module.MethodContext, "windowed", property(lambda self: False))


GRADIENT_METHODS = {
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 4, "batch_size": 2},
    "smoothgrad": {"n_samples": 3, "batch_size": 3},
    "gradient_shap": {"n_samples": 3, "batch_size": 2},
    "guided_backprop": {},
    "deeplift": {},
}


@pytest.mark.parametrize("method", sorted(GRADIENT_METHODS))
def test_gradient_methods_take_the_windowed_path_and_equal_the_direct_one(image, method, monkeypatch):
    target = Target(class_index=1, region="predicted")
    calls = []
    original = window_gradient.window_backward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr("MedXAILib.model.adapter.window_backward", counting)
    params = GRADIENT_METHODS[method]
    windowed = explain(image, _model("gaussian", budget="1KB"), method, target, params, seed=4)
    assert calls, "the windowed backward was not used"
    _whole_graph(monkeypatch)
    direct = explain(image, _model("gaussian", budget="1KB"), method, target, params, seed=4)
    scale = np.abs(direct.array).max()
    np.testing.assert_allclose(windowed.array, direct.array, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("method", ["grad_cam", "grad_cam_pp", "hires_cam", "xgrad_cam", "layer_cam"])
def test_windowed_cams_equal_the_cam_with_the_whole_graph_and_hooks_over_all_windows(image, mode, method,
                                                                                  monkeypatch):
    target = Target(class_index=1, region="predicted")
    params = {"relu": False, "upsample": "trilinear"}
    windowed = explain(image, _model(mode, budget="1KB"), method, target, params)
    diagnostics = windowed.provenance["diagnostics"]
    assert diagnostics["windows"] == 18 and diagnostics["windows_per_call"] == 1
    _whole_graph(monkeypatch)
    direct = explain(image, _model(mode), method, target, params)
    assert "windows_per_call" not in direct.provenance["diagnostics"]  # the one-backward path ran
    scale = np.abs(direct.array).max()
    assert scale > 0
    np.testing.assert_allclose(windowed.array, direct.array, rtol=1e-4, atol=1e-5 * scale)


def test_progress_says_which_window_of_how_many(image):
    messages = []
    explain(image, _model("gaussian", budget="1KB"), "saliency", Target(class_index=1, region="predicted"),
            monitor=Monitor(lambda f, m: messages.append(m)))
    windows = [m for m in messages if "window" in m]
    assert any(m.endswith("window 18 of 18") for m in windows)
    assert any(m.startswith("Saliency") and "window 5 of 18" in m for m in windows)


def cancel_at_the_third_window(method_title: str) -> tuple[Monitor, list[str]]:
    """A monitor that cancels when `method_title`'s progress reaches window 3, and the messages it saw."""
    monitor = Monitor()
    seen = []

    def cancel(fraction, message):
        seen.append(message)
        if message.startswith(method_title) and "window 3 of" in message:
            monitor.cancel()

    monitor._callback = cancel
    return monitor, seen


def test_cancel_between_window_batches(image):
    monitor, seen = cancel_at_the_third_window("Saliency")  # in the windowed backward
    with pytest.raises(Cancelled):
        explain(image, _model("gaussian", budget="1KB"), "saliency",
                Target(class_index=1, region="predicted"),
                monitor=monitor)
    assert not any(m.startswith("Saliency") and "window 4 of" in m for m in seen)


def test_budget_sets_the_windows_per_call(image):
    small = _model("constant", budget="1KB").bind(image.affine, image.shape)
    large = _model("constant", budget="64GB").bind(image.affine, image.shape)
    assert small.windows_per_call() == 1
    assert large.windows_per_call() == large.plan().n_windows == 18


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 2**30), ("500MB", 500 * 2**20),
                                            ("1.5g", int(1.5 * 2**30)),
                                            ("auto", None), ("", None), (1000, 1000)])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-3GB", "4 parsecs", 0])
def test_parse_budget_refuses_nonsense(bad):
    with pytest.raises(InputError):
        parse_budget(bad)


def test_items_per_call_stays_in_range():
    assert items_per_call(10_000, 2_000, 1_000, 100) == 8
    assert items_per_call(1_000, 2_000, 1_000, 100) == 1
    assert items_per_call(10**12, 0, 1_000, 7) == 7


def test_the_memory_budget_reaches_the_provenance(image):
    result = explain(image, _model("gaussian"), "saliency", Target(class_index=1, region="predicted"),
                     memory_budget="2GB")
    assert result.provenance["memory"]["budget_bytes"] == 2 * 2**30
    assert result.provenance["memory"]["mixed_precision"] is False


# ------------------------------------------------------------------------------------------------
# One pass over the windows: the output comes from the gradient's windows


def _mask(shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[12:26, 10:20, 8:20] = True
    return mask


def _count_calls(adapter) -> list:
    calls = []
    adapter.network.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mask_target_saliency_runs_every_window_once_and_stays_exact(image, reduction):
    """A logit over a mask needs no output to resolve: one probe window, then each window once."""
    target = Target(class_index=2, region="mask", mask=_mask(), reduction=reduction)
    adapter = _model("gaussian", budget="1KB")
    calls = _count_calls(adapter)
    result = explain(image, adapter, "saliency", target)
    assert calls == [1] * (1 + 18)  # the probe, then 18 windows with autograd; no whole-volume pass
    expected, _ = _direct_gradient(_model("gaussian"), image, target)
    np.testing.assert_allclose(result.array, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    reference = explain(image, _model("gaussian"), "saliency", Target(class_index=2, region="predicted"))
    assert result.provenance["prediction"] == reference.provenance["prediction"]


def test_mask_target_grad_cam_runs_every_window_once_and_equals_the_whole_graph_cam(image, monkeypatch):
    target = Target(class_index=1, region="mask", mask=_mask())
    params = {"relu": False, "upsample": "trilinear"}
    adapter = _model("constant", budget="1KB")
    calls = _count_calls(adapter)
    windowed = explain(image, adapter, "grad_cam", target, params)
    assert len(calls) == 2 + 18  # the probe window, the layer choice's example, then the 18 windows
    _whole_graph(monkeypatch)
    direct = explain(image, _model("constant"), "grad_cam", target, params)
    scale = np.abs(direct.array).max()
    np.testing.assert_allclose(windowed.array, direct.array, rtol=1e-4, atol=1e-5 * scale)
    assert windowed.provenance["prediction"] == direct.provenance["prediction"]


def test_methods_that_do_not_run_the_windows_still_get_the_output(image):
    """Occlusion on a mask target: the output is computed once after the method, for the provenance."""
    target = Target(class_index=2, region="mask", mask=_mask())
    params = {"window": "16", "stride": "16", "batch_size": 4}
    result = explain(image, _model("constant"), "occlusion", target, params)
    reference = explain(image, _model("constant"), "saliency", Target(class_index=2, region="predicted"))
    assert result.provenance["prediction"] == reference.provenance["prediction"]


@pytest.mark.parametrize("method, params", [
    ("occlusion", {"window": "12,10,8", "stride": "8", "batch_size": 4}),
    ("occlusion", {"window": "8", "stride": "8", "baseline": "zeros", "per_channel": True}),
    ("adaptive_occlusion", {"window": "8", "stride": "8", "coarse_factor": 2, "refine_fraction": 0.2}),
])
def test_windowed_occlusion_runs_only_the_windows_a_box_meets_and_equals_whole_inputs(image, method, params,
                                                                                        monkeypatch):
    """Occluding a box changes only the windows it meets; only those meeting the target region count."""
    mask = np.zeros(SHAPE, bool)
    mask[4:10, 30:36, 2:8] = True  # in a corner: few windows carry weight
    target = Target(class_index=2, region="mask", mask=mask)
    adapter = _model("gaussian", budget="1KB")
    calls = _count_calls(adapter)
    local = explain(image, adapter, method, target, params)
    diagnostics = local.provenance["diagnostics"]
    assert diagnostics["windows_weighted"] < diagnostics["windows_per_input"] == 18
    assert diagnostics["windows_run"] == len(calls) - 1 - 18  # besides the probe and the output's pass
    assert diagnostics["windows_run"] < diagnostics["n_forward"] * 18 / 4
    from MedXAILib.model import window_scores

    monkeypatch.setattr(window_scores, "applies", lambda *args: False)
    whole = explain(image, _model("gaussian", budget="1KB"), method, target, params)
    scale = np.abs(whole.array).max()
    assert scale > 0
    np.testing.assert_allclose(local.array, whole.array, rtol=1e-4, atol=1e-4 * scale)


def test_windowed_occlusion_reports_windows_and_cancels_between_them(image):
    monitor, seen = cancel_at_the_third_window("Occlusion")
    with pytest.raises(Cancelled):
        explain(image, _model("gaussian", budget="1KB"), "occlusion",
                Target(class_index=2, region="mask", mask=_mask()), {"window": "8", "stride": "8"},
                monitor=monitor)
    assert any(m.startswith("Occlusion") and "window 3 of" in m for m in seen)
    assert not any(m.startswith("Occlusion") and "window 4 of" in m for m in seen)


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_window_backward_keeps_the_blended_output(image, score):
    adapter = _model("gaussian", budget="1KB")
    bound = adapter.bind(image.affine, image.shape)
    x = torch.as_tensor(image.array).unsqueeze(0)
    with torch.no_grad():
        expected = bound(x)
    scorer = resolve_target(Target(class_index=2, region="mask", mask=_mask(), score=score), expected,
                            "segmentation")
    found = bound.gradient(x, scorer, keep_output=True)
    torch.testing.assert_close(found.output, expected, rtol=1e-5, atol=1e-5)
    assert bound.gradient(x, scorer).output is None or score != "logit"


def test_the_automatic_cam_layer_is_traced_once_per_model_and_input_shape(image, monkeypatch):
    from MedXAILib.methods import cam

    traced = []
    original = cam.default_layer
    monkeypatch.setattr(cam, "default_layer", lambda *args: traced.append(1) or original(*args))
    adapter = _model("constant")
    target = Target(class_index=1, region="mask", mask=_mask())
    first = explain(image, adapter, "grad_cam", target)
    second = explain(image, adapter, "grad_cam", target)
    assert len(traced) == 1
    assert first.provenance["diagnostics"]["layer"] == second.provenance["diagnostics"]["layer"]
    np.testing.assert_array_equal(first.array, second.array)
    explain(image, _model("constant"), "grad_cam", target)  # another model traces its own
    assert len(traced) == 2


def test_class_names_are_checked_before_the_windows_run(image):
    from MedXAILib.errors import ModelError

    adapter = _model("gaussian", budget="1KB")
    adapter.class_names = ["background", "organ"]  # the network has three channels
    calls = _count_calls(adapter)
    with pytest.raises(ModelError, match="2 class names but returns 3 channels"):
        explain(image, adapter, "saliency", Target(class_index=1, region="mask", mask=_mask()))
    assert len(calls) == 1  # the probe window only


def test_auto_budget_on_the_cpu_is_capped(monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 64 * 2**30)
    assert memory.resolve_budget(None, torch.device("cpu")) == memory.AUTO_CPU_CAP
    monkeypatch.setattr(memory, "free_bytes", lambda device: 2 * 2**30)
    assert memory.resolve_budget(None, torch.device("cpu")) == 2**30
    assert memory.resolve_budget(123, torch.device("cpu")) == 123


def test_auto_budget_on_the_cpu_runs_one_window_per_call(image):
    bound = _model("constant").bind(image.affine, image.shape)
    assert bound.adapter.memory_budget is None
    assert bound.windows_per_call() == memory.AUTO_CPU_WINDOWS == 1


def test_the_window_probe_counts_autograd_memory_under_inference_mode(image):
    """The probe must measure a backward pass's memory even when called inside inference mode."""
    outside = _model("constant").bind(image.affine, image.shape).window_bytes()
    bound = _model("constant").bind(image.affine, image.shape)
    with torch.inference_mode():
        inside = bound.window_bytes()
    assert inside == outside > 16 * int(np.prod(ROI))


def test_windows_per_call_leaves_room_for_the_whole_volume_buffers(image):
    adapter = _model("constant")
    bound = adapter.bind(image.affine, image.shape)
    fixed, window = bound.fixed_bytes(), bound.window_bytes()
    assert fixed >= 4 * int(np.prod(SHAPE)) * (3 + 2 + 3)  # input x3, N, weights, 3 output channels
    adapter.memory_budget = fixed + int(2.5 * window)
    assert bound.windows_per_call() == 2
    adapter.memory_budget = fixed // 2
    assert bound.windows_per_call() == 1
    assert bound.memory_report()["fixed_bytes_estimate"] == fixed


def test_prediction_summary_argmax_matches_torch_with_ties():
    rng = np.random.default_rng(0)
    scores = torch.as_tensor(rng.integers(0, 3, size=(4, 9, 8, 7)).astype(np.float32))  # many ties
    assert torch.equal(channel_argmax(scores), scores.argmax(0))
    last = scores[None].contiguous(memory_format=torch.channels_last_3d)[0]  # channels innermost: the fast path
    assert last.stride(0) == 1 and torch.equal(channel_argmax(last), scores.argmax(0))
    last[2, 1, 1, 1] = float("nan")  # NaN never wins: the loop decides
    assert torch.equal(channel_argmax(last), torch.where(last.isnan(), -float("inf"), last).argmax(0))
    summary = summarise_prediction(scores[None], "segmentation", None)
    assert summary["voxels_per_class"] == torch.bincount(scores.argmax(0).flatten(), minlength=4).tolist()


# ------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_windowed_saliency_on_cuda_equals_autograd_through_monai(image, mode):
    target = Target(class_index=1, region="predicted")
    result = explain(image, _model(mode, budget="1KB", device="cuda"), "saliency", target)
    expected, _ = _direct_gradient(_model(mode), image, target)  # on the CPU
    assert result.provenance["device"].startswith("cuda")
    np.testing.assert_allclose(result.array, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


@pytest.mark.gpu
def test_windowed_grad_cam_on_cuda_equals_the_cpu_map(image):
    target = Target(class_index=1, region="predicted")
    gpu = explain(image, _model("gaussian", device="cuda"), "grad_cam", target, {"relu": False})
    cpu = explain(image, _model("gaussian"), "grad_cam", target, {"relu": False})
    np.testing.assert_allclose(gpu.array, cpu.array, rtol=1e-3, atol=1e-3 * np.abs(cpu.array).max())


@pytest.mark.gpu
def test_mixed_precision_on_cuda_stays_close_to_float32(image):
    target = Target(class_index=1, region="predicted")
    full = explain(image, _model("gaussian", device="cuda"), "saliency", target)
    half = explain(image, _model("gaussian", device="cuda"), "saliency", target, mixed_precision=True)
    assert half.provenance["memory"]["mixed_precision"] is True
    corr = np.corrcoef(full.array.ravel(), half.array.ravel())[0, 1]
    assert corr > 0.99


@pytest.mark.gpu
def test_occlusion_on_cuda_equals_the_cpu_map(image):
    target = Target(class_index=1, region="predicted")
    params = {"window": "16", "stride": "16", "batch_size": 4}
    gpu = explain(image, _model("constant", device="cuda"), "occlusion", target, params)
    cpu = explain(image, _model("constant"), "occlusion", target, params)
    np.testing.assert_allclose(gpu.array, cpu.array, rtol=1e-3, atol=1e-3 * np.abs(cpu.array).max())
