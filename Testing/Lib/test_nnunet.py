"""nnU-Net v2 and TotalSegmentator folders as models, checked against nnU-Net itself.

The folders are made by nnU-Net's own planner, preprocessor and trainer on small synthetic datasets
(``nnunet_folders.py``, one process, about a minute); nnunetv2 is the independent reference
(test-only, installed by ``make test`` without its torchvision dependencies). The predictor
accumulates its tiles in float16; the exact reference is the same predictor with float32 accumulators
(:func:`float32_accumulation`), and the float16 effect is measured beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from MedXAILib import Target, explain
from MedXAILib.errors import InputError, ModelError, UntrustedModelError
from MedXAILib.io import read_image, read_images
from MedXAILib.model import load_model
from MedXAILib.model.nnunet import build_network, label_layout, read_checkpoint
from MedXAILib.model.windows import windowed_forward
from MedXAILib.scoring import resolve_target

sys.path.insert(0, str(Path(__file__).parent))
import nnunet_folders as folders  # noqa: E402

MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """nnU-Net's results folder with the two trained models (see nnunet_folders.py)."""
    root = tmp_path_factory.mktemp("nnunet")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(Path(folders.__file__)), str(root)], env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "results"


@pytest.fixture(scope="module")
def ct_image(tmp_path_factory) -> Path:
    """A CT-like test image whose spacing differs from the plan's (resampling, the coarse axis separately)."""
    path = tmp_path_factory.mktemp("ct") / "case_0000.nii.gz"
    image, _ = folders.ct_case((8, 44, 40), (3.4, 0.74, 0.9), seed=99, shift=(2, -3, 1))
    folders.write_nifti(image, (3.4, 0.74, 0.9), path)
    return path


@pytest.fixture(scope="module")
def mr_images(tmp_path_factory) -> list[Path]:
    """A two-channel MR-like test image with a zero background (crop, masked z-score, 3D resampling)."""
    folder = tmp_path_factory.mktemp("mr")
    channels, _ = folders.mr_case((30, 34, 28), (1.3, 1.25, 1.35), seed=98, shift=(1, 0, -1))
    paths = [folder / f"case_{c:04d}.nii.gz" for c in range(2)]
    for c, path in enumerate(paths):
        folders.write_nifti(channels[c], (1.3, 1.25, 1.35), path)
    return paths


@contextlib.contextmanager
def float32_accumulation():
    """nnUNetPredictor with float32 tile accumulators: its module sees ``torch.half`` as float32.

    nnU-Net allocates ``predicted_logits`` and ``n_predictions`` with ``dtype=torch.half``; nothing else
    changes (the Gaussian keeps its float16 values, as MedXAI's does)."""
    import nnunetv2.inference.predict_from_raw_data as module

    class Float32Half:
        half = torch.float32

        def __getattr__(self, name):
            return getattr(torch, name)

    real = module.torch
    module.torch = Float32Half()
    try:
        yield
    finally:
        module.torch = real


def predictor(folder: Path, folds=None, mirroring=True):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring, device=torch.device("cpu"),
                        verbose=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), folds, "checkpoint_final.pth")
    return p


