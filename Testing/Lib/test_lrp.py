"""LRP: agreement with Captum, analytic cases, conservation on MONAI networks, and a clean network.

Captum's LRP attaches rules per module, so a small 3D network of modules it handles (Conv3d,
ConvTranspose3d, BatchNorm3d, ReLU, max/average pooling, Linear) with the rules set by hand is an
independent reference. Conservation (sum of input relevance = target score) is exact for bias-free
networks under LRP-epsilon with a tiny epsilon; real networks' biases absorb relevance, which the
diagnostics report.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from MedXAILib import METHODS, ImageVolume, Monitor, Target, explain
from MedXAILib.errors import ModelError, ParameterError
from MedXAILib.methods.lrp import _bias_free, _norm_linearised
from MedXAILib.model import load_model
from MedXAILib.model.convolution import onednn_convolutions
from MedXAILib.params import make_params

from references import relative_difference

LRP_0 = {"rule": "epsilon", "epsilon": 0.0}  # only the 1e-9 stabiliser




def debiased(net: nn.Module) -> nn.Module:
    """A copy with every bias and BatchNorm running mean at zero (and non-trivial running variances)."""
    net = copy.deepcopy(net)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.zero_()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return net


def with_batchnorm_statistics(net: nn.Module) -> nn.Module:
    torch.manual_seed(4)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return net


class SmallNet(nn.Module):
    """Modules Captum's LRP accepts once rules are attached; flatten is functional (no leaf module)."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1, self.p1 = nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2)
        self.c2, self.b2, self.r2 = nn.Conv3d(4, 6, 3, stride=2, padding=1), nn.BatchNorm3d(6), nn.ReLU()
        self.up, self.r3 = nn.ConvTranspose3d(6, 5, 3, stride=2, padding=1, output_padding=1), nn.ReLU()
        self.p2 = nn.AvgPool3d(2)
        self.c4, self.r4, self.gap = nn.Conv3d(5, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.p1(self.r1(self.c1(x)))
        x = self.r2(self.b2(self.c2(x)))
        x = self.p2(self.r3(self.up(x)))
        return self.fc(self.gap(self.r4(self.c4(x))).flatten(1))


@pytest.fixture
def small_net():
    torch.manual_seed(0)
    return with_batchnorm_statistics(SmallNet().eval())


def captum_lrp(net, x, target, conv_rule, dense_rule):
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    ref = copy.deepcopy(net)
    for m in ref.modules():
        if isinstance(m, nn.Linear):
            m.rule = dense_rule()
        elif isinstance(m, nn.modules.conv._ConvNd):
            m.rule = conv_rule()
        elif isinstance(m, (nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.MaxPool3d, nn.BatchNorm3d)):
            m.rule = EpsilonRule()  # Captum's default 1e-9: LRP-0, as MedXAI treats these layers
    # the convolutions in the arithmetic MedXAI's passes use (oneDNN, MedXAILib.model.convolution): the
    # comparison is of the rules, not of two kernels' float32 rounding, which LRP's ratios amplify
    with onednn_convolutions(ref.requires_grad_(False)):
        return LRP(ref).attribute(x.clone().requires_grad_(), target=target)[0].detach().numpy()


def ours(net, volume, target, params):
    adapter = load_model(net, task="classification", in_channels=1, device="cpu")
    return explain(volume, adapter, "lrp", Target(class_index=target), params)


# --- parameters -----------------------------------------------------------------------------------


def test_lrp_is_registered_with_validated_parameters():
    info = METHODS.get("lrp")
    assert info.family == "propagation" and "Bach" in info.reference and "Montavon" in info.reference
    params = make_params(info.params, {"rule": "alpha_beta", "alpha": "2"})
    assert params.alpha == 2.0 and params.epsilon == 0.1 and params.epsilon_relative
    with pytest.raises(ParameterError, match="rule"):
        make_params(info.params, {"rule": "gamma"})
    with pytest.raises(ParameterError, match="alpha"):
        make_params(info.params, {"alpha": 0.5})


# --- independent reference: Captum ----------------------------------------------------------------


@pytest.mark.parametrize("target", [0, 1, 2])
def test_epsilon_rule_matches_captum(small_net, volume, target):
    from captum.attr._utils.lrp_rules import EpsilonRule

    x = torch.as_tensor(volume.array).unsqueeze(0)
    params = {"rule": "epsilon", "epsilon": 0.05, "epsilon_relative": False}
    result = ours(small_net, volume, target, params)
    theirs = captum_lrp(small_net, x, target, lambda: EpsilonRule(0.05), lambda: EpsilonRule(0.05))
    assert relative_difference(result.array, theirs) < 1e-4


@pytest.mark.parametrize("rule", ["z_plus", "alpha_beta", "epsilon_plus"])
def test_z_plus_rules_match_captum_alpha1_beta0_on_non_negative_input(small_net, volume, rule):
    """Captum's Alpha1_Beta0 keeps w+ only, which equals (a w)+ when every layer input is >= 0."""
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

    positive = ImageVolume(np.abs(volume.array), volume.affine)
    x = torch.as_tensor(positive.array).unsqueeze(0)
    params = {"rule": rule, "alpha": 1.0, "epsilon": 0.05, "epsilon_relative": False}
    dense = (lambda: EpsilonRule(0.05)) if rule == "epsilon_plus" else (lambda: Alpha1_Beta0_Rule(True))
    for target in range(3):
        theirs = captum_lrp(small_net, x, target, lambda: Alpha1_Beta0_Rule(set_bias_to_zero=True), dense)
        assert relative_difference(ours(small_net, positive, target, params).array, theirs) < 1e-4


def test_z_plus_splits_negative_inputs_unlike_captum(small_net, volume):
    """On a signed image (CT, z-scored MRI) the first layer's positive contributions include a- w-."""
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule

    x = torch.as_tensor(volume.array).unsqueeze(0)
    rule = lambda: Alpha1_Beta0_Rule(set_bias_to_zero=True)  # noqa: E731
    theirs = captum_lrp(small_net, x, 1, rule, rule)
    result = ours(small_net, volume, 1, {"rule": "z_plus"})
    assert relative_difference(result.array, theirs) > 0.1
    # Both hand the same relevance to the first layer, and both rules conserve it there.
    assert float(result.array.sum()) == pytest.approx(float(theirs.sum()), rel=1e-4)


# --- analytic cases -------------------------------------------------------------------------------


def test_epsilon_to_zero_on_a_linear_bias_free_network_is_input_x_gradient(volume):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1, bias=False), nn.Conv3d(3, 4, 3, stride=2, bias=False),
                        nn.AvgPool3d(2), nn.Flatten(), nn.LazyLinear(2, bias=False)).eval()
    net(torch.as_tensor(volume.array)[None])  # materialise the lazy layer
    result = ours(net, volume, 0, LRP_0)
    reference = explain(volume, load_model(net, task="classification", in_channels=1, device="cpu"),
                        "input_x_gradient", Target(class_index=0)).array
    assert relative_difference(result.array, reference) < 1e-5
    diag = result.provenance["diagnostics"]  # float32 sums of signed terms: 1e-4, not 1e-7
    assert diag["conservation_relative_error"] < 1e-4
    assert diag["relevance_sum"] == pytest.approx(diag["target_score"], rel=1e-4)


