"""Counterfactual volumes: goals, generators, metrics, saving and the ``medxai counterfactual`` command.

Models with a known decision rule make the expected counterfactual computable by hand:

- ``BoxClassifier``: class-1 logit = (mean intensity in a box - threshold) x gain, class 0 = 0, so the
  class-1 probability is sigmoid((mean - threshold) x gain) and only voxels in the box matter;
- ``ThresholdSegmenter``: a voxel is class 1 exactly when its intensity exceeds a threshold;
- ``BrightSpotDetector``: class-1 logit grows with the brightest 3x3x3 mean of the image.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from MedXAILib import Cancelled, ImageVolume, InputError, Monitor, PROVENANCE_KEY, TargetError, UnknownNameError
from MedXAILib.cli.main import main
from MedXAILib.counterfactual import GENERATORS, Counterfactual, Goal, generate_counterfactual
from MedXAILib.counterfactual.goals import voxel_ml
from MedXAILib.counterfactual.inpaint import harmonic_fill
from MedXAILib.counterfactual.report import noise_level, plausibility
from MedXAILib.io import read_image, write_image
from MedXAILib.model import load_model

from conftest import expect_cli_error, interrupt_cli, oblique_affine, with_extra_args

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (24, 20, 16)
BOX = (8, 6, 5, 14, 12, 10)  # i0, j0, k0, i1, j1, k1 (exclusive ends)


class BoxClassifier(torch.nn.Module):
    def __init__(self, box=BOX, threshold=20.0, gain=0.2):
        super().__init__()
        self.box, self.threshold, self.gain = box, threshold, gain

    def forward(self, x):
        i0, j0, k0, i1, j1, k1 = self.box
        z = (x[:, 0, i0:i1, j0:j1, k0:k1].mean(dim=(1, 2, 3)) - self.threshold) * self.gain
        return torch.stack([torch.zeros_like(z), z], 1)


class ThresholdSegmenter(torch.nn.Module):
    def __init__(self, threshold=50.0, gain=0.5):
        super().__init__()
        self.threshold, self.gain = threshold, gain

    def forward(self, x):
        z = (x[:, :1] - self.threshold) * self.gain
        return torch.cat([torch.zeros_like(z), z], 1)


class BrightSpotDetector(torch.nn.Module):
    def __init__(self, level=150.0, width=10.0):
        super().__init__()
        self.level, self.width = level, width

    def forward(self, x):
        spot = torch.nn.functional.avg_pool3d(x[:, :1], 3, stride=1).amax(dim=(1, 2, 3, 4))
        z = (spot - self.level) / self.width
        return torch.stack([-z, z], 1)


def box_mask(shape=SHAPE, box=BOX) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box[0]:box[3], box[1]:box[4], box[2]:box[5]] = True
    return mask


def noise_image(seed=0, shape=SHAPE, sd=10.0, affine=None) -> ImageVolume:
    rng = np.random.default_rng(seed)
    return ImageVolume(rng.normal(0.0, sd, size=(1, *shape)).astype(np.float32),
                       np.diag([1.5, 1.2, 2.0, 1.0]) if affine is None else affine)


def classifier(module=None):
    return load_model(module or BoxClassifier(), task="classification", class_names=["normal", "finding"],
                      device="cpu")


def segmenter(module=None):
    return load_model(module or ThresholdSegmenter(), task="segmentation", class_names=["background", "blob"],
                      device="cpu")


def blob_image(seed=0, shape=SHAPE, affine=None) -> tuple[ImageVolume, np.ndarray]:
    """Noise around 0 with a bright ellipsoid (about 100) in the middle: the ThresholdSegmenter's class 1."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    blob = ((ii - 12) / 4.5) ** 2 + ((jj - 10) / 3.5) ** 2 + ((kk - 8) / 3.0) ** 2 <= 1
    array = rng.normal(0.0, 5.0, size=shape) + 100.0 * blob
    return ImageVolume(array[None].astype(np.float32), oblique_affine() if affine is None else affine), blob


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# ------------------------------------------------------------------------------------------------
# Catalogue and goals


def test_catalog_and_goals_import_without_torch():
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'monai', 'scipy', 'SimpleITK', 'captum'}:\n"
        "            raise ModuleNotFoundError('blocked ' + name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from MedXAILib.counterfactual import GENERATORS, Goal, GradientSearchParams\n"
        "from MedXAILib.params import param_specs\n"
        "goal = Goal('structure_volume', 2, target_volume_ml=3.5)\n"
        "print(sorted(GENERATORS.names()), len(param_specs(GradientSearchParams)), goal.describe()['kind'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['gradient_search',", "'inpaint',", "'latent']", "10", "structure_volume"]


