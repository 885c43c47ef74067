"""Model loading: TorchScript, exported programs, state dict + spec, MONAI bundles, security, devices.

Tiny MONAI networks are built in code; every file is written under ``tmp_path``; nothing is
downloaded. Outputs are compared with the eager network (or MONAI's own inferer) on the same input.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import DenseNet121, UNet

from MedXAILib.errors import InputError, ModelError, UntrustedModelError
from MedXAILib.model import BoundModel, ModelAdapter, Preprocessing, load_model, resolve_device, save_spec_model

# torch 2.13 deprecates TorchScript (still what MONAI bundles ship as model.ts)
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated. Please switch to:DeprecationWarning")

UNET_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
             "num_res_units": 1}
DENSENET_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_features": 4, "growth_rate": 4,
                 "block_config": [2, 2]}


def _unet(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    return UNet(**{**UNET_ARGS, **overrides}).eval()


def _densenet(seed: int = 0) -> DenseNet121:
    torch.manual_seed(seed)
    return DenseNet121(**DENSENET_ARGS).eval()


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _eager(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def _run(adapter: ModelAdapter, x: torch.Tensor, affine: np.ndarray | None = None) -> torch.Tensor:
    bound = adapter.bind(np.eye(4) if affine is None else affine, x.shape[2:])
    with torch.no_grad():
        return bound(x)


def _metadata(task: str = "segmentation", classes=("background", "liver", "tumour"), in_channels: int = 1):
    """A MONAI-style ``metadata.json`` (network_data_format as MONAI model-zoo bundles write it)."""
    out_type = "image" if task == "segmentation" else "probabilities"
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "name": "Tiny test model",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT",
                                 "num_channels": in_channels, "spatial_shape": [8, 8, 8], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": out_type, "format": "segmentation" if task == "segmentation" else "classes",
                                 "num_channels": len(classes), "spatial_shape": [8, 8, 8], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {str(i): name for i, name in enumerate(classes)}}},
        },
    }


# ------------------------------------------------------------------------------------------------
# TorchScript


def test_scripted_torchscript_matches_eager(tmp_path):
    net = _unet()
    path = tmp_path / "unet.ts"
    torch.jit.save(torch.jit.script(net), str(path))
    adapter = load_model(path, device="cpu")
    assert adapter.task is None and adapter.class_names is None  # nothing declared
    assert adapter.model_id == "unet" and len(adapter.sha256) == 64 and adapter.source == str(path)
    x = _x(1, 1, 12, 8, 16)
    out = _run(adapter, x)
    torch.testing.assert_close(out, _eager(net, x), rtol=0, atol=1e-6)
    assert adapter.task == "segmentation"  # read from the output rank on the first forward
    assert not any(p.requires_grad for p in adapter.network.parameters())
    assert not adapter.network.training


def test_traced_torchscript_classifier_matches_eager(tmp_path):
    net = _densenet()
    x = _x(1, 1, 16, 16, 16)
    path = tmp_path / "densenet.pt"  # MONAI bundles and users also name TorchScript files .pt
    torch.jit.save(torch.jit.trace(net, x), str(path))
    adapter = load_model(path, device="cpu")
    out = _run(adapter, x)
    assert out.shape == (1, 2)
    torch.testing.assert_close(out, _eager(net, x), rtol=0, atol=1e-6)
    assert adapter.task == "classification"


def test_torchscript_metadata_extra_file_declares_task_classes_and_channels(tmp_path):
    net = _unet()
    path = tmp_path / "model.ts"
    meta = _metadata("segmentation", ("background", "liver", "tumour"))
    torch.jit.save(torch.jit.script(net), str(path), _extra_files={"metadata.json": json.dumps(meta)})
    adapter = load_model(path, device="cpu")
    assert adapter.task == "segmentation"
    assert adapter.class_names == ["background", "liver", "tumour"]
    assert adapter.in_channels == 1
    with pytest.raises(ModelError, match="2"):
        adapter.check_input(2)
    x = _x(1, 1, 8, 8, 8)
    torch.testing.assert_close(_run(adapter, x), _eager(net, x), rtol=0, atol=1e-6)

    cls_path = tmp_path / "classifier.ts"
    torch.jit.save(torch.jit.script(_densenet()), str(cls_path),
                   _extra_files={"metadata.json": json.dumps(_metadata("classification", ("benign", "malignant")))})
    classifier = load_model(cls_path, device="cpu")
    assert classifier.task == "classification" and classifier.class_names == ["benign", "malignant"]


def test_overrides_replace_what_the_model_declares(tmp_path):
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(_unet()), str(path), _extra_files={"metadata.json": json.dumps(_metadata())})
    adapter = load_model(path, device="cpu", class_names=["a", "b", "c"], roi_size=[8, 8, 8], in_channels=1)
    assert adapter.class_names == ["a", "b", "c"] and adapter.roi_size == (8, 8, 8)
    with pytest.raises(ModelError, match="task"):
        load_model(path, device="cpu", task="regression")


# ------------------------------------------------------------------------------------------------
# torch.export programs


def _export(net: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    torch.export.save(torch.export.export(net, (x,)), str(path))
    return path


def test_exported_program_matches_eager_and_runs_window_by_window(tmp_path):
    net = _unet()
    path = _export(net, _x(1, 1, 8, 8, 8), tmp_path / "unet.pt2")
    adapter = load_model(path, device="cpu")
    # read from the exported graph: a dense output, a fixed 8^3 input and one input channel
    assert adapter.task == "segmentation" and adapter.roi_size == (8, 8, 8) and adapter.in_channels == 1
    x = _x(1, 1, 8, 8, 8)
    torch.testing.assert_close(adapter.network(x), _eager(net, x), rtol=0, atol=1e-6)
    torch.testing.assert_close(_run(adapter, x), _eager(net, x), rtol=1e-5, atol=1e-5)

    big = _x(2, 1, 12, 16, 10, seed=3)  # larger than the exported shape, and a batch of two
    expected = sliding_window_inference(big, (8, 8, 8), 1, net, overlap=0.25, mode="constant")
    torch.testing.assert_close(_run(adapter, big), expected, rtol=1e-5, atol=1e-5)


def test_exported_classifier_and_shape_errors(tmp_path):
    net = _densenet()
    x = _x(1, 1, 16, 16, 16)
    adapter = load_model(_export(net, x, tmp_path / "cls.pt2"), device="cpu")
    assert adapter.task == "classification" and adapter.roi_size is None
    torch.testing.assert_close(_run(adapter, x), _eager(net, x), rtol=1e-5, atol=1e-6)
    batch = torch.cat([x, _x(1, 1, 16, 16, 16, seed=9)])
    torch.testing.assert_close(_run(adapter, batch), _eager(net, batch), rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match=r"accepts inputs of shape .*16, 16, 16"):
        _run(adapter, _x(1, 1, 12, 16, 16))


def test_exported_plain_conv_module_with_dynamic_shapes(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(2, 2, 1)).eval()
    dims = {"x": {0: torch.export.Dim("b", max=8), 2: torch.export.Dim("i", min=2, max=64)}}
    program = torch.export.export(net, (_x(2, 1, 6, 5, 4),), dynamic_shapes=[dims["x"]])
    path = tmp_path / "conv.pt2"
    torch.export.save(program, str(path))
    adapter = load_model(path, device="cpu")
    assert adapter.roi_size is None  # not all spatial dims fixed: no window
    x = _x(3, 1, 9, 5, 4)
    torch.testing.assert_close(_run(adapter, x), _eager(net, x), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# state dict + network spec


def test_save_spec_model_round_trip(tmp_path):
    net = _unet()
    spec = save_spec_model(net, "UNet", UNET_ARGS, tmp_path / "unet.json", task="segmentation",
                           class_names=["bg", "a", "b"], roi_size=[8, 8, 8], overlap=0.5, blend_mode="constant")
    assert (tmp_path / "unet.pt").is_file()
    adapter = load_model(spec, device="cpu")
    assert adapter.task == "segmentation" and adapter.class_names == ["bg", "a", "b"]
    assert adapter.in_channels == 1  # from the network arguments
    assert adapter.roi_size == (8, 8, 8) and adapter.overlap == 0.5 and adapter.blend_mode == "constant"
    x = _x(1, 1, 12, 16, 8)
    expected = sliding_window_inference(x, (8, 8, 8), 1, net, overlap=0.5, mode="constant")
    torch.testing.assert_close(_run(adapter, x), expected, rtol=1e-5, atol=1e-6)


def test_hand_written_spec_with_preprocessing(tmp_path):
    net = _densenet()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # a DataParallel checkpoint layout
    torch.save({"epoch": 7, "state_dict": state}, tmp_path / "weights.ckpt")
    spec = {
        "name": "lesion-classifier",
        "description": "tiny test net",
        "network": {"name": "monai.networks.nets.DenseNet121", "args": DENSENET_ARGS},
        "weights": "weights.ckpt",
        "task": "classification",
        "class_names": ["no lesion", "lesion"],
        "preprocessing": [{"kind": "scale_intensity_range", "a_min": -100, "a_max": 200, "clip": True}],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    adapter = load_model(tmp_path / "spec.json", device="cpu")
    assert adapter.model_id == "lesion-classifier" and adapter.in_channels == 1
    x = _x(1, 1, 16, 16, 16) * 150
    expected = _eager(net, torch.clamp((x + 100) / 300, 0, 1))
    torch.testing.assert_close(_run(adapter, x), expected, rtol=1e-5, atol=1e-6)
    described = json.loads(json.dumps(adapter.describe()))
    assert described["preprocessing"][0]["kind"] == "scale_intensity_range"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"network": {"name": "UNett", "args": UNET_ARGS}}, r"no network 'UNett'.*did you mean 'UNet'"),
        ({"network": {"name": "torchvision.models.resnet18", "args": {}}}, r"not in monai.networks.nets"),
        ({"network": {"name": "monai.apps.Evil", "args": {}}}, r"not in monai.networks.nets"),
        ({"network": {"name": "BasicUNet", "args": UNET_ARGS}}, r"cannot build BasicUNet"),
        ({"network": {"name": "UNet", "args": {**UNET_ARGS, "out_channels": 2}}}, r"do not fit the network definition UNet: size mismatch"),
        ({"network": {"name": "UNet", "args": {**UNET_ARGS, "colour": "red"}}}, r"cannot build UNet"),
        ({"network": "UNet"}, r"'network' must be"),
        ({"weights": "missing.pt"}, r"does not exist"),
        ({"extra_key": 1, "trust": True}, r"unknown entries: extra_key, trust"),
        ({"task": "detection"}, r"task must be one of"),
        ({"class_names": "liver"}, r"class_names must be a list of strings"),
        ({"roi_size": [96, 96]}, r"roi_size must be three integers"),
        ({"in_channels": "1"}, r"in_channels must be a positive integer"),
        ({"preprocessing": [{"kind": "histogram_match"}]}, r"unknown preprocessing step 'histogram_match'"),
    ],
)
def test_bad_specs_raise_model_error_with_a_helpful_message(tmp_path, change, message):
    save_spec_model(_unet(), "UNet", UNET_ARGS, tmp_path / "unet.json")
    spec = {**json.loads((tmp_path / "unet.json").read_text()), **change}
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match=message) as info:
        load_model(tmp_path / "bad.json", device="cpu")
    assert not isinstance(info.value, UntrustedModelError)


def test_unreadable_spec_json(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read model spec"):
        load_model(tmp_path / "broken.json")
    (tmp_path / "partial.json").write_text(json.dumps({"network": {"name": "UNet"}}))
    with pytest.raises(ModelError, match="'network' and 'weights'"):
        load_model(tmp_path / "partial.json")


# ------------------------------------------------------------------------------------------------
# MONAI bundles


def _bundle_config(tmp_path: Path, network_def=None, **sections) -> dict:
    """A realistic inference.json, in the layout of the MONAI model zoo's spleen_ct_segmentation."""
    config = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": f"$open({str(tmp_path / 'evaluated')!r}, 'w').close() or @bundle_root",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def or {"_target_": "UNet", **UNET_ARGS},
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
                {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0,
                 "b_max": 1, "clip": True},
                {"_target_": "EnsureTyped", "keys": "image", "device": "@device"},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 4},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [8, 8, 8], "sw_batch_size": 4,
                    "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir"}]},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing"},
        "evaluating": ["$setattr(torch.backends.cudnn, 'benchmark', True)", "$@evaluator.run()"],
    }
    config.update(sections)
    return config