def test_epsilon_to_zero_on_a_bias_free_relu_network_is_input_x_gradient(small_net, volume):
    """Ancona et al. (ICLR 2018): LRP-0 equals input x gradient on ReLU networks without biases."""
    net = debiased(small_net)
    result = ours(net, volume, 2, LRP_0)
    reference = explain(volume, load_model(net, task="classification", in_channels=1, device="cpu"),
                        "input_x_gradient", Target(class_index=2)).array
    assert relative_difference(result.array, reference) < 1e-4
    assert result.provenance["diagnostics"]["conservation_relative_error"] < 1e-4


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.5])
def test_alpha_beta_on_one_dense_layer_follows_the_formula(alpha):
    """R_j = (alpha (x_j w_j)+ / sum (x w)+ - beta (x_j w_j)- / sum (x w)-) * z, by hand."""
    torch.manual_seed(1)
    layer = nn.Linear(12, 2)
    x = torch.randn(1, 1, 2, 2, 3)
    net = nn.Sequential(nn.Flatten(), layer).eval()
    image = ImageVolume(x[0].numpy(), np.eye(4))
    result = ours(net, image, 1, {"rule": "alpha_beta", "alpha": alpha}).array.reshape(-1)
    z = float(net(x)[0, 1])
    c = (x.reshape(-1) * layer.weight[1]).detach().numpy()
    pos, neg = np.clip(c, 0, None), np.clip(c, None, 0)
    expected = (alpha * pos / pos.sum() - (alpha - 1) * neg / neg.sum()) * z
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7)
    assert result.sum() == pytest.approx(z, rel=1e-5)  # biases are ignored, so this conserves