def test_registry_entries_carry_title_reference_and_parameters():
    for info in GENERATORS:
        assert info.name and info.title and info.reference and info.summary
        assert callable(info.load())
        assert info.params.__dataclass_fields__
    assert "Wachter" in GENERATORS.get("gradient_search").reference
    assert "Latent Shift" in GENERATORS.get("latent").reference and GENERATORS.get("latent").heavy
    assert GENERATORS.get("inpaint").needs_region and not GENERATORS.get("inpaint").optimises_goal
    with pytest.raises(UnknownNameError, match="did you mean 'gradient_search'"):
        GENERATORS.get("gradient_serch")


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(kind="class_prob", class_index=1), "did you mean 'class_probability'"),
    (dict(kind="class_probability", class_index=-1), ">= 0"),
    (dict(kind="class_probability", class_index=1, target_probability=1.0), "strictly between 0 and 1"),
    (dict(kind="structure_volume", class_index=1), "needs target_volume_ml"),
    (dict(kind="structure_volume", class_index=1, target_volume_ml=-2.0), ">= 0"),
    (dict(kind="remove_structure", class_index=1, target_probability=0.3), "applies to class_probability"),
    (dict(kind="remove_structure", class_index=1, target_volume_ml=3.0), "applies to structure_volume"),
])
def test_bad_goals_raise_target_errors(kwargs, fragment):
    with pytest.raises(TargetError, match=fragment):
        Goal(**kwargs)


def test_goals_the_model_cannot_have_are_refused():
    image = noise_image()
    with pytest.raises(TargetError, match="needs a segmentation model"):
        generate_counterfactual(image, classifier(), Goal("remove_structure", 1))
    with pytest.raises(TargetError, match="out of range"):
        generate_counterfactual(image, classifier(), Goal("class_probability", 5))
    with pytest.raises(TargetError, match="no structure to remove"):
        generate_counterfactual(image, segmenter(), Goal("remove_structure", 1))  # noise never exceeds 50
    with pytest.raises(InputError, match="needs a region"):
        generate_counterfactual(image, classifier(), Goal("class_probability", 1), generator="inpaint")
    with pytest.raises(InputError, match="covers no voxel"):
        generate_counterfactual(image, classifier(), Goal("class_probability", 1), region=np.zeros(SHAPE, bool))
    with pytest.raises(InputError, match="resample it onto"):
        generate_counterfactual(image, classifier(), Goal("class_probability", 1), region=np.ones((3, 3, 3), bool))
    with pytest.raises(InputError, match="low < high"):
        generate_counterfactual(image, classifier(), Goal("class_probability", 1), bounds=(5.0, 5.0))
    with pytest.raises(InputError, match="constant"):
        generate_counterfactual(image.with_array(np.zeros((1, *SHAPE), np.float32)), classifier(),
                                Goal("class_probability", 1))


# ------------------------------------------------------------------------------------------------
# gradient_search on a model with a known decision rule


def test_gradient_search_reaches_the_goal_inside_the_box():
    image, region = noise_image(), box_mask()
    result = generate_counterfactual(image, classifier(), Goal("class_probability", 1, target_probability=0.9),
                                     region=region)
    validity = result.metrics["validity"]
    assert validity["reached"] and validity["after"] >= 0.9 > validity["before"]
    # the model's rule, evaluated independently on the saved volume
    mean = float(result.volume.array[0][region].mean())
    expected = sigmoid((mean - 20.0) * 0.2)
    assert result.after["probabilities"][1] == pytest.approx(expected, abs=1e-5)
    assert validity["after"] == pytest.approx(expected, abs=1e-5)
    assert result.metrics["locality"] == 1.0
    delta = result.difference.array[0]
    assert np.all(delta[~region] == 0)
    np.testing.assert_array_equal(result.difference.array, result.volume.array - image.array)
    assert result.provenance["diagnostics"]["stop_reason"] == "goal reached"


def test_gradient_search_without_region_changes_only_where_the_model_looks():
    image, region = noise_image(1), box_mask()
    # voxel by voxel (smooth_mm=0): the L1 proximal step leaves every voxel the model ignores exactly unchanged
    result = generate_counterfactual(image, classifier(), Goal("class_probability", 1, target_probability=0.9),
                                     params={"smooth_mm": 0})
    assert result.reached and result.metrics["locality"] is None
    delta = np.abs(result.difference.array[0].astype(np.float64))
    share = delta[region].sum() / delta.sum()
    assert share >= 0.99, share  # gradients vanish outside the box, and the TV term does not drag change out
    assert np.count_nonzero(delta[~region]) == 0
    assert result.metrics["sparsity"]["changed_voxels"] <= region.sum()


def test_gradient_search_defaults_keep_a_smooth_change_around_where_the_model_looks():
    # calibrated goal weight, change made through a 3 mm Gaussian: the change stays on the box the model
    # averages, up to the Gaussian's reach
    image, region = noise_image(1), box_mask()
    result = generate_counterfactual(image, classifier(), Goal("class_probability", 1, target_probability=0.9))
    assert result.reached
    spacing = image.spacing
    # a source moves where the Gaussian carries the box's gradient, its blob reaches as far again: 2 x 3 sigma
    near = ndimage.distance_transform_edt(~region, sampling=spacing) <= 2 * (3 * 3.0 + max(spacing))
    delta = np.abs(result.difference.array[0].astype(np.float64))
    assert np.count_nonzero(delta[~near]) == 0
    assert delta[region].sum() / delta.sum() >= 0.4  # the 9 x 7 x 10 mm box, blurred by 3 mm, keeps ~half
    minimality = result.metrics["minimality"]
    assert minimality["changed_voxels"] == result.metrics["sparsity"]["changed_voxels"] <= near.sum()
    # on a 24 x 20 x 16 image that reach is most of the image: flagged as not minimal, and said
    assert minimality["minimal"] == (minimality["changed_share_of_image"] <= 0.05)
    assert minimality["minimal"] or any("not minimal" in w for w in result.warnings)
    assert minimality["changed_ml"] == pytest.approx(minimality["changed_voxels"] * voxel_ml(image.affine), rel=1e-3)


