"""SmoothGrad/VarGrad, GradientSHAP, guided backpropagation and DeepLIFT.

Agreement with Captum, to 1e-4 relative, on one function: the bound model followed by the resolved
target scorer, wrapped as an ``nn.Module`` that also holds the network (Captum hooks its modules).

Captum draws its own random numbers, so for the stochastic methods the tests redraw MedXAI's noise
from the seed, in the order each method's docstring documents, and hand the same draws to Captum by
monkeypatching its sampling points: ``NoiseTunnel._add_noise_to_input`` (Gaussian noise),
``numpy.random.choice`` (which baseline) and ``numpy.random.uniform`` (the point on the path).

Guided backpropagation and DeepLIFT are compared on ReLU networks (Captum hooks ``nn.ReLU`` only,
and its DeepLift treats PReLU and instance norm as linear): the DenseNet121 classifier fixture
(ReLU, batch norm, max pooling) and UNets built with ``act="RELU"``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from captum.attr import DeepLift, GradientShap, GuidedBackprop, InputXGradient, NoiseTunnel, Saliency

from MedXAILib import Target, explain
from MedXAILib.errors import ModelError
from MedXAILib.model import load_model
from MedXAILib.scoring import resolve_target

from references import linear_model, masked_target, relative_difference






class Scored(torch.nn.Module):
    """Bound model + resolved target scorer, the function MedXAI attributes, as one module."""

    def __init__(self, adapter, volume, target):
        super().__init__()
        self.network = adapter.network  # registered so that Captum's model.apply reaches the layers
        self.bound = adapter.bind(volume.affine, volume.shape)
        self.x = torch.as_tensor(volume.array).unsqueeze(0)
        with torch.no_grad():
            self.scorer = resolve_target(target, self.bound(self.x), adapter.task)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.scorer(self.bound(batch))


def relu_unet(norm: str = "INSTANCE"):
    from monai.networks.nets import UNet

    torch.manual_seed(2)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,),
               num_res_units=1, act="RELU", norm=norm)
    for m in net.modules():  # non-trivial running statistics, so batch norm is a real affine map
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return load_model(net, task="segmentation", in_channels=1, device="cpu")


def model_case(request, volume, segmenter):
    """(adapter, target, Scored) for the conftest classifier (class 2) when the fixture's parameter names
    a classifier, else for `segmenter()` with the masked target."""
    if request.param.endswith("classifier"):
        adapter, target = request.getfixturevalue("classifier"), Target(class_index=2)
    else:
        adapter, target = segmenter(), masked_target(volume)
    return adapter, target, Scored(adapter, volume, target)


@pytest.fixture(params=["classifier", "segmenter-masked"])
def case(request, volume):
    """Stochastic methods: the conftest models as they are (PReLU and instance norm in the UNet)."""
    return model_case(request, volume, lambda: request.getfixturevalue("segmenter"))


@pytest.fixture(params=["densenet-classifier", "relu-unet-masked"])
def relu_case(request, volume):
    return model_case(request, volume, lambda: relu_unet("INSTANCE"))


@pytest.fixture(params=["densenet-classifier", "relu-batchnorm-unet-masked"])
def deeplift_case(request, volume):
    return model_case(request, volume, lambda: relu_unet("BATCH"))


def give_captum_noise(monkeypatch, noise: torch.Tensor) -> None:
    monkeypatch.setattr(
        NoiseTunnel, "_add_noise_to_input",
        staticmethod(lambda input, stdev, n: input.repeat_interleave(n, dim=0) + noise),
    )


def batch_sizes(n: int, size: int) -> list[int]:
    return [min(size, n - start) for start in range(0, n, size)]


# ------------------------------------------------------------------------------------------------
# SmoothGrad / VarGrad


def smoothgrad_noise(x, n, batch_size, level, seed):
    """MedXAI's draws: one (batch, C, I, J, K) standard-normal block per batch, times level x range."""
    generator = torch.Generator().manual_seed(seed)
    std = level * (x.amax(dim=(2, 3, 4), keepdim=True) - x.amin(dim=(2, 3, 4), keepdim=True))
    blocks = [torch.randn((b, *x.shape[1:]), generator=generator) for b in batch_sizes(n, batch_size)]
    return torch.cat(blocks) * std, float(std.flatten()[0])


def smoothgrad_with_captum_noise(case, volume, monkeypatch, seed, **params):
    """Our SmoothGrad map with `params` (n_samples, noise_level and batch_size among them), with Captum's
    NoiseTunnel set to add the same noise. Returns the map, the Captum model and the noise's std."""
    adapter, target, model = case
    ours = explain(volume, adapter, "smoothgrad", target, params, seed=seed).array
    n, size, level = params["n_samples"], params["batch_size"], params["noise_level"]
    noise, std = smoothgrad_noise(model.x, n, size, level, seed)
    give_captum_noise(monkeypatch, noise)
    return ours, model, std


