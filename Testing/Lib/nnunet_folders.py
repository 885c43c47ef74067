"""Build real nnU-Net v2 trained-model folders with nnU-Net's own code, for the fidelity tests.

Run as a script (``python Testing/Lib/nnunet_folders.py OUT``): nnU-Net reads its folders from
environment variables when it is first imported, so each build runs in a process of its own.

Two small synthetic datasets are made here and go through nnU-Net's pipeline: fingerprint, the
default experiment planner, the default preprocessor, and a short training run of the real
``nnUNetTrainer`` (one epoch of 3 iterations) on the CPU, which writes the results layout
``Dataset0XX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_N/checkpoint_final.pth`` (and
``checkpoint_best.pth``), with numpy scalars in the checkpoint's training log as any trained model has.

- ``Dataset011_CTLike``: one CT channel (``CTNormalization``), labels liver and spleen, voxels of about
  3 x 0.85 x 0.85 mm with the coarse axis stored first (I), so nnU-Net's ``transpose_forward`` is not
  the identity and its resampling treats the coarse axis separately; folds 0 and 1.
- ``Dataset012_MRLike``: two MR channels (``ZScoreNormalization`` inside the non-zero region, which
  nnU-Net's planner chooses because the head fills a small part of the image), region-based labels
  (sigmoid outputs) ``lesion`` = {1, 2} and ``core`` = {2}; fold 0.

The plans are nnU-Net's own with the network narrowed (8 features in the first stage instead of 32)
so that the tests stay fast; everything else (patch size, spacing, normalisation, resampling, the
architecture's depth and strides) is what the planner chose.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["build", "ct_case", "mr_case", "write_nifti", "CT", "MR"]

CT = "Dataset011_CTLike"
MR = "Dataset012_MRLike"


def write_nifti(array: np.ndarray, spacing, path: Path) -> None:
    """Write an (I, J, K) array with `spacing` (mm) as SimpleITK stores it (arrays in K, J, I)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    sitk.WriteImage(image, str(path))


def _coords(shape, spacing, centre=(0.0, 0.0, 0.0)):
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return [(g - (n - 1) / 2) * s - c for g, n, s, c in zip(grids, shape, spacing, centre)]


def ct_case(shape, spacing, seed: int, shift=(0.0, 0.0, 0.0)):
    """A CT-like body (soft tissue in air) with a liver and a spleen; HU-like values with noise."""
    rng = np.random.default_rng(seed)
    x, y, z = _coords(shape, spacing, shift)
    liver = ((x - 4) / 12) ** 2 + ((y + 3) / 9) ** 2 + (z / 8) ** 2 < 1
    spleen = ((x + 9) / 7) ** 2 + ((y - 6) / 5) ** 2 + ((z - 2) / 6) ** 2 < 1
    labels = np.zeros(shape, np.uint8)
    labels[liver] = 1
    labels[spleen & ~liver] = 2
    image = np.where((x / 28) ** 2 + (y / 20) ** 2 < 1, 40.0, -1000.0)
    image[labels == 1] = 90
    image[labels == 2] = 150
    image = image + rng.normal(0, 25, shape)
    return image.astype(np.float32), labels


def mr_case(shape, spacing, seed: int, shift=(0.0, 0.0, 0.0)):
    """A two-channel MR-like head (zeros outside) with a lesion whose core is brighter in channel 2."""
    rng = np.random.default_rng(seed)
    x, y, z = _coords(shape, spacing, shift)
    head = (x / 11) ** 2 + (y / 13) ** 2 + (z / 10) ** 2 < 1
    lesion = ((x - 2) / 5) ** 2 + ((y + 2) / 5) ** 2 + (z / 4) ** 2 < 1
    core = ((x - 2) / 2.5) ** 2 + ((y + 2) / 2.5) ** 2 + (z / 2.5) ** 2 < 1
    labels = np.zeros(shape, np.uint8)
    labels[lesion & head] = 1
    labels[core & head] = 2
    t1 = np.where(head, 300.0 + rng.normal(0, 30, shape), 0.0)
    t2 = np.where(head, 200.0 + rng.normal(0, 30, shape), 0.0)
    t1[labels == 1] += 150
    t2[labels >= 1] += 250
    t2[labels == 2] += 250
    return np.stack([t1, t2]).astype(np.float32), labels