def test_gradient_search_lowers_a_probability():
    image = noise_image(2)
    image.array[0][box_mask()] += 50.0  # start confidently in class 1
    result = generate_counterfactual(image, classifier(), Goal("class_probability", 1, target_probability=0.2))
    assert result.before["predicted_class"] == 1 and result.after["predicted_class"] == 0
    assert result.metrics["validity"]["after"] <= 0.2 and result.reached
    assert np.all(result.difference.array[0][box_mask()] <= 0)  # lowering the mean needs darker voxels only


def test_l2_search_finds_the_minimal_uniform_shift():
    # For a box mean, the smallest L2 change reaching the target raises every box voxel by the same s*.
    image, region = noise_image(3), box_mask()
    target = 0.9
    mean0 = float(image.array[0][region].mean())
    s_star = 20.0 + math.log(target / (1 - target)) / 0.2 - mean0
    params = {"distance": "l2", "tv_weight": 0.0, "step_size": 0.0005, "max_steps": 2000, "smooth_mm": 0}
    result = generate_counterfactual(image, classifier(), Goal("class_probability", 1, target_probability=target),
                                     params=params, bounds=(-1000.0, 1000.0))
    assert result.reached
    delta = result.difference.array[0][region].astype(np.float64)
    assert s_star <= delta.mean() <= s_star + 2.0, (delta.mean(), s_star)
    assert delta.std() <= 0.05 * delta.mean()
    assert np.all(result.difference.array[0][~region] == 0)
    assert result.metrics["proximity"]["l2"] == pytest.approx(np.sqrt((delta ** 2).sum()), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("generator, goal", [
    ("gradient_search", Goal("class_probability", 1, target_probability=0.95)),
    ("gradient_search", Goal("class_probability", 1, target_probability=0.05)),
    ("inpaint", Goal("class_probability", 1)),
])
def test_intensity_bounds_are_never_violated(seed, generator, goal):
    image = noise_image(seed, sd=30.0)
    low, high = -25.0, 35.0
    outside = (image.array < low) | (image.array > high)
    assert outside.any()  # some input voxels start outside the bounds
    params = {"max_steps": 60, "step_size": 0.05} if generator == "gradient_search" else {"ring_mm": 3.0}
    result = generate_counterfactual(image, classifier(BoxClassifier(gain=0.05)), goal, generator=generator,
                                     region=box_mask() if generator == "inpaint" else None, params=params,
                                     bounds=(low, high), seed=seed)
    x, xp = image.array, result.volume.array
    inside = ~outside
    assert np.all((xp[inside] >= np.float32(low)) & (xp[inside] <= np.float32(high)))
    # a voxel already outside never moves further away from the range
    assert np.all(xp[x < low] >= x[x < low]) and np.all(xp[x > high] <= x[x > high])
    assert result.metrics["proximity"]["max_abs"] <= (high - low) + np.abs(x).max()


# ------------------------------------------------------------------------------------------------
# Segmenters: remove a structure, reach a volume


def test_remove_structure_on_a_threshold_segmenter():
    image, blob = blob_image()
    result = generate_counterfactual(image, segmenter(), Goal("remove_structure", 1), params={"smooth_mm": 0})
    assert result.reached
    assert result.before["voxels_per_class"][1] == blob.sum()
    assert result.after["voxels_per_class"][1] == 0 and result.after["volumes_ml"][1] == 0
    assert np.all(result.volume.array[0] <= 50.0)  # the rule: class 1 exactly above 50
    changed = result.difference.array[0] != 0
    assert changed.any() and not np.any(changed & ~blob)  # only the structure's voxels were touched
    assert result.after["label_map"].shape == SHAPE and not np.any(result.after["label_map"] == 1)
    np.testing.assert_array_equal(result.before["label_map"] == 1, blob)


@pytest.mark.parametrize("factor", [0.5, 1.6])
def test_structure_volume_shrinks_and_grows_to_the_target(factor):
    image, blob = blob_image(1)
    ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000
    target = float(blob.sum() * ml * factor)
    result = generate_counterfactual(image, segmenter(), Goal("structure_volume", 1, target_volume_ml=target),
                                     params={"step_size": 0.002, "max_steps": 400})
    validity = result.metrics["validity"]
    assert validity["reached"], validity
    after_ml = float((result.volume.array[0] > 50.0).sum() * ml)  # the rule, independently of the library
    assert abs(after_ml - target) <= max(0.05 * target, ml)
    assert validity["after"] == pytest.approx(after_ml, rel=1e-6)


def test_remove_structure_reduces_a_monai_segmenters_structure(segmenter):
    image = noise_image(0, shape=(20, 16, 12), sd=1.0)
    before = generate_counterfactual(image, segmenter, Goal("remove_structure", 1),
                                     params={"max_steps": 0}).before["voxels_per_class"][1]
    # the fixed-weight, voxel-wise search: its goal loss alone moves a large, diffuse structure in 40 steps
    # (the calibrated default starts from the few voxels that matter most and needs more steps for that)
    result = generate_counterfactual(image, segmenter, Goal("remove_structure", 1),
                                     params={"max_steps": 40, "goal_weight": 1.0, "smooth_mm": 0})
    assert before > 0
    assert result.after["voxels_per_class"][1] < 0.75 * before
    assert result.metrics["validity"]["after"] < result.metrics["validity"]["before"]


# ------------------------------------------------------------------------------------------------
# inpaint


def test_goal_weight_grows_only_after_the_loss_stalls_for_patience_steps():
    from MedXAILib.counterfactual.goals import GoalWeight

    weight = GoalWeight(1.0, patience=2, growth=3.0)
    assert [weight.update(v) for v in (1.0, 0.5, 0.499, 0.498)] == [1.0, 1.0, 1.0, 3.0]  # < 1 % better: stalled
    assert weight.update(0.3) == 3.0 and weight.stalled == 0  # a real improvement resets the count
    assert [weight.update(0.3) for _ in range(2)] == [3.0, 9.0]


def test_harmonic_fill_reproduces_a_linear_field_exactly():
    # A linear function is harmonic for any axis weights: the filling must give it back.
    shape, spacing = (14, 12, 10), np.array([0.7, 1.3, 2.5])
    ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    field = (3.0 + 2.0 * ii - 1.5 * jj + 0.25 * kk).astype(np.float32)
    region = np.zeros(shape, bool)
    region[3:11, 2:9, 2:8] = True
    damaged = field.copy()
    damaged[region] = 500.0
    np.testing.assert_allclose(harmonic_fill(damaged, region, spacing), field, atol=1e-3)


def _lesion_scene(seed=1):
    rng = np.random.default_rng(seed)
    shape = (32, 32, 24)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    background = 50.0 + 1.5 * ii - 0.8 * kk
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.normal(size=shape), 0.8)
    noise *= 5.0 / noise.std()
    lesion = (ii - 16) ** 2 + (jj - 15) ** 2 + ((kk - 12) * 1.5) ** 2 <= 25
    array = background + noise + 120.0 * lesion
    return ImageVolume(array[None].astype(np.float32), np.diag([1.0, 1.0, 1.5, 1.0])), lesion, background