@pytest.mark.parametrize("variant, nt_type", [("plain", "smoothgrad"), ("squared", "smoothgrad_sq"),
                                               ("vargrad", "vargrad")])
def test_smoothgrad_matches_captum_noise_tunnel(case, volume, monkeypatch, variant, nt_type):
    n = 6
    ours, model, std = smoothgrad_with_captum_noise(case, volume, monkeypatch, 3, variant=variant,
                                                    n_samples=n, noise_level=0.15, batch_size=4)
    theirs = NoiseTunnel(Saliency(model)).attribute(model.x, nt_type=nt_type, nt_samples=n, stdevs=std,
                                                    abs=False)
    assert relative_difference(ours, theirs[0].detach().numpy()) < 1e-4


def test_smoothgrad_times_input_matches_captum_noise_tunnel(case, volume, monkeypatch):
    n = 5
    ours, model, std = smoothgrad_with_captum_noise(case, volume, monkeypatch, 8, n_samples=n,
                                                    noise_level=0.1, batch_size=5, multiply_by_input=True)
    theirs = NoiseTunnel(InputXGradient(model)).attribute(model.x, nt_type="smoothgrad", nt_samples=n,
                                                          stdevs=std)
    assert relative_difference(ours, theirs[0].detach().numpy()) < 1e-4


def test_squared_and_vargrad_are_non_negative_and_consistent(segmenter, volume):
    target = masked_target(volume)
    maps = {
        v: explain(volume, segmenter, "smoothgrad", target, {"variant": v, "n_samples": 7, "batch_size": 3},
                   seed=5).array
        for v in ("plain", "squared", "vargrad")
    }
    assert maps["squared"].min() >= 0 and maps["vargrad"].min() >= 0
    # E[g^2] = Var[g] + E[g]^2, sample by sample of the same draws
    np.testing.assert_allclose(maps["squared"], maps["vargrad"] + maps["plain"] ** 2,
                               rtol=1e-4, atol=1e-6 * maps["squared"].max())


def test_without_noise_smoothgrad_is_the_gradient_and_vargrad_vanishes(classifier, volume):
    target = Target(class_index=1)
    plain = explain(volume, classifier, "smoothgrad", target, {"noise_level": 0.0, "n_samples": 3}).array
    saliency = explain(volume, classifier, "saliency", target).array
    np.testing.assert_allclose(plain, saliency, rtol=1e-5, atol=1e-7 * np.abs(saliency).max())
    var = explain(volume, classifier, "smoothgrad", target, {"noise_level": 0.0, "n_samples": 3,
                                                             "variant": "vargrad"}).array
    assert np.abs(var).max() <= 1e-10 * np.abs(saliency).max() ** 2


def test_noise_width_is_a_fraction_of_each_channel_range(two_channel_volume):
    """F = sum(x^2): the gradient 2x varies only with the noise of its own voxel, so VarGrad is
    about 4 (noise_level * range_c)^2 per channel, and exactly 0 on a constant channel."""
    array = two_channel_volume.array.copy()
    array[1] = 2.0
    image = type(two_channel_volume)(array, two_channel_volume.affine)

    class Square(torch.nn.Module):
        def forward(self, x):
            s = (x**2).flatten(1).sum(1)
            return torch.stack([s, torch.zeros_like(s)], dim=1)

    params = {"variant": "vargrad", "n_samples": 64, "noise_level": 0.1, "batch_size": 16}
    var = explain(image, Square(), "smoothgrad", Target(class_index=0), params).array
    assert np.all(var[1] == 0)
    expected = 4 * (0.1 * (array[0].max() - array[0].min())) ** 2 * 63 / 64  # population variance
    assert var[0].mean() == pytest.approx(expected, rel=0.03)


# ------------------------------------------------------------------------------------------------
# GradientSHAP


def test_gradient_shap_matches_captum(case, volume, monkeypatch):
    adapter, target, model = case
    x = model.x
    n, size, seed, b_noise, x_noise = 7, 3, 4, 0.2, 0.05
    params = {"n_samples": n, "batch_size": size, "baseline": "min", "baseline_noise": b_noise,
              "input_noise": x_noise}
    ours = explain(volume, adapter, "gradient_shap", target, params, seed=seed).array

    # MedXAI's draws, batch by batch: alphas, then baseline noise, then input noise
    generator = torch.Generator().manual_seed(seed)
    spread = x.amax() - x.amin()
    alphas, baselines, noise = [], [], []
    for b in batch_sizes(n, size):
        alphas.append(torch.rand(b, generator=generator))
        baselines.append(x.amin() + b_noise * spread * torch.randn((b, *x.shape[1:]), generator=generator))
        noise.append(x_noise * spread * torch.randn((b, *x.shape[1:]), generator=generator))
    give_captum_noise(monkeypatch, torch.cat(noise))
    monkeypatch.setattr(np.random, "choice", lambda count, size: np.arange(size))
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size: torch.cat(alphas).double().numpy())
    theirs = GradientShap(model).attribute(x, baselines=torch.cat(baselines), n_samples=n,
                                           stdevs=float(x_noise * spread))
    assert relative_difference(ours, theirs[0].detach().numpy()) < 1e-4


