"""The ``medxai`` command line: outputs, exit codes, progress and cancellation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from MedXAILib import ImageVolume, PROVENANCE_KEY
from MedXAILib.cli.main import main
from MedXAILib.io import read_image, write_image

from conftest import DEFAULT_SIGINT, oblique_affine


def explain_args(cli_files, *extra):
    return ["explain", "--image", str(cli_files["image"]), "--model", str(cli_files["model"]), "--quiet",
            *extra]


def test_explain_writes_geometry_provenance_and_summary(cli_files, capsys):
    out, summary = cli_files["dir"] / "attr.nrrd", cli_files["dir"] / "summary.json"
    code = main(explain_args(cli_files, "--method", "integrated_gradients", "--param", "n_steps=4",
                             "--target-class", "1", "--target-mask", str(cli_files["mask"]),
                             "--out", str(out), "--json", str(summary), "--seed", "5"))
    assert code == 0, capsys.readouterr().err
    attribution, image = read_image(out), read_image(cli_files["image"])
    np.testing.assert_allclose(attribution.affine, image.affine, atol=1e-5)
    assert attribution.shape == image.shape
    provenance = json.loads(attribution.meta["header"][PROVENANCE_KEY])
    assert provenance["method"] == "integrated_gradients" and provenance["seed"] == 5
    assert provenance["target"]["region"] == "mask" and provenance["target"]["mask_voxels"] == 7 * 6 * 5
    assert len(provenance["model"]["sha256"]) == 64 and provenance["target_name"] == "organ"
    assert json.loads(summary.read_text())["statistics"]["channel_shares_of_abs_relevance"] == [1.0]


def test_methods_lists_every_method_with_parameters(capsys):
    assert main(["methods", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert "integrated_gradients" in listed
    assert {"n_steps", "baseline"} <= {p["name"] for p in listed["integrated_gradients"]["parameters"]}
    assert main(["methods"]) == 0
    assert "--param n_steps (int, default 32" in capsys.readouterr().out


def _write(path: Path, array: np.ndarray, affine=None) -> Path:
    write_image(ImageVolume(array.astype(np.float32), oblique_affine() if affine is None else affine), path)
    return path


def _malicious(path: Path) -> Path:
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / 'pwned'}",))

    torch.save({"weights": Exploit()}, path)
    spec = json.loads((path.parent / "unet.json").read_text())
    spec["weights"] = path.name
    (path.parent / "evil.json").write_text(json.dumps(spec))
    return path.parent / "evil.json"


BAD_INPUTS = {
    "missing image": (lambda f: ["--image", str(f["dir"] / "nope.nrrd")], "nope.nrrd"),
    "4D image": (lambda f: ["--image", str(_write4d(f["dir"] / "4d.nii.gz"))], "3D"),
    "NaN voxels": (lambda f: ["--image", str(_write(f["dir"] / "nan.nrrd", _with_nan()))], "NaN"),
    "mask off the grid": (lambda f: ["--target-class", "1", "--target-mask", str(_write(
        f["dir"] / "far.nrrd", np.ones((4, 4, 4)), np.diag([1, 1, 1, 1.0]) + np.pad(
            np.array([[5000.0], [0], [0]]), ((0, 1), (3, 0)))))], "overlap"),
    "empty target region": (lambda f: ["--target-class", "1", "--target-mask", str(_write(
        f["dir"] / "empty.nrrd", np.zeros((20, 16, 12))))], "covers no voxel"),
    "class out of range": (lambda f: ["--target-class", "9", "--target-predicted"], "out of range"),
    "channels": (lambda f: ["--image", str(f["image"]), "--target-class", "1"], "input channel"),
    "corrupted model": (lambda f: ["--model", str(_corrupt(f["dir"] / "broken.ts"))], "broken.ts"),
    "pickle with code": (lambda f: ["--model", str(_malicious(f["dir"] / "evil.pt"))], "run code"),
    "unknown method": (lambda f: ["--method", "integrated_gradiants"], "did you mean 'integrated_gradients'"),
    "bad parameter": (lambda f: ["--param", "n_step=4"], "did you mean 'n_steps'"),
}


def _write4d(path: Path) -> Path:
    import SimpleITK as sitk

    volume = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(path))  # a true 4D image (time series)
    return path


def _with_nan() -> np.ndarray:
    array = np.zeros((20, 16, 12))
    array[3, 3, 3] = np.nan
    return array


def _corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_a_short_reason_and_no_output(case, cli_files, capsys):
    make_args, fragment = BAD_INPUTS[case]
    extra = make_args(cli_files)
    out = cli_files["dir"] / "attr.nrrd"
    args = explain_args(cli_files, "--target-class", "1", "--out", str(out))
    if case == "channels":  # a second --image makes a two-channel input for a one-channel model
        args[args.index("--image") + 2:args.index("--image") + 2] = ["--image", str(cli_files["image"])]
    elif extra[0] == "--image":  # replace the good image
        args[args.index("--image") + 1] = extra[1]
    else:
        args += extra
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and "Traceback" not in err
    assert err.count("\n") <= 3
    assert not out.exists()
    assert not (cli_files["dir"] / "pwned").exists()


def test_refuses_to_overwrite_the_input(cli_files, capsys):
    before = cli_files["image"].read_bytes()
    assert main(explain_args(cli_files, "--out", str(cli_files["image"]))) == 2
    assert "never overwrites its inputs" in capsys.readouterr().err
    assert cli_files["image"].read_bytes() == before


def test_python_m_progress_json_and_ctrl_c_cancels_without_output(cli_files):
    out = cli_files["dir"] / "attr.nrrd"
    command = [sys.executable, "-m", "MedXAILib", *explain_args(cli_files, "--method", "integrated_gradients",
               "--param", "n_steps=1000", "--param", "batch_size=1", "--target-class", "1",
               "--progress-json", "--out", str(out))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[2], **DEFAULT_SIGINT)
    records = []
    for line in process.stdout:
        records.append(json.loads(line))
        if records[-1].get("progress", 0) > 0.02:
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    assert {"progress", "message", "elapsed_s"} <= set(records[-1])
    assert not out.exists() and not list(cli_files["dir"].glob("*attr*"))


def test_boundary_band_and_margin_targets_from_the_command_line(cli_files, capsys):
    out = cli_files["dir"] / "band.nrrd"
    code = main(explain_args(cli_files, "--method", "saliency", "--target-class", "1",
                             "--target-boundary", "1.5,2", "--target-margin", "--out", str(out)))
    assert code == 0, capsys.readouterr().err
    provenance = json.loads(read_image(out).meta["header"][PROVENANCE_KEY])
    assert provenance["target"]["region"] == "boundary" and provenance["target"]["score"] == "margin"
    assert provenance["target"]["band_mm"] == [1.5, 2.0]