def _write_bundle(tmp_path: Path, config: dict, net: torch.nn.Module, metadata: dict | None = None) -> Path:
    folder = tmp_path / "tiny_bundle"
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata or _metadata()))
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def test_realistic_bundle_loads_without_trust_and_evaluates_no_expression(tmp_path):
    net = UNet(**UNET_ARGS, norm="batch")
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial running statistics, so eval() mode matters
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    net.eval()
    config = _bundle_config(tmp_path, {"_target_": "UNet", **UNET_ARGS, "norm": "batch"})
    folder = _write_bundle(tmp_path, config, net)
    adapter = load_model(folder, device="cpu")
    assert not (tmp_path / "evaluated").exists()  # no "$" expression ran

    assert adapter.model_id == "Tiny test model" and adapter.source == str(folder)
    assert adapter.task == "segmentation"
    assert adapter.class_names == ["background", "liver", "tumour"]
    assert adapter.in_channels == 1
    assert adapter.roi_size == (8, 8, 8) and adapter.sw_batch_size == 4 and adapter.overlap == 0.5
    assert adapter.blend_mode == "constant"  # MONAI's SlidingWindowInferer default
    steps = adapter.preprocessing.describe()
    assert [s["kind"] for s in steps] == ["orientation", "spacing", "scale_intensity_range"]
    assert steps[0]["axcodes"] == "RAS"
    assert tuple(steps[1]["pixdim"]) == (1.5, 1.5, 2.0) and steps[1]["mode"] == "bilinear"
    assert (steps[2]["a_min"], steps[2]["a_max"], steps[2]["b_min"], steps[2]["b_max"], steps[2]["clip"]) == \
        (-57, 164, 0, 1, True)

    # an image already on the network grid (RAS, 1.5 x 1.5 x 2 mm): preprocessing is the window only
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = (-40.0, 12.0, 300.0)
    x = _x(1, 1, 12, 16, 10) * 100
    expected = sliding_window_inference(torch.clamp((x + 57) / 221, 0, 1), (8, 8, 8), 4, net, overlap=0.5,
                                        mode="constant")
    torch.testing.assert_close(_run(adapter, x, affine), expected, rtol=1e-5, atol=1e-5)