def nnunet_prediction(folder: Path, files: list[Path], folds=None) -> dict:
    """nnU-Net's preprocessed input, its network-grid logits (float32 and float16 accumulation), and the
    labels and probabilities its export makes of them on the input grid, in MedXAI's (I, J, K) order."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    p = predictor(folder, folds)
    data, _, properties = DefaultPreprocessor(verbose=False).run_case(
        [str(f) for f in files], None, p.plans_manager, p.configuration_manager, p.dataset_json)
    with float32_accumulation():
        logits32 = p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()
    logits16 = p.predict_logits_from_preprocessed_data(torch.from_numpy(data))

    def export(logits):
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.clone(), p.plans_manager, p.configuration_manager, p.label_manager, dict(properties),
            return_probabilities=True)

    labels, probabilities = export(logits32)
    labels16, _ = export(logits16)
    return {"data": data, "logits32": logits32, "logits16": logits16.float(), "labels": labels.transpose(2, 1, 0),
            "labels16": labels16.transpose(2, 1, 0), "probabilities": probabilities.transpose(0, 3, 2, 1)}


def medxai_prediction(folder: Path, files: list[Path], **options) -> dict:
    image = read_image(files[0]) if len(files) == 1 else read_images([str(f) for f in files])
    adapter = load_model(folder, device="cpu", **options)
    bound = adapter.bind(image.affine, image.shape, image.array)
    x = torch.as_tensor(image.array)[None]
    with torch.no_grad():
        z = adapter.preprocessing.apply(x, bound.grids)
        logits = windowed_forward(adapter.network, z, bound.plan(), bound.windows_per_call())
        output = adapter.preprocessing.invert_output(logits, bound.grids)[0]  # what bound(x) returns
    return {"adapter": adapter, "image": image, "z": z[0], "logits": logits[0], "output": output}


def labels_of(output: torch.Tensor, dataset: dict, activation: str) -> np.ndarray:
    """nnU-Net's label map from MedXAI's logits: argmax, or its regions_class_order over sigmoid > 0.5."""
    if activation == "softmax":
        return output.argmax(0).numpy()
    probabilities = torch.sigmoid(output).numpy()
    labels = np.zeros(output.shape[1:], np.uint8)
    for channel, label in enumerate(dataset["regions_class_order"]):
        labels[probabilities[channel] > 0.5] = label
    return labels


def dice_per_label(ours: np.ndarray, reference: np.ndarray) -> dict[int, float]:
    return {int(c): 2 * float(((ours == c) & (reference == c)).sum()) / float((ours == c).sum() + (reference == c).sum())
            for c in np.unique(reference) if c != 0}


def compare(folder: Path, files: list[Path], folds=None, **options) -> dict:
    ours = medxai_prediction(folder, files, folds=folds, **options)
    ref = nnunet_prediction(folder, files, folds)
    dataset = json.loads((folder / "dataset.json").read_text())
    activation = ours["adapter"].output_activation
    labels = labels_of(ours["output"], dataset, activation)
    probabilities = torch.softmax(ours["output"], 0) if activation == "softmax" else torch.sigmoid(ours["output"])
    found = {
        "preprocessed": float(np.abs(ours["z"].numpy() - ref["data"]).max()),
        "logits_fp32": float((ours["logits"] - ref["logits32"]).abs().max()),
        "logits_fp16": float((ours["logits"] - ref["logits16"]).abs().max()),
        "logit_range": float(ref["logits32"].abs().max()),
        "probabilities": float(np.abs(probabilities.numpy() - ref["probabilities"]).max()),
        "dice": dice_per_label(labels, ref["labels"]),
        "labels_agree": float((labels == ref["labels"]).mean()),
        "fp16_labels_changed": float((ref["labels16"] != ref["labels"]).mean()),
        "structure_voxels": {int(c): int((ref["labels"] == c).sum()) for c in np.unique(ref["labels"]) if c},
    }
    print(f"\n{folder.parent.name}: {json.dumps(found)}")
    assert ours["z"].shape == ref["data"].shape
    return found


def check_fidelity(found: dict, fp16_effect: bool = True) -> None:
    assert found["preprocessed"] < 1e-4
    assert found["logits_fp32"] < 1e-4 * max(1.0, found["logit_range"])
    assert found["probabilities"] < 1e-5
    assert max(found["structure_voxels"].values()) > 500  # a real structure, not a stray voxel
    assert all(d >= 0.999 for d in found["dice"].values()), found["dice"]
    if fp16_effect:  # float16 accumulation is the only difference: nnU-Net's own float16 logits are further off
        assert found["logits_fp16"] > 10 * found["logits_fp32"]


@pytest.mark.slow
def test_ct_folds_and_mirroring_match_nnunets_predictor(trained, ct_image):
    """Transposed axes, CT normalisation, separate-z spline resampling, 2 folds, 8 mirrorings."""
    folder = trained / folders.CT / MODEL
    adapter = load_model(folder, device="cpu")
    assert json.loads((folder / "plans.json").read_text())["transpose_forward"] != [0, 1, 2]
    assert len(adapter.network.networks) == 2 and len(adapter.network.flips) == 8
    check_fidelity(compare(folder, [ct_image]))


@pytest.mark.slow
def test_mr_regions_crop_and_zscore_match_nnunets_predictor(trained, mr_images):
    """Two channels, crop to non-zero voxels, z-score inside the non-zero mask, 3D resampling, sigmoid regions."""
    folder = trained / folders.MR / MODEL
    plans = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert plans["use_mask_for_norm"] == [True, True]
    found = compare(folder, mr_images)
    check_fidelity(found)


@pytest.mark.slow
def test_2d_configuration_matches_nnunets_predictor(trained, ct_image, tmp_path):
    """The planner's 2d configuration: slice by slice, 2D tiles and Gaussian, mirroring over the 2 in-plane
    axes; the network initialised by nnU-Net's own get_network_from_plans (He initialisation)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    folder = tmp_path / folders.CT / "nnUNetTrainer__nnUNetPlans__2d"
    (folder / "fold_0").mkdir(parents=True)
    for item in ("dataset.json", "plans.json"):
        shutil.copy(trained / folders.CT / MODEL / item, folder / item)
    plans = json.loads((folder / "plans.json").read_text())
    architecture = plans["configurations"]["2d"]["architecture"]
    torch.manual_seed(0)
    network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                     architecture["_kw_requires_import"], 1, 3, allow_init=True, deep_supervision=False)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "2d"}, "inference_allowed_mirroring_axes": (0, 1)},
               folder / "fold_0" / "checkpoint_final.pth")
    assert load_model(folder).roi_size[0] == 1
    check_fidelity(compare(folder, [ct_image]), fp16_effect=False)


