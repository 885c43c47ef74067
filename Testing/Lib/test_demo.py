"""The demo end to end (``medxai demo``): every output is written, valid and consistent.

Tests that need the demo's output are marked ``slow``: the demo runs once per session with
``small=True`` (8 integration steps instead of 32; the same phantom and the shipped models) into the
session's temporary folder (the `small_demo` fixture of Testing/conftest.py); the bridge test
(Testing/Bridge/test_demo_scene.py) reuses that folder when it runs in the same session.

- files: the image, the true lesion, the predicted segmentation (``.seg.nrrd`` with class names),
  one attribution volume per model and method (input geometry, provenance), figures, summary,
  report and scene;
- the shipped classifier's integrated gradients find the true lesion (verdict "on target", and at
  least three times the lesion's share of the voxels in positive relevance);
- results that cannot mislead: per-channel maps and figures for the PET/CT classifier (the file keeps
  one map per channel, the sum is its own file), one definition per metric name (the explanations'
  lesion numbers equal the comparison's), verdicts that a map missing the lesion cannot pass, the
  counterfactual's change per channel in that channel's units, and a channel story that the maps and
  the one-channel-at-a-time counterfactual tell alike;
- the HTML report renders in a real headless browser (chromium) with its figures visible.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from MedXAILib.attribution import PROVENANCE_KEY
from MedXAILib.demo import METHODS
from MedXAILib.io import read_image
from MedXAILib.report.figures import FIGURE_SIZE_PX, PREDICTION_SIZE_PX

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_SIZE = (1280, 3600)
MIN_LESION_RATIO = 3.0


@pytest.fixture(scope="module")
def out(small_demo) -> Path:
    return small_demo


@pytest.fixture(scope="module")
def summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------------------------
# Files and their contents


@pytest.mark.slow
def test_demo_writes_every_output_and_says_what_to_open(out, summary):
    for name in ("image.nrrd", "pet.nrrd", "lesion_mask.nrrd", "segmentation.seg.nrrd", "summary.json", "report.html",
                 "scene.mrb", "figures/prediction.png"):
        assert (out / name).is_file(), f"{name} is missing"
    roles = {r["model"] for r in summary["attributions"]}
    assert roles == ({"classifier", "segmenter"} if not summary["fallback"] else {"classifier"})
    for role in roles:
        assert sorted(r["method"] for r in summary["attributions"] if r["model"] == role) == sorted(METHODS)
    assert len(METHODS) >= 3
    for record in summary["attributions"]:
        assert (out / record["file"]).is_file() and (out / record["file_sum"]).is_file()
        assert record["figures"] and all((out / path).is_file() for path in record["figures"].values())
    printed = (out / "printed.txt").read_text()
    for name in ("report.html", "scene.mrb", "summary.json"):
        assert str(out / name) in printed.split("Open:")[-1], f"the demo does not say to open {name}"


@pytest.mark.slow
def test_summary_has_prediction_models_statistics_and_provenance(summary):
    for key in ("medxai_version", "created", "seconds", "seed", "image", "lesion", "models", "prediction",
                "attributions", "randomisation", "figures", "scene", "report", "versions", "notes", "fallback"):
        assert key in summary, key
    probabilities = summary["prediction"]["classifier"]["probabilities"]
    assert set(probabilities) == {"no lesion", "lesion"} and abs(sum(probabilities.values()) - 1) < 1e-3
    if not summary["fallback"]:
        segmentation = summary["prediction"]["segmentation"]
        assert segmentation["class_names"][-1] == "lesion" and "lesion" in segmentation["dice_vs_truth"]
        assert {"classifier", "segmenter"} <= set(summary["models"])
        assert summary["models"]["classifier"]["metrics"]["auc"] > 0
    for record in summary["attributions"]:
        stats = record["statistics"]
        assert 0 < stats["lesion_volume_share"] < 0.01
        assert 0 <= stats["positive_share_in_lesion"] <= 1 and 0 <= stats["abs_share_in_lesion"] <= 1
        assert stats["positive_ratio"] == pytest.approx(stats["positive_share_in_lesion"] / stats["lesion_volume_share"],
                                                        rel=1e-2, abs=1e-3)
        assert record["target"] and record["parameters"] is not None and record["seconds"] > 0
        shares = record["channel_shares"]
        expected = summary["image"]["channels"] if record["model"] == "classifier" else ["CT"]
        assert list(shares) == expected and sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    steps = summary["randomisation"]["steps"]
    assert len(steps) == 3 and steps[-1]["layers_randomised"] == steps[-1]["layers_total"]


@pytest.mark.slow
def test_volumes_share_the_image_geometry_and_carry_provenance(out, summary):
    image = read_image(out / "image.nrrd")
    assert image.shape == tuple(summary["image"]["shape"])
    assert np.allclose(image.spacing, summary["image"]["spacing_mm"], atol=1e-4)
    mask = read_image(out / "lesion_mask.nrrd")
    assert mask.same_grid(image) and int(mask.array.sum()) == summary["lesion"]["n_voxels"]
    centre = image.affine @ np.append(summary["lesion"]["centre_ijk"], 1.0)
    assert np.allclose(centre[:3], summary["lesion"]["centre_ras"], atol=1e-2)
    for record in summary["attributions"]:
        attribution = read_image(out / record["file"])
        assert attribution.same_grid(image), record["file"]
        assert np.all(np.isfinite(attribution.array)) and np.abs(attribution.array).max() > 0
        provenance = json.loads(attribution.meta["header"][PROVENANCE_KEY])
        assert provenance["method"] == record["method"] and provenance["seed"] == summary["seed"]
        assert provenance["input"]["shape"] == summary["image"]["shape"]


@pytest.mark.slow
def test_segmentation_is_a_label_map_with_class_names(out, summary):
    import SimpleITK as sitk

    segmentation = sitk.ReadImage(str(out / "segmentation.seg.nrrd"))
    assert segmentation.GetPixelID() == sitk.sitkUInt8
    labels = read_image(out / "segmentation.seg.nrrd")
    assert labels.same_grid(read_image(out / "image.nrrd"))
    fields = {k: segmentation.GetMetaData(k) for k in segmentation.GetMetaDataKeys()}
    segments = {int(fields[f"Segment{n}_LabelValue"]): fields[f"Segment{n}_Name"]
                for n in range(len(fields)) if f"Segment{n}_Name" in fields}
    present = {int(v) for v in np.unique(labels.array) if v > 0}
    assert set(segments) == present
    if not summary["fallback"]:
        names = summary["prediction"]["segmentation"]["class_names"]
        assert all(names[v] == name for v, name in segments.items())
        counts = summary["prediction"]["segmentation"]["voxels_per_class"]
        assert all(int((labels.array == v).sum()) == counts[name] for v, name in segments.items())


@pytest.mark.slow
def test_demo_compares_the_classifiers_methods_and_ranks_them(out, summary):
    from MedXAILib.demo.sections import COMPARE_METRICS

    comparison = summary["comparison"]
    assert comparison["methods"] == list(METHODS) and comparison["metrics"] == list(COMPARE_METRICS)
    assert sorted(r["method"] for r in comparison["ranking"]) == sorted(METHODS)
    for name in ("comparison.csv", "comparison.json", "curves.png", "metrics.png"):
        assert (out / comparison["files"][name]).is_file(), name
    rows = (out / comparison["files"]["comparison.csv"]).read_text().splitlines()
    assert rows[0].split(",") == ["method", *COMPARE_METRICS, "mean_rank"] and len(rows) == 1 + len(METHODS)
    # the localisation metrics are measured against the true lesion: the report's own numbers agree
    # one definition per name: the explanations' lesion numbers are the comparison's metrics
    for row, method in enumerate(comparison["methods"]):
        record = next(r for r in summary["attributions"] if r["model"] == "classifier" and r["method"] == method)
        statistics = record["statistics"]
        assert comparison["table"]["relevance_mass_accuracy"][row] == pytest.approx(
            statistics["positive_share_in_lesion"], abs=1e-5)
        assert comparison["table"]["pointing_game"][row] == statistics["pointing_game"]["value"]
        assert comparison["table"]["relevance_rank_accuracy"][row] == pytest.approx(
            statistics["relevance_rank_accuracy"]["value"], abs=1e-5)
        assert comparison["table"]["auroc"][row] == pytest.approx(statistics["auroc"]["value"], abs=1e-5)
    assert comparison["graded"]["target"]["class_index"] == 1 and comparison["graded"]["provenance_checked"]
    for metric in ("pointing_game", "relevance_rank_accuracy", "relevance_mass_accuracy", "auroc"):
        assert 0 <= comparison["chance"][metric] <= 0.5, metric
        assert metric in comparison["separation"]


@pytest.mark.slow
def test_demo_counterfactual_removes_the_lesion_and_reports_the_classifier(out, summary):
    counterfactual = summary["counterfactual"]
    image = read_image(out / "image.nrrd")
    volume = read_image(out / counterfactual["files"]["counterfactual"])
    difference = read_image(out / counterfactual["files"]["difference"])
    assert volume.same_grid(image) and difference.same_grid(image)
    assert volume.n_channels == difference.n_channels == len(summary["image"]["channels"])
    np.testing.assert_allclose(volume.array[0] - image.array[0], difference.array[0], atol=1e-3)
    lesion = read_image(out / "lesion_mask.nrrd").array[0] > 0
    changed = (difference.array != 0).any(axis=0)
    assert changed[lesion].mean() > 0.9 and changed.sum() == counterfactual["changed_voxels"]
    assert difference.array[0][lesion].mean() > 20.0  # the dark lesion (-45 HU) is filled with liver
    if difference.n_channels > 1:
        assert difference.array[1][lesion].mean() < -2.0  # and its PET uptake (SUV 8) with the liver's
    assert counterfactual["probability_after"] < counterfactual["probability_before"]
    assert counterfactual["probability_before"] == summary["prediction"]["classifier"]["probabilities"]["lesion"]
    assert counterfactual["reached"] == (counterfactual["probability_after"] < 0.5) == counterfactual["validity"]["reached"]
    assert set(counterfactual["figures"]) == set(summary["image"]["channels"])
    assert all((out / path).is_file() for path in counterfactual["figures"].values())
    # the change per channel, in that channel's units, never added up across channels
    per_channel = {row["channel"]: row for row in counterfactual["per_channel"]}
    assert set(per_channel) == set(summary["image"]["channels"])
    for c, name in enumerate(summary["image"]["channels"]):
        assert per_channel[name]["max_abs"] == pytest.approx(float(np.abs(difference.array[c]).max()), rel=1e-4)
    assert counterfactual["changed_ml"] > counterfactual["lesion_ml"] > 0  # the lesion grown by 8 mm is replaced


@pytest.mark.slow
def test_figures_are_pngs_of_the_documented_size(out, summary):
    assert _png_size(out / summary["figures"]["prediction"]) == PREDICTION_SIZE_PX
    for record in summary["attributions"]:
        for path in record["figures"].values():
            assert _png_size(out / path) == FIGURE_SIZE_PX


@pytest.mark.slow
def test_multi_channel_maps_are_kept_and_shown_per_channel(out, summary):
    from MedXAILib.attribution import CHANNELS_KEY

    if summary["fallback"]:
        pytest.skip("the fallback classifier has one channel")
    channels = summary["image"]["channels"]
    assert channels == ["CT", "PET"]
    for record in (r for r in summary["attributions"] if r["model"] == "classifier"):
        volume, total = read_image(out / record["file"]), read_image(out / record["file_sum"])
        assert volume.n_channels == 2 and volume.meta["header"][CHANNELS_KEY] == "CT,PET"
        np.testing.assert_allclose(volume.array.sum(axis=0), total.array[0], rtol=1e-5, atol=1e-7)
        info = record["channels"]
        assert info["names"] == channels and sum(info["shares"]) == pytest.approx(1.0, abs=1e-4)
        if record["method"] == "grad_cam":  # one map split over the channels: it cannot tell them apart
            assert not info["resolved"] and not info["comparable"] and list(record["figures"]) == ["sum"]
        else:  # one figure per channel, over its own image
            assert info["resolved"] and list(record["figures"]) == channels
        assert info["comparable"] == (record["method"] == "integrated_gradients")  # saliency: per HU vs per SUV


@pytest.mark.slow
def test_the_channel_story_is_the_same_in_the_maps_and_the_counterfactual(summary):
    if summary["fallback"]:
        pytest.skip("the fallback classifier has one channel")
    one = {row["channel"]: row["probability_after"] for row in summary["counterfactual"]["per_channel_inpainting"]}
    deciding = min(one, key=one.get)
    assert one[deciding] < 0.5 < max(one.values())  # removing the lesion from one channel alone flips the decision
    ig = next(r for r in summary["attributions"] if r["model"] == "classifier" and r["method"] == "integrated_gradients")
    in_region = {row["channel"]: row["sum_in_lesion_region"] for row in ig["statistics"]["channels"]}
    assert max(in_region, key=in_region.get) == deciding  # the comparable map puts the lesion's evidence there too


@pytest.mark.slow
def test_verdicts_follow_the_rule_and_never_pass_a_map_that_misses(summary):
    from MedXAILib.evaluation.localisation import RANK_ACCURACY_PASS

    for record in summary["attributions"]:
        statistics = record["statistics"]
        rank, pointing = statistics["relevance_rank_accuracy"], statistics["pointing_game"]
        verdict = statistics["verdict"]["verdict"]
        passed = rank["value"] >= max(RANK_ACCURACY_PASS, 2 * rank["chance"])
        hit = pointing["distance_mm"] <= pointing["tolerance_mm"]
        assert verdict == ("on target" if hit and passed else "partly on target" if hit or passed else "off target")
        if rank["value"] == 0:
            assert verdict != "on target"
        assert pointing["chance"] > 0 and rank["chance"] == pytest.approx(statistics["lesion_volume_share"], rel=1e-3)


def test_figure_panels_are_radiological_and_in_millimetres():
    from MedXAILib.report import figures

    shape, spacing = (20, 16, 10), (2.0, 1.0, 3.0)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-stored, as CT usually is
    volume = np.zeros(shape)
    volume[0, 0, 8] = 1.0  # i = j = 0: the most right and anterior voxel (largest RAS x, y); k = 8: superior
    order, flips = figures.ras_axes(affine)
    assert order == [0, 1, 2] and flips == [True, True, False]
    ras = figures._to_ras(volume, order, flips)
    focus = figures._focus_ras((0, 0, 8), shape, order, flips)
    axial, coronal, sagittal = (figures._plane(ras, v, focus) for v in ("axial", "coronal", "sagittal"))
    assert np.argwhere(axial).tolist() == [[0, 0]]  # anterior at the top, patient's right on the left
    assert np.argwhere(coronal).tolist() == [[1, 0]]  # superior at the top (k = 8 of 0..9), right on the left
    assert np.argwhere(sagittal).tolist() == [[1, 0]]  # superior at the top, anterior on the left
    assert figures._extent("axial", ras.shape, np.asarray(spacing)[order]) == (0.0, 40.0, 0.0, 16.0)
    assert figures._extent("sagittal", ras.shape, np.asarray(spacing)[order]) == (0.0, 16.0, 0.0, 30.0)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("href", "src") and value]


@pytest.mark.slow
def test_report_links_only_existing_files_and_every_figure(out, summary):
    parser = _Links()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    assert parser.links, "the report links nothing"
    for link in parser.links:
        assert "://" not in link and not link.startswith("/"), f"the report links outside its folder: {link}"
        assert (out / link).is_file(), f"the report links a missing file: {link}"
    expected = {summary["figures"]["prediction"], "scene.mrb", "summary.json", summary["image"]["file"]}
    expected |= {path for r in summary["attributions"] for path in r["figures"].values()}
    expected |= {r["file"] for r in summary["attributions"]} | {r["file_sum"] for r in summary["attributions"]}
    expected |= set(summary["comparison"]["files"].values()) | set(summary["counterfactual"]["files"].values())
    expected |= set(summary["counterfactual"]["figures"].values())
    if summary["pet"]:
        expected |= {summary["pet"]["file"], summary["figures"]["pet"]}
    assert expected <= set(parser.links)


@pytest.mark.slow
def test_report_answers_first_and_states_chance_levels(out, summary):
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.index("What decided") < html.index("<h2>Prediction</h2>")
    assert "Which region decided" in html and "Which channel decided" in html
    assert html.count("chance") >= 3 * len(summary["attributions"])
    assert "<details open>" in html and "How to read the maps" in html and "receptive field" in html
    for verdict, css in (("on target", "good"), ("partly on target", "mixed"), ("off target", "weak")):
        if any(r["statistics"]["verdict"]["verdict"] == verdict for r in summary["attributions"]):
            assert f'<span class="badge {css}">{verdict}</span>' in html, verdict
    assert "does not separate" in html or all(s["separates"] for s in summary["comparison"]["separation"].values())


@pytest.mark.slow
def test_scene_bundle_holds_the_scene_and_every_file_it_names(out, summary):
    with zipfile.ZipFile(out / "scene.mrb") as archive:
        names = archive.namelist()
        scenes = [n for n in names if n.endswith(".mrml")]
        assert len(scenes) == 1
        folder = scenes[0].rsplit("/", 1)[0]
        text = archive.read(scenes[0]).decode("utf-8")
    import xml.etree.ElementTree as ET

    nodes = ET.fromstring(text)
    for node in nodes:
        if "fileName" in node.attrib:
            assert f"{folder}/{node.attrib['fileName']}" in names, node.attrib["fileName"]
    volumes = [n for n in nodes if n.tag == "Volume"]
    per_channel = sum(len(r["figures"]) for r in summary["attributions"] if len(r["figures"]) > 1)
    assert len(volumes) == 2 + len(summary["attributions"]) + per_channel  # CT, PET, the maps and their channels
    assert sum(n.tag == "Segmentation" for n in nodes) == 1


# ------------------------------------------------------------------------------------------------
# What the explanations show


@pytest.mark.slow
def test_classifier_integrated_gradients_finds_the_lesion(summary):
    # the verdict, not the ratio to the lesion's volume share: Grad-CAM's ratio is above 3 too (the
    # lesion is 0.05 % of the voxels) while its maximum and its most relevant voxels miss the lesion
    if summary["fallback"]:
        pytest.fail("the shipped classifier (Resources/Models/lesion_classifier_ct.json) is missing; "
                    "the demo fell back to a tiny classifier: run python -m MedXAILib.demo.training")
    assert summary["prediction"]["classifier"]["probabilities"]["lesion"] > 0.5
    record = next(r for r in summary["attributions"] if r["model"] == "classifier"
                  and r["method"] == "integrated_gradients")
    stats = record["statistics"]
    assert stats["verdict"]["verdict"] == "on target", stats["verdict"]["reasons"]
    assert stats["positive_ratio"] >= MIN_LESION_RATIO, (
        f"the lesion holds {stats['positive_share_in_lesion']:.2%} of the positive relevance, only "
        f"{stats['positive_ratio']:.1f} x its {stats['lesion_volume_share']:.3%} share of the voxels")


# ------------------------------------------------------------------------------------------------
# The report in a real browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("no headless browser: install chromium (Debian: apt-get install -y chromium; .ci/run does it)")


@pytest.mark.slow
def test_report_renders_in_a_headless_browser_with_its_figures(out, tmp_path):
    import matplotlib.image

    screenshot = out / "report_screenshot.png"
    screenshot.unlink(missing_ok=True)
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}",
               f"--window-size={SCREENSHOT_SIZE[0]},{SCREENSHOT_SIZE[1]}", (out / "report.html").as_uri()]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "HOME": str(tmp_path)})
    assert screenshot.is_file(), f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    pixels = matplotlib.image.imread(str(screenshot))[..., :3]
    assert pixels.shape[:2] == (SCREENSHOT_SIZE[1], SCREENSHOT_SIZE[0])
    r, g, b = (pixels[..., c] for c in range(3))
    red = (r > 0.6) & (g < 0.35) & (b < 0.35)  # the warm end of the diverging map (figures and colour bars)
    blue = (b > 0.6) & (r < 0.45) & (g < 0.5)  # its cool end
    coloured = (np.ptp(pixels, axis=-1) > 0.15).mean()
    assert red.sum() > 500 and blue.sum() > 500, (
        f"attribution colours are not visible: {red.sum()} red, {blue.sum()} blue pixels")
    assert coloured > 0.02, f"only {coloured:.1%} of the page is coloured: are the figures shown?"
    dark = (pixels.mean(axis=-1) < 0.2).mean()  # CT background and air in the figures
    assert dark > 0.02, f"only {dark:.1%} of the page is dark: are the CT images shown?"
