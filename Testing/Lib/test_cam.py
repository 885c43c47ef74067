"""CAM family: agreement with Captum and MONAI, analytic cases, layer choice, sliding windows, CLI.

Grad-CAM is checked against Captum's ``LayerGradCam`` and MONAI's ``GradCAM``, Grad-CAM++ against
MONAI's ``GradCAMpp`` (variant "monai") and against the paper's eq. 19 written out here (variant
"paper"). HiResCAM, XGrad-CAM, LayerCAM and Score-CAM have no 3D reference implementation, so they
are checked on networks whose CAMs can be written down by hand.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedXAILib import ImageVolume, ParameterError, Target, explain
from MedXAILib.errors import ModelError
from MedXAILib.methods.layers import candidate_layers, default_layer, default_layers
from MedXAILib.model import Preprocessing, load_model

from conftest import oblique_affine

from references import reference_function, relative_difference

GRADIENT_CAMS = ("grad_cam", "grad_cam_pp", "hires_cam", "xgrad_cam", "layer_cam")
ALL_CAMS = GRADIENT_CAMS + ("score_cam",)




def hook_count(network: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in network.modules())




class MaskedScores(torch.nn.Module):
    """A segmenter seen as a classifier: class scores summed (or averaged) over a fixed mask."""

    def __init__(self, net, mask, mean=False):
        super().__init__()
        self.net = net
        self.register_buffer("mask", torch.as_tensor(mask, dtype=torch.float32))
        self.mean = mean

    def forward(self, x):
        total = (self.net(x) * self.mask).flatten(2).sum(-1)
        return total / self.mask.sum() if self.mean else total


def masked_target(volume, reduction="sum"):
    """The shared box mask as a target with its reduction, plus the mask itself."""
    mask = np.zeros(volume.shape, bool)
    mask[4:12, 3:10, 2:8] = True
    return Target(class_index=1, region="mask", mask=mask, reduction=reduction), mask


def trainable_copy(network):
    """A copy with parameter gradients on, as MONAI's CAMs expect (the adapter freezes its network)."""
    net = copy.deepcopy(network)
    for p in net.parameters():
        p.requires_grad_(True)
    return net




# ------------------------------------------------------------------------------------------------
# Independent references: Captum and MONAI


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layer", ["features", "features.denseblock2", "features.transition1"])
def test_grad_cam_matches_captum_on_a_densenet(classifier, volume, layer, relu):
    from captum.attr import LayerAttribution, LayerGradCam

    target = Target(class_index=0)
    forward, x = reference_function(classifier, volume, target)
    module = dict(classifier.network.named_modules())[layer]
    ours = explain(volume, classifier, "grad_cam", target, {"layer": layer, "relu": relu})
    theirs = LayerGradCam(forward, module).attribute(x, relu_attributions=relu)
    theirs = LayerAttribution.interpolate(theirs, volume.shape, interpolate_mode="trilinear")
    assert relative_difference(ours.array, theirs[0].detach().numpy()) < 1e-4


@pytest.mark.parametrize("layer", ["model.1", "model.2.0", "model.1.submodule"])
def test_grad_cam_matches_captum_on_a_unet_with_a_masked_target(segmenter, volume, layer):
    from captum.attr import LayerAttribution, LayerGradCam

    target, _ = masked_target(volume)
    forward, x = reference_function(segmenter, volume, target)
    module = dict(segmenter.network.named_modules())[layer]
    ours = explain(volume, segmenter, "grad_cam", target, {"layer": layer, "relu": False}).array
    theirs = LayerGradCam(forward, module).attribute(x, relu_attributions=False)
    theirs = LayerAttribution.interpolate(theirs, volume.shape, interpolate_mode="trilinear")
    assert relative_difference(ours, theirs[0].detach().numpy()) < 1e-4


