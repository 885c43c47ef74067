"""Tiny real MONAI networks and volumes for library tests (built in code, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from MedXAILib import ImageVolume
from MedXAILib.io import write_image
from MedXAILib.model import load_model, save_spec_model


def oblique_affine(spacing=(0.8, 1.1, 2.0), origin=(-120.0, 35.5, 410.0), angle_deg=25.0) -> np.ndarray:
    """A rotated, anisotropic IJK -> RAS affine with a far-off origin."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def volume() -> ImageVolume:
    rng = np.random.default_rng(0)
    return ImageVolume(rng.normal(size=(1, 20, 16, 12)).astype(np.float32), oblique_affine())


@pytest.fixture
def classifier():
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=3, init_features=4, growth_rate=4,
                      block_config=(2, 2))
    return load_model(net, task="classification", class_names=["a", "b", "c"], in_channels=1, device="cpu")


@pytest.fixture
def segmenter():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
    return load_model(net, task="segmentation", in_channels=1, device="cpu")


@pytest.fixture
def two_channel_volume(volume) -> ImageVolume:
    rng = np.random.default_rng(1)
    second = np.abs(rng.normal(size=volume.array.shape)).astype(np.float32) * 3.0  # PET-like, positive
    return ImageVolume(np.concatenate([volume.array, second]), volume.affine, channel_names=["CT", "PET"])


@pytest.fixture
def two_channel_segmenter():
    from monai.networks.nets import UNet

    torch.manual_seed(1)
    net = UNet(spatial_dims=3, in_channels=2, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
    return load_model(net, task="segmentation", in_channels=2, device="cpu")


CLI_UNET_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
                 "num_res_units": 1}


@pytest.fixture
def cli_files(tmp_path: Path) -> dict[str, Path]:
    """Files for the command-line tests: a CT-like image, a mask (7x6x5 voxels) and a tiny UNet spec model."""
    from monai.networks.nets import UNet

    rng = np.random.default_rng(0)
    image = ImageVolume(rng.normal(size=(1, 20, 16, 12)).astype(np.float32), oblique_affine())
    write_image(image, tmp_path / "ct.nrrd")
    mask = np.zeros(image.shape, np.float32)
    mask[5:12, 4:10, 3:8] = 1
    write_image(image.with_array(mask), tmp_path / "mask.nii.gz")
    torch.manual_seed(0)
    save_spec_model(UNet(**CLI_UNET_ARGS), "UNet", CLI_UNET_ARGS, tmp_path / "unet.json", task="segmentation",
                    class_names=["background", "organ", "lesion"], in_channels=1)
    return {"image": tmp_path / "ct.nrrd", "mask": tmp_path / "mask.nii.gz", "model": tmp_path / "unet.json",
            "dir": tmp_path}