@pytest.mark.slow
def test_attribution_equals_autograd_through_the_whole_pipeline(trained, mr_images):
    """Window-by-window, member-by-member gradients = autograd through crop, normalisation, resampling,
    tiles, 8 mirrorings and the inverse mapping, held in one graph; also through explain()."""
    image = read_images([str(f) for f in mr_images])
    adapter = load_model(trained / folders.MR, device="cpu")
    bound = adapter.bind(image.affine, image.shape, image.array)
    x = torch.as_tensor(image.array)[None]
    with torch.no_grad():
        output = bound(x)
    for score in ("logit", "probability"):
        target = Target(class_index=1, region="predicted", score=score)
        scorer = resolve_target(target, output, "segmentation", "sigmoid", spacing=image.spacing)
        windowed = bound.gradient(x, scorer, output=output).grad
        leaf = x.clone().requires_grad_(True)
        (reference,) = torch.autograd.grad(scorer(bound(leaf)).sum(), leaf)
        assert float(reference.abs().max()) > 0
        assert float((windowed - reference).abs().max()) <= 1e-4 * float(reference.abs().max())
    attribution = explain(image, adapter, "saliency", Target(class_index=1, region="predicted", score="probability"))
    assert np.abs(attribution.array - reference[0].numpy()).max() <= 1e-4 * float(reference.abs().max())
    assert attribution.provenance["model"]["pipeline"]["format"] == "nnU-Net v2"
    assert attribution.provenance["target_name"] == "core"