def test_grad_cam_and_grad_cam_pp_match_monai_on_a_densenet(classifier, volume):
    from monai.visualize import GradCAM, GradCAMpp

    x = torch.as_tensor(volume.array).unsqueeze(0)
    layer = "class_layers.relu"  # MONAI's documented choice for DenseNet (an in-place ReLU)
    raw = dict(postprocessing=lambda m: m)
    for cls, method, params in [(GradCAM, "grad_cam", {}),
                                (GradCAMpp, "grad_cam_pp", {"variant": "monai", "exp_score": True})]:
        net = trainable_copy(classifier.network)  # MONAI also switches the hooked ReLU to out-of-place
        theirs = cls(nn_module=net, target_layers=layer, **raw)(x, class_idx=0)[0].detach().numpy()
        ours = explain(volume, classifier, method, Target(class_index=0), {"layer": layer, **params}).array
        assert relative_difference(ours, theirs) < 1e-4, method


@pytest.mark.parametrize("layer", ["model.1", "model.2.0"])
def test_grad_cam_and_grad_cam_pp_match_monai_on_a_unet_with_a_masked_target(segmenter, volume, layer):
    """MONAI only scores a class summed over the whole output: a wrapper applies the mask for it."""
    from monai.visualize import GradCAM, GradCAMpp

    x = torch.as_tensor(volume.array).unsqueeze(0)
    raw = dict(postprocessing=lambda m: m)
    target, mask = masked_target(volume)
    wrapped = MaskedScores(trainable_copy(segmenter.network), mask)
    theirs = GradCAM(nn_module=wrapped, target_layers=f"net.{layer}", **raw)(x, class_idx=1)[0]
    theirs = theirs.detach().numpy()
    ours = explain(volume, segmenter, "grad_cam", target, {"layer": layer, "relu": True}).array
    assert relative_difference(ours, theirs) < 1e-4
    # exp(score) of a region sum overflows: Grad-CAM++ with exp_score is compared on the region mean
    target, mask = masked_target(volume, reduction="mean")
    wrapped = MaskedScores(trainable_copy(segmenter.network), mask, mean=True)
    theirs = GradCAMpp(nn_module=wrapped, target_layers=f"net.{layer}", **raw)(x, class_idx=1)[0]
    theirs = theirs.detach().numpy()
    ours = explain(volume, segmenter, "grad_cam_pp", target,
                   {"layer": layer, "variant": "monai", "exp_score": True}).array
    assert relative_difference(ours, theirs) < 1e-4


def _layer_and_gradient(adapter, volume, target, layer):
    """Activations and d score / d activations of `layer`, by plain torch hooks (no MedXAI code)."""
    forward, x = reference_function(adapter, volume, target)
    module = dict(adapter.network.named_modules())[layer]
    saved = {}

    def keep(mod, args, out):
        saved["a"] = out
        out.retain_grad()

    handle = module.register_forward_hook(keep)
    try:
        score = forward(x.clone().requires_grad_())[0]
        score.backward()
    finally:
        handle.remove()
    return saved["a"].detach(), saved["a"].grad.detach(), score.detach()


def test_grad_cam_pp_paper_variant_follows_eq_19(segmenter, volume):
    target, _ = masked_target(volume)
    a, g, _ = _layer_and_gradient(segmenter, volume, target, "model.1")
    total = a.sum(dim=(2, 3, 4), keepdim=True)
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + total * g**3), torch.zeros_like(g))
    weights = (alpha * F.relu(g)).sum(dim=(2, 3, 4), keepdim=True)
    expected = F.interpolate((weights * a).sum(1, keepdim=True), size=volume.shape, mode="trilinear")
    ours = explain(volume, segmenter, "grad_cam_pp", target, {"layer": "model.1", "relu": False}).array
    assert relative_difference(ours, expected[0].numpy()) < 1e-4