def test_bundle_with_torchscript_model_and_colon_references(tmp_path):
    net = _unet()
    config = _bundle_config(tmp_path, roi=[8, 8, 8])
    config["inferer"]["roi_size"] = "@roi"
    config["network_def"] = {"_target_": "monai.networks.nets.UNet", **UNET_ARGS,
                             "in_channels": "@network_data::in"}
    config["network_data"] = {"in": 1}
    folder = _write_bundle(tmp_path, config, net)
    adapter = load_model(folder, device="cpu")
    assert adapter.roi_size == (8, 8, 8)
    x = _x(1, 1, 8, 8, 8)
    torch.testing.assert_close(adapter.network(x), _eager(net, x), rtol=0, atol=1e-6)

    (folder / "models" / "model.pt").unlink()
    torch.jit.save(torch.jit.script(net), str(folder / "models" / "model.ts"))
    from_ts = load_model(folder, device="cpu")
    torch.testing.assert_close(from_ts.network(x), _eager(net, x), rtol=0, atol=1e-6)
    (folder / "models" / "model.ts").unlink()
    with pytest.raises(ModelError, match="neither models/model.pt nor models/model.ts"):
        load_model(folder, device="cpu")


UNET_EXPR = ("$monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), "
             "strides=(2,), num_res_units=1)")


