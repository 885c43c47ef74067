"""nnU-Net's own prediction vs MedXAI's saliency through the same pipeline, side by side (not a pytest test).

Run from the repository root (nnunetv2 installed as ``make test`` installs it)::

    OMP_NUM_THREADS=2 .venv/bin/python Testing/benchmarks/bench_nnunet.py [--preset cpu|gpu] [--device cpu|cuda]
        [--work DIR] [--json OUT.json]

One nnU-Net v2 model folder is written with a 3d_fullres plan in nnU-Net's format and the network
initialised by nnU-Net's own ``get_network_from_plans`` (He initialisation, as a training starts), and
a CT-like volume is made in code; nothing is downloaded. Two rows, each in a subprocess of its own so
that its peak memory is its own:

1. ``nnunet``: ``nnUNetPredictor(tile_step_size=0.5, use_mirroring=True)`` on the volume,
   ``predict_single_npy_array`` (preprocessing, 8 mirrored passes per tile, export), after loading.
2. ``medxai``: ``explain(image, model, "saliency", Target(region="mask"))`` with the structure nnU-Net
   predicted (the segmentation a Slicer user has) as the mask: the same pipeline with gradients, a
   forward and a backward pass per tile and mirroring, and the output blended from those tiles.

Presets (the plan follows nnU-Net's default CT plans: PlainConvUNet, instance norm, LeakyReLU, kernel
3, stride 2, features doubling to a cap, isotropic 1.5 mm target spacing):

- ``gpu``: patch 128^3, 6 stages, features 32..320 (nnU-Net's default width), a 512 x 512 x 240 CT at
  0.8 x 0.8 x 1.5 mm (273 x 273 x 240 voxels at 1.5 mm: 27 tiles x 8 mirrorings);
- ``cpu``: patch 64^3, 5 stages, features 16..256, a 144 x 144 x 58 CT at 1.0 x 1.0 x 2.5 mm
  (96 x 96 x 97 at 1.5 mm: 8 tiles x 8 mirrorings), sized for a two-core machine.

Target: the saliency takes at most 3.5x nnU-Net's prediction (one forward and one backward pass per
tile cost about 3 forwards). Wall time and the process's CPU time are both reported: on a shared CPU
the wall time moves with the other processes' load. Peak memory: the resident set (``ru_maxrss``) of each subprocess, and on
CUDA ``torch.cuda.max_memory_allocated``. On a shared CPU the times move with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent / "Lib"))

PRESETS = {
    "gpu": {"patch": [128, 128, 128], "stages": 6, "features": (32, 320), "shape": (512, 512, 240),
            "spacing": (0.8, 0.8, 1.5)},
    "cpu": {"patch": [64, 64, 64], "stages": 5, "features": (16, 256), "shape": (144, 144, 58),
            "spacing": (1.0, 1.0, 2.5)},
}


def make_folder(root: Path, preset: dict) -> Path:
    """An nnU-Net v2 model folder (dataset.json, plans.json, fold_0/checkpoint_final.pth) for the preset."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    stages = preset["stages"]
    low, cap = preset["features"]
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": stages, "features_per_stage": [min(low * 2 ** i, cap) for i in range(stages)],
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * stages,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1), "n_conv_per_stage": [2] * stages,
            "n_conv_per_stage_decoder": [2] * (stages - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    plans = {
        "dataset_name": "Dataset500_BenchCT", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.5, 1.5, 1.5], "original_median_shape_after_transp": [240, 512, 512],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": preset["patch"], "median_image_size_in_voxels": [240, 273, 273], "spacing": [1.5, 1.5, 1.5],
            "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False], **resampling,
            "architecture": architecture, "batch_dice": False}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 400.0, "mean": 100.0, "median": 95.0, "min": -100.0, "percentile_00_5": -50.0,
            "percentile_99_5": 250.0, "std": 40.0}},
    }
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
               "numTraining": 1, "file_ending": ".nii.gz"}
    folder = root / "Dataset500_BenchCT" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    torch.manual_seed(0)
    network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                     architecture["_kw_requires_import"], 1, 3, allow_init=True, deep_supervision=False)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2),
                "logging": {"ema_fg_dice": [np.float64(0.0)]}}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def make_volume(root: Path, preset: dict) -> Path:
    from nnunet_folders import ct_case, write_nifti

    path = root / "ct_0000.nii.gz"
    image, _ = ct_case(preset["shape"], preset["spacing"], seed=7)
    write_nifti(image * 1.0, preset["spacing"], path)
    return path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak() -> dict:
    out = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}
    if torch.cuda.is_available():
        out["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out


def run_nnunet(folder: Path, image_path: Path, device: str, seg_out: Path) -> dict:
    import SimpleITK as sitk
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                device=torch.device(device), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), None, "checkpoint_final.pth")
    itk = sitk.ReadImage(str(image_path))
    data = sitk.GetArrayFromImage(itk)[None].astype(np.float32)
    props = {"spacing": list(itk.GetSpacing())[::-1]}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu = time.perf_counter(), _cpu()
    labels = predictor.predict_single_npy_array(data, props, None, None, False)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    np.save(seg_out, np.asarray(labels).transpose(2, 1, 0))  # (I, J, K) as MedXAI reads the image
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), **_peak()}