@pytest.mark.slow
def test_folder_layouts_and_options(trained, tmp_path):
    dataset = trained / folders.CT
    model = load_model(dataset, device="cpu", folds=[1], checkpoint="best", mirroring=False)
    assert model.pipeline["folds"] == ["1"] and model.pipeline["checkpoint"] == "checkpoint_best.pth"
    assert model.pipeline["mirror_axes"] == [] and model.class_names == ["background", "liver", "spleen"]
    one = load_model(dataset / MODEL / "fold_0" / "checkpoint_final.pth", device="cpu")  # the file itself
    assert one.pipeline["folds"] == ["0"]
    with pytest.raises(ModelError, match="no fold 3 .*folds with it: 0, 1"):
        load_model(dataset, folds=[3])
    with pytest.raises(ModelError, match="no trained model of configuration '2d'.*3d_fullres"):
        load_model(dataset, configuration="2d")
    copy = tmp_path / "Dataset011_CTLike"
    shutil.copytree(dataset / MODEL, copy / MODEL)
    shutil.copytree(dataset / MODEL, copy / "nnUNetTrainer__nnUNetPlans__3d_lowres")
    with pytest.raises(ModelError, match="several trained models.*--configuration"):
        load_model(copy)
    assert load_model(copy, configuration="3d_fullres", folds=[0]).pipeline["configuration"] == "3d_fullres"
    with pytest.raises(ModelError, match="trained as configuration '3d_fullres', not '3d_lowres'"):
        load_model(copy, configuration="3d_lowres")  # a folder named lowres holding a 3d_fullres checkpoint
    with pytest.raises(ModelError, match="apply to nnU-Net model folders only"):
        load_model(tmp_path / "x.json", folds=[0])


@pytest.mark.slow
def test_the_options_travel_with_a_run_request(trained, ct_image, tmp_path):
    """Folds, checkpoint and mirroring chosen in the Slicer module or on a cohort's command line reach the
    worker's load_model through the request folder: the run equals explain() on the model loaded with them."""
    from MedXAILib.runs import read_request, run_request, write_request
    from MedXAILib.runs.request import RunRequest

    options = {"folds": [1], "checkpoint": "best", "mirroring": False}
    image = read_image(str(ct_image))
    target = Target(class_index=1, region="box", box=(1, 10, 10, 6, 30, 30))
    (tmp_path / "run").mkdir()
    write_request(RunRequest(kind="explain", image=image, model_path=str(trained / folders.CT), device="cpu",
                             target=target, arguments={"method": "saliency", "params": {}}, model_options=options),
                  tmp_path / "run")
    result = run_request(read_request(tmp_path / "run"))
    assert result.data["provenance"]["model"]["pipeline"]["folds"] == ["1"]
    assert result.data["provenance"]["model"]["pipeline"]["mirror_axes"] == []
    expected = explain(image, load_model(trained / folders.CT, device="cpu", **options), "saliency", target)
    np.testing.assert_array_equal(result.volumes["attribution"].array, expected.array)


@pytest.mark.slow
def test_a_cohort_runs_an_nnunet_folder_with_its_options(trained, ct_image, tmp_path):
    """`medxai cohort --folds 1 --no-mirroring`: every case's request and worker load the model that way."""
    from MedXAILib.cli.main import main
    from MedXAILib.cohort.plan import case_folder
    from MedXAILib.runs import read_request, read_result

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(ct_image, images / "a.nii.gz")
    out = tmp_path / "cohort"
    code = main(["cohort", str(images), "--model", str(trained / folders.CT), "--out", str(out), "--ray", "off",
                 "--structures", "liver", "--tta", "identity,shift_k", "--folds", "1", "--no-mirroring", "--quiet"])
    assert code == 0
    request = read_request(case_folder(out, "a"))
    assert request.model_options == {"folds": [1], "mirroring": False}
    (row,) = read_result(case_folder(out, "a")).data["rows"]
    assert row["structure"] == "liver" and row["predicted_voxels"] > 0
    assert "a,done,liver" in (out / "table.csv").read_text().replace('"', "")


@pytest.mark.slow
def test_cams_say_how_to_explain_one_member_of_an_ensemble(trained, ct_image):
    """A CAM's layer would run once per fold and mirroring: refused before any pass, with the way out, which works."""
    from MedXAILib.errors import ParameterError

    image = read_image(str(ct_image))
    target = Target(class_index=1, region="box", box=(1, 10, 10, 6, 30, 30))
    with pytest.raises(ParameterError, match=r"averages 16 passes .*--folds 0 --no-mirroring"):
        explain(image, load_model(trained / folders.CT, device="cpu"), "grad_cam", target)
    one = explain(image, load_model(trained / folders.CT, device="cpu", folds=[0], mirroring=False), "grad_cam", target)
    assert np.isfinite(one.array).all() and one.provenance["diagnostics"]["layer"]


