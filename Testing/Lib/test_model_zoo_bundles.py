"""MONAI Model Zoo bundles as published, against MONAI's own bundle inference.

The configs under ``data/bundles/<name>/`` are copies of the Model Zoo's inference configs and
metadata (text only; each folder's SOURCE names the repository, path and revision). The weights are
random, made at test time: MONAI's ``ConfigParser`` builds the network from the same config, and its
state dict is saved where the config's ``CheckpointLoader`` reads it. The reference is MONAI's own
pipeline on the same NIfTI file (written with nibabel, an independent writer): ``LoadImaged`` and the
bundle's ``preprocessing``, its ``inferer``, and ``Invertd`` back onto the image grid. MedXAI must give
the same network grid, the same output on it, the same output grid and geometry after the inversion,
the same prediction, and read the output activation as the bundle's postprocessing applies it.

Some configs take MONAI-runner overrides here, applied to MONAI's parser and to MedXAI alike, only to
keep CPU time small (a smaller window or network width); each case says which.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from MedXAILib import Target
from MedXAILib.errors import ModelError, UntrustedModelError, error_chain
from MedXAILib.io import read_image, read_images
from MedXAILib.model import load_model
from MedXAILib.model.bundle import CONFIG_NAMES, parse_override
from MedXAILib.model.windows import windowed_forward
from MedXAILib.scoring import resolve_target

from conftest import expect_cli_error

nib = pytest.importorskip("nibabel")
yaml = pytest.importorskip("yaml")

DATA = Path(__file__).resolve().parent / "data" / "bundles"
# label-only postprocessing that MedXAI does not reproduce (it explains scores): left out of the reference
LABEL_ONLY = ("SaveImaged", "Lambdad", "KeepLargestConnectedComponentd")


# ------------------------------------------------------------------------------------------------
# helpers: a bundle folder with random weights, a CT-like image, MONAI's own inference


def _bundle(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(DATA / name, folder)
    (folder / "models").mkdir(exist_ok=True)
    return folder


def _monai_parser(folder: Path, overrides: dict[str, Any]):
    """MONAI's ConfigParser as its runner sets it up: config, metadata, --bundle_root, --ID VALUE overrides."""
    from monai.bundle import ConfigParser

    config = next(folder / "configs" / n for n in CONFIG_NAMES if (folder / "configs" / n).is_file())
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.read_meta(str(folder / "configs" / "metadata.json"))
    parser["bundle_root"] = str(folder)
    parser.update(overrides)
    return parser


def _random_weights(folder: Path, overrides: dict[str, Any], weights: str = "model.pt", seed: int = 0):
    """The network as MONAI builds it from the config, random weights saved where the bundle keeps them."""
    parser = _monai_parser(folder, overrides)
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def").eval()
    torch.save(network.state_dict(), folder / "models" / weights)
    return parser, network


def _ct_files(tmp_path: Path, channels: int = 1, shape=(36, 30, 20), spacing=(1.7, 1.3, 2.5)) -> list[str]:
    """A body (noisy soft tissue) in air, on an oblique, flipped, anisotropic grid: every spatial step works."""
    rng = np.random.default_rng(1)
    angle = np.deg2rad(10)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = (30.0, 40.0, -60.0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    body = (grid[0] / 0.7) ** 2 + (grid[1] / 0.6) ** 2 + (grid[2] / 0.8) ** 2 < 1
    files = []
    for channel in range(channels):
        array = np.where(body, rng.normal(40, 120, shape), rng.normal(-1000, 5, shape)).astype(np.float32)
        path = tmp_path / f"image{channel}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), str(path))
        files.append(str(path))
    return files


def _monai_inference(parser, network, files: list[str]) -> dict[str, Any]:
    """MONAI's bundle pipeline: preprocessing, inferer, Invertd on the logits, and the published postprocessing."""
    from monai.transforms import Invertd

    post = parser["postprocessing"]["transforms"]
    parser["postprocessing#transforms"] = [t for t in post if t["_target_"] not in LABEL_ONLY]
    preprocessing = parser.get_parsed_content("preprocessing")
    data = preprocessing({"image": files if len(files) > 1 else files[0]})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    inverted = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False,
                       to_tensor=True)(dict(data))["pred"]
    published = parser.get_parsed_content("postprocessing")(dict(data))["pred"]
    return {"image": data["image"], "network": data["pred"], "inverted": inverted, "published": published}


