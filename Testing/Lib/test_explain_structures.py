"""explain_structures: K targets from one shared gradient pass equal K single explanations.

Checked on a sliding-window segmenter with several windows, spatial preprocessing and a Gaussian
blend (window_backward_many), on one without windows (K backward passes from one graph), with
predicted, mask and margin targets mixed, and for input x gradient as well as saliency.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedXAILib import ImageVolume
from MedXAILib.engine import explain, explain_structures
from MedXAILib.errors import TargetError
from MedXAILib.model import Preprocessing, load_model
from MedXAILib.target import Target
from references import CallCounter

SHAPE = (40, 36, 28)


def _unet(seed: int = 0, out_channels: int = 4):
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=(4, 8), strides=(2,),
                num_res_units=1)


@pytest.fixture
def image() -> ImageVolume:
    rng = np.random.default_rng(5)
    array = rng.normal(size=(1, *SHAPE)).astype(np.float32)
    array[:, 8:26, 6:24, 5:20] += 2.0
    affine = np.diag([1.5, 1.2, 2.0, 1.0])
    affine[:3, 3] = (-30.0, 12.0, 100.0)
    return ImageVolume(array, affine)


def _targets(image: ImageVolume) -> list[Target]:
    mask = np.zeros(image.shape, bool)
    mask[10:20, 10:20, 8:14] = True
    return [Target(class_index=1, region="predicted"), Target(class_index=2, region="predicted"),
            Target(class_index=3, region="mask", mask=mask), Target(class_index=0, region="class", score="margin"),
            Target(class_index=2, region="mask", mask=mask, reduction="mean")]


def _predicted_everywhere(adapter, image, targets):
    """Keep only the predicted targets whose class the model predicts somewhere (random weights)."""
    bound = adapter.bind(image.affine, image.shape, image.array)
    with torch.no_grad():
        labels = bound(torch.as_tensor(image.array)[None])[0].argmax(0)
    return [t for t in targets if t.region != "predicted" or bool((labels == t.class_index).any())]


@pytest.mark.parametrize("windowed, method", [(True, "saliency"), (True, "input_x_gradient"), (False, "saliency")],
                         ids=["windows-saliency", "windows-input_x_gradient", "whole-saliency"])
def test_k_structures_equal_k_single_explanations(image, windowed, method):
    kwargs = {}
    if windowed:  # several windows, a Gaussian blend and a resampling step before the network
        kwargs = {"roi_size": (24, 24, 16),
                  "preprocessing": Preprocessing.from_config([{"kind": "spacing", "pixdim": [1.8, 1.5, 2.4]}])}
    adapter = load_model(_unet(), task="segmentation", in_channels=1, device="cpu", **kwargs)
    if windowed:
        adapter.overlap, adapter.blend_mode = 0.5, "gaussian"
    targets = _predicted_everywhere(adapter, image, _targets(image))
    assert len(targets) >= 4, "the random network predicts too few classes for this test"
    together = explain_structures(image, adapter, targets, method, seed=3)
    assert len(together) == len(targets)
    if windowed:
        bound = adapter.bind(image.affine, image.shape, image.array)
        assert bound.plan().n_windows > 1
        with torch.no_grad():
            output = bound(torch.as_tensor(image.array)[None])
        counter = CallCounter(adapter.network)
        given = explain_structures(image, adapter, targets, method, seed=3, output=output)
        counter.remove()
        assert counter.calls == bound.plan().n_windows  # the gradient pass only: no pass of its own first
        for a, b in zip(given, together):
            np.testing.assert_array_equal(a.array, b.array)
    for target, shared in zip(targets, together):
        single = explain(image, adapter, method, target, seed=3)
        scale = float(np.abs(single.array).max())
        assert scale > 0
        np.testing.assert_allclose(shared.array, single.array, atol=1e-5 * scale, rtol=0)
        assert shared.provenance["target"] == single.provenance["target"]
        assert shared.provenance["shared_pass"]["targets"] == len(targets)
        assert shared.provenance["prediction"] == single.provenance["prediction"]


def test_each_target_gets_its_own_map(image):
    adapter = load_model(_unet(), task="segmentation", in_channels=1, device="cpu")
    mask = np.zeros(image.shape, bool)
    mask[10:20, 10:20, 8:14] = True
    maps = explain_structures(image, adapter, [Target(class_index=k, region="mask", mask=mask) for k in range(4)])
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.allclose(maps[a].array, maps[b].array)


def test_no_targets_is_refused(image):
    adapter = load_model(_unet(), task="segmentation", in_channels=1, device="cpu")
    with pytest.raises(TargetError, match="at least one target"):
        explain_structures(image, adapter, [])
