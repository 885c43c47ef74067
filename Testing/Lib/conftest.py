"""Tiny real MONAI networks and volumes for library tests (built in code, nothing downloaded)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import torch

from MedXAILib import ImageVolume
from MedXAILib.io import write_image
from MedXAILib.model import load_model, save_spec_model

ROOT = Path(__file__).resolve().parents[2]


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


def two_structure_label_map(volume: ImageVolume, path: Path, values: tuple[int, int]) -> np.ndarray:
    """A label map on `volume`'s grid with two boxes labelled `values` (background 0), written to `path`."""
    label_array = np.zeros(volume.shape, np.float32)
    label_array[2:9, 3:12, 1:6] = values[0]
    label_array[12:18, 2:8, 6:11] = values[1]
    write_image(ImageVolume(label_array, volume.affine), path)
    return label_array


# ------------------------------------------------------------------------------------------------
# The command line


def with_extra_args(args: Sequence[str], extra: Sequence[str], replaced: Sequence[str]) -> list[str]:
    """`args` with `extra` added: when `extra` starts with an option of `replaced`, that option's value in
    `args` becomes ``extra[1]`` (and the rest of `extra` is appended); otherwise `extra` is appended."""
    args = list(args)
    if extra and extra[0] in replaced:
        args[args.index(extra[0]) + 1] = extra[1]
        args += extra[2:]
    else:
        args += extra
    return args


def expect_cli_error(args: Sequence[str], fragment: str, capsys) -> str:
    """Run ``medxai`` with `args` in this process: it must exit 2 (also where argparse exits itself) with
    at most three lines on stderr that hold `fragment` and no traceback. Returns stderr."""
    from MedXAILib.cli.main import main

    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse rejects malformed options itself (through Parser.error)
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and "Traceback" not in err and err.count("\n") <= 3, err
    return err


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: Popen keywords giving the child the default SIGINT. A test run started in the background of a
#: non-interactive shell (`make test &`) has SIGINT ignored, and an ignored signal stays ignored across
#: exec: without this the child would never see the Ctrl-C the test sends.
DEFAULT_SIGINT = {"preexec_fn": _default_sigint} if sys.platform != "win32" else {}


def interrupt_cli(args: Sequence[str], until: Callable[[dict], bool]) -> list[dict]:
    """Run ``python -m MedXAILib *args`` (with ``--progress-json``) and press Ctrl-C once a progress
    record satisfies `until`: the command must exit 130 saying it was cancelled, without a traceback.
    Returns the records read."""
    process = subprocess.Popen([sys.executable, "-m", "MedXAILib", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, **DEFAULT_SIGINT)
    records = []
    for line in process.stdout:
        records.append(json.loads(line))
        if until(records[-1]):
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    return records