def test_inpainting_a_bright_lesion_removes_it():
    image, lesion, background = _lesion_scene()
    detector = classifier(BrightSpotDetector())
    result = generate_counterfactual(image, detector, Goal("class_probability", 1, target_probability=0.5),
                                     generator="inpaint", region=lesion)
    assert result.before["probabilities"][1] > 0.99 and result.after["probabilities"][1] < 0.01
    assert result.reached and result.metrics["locality"] == 1.0
    ring = result.provenance["diagnostics"]["ring"][0]
    filled = result.volume.array[0][lesion]
    assert ring["min"] <= filled.min() and filled.max() <= ring["max"]
    # the lesion is gone: the filling follows the background trend, with the ring's texture
    residual = filled - background[lesion]
    assert abs(residual.mean()) < 3.0 and 0.6 * ring["std"] < residual.std() < 1.6 * ring["std"]
    assert np.all(result.difference.array[0][~lesion] == 0)
    same = generate_counterfactual(image, detector, Goal("class_probability", 1), generator="inpaint", region=lesion)
    np.testing.assert_array_equal(same.volume.array, result.volume.array)  # seeded
    other = generate_counterfactual(image, detector, Goal("class_probability", 1), generator="inpaint",
                                    region=lesion, seed=1)
    assert not np.array_equal(other.volume.array, result.volume.array)


def test_inpaint_grow_mm_fills_the_partial_volume_rim():
    image, lesion, _ = _lesion_scene()
    result = generate_counterfactual(image, classifier(BrightSpotDetector()), Goal("class_probability", 1),
                                     generator="inpaint", region=lesion, params={"grow_mm": 2.0, "noise": "none"})
    grown = result.provenance["effective_region_voxels"]
    assert grown > lesion.sum() == result.provenance["region_voxels"]
    changed = result.difference.array[0] != 0
    assert changed.sum() <= grown and result.metrics["locality"] == 1.0


