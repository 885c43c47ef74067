"""Multi-channel inputs: every result keeps one map per channel and says what the channels can tell.

- :meth:`Attribution.channel_summary`: shares and sums per channel, whether the method told the channels
  apart (CAM maps and whole-voxel perturbations are split equally) and whether the channels compare
  (contributions in score units do; gradients are per unit of each channel's intensity);
- the saved file keeps every channel (names in the header), the sum is its own file;
- ``explain`` records it in the provenance for real methods on a two-channel segmenter.
"""

from __future__ import annotations

import numpy as np
import pytest

from MedXAILib import Target, explain
from MedXAILib.attribution import CHANNELS_KEY, Attribution
from MedXAILib.cli.main import main
from MedXAILib.io import read_image, write_image

from conftest import oblique_affine


def _attribution(array: np.ndarray, units: str = "score") -> Attribution:
    return Attribution(array.astype(np.float32), oblique_affine(),
                       {"input": {"channel_names": ["CT", "PET"]}, "map_units": units})


def test_channel_summary_says_what_the_channels_can_tell():
    rng = np.random.default_rng(0)
    array = rng.normal(size=(2, 6, 5, 4))
    array[1] *= 3.0
    summary = _attribution(array).channel_summary()
    assert summary["names"] == ["CT", "PET"] and summary["resolved"] and summary["comparable"]
    assert sum(summary["shares"]) == pytest.approx(1.0) and summary["shares"][1] > summary["shares"][0]
    assert summary["sums"] == pytest.approx(array.reshape(2, -1).sum(axis=1), abs=1e-5)
    gradient = _attribution(array, "gradient").channel_summary()
    assert gradient["resolved"] and not gradient["comparable"] and "units" in gradient["note"]
    split = _attribution(np.stack([array[0], array[0]]), "layer").channel_summary()  # one map, split equally
    assert not split["resolved"] and not split["comparable"] and "cannot say" in split["note"]
    one = Attribution(array[:1].astype(np.float32), oblique_affine()).channel_summary()
    assert one["names"] == ["channel 0"] and one["comparable"]


def test_the_file_keeps_every_channel_and_the_sum_is_its_own_file(tmp_path):
    array = np.random.default_rng(1).normal(size=(2, 6, 5, 4))
    attribution = _attribution(array)
    attribution.save(tmp_path / "a.nrrd")
    attribution.save_sum(tmp_path / "sum.nrrd")
    saved, total = read_image(tmp_path / "a.nrrd"), read_image(tmp_path / "sum.nrrd")
    assert saved.n_channels == 2 and saved.meta["header"][CHANNELS_KEY] == "CT,PET"
    np.testing.assert_allclose(saved.array, array, rtol=1e-6, atol=1e-6)
    assert total.n_channels == 1 and CHANNELS_KEY not in total.meta["header"]
    np.testing.assert_allclose(total.array[0], array.sum(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, units, resolved", [("saliency", "gradient", True), ("input_x_gradient", "score", True),
                                                      ("grad_cam", "layer", False)])
def test_explain_records_what_each_method_can_say_about_the_channels(two_channel_volume, two_channel_segmenter,
                                                                     method, units, resolved):
    attribution = explain(two_channel_volume, two_channel_segmenter, method, Target(class_index=1))
    channels = attribution.provenance["channels"]
    assert attribution.provenance["map_units"] == units and channels["units"] == units
    assert channels["names"] == ["CT", "PET"] and channels["resolved"] is resolved
    assert channels["comparable"] is (resolved and units == "score")
    assert attribution.array.shape[0] == 2


def test_explain_cli_writes_the_channels_and_the_sum(two_channel_volume, two_channel_segmenter, tmp_path, capsys):
    from MedXAILib.model import save_spec_model

    ct, pet = tmp_path / "ct.nrrd", tmp_path / "pet.nrrd"
    write_image(two_channel_volume.with_array(two_channel_volume.array[:1], channel_names=[]), ct)
    write_image(two_channel_volume.with_array(two_channel_volume.array[1:], channel_names=[]), pet)
    net = two_channel_segmenter.network
    args = {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "channels": [4, 8], "strides": [2],
            "num_res_units": 1}
    save_spec_model(net, "UNet", args, tmp_path / "unet.json", task="segmentation", in_channels=2)
    code = main(["explain", "--image", str(ct), "--image", str(pet), "--model", str(tmp_path / "unet.json"),
                 "--method", "input_x_gradient", "--target-class", "1", "--out", str(tmp_path / "a.nrrd"),
                 "--out-sum", str(tmp_path / "s.nrrd")])
    printed = capsys.readouterr().out
    assert code == 0
    saved, total = read_image(tmp_path / "a.nrrd"), read_image(tmp_path / "s.nrrd")
    assert saved.n_channels == 2 and total.n_channels == 1
    np.testing.assert_allclose(saved.array.sum(axis=0), total.array[0], rtol=1e-5, atol=1e-6)
    assert "share of |relevance| per channel:" in printed and "score units" in printed