def _raw(root: Path) -> None:
    ct = root / "raw" / CT
    mr = root / "raw" / MR
    for folder in (ct, mr):
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in range(6):
        spacing = (2.5 + 0.25 * case, 0.8 + 0.03 * case, 0.82 + 0.02 * case)
        shape = (int(round(24 / spacing[0])), 30 + case, 28)
        image, labels = ct_case(shape, spacing, seed=case)
        write_nifti(image, spacing, ct / "imagesTr" / f"ct_{case:03d}_0000.nii.gz")
        write_nifti(labels, spacing, ct / "labelsTr" / f"ct_{case:03d}.nii.gz")
        spacing = (1.0 + 0.04 * case,) * 3
        shape = (34, 36, 30)
        channels, labels = mr_case(shape, spacing, seed=10 + case)
        for c in range(2):
            write_nifti(channels[c], spacing, mr / "imagesTr" / f"mr_{case:03d}_{c:04d}.nii.gz")
        write_nifti(labels, spacing, mr / "labelsTr" / f"mr_{case:03d}.nii.gz")
    # the cases listed in dataset.json ("dataset"), which spares nnU-Net a pool of 12 processes to find them
    cases = {f"ct_{c:03d}": {"images": [f"imagesTr/ct_{c:03d}_0000.nii.gz"], "label": f"labelsTr/ct_{c:03d}.nii.gz"}
             for c in range(6)}
    (ct / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
        "numTraining": 6, "file_ending": ".nii.gz", "dataset": cases}))
    cases = {f"mr_{c:03d}": {"images": [f"imagesTr/mr_{c:03d}_{k:04d}.nii.gz" for k in range(2)],
                             "label": f"labelsTr/mr_{c:03d}.nii.gz"} for c in range(6)}
    (mr / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "lesion": [1, 2], "core": [2]},
        "regions_class_order": [1, 2], "numTraining": 6, "file_ending": ".nii.gz", "dataset": cases}))


def _narrow(plans_file: Path) -> None:
    """The planner's network with 8 features in the first stage (at most 64): same depth, strides, patch."""
    plans = json.loads(plans_file.read_text())
    for config in plans["configurations"].values():
        kwargs = config.get("architecture", {}).get("arch_kwargs")
        if kwargs:
            kwargs["features_per_stage"] = [min(8 * 2 ** i, 64) for i in range(kwargs["n_stages"])]
    plans_file.write_text(json.dumps(plans, indent=1))


def build(root: Path) -> None:
    """Make both datasets, plan, preprocess and train (see the module docstring) under `root`."""
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
                      nnUNet_results=str(root / "results"), nnUNet_n_proc_DA="1")
    # nnU-Net's pools use "spawn", which re-imports nnU-Net in every worker (seconds each); a forked worker
    # runs the same code without that start-up
    fork = multiprocessing.get_context("fork")
    multiprocessing.get_context = lambda method=None: fork  # type: ignore[assignment]
    import torch
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments, preprocess
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.set_num_threads(1)
    _raw(root)
    ids = [11, 12]
    for dataset in ids:  # nnU-Net's fingerprint, its intensity statistics from 1e5 voxels instead of 1e8
        extractor = DatasetFingerprintExtractor(dataset, num_processes=1)
        extractor.num_foreground_voxels_for_intensitystats = 1e5
        extractor.run(overwrite_existing=True)
    plan_experiments(ids)
    for name in (CT, MR):
        _narrow(root / "pre" / name / "nnUNetPlans.json")
    preprocess(ids, configurations=("3d_fullres",), num_processes=(1,), verbose=False)
    os.environ["nnUNet_n_proc_DA"] = "0"  # data augmentation in this process
    for dataset, fold in ((11, 0), (11, 1), (12, 0)):
        torch.manual_seed(fold)
        trainer = get_trainer_from_args(str(dataset), "3d_fullres", fold, "nnUNetTrainer", "nnUNetPlans",
                                        device=torch.device("cpu"))
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 3, 1
        trainer.run_training()


if __name__ == "__main__":
    build(Path(sys.argv[1]).resolve())