class DarkSpotInOrgan(torch.nn.Module):
    """Lesion score with a known rule: how far the darkest 3x3x3 mean inside an organ mask lies below a level."""

    def __init__(self, organ: np.ndarray, level: float = 30.0, width: float = 5.0):
        super().__init__()
        self.register_buffer("organ", torch.as_tensor(organ))
        self.level, self.width = level, width

    def forward(self, x):
        smooth = torch.nn.functional.avg_pool3d(x[:, :1], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
        darkest = torch.where(self.organ, smooth, torch.full_like(smooth, 1e4)).amin(dim=(1, 2, 3))
        z = (self.level - darkest) / self.width
        return torch.stack([-z, z], 1)


def test_inpainting_the_demo_phantom_lesion_lowers_a_lesion_detectors_probability():
    from scipy.ndimage import binary_erosion

    from MedXAILib.demo.samples import Lesion, ct_phantom, sphere_mask

    lesion = [Lesion(organ="liver", radius_mm=9.0, contrast_hu=-60.0)]
    image, labels, info = ct_phantom(3, lesions=lesion, rotation_deg=12.0)
    clean, clean_labels, _ = ct_phantom(3, lesions=[], rotation_deg=12.0)  # same anatomy and noise, no lesion
    # the detector looks at the liver (clear of its blurred border) within 35 mm of the lesion
    liver = binary_erosion((clean_labels == 2), iterations=2)
    liver &= sphere_mask(image.affine, image.shape, info["lesions"][0]["centre_ras"], 35.0)
    detector = classifier(DarkSpotInOrgan(liver))
    region = labels == 7
    result = generate_counterfactual(image, detector, Goal("class_probability", 1, target_probability=0.5),
                                     generator="inpaint", region=region, params={"grow_mm": 4.0})
    reference = generate_counterfactual(clean, detector, Goal("class_probability", 1), params={"max_steps": 0})
    before, after = result.before["probabilities"][1], result.after["probabilities"][1]
    assert before > 0.99 and after < 0.5 and result.reached, (before, after)
    assert abs(after - reference.before["probabilities"][1]) < 0.3  # as likely as the phantom without the lesion
    grown = result.difference.array[0] != 0
    assert grown.sum() <= result.provenance["effective_region_voxels"] and not np.any(grown & ~liver & ~region
                                                                                      & (clean_labels != 2))
    filled = result.volume.array[0][region]
    truth = clean.array[0][region]
    assert abs(filled.mean() - truth.mean()) < 8.0  # the liver behind the lesion, not the lesion (-60 HU)
    assert np.abs(filled - truth).mean() < 2.5 * 15.0  # within the phantom's noise (15 HU)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inpainting_the_demo_lesion_lowers_the_shipped_classifiers_lesion_probability(seed):
    """The demo's question with its shipped PET/CT classifier: without the lesion, is P(lesion) lower?"""
    from MedXAILib.demo import CLASSIFIER, PHANTOM_SEED, demo_case
    from MedXAILib.demo.sections import GROW_MM
    from MedXAILib.demo.samples import ct_phantom, pet_channel

    case = demo_case(seed)  # held-out phantoms with one liver lesion (radius 9 mm, -45 HU, SUV 8), CT + PET
    model = load_model(ROOT / "Resources" / "Models" / f"{CLASSIFIER}.json", device="cpu")
    result = generate_counterfactual(case.image, model, Goal("class_probability", 1, target_probability=0.5),
                                     generator="inpaint", region=case.lesion, params={"grow_mm": GROW_MM}, seed=seed)
    ct, labels, info = ct_phantom(PHANTOM_SEED + seed, lesions=[])  # the same anatomy and noise, no lesion
    clean = ImageVolume(np.concatenate([ct.array, pet_channel(labels, info).array]), ct.affine)
    truth = generate_counterfactual(clean, model, Goal("class_probability", 1),
                                    params={"max_steps": 0}).before["probabilities"][1]
    before, after = result.before["probabilities"][1], result.after["probabilities"][1]
    assert before > 0.5, f"the shipped classifier misses the demo lesion (P = {before:.3f})"
    assert after < 0.5 and result.reached, f"inpainting left P(lesion) at {after:.3f} (from {before:.3f})"
    assert abs(after - truth) < 0.25, f"P after inpainting {after:.3f}, on the phantom without a lesion {truth:.3f}"
    changed = (result.difference.array != 0).any(axis=0)
    assert changed[case.lesion].mean() > 0.9 and changed.sum() <= result.provenance["effective_region_voxels"]


# ------------------------------------------------------------------------------------------------
# Metrics


def test_noise_level_and_plausibility_against_analytic_values():
    rng = np.random.default_rng(0)
    white = rng.normal(0.0, 7.0, size=(40, 40, 30))
    assert noise_level(white) == pytest.approx(7.0, rel=0.03)
    steps = white + 300.0 * (np.arange(40) >= 20)[:, None, None]  # an edge does not count as noise
    assert noise_level(steps) == pytest.approx(7.0, rel=0.05)
    before = rng.normal(size=(1, 10, 10, 10))
    shifted = before + 2.5  # W1 of a shift is the shift, in every class
    report = plausibility(before, shifted)
    assert report["classes"] == "quartiles" and len(report["per_class"]) == 4
    assert all(r["wasserstein"] == pytest.approx(2.5) for r in report["per_class"])
    from scipy.stats import wasserstein_distance

    labels = (np.arange(1000).reshape(10, 10, 10) % 3)
    after = before * 1.7
    report = plausibility(before, after, labels)
    for row in report["per_class"]:
        sel = labels == row["class"]
        assert row["wasserstein"] == pytest.approx(wasserstein_distance(before[0][sel], after[0][sel]), rel=1e-9)


# ------------------------------------------------------------------------------------------------
# Saving


def _segmenter_result() -> tuple[ImageVolume, Counterfactual]:
    image, _ = blob_image()
    return image, generate_counterfactual(image, segmenter(), Goal("remove_structure", 1))


def test_save_writes_every_file_with_the_input_geometry(tmp_path):
    image, result = _segmenter_result()
    written = result.save(tmp_path / "cf")
    names = sorted(p.name for p in written)
    assert names == ["counterfactual.nrrd", "difference.nrrd", "prediction_after.nrrd", "prediction_before.nrrd",
                     "summary.json"]
    assert sorted(os.listdir(tmp_path)) == ["cf"]  # no temporary folder left
    volumes = {n: read_image(tmp_path / "cf" / n) for n in names if n.endswith(".nrrd")}
    for volume in volumes.values():
        np.testing.assert_allclose(volume.affine, image.affine, atol=1e-5)
        assert volume.shape == image.shape
    np.testing.assert_array_equal(volumes["counterfactual.nrrd"].array, result.volume.array)
    np.testing.assert_array_equal(volumes["difference.nrrd"].array, result.volume.array - image.array)
    np.testing.assert_array_equal(volumes["prediction_before.nrrd"].array[0], result.before["label_map"])
    np.testing.assert_array_equal(volumes["prediction_after.nrrd"].array[0], result.after["label_map"])
    provenance = json.loads(volumes["counterfactual.nrrd"].meta["header"][PROVENANCE_KEY])
    assert provenance["generator"] == "gradient_search" and provenance["goal"]["kind"] == "remove_structure"
    summary = json.loads((tmp_path / "cf" / "summary.json").read_text())
    assert summary["metrics"]["validity"]["reached"] is True
    assert summary["before"]["label_map"] == "prediction_before.nrrd"
    assert summary["after"]["voxels_per_class"][1] == 0
    with pytest.raises(InputError, match="already holds"):
        result.save(tmp_path / "cf")
    assert len(result.save(tmp_path / "cf", overwrite=True)) == 5


def test_classifier_save_writes_no_label_maps(tmp_path):
    result = generate_counterfactual(noise_image(), classifier(), Goal("class_probability", 1), region=box_mask())
    assert sorted(p.name for p in result.save(tmp_path / "out")) == ["counterfactual.nrrd", "difference.nrrd",
                                                                    "summary.json"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["after"]["probabilities"] == result.after["probabilities"]


def test_save_is_all_or_nothing(tmp_path, monkeypatch):
    import MedXAILib.io as io

    _, result = _segmenter_result()
    real = io.write_image
    calls = []

    def failing(volume, path, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise InputError("disk full (simulated)")
        return real(volume, path, **kw)

    monkeypatch.setattr(io, "write_image", failing)
    with pytest.raises(InputError, match="disk full"):
        result.save(tmp_path / "new")
    assert os.listdir(tmp_path) == []
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "summary.json").write_text("previous")
    calls.clear()
    with pytest.raises(InputError, match="disk full"):
        result.save(existing, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["old"] and os.listdir(existing) == ["summary.json"]
    assert (existing / "summary.json").read_text() == "previous"


# ------------------------------------------------------------------------------------------------
# Progress and cancel


def test_progress_is_monotonic_and_cancel_stops_within_a_second():
    seen = []
    generate_counterfactual(noise_image(), classifier(), Goal("class_probability", 1), region=box_mask(),
                            monitor=Monitor(lambda f, m: seen.append(f)))
    assert seen == sorted(seen) and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)

    cancelled_at = []

    def cancel_after_a_few(fraction, message):
        if message.startswith("step 3/") and not cancelled_at:
            cancelled_at.append(time.monotonic())
            monitor.cancel()

    monitor = Monitor(cancel_after_a_few)
    image, blob = blob_image()
    with pytest.raises(Cancelled):
        generate_counterfactual(image, segmenter(), Goal("remove_structure", 1),
                                params={"max_steps": 100000, "step_size": 1e-6, "goal_weight_growth": 1.0},
                                monitor=monitor)
    assert cancelled_at and time.monotonic() - cancelled_at[0] < 1.0


# ------------------------------------------------------------------------------------------------
# latent


def _tiny_autoencoder(path: Path) -> Path:
    from MedXAILib.counterfactual.autoencoder import build_autoencoder, save_autoencoder

    args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "num_res_blocks": 1, "channels": [4, 4],
            "attention_levels": [False, False], "latent_channels": 2, "norm_num_groups": 2,
            "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}
    torch.manual_seed(0)
    return save_autoencoder(build_autoencoder(args), path, args=args, intensity={"offset": 0.0, "scale": 20.0})


def test_latent_reaches_the_goal_inside_bounds_and_region(tmp_path):
    spec = _tiny_autoencoder(tmp_path / "ae.json")
    image = noise_image(0, shape=(23, 20, 15))  # not a multiple of the downsampling: padded and cropped
    region = box_mask(image.shape)
    goal = Goal("class_probability", 1, target_probability=0.6)
    result = generate_counterfactual(image, classifier(BoxClassifier(gain=0.1)), goal, generator="latent",
                                     region=region, params={"autoencoder": str(spec), "step_size": 0.2},
                                     bounds=(-40.0, 60.0))
    assert result.reached, result.warnings
    assert np.all(result.difference.array[0][~region] == 0) and result.metrics["locality"] == 1.0
    inside = (image.array >= -40) & (image.array <= 60)
    assert np.all((result.volume.array[inside] >= -40) & (result.volume.array[inside] <= 60))
    diagnostics = result.provenance["diagnostics"]
    assert diagnostics["latent_shift_norm"] > 0 and diagnostics["autoencoder"]["source"] == str(spec)
    # no step: the latent code is unchanged, so the counterfactual is the input, exactly
    met = generate_counterfactual(image, classifier(BoxClassifier(gain=0.1)), goal, generator="latent",
                                  params={"autoencoder": str(spec), "max_steps": 0})
    assert not met.reached and np.array_equal(met.volume.array, image.array)


def test_latent_refuses_pickled_code_and_missing_autoencoders(tmp_path):
    from MedXAILib import ModelError, UntrustedModelError

    spec = _tiny_autoencoder(tmp_path / "ae.json")

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"weights": Exploit()}, tmp_path / "ae.pt")
    with pytest.raises(UntrustedModelError):
        generate_counterfactual(noise_image(), classifier(), Goal("class_probability", 1), generator="latent",
                                params={"autoencoder": str(spec)})
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ModelError, match="not found"):
        generate_counterfactual(noise_image(), classifier(), Goal("class_probability", 1), generator="latent",
                                params={"autoencoder": str(tmp_path / "missing.json")})


