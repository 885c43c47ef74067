"""Nothing a caller passes in is changed: models, adapters, volumes, targets and parameters leave every call as they came.

A researcher who explains a network in the middle of training must get it back in training mode, with
its parameters still trainable, on its device, in its memory layout, without hooks; an adapter shared
between calls keeps its own settings.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from MedXAILib import ImageVolume, Target, explain
from MedXAILib.analysis.boundary import boundary_uncertainty, predicted_structure
from MedXAILib.methods import METHODS
from MedXAILib.model import load_model

#: One cheap call per method family (and the methods with hooks of their own).
CALLS = {
    "saliency": {},
    "integrated_gradients": {"n_steps": 4},
    "guided_backprop": {},
    "deeplift": {},
    "grad_cam": {},
    "score_cam": {},
    "occlusion": {"window": "4,4,4", "stride": "4,4,4"},
    "kernel_shap": {"regions": "grid", "grid_cell": 6, "n_samples": 8},
    "lrp": {},
}


def state_of(network: torch.nn.Module) -> dict:
    """Everything about a network a call could change behind the caller's back."""
    return {
        "training": [m.training for m in network.modules()],
        "requires_grad": [p.requires_grad for p in network.parameters()],
        "devices": [str(p.device) for p in network.parameters()],
        "layouts": [p.is_contiguous() for p in network.parameters()],
        "weights": {k: v.clone() for k, v in network.state_dict().items()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in network.modules()),
        "grads": [p.grad is None for p in network.parameters()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "devices", "layouts", "hooks", "grads"):
        assert before[key] == after[key], f"the call changed the network's {key}"
    for name, value in before["weights"].items():
        torch.testing.assert_close(after["weights"][name], value, rtol=0, atol=0, msg=f"weight {name} changed")


def training_unet(dropout: float = 0.0) -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1,
               dropout=dropout)
    return net.train()  # mid-training: train mode, trainable parameters


def test_every_method_family_is_covered():
    families = {METHODS.get(name).family for name in CALLS}
    assert families == {METHODS.get(name).family for name in METHODS.names()}


@pytest.mark.parametrize("method", sorted(CALLS))
def test_explain_leaves_a_plain_network_as_it_came(method, volume):
    net = training_unet()
    before = state_of(net)
    image_before = volume.array.copy()
    target = Target(class_index=1, region="predicted")
    target_before = copy.deepcopy(dataclasses.asdict(target))
    params = dict(CALLS[method])
    params_before = dict(params)
    result = explain(volume, net, method, target, params)
    assert np.isfinite(result.array).all()
    assert_same_state(before, state_of(net))
    np.testing.assert_array_equal(volume.array, image_before)
    assert dataclasses.asdict(target) == target_before and params == params_before


def test_explain_leaves_an_adapter_with_its_own_settings(volume):
    adapter = load_model(training_unet(), task="segmentation", in_channels=1, device="cpu")
    adapter.memory_budget, adapter.mixed_precision = 123_456_789, False
    explain(volume, adapter, "saliency", Target(class_index=1), memory_budget="64MB", mixed_precision=True,
            device="cpu")
    assert (adapter.memory_budget, adapter.mixed_precision, str(adapter.device)) == (123_456_789, False, "cpu")


def test_a_failing_call_gives_the_network_back_too(volume):
    net = training_unet()
    before = state_of(net)
    with pytest.raises(Exception):
        explain(volume, net, "saliency", Target(class_index=7))  # out of range: fails after the forward
    assert_same_state(before, state_of(net))


def test_analysis_functions_leave_the_network_as_it_came(volume):
    net = training_unet(dropout=0.2)
    adapter = load_model(net, task="segmentation", in_channels=1, device="cpu")
    before = state_of(net)
    boundary_uncertainty(volume, adapter, 1, flips=True, n_dropout=2)  # switches dropout on inside
    predicted_structure(volume, adapter, 1)
    assert_same_state(before, state_of(net))


def test_a_volume_passed_in_keeps_its_array_and_geometry(volume, segmenter):
    image = ImageVolume(volume.array.copy(), volume.affine.copy(), channel_names=["CT"], meta={"source": "x"})
    array, affine, meta = image.array, image.affine.copy(), copy.deepcopy(image.meta)
    array.setflags(write=False)  # a write anywhere in the call would raise
    explain(image, segmenter, "saliency", Target(class_index=1))
    assert image.array is array and not array.flags.writeable
    np.testing.assert_array_equal(image.affine, affine)
    assert image.meta == meta and image.channel_names == ["CT"]


def test_evaluation_comparison_randomisation_and_counterfactuals_leave_the_network_as_it_came(volume):
    from MedXAILib.counterfactual import Goal, generate_counterfactual
    from MedXAILib.evaluation import compare_methods, evaluate
    from MedXAILib.evaluation.randomisation import cascading_randomisation

    net = training_unet(dropout=0.2)
    adapter = load_model(net, task="segmentation", in_channels=1, device="cpu")
    before = state_of(net)
    target = Target(class_index=1, region="predicted")
    attribution = explain(volume, adapter, "saliency", target)
    evaluate(volume, adapter, attribution, target, metrics=["deletion", "sparseness", "max_sensitivity"],
             method="saliency", params={"deletion": {"n_steps": 3}, "max_sensitivity": {"n_samples": 2}})
    compare_methods(volume, adapter, ["saliency", "input_x_gradient"], target, metrics=["sparseness"])
    cascading_randomisation(volume, adapter, "saliency", target, stages=2)
    generate_counterfactual(volume, adapter, Goal("class_probability", 1, target_probability=0.1),
                            params={"max_steps": 2})
    assert_same_state(before, state_of(net))