def test_gradient_shap_on_a_linear_model_is_exact(volume):
    """For F(x) = sum(w * x), every sample gives (x - b) * w whatever the point on the path."""
    model, weights = linear_model(volume.shape)
    result = explain(volume, model, "gradient_shap", Target(class_index=0),
                     {"baseline": "zeros", "baseline_noise": 0.0, "n_samples": 5})
    expected = (weights[0] * torch.as_tensor(volume.array)).numpy()
    np.testing.assert_allclose(result.array, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Guided backpropagation


def test_guided_backprop_matches_captum(relu_case, volume):
    adapter, target, model = relu_case
    ours = explain(volume, adapter, "guided_backprop", target)
    theirs = GuidedBackprop(model).attribute(model.x.clone())[0].detach().numpy()
    assert relative_difference(ours.array, theirs) < 1e-4
    assert ours.provenance["diagnostics"]["modified_calls"]["ReLU"] > 0


class TwoUnits(torch.nn.Module):
    """Per voxel: s = 2 act(x) - 3 act(-x), summed; logits (s, 0).

    The gradient reaches a voxel with x < 0 only through the second unit, whose output gradient
    (-3) is negative: guided backpropagation passes nothing there and 2 where x > 0.
    """

    def __init__(self, act: torch.nn.Module):
        super().__init__()
        self.split = torch.nn.Conv3d(1, 2, 1, bias=False)
        self.act = act
        self.merge = torch.nn.Conv3d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.split.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1))
            self.merge.weight.copy_(torch.tensor([2.0, -3.0]).view(1, 2, 1, 1, 1))

    def forward(self, x):
        s = self.merge(self.act(self.split(x))).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


@pytest.mark.parametrize("act", [torch.nn.ReLU(), torch.nn.ReLU(inplace=True), torch.nn.LeakyReLU(0.1),
                                 torch.nn.PReLU(init=0.25)], ids=["relu", "relu-inplace", "leaky", "prelu"])
def test_guided_backprop_blocks_negative_signal_and_negative_inputs(volume, act):
    result = explain(volume, TwoUnits(act), "guided_backprop", Target(class_index=0))
    x = volume.array
    np.testing.assert_array_equal(result.array, np.where(x > 0, 2.0, 0.0).astype(np.float32))
    plain = explain(volume, TwoUnits(act), "saliency", Target(class_index=0)).array
    assert np.all(plain[x < 0] > 0)  # the ordinary gradient does flow there


def test_in_place_activations_run_out_of_place_for_the_rules_only(volume):
    """torch's in-place activations are switched out of place while the rules run (no copy of every
    activation), with the same map, and are in place again afterwards."""
    inplace = TwoUnits(torch.nn.ReLU(inplace=True))
    plain = TwoUnits(torch.nn.ReLU())
    plain.load_state_dict(inplace.state_dict())
    for method in ("guided_backprop", "deeplift"):
        np.testing.assert_array_equal(explain(volume, inplace, method, Target(class_index=0)).array,
                                      explain(volume, plain, method, Target(class_index=0)).array)
    assert all(m.inplace for m in inplace.modules() if isinstance(m, torch.nn.ReLU))


def test_modified_backprop_refuses_torchscript(volume):
    scripted = torch.jit.script(TwoUnits(torch.nn.ReLU()).eval())
    for method in ("guided_backprop", "deeplift"):
        with pytest.raises(ModelError, match="TorchScript"):
            explain(volume, scripted, method, Target(class_index=0))


def test_network_without_activation_modules_is_a_plain_gradient_with_a_caveat(volume):
    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x)).mean(dim=(2, 3, 4))

    net = Functional()
    guided = explain(volume, net, "guided_backprop", Target(class_index=0))
    plain = explain(volume, net, "saliency", Target(class_index=0))
    np.testing.assert_array_equal(guided.array, plain.array)
    assert "activations called as functions" in guided.provenance["diagnostics"]["warnings"][0]


# ------------------------------------------------------------------------------------------------
# DeepLIFT


def captum_deeplift(model, baseline):
    x = model.x
    reference = torch.zeros_like(x) if baseline == "zeros" else x.amin().expand_as(x).clone()
    attribution, delta = DeepLift(model, eps=1e-10).attribute(x.clone(), baselines=reference,
                                                              return_convergence_delta=True)
    return attribution[0].detach().numpy(), abs(float(delta))