def test_shipped_autoencoder_has_its_card_and_reproducible_record():
    from MedXAILib.counterfactual.autoencoder import AUTOENCODER_ARGS, INTENSITY, default_autoencoder_path, load_autoencoder

    spec_path = default_autoencoder_path()
    net, spec = load_autoencoder()
    weights = spec_path.with_suffix(".pt")
    assert weights.stat().st_size < 10 * 2 ** 20
    assert spec["network"]["args"] == AUTOENCODER_ARGS and spec["intensity"] == INTENSITY
    assert spec["reproduce"].startswith("python -m MedXAILib.demo.training.autoencoder")
    card = spec_path.with_suffix(".md").read_text(encoding="utf-8")
    assert spec["sha256"][:16] in card and "Limitations" in card and "not for clinical use" in card
    assert spec["training"]["n_parameters"] == sum(p.numel() for p in net.parameters())


@pytest.mark.slow
def test_latent_with_the_shipped_autoencoder_fills_the_demo_lesion():
    from scipy.ndimage import binary_erosion

    from MedXAILib.demo.samples import Lesion, ct_phantom, sphere_mask

    image, labels, info = ct_phantom(3, lesions=[Lesion(organ="liver", radius_mm=9.0, contrast_hu=-60.0)],
                                     rotation_deg=12.0)
    _, clean_labels, _ = ct_phantom(3, lesions=[], rotation_deg=12.0)
    centre = info["lesions"][0]["centre_ras"]
    liver = binary_erosion(clean_labels == 2, iterations=2) & sphere_mask(image.affine, image.shape, centre, 35.0)
    result = generate_counterfactual(image, classifier(DarkSpotInOrgan(liver)),
                                     Goal("class_probability", 1, target_probability=0.5), generator="latent",
                                     params={"max_steps": 30})
    assert result.reached and result.after["probabilities"][1] < 0.5 < result.before["probabilities"][1]
    delta = result.difference.array[0]
    assert delta[labels == 7].mean() > 25.0  # the dark (-60 HU) lesion is brightened towards the liver
    assert result.metrics["sparsity"]["changed_fraction"] < 0.01
    near = sphere_mask(image.affine, image.shape, centre, 20.0)
    assert np.abs(delta[near]).mean() > 20 * np.abs(delta[~near]).mean()