def test_grad_cam_pp_exp_score_scales_the_map_by_exp_score(classifier, volume):
    target = Target(class_index=0)
    plain = explain(volume, classifier, "grad_cam_pp", target).array
    scaled = explain(volume, classifier, "grad_cam_pp", target, {"exp_score": True}).array
    with torch.no_grad():
        logit = float(classifier.network(torch.as_tensor(volume.array)[None])[0, 0])
    np.testing.assert_allclose(scaled, plain * np.exp(logit), rtol=1e-4, atol=1e-7)


def test_grad_cam_pp_exp_score_overflow_is_a_clear_error(segmenter, volume):
    with pytest.raises(ParameterError, match="exp_score=false"):
        explain(volume, segmenter, "grad_cam_pp", Target(class_index=0, region="class"), {"exp_score": True})


# ------------------------------------------------------------------------------------------------
# Analytic cases


class LinearMap(torch.nn.Module):
    """conv (1 -> K, no bias) -> score = sum_v W(v) sum_k v_k A_k(v): gradient v_k W(v), exactly."""

    def __init__(self, weight_map, v=(1.0, -0.5, 2.0)):
        super().__init__()
        torch.manual_seed(5)
        self.conv = torch.nn.Conv3d(1, len(v), 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.abs_()  # positive weights: activations >= 0 on a positive input
        self.register_buffer("v", torch.tensor(v))
        self.register_buffer("w", torch.as_tensor(weight_map, dtype=torch.float32))

    def forward(self, x):
        a = self.conv(x)
        s = (a * self.w).flatten(2).sum(-1) @ self.v
        return torch.stack([s, -s], dim=1)


@pytest.fixture
def positive_volume():
    rng = np.random.default_rng(2)
    array = rng.uniform(0.1, 1.0, size=(1, 12, 10, 8)).astype(np.float32)
    return ImageVolume(array, np.diag([1.5, 1.0, 2.0, 1.0]))


@pytest.mark.parametrize("spatially_constant", [True, False])
def test_gradient_cams_equal_their_definitions_on_a_linear_layer_head(positive_volume, spatially_constant):
    shape = positive_volume.shape
    w = np.full(shape, 0.3, np.float32) if spatially_constant else \
        np.random.default_rng(7).uniform(-1, 1, size=shape).astype(np.float32)
    net = LinearMap(w)
    with torch.no_grad():
        a = net.conv(torch.as_tensor(positive_volume.array)[None])[0].double()  # (K, I, J, K)
    g = net.v.double().view(-1, 1, 1, 1) * torch.as_tensor(w).double()  # d score / d A, exactly
    dims = (1, 2, 3)
    total = a.sum(dim=dims, keepdim=True)
    expected = {
        "grad_cam": (g.mean(dim=dims, keepdim=True) * a).sum(0),
        "hires_cam": (g * a).sum(0),
        "xgrad_cam": (((g * a).sum(dim=dims, keepdim=True) / total) * a).sum(0),
        "layer_cam": (F.relu(g) * a).sum(0),
        "grad_cam_pp": ((torch.where(g != 0, g**2 / (2 * g**2 + total * g**3), torch.zeros_like(g))
                         * F.relu(g)).sum(dim=dims, keepdim=True) * a).sum(0),
    }
    for method, hand in expected.items():
        result = explain(positive_volume, net, method, Target(class_index=0),
                         {"layer": "conv", "relu": False})
        assert result.provenance["diagnostics"]["layer"] == "conv"
        assert relative_difference(result.array[0], hand.numpy()) < 1e-4, method
    if spatially_constant:  # HiResCAM == Grad-CAM == XGrad-CAM when the gradient does not vary in space
        np.testing.assert_allclose(expected["hires_cam"], expected["grad_cam"], rtol=1e-6)
        np.testing.assert_allclose(expected["xgrad_cam"], expected["grad_cam"], rtol=1e-6)


@pytest.mark.parametrize("method", ALL_CAMS)
def test_maps_are_non_negative_after_the_relu(classifier, volume, method):
    result = explain(volume, classifier, method, Target(class_index=0))
    assert result.array.min() >= 0 and result.array.max() > 0


def test_no_positive_evidence_gives_an_empty_map_with_a_warning(positive_volume):
    net = LinearMap(np.full(positive_volume.shape, 0.3, np.float32), v=(1.0, 0.5, 2.0))
    # positive activations and weights: every voxel supports class 0 and opposes class 1 (= -score)
    plus = explain(positive_volume, net, "hires_cam", Target(class_index=0), {"layer": "conv"})
    minus = explain(positive_volume, net, "hires_cam", Target(class_index=1), {"layer": "conv"})
    signed = explain(positive_volume, net, "hires_cam", Target(class_index=1), {"layer": "conv", "relu": False})
    assert plus.array.min() > 0 and "warnings" not in plus.provenance["diagnostics"]
    assert np.all(minus.array == 0)
    assert "relu=false shows the signed map" in minus.provenance["diagnostics"]["warnings"][0]
    np.testing.assert_allclose(signed.array, -plus.array, rtol=1e-5)


class RegionCounter(torch.nn.Module):
    """Layer "split" puts the input inside box 1 in channel 0 and inside box 2 in channel 1; the
    output counts the network input's intensity inside box 1 only."""

    def __init__(self, box1, box2):
        super().__init__()
        self.register_buffer("m1", box1.float())
        self.register_buffer("m2", box2.float())
        self.split = torch.nn.Identity()

    def forward(self, x):
        a = self.split(torch.cat([x * self.m1, x * self.m2], dim=1))
        s = (x * self.m1).flatten(1).sum(1) + 0 * a.sum()
        return torch.stack([s, -s], dim=1)


def test_score_cam_lights_up_the_region_a_counting_network_looks_at():
    shape = (16, 14, 12)
    box1, box2 = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
    box1[2:7, 3:8, 2:6] = True
    box2[9:14, 6:12, 5:10] = True
    array = np.full((1, *shape), 0.05, np.float32)
    array[0][box1.numpy()] = 1.0
    array[0][box2.numpy()] = 1.0
    volume = ImageVolume(array, np.eye(4))
    result = explain(volume, RegionCounter(box1, box2), "score_cam", Target(class_index=0),
                     {"layer": "split", "batch_size": 1})
    cam = result.array[0]
    assert cam[box1.numpy()].min() > 0.5 * cam.max()
    assert np.abs(cam[box2.numpy()]).max() < 1e-6 * cam.max()
    assert np.unravel_index(cam.argmax(), shape) in set(zip(*np.nonzero(box1.numpy())))
    # the weights are the masked inputs' scores: channel 0 keeps box 1 (125 voxels at 1.0), channel 1 none
    a0 = array[0] * box1.numpy()
    mask0 = (a0 - a0.min()) / (a0.max() - a0.min())
    w0 = float((array[0] * mask0 * box1.numpy()).sum())
    np.testing.assert_allclose(cam, w0 * a0, rtol=1e-5, atol=1e-6)


def test_score_cam_baseline_subtraction_and_batching(classifier, volume):
    target = Target(class_index=0)
    one = explain(volume, classifier, "score_cam", target, {"batch_size": 1}).array
    many = explain(volume, classifier, "score_cam", target, {"batch_size": 64}).array
    np.testing.assert_allclose(one, many, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        classifier.network.class_layers.out.bias.fill_(0.7)  # an all-zero input now scores 0.7
    with_base = explain(volume, classifier, "score_cam", target, {"subtract_baseline": True, "relu": False})
    without = explain(volume, classifier, "score_cam", target, {"relu": False})
    assert with_base.provenance["diagnostics"]["baseline_score"] == pytest.approx(0.7, abs=1e-6)
    assert not np.allclose(with_base.array, without.array)


# ------------------------------------------------------------------------------------------------
# Layers: automatic choice, errors, hooks


def _auto(net, shape, task):
    net.eval()
    return default_layer(net, task, torch.zeros(shape))


def test_automatic_layers_of_monai_classifiers():
    from monai.networks import nets

    densenet = nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2, init_features=4, growth_rate=4,
                                block_config=(2, 2, 2, 2))
    assert _auto(densenet, (1, 1, 64, 64, 64), "classification") == "features"
    # where the encoder output is a single voxel (32^3 input) the last layer with extent is taken
    assert _auto(densenet, (1, 1, 32, 32, 32), "classification") == "features.transition3.conv"
    resnet = nets.resnet10(spatial_dims=3, n_input_channels=1, num_classes=2)
    assert _auto(resnet, (1, 1, 32, 32, 32), "classification") == "layer4"
    classifier = nets.Classifier(in_shape=(1, 32, 32, 32), classes=2, channels=(4, 8, 16), strides=(2, 2, 2))
    assert _auto(classifier, (1, 1, 32, 32, 32), "classification") == "net"


def test_automatic_layers_of_monai_segmenters():
    from monai.networks import nets

    shape = (1, 1, 32, 32, 32)
    unet = nets.UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2),
                     num_res_units=2)
    # the top up-block's transposed convolution, before the head
    assert _auto(unet, shape, "segmentation") == "model.2.0"
    unet0 = nets.UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2))
    assert _auto(unet0, shape, "segmentation") == "model.1"  # the head is the transposed conv itself
    basic = nets.BasicUNet(spatial_dims=3, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4))
    assert _auto(basic, shape, "segmentation") == "upcat_1"
    segres = nets.SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8, blocks_down=(1, 1),
                            blocks_up=(1,))
    assert _auto(segres, shape, "segmentation") == "up_layers.0"
    dyn = nets.DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                       filters=[4, 8, 16], res_block=True)
    assert _auto(dyn, shape, "segmentation") == "skip_layers"  # = upsamples.1, the last decoder block
    attention = nets.AttentionUnet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16),
                                   strides=(2, 2))
    assert _auto(attention, shape, "segmentation") == "model.1"


