"""Boundary saliency: signed distances, bands in mm, profiles, the boundary/margin target, uncertainty, CLI.

References are independent of the code under test: analytic distances (planes, spheres), a
brute-force distance to the voxelised surface, hand-built masks and maps, Captum's Saliency on a
wrapper that computes the margin its own way, and ensembles recomputed by hand in torch.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import Saliency

from MedXAILib import Cancelled, Monitor, PROVENANCE_KEY, Target, explain
from MedXAILib.analysis.boundary import boundary_uncertainty, plot_profile, predicted_structure, relevance_profile
from MedXAILib.regions import boundary_band, signed_distance_mm
from MedXAILib.cli.main import main
from MedXAILib.errors import InputError, ParameterError, TargetError
from MedXAILib.io import read_image, write_image
from MedXAILib.model import load_model
from MedXAILib.scoring import resolve_target

from conftest import interrupt_cli
from references import reference_module

ROOT = Path(__file__).resolve().parents[2]


def brute_signed_distance(mask: np.ndarray, spacing) -> np.ndarray:
    """Exact distance from every voxel centre to the union of the opposite voxels' boxes (slow, small grids)."""
    spacing = np.asarray(spacing, float)
    inside, outside = np.argwhere(mask), np.argwhere(~mask)
    out = np.empty(mask.shape)
    for p in np.ndindex(mask.shape):
        others = outside if mask[p] else inside
        gap = np.maximum(np.abs(others - p) * spacing - spacing / 2, 0)
        out[p] = np.sqrt((gap * gap).sum(1)).min() * (-1 if mask[p] else 1)
    return out


def blob(shape=(14, 12, 10), seed=1) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.05


# ------------------------------------------------------------------------------------------------
# Signed distance and band


def test_signed_distance_of_a_half_space_is_exact_on_every_axis():
    spacing = (0.5, 1.25, 2.0)
    for axis in range(3):
        mask = np.zeros((12, 10, 8), bool)
        index = [slice(None)] * 3
        index[axis] = slice(0, 4)  # voxels 0..3 inside: the face lies between 3 and 4
        mask[tuple(index)] = True
        expected = (np.arange(mask.shape[axis]) - 3.5) * spacing[axis]
        shape = [1, 1, 1]
        shape[axis] = -1
        np.testing.assert_allclose(signed_distance_mm(mask, spacing), np.broadcast_to(
            expected.reshape(shape), mask.shape), atol=1e-12)


def test_signed_distance_of_a_sphere_matches_the_analytic_distance_within_a_voxel():
    spacing = np.array([0.7, 0.9, 1.2])
    shape = (31, 29, 27)
    centre = np.array([15.3, 13.8, 12.6]) * spacing
    radius = np.linalg.norm(np.stack(np.indices(shape), -1) * spacing - centre, axis=-1)
    mask = radius <= 7.0
    distance = signed_distance_mm(mask, spacing)
    analytic = radius - 7.0
    assert np.all(distance[mask] < 0) and np.all(distance[~mask] > 0)
    assert np.abs(distance - analytic).max() < spacing.max()
    assert np.abs(distance - analytic).mean() < 0.5 * spacing.max()


@pytest.mark.parametrize("spacing", [(0.8, 1.1, 2.0), (0.5, 0.5, 3.0), (1.0, 1.0, 1.0)])
def test_signed_distance_is_the_exact_distance_to_the_voxel_surface(spacing):
    mask = blob()
    exact = brute_signed_distance(mask, spacing)
    np.testing.assert_allclose(signed_distance_mm(mask, spacing), exact, atol=1e-9)
    # the cheap windowed path agrees up to its reach and is +-inf beyond
    windowed = signed_distance_mm(mask, spacing, max_mm=2.5)
    near = np.abs(exact) <= 2.5
    np.testing.assert_allclose(windowed[near], exact[near], atol=1e-9)
    assert np.all(windowed[~near] == np.where(mask[~near], -np.inf, np.inf))