@pytest.mark.parametrize(
    "network_def, extra, trustable",
    [
        (UNET_EXPR, {}, True),
        ({"_target_": "UNet", **UNET_ARGS, "out_channels": "$2"}, {}, True),
        ({"_target_": "UNet", **UNET_ARGS, "out_channels": "@n_out"}, {"n_out": "$1 + 1"}, True),
        ({"_target_": "UNet", **UNET_ARGS, "out_channels": "@cfg#n"}, {"cfg": {"n": "@n_out"}, "n_out": "$2"}, True),
        ({"_target_": "os.system", "command": "echo pwned"}, {}, False),
        ({"_target_": "UNet", **UNET_ARGS, "act": {"_target_": "builtins.eval", "source": "1"}}, {}, False),
        ({"_target_": "UNet", **UNET_ARGS, "_requires_": "@device"}, {}, False),
    ],
)
def test_bundle_code_needs_trust(tmp_path, network_def, extra, trustable):
    net = _unet(out_channels=2)
    folder = _write_bundle(tmp_path, _bundle_config(tmp_path, network_def, **extra), net,
                           _metadata(classes=("background", "spleen")))
    with pytest.raises(UntrustedModelError, match="--trust-bundle") as info:
        load_model(folder, device="cpu")
    assert "network_def" in str(info.value)
    assert not (tmp_path / "evaluated").exists()
    if trustable:
        adapter = load_model(folder, device="cpu", trust_bundle=True)
        x = _x(1, 1, 8, 8, 8)
        torch.testing.assert_close(adapter.network(x), _eager(net, x), rtol=0, atol=1e-6)
        assert adapter.class_names == ["background", "spleen"]
        assert not (tmp_path / "evaluated").exists()  # only network_def (and what it refers to) ran