def test_candidates_list_shapes_and_aliases(segmenter):
    layers = candidate_layers(segmenter.network, torch.zeros(1, 1, 16, 16, 16))
    by_name = {info.name: info for info in layers}
    assert by_name["model.2.0"].output_shape == (1, 3, 16, 16, 16)
    assert by_name["model.1"].type == "SkipConnection" and by_name["model.1"].output_shape == (1, 12, 8, 8, 8)
    assert "model.2.1" in by_name["model"].aliases  # same tensor: listed once, under the outer name
    assert hook_count(segmenter.network) == 0


def test_unknown_layer_suggests_the_closest_names(segmenter, volume):
    with pytest.raises(ParameterError, match=r"did you mean .*'model\.2\.0'"):
        explain(volume, segmenter, "grad_cam", Target(class_index=1, region="predicted"),
                {"layer": "model.2.O"})
    assert hook_count(segmenter.network) == 0


def test_a_layer_without_a_spatial_tensor_output_is_refused_and_hooks_removed(classifier, volume):
    with pytest.raises(ParameterError, match="returns a tensor of shape"):
        explain(volume, classifier, "grad_cam", Target(class_index=0), {"layer": "class_layers.out"})
    assert hook_count(classifier.network) == 0


def test_layer_discovery_removes_its_hooks_when_the_model_fails(segmenter):
    with pytest.raises(ModelError, match="failed on an example input"):
        candidate_layers(segmenter.network, torch.zeros(1, 2, 16, 16, 16))  # wrong channel count
    assert hook_count(segmenter.network) == 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_models_get_a_clear_error(segmenter, volume):
    scripted = torch.jit.script(segmenter.network)
    with pytest.raises(ModelError, match="TorchScript"):
        explain(volume, scripted, "grad_cam", Target(class_index=1), {"layer": "model.1"})