def test_autoencoder_training_is_deterministic():
    from MedXAILib.demo.training.autoencoder import train_autoencoder

    first, record = train_autoencoder(seed=1, steps=2, n_phantoms=2, log=lambda *_: None)
    second, _ = train_autoencoder(seed=1, steps=2, n_phantoms=2, log=lambda *_: None)
    assert record["steps"] == 2 and record["n_train_phantoms"] == 2
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------------
# Command line

def cf_args(files, *extra):
    return ["counterfactual", "--image", str(files["image"]), "--model", str(files["model"]), "--quiet", *extra]


def test_cli_writes_the_folder_and_summary(cli_files, capsys):
    out, summary = cli_files["dir"] / "cf", cli_files["dir"] / "summary_copy.json"
    code = main(cf_args(cli_files, "--goal", "remove_structure", "--class", "1", "--region", str(cli_files["mask"]),
                        "--param", "max_steps=5", "--bounds=-3,3", "--out", str(out), "--json", str(summary),
                        "--seed", "4", "--progress-json"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert records[-1]["done"] is True and len(records[-1]["outputs"]) == 6
    assert all(0 <= r["progress"] <= 1 for r in records[:-1]) and records[-2]["progress"] == 1.0
    image = read_image(cli_files["image"])
    cf = read_image(out / "counterfactual.nrrd")
    np.testing.assert_allclose(cf.affine, image.affine, atol=1e-5)
    region = read_image(cli_files["mask"]).array[0] != 0
    assert np.all(cf.array[0][~region] == image.array[0][~region])
    provenance = json.loads(cf.meta["header"][PROVENANCE_KEY])
    assert provenance["seed"] == 4 and provenance["goal_name"] == "organ" and provenance["region_voxels"] == 7 * 6 * 5
    assert provenance["bounds"]["requested"] == [-3.0, 3.0] and len(provenance["model"]["sha256"]) == 64
    copy = json.loads(summary.read_text())
    assert copy["metrics"] == json.loads((out / "summary.json").read_text())["metrics"]


def _write(path: Path, array: np.ndarray, affine=None) -> Path:
    write_image(ImageVolume(array.astype(np.float32), oblique_affine() if affine is None else affine), path)
    return path


CLI_BAD = {
    "missing image": (lambda f: ["--image", str(f["dir"] / "nope.nrrd")], "nope.nrrd"),
    "unknown generator": (lambda f: ["--generator", "gradient_serch"], "did you mean 'gradient_search'"),
    "bad parameter": (lambda f: ["--param", "max_step=3"], "did you mean 'max_steps'"),
    "parameter out of range": (lambda f: ["--param", "step_size=5"], "step_size"),
    "class out of range": (lambda f: ["--class", "9"], "out of range"),
    "volume goal without volume": (lambda f: ["--goal", "structure_volume"], "target_volume_ml"),
    "probability out of range": (lambda f: ["--goal", "class_probability", "--target-probability", "1.5"],
                                 "strictly between"),
    "inpaint without region": (lambda f: ["--generator", "inpaint"], "--region"),
    "region off the grid": (lambda f: ["--region", str(_write(f["dir"] / "far.nrrd", np.ones((4, 4, 4)),
                                       np.diag([1, 1, 1, 1.0]) + np.pad(np.array([[5000.0], [0], [0]]),
                                                                         ((0, 1), (3, 0)))))], "overlap"),
    "empty region": (lambda f: ["--region", str(_write(f["dir"] / "empty.nrrd", np.zeros((20, 16, 12))))],
                     "covers no voxel"),
    "bounds reversed": (lambda f: ["--bounds", "5,-5"], "low < high"),
    "bounds malformed": (lambda f: ["--bounds", "5"], "--bounds"),
    "out is a file": (lambda f: ["--out", str(f["image"])], "is an input file"),
    "json next to an input": (lambda f: ["--json", str(f["model"])], "is an input file"),
}


@pytest.mark.parametrize("case", sorted(CLI_BAD))
def test_cli_bad_input_exits_2_with_one_line_and_no_output(case, cli_files, capsys):
    make_args, fragment = CLI_BAD[case]
    extra = make_args(cli_files)
    out = cli_files["dir"] / "cf"
    args = cf_args(cli_files, "--goal", "remove_structure", "--class", "1", "--out", str(out))
    before = sorted(os.listdir(cli_files["dir"]))
    replaced = ("--image", "--out", "--goal", "--class")
    expect_cli_error(with_extra_args(args, extra, replaced), fragment, capsys)
    assert sorted(os.listdir(cli_files["dir"])) == before  # nothing written, no temporary folder left


def test_cli_ctrl_c_cancels_without_output(cli_files):
    out = cli_files["dir"] / "cf"
    args = cf_args(cli_files, "--goal", "remove_structure", "--class", "1", "--param", "max_steps=100000",
                   "--param", "step_size=0.000001", "--param", "goal_weight_growth=1", "--progress-json",
                   "--out", str(out))
    # Ctrl-C once the search is under way
    interrupt_cli(args, until=lambda record: record.get("message", "").startswith("step"))
    assert not out.exists() and not [n for n in os.listdir(cli_files["dir"]) if n.startswith(".medxai")]


def test_cli_says_when_the_goal_is_not_reached(cli_files, capsys):
    out = cli_files["dir"] / "cf"
    code = main(["counterfactual", "--image", str(cli_files["image"]), "--model", str(cli_files["model"]),
                 "--generator", "inpaint", "--goal", "remove_structure", "--class", "1", "--region",
                 str(cli_files["mask"]), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    labels_after = read_image(out / "prediction_after.nrrd").array[0]
    assert np.any(labels_after == 1)  # the structure is still predicted outside the inpainted region
    assert summary["goal_reached"] is False and summary["metrics"]["validity"]["reached"] is False
    assert any("the goal was not reached" in w for w in summary["warnings"])
    assert "medxai: warning: the goal was not reached: volume ml" in captured.err
    assert "goal NOT reached: volume ml" in captured.out
    assert summary["metrics"]["minimality"]["structure_ml"] > 0  # measured against the inpainted region