def run_medxai(folder: Path, image_path: Path, device: str, seg_in: Path) -> dict:
    from MedXAILib import Target, explain
    from MedXAILib.io import read_image
    from MedXAILib.model import load_model

    image = read_image(image_path)
    model = load_model(folder, device=device)
    mask = np.load(seg_in) == 1
    if not mask.any():  # an untrained network may predict no liver: explain its largest structure instead
        labels = np.load(seg_in)
        mask = labels == np.bincount(labels.ravel(), minlength=3)[1:].argmax() + 1
    target = Target(class_index=1, region="mask", mask=mask)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu = time.perf_counter(), _cpu()
    attribution = explain(image, model, "saliency", target)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    memory = attribution.provenance["memory"]
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "windows": memory.get("windows"),
            "windows_per_call": memory.get("windows_per_call"), "mask_voxels": int(mask.sum()), **_peak()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None, help="default: gpu on CUDA, else cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work", type=Path, help="folder for the model and volume (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--phase", choices=("nnunet", "medxai"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    preset_name = args.preset or ("gpu" if args.device == "cuda" else "cpu")
    preset = PRESETS[preset_name]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_nnunet_"))
    folder = work / "Dataset500_BenchCT" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    image_path, seg = work / "ct_0000.nii.gz", work / "nnunet_labels.npy"
    if args.phase:  # one row, in its own process
        run = run_nnunet if args.phase == "nnunet" else run_medxai
        print(json.dumps(run(folder, image_path, args.device, seg)))
        return
    work.mkdir(parents=True, exist_ok=True)
    make_folder(work, preset)
    make_volume(work, preset)
    rows = {}
    for phase in ("nnunet", "medxai"):
        done = subprocess.run([sys.executable, __file__, "--phase", phase, "--work", str(work), "--device", args.device,
                               "--preset", preset_name], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{phase} failed:\n{done.stderr[-4000:]}")
        rows[phase] = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = rows["medxai"]["seconds"] / rows["nnunet"]["seconds"]
    cpu_ratio = rows["medxai"]["cpu_seconds"] / rows["nnunet"]["cpu_seconds"]
    header = (f"device {args.device}, preset {preset_name} (patch {preset['patch']}, {preset['stages']} stages, "
              f"volume {preset['shape']} at {preset['spacing']} mm), threads {torch.get_num_threads()}, "
              f"load {os.getloadavg()[0]:.1f}")
    print(header)
    print(f"{'row':<8}{'seconds':>10}{'CPU s':>10}{'peak RSS GB':>13}{'peak CUDA GB':>14}")
    for name, row in rows.items():
        cuda = row.get("peak_cuda_gb", float("nan"))
        print(f"{name:<8}{row['seconds']:>10.2f}{row['cpu_seconds']:>10.2f}{row['peak_rss_gb']:>13.2f}{cuda:>14.2f}")
    print(f"saliency / nnU-Net prediction: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time (target <= 3.5x); windows "
          f"{rows['medxai']['windows']}, {rows['medxai']['windows_per_call']} per call")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows, "ratio": round(ratio, 3),
                                         "cpu_ratio": round(cpu_ratio, 3)}, indent=1))


if __name__ == "__main__":
    main()