def _medxai(folder: Path, files: list[str], overrides: dict[str, Any], trusted: bool) -> dict[str, Any]:
    adapter = load_model(folder, trust_bundle=trusted, device="cpu", bundle_overrides=overrides)
    image = read_image(files[0]) if len(files) == 1 else read_images(files)
    bound = adapter.bind(image.affine, image.shape, image.array)
    x = torch.as_tensor(image.array)[None]
    with torch.no_grad():
        z = adapter.preprocessing.apply(x, bound.grids)
        network = windowed_forward(adapter.network, z, bound.plan(), bound.windows_per_call())
        output = bound(x)
    return {"adapter": adapter, "image": image, "grid": bound.grids[-1], "z": z[0], "network": network[0],
            "output": output[0]}


def _prediction(logits: torch.Tensor, activation: str) -> torch.Tensor:
    return logits.argmax(0) if activation == "softmax" else logits > 0


# ------------------------------------------------------------------------------------------------
# the published configs against MONAI's own inference

CASES = {
    # as published
    "spleen_ct_segmentation": dict(overrides={}, trusted=False, channels=1),
    # its pixdim is an expression: given as a value instead (no trust needed); for CPU time init_filters
    # 32 -> 8 and a 64^3 window (the image is still smaller than it: replicate padding, gaussian blending)
    "wholeBody_ct_segmentation": dict(overrides={"pixdim": [1.5, 1.5, 1.5], "network_def#init_filters": 8,
                                                 "inferer#roi_size": [64, 64, 64]}, trusted=False, channels=1),
    # multi-label; its 240 x 240 x 160 window takes 27 s per pass on one CPU core: 48 x 48 x 32 here
    "brats_mri_segmentation": dict(overrides={"inferer#roi_size": [48, 48, 32]}, trusted=False, channels=4),
    # YAML, CropForegroundd, weights in models/dynunet_FT.pt; trusted (spatial_dims is an expression);
    # MONAI reads the file with nibabel (the config names ITKReader, not installed); 96^3 -> 32^3 window
    "pediatric_abdominal_ct_segmentation": dict(
        overrides={"preprocessing#transforms#0#reader": "NibabelReader", "inferer#roi_size": [32, 32, 32]},
        trusted=True, channels=1, weights="dynunet_FT.pt"),
    # ScaleIntensityd then NormalizeIntensityd; a 64^3 window for CPU time (a smaller image: 0.5 mm spacing)
    "prostate_mri_anatomy": dict(overrides={"inferer#roi_size": [64, 64, 64]}, trusted=False, channels=1,
                                 shape=(16, 12, 6)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_published_bundle_equals_monai_bundle_inference(name, tmp_path):
    case = CASES[name]
    folder = _bundle(name, tmp_path)
    parser, network = _random_weights(folder, case["overrides"], case.get("weights", "model.pt"))
    files = _ct_files(tmp_path, case["channels"], **({"shape": case["shape"]} if "shape" in case else {}))
    ref = _monai_inference(parser, network, files)
    ours = _medxai(folder, files, case["overrides"], case["trusted"])
    if "weights" in case:  # read from where the config's CheckpointLoader reads it, not models/model.pt
        assert not (folder / "models" / "model.pt").exists()

    # the network grid: shape, geometry, the preprocessed voxels and the output on it
    assert tuple(ours["z"].shape) == tuple(ref["image"].shape)
    np.testing.assert_allclose(ours["grid"].affine, ref["image"].affine.numpy(), atol=1e-4)
    scale = float(ref["image"].abs().max())
    np.testing.assert_allclose(ours["z"].numpy(), ref["image"].numpy(), rtol=0, atol=1e-5 * max(scale, 1.0))
    scale = float(ref["network"].abs().max())
    np.testing.assert_allclose(ours["network"].numpy(), ref["network"].numpy(), rtol=0, atol=1e-4 * scale)

    # back on the image grid: MONAI's inverse gives the image's own grid and geometry, and the same values
    image = ours["image"]
    assert tuple(ref["inverted"].shape) == tuple(ours["output"].shape) == (ref["network"].shape[0], *image.shape)
    np.testing.assert_allclose(ref["inverted"].affine.numpy(), image.affine, atol=1e-4)
    np.testing.assert_allclose(ours["output"].numpy(), ref["inverted"].numpy(), rtol=0, atol=1e-4 * scale)

    # the prediction, with the activation the bundle's postprocessing applies
    activation = ours["adapter"].output_activation
    assert activation == ("sigmoid" if name == "brats_mri_segmentation" else "softmax")
    predicted = _prediction(ours["output"], activation)
    assert (predicted == _prediction(ref["inverted"].as_tensor(), activation)).float().mean() > 0.999
    published = ref["published"].as_tensor()
    if name in ("spleen_ct_segmentation", "brats_mri_segmentation", "pediatric_abdominal_ct_segmentation"):
        # published: activation, Invertd (trilinear) on the probabilities, then argmax / threshold
        labels = published[0].long() if activation == "softmax" else published.bool()
        assert (predicted == labels).float().mean() > 0.99
    if activation == "sigmoid":
        _check_multi_label_targets(ours, ref)


def _check_multi_label_targets(ours: dict[str, Any], ref: dict[str, Any]) -> None:
    """BraTS (Activations(sigmoid=True)): a class's predicted region is where MONAI's own postprocessing puts
    it, and a probability target sums MONAI's sigmoid probabilities there."""
    output = ours["output"][None]
    probability = torch.sigmoid(ref["inverted"].as_tensor())  # MONAI's Activations(sigmoid=True)
    thresholded = ref["published"].as_tensor().bool()  # MONAI's Activations + Invertd + AsDiscrete(threshold=0.5)
    for channel in range(output.shape[1]):
        target = Target(class_index=channel, region="predicted", score="probability")
        scorer = resolve_target(target, output, "segmentation", ours["adapter"].output_activation,
                                spacing=ours["image"].spacing)
        region = scorer.region.reshape(thresholded.shape[1:]).bool()
        assert (region == thresholded[channel]).float().mean() > 0.99
        assert float(scorer(output)[0]) == pytest.approx(float(probability[channel][region].sum()), rel=1e-4)


# ------------------------------------------------------------------------------------------------
# reading configs: YAML, bundle_root, scripts/, overrides, removed arguments, detection


def test_yaml_and_json_configs_are_read_alike(tmp_path):
    json_folder = _bundle("spleen_ct_segmentation", tmp_path)
    _random_weights(json_folder, {})
    yaml_folder = tmp_path / "spleen_yaml"
    shutil.copytree(json_folder, yaml_folder)
    config = json.loads((yaml_folder / "configs" / "inference.json").read_text())
    (yaml_folder / "configs" / "inference.json").unlink()
    (yaml_folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    from_json, from_yaml = load_model(json_folder, device="cpu"), load_model(yaml_folder, device="cpu")
    assert {**from_json.describe(), "source": ""} == {**from_yaml.describe(), "source": ""}
    (yaml_folder / "configs" / "inference.yaml").write_text("network_def: [unclosed\n")
    with pytest.raises(ModelError, match="cannot read .*inference.yaml"):
        load_model(yaml_folder, device="cpu")


UNEST_MODULE = '''
import torch


class UNesT(torch.nn.Module):
    """Stands for the bundle's own network (its code is not copied): a tiny segmenter in scripts/."""

    bundle = {bundle!r}

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = torch.nn.Conv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        {forward}
        return self.conv(x)
'''


def _unest_bundle(tmp_path: Path, name: str, forward: str = "pass") -> Path:
    folder = _bundle("renalStructures_UNEST_segmentation", tmp_path / name)
    package = folder / "scripts" / "networks"
    package.mkdir(parents=True)
    (folder / "scripts" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "unest.py").write_text(UNEST_MODULE.format(bundle=name, forward=forward))
    return folder


def test_bundle_root_is_the_bundle_folder_and_a_trusted_bundle_imports_its_own_scripts(tmp_path):
    """renalStructures_UNEST: bundle_root names the author's folder, the network lives in scripts/."""
    config = json.loads((DATA / "renalStructures_UNEST_segmentation" / "configs" / "inference.json").read_text())
    assert config["bundle_root"] == "/models/renalStructures_UNEST_segmentation"
    first, second = _unest_bundle(tmp_path, "first"), _unest_bundle(tmp_path, "second")
    for folder in (first, second):
        torch.manual_seed(0)
        net = torch.nn.Conv3d(1, 4, 3, padding=1)
        torch.save({f"conv.{k}": v for k, v in net.state_dict().items()}, folder / "models" / "model.pt")
    with pytest.raises(UntrustedModelError, match="scripts.networks.unest.UNesT"):
        load_model(first, device="cpu")
    sys_path = list(sys.path)
    for folder in (first, second):  # both call their package 'scripts': each gets its own
        adapter = load_model(folder, trust_bundle=True, device="cpu")
        assert type(adapter.network).bundle == folder.parent.name
        assert adapter.class_names[1] == "kidney cortex" and adapter.roi_size == (96, 96, 96)
    assert sys.path == sys_path
    # '$@bundle_root + ...' values resolve in the bundle folder
    from MedXAILib.model.bundle import read_bundle

    bundle = read_bundle(first, True)
    assert bundle.value(bundle.config["output_dir"], "output_dir") == str(first.resolve()) + "/eval"
    assert bundle.checkpoint() == first.resolve() / "models" / "model.pt"


def test_a_failure_inside_the_networks_forward_is_one_line_with_its_cause(tmp_path, capsys):
    """A missing optional package imported when the network runs (einops in real bundles): exit 2, one line."""
    folder = _unest_bundle(tmp_path, "needs_package", forward="import medxai_missing_optional_package  # noqa")
    torch.save({f"conv.{k}": v for k, v in torch.nn.Conv3d(1, 4, 3, padding=1).state_dict().items()},
               folder / "models" / "model.pt")
    files = _ct_files(tmp_path, shape=(12, 10, 8))
    adapter = load_model(folder, trust_bundle=True, device="cpu")
    image = read_image(files[0])
    with pytest.raises(ModelError, match="needs a Python package that is not installed: No module named "
                                         "'medxai_missing_optional_package'"):
        with torch.no_grad():
            adapter.bind(image.affine, image.shape)(torch.as_tensor(image.array)[None])
    expect_cli_error(["explain", "--image", files[0], "--model", str(folder), "--trust-bundle", "--method", "saliency",
                      "--target-class", "1", "--out", str(tmp_path / "map.nrrd"), "--device", "cpu", "--quiet"],
                     "No module named 'medxai_missing_optional_package'", capsys)


def test_overrides_follow_monais_runner(tmp_path):
    assert parse_override("network_def#in_channels=2") == ("network_def#in_channels", 2)
    assert parse_override("inferer::roi_size=[64, 64, 32]") == ("inferer::roi_size", [64, 64, 32])
    assert parse_override("--device=cpu") == ("device", "cpu")
    assert parse_override("dints_space#device=$torch.device('cpu')") == ("dints_space#device", "$torch.device('cpu')")
    assert parse_override("pixdim=@other") == ("pixdim", "@other")
    with pytest.raises(ModelError, match="ID=VALUE"):
        parse_override("network_def")
    folder = _bundle("spleen_ct_segmentation", tmp_path)
    _random_weights(folder, {"network_def#channels": [4, 8, 16, 32, 64]})
    overrides = {"network_def#channels": [4, 8, 16, 32, 64], "inferer#overlap": 0.25,
                 "preprocessing#transforms#3#pixdim": [2.0, 2.0, 2.0]}
    adapter = load_model(folder, device="cpu", bundle_overrides=overrides)
    assert adapter.overlap == 0.25 and tuple(adapter.preprocessing.describe()[1]["pixdim"]) == (2.0, 2.0, 2.0)
    for bad, message in [({"network_def#nowhere#x": 1}, "'network_def#nowhere' does not exist"),
                         ({"preprocessing#transforms#99": {}}, "has no item '99'"),
                         ({"network_def#spatial_dims#x": 1}, "is a value, not a section")]:
        with pytest.raises(ModelError, match=message):
            load_model(folder, device="cpu", bundle_overrides=bad)
    with pytest.raises(UntrustedModelError, match=r"network_def#channels = '\$"):  # an expression needs trust
        load_model(folder, device="cpu", bundle_overrides={"network_def#channels": "$[4, 8, 16, 32, 64]"})
    with pytest.raises(ModelError, match="MONAI bundle folders only"):
        load_model(torch.nn.Conv3d(1, 2, 1), bundle_overrides={"device": "cpu"})


def _dints_arch(folder: Path) -> None:
    """A DiNTS architecture checkpoint as the bundle's search writes it (numpy arrays): a chain of 12 cells."""
    arch_a = np.zeros((12, 10), np.float32)
    arch_a[:, 0] = 1
    node_a = np.zeros((13, 4), bool)
    node_a[:, 0] = True
    torch.save({"node_a": node_a, "arch_code_a": arch_a, "arch_code_a_max": arch_a,
                "arch_code_c": np.ones((12, 10), np.int64)}, folder / "models" / "search_code_18590.pt")


@pytest.mark.filterwarnings("ignore:.*multiple of 32")
def test_a_config_pinned_to_cuda_fails_with_its_cause_and_is_fixed_by_overrides(tmp_path, capsys):
    """pancreas_ct_dints_segmentation (YAML): its architecture is loaded onto 'cuda' from @bundle_root."""
    folder = _bundle("pancreas_ct_dints_segmentation", tmp_path)
    _dints_arch(folder)
    overrides = {"arch_ckpt": "$torch.load(@arch_ckpt_path, map_location='cpu', weights_only=False)",
                 "dints_space#device": "cpu", "inferer#roi_size": [32, 32, 32]}
    _, network = _random_weights(folder, overrides)
    with pytest.raises(UntrustedModelError, match="dints_space"):
        load_model(folder, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError) as info:
            load_model(folder, device="cpu", trust_bundle=True)
        message = str(info.value)
        assert "failed to evaluate 'network_def': Failed to evaluate ConfigExpression" in message
        assert "caused by" in message and "\n" not in message and "--bundle-override" in message
        err = expect_cli_error(["layers", "--model", str(folder), "--trust-bundle", "--device", "cpu"],
                               "failed to evaluate 'network_def'", capsys)
        assert "caused by" in err
    adapter = load_model(folder, device="cpu", trust_bundle=True, bundle_overrides=overrides)
    assert adapter.roi_size == (32, 32, 32) and adapter.overlap == 0.625
    assert adapter.class_names == ["background", "pancreas", "pancreatic tumor"]
    x = torch.as_tensor(np.random.default_rng(0).random((1, 1, 32, 32, 32), np.float32))
    with torch.no_grad():
        torch.testing.assert_close(adapter.network(x), network(x), rtol=0, atol=1e-6)


def test_a_network_argument_newer_monai_removed_is_left_out_with_a_note(tmp_path):
    """swin_unetr_btcv_segmentation names SwinUNETR's img_size, which MONAI 1.5 removed."""
    import monai.networks.nets as nets

    folder = _bundle("swin_unetr_btcv_segmentation", tmp_path)
    overrides = {"network_def#feature_size": 12}  # 48 -> 12 for CPU time
    parser = _monai_parser(folder, overrides)
    if "img_size" not in __import__("inspect").signature(nets.SwinUNETR).parameters:
        with pytest.raises(Exception, match="img_size"):  # MONAI's own runner stops here
            parser.get_parsed_content("network_def")
    config = dict(parser["network_def"])
    torch.manual_seed(0)
    network = nets.SwinUNETR(**{k: v for k, v in config.items() if k not in ("_target_", "img_size")})
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    x = torch.as_tensor(np.random.default_rng(0).random((1, 1, 64, 32, 32), np.float32))
    with torch.no_grad():
        expected = network.eval()(x)
    for trusted in (False, True):
        adapter = load_model(folder, device="cpu", trust_bundle=trusted, bundle_overrides=overrides)
        assert any("img_size=96" in note and "removed" in note for note in adapter.notes)
        if not trusted:
            with torch.no_grad():
                torch.testing.assert_close(adapter.network(x), expected, rtol=0, atol=1e-5)


def test_a_detection_bundle_is_refused_before_anything_runs(tmp_path, capsys):
    folder = _bundle("lung_nodule_ct_detection", tmp_path)
    modules = set(sys.modules)
    with pytest.raises(ModelError, match="object-detection model .*output as 'object'") as info:
        load_model(folder, device="cpu", trust_bundle=True)
    assert not isinstance(info.value, UntrustedModelError)
    assert not {m for m in set(sys.modules) - modules if m.startswith(("scripts", "monai.apps.detection"))}
    files = _ct_files(tmp_path, shape=(8, 8, 8))
    expect_cli_error(["explain", "--image", files[0], "--model", str(folder), "--method", "saliency",
                      "--out", str(tmp_path / "map.nrrd"), "--device", "cpu", "--quiet"], "object-detection", capsys)


def test_errors_keep_their_whole_cause_on_one_line():
    try:
        try:
            raise RuntimeError("Attempting to deserialize object on a CUDA device\nbut torch.cuda.is_available() "
                               "is False.")
        except RuntimeError as cause:
            raise RuntimeError("Failed to evaluate ConfigExpression: \n$torch.load(@path)") from cause
    except RuntimeError as error:
        assert error_chain(error) == ("Failed to evaluate ConfigExpression: $torch.load(@path); caused by "
                                      "RuntimeError: Attempting to deserialize object on a CUDA device but "
                                      "torch.cuda.is_available() is False.")
    scripted = RuntimeError("The following operation failed in the TorchScript interpreter.\nTraceback of "
                            "TorchScript (most recent call last):\n  File \"code/x.py\"\nbuiltins.RuntimeError: "
                            "Sizes of tensors must match except in dimension 1.")
    assert error_chain(scripted) == "Sizes of tensors must match except in dimension 1."


# ------------------------------------------------------------------------------------------------
# sizes divisible by the strides, and the command line's window settings


def test_a_network_that_needs_divisible_sizes_is_padded_as_monai_pads(tmp_path, capsys):
    """A UNet with strides 2, 2, 2 on an ordinary volume: refused with the advice, then padded (DivisiblePad)."""
    from monai.data import MetaTensor
    from monai.networks.nets import UNet
    from monai.transforms import DivisiblePad

    torch.manual_seed(0)
    net = UNet(3, 1, 2, (4, 8, 16, 32), (2, 2, 2), num_res_units=1).eval()
    path = tmp_path / "unet.ts"
    with pytest.warns(DeprecationWarning):
        torch.jit.save(torch.jit.script(net), str(path))
    files = _ct_files(tmp_path, shape=(27, 23, 19))
    image = read_image(files[0])
    x = torch.as_tensor(image.array)[None] / 100
    with pytest.raises(ModelError, match="--pad-divisible K"):
        with torch.no_grad():
            load_model(path, device="cpu").bind(image.affine, image.shape)(x)
    adapter = load_model(path, device="cpu", pad_divisible=8)
    with torch.no_grad():
        ours = adapter.bind(image.affine, image.shape)(x)[0]
        pad = DivisiblePad(k=8)
        padded = pad(MetaTensor(x[0], affine=torch.as_tensor(image.affine)))
        expected = pad.inverse(MetaTensor(net(padded[None])[0], affine=padded.affine,
                                          applied_operations=padded.applied_operations))
    assert tuple(ours.shape) == (2, *image.shape)
    torch.testing.assert_close(ours, expected.as_tensor(), rtol=0, atol=1e-5)
    expect_cli_error(["explain", "--image", files[0], "--model", str(path), "--method", "saliency", "--task",
                      "segmentation", "--target-class", "1", "--out", str(tmp_path / "map.nrrd"), "--device", "cpu",
                      "--quiet"], "--pad-divisible", capsys)


def test_a_bundle_without_windows_pads_to_the_multiple_its_metadata_declares(tmp_path):
    """BraTS declares inputs of '8*n' voxels: with a SimpleInferer its whole image goes through the network."""
    folder = _bundle("brats_mri_segmentation", tmp_path)
    overrides = {"inferer": {"_target_": "SimpleInferer"}, "network_def#init_filters": 8}
    parser, network = _random_weights(folder, overrides)
    files = _ct_files(tmp_path, 4, shape=(21, 18, 13))
    adapter = load_model(folder, device="cpu", bundle_overrides=overrides)
    assert adapter.roi_size is None and adapter.preprocessing.describe()[-1]["kind"] == "divisible_pad"
    assert adapter.preprocessing.describe()[-1]["k"] == (8, 8, 8)
    image = read_images(files)
    with torch.no_grad():
        output = adapter.bind(image.affine, image.shape)(torch.as_tensor(image.array)[None])[0]
    from monai.transforms import DivisiblePad

    preprocessing = parser.get_parsed_content("preprocessing")
    data = preprocessing({"image": files})
    pad = DivisiblePad(k=8)
    padded = pad(data["image"])
    with torch.no_grad():
        expected = pad.inverse(type(padded)(network(padded[None])[0], affine=padded.affine,
                                            applied_operations=padded.applied_operations))
    assert tuple(output.shape) == (3, 21, 18, 13)
    torch.testing.assert_close(output, expected.as_tensor(), rtol=0, atol=1e-4)


def test_window_settings_from_the_command_line_reach_the_model(tmp_path, capsys):
    from MedXAILib.cli.main import main

    folder = _bundle("spleen_ct_segmentation", tmp_path)
    overrides = ["network_def#channels=[4,8,16,32,64]", "inferer#roi_size=[16,16,16]"]
    _random_weights(folder, dict(parse_override(o) for o in overrides))
    files = _ct_files(tmp_path, shape=(12, 10, 6))
    out = tmp_path / "map.nrrd"
    args = ["explain", "--image", files[0], "--model", str(folder), "--method", "saliency", "--target-class", "1",
            "--out", str(out), "--json", str(tmp_path / "summary.json"), "--device", "cpu", "--quiet",
            "--overlap", "0.4", "--blend-mode", "gaussian", "--padding-mode", "replicate",
            "--output-activation", "sigmoid"]
    for override in overrides:
        args += ["--bundle-override", override]
    assert main(args) == 0, capsys.readouterr().err
    model = json.loads((tmp_path / "summary.json").read_text())["provenance"]["model"]
    assert (model["overlap"], model["blend_mode"], model["padding_mode"], model["output_activation"]) == \
        (0.4, "gaussian", "replicate", "sigmoid")
    assert model["roi_size"] == [16, 16, 16]
    expect_cli_error(args[:-8] + ["--overlap", "1.5"] + args[-2:], "--overlap must be a number in [0, 1)", capsys)
    expect_cli_error(args + ["--bundle-override", "network_def#nowhere#x=1"], "'network_def#nowhere' does not exist",
                     capsys)


def test_a_spec_sets_the_padding_mode_and_refuses_unknown_ones(tmp_path):
    from monai.networks.nets import UNet

    from MedXAILib.model import save_spec_model

    args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]}
    spec = save_spec_model(UNet(**args), "UNet", args, tmp_path / "unet.json", roi_size=[16, 16, 16],
                           padding_mode="replicate", overlap=0.5, blend_mode="gaussian")
    adapter = load_model(spec, device="cpu")
    assert (adapter.padding_mode, adapter.overlap, adapter.blend_mode) == ("replicate", 0.5, "gaussian")
    assert load_model(spec, device="cpu", padding_mode="reflect").padding_mode == "reflect"
    body = json.loads(spec.read_text())
    spec.write_text(json.dumps({**body, "padding_mode": "edge"}))
    with pytest.raises(ModelError, match="padding_mode must be one of constant, replicate, reflect, circular"):
        load_model(spec, device="cpu")
    with pytest.raises(ModelError, match="overlap must be a number in"):
        load_model(torch.nn.Conv3d(1, 2, 1), overlap=1.0)
