"""The built-in sample data: CT phantom, its PET channel and the MNI template shipped with nilearn."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion, center_of_mass

from MedXAILib import ImageVolume, InputError, MedXAIError
from MedXAILib.demo.samples import CLASS_NAMES, Lesion, ct_phantom, mni_t1, pet_channel, pet_ct_phantom, sphere_mask
from MedXAILib.demo.samples import mni as mni_module

LABEL = {name: i for i, name in enumerate(CLASS_NAMES)}


@pytest.fixture(scope="module")
def phantom():
    return ct_phantom(7)


def _ras(volume: ImageVolume, ijk) -> np.ndarray:
    return volume.affine[:3, :3] @ np.asarray(ijk, dtype=np.float64) + volume.affine[:3, 3]


def _core(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    """The mask away from its border (partial volume and the reconstruction kernel)."""
    return binary_erosion(mask, iterations=iterations)


# ------------------------------------------------------------------------------------------------
# CT phantom


def test_phantom_is_deterministic_with_a_seed_and_changes_with_another(phantom):
    image, labels, info = phantom
    again, labels_again, info_again = ct_phantom(7)
    np.testing.assert_array_equal(image.array, again.array)
    np.testing.assert_array_equal(labels, labels_again)
    assert info == info_again
    other, other_labels, other_info = ct_phantom(8)
    assert not np.array_equal(image.array, other.array)
    assert not np.array_equal(labels, other_labels)
    assert other_info["lesions"] != info["lesions"]


def test_phantom_types_shapes_and_documented_classes(phantom):
    image, labels, info = phantom
    assert image.array.shape == (1, 96, 96, 64) and image.array.dtype == np.float32
    assert image.channel_names == ["CT"]
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert info["class_names"] == CLASS_NAMES == ["background", "body", "liver", "spleen", "kidney", "lung",
                                                  "bone", "lesion"]
    assert set(np.unique(labels)) == set(range(len(CLASS_NAMES)))  # every class is present
    assert np.all(np.isfinite(image.array))


def test_phantom_geometry_is_non_trivial_and_as_stated(phantom):
    image, _, info = phantom
    np.testing.assert_allclose(image.spacing, [2.0, 2.0, 3.0])
    np.testing.assert_allclose(image.affine, info["affine"], atol=1e-8)
    assert np.linalg.norm(image.origin) > 100  # far from the RAS origin
    np.testing.assert_allclose(image.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-12)  # LPS-stored
    centre_voxel = (np.array(image.shape) - 1) / 2
    np.testing.assert_allclose(_ras(image, centre_voxel), info["centre_ras"], atol=1e-9)


def test_anatomy_sits_on_the_right_sides_in_ras(phantom):
    image, labels, info = phantom
    centre = np.array(info["centre_ras"])
    liver = _ras(image, center_of_mass(labels == LABEL["liver"])) - centre
    spleen = _ras(image, center_of_mass(labels == LABEL["spleen"])) - centre
    bone = _ras(image, center_of_mass(labels == LABEL["bone"])) - centre
    lung = _ras(image, center_of_mass(labels == LABEL["lung"])) - centre
    kidney = _ras(image, center_of_mass(labels == LABEL["kidney"])) - centre
    assert liver[0] > 10 and spleen[0] < -10  # liver on the patient's right (+x in RAS), spleen on the left
    assert bone[1] < liver[1]  # the spine is posterior
    assert lung[2] > liver[2] > kidney[2]  # lungs above the liver above the kidneys


def test_rotation_moves_the_grid_not_the_anatomy():
    image, labels, info = ct_phantom(7, n_lesions=0, rotation_deg=10.0)
    plain, plain_labels, _ = ct_phantom(7, n_lesions=0)
    assert not np.allclose(image.direction, plain.direction)
    np.testing.assert_allclose(_ras(image, (np.array(image.shape) - 1) / 2), info["centre_ras"], atol=1e-9)
    for organ in ("liver", "kidney", "lung"):
        a = _ras(image, center_of_mass(labels == LABEL[organ]))
        b = _ras(plain, center_of_mass(plain_labels == LABEL[organ]))
        assert np.linalg.norm(a - b) < 3.0, organ  # mm; the organ cut by the field of view may shift a little


@pytest.mark.parametrize("organ, low, high", [
    ("background", -1010, -990), ("liver", 50, 70), ("spleen", 40, 60), ("kidney", 25, 45),
    ("lung", -870, -830), ("bone", 350, 750),
])
def test_hu_per_organ(phantom, organ, low, high):
    image, labels, _ = phantom
    core = _core(labels == LABEL[organ])
    assert core.sum() > 30
    mean = float(image.array[0][core].mean())
    assert low <= mean <= high, f"{organ}: mean {mean:.1f} HU outside [{low}, {high}]"


def test_noise_level_and_smoothing(phantom):
    image, labels, info = phantom
    core = _core(labels == LABEL["liver"], 3)
    values = image.array[0][core]
    assert 10 < float(values.std()) < 20  # about noise_hu = 15
    # correlated noise (the reconstruction kernel): neighbours along I are positively correlated
    diff = np.diff(image.array[0], axis=0)[core[:-1] & core[1:]]
    assert float(diff.std()) < math.sqrt(2) * float(values.std()) * 0.95


def test_noise_free_phantom_has_plateaus():
    image, labels, _ = ct_phantom(2, noise_hu=0.0, n_lesions=0)
    core = _core(labels == LABEL["liver"], 3)
    np.testing.assert_allclose(image.array[0][core], 60.0, atol=1.0)


def test_lesions_at_the_stated_position_size_and_contrast(phantom):
    image, labels, info = phantom
    assert len(info["lesions"]) == 2
    voxel_mm3 = float(np.prod(image.spacing))
    total = 0
    for lesion in info["lesions"]:
        assert lesion["organ"] == "liver"
        sphere = sphere_mask(image.affine, image.shape, lesion["centre_ras"], lesion["radius_mm"])
        assert np.all(labels[sphere] == LABEL["lesion"])
        total += int(sphere.sum())
        expected = 4 / 3 * math.pi * lesion["radius_mm"] ** 3 / voxel_mm3
        assert abs(sphere.sum() - expected) <= 0.15 * expected + 3
        assert lesion["n_voxels"] == int(sphere.sum())
        centroid = _ras(image, center_of_mass(sphere))
        assert np.linalg.norm(centroid - lesion["centre_ras"]) < 1.0  # mm
        np.testing.assert_allclose(
            np.linalg.inv(image.affine)[:3] @ np.append(lesion["centre_ras"], 1.0), lesion["centre_ijk"], atol=1e-3)
        assert 5.0 <= lesion["radius_mm"] <= 12.0 and -70.0 <= lesion["contrast_hu"] <= -35.0
        assert 6.0 <= lesion["suv"] <= 10.0
        core = sphere & _core(sphere, 1)
        if core.sum() >= 5:
            assert abs(float(image.array[0][core].mean()) - lesion["hu"]) < 15
        # the sphere lies inside the organ: a shell just outside it is liver
        shell = sphere_mask(image.affine, image.shape, lesion["centre_ras"], lesion["radius_mm"] + 1.5) & ~sphere
        assert np.mean(labels[shell] == LABEL["liver"]) > 0.9
    assert int((labels == LABEL["lesion"]).sum()) == total


def test_explicit_lesion_is_honoured():
    centre = (12.5 + 30.0, -31.0 + 5.0, -415.0)  # right liver lobe
    image, labels, info = ct_phantom(1, lesions=[Lesion(organ="liver", radius_mm=8.0, contrast_hu=-50.0,
                                                         centre_ras=centre, suv=7.0)], noise_hu=0.0)
    (lesion,) = info["lesions"]
    assert lesion["centre_ras"] == list(centre) and lesion["radius_mm"] == 8.0 and lesion["suv"] == 7.0
    assert lesion["hu"] == 10.0
    sphere = sphere_mask(image.affine, image.shape, centre, 8.0)
    assert np.all(labels[sphere] == LABEL["lesion"])
    assert (labels == LABEL["lesion"]).sum() == sphere.sum()
    centre_voxel = np.round(np.linalg.inv(image.affine)[:3] @ np.append(centre, 1.0)).astype(int)
    assert abs(float(image.array[0][tuple(centre_voxel)]) - 10.0) < 2.0
    # a dict works too
    _, _, info2 = ct_phantom(1, lesions=[{"organ": "liver", "radius_mm": 8.0, "contrast_hu": -50.0,
                                          "centre_ras": centre, "suv": 7.0}], noise_hu=0.0)
    assert info2["lesions"] == info["lesions"]


@pytest.mark.parametrize("organ", ["spleen", "kidney", "lung"])
def test_lesions_in_other_organs(organ):
    image, labels, info = ct_phantom(4, n_lesions=1, lesion_organs=(organ,))
    (lesion,) = info["lesions"]
    assert lesion["organ"] == organ
    sphere = sphere_mask(image.affine, image.shape, lesion["centre_ras"], lesion["radius_mm"])
    shell = sphere_mask(image.affine, image.shape, lesion["centre_ras"], lesion["radius_mm"] + 1.5) & ~sphere
    assert np.mean(labels[shell] == LABEL[organ]) > 0.9
    if organ == "lung":
        assert lesion["hu"] > -100  # a soft-tissue nodule in aerated lung


def test_same_seed_without_lesions_differs_only_at_the_lesions():
    with_lesions, labels, info = ct_phantom(5)
    without, labels0, info0 = ct_phantom(5, n_lesions=0)
    assert info0["lesions"] == []
    changed = np.abs(with_lesions.array[0] - without.array[0]) > 1e-3
    near = np.zeros_like(changed)
    for lesion in info["lesions"]:  # the kernel spreads the edge by a few millimetres
        near |= sphere_mask(without.affine, without.shape, lesion["centre_ras"], lesion["radius_mm"] + 6.0)
    assert changed.any() and not (changed & ~near).any()
    np.testing.assert_array_equal(labels0[labels != LABEL["lesion"]], labels[labels != LABEL["lesion"]])


def test_other_grids_keep_the_anatomy_in_millimetres():
    image, labels, info = ct_phantom(3, shape=(64, 64, 48), spacing=(3.0, 3.0, 4.0), n_lesions=1)
    fine, fine_labels, _ = ct_phantom(3, n_lesions=0)
    assert image.shape == (64, 64, 48)
    liver_ml = (labels == LABEL["liver"]).sum() * 36.0 / 1000
    fine_ml = (fine_labels == LABEL["liver"]).sum() * 12.0 / 1000
    assert abs(liver_ml - fine_ml) < 0.1 * fine_ml


@pytest.mark.parametrize("kwargs", [
    {"shape": (96, 96)}, {"spacing": (1.0, 0.0, 1.0)}, {"noise_hu": -1.0}, {"lesion_organs": ("heart",)},
    {"lesions": [{"organ": "brain"}]}, {"lesions": [{"organ": "liver", "size": 3}]},
    {"lesions": [{"organ": "liver", "radius_mm": -2.0}]}, {"lesions": [Lesion(radius_mm=60.0)]},
])
def test_bad_arguments_raise_input_errors(kwargs):
    with pytest.raises(InputError):
        ct_phantom(0, **kwargs)


def test_phantom_round_trips_through_a_file(tmp_path, phantom):
    from MedXAILib.io import read_image, write_image

    image, _, _ = phantom
    write_image(image, tmp_path / "phantom.nrrd")
    back = read_image(tmp_path / "phantom.nrrd")
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, image.array)


# ------------------------------------------------------------------------------------------------
# PET


def test_pet_is_deterministic_on_the_ct_grid(phantom):
    image, labels, info = phantom
    pet = pet_channel(labels, info)
    again = pet_channel(labels, info)
    np.testing.assert_array_equal(pet.array, again.array)
    assert not np.array_equal(pet.array, pet_channel(labels, info, seed=123).array)
    assert pet.same_grid(image) and pet.channel_names == ["PET"] and pet.meta["unit"] == "SUVbw"
    assert np.all(np.isfinite(pet.array)) and pet.array.min() >= 0


def test_pet_uptake_per_organ_and_hot_lesions(phantom):
    image, labels, info = phantom
    pet = pet_channel(labels, info).array[0]

    def mean(name, erosion=2):
        return float(pet[_core(labels == LABEL[name], erosion)].mean())

    assert mean("background") < 0.1
    assert 1.6 < mean("liver") < 2.4 and 1.4 < mean("spleen") < 2.2
    assert mean("kidney") > mean("liver") > mean("lung")
    for lesion in info["lesions"]:
        sphere = sphere_mask(image.affine, image.shape, lesion["centre_ras"], lesion["radius_mm"])
        peak = float(pet[sphere].max())
        assert peak > 2.0 * mean("liver")  # hot
        assert peak < lesion["suv"] * 1.3  # the PSF spreads it (partial volume), never adds much


def test_pet_psf_blurs_with_the_true_spacing():
    centre = (12.5 + 30.0, -31.0 + 5.0, -415.0)
    _, labels, info = ct_phantom(1, lesions=[Lesion(radius_mm=4.0, centre_ras=centre, suv=10.0)])
    sharp = pet_channel(labels, info, psf_fwhm_mm=0.0, postfilter_fwhm_mm=0.0, counts_per_suv=1e6).array[0]
    blurred = pet_channel(labels, info, psf_fwhm_mm=8.0, postfilter_fwhm_mm=0.0, counts_per_suv=1e6).array[0]
    assert sharp.max() == pytest.approx(10.0, rel=0.01)
    assert blurred.max() < 0.8 * sharp.max()  # a small lesion loses its peak to the PSF
    ijk = np.unravel_index(np.argmax(blurred), blurred.shape)
    # the spread along K (3 mm voxels) covers fewer voxels than along I (2 mm voxels)
    profile_i = blurred[:, ijk[1], ijk[2]]
    profile_k = blurred[ijk[0], ijk[1], :]
    assert (profile_i > blurred.max() / 2).sum() > (profile_k > blurred.max() / 2).sum()


def test_pet_ct_phantom_has_two_channels():
    volume, labels, info = pet_ct_phantom(2, n_lesions=1)
    assert volume.channel_names == ["CT", "PET"] and volume.array.shape == (2, 96, 96, 64)
    ct, labels_ct, _ = ct_phantom(2, n_lesions=1)
    np.testing.assert_array_equal(volume.array[0], ct.array[0])
    np.testing.assert_array_equal(labels, labels_ct)


def test_pet_rejects_a_foreign_grid(phantom):
    _, labels, info = phantom
    with pytest.raises(InputError):
        pet_channel(labels[:10], info)
    with pytest.raises(InputError):
        pet_channel(labels, {"seed": 1})


# ------------------------------------------------------------------------------------------------
# MNI template (ships inside nilearn; never downloaded)

needs_nilearn = pytest.mark.skipif(importlib.util.find_spec("nilearn") is None,
                                   reason="nilearn is not installed (pip install nilearn; demo extra)")


@needs_nilearn
def test_mni_template_at_2mm():
    t1, gm, wm = mni_t1(2)
    assert t1.shape == gm.shape == wm.shape == (99, 117, 95)  # as nilearn's load_mni152_template(2)
    expected = np.array([[2.0, 0, 0, -98.0], [0, 2.0, 0, -134.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1.0]])
    for volume in (t1, gm, wm):
        np.testing.assert_allclose(volume.affine, expected, atol=1e-6)
        assert 0.0 <= volume.array.min() and volume.array.max() <= 1.0
    assert gm.array.max() > 0.9 and wm.array.max() > 0.9
    # T1 weighting: white matter is brighter than grey matter
    assert t1.array[wm.array > 0.9].mean() > t1.array[gm.array > 0.9].mean() + 0.1
    # the MNI origin (0, 0, 0) lies inside the brain
    ijk = np.round(np.linalg.inv(t1.affine) @ [0, 0, 0, 1])[:3].astype(int)
    assert t1.array[(0, *ijk)] > 0.2


@needs_nilearn
def test_mni_template_native_1mm():
    t1, gm, wm = mni_t1(1)
    assert t1.shape == (197, 233, 189)
    np.testing.assert_allclose(t1.spacing, 1.0)
    assert t1.channel_names == ["T1"] and gm.channel_names == ["GM"] and wm.channel_names == ["WM"]


def test_mni_without_nilearn_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(mni_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "nilearn" else real(name, *a))
    with pytest.raises(MedXAIError, match="pip install nilearn"):
        mni_t1()


def test_mni_rejects_a_bad_resolution():
    with pytest.raises(InputError):
        mni_t1(0)