def test_code_in_used_preprocessing_or_inferer_values_needs_trust(tmp_path):
    net = _unet()
    config = _bundle_config(tmp_path)
    config["preprocessing"]["transforms"][3]["pixdim"] = "$[1.5, 1.5, 2.0]"
    folder = _write_bundle(tmp_path, config, net)
    with pytest.raises(UntrustedModelError, match=r"preprocessing#transforms#3#pixdim"):
        load_model(folder, device="cpu")
    trusted = load_model(folder, device="cpu", trust_bundle=True)
    assert tuple(trusted.preprocessing.describe()[1]["pixdim"]) == (1.5, 1.5, 2.0)

    config = _bundle_config(tmp_path)
    config["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": "@device", "sw_batch_size": 1}
    folder = _write_bundle(tmp_path, config, net)
    with pytest.raises(UntrustedModelError, match=r"inferer#roi_size -> @device"):
        load_model(folder, device="cpu")


@pytest.mark.parametrize("transform", ["RandFlipd", "monai.transforms.SpatialPadd"])
def test_unsupported_bundle_transform_is_named(tmp_path, transform):
    config = _bundle_config(tmp_path)
    config["preprocessing"]["transforms"].insert(4, {"_target_": transform, "keys": "image"})
    folder = _write_bundle(tmp_path, config, _unet())
    with pytest.raises(ModelError, match=transform) as info:
        load_model(folder, device="cpu")
    assert not isinstance(info.value, UntrustedModelError)


def test_bundle_structure_errors(tmp_path):
    with pytest.raises(ModelError, match="configs/inference.json is missing"):
        load_model(tmp_path, device="cpu")
    folder = _write_bundle(tmp_path, _bundle_config(tmp_path, network_def={"_target_": "UNet", **UNET_ARGS,
                                                                           "in_channels": "@nowhere"}), _unet())
    with pytest.raises(ModelError, match="'@nowhere', which does not exist"):
        load_model(folder, device="cpu")
    config = _bundle_config(tmp_path)
    config["inferer"] = {"_target_": "SlidingWindowSplitter", "patch_size": [8, 8, 8]}
    folder = _write_bundle(tmp_path, config, _unet())
    with pytest.raises(ModelError, match="unsupported bundle inferer 'SlidingWindowSplitter'"):
        load_model(folder, device="cpu")
    folder = _write_bundle(tmp_path, _bundle_config(tmp_path), _unet(out_channels=2))
    with pytest.raises(ModelError, match="do not fit"):
        load_model(folder, device="cpu")


# ------------------------------------------------------------------------------------------------
# security and damaged files


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_code_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UntrustedModelError, match="run code") as info:
        load_model(path, device="cpu")
    assert "state_dict" in str(info.value)  # says how to re-save safely
    assert not marker.exists()

    # the same file as the weights of a spec, and as a bundle's model.pt
    (tmp_path / "spec.json").write_text(json.dumps({"network": {"name": "UNet", "args": UNET_ARGS},
                                                     "weights": "model.pt"}))
    with pytest.raises(UntrustedModelError):
        load_model(tmp_path / "spec.json", device="cpu")
    folder = _write_bundle(tmp_path, _bundle_config(tmp_path), _unet())
    (folder / "models" / "model.pt").write_bytes(path.read_bytes())
    with pytest.raises(UntrustedModelError):
        load_model(folder, device="cpu")
    assert not marker.exists()


def test_pickled_code_inside_an_exported_program_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    good = _export(_unet(), _x(1, 1, 8, 8, 8), tmp_path / "good.pt2")
    evil = tmp_path / "evil.pt2"
    payload = tmp_path / "payload.pt"
    torch.save(_RunsCode(marker), payload)  # torch.export.load retries its sample inputs with weights_only=False
    replaced = 0
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("sample_inputs/model.pt"):
                data, replaced = payload.read_bytes(), replaced + 1
            dst.writestr(item, data)
    assert replaced == 1
    with pytest.raises(UntrustedModelError, match="run code"):
        load_model(evil, device="cpu")
    assert not marker.exists()
    # the guard is lifted afterwards: torch.export's loader sees the real torch and pickle again
    import pickle

    import torch.export.pt2_archive._package as package

    assert package.torch is torch and package.pickle is pickle
    assert load_model(good, device="cpu").task == "segmentation"


