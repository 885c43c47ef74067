"""Oblique grids and tiny spec models shared by the Runtime tests (built in code, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from MedXAILib.model import save_spec_model


def oblique_affine(spacing, origin, angle_deg: float) -> np.ndarray:
    """An IJK -> RAS affine rotated about the third axis, anisotropic, with a non-zero origin.

    As in ``Testing/Lib/conftest.py``, which cannot be imported here (``conftest`` is Testing/conftest.py).
    """
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def save_segmenter(folder: Path, unet_args: dict, in_channels: int) -> Path:
    """A MONAI UNet with seeded weights, saved as ``folder/unet.json`` (a spec model)."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return save_spec_model(UNet(**unet_args), "UNet", unet_args, Path(folder) / "unet.json",
                           task="segmentation", in_channels=in_channels)
