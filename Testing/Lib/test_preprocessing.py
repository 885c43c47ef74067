"""Differentiable preprocessing: exact orientation, spacing on linear ramps, intensity steps vs MONAI.

Geometry is checked through physical positions (every voxel must keep its RAS point), intensity
steps against MONAI's own transforms on the same arrays, and the whole chain through a BoundModel
whose outputs and gradients must live on the input grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity as MonaiNormalizeIntensity
from monai.transforms import Orientation as MonaiOrientation
from monai.transforms import ScaleIntensityRange as MonaiScaleIntensityRange
from monai.transforms import Spacing as MonaiSpacing

from MedXAILib.errors import ModelError
from MedXAILib.model import Grid, Preprocessing, load_model
from MedXAILib.model.preprocessing import (
    CropForeground,
    NormalizeIntensity,
    Orientation,
    ScaleIntensityRange,
    Spacing,
    orientation_transform,
    resample,
)


def _affine(columns, spacing, origin) -> np.ndarray:
    """IJK -> RAS affine whose voxel axis j points along ``columns[j]`` (a signed unit vector)."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(columns, dtype=np.float64).T * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = origin
    return affine


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _ras_points(affine: np.ndarray, shape) -> np.ndarray:
    """(3, *shape) RAS coordinates of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    return (affine[:3, :3] @ idx + affine[:3, 3:4]).reshape(3, *shape)


# Each case: affine columns, expected (perm, flips) to RAS, i.e. RAS axis t = input axis perm[t],
# reversed when flips[t].
ORIENTATION_CASES = {
    # LPS (DICOM / ITK without conversion): i -> L, j -> P, k -> S
    "LPS": ([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], (0, 1, 2), (True, True, False)),
    # permuted and flipped: i -> S, j -> L, k -> P
    "SLP": ([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], (1, 2, 0), (True, True, False)),
    # i -> A, j -> I, k -> R
    "AIR": ([[0, 1, 0], [0, 0, -1], [1, 0, 0]], (2, 0, 1), (False, False, True)),
    "RAS": ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], (0, 1, 2), (False, False, False)),
}


@pytest.mark.parametrize("case", sorted(ORIENTATION_CASES))
def test_orientation_is_an_exact_permutation_and_flip(case):
    columns, perm, flips = ORIENTATION_CASES[case]
    shape = (5, 6, 7)
    affine = _affine(columns, spacing=(0.8, 1.5, 3.0), origin=(12.5, -40.0, 233.0))
    assert orientation_transform(affine, "RAS") == (perm, flips)

    rng = np.random.default_rng(0)
    array = rng.normal(size=(2, *shape))
    step = Orientation("RAS")
    grids = Preprocessing([step]).grids(Grid(affine, shape))
    out = step.apply(torch.as_tensor(array)[None], grids[0])[0].numpy()

    expected = np.transpose(array, (0, *(1 + p for p in perm)))
    for t, flip in enumerate(flips):
        if flip:
            expected = np.flip(expected, axis=1 + t)
    np.testing.assert_array_equal(out, expected)
    assert grids[1].shape == tuple(shape[p] for p in perm)

    # the new affine is RAS-aligned with positive spacing ...
    new = grids[1].affine
    np.testing.assert_allclose(np.abs(new[:3, :3]), np.diag(np.diag(np.abs(new[:3, :3]))), atol=1e-12)
    assert np.all(np.diag(new[:3, :3]) > 0)
    # ... and maps every voxel to the RAS point it had before: carry each voxel's RAS position as data
    positions = _ras_points(affine, shape)
    moved = step.apply(torch.as_tensor(positions)[None], grids[0])[0].numpy()
    np.testing.assert_allclose(moved, _ras_points(new, grids[1].shape), atol=1e-9)
    for voxel in [(0, 0, 0), (4, 5, 6), (1, 2, 3), (4, 0, 6)]:
        new_voxel = tuple(int(v) for v in np.argwhere(np.all(
            np.isclose(_ras_points(new, grids[1].shape), (affine @ (*voxel, 1))[:3, None, None, None]), axis=0))[0])
        assert out[(0, *new_voxel)] == array[(0, *voxel)]

    # same as MONAI's Orientation (values and affine)
    monai_out = MonaiOrientation(axcodes="RAS")(MetaTensor(torch.as_tensor(array), affine=torch.as_tensor(affine)))
    np.testing.assert_array_equal(out, monai_out.numpy())
    np.testing.assert_allclose(new, monai_out.affine.numpy(), atol=1e-9)

    # invert_output restores the original array exactly
    back = step.invert_output(torch.as_tensor(out)[None], grids[0], grids[1])[0].numpy()
    np.testing.assert_array_equal(back, array)
    back = Preprocessing([step]).invert_output(torch.as_tensor(out)[None], grids)[0].numpy()
    np.testing.assert_array_equal(back, array)


def test_orientation_of_an_oblique_volume_picks_the_closest_axes():
    affine = np.eye(4)
    affine[:3, :3] = _rotation(30) @ np.diag([-1.0, 1.0, 1.0])[:, [1, 0, 2]] @ np.diag([0.9, 1.1, 2.0])
    perm, flips = orientation_transform(affine, "RAS")
    monai_out = MonaiOrientation(axcodes="RAS")(MetaTensor(torch.zeros(1, 3, 4, 5), affine=torch.as_tensor(affine)))
    grid = Orientation("RAS").grid_after(Grid(affine, (3, 4, 5)))
    assert grid.shape == tuple(monai_out.shape[1:])
    np.testing.assert_allclose(grid.affine, monai_out.affine.numpy(), atol=1e-9)
    with pytest.raises(ModelError, match="three codes"):
        orientation_transform(affine, "RRS")


# ------------------------------------------------------------------------------------------------
# Spacing


SPACING_AFFINES = {
    "axis_aligned": _affine(np.eye(3), (1.0, 0.9, 3.0), (10.0, -20.0, 30.0)),
    "oblique": np.vstack([np.hstack([_rotation(20) @ np.diag([1.0, 0.9, 3.0]), [[10.0], [-20.0], [30.0]]]),
                          [0, 0, 0, 1]]),
    "lps": _affine([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], (0.7, 0.7, 2.5), (120.0, 95.0, -300.0)),
}


@pytest.mark.parametrize("name", sorted(SPACING_AFFINES))
@pytest.mark.parametrize("pixdim", [(2.0, 0.7, 1.3), (1.5, 1.5, 1.5)])
def test_spacing_resamples_a_linear_ramp_exactly(name, pixdim):
    affine, shape = SPACING_AFFINES[name], (10, 11, 7)
    step = Spacing(pixdim)
    before = Grid(affine, shape)
    after = step.grid_after(before)
    np.testing.assert_allclose(after.affine[:3, 3], affine[:3, 3])  # same origin (centre of voxel 0)
    np.testing.assert_allclose(np.linalg.norm(after.affine[:3, :3], axis=0), pixdim)
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(after.affine[:3, :3] / np.asarray(pixdim), direction, atol=1e-12)

    coeffs = np.array([0.3, -1.7, 0.45])
    ramp = np.tensordot(coeffs, _ras_points(affine, shape), axes=1) + 5.0
    out = step.apply(torch.as_tensor(ramp)[None, None], before)[0, 0].numpy()
    assert out.shape == after.shape
    expected = np.tensordot(coeffs, _ras_points(after.affine, after.shape), axes=1) + 5.0
    # new voxels inside the input's extent (beyond it the border value is repeated)
    index = np.tensordot(np.linalg.inv(affine)[:3, :3], _ras_points(after.affine, after.shape), axes=1) \
        + np.linalg.inv(affine)[:3, 3].reshape(3, 1, 1, 1)
    inside = np.all((index > -1e-9) & (index < np.reshape(shape, (3, 1, 1, 1)) - 1 + 1e-9), axis=0)
    assert inside.sum() > 0.5 * inside.size
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-4)

    # same grid and values as MONAI's Spacing
    monai_out = MonaiSpacing(pixdim=pixdim, mode="bilinear")(
        MetaTensor(torch.as_tensor(ramp[None]), affine=torch.as_tensor(affine)))
    assert tuple(monai_out.shape[1:]) == after.shape
    np.testing.assert_allclose(monai_out.affine.numpy(), after.affine, atol=1e-9)
    np.testing.assert_allclose(out, monai_out[0].numpy(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", sorted(SPACING_AFFINES))
def test_spacing_inverse_returns_a_smooth_output_to_the_input_grid(name):
    affine, shape = SPACING_AFFINES[name], (14, 15, 9)
    step = Spacing((1.6, 1.2, 2.0))
    before = Grid(affine, shape)
    after = step.grid_after(before)

    def smooth(points: np.ndarray) -> np.ndarray:
        x, y, z = points
        return np.sin(x / 9.0) + np.cos(y / 11.0) * 0.5 + 0.02 * z

    on_network_grid = torch.as_tensor(smooth(_ras_points(after.affine, after.shape)))[None, None]
    back = step.invert_output(on_network_grid, before, after)[0, 0].numpy()
    assert back.shape == shape
    truth = smooth(_ras_points(affine, shape))
    interior = (slice(1, -2),) * 3  # away from the border, where values are repeated
    error = np.abs(back - truth)[interior]
    assert error.max() < 0.02
    # resampling twice is nearly the identity too
    x = torch.as_tensor(truth)[None, None]
    round_trip = step.invert_output(step.apply(x, before), before, after)[0, 0].numpy()
    assert np.abs(round_trip - truth)[interior].max() < 0.03


def test_spacing_arguments_follow_monai():
    assert Spacing(2.0).pixdim == (2.0, 2.0, 2.0)
    assert Spacing([1.0, 2.0]).pixdim == (1.0, 2.0, 2.0)
    affine = np.diag([0.5, 0.8, 3.0, 1.0])
    grid = Spacing((1.0, -1.0, 0.0)).grid_after(Grid(affine, (9, 10, 4)))  # non-positive: keep spacing
    np.testing.assert_allclose(np.diag(grid.affine)[:3], (1.0, 0.8, 3.0))
    assert grid.shape == (5, 10, 4)
    with pytest.raises(ModelError, match="pixdim"):
        Spacing(("a", 1, 1))
    with pytest.raises(ModelError, match="mode"):
        Spacing((1, 1, 1), mode="bicubic")


def test_resample_is_identity_on_the_same_grid_and_differentiable():
    affine = SPACING_AFFINES["oblique"]
    grid = Grid(affine, (5, 6, 7))
    x = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    y = resample(x, grid, grid)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x), rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# intensity


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("b", [(0.0, 1.0), (-1.0, 2.5), (None, None)])
def test_scale_intensity_range_matches_monai(clip, b):
    if clip and b == (None, None):
        b = (0.0, 1.0)  # MONAI cannot clip without bounds
    x = np.random.default_rng(3).normal(size=(2, 6, 7, 8)).astype(np.float32) * 300
    reference = MonaiScaleIntensityRange(a_min=-57.0, a_max=164.0, b_min=b[0], b_max=b[1], clip=clip)(x.copy())
    ours = ScaleIntensityRange(-57.0, 164.0, b[0], b[1], clip).apply(torch.as_tensor(x)[None], None)[0]
    np.testing.assert_allclose(ours.numpy(), np.asarray(reference), rtol=1e-5, atol=1e-5)
    if clip:
        assert float(ours.min()) == min(b) and float(ours.max()) == max(b)
    else:
        assert float(ours.max()) > max(b[0] or 0.0, b[1] or 1.0)
    with pytest.raises(ModelError, match="a_min == a_max"):
        ScaleIntensityRange(1.0, 1.0).apply(torch.as_tensor(x)[None], None)


@pytest.mark.parametrize("nonzero", [False, True])
@pytest.mark.parametrize("channel_wise", [False, True])
def test_normalize_intensity_matches_monai(nonzero, channel_wise):
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(2, 6, 7, 8)) * np.array([50.0, 3.0]).reshape(2, 1, 1, 1) + 20).astype(np.float32)
    x[:, :2] = 0  # a zero background
    x[1, 4:] = 0
    reference = MonaiNormalizeIntensity(nonzero=nonzero, channel_wise=channel_wise)(x.copy())  # works in place
    ours = NormalizeIntensity(nonzero=nonzero, channel_wise=channel_wise).apply(torch.as_tensor(x)[None], None)[0]
    np.testing.assert_allclose(ours.numpy(), np.asarray(reference), rtol=1e-4, atol=1e-4)
    if nonzero:
        assert np.all(ours.numpy()[x == 0] == 0)


def test_normalize_intensity_fixed_values_and_constant_input():
    x = np.random.default_rng(5).normal(size=(2, 4, 5, 6)).astype(np.float32)
    reference = MonaiNormalizeIntensity(subtrahend=[1.0, -2.0], divisor=[2.0, 0.0], channel_wise=True)(x.copy())
    ours = NormalizeIntensity([1.0, -2.0], [2.0, 0.0], channel_wise=True).apply(torch.as_tensor(x)[None], None)[0]
    np.testing.assert_allclose(ours.numpy(), np.asarray(reference), rtol=1e-6, atol=1e-6)
    reference = MonaiNormalizeIntensity(subtrahend=0.5, divisor=4.0)(x.copy())
    ours = NormalizeIntensity(0.5, 4.0).apply(torch.as_tensor(x)[None], None)[0]
    np.testing.assert_allclose(ours.numpy(), np.asarray(reference), rtol=1e-6, atol=1e-6)
    with pytest.raises(ModelError, match="channel_wise"):
        NormalizeIntensity([1.0, 2.0]).apply(torch.as_tensor(x)[None], None)

    for nonzero in (False, True):  # a constant image: divide by one, and gradients stay finite
        constant = torch.full((1, 1, 4, 4, 4), 3.0, requires_grad=True)
        y = NormalizeIntensity(nonzero=nonzero).apply(constant, None)
        assert torch.all(y == 0)
        y.sum().backward()
        assert torch.isfinite(constant.grad).all()


def test_from_config_and_describe_round_trip():
    config = [{"kind": "orientation", "axcodes": "LPS"}, {"kind": "spacing", "pixdim": [1, 1, 2], "mode": "nearest"},
              {"kind": "scale_intensity_range", "a_min": -10, "a_max": 10, "clip": True},
              {"kind": "normalize_intensity", "nonzero": True}]
    pre = Preprocessing.from_config(config)
    described = pre.describe()
    assert [d["kind"] for d in described] == ["orientation", "spacing", "scale_intensity_range",
                                              "normalize_intensity"]
    assert Preprocessing.from_config(described).describe() == described
    with pytest.raises(ModelError, match="unknown preprocessing step 'gamma'"):
        Preprocessing.from_config([{"kind": "gamma"}])
    with pytest.raises(ModelError, match="bad arguments for preprocessing step 'spacing'"):
        Preprocessing.from_config([{"kind": "spacing", "spacing": 1}])


# ------------------------------------------------------------------------------------------------
# end to end through a BoundModel


LPS_AFFINE = _affine([[0, -1, 0], [-1, 0, 0], [0, 0, 1]], (0.9, 1.3, 2.2), (80.0, 60.0, -150.0))
STEPS = [{"kind": "orientation", "axcodes": "RAS"}, {"kind": "spacing", "pixdim": [1.5, 1.5, 1.5]},
         {"kind": "scale_intensity_range", "a_min": -100, "a_max": 200, "b_min": 0, "b_max": 1, "clip": True}]


def test_bound_segmenter_output_and_gradients_live_on_the_input_grid():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
    adapter = load_model(net, task="segmentation", preprocessing=Preprocessing.from_config(STEPS), device="cpu")
    shape = (13, 11, 7)
    bound = adapter.bind(LPS_AFFINE, shape)
    # RAS: R = input j (flipped), A = input i (flipped), S = k; then round((n - 1) * old / 1.5) + 1
    # (even sizes: the UNet's stride-2 path returns its input size)
    assert [g.shape for g in bound.grids] == [shape, (11, 13, 7), (10, 8, 10), (10, 8, 10)]
    x = torch.as_tensor(np.random.default_rng(6).normal(size=(1, 1, *shape)) * 100, dtype=torch.float32)
    x.requires_grad_(True)
    out = bound(x)
    assert out.shape == (1, 3, *shape)
    assert torch.isfinite(out).all()
    out[0, 1, 3:9, 2:8, 1:5].sum().backward()
    assert x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bound_identity_network_returns_the_scaled_input_on_the_input_grid():
    """With the network grid's spacing equal to the input's, orientation + spacing are exact."""
    steps = [dict(STEPS[0]), {"kind": "spacing", "pixdim": [1.3, 0.9, 2.2]}, dict(STEPS[2])]
    adapter = load_model(torch.nn.Identity(), task="segmentation", preprocessing=Preprocessing.from_config(steps),
                         device="cpu")
    shape = (6, 5, 4)
    x = torch.as_tensor(np.random.default_rng(7).normal(size=(1, 1, *shape)) * 150, dtype=torch.float32)
    bound = adapter.bind(LPS_AFFINE, shape)
    assert bound.grids[2].shape == (5, 6, 4)  # RAS: the input's j axis comes first
    torch.testing.assert_close(bound(x), torch.clamp((x + 100) / 300, 0, 1), rtol=1e-5, atol=1e-5)

    # a different network spacing: the round trip is close for a smooth input
    adapter.preprocessing = Preprocessing.from_config([dict(STEPS[0]), {"kind": "spacing", "pixdim": [1.0, 0.8, 1.5]}])
    shape = (16, 12, 8)
    ramp = np.tensordot([0.5, -0.25, 0.1], _ras_points(LPS_AFFINE, shape), axes=1)
    x = torch.as_tensor(ramp, dtype=torch.float64)[None, None]
    out = adapter.bind(LPS_AFFINE, shape)(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out[..., 2:-2, 2:-2, 2:-2], x[..., 2:-2, 2:-2, 2:-2], rtol=0, atol=1e-6)


def test_bound_classifier_with_preprocessing():
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2, init_features=4, growth_rate=4,
                      block_config=(2, 2)).eval()
    adapter = load_model(net, preprocessing=Preprocessing.from_config(STEPS), device="cpu")
    shape = (24, 18, 12)  # the network grid is (16, 15, 17): large enough for the tiny DenseNet
    x = torch.as_tensor(np.random.default_rng(8).normal(size=(1, 1, *shape)) * 100, dtype=torch.float32)
    x.requires_grad_(True)
    out = adapter.bind(LPS_AFFINE, shape)(x)
    assert out.shape == (1, 2) and adapter.task == "classification"
    pre = adapter.preprocessing
    with torch.no_grad():
        expected = net(pre.apply(x, pre.grids(Grid(LPS_AFFINE, shape))))
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-6)
    out[0, 1].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# ScaleIntensity, CropForeground and DivisiblePad against MONAI's own transforms (and inverses)


def _foreground_volume() -> tuple[np.ndarray, np.ndarray]:
    """Two channels: a positive block in zeros, and one more positive voxel in channel 1 only."""
    rng = np.random.default_rng(0)
    x = np.zeros((2, 13, 15, 11), np.float32)
    x[:, 3:9, 4:12, 2:7] = rng.normal(size=(2, 6, 8, 5)) + 3
    x[1, 1, 1, 1] = 0.5
    affine = np.diag([1.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = (5.0, -3.0, 10.0)
    return x, affine


@pytest.mark.parametrize("kwargs", [{}, {"minv": -1.0, "maxv": 1.0}, {"minv": None, "maxv": 2.0},
                                    {"minv": None, "maxv": None, "factor": 0.5},
                                    {"minv": -1.0, "maxv": 1.0, "channel_wise": True}])
def test_scale_intensity_matches_monai(kwargs):
    from monai.transforms import ScaleIntensity as MonaiScaleIntensity

    x, _ = _foreground_volume()
    ours = Preprocessing.from_config([{"kind": "scale_intensity", **kwargs}]).steps[0].apply(
        torch.as_tensor(x)[None], None)[0]
    torch.testing.assert_close(ours, MonaiScaleIntensity(**kwargs)(torch.as_tensor(x)), rtol=0, atol=1e-6)
    constant = torch.full((1, 1, 4, 4, 4), 3.0, requires_grad=True)  # max == min: x * minv, finite gradients
    out = Preprocessing.from_config([{"kind": "scale_intensity", **kwargs}]).steps[0].apply(constant, None)
    expected = MonaiScaleIntensity(**kwargs)(constant.detach()[0])
    torch.testing.assert_close(out.detach()[0], torch.as_tensor(expected), rtol=0, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(constant.grad).all()


@pytest.mark.parametrize("kwargs", [{}, {"margin": 2}, {"margin": [1, 3, 5], "allow_smaller": True},
                                    {"k_divisible": 4, "mode": "minimum"},
                                    {"k_divisible": [5, 3, 7], "margin": 4, "mode": "edge"},
                                    {"margin": 6, "mode": "minimum"},
                                    {"channel_indices": [0], "margin": 3, "k_divisible": 8, "mode": "reflect"}])
def test_crop_foreground_matches_monai_and_its_inverse(kwargs):
    from monai.data import MetaTensor
    from monai.transforms import CropForeground as MonaiCropForeground

    x, affine = _foreground_volume()
    pre = Preprocessing([CropForeground(**kwargs)])
    grids = pre.grids(Grid(affine, x.shape[1:]), reference=x)
    ours = pre.apply(torch.as_tensor(x)[None], grids)[0]
    monai = MonaiCropForeground(**kwargs)
    expected = monai(MetaTensor(torch.as_tensor(x), affine=torch.as_tensor(affine)))
    assert tuple(ours.shape) == tuple(expected.shape) == (2, *grids[-1].shape)
    torch.testing.assert_close(ours, expected.as_tensor(), rtol=0, atol=0)
    np.testing.assert_allclose(grids[-1].affine, expected.affine.numpy(), atol=1e-9)
    back = pre.invert_output(ours[None], grids)[0]  # outside the box: zeros, as MONAI's inverse
    torch.testing.assert_close(back, monai.inverse(expected).as_tensor(), rtol=0, atol=0)


def test_the_crop_box_is_fixed_by_the_unperturbed_input():
    x, affine = _foreground_volume()
    pre = Preprocessing([ScaleIntensityRange(a_min=-1.0, a_max=5.0, b_min=-1.0, b_max=1.0, clip=True),
                         CropForeground(margin=1)])
    grid = Grid(affine, x.shape[1:])
    grids = pre.grids(grid, reference=x)
    # the foreground (> 0) is found after the window: values above 2 in this volume
    box = np.argwhere(x.max(0) > 2.0)
    assert grids[-1].shape == tuple(int(hi - lo + 3) for lo, hi in zip(box.min(0), box.max(0)))
    # a perturbed input (all positive) keeps the box; its gradient reaches the voxels inside it only
    perturbed = torch.as_tensor(x + 10.0)[None].requires_grad_(True)
    out = pre.apply(perturbed, grids)
    assert tuple(out.shape[2:]) == grids[-1].shape
    out.sum().backward()
    inside = torch.zeros(x.shape, dtype=torch.bool)
    start = np.linalg.solve(affine, grids[-1].affine[:, 3])[:3].round().astype(int)
    inside[(slice(None), *(slice(s, s + n) for s, n in zip(start, grids[-1].shape)))] = True
    assert (perturbed.grad[0][~inside] == 0).all()
    with pytest.raises(ModelError, match="reference=image.array"):
        pre.grids(grid)
    with pytest.raises(ModelError, match="no foreground"):
        pre.grids(grid, reference=np.zeros_like(x) - 1)


@pytest.mark.parametrize("kwargs", [{"k": 8}, {"k": [4, 16, 3], "method": "end"}, {"k": 5, "mode": "reflect"}])
def test_divisible_pad_matches_monai_and_is_cropped_back(kwargs):
    from monai.data import MetaTensor
    from monai.transforms import DivisiblePad as MonaiDivisiblePad

    x, affine = _foreground_volume()
    pre = Preprocessing.from_config([{"kind": "divisible_pad", **kwargs}])
    grids = pre.grids(Grid(affine, x.shape[1:]))
    ours = pre.apply(torch.as_tensor(x)[None], grids)[0]
    expected = MonaiDivisiblePad(**kwargs)(MetaTensor(torch.as_tensor(x), affine=torch.as_tensor(affine)))
    torch.testing.assert_close(ours, expected.as_tensor(), rtol=0, atol=0)
    np.testing.assert_allclose(grids[-1].affine, expected.affine.numpy(), atol=1e-9)
    torch.testing.assert_close(pre.invert_output(ours[None], grids)[0], torch.as_tensor(x), rtol=0, atol=0)
    with pytest.raises(ModelError, match="padding mode"):
        Preprocessing.from_config([{"kind": "divisible_pad", "k": 8, "mode": "wrap-around"}])


@pytest.mark.parametrize("padding_mode", ["replicate", "reflect"])
def test_windowed_gradients_through_a_crop_and_border_padding_equal_autograd_through_monai(padding_mode):
    """The window-by-window backward (BoundModel.gradient) with a foreground crop and an image smaller than the
    window, padded by copies of its border as MONAI's sliding_window_inference pads it."""
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from MedXAILib import Target
    from MedXAILib.scoring import resolve_target

    x_np, affine = _foreground_volume()
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=2, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
    steps = [{"kind": "crop_foreground", "margin": 1}, {"kind": "normalize_intensity"}]
    adapter = load_model(net, task="segmentation", device="cpu", roi_size=(12, 12, 12), in_channels=2,
                         preprocessing=Preprocessing.from_config(steps), padding_mode=padding_mode, overlap=0.5)
    adapter.memory_budget = 1024  # one window per network call
    bound = adapter.bind(affine, x_np.shape[1:], x_np)
    assert bound.plan().n_windows > 1 and any(bound.plan().pad)  # several windows, and padding
    x = torch.as_tensor(x_np)[None]

    def monai_forward(v):
        z = adapter.preprocessing.apply(v, bound.grids)
        y = sliding_window_inference(z, (12, 12, 12), 4, net, overlap=0.5, padding_mode=padding_mode)
        return adapter.preprocessing.invert_output(torch.as_tensor(y), bound.grids)

    with torch.no_grad():
        output = bound(x)
        torch.testing.assert_close(output, monai_forward(x), rtol=0, atol=1e-5)
    scorer = resolve_target(Target(class_index=1, region="predicted", score="probability"), output, "segmentation")
    found = bound.gradient(x, scorer)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(scorer(monai_forward(leaf)).sum(), leaf)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(found.grad, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