def test_damaged_files_raise_model_error(tmp_path):
    rng = np.random.default_rng(0)
    noise = b"\x00not a model\x00" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    ts = tmp_path / "good.ts"
    torch.jit.save(torch.jit.script(_unet()), str(ts))
    pt2 = _export(_unet(), _x(1, 1, 8, 8, 8), tmp_path / "good.pt2")
    cases = {
        "noise.pt": noise,
        "noise.pt2": noise,
        "empty.ts": b"",
        "truncated.ts": ts.read_bytes()[: ts.stat().st_size // 2],
        "truncated.pt2": pt2.read_bytes()[: pt2.stat().st_size // 2],
        "tail_cut.ts": ts.read_bytes()[:-40],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelError) as info:
            load_model(tmp_path / name, device="cpu")
        assert not isinstance(info.value, UntrustedModelError), name
        assert name in str(info.value) or str(tmp_path / name) in str(info.value), name


def test_plain_state_dict_asks_for_a_spec(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(_unet().state_dict(), path)
    with pytest.raises(ModelError, match=r"weights only.*spec") as info:
        load_model(path, device="cpu")
    assert not isinstance(info.value, UntrustedModelError)
    legacy = tmp_path / "legacy.pth"
    torch.save(_unet().state_dict(), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match=r"weights only.*spec"):
        load_model(legacy, device="cpu")


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.ts")
    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "nope_bundle"))


# ------------------------------------------------------------------------------------------------
# devices, channels, sliding window, in-memory modules


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU ") == torch.device("cpu")
    expected_auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected_auto
    assert resolve_device(None).type == expected_auto
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        with pytest.raises(InputError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(InputError, match="--device cpu"):
            resolve_device("cuda")
        with pytest.raises(InputError):
            resolve_device("cuda:1")
    for bad in ("tpu", "mps", "gpu0", "meta"):
        with pytest.raises(InputError, match="auto, cpu, cuda"):
            resolve_device(bad)


def test_channel_mismatch(tmp_path):
    adapter = load_model(_unet(in_channels=2), in_channels=2, device="cpu")
    adapter.check_input(2)
    with pytest.raises(ModelError, match=r"takes 2 input channel\(s\) but the image has 1"):
        adapter.check_input(1)
    spec = save_spec_model(_unet(), "UNet", UNET_ARGS, tmp_path / "unet.json")
    with pytest.raises(ModelError, match="takes 1 input channel"):
        load_model(spec, device="cpu").check_input(3)


def test_sliding_window_matches_monai_and_passes_gradients():
    net = _unet()
    adapter = load_model(net, task="segmentation", roi_size=(8, 8, 8), device="cpu")
    adapter.overlap, adapter.sw_batch_size = 0.5, 3
    x = _x(1, 1, 20, 13, 11)
    expected = sliding_window_inference(x, (8, 8, 8), 3, net, overlap=0.5, mode="constant")
    bound = adapter.bind(np.eye(4), x.shape[2:])
    assert isinstance(bound, BoundModel)
    xg = x.clone().requires_grad_(True)
    out = bound(xg)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-6)
    out[0, 1, 2:6, 3:9, 4:7].sum().backward()
    grad = xg.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    assert grad[0, 0, 15:, :, :].abs().sum() == 0  # beyond the receptive field of the target region
    assert not any(p.requires_grad for p in net.parameters())


def test_segmentation_output_on_another_grid_is_refused():
    net = torch.nn.Conv3d(1, 2, 3, stride=2, padding=1)
    adapter = load_model(net, task="segmentation", device="cpu")
    with pytest.raises(ModelError, match="not on the grid"):
        _run(adapter, _x(1, 1, 8, 8, 8))


def test_in_memory_module_and_failures():
    adapter = load_model(_densenet(), device="cpu")
    assert adapter.source == "<memory>" and adapter.model_id == "DenseNet121"
    with pytest.raises(ModelError, match="failed on an input of shape"):
        _run(adapter, _x(1, 3, 16, 16, 16))  # DenseNet takes one channel
    assert load_model(adapter, device="cpu") is adapter
    assert Preprocessing().describe() == []