def test_epsilon_absorbs_relevance_as_epsilon_grows(small_net, volume):
    sums = [ours(small_net, volume, 1, {"epsilon": e}).provenance["diagnostics"]["relevance_sum"]
            for e in (1e-6, 0.1, 1.0, 10.0)]
    assert all(abs(b) < abs(a) for a, b in zip(sums[1:], sums[2:]))


# --- the layers MONAI networks are made of --------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: nn.GroupNorm(2, 4), lambda: nn.InstanceNorm3d(4, affine=True), lambda: nn.InstanceNorm3d(4),
    lambda: nn.LayerNorm([5, 6, 7]), lambda: nn.BatchNorm3d(4).train(), lambda: nn.RMSNorm([6, 7]),
], ids=["group", "instance-affine", "instance", "layer", "batch-statistics", "rms"])
def test_normalisation_linearisation_reproduces_the_layer(make):
    torch.manual_seed(2)
    module = make()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    x = torch.randn(2, 4, 5, 6, 7) * 3 + 1
    np.testing.assert_allclose(_norm_linearised(module, x).detach(), module(x).detach(), rtol=1e-4, atol=1e-5)


def test_transposed_convolution_split_reproduces_the_layer():
    torch.manual_seed(2)
    module = nn.ConvTranspose3d(3, 2, 3, stride=2, padding=1, output_padding=1, groups=1)
    x = torch.randn(1, 3, 4, 5, 3)
    out = module(x, output_size=[8, 10, 6])
    np.testing.assert_allclose(_bias_free(module, x, module.weight, out.shape).detach(),
                               (out - module.bias.view(1, -1, 1, 1, 1)).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", [nn.ELU, nn.SiLU, nn.GELU, nn.Tanh])
def test_relevance_passes_other_activations_unchanged(volume, activation):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1, bias=False), nn.GroupNorm(2, 4, affine=False),
                        activation(), nn.Conv3d(4, 4, 3, stride=2, bias=False), activation(),
                        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2, bias=False)).eval()
    result = ours(net, volume, 0, LRP_0)
    assert result.provenance["diagnostics"]["conservation_relative_error"] < 1e-4
    assert "warnings" not in result.provenance["diagnostics"]


def test_unsupported_layers_are_named_in_a_warning(volume):
    net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Softplus(), nn.AdaptiveMaxPool3d(1), nn.Flatten(),
                        nn.Linear(2, 2)).eval()
    diag = ours(net, volume, 0, {}).provenance["diagnostics"]
    assert any("Softplus" in w for w in diag["warnings"])


# --- MONAI architectures --------------------------------------------------------------------------