@pytest.mark.slow
def test_without_dynamic_network_architectures_the_error_says_how_to_install_it(trained):
    code = ("import sys; sys.modules['dynamic_network_architectures'] = None\n"
            "from MedXAILib.model import load_model\n"
            f"load_model({str(trained / folders.CT)!r}, device='cpu')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=300)
    assert done.returncode != 0
    assert "ModelError: nnU-Net models need the package dynamic_network_architectures" in done.stderr
    assert "pip install --no-deps 'dynamic-network-architectures" in done.stderr


@pytest.mark.slow
def test_cli_names_the_structure_with_a_did_you_mean(trained, ct_image, tmp_path, capsys):
    from MedXAILib.cli.main import main

    out = tmp_path / "liver.nrrd"
    base = ["explain", "--image", str(ct_image), "--model", str(trained / folders.CT), "--folds", "0",
            "--no-mirroring", "--method", "saliency", "--target-predicted", "--quiet"]
    assert main([*base, "--target-structure", "livr", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "medxai: error: the model has no structure 'livr'; did you mean 'liver'?" and not out.exists()
    assert main([*base, "--target-structure", "liver", "--out", str(out), "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())["provenance"]
    assert summary["target_name"] == "liver" and summary["target"]["class_index"] == 1
    assert summary["model"]["pipeline"]["folds"] == ["0"]
    assert main([*base, "--target-structure", "liver", "--target-class", "2", "--out", str(out)]) == 2
    assert "is class 1, not 2" in capsys.readouterr().err


def _totalsegmentator_tree(trained: Path, root: Path) -> None:
    """TotalSegmentator's weights folder with parts 1 and 2 of task 'total', made from the CT model."""
    for name, labels in (("Dataset291_TotalSegmentator_part1_organs_1559subj", None),
                         ("Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
                          {"background": 0, "vertebrae_L1": 1, "vertebrae_L2": 2})):
        target = root / name / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
        for item in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth"):
            (target / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(trained / folders.CT / MODEL / item, target / item)
        if labels:
            dataset = json.loads((target / "dataset.json").read_text())
            dataset["labels"] = labels
            (target / "dataset.json").write_text(json.dumps(dataset))


@pytest.mark.slow
def test_totalsegmentator_finds_its_folders_and_the_part_of_a_structure(trained, ct_image, tmp_path, monkeypatch):
    home = tmp_path / "home"
    _totalsegmentator_tree(trained, home / "nnunet" / "results")
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    organs = load_model("totalsegmentator:total", structure="spleen", device="cpu")
    assert "Dataset291" in organs.model_id and organs.class_names[2] == "spleen"
    assert organs.overlap == pytest.approx(0.2)  # TotalSegmentator's tile step 0.8 for 'total'
    assert organs.describe()["preprocessing"][0] == {"kind": "orientation", "axcodes": "RAS"}
    assert organs.pipeline["mirror_axes"] == []  # TotalSegmentator predicts without mirroring
    spine = load_model("totalsegmentator:total", structure="vertebrae_L2", device="cpu")
    assert "Dataset292" in spine.model_id
    with pytest.raises(ModelError, match=r"Dataset293, Dataset294, Dataset295 are missing; run TotalSegmentator once"):
        load_model("totalsegmentator:total", structure="heart")
    with pytest.raises(ModelError, match=r"made of 5 models; name the structure.*--structures.*total:fast"):
        load_model("totalsegmentator:total")
    from MedXAILib.cohort import run_cohort

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(ct_image, images / "a.nii.gz")
    with pytest.raises(ModelError, match="made of 5 models"):  # before any case: all structures, several models
        run_cohort(images, "totalsegmentator:total", tmp_path / "cohort", ray="off")
    with pytest.raises(ModelError, match="unknown TotalSegmentator task 'totl'; did you mean total"):
        load_model("totalsegmentator:totl")
    with pytest.raises(ModelError, match=r"\(Dataset299\) is not in .*TOTALSEG_HOME_DIR.*--task body"):
        load_model("totalsegmentator:body")
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "elsewhere"))  # takes precedence
    with pytest.raises(ModelError, match=r"elsewhere \(\$TOTALSEG_WEIGHTS_PATH\)"):
        load_model("totalsegmentator:total", structure="spleen")


def test_label_layout_plain_and_regions():
    assert label_layout({"labels": {"background": 0, "liver": 1, "tumour": 2}}) == (["background", "liver", "tumour"],
                                                                                  "softmax")
    regions = {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3, "ignore": 4}}
    assert label_layout(regions) == (["whole", "core", "enhancing"], "sigmoid")
    with pytest.raises(ModelError, match="values 0..K-1"):
        label_layout({"labels": {"background": 0, "liver": 2}})


def _numpy_checkpoint(path: Path, extra=None) -> None:
    weights = {"conv.weight": torch.ones(2, 1, 1, 1, 1)}
    torch.save({"network_weights": weights, "trainer_name": "nnUNetTrainer", "init_args": {"configuration": "3d_fullres"},
                "logging": {"ema_fg_dice": [np.float64(0.5)], "mean_fg_dice": [np.float32(0.4)]},
                "_best_ema": np.float64(0.5), "inference_allowed_mirroring_axes": (0, 1, 2), **(extra or {})}, path)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_with_numpy_scalars_load_and_pickled_code_never_runs(tmp_path):
    good = tmp_path / "good.pth"
    _numpy_checkpoint(good)
    with pytest.raises(Exception, match="Weights only load failed"):  # why a plain weights-only load is not enough
        torch.load(good, weights_only=True)
    found = read_checkpoint(good)
    assert found["trainer"] == "nnUNetTrainer" and found["configuration"] == "3d_fullres"
    assert found["mirror_axes"] == (0, 1, 2) and torch.equal(found["weights"]["conv.weight"], torch.ones(2, 1, 1, 1, 1))
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pth"
    _numpy_checkpoint(bad, {"optimizer_state": _RunsCode(marker)})
    with pytest.raises(UntrustedModelError, match="posix.system|os.system"):
        read_checkpoint(bad)
    assert not marker.exists()


ARCHITECTURE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {"n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
                    "kernel_sizes": [[3, 3, 3]] * 2, "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [1, 1],
                    "n_conv_per_stage_decoder": [1], "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


@pytest.mark.parametrize("change, message", [
    ({"network_class_name": "os.system"}, "dynamic_network_architectures.architectures only"),
    ({"network_class_name": "dynamic_network_architectures.architectures.unet.torch"}, "is not a network class"),
    ({"arch_kwargs": {**ARCHITECTURE["arch_kwargs"], "nonlin": "subprocess.Popen"}}, "nonlin must name a torch.nn layer"),
    ({"arch_kwargs": {**ARCHITECTURE["arch_kwargs"], "conv_op": "torch.nn.functional.conv3d"}}, "is not a torch.nn layer"),
])
def test_only_dynamic_network_architectures_classes_are_built(change, message):
    network = build_network(ARCHITECTURE, 1, 3)
    assert network(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 3, 8, 8, 8)
    with pytest.raises(UntrustedModelError, match=message):
        build_network({**ARCHITECTURE, **change}, 1, 3)


def test_target_structure_did_you_mean():
    from MedXAILib.cli.common import class_by_name

    names = ["background", "liver", "spleen", "kidney_left"]
    assert class_by_name(names, "Spleen") == 2
    with pytest.raises(InputError, match="did you mean 'kidney_left'"):
        class_by_name(names, "kidney_lft")
    with pytest.raises(InputError, match="declares no class names"):
        class_by_name(None, "liver")
