"""The bad-input table: every way a user's input can be wrong, refused with one line and exit 2, or warned about.

Each refused case runs ``medxai explain`` in this process and checks the contract the README promises:
exit code 2, one line on stderr naming the problem (no traceback, no usage block), no output written,
and every input file byte for byte as before. The warned cases run to the end and must say, on stderr
and in the provenance, what was suspicious.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from MedXAILib import ImageVolume
from MedXAILib.cli.main import main
from MedXAILib.io import read_image, write_image


class NaNOnPart(torch.nn.Module):
    """A segmenter whose output is NaN wherever the input is above 2 (a numerically unstable model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x, -x, x * 0.5], dim=1)
        return torch.where(x > 2.0, torch.full_like(y, float("nan")), y)


class IntegerOutput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).long().repeat(1, 3, 1, 1, 1)


class TwoChannelConv(torch.nn.Module):
    """Takes two input channels: a one-channel image fails inside the TorchScript interpreter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def _spec(files: dict, path: Path, **changes) -> Path:
    body = json.loads(files["model"].read_text())
    body.update(changes)
    path.write_text(json.dumps(body))
    return path


def _nifti_with(files: dict, path: Path, values: dict) -> Path:
    image = read_image(files["image"])
    array = image.array.copy()
    for index, value in values.items():
        array[(0, *index)] = value
    # SimpleITK would read NaN as 0; write with nibabel, an independent writer that keeps them
    import nibabel as nib

    nib.save(nib.Nifti1Image(array[0], image.affine), str(path))
    return path


def _truncated(files: dict, path: Path) -> Path:
    image = read_image(files["image"])
    write_image(image, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_gzip(files: dict, path: Path) -> Path:
    image = read_image(files["image"])
    write_image(image, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _loop(files: dict, path: Path) -> Path:
    (files["dir"] / "loop_b").symlink_to(files["dir"] / "loop_a")
    (files["dir"] / "loop_a").symlink_to(files["dir"] / "loop_b")
    return files["dir"] / "loop_a"


Builder = Callable[[dict], list]

#: name -> (arguments for ``medxai explain`` after the defaults, or a replaced default; fragment of the error)
REFUSED: dict[str, tuple[Builder, str]] = {
    # outputs onto inputs (the output guard)
    "--json onto the image": (lambda f: ["--json", str(f["image"])], "never overwrites its inputs"),
    "--json onto the model spec": (lambda f: ["--json", str(f["model"])], "never overwrites its inputs"),
    "--out onto the target mask": (lambda f: ["--target-class", "1", "--target-mask", str(f["mask"]),
                                              "--out", str(f["mask"])], "never overwrites its inputs"),
    "--json a folder": (lambda f: ["--json", str(f["dir"])], "is a folder"),
    "--out in a missing folder": (lambda f: ["--out", str(f["dir"] / "missing" / "a.nrrd")], "does not exist"),
    # damaged or undefined input (the input guard)
    "truncated .nii.gz": (lambda f: ["--image", str(_truncated(f, f["dir"] / "cut.nii.gz"))], "ends early"),
    "corrupt .nii.gz": (lambda f: ["--image", str(_corrupt_gzip(f, f["dir"] / "bad.nii.gz"))], "damaged"),
    "NaN voxels in NIfTI": (lambda f: ["--image", str(_nifti_with(f, f["dir"] / "nan.nii", {(1, 1, 1): np.nan}))],
                            "1 NaN voxel"),
    "Inf voxels in NIfTI.gz": (lambda f: ["--image", str(_nifti_with(f, f["dir"] / "inf.nii.gz",
                                                                      {(1, 1, 1): np.inf, (2, 2, 2): -np.inf}))],
                               "2 infinite voxel"),
    "symlink loop as image": (lambda f: ["--image", str(_loop(f, f["dir"]))], "cannot resolve"),
    # models that cannot be used
    "model output NaN on part": (lambda f: ["--model", str(_script(NaNOnPart(), f["dir"] / "nan.ts")),
                                            "--task", "segmentation", "--target-class", "1"],
                                 "NaN or infinite on"),
    "integer model output": (lambda f: ["--model", str(_script(IntegerOutput(), f["dir"] / "int.ts")),
                                        "--task", "segmentation", "--target-class", "1"], "integer"),
    "TorchScript error keeps its cause": (lambda f: ["--model", str(_script(TwoChannelConv(), f["dir"] / "c2.ts")),
                                                     "--task", "segmentation", "--target-class", "1"],
                                          "expected input"),
    "spec overlap not a number": (lambda f: ["--model", str(_spec(f, f["dir"] / "o.json", overlap="half"))],
                                  "overlap"),
    "spec weights not a string": (lambda f: ["--model", str(_spec(f, f["dir"] / "w.json", weights=3))], "weights"),
    "weights not a PyTorch file": (lambda f: ["--model", str(_spec(
        f, f["dir"] / "p.json", weights=(f["dir"] / "junk.pt").name))], "not a PyTorch"),
    # values that make no sense, before any work
    "class out of range": (lambda f: ["--target-class", "9"], "out of range"),
    "window low above high": (lambda f: ["--window", "100,0"], "--window"),
    "zero spacing": (lambda f: ["--spacing", "0,0,0"], "--spacing"),
    "zero ROI": (lambda f: ["--roi-size", "0,0,0"], "--roi-size"),
    "memory budget of one byte": (lambda f: ["--memory-budget", "1B"], "--memory-budget"),
    "NaN parameter": (lambda f: ["--method", "smoothgrad", "--param", "noise_level=nan", "--target-class", "1"],
                      "noise_level"),
    "box outside the image, negative corner written plainly": (
        lambda f: ["--target-class", "1", "--target-box", "-9,-9,-9,-5,-5,-5"], "outside the image"),
    "unknown option": (lambda f: ["--no-such-option"], "unrecognized arguments"),
}


def _files(cli_files: dict) -> dict:
    (cli_files["dir"] / "junk.pt").write_bytes(b"this is not a PyTorch file")
    return cli_files


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_one_line_exit_2_nothing_written_inputs_intact(case, cli_files, capsys):
    files = _files(cli_files)
    build, fragment = REFUSED[case]
    extra = build(files)
    out = files["dir"] / "out" / "attribution.nrrd"
    out.parent.mkdir()
    args = ["explain", "--image", str(files["image"]), "--model", str(files["model"]), "--quiet",
            "--out", str(out), "--target-class", "1"]
    for option in ("--image", "--model", "--out", "--target-class"):  # a case may replace a default
        if option in extra:
            index = args.index(option)
            del args[index:index + 2]
    before = _digests(files["dir"])
    try:
        code = main([*args, *extra])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, f"{case}: exit {code}\n{err}"
    assert err.startswith("medxai: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err
    assert _digests(files["dir"]) == before, "an input changed or an output was written"
    assert not any(p.name.startswith(".medxai-") for p in files["dir"].rglob("*")), "staging left behind"


WARNED: dict[str, tuple[Callable[[dict], list], str]] = {
    "box partly outside": (lambda f: ["--target-box", "-5,10,8,40,40,40"], "box"),
    "mask with many labels": (lambda f: ["--target-mask", str(_probability_map(f))], "labels"),
    "all-zero image": (lambda f: ["--image", str(_zeros(f))], "constant"),
}


def _probability_map(files: dict) -> Path:
    image = read_image(files["image"])
    values = np.linspace(0, 255, image.array.size, dtype=np.float32).reshape(image.array.shape).round()
    write_image(image.with_array(values), files["dir"] / "prob.nrrd")
    return files["dir"] / "prob.nrrd"


def _zeros(files: dict) -> Path:
    image = read_image(files["image"])
    write_image(image.with_array(np.zeros_like(image.array)), files["dir"] / "zeros.nrrd")
    return files["dir"] / "zeros.nrrd"


@pytest.mark.parametrize("case", sorted(WARNED))
def test_suspicious_input_is_warned_on_stderr_and_in_the_provenance(case, cli_files, capsys):
    build, fragment = WARNED[case]
    extra = build(cli_files)
    out, summary = cli_files["dir"] / "a.nrrd", cli_files["dir"] / "s.json"
    args = ["explain", "--image", str(cli_files["image"]), "--model", str(cli_files["model"]), "--quiet",
            "--method", "saliency", "--target-class", "1", "--out", str(out), "--json", str(summary)]
    if "--image" in extra:
        index = args.index("--image")
        del args[index:index + 2]
    code = main([*args, *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("medxai: warning:")]
    assert any(fragment in w for w in warnings), err
    recorded = json.loads(summary.read_text())["provenance"]["diagnostics"]["warnings"]
    assert any(fragment in w for w in recorded), recorded


def test_a_gzip_member_check_reads_the_whole_stream(tmp_path):
    """The damaged-gzip case is real: Python's gzip itself refuses the corrupted copy."""
    volume = ImageVolume(np.ones((1, 8, 8, 8), np.float32), np.eye(4))
    write_image(volume, tmp_path / "a.nii.gz")
    data = bytearray((tmp_path / "a.nii.gz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(Exception):
        gzip.decompress(bytes(data))