# ------------------------------------------------------------------------------------------------
# Geometry: preprocessing, sliding windows, channels


@pytest.mark.parametrize("method", ["grad_cam", "score_cam"])
def test_maps_land_on_the_input_grid_through_spacing_and_orientation(volume, method):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
    steps = Preprocessing.from_config([{"kind": "orientation", "axcodes": "LPS"},
                                       {"kind": "spacing", "pixdim": [1.0, 1.1, 1.5]}])
    model = load_model(net, task="segmentation", in_channels=1, preprocessing=steps, device="cpu")
    network_shape = model.bind(volume.affine, volume.shape).grids[-1].shape
    assert network_shape == (16, 16, 16) != volume.shape
    result = explain(volume, model, method, Target(class_index=1, region="class"), {"relu": False})
    assert result.array.shape == volume.array.shape
    assert np.all(np.isfinite(result.array)) and np.abs(result.array).sum() > 0
    np.testing.assert_array_equal(result.affine, volume.affine)


def test_a_spatially_constant_cam_stays_constant_on_the_input_grid(volume):
    """The inverse resampling must not add structure: a constant layer map gives a constant map."""
    net = LinearMap(np.ones((1,), np.float32))  # weight map broadcast: every voxel weighs 1
    model = load_model(net, task="classification", in_channels=1, device="cpu",
                       preprocessing=Preprocessing.from_config([{"kind": "spacing", "pixdim": 2.0}]))
    ones = ImageVolume(np.ones_like(volume.array), volume.affine)
    result = explain(ones, model, "grad_cam", Target(class_index=0), {"layer": "conv", "relu": False}).array
    assert result.shape == ones.array.shape
    interior = result[0, 3:-3, 3:-3, 3:-3]
    np.testing.assert_allclose(interior, interior.mean(), rtol=1e-4)