def _monai(name):
    from monai.networks.nets import BasicUNet, DenseNet121, ResNet, SegResNet, UNet

    torch.manual_seed(0)
    nets = {
        "UNet": (lambda: UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1), 16,
                 "segmentation"),
        "BasicUNet": (lambda: BasicUNet(3, 1, 3, features=(4, 4, 8, 8, 16, 4)), 32, "segmentation"),
        "SegResNet": (lambda: SegResNet(3, init_filters=4, in_channels=1, out_channels=3, blocks_down=(1, 2),
                                        blocks_up=(1,), norm=("group", {"num_groups": 2})), 16,
                      "segmentation"),
        "DenseNet121": (lambda: DenseNet121(spatial_dims=3, in_channels=1, out_channels=3, init_features=4,
                                            growth_rate=4, block_config=(2, 2)), 16, "classification"),
        "ResNet10": (lambda: ResNet("basic", [1, 1, 1, 1], [4, 8, 8, 16], spatial_dims=3, n_input_channels=1,
                                    num_classes=3), 16, "classification"),
    }
    make, size, task = nets[name]
    return with_batchnorm_statistics(make().eval()), size, task


MONAI_NETS = [pytest.param(n, marks=pytest.mark.slow) if n == "BasicUNet" else n
              for n in ("UNet", "BasicUNet", "SegResNet", "DenseNet121", "ResNet10")]


def _run(net, size, task, params):
    rng = np.random.default_rng(0)
    image = ImageVolume(rng.normal(size=(1, size, size, size // 2)).astype(np.float32), np.eye(4))
    target = Target(class_index=1) if task == "classification" else \
        Target(class_index=1, region="box", box=(3, 3, 2, 11, 11, 6))
    adapter = load_model(net, task=task, in_channels=1, device="cpu")
    return image, explain(image, adapter, "lrp", target, params)


@pytest.mark.parametrize("name", MONAI_NETS)
def test_monai_networks_conserve_relevance_without_biases(name):
    net, size, task = _monai(name)
    image, result = _run(debiased(net), size, task, LRP_0)
    assert result.array.shape == image.array.shape and np.all(np.isfinite(result.array))
    assert result.provenance["diagnostics"]["conservation_relative_error"] < 1e-4


@pytest.mark.parametrize("rule", ["epsilon", "alpha_beta", "z_plus", "epsilon_plus"])
@pytest.mark.parametrize("name", MONAI_NETS)
def test_every_rule_runs_on_monai_networks_and_leaves_them_untouched(name, rule):
    net, size, task = _monai(name)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    types = [type(m) for m in net.modules()]
    image, result = _run(net, size, task, {"rule": rule, "alpha": 2.0})
    diag = result.provenance["diagnostics"]
    assert result.array.shape == image.array.shape and np.all(np.isfinite(result.array))
    assert np.abs(result.array).sum() > 0 and np.isfinite(diag["conservation_error"])
    assert diag["layers"].get("alpha_beta" if rule != "epsilon" else "epsilon", 0) > 0
    assert [type(m) for m in net.modules()] == types
    after = net.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())


# --- clean-up and refusals ------------------------------------------------------------------------


def test_hooks_are_removed_when_propagation_fails_midway(segmenter, volume):
    network = segmenter.network
    state = {k: v.clone() for k, v in network.state_dict().items()}

    def fail_while_hooked(fraction, message):
        if "propagating" in message:
            raise RuntimeError("simulated failure")

    with pytest.raises(RuntimeError, match="simulated failure"):
        explain(volume, segmenter, "lrp", Target(class_index=1, region="predicted"),
                monitor=Monitor(fail_while_hooked))
    assert not any(m._forward_hooks for m in network.modules())
    assert all(torch.equal(v, state[k]) for k, v in network.state_dict().items())
    again = explain(volume, segmenter, "lrp", Target(class_index=1, region="predicted"))
    assert np.all(np.isfinite(again.array))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_and_layerless_models_are_refused(small_net, volume):
    scripted = torch.jit.script(small_net)
    with pytest.raises(ModelError, match="TorchScript"):
        ours(scripted, volume, 0, {})

    class Functional(nn.Module):
        def forward(self, x):
            return torch.stack([x.sum((1, 2, 3, 4)), -x.sum((1, 2, 3, 4))], 1)

    with pytest.raises(ModelError, match="no layer"):
        ours(Functional(), volume, 0, {})


def test_probability_targets_carry_a_warning(classifier, volume):
    result = explain(volume, classifier, "lrp", Target(class_index=1, score="probability"))
    assert any("logits" in w for w in result.provenance["diagnostics"]["warnings"])