def assert_deeplift_agrees(adapter, volume, target, baseline):
    ours = explain(volume, adapter, "deeplift", target, {"baseline": baseline, "eps": 1e-10})
    theirs, delta = captum_deeplift(Scored(adapter, volume, target), baseline)
    assert relative_difference(ours.array, theirs) < 1e-4
    diag = ours.provenance["diagnostics"]
    gap = abs(diag["score_input_minus_baseline"])
    assert diag["completeness_error"] == pytest.approx(delta, abs=1e-4 * gap)


@pytest.mark.parametrize("baseline", ["zeros", "min"])
def test_deeplift_matches_captum_on_a_relu_batchnorm_unet(volume, baseline):
    assert_deeplift_agrees(relu_unet("BATCH"), volume, masked_target(volume), baseline)


def test_deeplift_matches_captum_on_the_densenet_classifier(classifier, volume):
    """Zero baseline only. Captum hooks a module's input on the very tensor where the previous
    module's output hook sits, and tensor hooks run in registration order: where one hooked module
    feeds another (the DenseNet stem's relu0 -> pool0) the ReLU reads the max pool's ordinary
    gradient instead of its DeepLIFT multipliers. From zeros the stem's baseline activations are 0
    and the two coincide; from another baseline Captum misses summation-to-delta (by ~28% on this
    model with the 'min' baseline) while MedXAI does not (completeness test below)."""
    assert_deeplift_agrees(classifier, volume, Target(class_index=2), "zeros")


class Pooled(torch.nn.Module):
    """ReLU -> overlapping max pool (3/2, as in DenseNet) -> ReLU, with a linear layer between
    hooked modules so that every one of Captum's rules takes effect."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.layers = torch.nn.Sequential(
            torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 4, 1),
            torch.nn.MaxPool3d(3, 2, 1), torch.nn.Conv3d(4, 4, 1), torch.nn.ReLU(inplace=True),
            torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
        )

    def forward(self, x):
        return self.layers(x)


def summing_max_unpool3d(values, indices, kernel_size, stride=None, padding=0, output_size=None):
    """max_unpool that adds where windows share an argmax (PyTorch's assigns: see DeepLiftRecorder)."""
    out = values.new_zeros(*output_size[:2], math.prod(output_size[2:]))
    return out.scatter_add_(2, indices.flatten(2), values.flatten(2)).view(*output_size)


@pytest.mark.parametrize("baseline", ["zeros", "min"])
def test_deeplift_max_pool_rule_matches_captum_with_overlaps_summed(volume, monkeypatch, baseline):
    """Captum routes the max-pool contributions with max_unpool3d, which overwrites where windows
    overlap and share an argmax; the comparison lets it add them up, as MedXAI does."""
    monkeypatch.setattr(torch.nn.functional, "max_unpool3d", summing_max_unpool3d)
    adapter = load_model(Pooled(), task="classification", in_channels=1, device="cpu")
    assert_deeplift_agrees(adapter, volume, Target(class_index=0), baseline)


def test_deeplift_sums_to_the_score_difference_on_relu_networks(deeplift_case, volume):
    adapter, target, _ = deeplift_case
    for baseline in ("zeros", "min", "blur"):
        result = explain(volume, adapter, "deeplift", target, {"baseline": baseline})
        diag = result.provenance["diagnostics"]
        assert diag["completeness_relative_error"] < 1e-4, baseline
        total = float(result.array.astype(np.float64).sum())
        assert total == pytest.approx(diag["score_input_minus_baseline"], rel=1e-4)
        assert "warnings" not in diag


def test_deeplift_on_instance_norm_records_and_explains_the_completeness_gap(segmenter, volume):
    """MONAI's default UNet: PReLU gets the Rescale rule, instance norm only its local gradient."""
    result = explain(volume, segmenter, "deeplift", masked_target(volume))
    diag = result.provenance["diagnostics"]
    assert diag["rescaled_calls"] == {"PReLU": 3}
    assert diag["completeness_relative_error"] > 0.05
    assert "InstanceNorm3d" in diag["warnings"][0] and "summation-to-delta" in diag["warnings"][0]


def test_deeplift_pairs_calls_under_sliding_window_inference(volume):
    """Windows of the input and of the baseline are paired call by call, so summation-to-delta
    holds through sliding-window inference (which runs the network many times, blending linearly)."""
    adapter = relu_unet("BATCH")
    adapter.roi_size, adapter.sw_batch_size = (12, 12, 8), 3
    result = explain(volume, adapter, "deeplift", masked_target(volume), {"baseline": "min"})
    diag = result.provenance["diagnostics"]
    assert diag["rescaled_calls"]["ReLU"] > 3  # several windows, several calls per module
    assert diag["completeness_relative_error"] < 1e-4