def test_band_thickness_is_measured_in_mm_with_anisotropic_spacing():
    spacing = (0.5, 1.0, 2.0)
    mask = np.zeros((40, 30, 20), bool)
    mask[12:28, 8:22, 6:14] = True
    for inner, outer in ((2.0, 2.0), (1.0, 3.0), (2.0, 0.0)):
        band = boundary_band(mask, spacing, inner, outer)
        for axis, s in enumerate(spacing):
            line = [20, 15, 10]
            line[axis] = slice(None)
            profile, inside = band[tuple(line)], mask[tuple(line)]
            layers_in = int(np.count_nonzero(profile & inside)) / 2  # two faces per line
            layers_out = int(np.count_nonzero(profile & ~inside)) / 2
            assert layers_in == math.floor(inner / s + 0.5) and layers_out == math.floor(outer / s + 0.5)
        if inner == outer == 2.0:  # a multiple of every spacing: exactly 2 mm on each side, every axis
            for axis, s in enumerate(spacing):
                line = [20, 15, 10]
                line[axis] = slice(None)
                assert np.count_nonzero(band[tuple(line)] & mask[tuple(line)]) * s == 2 * 2.0


def test_band_is_the_signed_distance_window_and_never_leaves_the_neighbourhood():
    mask, spacing = blob((30, 26, 22), seed=3), np.array([0.6, 1.0, 1.7])
    distance = signed_distance_mm(mask, spacing)
    for inner, outer in ((1.0, 1.0), (2.5, 0.5), (0.0, 4.0)):
        band = boundary_band(mask, spacing, inner, outer)
        np.testing.assert_array_equal(band, (distance >= -inner) & (distance <= outer))


def test_distance_refusals():
    mask = np.zeros((5, 5, 5), bool)
    with pytest.raises(InputError, match="empty"):
        signed_distance_mm(mask, (1, 1, 1))
    with pytest.raises(InputError, match="whole grid"):
        boundary_band(~mask, (1, 1, 1), 1, 1)
    mask[2, 2, 2] = True
    with pytest.raises(InputError, match="spacing"):
        signed_distance_mm(mask, (1, 0, 1))
    with pytest.raises(InputError, match="3D"):
        signed_distance_mm(mask[0], (1, 1, 1))
    with pytest.raises(InputError, match="inner_mm"):
        boundary_band(mask, (1, 1, 1), -1, 1)


# ------------------------------------------------------------------------------------------------
# Profile


def test_profile_of_a_slab_has_the_known_bins_and_percentiles():
    spacing = (1.0, 1.0, 2.0)
    mask = np.zeros((6, 5, 12), bool)
    mask[:, :, :6] = True  # face between k = 5 and 6; layers at -1, -3, ... and +1, +3, ... mm
    k = np.arange(12)
    values = np.broadcast_to((k - 5.5) * 2.0 * 10.0, mask.shape).copy()  # 10 x the distance
    values[0, 0, :] += 100.0  # one outlier voxel per layer: mean and p95 move, p50 does not
    profile = relevance_profile(values, mask, spacing, bin_mm=1.0, max_mm=4.0)
    assert profile["distance_mm"] == [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]
    # layer at d = -3 mm -> bin [-3, -2) (centre -2.5), d = -1 -> [-1, 0), d = 1 -> [1, 2), d = 3 -> [3, 4)
    assert profile["voxels"] == [0, 30, 0, 30, 0, 30, 0, 30]
    for i, d in ((1, -3.0), (3, -1.0), (5, 1.0), (7, 3.0)):
        layer = np.full(30, 10 * d)
        layer[0] += 100
        assert profile["mean"][i] == pytest.approx(layer.mean())
        assert profile["p50"][i] == pytest.approx(10 * d)
        assert profile["p95"][i] == pytest.approx(np.percentile(layer, 95))
        assert profile["p5"][i] == pytest.approx(10 * d)
    assert all(math.isnan(profile["mean"][i]) for i in (0, 2, 4, 6))
    assert list(profile) == ["distance_mm", "voxels", "mean", "p5", "p25", "p50", "p75", "p95"]