@pytest.mark.parametrize("method", ALL_CAMS)
def test_sliding_window_cam_over_one_roi_equals_the_direct_cam(volume, method):
    from monai.networks.nets import UNet

    def model(roi_size):
        torch.manual_seed(0)
        net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,),
                   num_res_units=1)
        return load_model(net, task="segmentation", in_channels=1, device="cpu", roi_size=roi_size)

    target = Target(class_index=1, region="box", box=(3, 3, 2, 12, 10, 8))
    params = {"layer": "model.1", "relu": False}
    direct = explain(volume, model(None), method, target, params)
    windowed = explain(volume, model(volume.shape), method, target, params)
    assert windowed.provenance["diagnostics"]["windows"] == 1
    np.testing.assert_allclose(windowed.array, direct.array, rtol=1e-4,
                               atol=1e-6 * np.abs(direct.array).max())


@pytest.mark.parametrize("method", ["grad_cam", "score_cam"])
def test_sliding_window_cam_blends_every_window(volume, method):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
    model = load_model(net, task="segmentation", in_channels=1, device="cpu", roi_size=(12, 12, 8))
    model.sw_batch_size = 3
    result = explain(volume, model, method, Target(class_index=1, region="class"), {"relu": False})
    diagnostics = result.provenance["diagnostics"]
    assert diagnostics["windows"] > 3 and diagnostics["layer"] == "model.2.0"
    assert result.array.shape == volume.array.shape and np.all(np.isfinite(result.array))
    assert np.count_nonzero(result.array) > 0.9 * result.array.size