def test_profile_equals_binning_the_full_signed_distance_by_hand():
    rng = np.random.default_rng(0)
    mask, spacing = blob((20, 18, 16), seed=5), np.array([0.9, 1.3, 1.6])
    values = rng.normal(size=mask.shape)
    profile = relevance_profile(values[np.newaxis], mask, spacing, bin_mm=1.5, max_mm=6.0)  # (1, I, J, K) too
    distance = signed_distance_mm(mask, spacing)
    for i, centre in enumerate(profile["distance_mm"]):
        chunk = values[(distance >= centre - 0.75) & (distance < centre + 0.75)]
        assert profile["voxels"][i] == chunk.size
        if chunk.size:
            assert profile["mean"][i] == pytest.approx(chunk.mean())
            assert profile["p25"][i] == pytest.approx(np.percentile(chunk, 25))


def test_plot_profile_writes_a_png(tmp_path):
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    profile = relevance_profile(mask.astype(float), mask, (1, 1, 1), max_mm=3)
    path = plot_profile(profile, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.listdir(tmp_path) == ["p.png"]
    with pytest.raises(InputError, match="lacks"):
        plot_profile({"distance_mm": [0.5]}, tmp_path / "q.png")
    with pytest.raises(InputError, match="does not exist"):
        plot_profile(profile, tmp_path / "missing" / "p.png")



def test_plot_profile_is_titled_and_marks_the_explained_band(tmp_path):
    import matplotlib.image

    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    profile = relevance_profile(mask.astype(float), mask, (1, 1, 1), max_mm=3)
    plain = matplotlib.image.imread(str(plot_profile(profile, tmp_path / "plain.png")))[..., :3]
    titled = matplotlib.image.imread(str(plot_profile(profile, tmp_path / "titled.png", title="IG of the lesion",
                                                      band_mm=(1.0, 2.0))))[..., :3]
    orange = (titled[..., 0] > 0.9) & (titled[..., 1] > 0.8) & (titled[..., 2] < 0.85)  # the shaded band
    assert orange.sum() > 2000 and ((plain[..., 0] > 0.9) & (plain[..., 1] > 0.8) & (plain[..., 2] < 0.85)).sum() < 200

    def frame_and_title(pixels):  # the axes' top edge (a long dark row) and the dark text rows above it
        dark = (pixels.mean(axis=-1) < 0.5).sum(axis=1)
        frame = int(np.argmax(dark > 0.6 * pixels.shape[1]))
        return frame, int((dark[:frame] > 0).sum())

    (frame_plain, text_plain), (frame_titled, text_titled) = frame_and_title(plain), frame_and_title(titled)
    assert text_plain >= 8  # always a title line
    assert frame_titled > frame_plain + 8 and text_titled > text_plain + 8  # and the caller's line under it


# ------------------------------------------------------------------------------------------------
# The boundary region and the margin score


def _output(segmenter, volume):
    bound = segmenter.bind(volume.affine, volume.shape)
    with torch.no_grad():
        return bound(torch.as_tensor(volume.array)[None])


def test_boundary_target_resolves_to_the_band_of_the_predicted_structure_in_mm(segmenter, volume):
    output = _output(segmenter, volume)
    predicted = output[0].argmax(0).numpy() == 1
    target = Target(class_index=1, region="boundary", band_mm=(0.5, 0.6))
    scorer = resolve_target(target, output, "segmentation", spacing=volume.spacing)  # (0.8, 1.1, 2.0) mm
    expected = boundary_band(predicted, volume.spacing, 0.5, 0.6)
    np.testing.assert_array_equal(scorer.region.numpy(), expected)
    assert 0 < scorer.region_voxels == int(expected.sum()) < predicted.size
    # the spacing matters: on a 1 mm grid every face neighbour (0.5 mm) is in; here only those across
    # I faces (0.4 mm inside, 0.4 mm outside) and J faces outside (0.55 mm)
    iso = resolve_target(target, output, "segmentation", spacing=(1.0, 1.0, 1.0))
    assert iso.region_voxels > scorer.region_voxels and np.all(iso.region.numpy() >= expected)
    described = scorer.describe()
    assert described["band_mm"] == [0.5, 0.6] and described["structure"] == "predicted"
    assert described["region"] == "boundary"

    mask = np.zeros(volume.shape, bool)
    mask[5:12, 4:10, 3:8] = True
    with_mask = resolve_target(Target(class_index=2, region="boundary", mask=mask, band_mm=(2, 2)), output,
                               "segmentation", spacing=volume.spacing)
    np.testing.assert_array_equal(with_mask.region.numpy(), boundary_band(mask, volume.spacing, 2, 2))
    assert Target(class_index=2, region="boundary", mask=mask).describe()["structure"] == "mask"


def test_boundary_target_refusals(segmenter, volume):
    output = _output(segmenter, volume)
    with pytest.raises(TargetError, match="spacing"):
        resolve_target(Target(class_index=1, region="boundary"), output, "segmentation")
    with pytest.raises(TargetError, match="band_mm"):
        Target(class_index=1, region="boundary", band_mm=(-1.0, 2.0))
    with pytest.raises(TargetError, match="band_mm"):
        Target(class_index=1, region="boundary", band_mm=(1.0, 2.0, 3.0))
    with pytest.raises(TargetError, match="empty"):
        Target(class_index=1, region="boundary", band_mm=(0, 0))
    with pytest.raises(TargetError, match="no voxel centre"):  # 0.1 mm is closer than any centre (>= 0.4 mm)
        resolve_target(Target(class_index=1, region="boundary", band_mm=(0.1, 0.1)), output, "segmentation",
                       spacing=volume.spacing)
    with pytest.raises(TargetError, match="segmentation model"):
        resolve_target(Target(class_index=1, region="boundary"), output[:, :, 0, 0, 0], "classification",
                       spacing=volume.spacing)
    empty = np.zeros(volume.shape, bool)
    with pytest.raises(TargetError, match="covers no voxel"):
        resolve_target(Target(class_index=1, region="boundary", mask=empty), output, "segmentation",
                       spacing=volume.spacing)
    with pytest.raises(TargetError, match="shape"):
        resolve_target(Target(class_index=1, region="boundary", mask=empty[:-1]), output, "segmentation",
                       spacing=volume.spacing)
    absent = torch.zeros_like(output)
    absent[:, 0] = 1.0  # everything is class 0
    with pytest.raises(TargetError, match="predicts no voxel of class 1"):
        resolve_target(Target(class_index=1, region="boundary"), absent, "segmentation", spacing=volume.spacing)


def test_margin_is_the_logit_minus_the_strongest_competitor(segmenter, volume):
    output = _output(segmenter, volume)
    scorer = resolve_target(Target(class_index=1, score="margin"), output, "segmentation")
    z = output[0].numpy()
    assert float(scorer(output)) == pytest.approx(float((z[1] - np.maximum(z[0], z[2])).sum()), rel=1e-5)
    predicted = resolve_target(Target(class_index=1, region="predicted", score="margin", reduction="mean"), output,
                               "segmentation")
    assert float(predicted(output)) > 0  # where the class wins, the margin is positive by definition
    # sigmoid (multi-label) channels do not compete: the margin is the logit
    sig = resolve_target(Target(class_index=1, score="margin"), output, "segmentation", activation="sigmoid")
    assert float(sig(output)) == pytest.approx(float(z[1].sum()), rel=1e-5)


def test_boundary_margin_saliency_agrees_with_captum_on_an_independent_margin(segmenter, volume):
    target = Target(class_index=1, region="boundary", score="margin", band_mm=(2.0, 2.0))
    result = explain(volume, segmenter, "saliency", target)
    assert result.provenance["target"]["band_mm"] == [2.0, 2.0] and result.provenance["target"]["score"] == "margin"

    bound = segmenter.bind(volume.affine, volume.shape)
    x = torch.as_tensor(volume.array)[None]
    with torch.no_grad():
        predicted = bound(x)[0].argmax(0).numpy() == 1
    band = torch.as_tensor(boundary_band(predicted, volume.spacing, 2.0, 2.0), dtype=torch.float32)

    def margin(batch):
        z = bound(batch)
        return ((z[:, 1] - torch.maximum(z[:, 0], z[:, 2])) * band).sum(dim=(1, 2, 3))

    reference = Saliency(reference_module(segmenter.network, margin)).attribute(x.clone(), abs=False)
    np.testing.assert_allclose(result.array, reference[0].numpy(), rtol=1e-4, atol=1e-6 * float(reference.abs().max()))
    # a logit target on the same band is another function, so another map
    logit = explain(volume, segmenter, "saliency", Target(class_index=1, region="boundary", band_mm=(2.0, 2.0)))
    assert not np.allclose(logit.array, result.array)


def test_margin_of_a_classifier_agrees_with_captum(classifier, volume):
    result = explain(volume, classifier, "saliency", Target(class_index=2, score="margin"))
    bound = classifier.bind(volume.affine, volume.shape)

    def margin(batch):
        z = bound(batch)
        return z[:, 2] - torch.maximum(z[:, 0], z[:, 1])

    x = torch.as_tensor(volume.array)[None]
    reference = Saliency(reference_module(classifier.network, margin)).attribute(x, abs=False)
    np.testing.assert_allclose(result.array, reference[0].numpy(), rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# Uncertainty


def _conv_model(kernel: int, dropout: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    layers = [torch.nn.Conv3d(1, 3, kernel, padding=kernel // 2)]
    if dropout:
        layers += [torch.nn.Dropout3d(0.5), torch.nn.Conv3d(3, 3, 1)]
    return load_model(torch.nn.Sequential(*layers), task="segmentation", in_channels=1, device="cpu")


def test_flips_of_a_voxelwise_model_give_zero_variance(volume):
    model = _conv_model(kernel=1)  # output at a voxel depends on that voxel only: flip-equivariant
    maps = boundary_uncertainty(volume, model, class_index=1)
    assert set(maps) == {"probability", "entropy", "variance"}
    single = torch.softmax(model.network(torch.as_tensor(volume.array)[None]), 1)[0].detach().numpy()
    np.testing.assert_allclose(maps["probability"].array[0], single[1], atol=1e-6)
    assert np.abs(maps["variance"].array).max() < 1e-10
    entropy = -(single * np.log(single)).sum(0)
    np.testing.assert_allclose(maps["entropy"].array[0], entropy, atol=1e-5)
    assert maps["variance"].same_grid(volume) and maps["probability"].meta["ensemble"]["members"] == 4


def test_flips_of_an_asymmetric_model_match_an_ensemble_computed_by_hand(volume):
    model = _conv_model(kernel=3)
    maps = boundary_uncertainty(volume, model, class_index=2)
    x = torch.as_tensor(volume.array)[None]
    with torch.no_grad():
        runs = [torch.softmax(model.network(x), 1)[0]]
        for axis in (2, 3, 4):
            runs.append(torch.softmax(torch.flip(model.network(torch.flip(x, (axis,))), (axis,)), 1)[0])
    probs = torch.stack(runs).double().numpy()  # (4, K, I, J, K)
    mean = probs.mean(0)
    np.testing.assert_allclose(maps["probability"].array[0], mean[2], atol=1e-6)
    np.testing.assert_allclose(maps["variance"].array[0], probs[:, 2].var(0), atol=1e-8)
    np.testing.assert_allclose(maps["entropy"].array[0], -(mean * np.log(mean)).sum(0), atol=1e-5)
    assert maps["variance"].array.max() > 1e-4
    assert np.all(maps["entropy"].array >= 0) and np.all(maps["entropy"].array <= np.log(3) + 1e-6)


def test_mc_dropout_is_seeded_restores_eval_mode_and_matches_a_manual_ensemble(volume):
    model = _conv_model(kernel=1, dropout=True)
    state = torch.get_rng_state()
    a = boundary_uncertainty(volume, model, class_index=0, flips=False, n_dropout=3, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the caller's random stream is untouched
    assert not any(m.training for m in model.network.modules())
    b = boundary_uncertainty(volume, model, class_index=0, flips=False, n_dropout=3, seed=7)
    c = boundary_uncertainty(volume, model, class_index=0, flips=False, n_dropout=3, seed=8)
    np.testing.assert_array_equal(a["variance"].array, b["variance"].array)
    assert not np.allclose(a["probability"].array, c["probability"].array)
    assert a["variance"].array.max() > 1e-4 and a["probability"].meta["ensemble"]["members"] == 3

    x = torch.as_tensor(volume.array)[None]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(7)
        model.network[1].train()
        runs = torch.stack([torch.softmax(model.network(x), 1)[0, 0] for _ in range(3)]).double().numpy()
        model.network[1].eval()
    np.testing.assert_allclose(a["probability"].array[0], runs.mean(0), atol=1e-6)
    np.testing.assert_allclose(a["variance"].array[0], runs.var(0), atol=1e-8)


def test_uncertainty_refusals_and_cancel(volume, classifier, segmenter):
    with pytest.raises(ParameterError, match="Dropout modules with p > 0"):
        boundary_uncertainty(volume, _conv_model(kernel=1), 1, n_dropout=2)
    with pytest.raises(ParameterError, match="Dropout modules with p > 0"):  # MONAI's UNet: Dropout(p=0)
        boundary_uncertainty(volume, segmenter, 1, n_dropout=2)
    with pytest.raises(ParameterError, match="n_dropout"):
        boundary_uncertainty(volume, segmenter, 1, n_dropout=-1)
    with pytest.raises(TargetError, match="segmentation"):
        boundary_uncertainty(volume, classifier, 1)
    with pytest.raises(TargetError, match="out of range"):
        boundary_uncertainty(volume, segmenter, 3)
    monitor = Monitor()
    monitor.cancel()
    with pytest.raises(Cancelled):
        boundary_uncertainty(volume, segmenter, 1, monitor=monitor)
    fractions = []
    boundary_uncertainty(volume, segmenter, 1, monitor=Monitor(lambda f, m: fractions.append(f)))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 4


def test_predicted_structure_is_the_argmax(segmenter, volume):
    np.testing.assert_array_equal(predicted_structure(volume, segmenter, 2),
                                  _output(segmenter, volume)[0].argmax(0).numpy() == 2)


# ------------------------------------------------------------------------------------------------
# CLI


def run_main(args) -> int:
    """main()'s exit code, also when argparse rejects an option (it raises SystemExit)."""
    try:
        return main(args)
    except SystemExit as exit:
        return exit.code


def boundary_args(cli_files, *extra):
    return ["boundary", "--image", str(cli_files["image"]), "--model", str(cli_files["model"]), "--quiet",
            "--target-class", "1", "--method", "saliency", *extra]


def test_boundary_cli_writes_saliency_profile_uncertainty_and_summary(cli_files, capsys):
    d = cli_files["dir"]
    code = main(boundary_args(cli_files, "--target-mask", str(cli_files["mask"]), "--band-mm", "1.5,3",
                              "--out", str(d / "sal.nrrd"), "--profile", str(d / "p.csv"),
                              "--profile-png", str(d / "p.png"), "--uncertainty", str(d / "u.nrrd"),
                              "--json", str(d / "s.json")))
    assert code == 0, capsys.readouterr().err
    image, saliency = read_image(cli_files["image"]), read_image(d / "sal.nrrd")
    np.testing.assert_allclose(saliency.affine, image.affine, atol=1e-5)
    provenance = json.loads(saliency.meta["header"][PROVENANCE_KEY])
    assert provenance["target"]["region"] == "boundary" and provenance["target"]["band_mm"] == [1.5, 3.0]
    assert provenance["target"]["score"] == "margin" and provenance["target"]["structure"] == "mask"
    mask = read_image(cli_files["mask"]).array[0] != 0
    # the same map as the library call with the same target
    expected = explain(image, load_model(cli_files["model"], device="cpu"), "saliency",
                       Target(class_index=1, region="boundary", mask=mask, band_mm=(1.5, 3.0), score="margin"))
    np.testing.assert_allclose(saliency.array[0], expected.summed, rtol=1e-5, atol=1e-7)

    lines = (d / "p.csv").read_text().splitlines()
    assert lines[0] == "distance_mm,voxels,mean,p5,p25,p50,p75,p95" and len(lines) == 1 + 20
    profile = relevance_profile(expected.summed, mask, image.spacing)
    assert [int(line.split(",")[1]) for line in lines[1:]] == profile["voxels"]
    assert (d / "p.png").read_bytes()[:4] == b"\x89PNG"

    uncertainty = read_image(d / "u.nrrd")
    assert uncertainty.n_channels == 3 and uncertainty.meta["header"]["MedXAI.Channels"] == "probability,entropy,variance"
    assert json.loads(uncertainty.meta["header"][PROVENANCE_KEY])["ensemble"]["members"] == 4
    summary = json.loads((d / "s.json").read_text())
    band = boundary_band(mask, image.spacing, 1.5, 3.0)
    assert summary["boundary"]["band_voxels"] == int(band.sum())
    assert summary["boundary"]["structure_voxels"] == int(mask.sum())
    assert summary["uncertainty"]["mean_entropy_in_band"] == pytest.approx(
        float(uncertainty.array[1][band].mean()), rel=1e-5)


def test_boundary_cli_progress_json(cli_files, capsys, monkeypatch):
    from MedXAILib.cli import progress

    # json_lines binds sys.stdout when progress.py is imported; hand it the stream capsys captures
    original = progress.json_lines
    monkeypatch.setattr(progress, "json_lines", lambda: original(sys.stdout))
    out = cli_files["dir"] / "sal.nrrd"
    assert main(boundary_args(cli_files, "--progress-json", "--out", str(out))) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[-1]["done"] is True and records[-1]["outputs"] == [str(out)]
    progress = [r["progress"] for r in records[:-1]]
    assert progress == sorted(progress) and progress[-1] == 1.0


BAD_BOUNDARY = {
    "class out of range": (["--target-class", "7"], "out of range"),
    "band needs two numbers": (["--band-mm", "2"], "--band-mm"),
    "negative band": (["--band-mm=-1,2"], "band_mm"),
    "dropout without uncertainty": (["--mc-dropout", "2"], "--uncertainty"),
    "model without dropout": (["--uncertainty", "{dir}/u.nrrd", "--mc-dropout", "2"], "Dropout"),
    "profile suffix": (["--profile", "{dir}/p.txt"], "--profile"),
    "same file twice": (["--uncertainty", "{dir}/sal.nrrd"], "same file"),
    "unknown method": (["--method", "salency"], "did you mean 'saliency'"),
    "empty mask": (["--target-mask", "{dir}/empty.nrrd"], "covers no voxel"),
}


@pytest.mark.parametrize("case", sorted(BAD_BOUNDARY))
def test_boundary_cli_bad_input_exits_2_with_one_line_and_no_output(case, cli_files, capsys):
    d = cli_files["dir"]
    empty = np.zeros((20, 16, 12), np.float32)
    write_image(read_image(cli_files["mask"]).with_array(empty), d / "empty.nrrd")
    before = set(os.listdir(d))
    extra, fragment = BAD_BOUNDARY[case]
    args = boundary_args(cli_files, "--out", str(d / "sal.nrrd"), "--profile", str(d / "p.csv"),
                         *[e.format(dir=d) for e in extra])
    if case == "class out of range":
        args[args.index("--target-class") + 1] = "7"
    assert run_main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("medxai: error:") and fragment in last and "Traceback" not in err
    # one line, after argparse's usage summary for options it rejects itself
    assert err.count("\n") <= 3 or err.startswith("usage: medxai boundary")
    assert set(os.listdir(d)) == before


def test_boundary_cli_cancel_leaves_nothing(cli_files, capsys, monkeypatch):
    from MedXAILib.cli import common

    def cancelling(args):
        monitor = Monitor(lambda f, m: monitor.cancel() if f > 0.3 else None)
        return monitor

    monkeypatch.setattr(common, "monitor_from_args", cancelling)
    before = set(os.listdir(cli_files["dir"]))
    d = cli_files["dir"]
    args = boundary_args(cli_files, "--out", str(d / "sal.nrrd"), "--uncertainty", str(d / "u.nrrd"))
    assert main(args) == 130
    assert "cancelled" in capsys.readouterr().err
    assert set(os.listdir(d)) == before


@pytest.mark.slow
def test_python_m_boundary_ctrl_c_exits_130_without_output(cli_files):
    out = cli_files["dir"] / "sal.nrrd"
    interrupt_cli(["boundary", "--image", str(cli_files["image"]), "--model", str(cli_files["model"]),
                   "--target-class", "1", "--method", "integrated_gradients", "--param", "n_steps=1000",
                   "--param", "batch_size=1", "--progress-json", "--out", str(out)],
                  until=lambda record: record.get("progress", 0) > 0.02)
    assert not out.exists()