class Pointwise(torch.nn.Module):
    """1x1x1 convolution (the CAM layer) -> tanh -> 1x1x1 head: every window sees the same activations."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv = torch.nn.Conv3d(1, 4, 1)
        self.head = torch.nn.Conv3d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("method", ["hires_cam", "layer_cam"])
def test_sliding_window_cams_of_a_pointwise_network_equal_the_whole_volume_cam(volume, blend, method):
    """The gradient reaching each window carries its blend weight, so the windows' maps add up to the
    CAM of the whole volume, with overlaps, Gaussian weights, several windows per call and padding."""
    target = Target(class_index=1, region="box", box=(2, 3, 1, 15, 12, 9))
    params = {"layer": "conv", "relu": False}
    whole = load_model(Pointwise(), task="segmentation", device="cpu")
    direct = explain(volume, whole, method, target, params)
    model = load_model(Pointwise(), task="segmentation", device="cpu", roi_size=(12, 10, 14))
    model.blend_mode, model.overlap, model.sw_batch_size = blend, 0.5, 2
    windowed = explain(volume, model, method, target, params)
    assert windowed.provenance["diagnostics"]["windows"] > 2
    np.testing.assert_allclose(windowed.array, direct.array, rtol=1e-4,
                               atol=1e-5 * np.abs(direct.array).max())


def test_multi_channel_cams_share_the_map_equally(two_channel_segmenter, two_channel_volume):
    target = Target(class_index=1, region="predicted")
    result = explain(two_channel_volume, two_channel_segmenter, "grad_cam", target, {"relu": False})
    np.testing.assert_array_equal(result.array[0], result.array[1])
    assert result.channel_shares == pytest.approx([0.5, 0.5])
    # the channel sum is the CAM itself, the same as a one-channel run would show
    assert np.abs(result.summed).sum() > 0


# ------------------------------------------------------------------------------------------------
# Registry and command line


def test_registry_entries_carry_references_and_parameter_metadata():
    from MedXAILib import METHODS, param_specs

    for name in ALL_CAMS:
        info = METHODS.get(name)
        assert info.family == "cam" and set(info.tasks) == {"classification", "segmentation"}
        assert "20" in info.reference and ("arXiv:" in info.reference or "IEEE" in info.reference)
        assert info.reference.split(",")[0].split(".")[0] in info.load().__doc__  # first author cited
        specs = {s.name: s for s in param_specs(info.params)}
        assert specs["layer"].default == "" and specs["relu"].default is True
        assert specs["upsample"].choices == ("trilinear", "nearest")
        assert all(s.help for s in specs.values())
    assert param_specs(METHODS.get("score_cam").params)[3].range == (1, 1024)


def test_nearest_upsampling_keeps_layer_blocks(segmenter, volume):
    target = Target(class_index=1, region="predicted")
    result = explain(volume, segmenter, "grad_cam", target, {"layer": "model.1", "upsample": "nearest",
                                                              "relu": False}).array[0]
    # model.1 runs at half resolution: nearest upsampling repeats each value over 2x2x2 blocks
    np.testing.assert_array_equal(result[0::2, 0::2, 0::2], result[1::2, 1::2, 1::2])


@pytest.fixture
def layer_files(tmp_path):
    from monai.networks.nets import UNet

    from MedXAILib.io import write_image
    from MedXAILib.model import save_spec_model

    args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
            "num_res_units": 1}
    torch.manual_seed(0)
    save_spec_model(UNet(**args), "UNet", args, tmp_path / "unet.json", task="segmentation", in_channels=1)
    image = ImageVolume(np.random.default_rng(0).normal(size=(1, 20, 16, 12)).astype(np.float32),
                        oblique_affine())
    write_image(image, tmp_path / "ct.nrrd")
    return tmp_path


def test_cli_layers_lists_candidates_and_marks_the_automatic_choice(layer_files, capsys):
    from MedXAILib.cli.main import main

    assert main(["layers", "--model", str(layer_files / "unet.json")]) == 0
    text = capsys.readouterr().out
    assert "(1, 1, 64, 64, 64)" in text  # zeros default example input
    marked = [line for line in text.splitlines() if "auto (segmentation)" in line]
    assert len(marked) == 1 and marked[0].split()[0] == "model.2.0"
    assert "ConvTranspose3d" in text and "automatic layer for segmentation: model.2.0" in text

    assert main(["layers", "--model", str(layer_files / "unet.json"), "--image", str(layer_files / "ct.nrrd"),
                 "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["task"] == "segmentation" and listing["automatic"]["segmentation"] == "model.2.0"
    assert listing["example_input"] == {"source": "image", "shape": [1, 1, 20, 16, 12]}
    by_name = {entry["name"]: entry for entry in listing["layers"]}
    assert by_name["model.2.0"]["output_shape"] == [1, 3, 20, 16, 12]
    assert by_name["model.2.0"]["automatic_for"] == ["segmentation"]


def test_cli_layers_bad_input_exits_2_with_one_line(layer_files, capsys):
    from MedXAILib.cli.main import main

    assert main(["layers", "--model", str(layer_files / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medxai: error:") and len(err.strip().splitlines()) == 1
    assert main(["layers", "--model", str(layer_files / "unet.json"), "--image",
                 str(layer_files / "missing.nrrd")]) == 2
    assert "medxai: error:" in capsys.readouterr().err


def test_cli_explain_runs_a_cam_with_a_named_layer(layer_files, capsys):
    from MedXAILib.cli.main import main
    from MedXAILib.io import read_image

    out = layer_files / "cam.nrrd"
    code = main(["explain", "--image", str(layer_files / "ct.nrrd"),
                 "--model", str(layer_files / "unet.json"), "--method", "grad_cam",
                 "--param", "layer=model.1", "--param", "relu=false",
                 "--target-class", "1", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert read_image(out).shape == (20, 16, 12)
    code = main(["explain", "--image", str(layer_files / "ct.nrrd"),
                 "--model", str(layer_files / "unet.json"), "--method", "grad_cam",
                 "--param", "layer=model.9", "--target-class", "1",
                 "--out", str(out.with_name("x.nrrd")), "--quiet"])
    assert code == 2 and "no layer named 'model.9'" in capsys.readouterr().err


def test_default_layers_gives_one_choice_per_task(classifier):
    layers, automatic = default_layers(classifier.network, torch.zeros(1, 1, 20, 16, 12))
    assert automatic["classification"] == "features"
    assert {info.name for info in layers} >= {"features", "features.denseblock2"}


@pytest.mark.gpu
@pytest.mark.parametrize("method", ALL_CAMS)
def test_cuda_maps_match_the_cpu_maps(segmenter, volume, method):
    target = Target(class_index=1, region="predicted")
    cpu = explain(volume, segmenter, method, target, {"relu": False}).array
    cuda = explain(volume, segmenter, method, target, {"relu": False}, device="cuda")
    assert cuda.provenance["device"].startswith("cuda")
    assert relative_difference(cuda.array, cpu) < 1e-3


def test_cams_coincide_at_a_layer_that_feeds_global_average_pooling_and_a_linear_head():
    """Analytic case: after global average pooling and a linear head, d logit / d A_k(x) = w_k / N at
    every position, so Grad-CAM (averaged), HiResCAM (element-wise) and XGradCAM (activation-weighted)
    weights all reduce to w_k / N and the maps are equal; one block earlier they differ."""
    from monai.networks.nets import ResNet

    torch.manual_seed(0)
    net = ResNet("basic", [1, 1, 1, 1], [4, 8, 8, 8], spatial_dims=3, n_input_channels=1, num_classes=2,
                 conv1_t_size=3, conv1_t_stride=1, no_max_pool=True)
    model = load_model(net, task="classification", class_names=["a", "b"], in_channels=1, device="cpu")
    rng = np.random.default_rng(3)
    image = ImageVolume(rng.normal(size=(1, 24, 20, 16)).astype(np.float32), oblique_affine())
    maps = {(method, layer): explain(image, model, method, Target(class_index=1),
                                     {"layer": layer, "relu": False}).array  # signed: random weights
            for method in ("grad_cam", "hires_cam", "xgrad_cam") for layer in ("layer4", "layer3")}
    reference = maps[("grad_cam", "layer4")]
    assert np.abs(reference).max() > 0
    for method in ("hires_cam", "xgrad_cam"):
        assert relative_difference(maps[(method, "layer4")], reference) < 1e-5, method
    assert relative_difference(maps[("hires_cam", "layer3")], maps[("grad_cam", "layer3")]) > 1e-2
