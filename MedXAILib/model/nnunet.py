"""nnU-Net v2 trained-model folders as models, read without nnU-Net itself.

A trained model folder holds ``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_final.pth``
(or ``checkpoint_best.pth``); nnU-Net's results layout puts it at
``DatasetXXX_Name/Trainer__Plans__Configuration/``, and either folder is accepted. The loader reads
what nnU-Net's predictor reads (``nnunetv2/inference/predict_from_raw_data.py``,
``initialize_from_trained_model_folder``) and turns it into one :class:`~.adapter.ModelAdapter`
whose steps are nnU-Net's prediction pipeline, each in the differentiable windowed path:

1. the voxel axes in nnU-Net's order: the stored axes reversed (SimpleITK's z, y, x), then the plans'
   ``transpose_forward`` (:class:`~.preprocessing.PermuteAxes`); readers that reorient first
   (``NibabelIOWithReorient``, ``SimpleITKIOWithReorient``) add an orientation to RAS before it;
2. the crop to the voxels non-zero in any channel (:class:`~.preprocessing.CropNonzero`);
3. each channel's normalisation from the plans (:class:`~.preprocessing.ChannelIntensity`);
4. the resampling to the configuration's spacing and back (:class:`~.preprocessing.Resize`, exact
   operators of nnU-Net's B-spline or torch resampling, see :mod:`.resampling`);
5. nnU-Net's tiles (step 0.5) and Gaussian blending (:mod:`.windows`, ``tile_grid="nnunet"``,
   ``blend_mode="nnunet_gaussian"``);
6. test-time mirroring over the checkpoint's allowed axes and the mean over folds
   (:class:`~.windows.Ensemble`);
7. softmax, or sigmoid for region-based labels (``output_activation``).

Checkpoints are read with ``torch.load(weights_only=True)``, allowing only the numpy scalar and dtype
types nnU-Net's training log holds (:func:`read_checkpoint`); a pickle that would run code is refused
before anything is unpickled. The network is built from the plans' architecture through
``dynamic_network_architectures`` (the package nnU-Net uses), and only its classes, with ``torch.nn``
layers as arguments, are accepted (:func:`build_network`).
"""

from __future__ import annotations

import _codecs
import importlib
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import ModelError, UntrustedModelError, first_line
from .adapter import ModelAdapter
from .folders import (CHECKPOINTS, checkpoint_location, configuration_of, is_nnunet_folder, label_layout,
                      model_folder, present_folds, read_dataset_json)
from .preprocessing import ChannelIntensity, CropNonzero, Orientation, PermuteAxes, Preprocessing, Resize
from .weights import apply_state_dict, sha256_of
from .windows import Ensemble

__all__ = ["CHECKPOINTS", "INSTALL_HINT", "OUTSIDE_LOGIT", "is_nnunet_folder", "model_folder", "read_checkpoint",
           "build_network", "load_nnunet", "label_layout", "checkpoint_location"]

INSTALL_HINT = ("pip install --no-deps 'dynamic-network-architectures>=0.4.4,<0.5' (--no-deps: its timm "
                "requirement would pull torchvision and another torch; the U-Net classes need neither)")
#: The logit of a non-background channel outside nnU-Net's crop (background 0): probability ~2e-9.
OUTSIDE_LOGIT = -20.0
_READERS = {"SimpleITKIO": None, "NibabelIO": None, "NibabelIOWithReorient": "RAS", "SimpleITKIOWithReorient": "RAS"}
_RESAMPLERS = ("resample_data_or_seg_to_shape", "resample_torch_fornnunet", "no_resampling_hack")


def _safe_types() -> list[Any]:
    """What nnU-Net's checkpoints pickle besides tensors: numpy scalars (the training log), dtypes."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    types: list[Any] = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
                        np.dtype, _codecs.encode]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        types += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    return types


def _global_names(types: Sequence[Any]) -> set[str]:
    return {t[1] if isinstance(t, tuple) else f"{t.__module__}.{t.__qualname__}" for t in types}


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The parts of an nnU-Net checkpoint that prediction needs, read without running pickled code.

    Returns:
        ``{"weights": state dict, "trainer": str, "configuration": str or None, "mirror_axes": tuple or None}``.

    Raises:
        UntrustedModelError: the pickle names a global outside tensors, plain values and numpy scalars.
        ModelError: missing, damaged, or not an nnU-Net checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    types = _safe_types()
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) - _global_names(types)
    except (RuntimeError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise ModelError(f"cannot read nnU-Net checkpoint {path}: not a PyTorch file ({exc})") from None
    if unsafe:
        raise UntrustedModelError(
            f"{path} contains pickled Python objects that would run code when loaded ({', '.join(sorted(unsafe))}); "
            "MedXAI reads nnU-Net checkpoints with tensors, plain values and numpy scalars only")
    try:
        with torch.serialization.safe_globals(types):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UntrustedModelError(f"{path} cannot be read with plain weights only: {first_line(exc, 200)}") from None
    except (RuntimeError, OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError(f"cannot read nnU-Net checkpoint {path}: {first_line(exc, 200)}") from None
    weights = obj.get("network_weights") if isinstance(obj, dict) else None
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise ModelError(f"{path} is not an nnU-Net checkpoint: it has no 'network_weights' state dict")
    init = obj.get("init_args") if isinstance(obj.get("init_args"), dict) else {}
    configuration = init.get("configuration")
    axes = obj.get("inference_allowed_mirroring_axes")
    if axes is not None and (not isinstance(axes, (list, tuple)) or not all(isinstance(a, int) for a in axes)):
        raise ModelError(f"{path}: inference_allowed_mirroring_axes must be axis numbers; got {axes!r}")
    return {"weights": weights, "trainer": str(obj.get("trainer_name", "")),
            "configuration": configuration if isinstance(configuration, str) else None,
            "mirror_axes": tuple(axes) if axes is not None else None}


def _configuration(plans: dict, name: str) -> dict:
    """A configuration with ``inherits_from`` resolved (as nnU-Net's PlansManager does)."""
    configurations = plans.get("configurations") or {}
    seen: list[str] = []
    chain = []
    while True:
        if name not in configurations:
            raise ModelError(f"the plans have no configuration {name!r}; they have {', '.join(configurations)}")
        if name in seen:
            raise ModelError(f"the plans' configurations inherit from each other in a cycle: {' -> '.join(seen + [name])}")
        seen.append(name)
        chain.append(configurations[name])
        parent = configurations[name].get("inherits_from")
        if parent is None:
            break
        name = parent
    merged: dict = {}
    for config in reversed(chain):
        merged.update(config)
    return merged


def _architecture(config: dict) -> dict:
    """The configuration's ``architecture``, rebuilt from the keys of plans written before nnU-Net 2.4."""
    if "architecture" in config:
        return config["architecture"]
    try:  # the old keys, converted as nnU-Net's ConfigurationManager converts them
        name = config["UNet_class_name"]
        dims = len(config["patch_size"])
        stages = len(config["n_conv_per_stage_encoder"])
        features = [min(config["UNet_base_num_features"] * 2 ** i, config["unet_max_num_features"]) for i in range(stages)]
        kernels, strides = config["conv_kernel_sizes"], config["pool_op_kernel_sizes"]
        encoder, decoder = config["n_conv_per_stage_encoder"], config["n_conv_per_stage_decoder"]
    except (KeyError, TypeError) as exc:
        raise ModelError(f"the plans' configuration has neither 'architecture' nor the older U-Net keys ({exc})") from None
    if name not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise ModelError(f"plans of an older nnU-Net name the network {name!r}; only PlainConvUNet and "
                         "ResidualEncoderUNet can be rebuilt from them")
    return {
        "network_class_name": f"dynamic_network_architectures.architectures.unet.{name}",
        "arch_kwargs": {
            "n_stages": stages, "features_per_stage": features,
            "conv_op": f"torch.nn.modules.conv.Conv{dims}d", "kernel_sizes": kernels, "strides": strides,
            ("n_conv_per_stage" if name == "PlainConvUNet" else "n_blocks_per_stage"): encoder,
            "n_conv_per_stage_decoder": decoder, "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _torch_layer(name: Any, key: str) -> Any:
    """A ``torch.nn`` module class named in the plans (``conv_op``, ``norm_op`` ...); nothing else."""
    if name is None:
        return None
    if not isinstance(name, str) or not re.fullmatch(r"torch\.nn(\.[A-Za-z_][A-Za-z0-9_]*)+", name):
        raise UntrustedModelError(f"the plans' {key} must name a torch.nn layer; got {name!r}")
    module_name, _, attr = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise ModelError(f"the plans' {key} {name!r} does not exist in this PyTorch") from None
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise UntrustedModelError(f"the plans' {key} {name!r} is not a torch.nn layer")
    return found


def _network_class(name: Any) -> type:
    prefix = "dynamic_network_architectures.architectures."
    if not isinstance(name, str) or not name.startswith(prefix) or \
            not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
        raise UntrustedModelError(f"the plans name the network class {name!r}; MedXAI builds nnU-Net networks from "
                                  "dynamic_network_architectures.architectures only")
    try:
        import dynamic_network_architectures  # noqa: F401
    except ImportError:
        raise ModelError(f"nnU-Net models need the package dynamic_network_architectures, which builds their networks: "
                         f"{INSTALL_HINT}") from None
    module_name, _, attr = name.rpartition(".")
    for candidate in (module_name, prefix + "unet"):  # older plans name residual_unet, now inside unet
        try:
            cls = getattr(importlib.import_module(candidate), attr)
            break
        except (ImportError, AttributeError):
            continue
    else:
        raise ModelError(f"dynamic_network_architectures has no network {name!r}; update it ({INSTALL_HINT})")
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)
            and cls.__module__.startswith("dynamic_network_architectures.")):
        raise UntrustedModelError(f"{name!r} is not a network class of dynamic_network_architectures")
    return cls


def build_network(architecture: dict, in_channels: int, out_channels: int) -> torch.nn.Module:
    """The plans' network (``network_class_name``, ``arch_kwargs``), as nnU-Net builds it for prediction
    (``get_network_from_plans`` with deep supervision off)."""
    if not isinstance(architecture, dict) or not isinstance(architecture.get("arch_kwargs"), dict):
        raise ModelError("the plans' architecture needs network_class_name and arch_kwargs")
    cls = _network_class(architecture.get("network_class_name"))
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import") or ():
        if key in kwargs:
            kwargs[key] = _torch_layer(kwargs[key], key)
    kwargs.setdefault("deep_supervision", False)
    try:
        return cls(input_channels=in_channels, num_classes=out_channels, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ModelError(f"cannot build {cls.__name__} from the plans: {exc}") from None


def _normalisation(config: dict, plans: dict, channels: int) -> ChannelIntensity:
    schemes = config.get("normalization_schemes") or []
    masks = config.get("use_mask_for_norm") or [False] * len(schemes)
    props = plans.get("foreground_intensity_properties_per_channel") \
        or plans.get("foreground_intensity_properties_by_modality") or {}
    if len(schemes) != channels:
        raise ModelError(f"the plans normalise {len(schemes)} channel(s) but dataset.json names {channels}")
    entries = []
    for c, (scheme, mask) in enumerate(zip(schemes, masks)):
        if scheme == "CTNormalization":
            p = props.get(str(c)) or {}
            try:
                entries.append({"kind": "clip_standardize", "low": float(p["percentile_00_5"]),
                                "high": float(p["percentile_99_5"]), "mean": float(p["mean"]), "std": float(p["std"])})
            except (KeyError, TypeError, ValueError):
                raise ModelError(f"the plans lack channel {c}'s intensity statistics for CTNormalization") from None
        elif scheme == "ZScoreNormalization":
            entries.append({"kind": "standardize", "mask": bool(mask)})
        elif scheme == "RescaleTo01Normalization":
            entries.append({"kind": "rescale"})
        elif scheme == "RGBTo01Normalization":
            entries.append({"kind": "scale", "factor": 1.0 / 255.0})
        elif scheme == "NoNormalization":
            entries.append({"kind": "none"})
        else:
            raise ModelError(f"the plans normalise channel {c} with {scheme!r}, which MedXAI does not reproduce (it "
                             "knows nnU-Net's CT, ZScore, RescaleTo01, RGBTo01 and No normalisation)")
    return ChannelIntensity(entries)


def _resampler(config: dict, which: str) -> Optional[dict]:
    """Resize settings for nnU-Net's ``resampling_fn_data`` / ``_probabilities``; None: no resampling."""
    name = config.get(f"resampling_fn_{which}", "resample_data_or_seg_to_shape")
    kwargs = config.get(f"resampling_fn_{which}_kwargs") or {}
    if name not in _RESAMPLERS:
        raise ModelError(f"the plans resample with {name!r}, which MedXAI does not reproduce (it knows "
                         f"{', '.join(_RESAMPLERS)})")
    if name == "no_resampling_hack":
        return None
    threshold = float(kwargs.get("separate_z_anisotropy_threshold", 3.0))
    if name == "resample_torch_fornnunet":
        if kwargs.get("mode", "linear") != "linear" or kwargs.get("aniso_axis_mode", "nearest-exact") != "nearest-exact":
            raise ModelError(f"resample_torch_fornnunet with mode {kwargs.get('mode')!r} / aniso_axis_mode "
                             f"{kwargs.get('aniso_axis_mode')!r} is not reproduced (only linear / nearest-exact)")
        return {"kernel": "torch", "order": 1, "order_z": 0, "separate_z": kwargs.get("force_separate_z"),
                "threshold": threshold}
    return {"kernel": "spline", "order": int(kwargs.get("order", 3 if which == "data" else 1)),
            "order_z": int(kwargs.get("order_z", 0)), "separate_z": kwargs.get("force_separate_z", False),
            "threshold": threshold}


def _fold_names(folder: Path, folds: Optional[Sequence[int | str]], file: str) -> list[str]:
    present = present_folds(folder, file)
    if folds is None:
        chosen = [f for f in present if f != "all"] or present
    else:
        chosen = [str(f) for f in folds]
        missing = [f for f in chosen if f not in present]
        if missing:
            raise ModelError(f"{folder.name} has no fold {', '.join(missing)} with {file}; folds with it: "
                             f"{', '.join(present) or 'none'}")
    if not chosen:
        others = [c for c in CHECKPOINTS.values() if c != file and present_folds(folder, c)]
        hint = f" (it has {others[0]}: choose it with --checkpoint)" if others else ""
        raise ModelError(f"{folder} has no fold_N/{file}{hint}; is the training finished?")
    return chosen


class _SliceNetwork(torch.nn.Module):
    """A 2D network run on windows one slice deep: (B, C, 1, Y, X) -> 2D net -> (B, K, 1, Y, X)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x[:, :, 0])
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.unsqueeze(2)


def load_nnunet(path: Path, folds: Optional[Sequence[int | str]] = None, configuration: Optional[str] = None,
                checkpoint: str = "final", mirroring: bool = True, tile_step: float = 0.5) -> ModelAdapter:
    """An nnU-Net v2 trained model as a :class:`ModelAdapter` running nnU-Net's prediction pipeline.

    Args:
        path: the model folder, or a dataset folder of the results layout.
        folds: fold numbers (or ``"all"`` for ``fold_all``); default every ``fold_N`` present.
        configuration: which configuration, where a dataset folder holds several (``3d_fullres`` ...).
        checkpoint: ``final`` or ``best``.
        mirroring: test-time mirroring over the axes the checkpoint allows (nnU-Net's default); False: none.
        tile_step: the tile step as a fraction of the patch (nnU-Net's ``tile_step_size``).

    Raises:
        ModelError, UntrustedModelError: see the module docstring.
    """
    if checkpoint not in CHECKPOINTS:
        raise ModelError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}; got {checkpoint!r}")
    folder = model_folder(Path(path), configuration)
    dataset = read_dataset_json(folder)
    try:
        plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {folder / 'plans.json'}: {exc}") from None
    file = CHECKPOINTS[checkpoint]
    names = _fold_names(folder, folds, file)
    parts = [read_checkpoint(folder / f"fold_{f}" / file) for f in names]
    config_name = parts[0]["configuration"] or (configuration_of(folder) if folder.name.count("__") == 2 else None)
    if config_name is None:
        raise ModelError(f"{folder}: the checkpoint does not say its configuration; give the model's folder "
                         "Trainer__Plans__Configuration")
    if configuration is not None and configuration != config_name:
        raise ModelError(f"{folder.name} was trained as configuration {config_name!r}, not {configuration!r}")
    config = _configuration(plans, config_name)
    if config.get("previous_stage"):
        raise ModelError(f"{config_name} is the second stage of a cascade: it needs the segmentation of "
                         f"{config['previous_stage']!r} as input, which MedXAI does not run; use a single-stage "
                         "configuration (3d_fullres, 2d)")
    class_names, activation = label_layout(dataset)
    channels = len(dataset.get("channel_names") or dataset.get("modality") or {})
    if channels < 1:
        raise ModelError("dataset.json names no input channel (channel_names)")
    patch = [int(p) for p in config.get("patch_size") or []]
    if len(patch) not in (2, 3):
        raise ModelError(f"configuration {config_name} has no 2D or 3D patch_size")
    two_d = len(patch) == 2
    architecture = _architecture(config)
    networks = []
    for fold, part in zip(names, parts):
        network = build_network(architecture, channels, len(class_names))
        apply_state_dict(network, part["weights"], folder / f"fold_{fold}" / file)
        networks.append(_SliceNetwork(network) if two_d else network)
    axes = parts[0]["mirror_axes"] if mirroring else None
    axes = tuple(a + 1 for a in axes) if (axes and two_d) else tuple(axes or ())
    network: torch.nn.Module = Ensemble(networks, axes) if (len(networks) > 1 or axes) else networks[0]
    # nnU-Net runs its U-Nets in the default layout; channels-last-3D made them slower (CPU, PlainConvUNet with
    # instance norm: forward 3.9 s instead of 2.3 s, forward + backward 6.7 s instead of 5.8 s per 64^3 window)
    network.keep_layout = True

    steps: list[Any] = []
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    notes: list[str] = []
    if reader in _READERS and _READERS[reader]:
        steps.append(Orientation(_READERS[reader]))
    elif reader not in _READERS:
        notes.append(f"the plans read images with {reader}; MedXAI assumes it orders the voxel axes as SimpleITK does")
    transpose = [int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
    steps.append(PermuteAxes([2 - t for t in transpose]))
    outside = [OUTSIDE_LOGIT] * len(class_names) if activation == "sigmoid" \
        else [0.0] + [OUTSIDE_LOGIT] * (len(class_names) - 1)
    steps.append(CropNonzero(outside=outside))
    steps.append(_normalisation(config, plans, channels))
    data, output = _resampler(config, "data"), _resampler(config, "probabilities")
    if data is not None:
        spacing = [float(s) for s in config["spacing"]]
        spacing = [0.0, *spacing] if two_d else spacing
        output = output or {"kernel": "spline", "order": 1, "order_z": 0, "separate_z": None, "threshold": 3.0}
        steps.append(Resize(spacing, kernel=data["kernel"], order=data["order"], order_z=data["order_z"],
                            separate_z=data["separate_z"], output_kernel=output["kernel"],
                            output_order=output["order"], output_order_z=output["order_z"],
                            output_separate_z=output["separate_z"], anisotropy_threshold=data["threshold"]))
    roi = (1, *patch) if two_d else tuple(patch)
    files = [folder / f"fold_{f}" / file for f in names]
    adapter = ModelAdapter(
        network=network, task="segmentation", class_names=class_names, in_channels=channels,
        roi_size=roi, overlap=1.0 - float(tile_step), blend_mode="nnunet_gaussian", tile_grid="nnunet",
        output_activation=activation, preprocessing=Preprocessing(steps),
        model_id=f"{folder.parent.name}/{folder.name}" if folder.name.count("__") == 2 else folder.name,
        sha256=sha256_of(*files), source=str(folder), notes=notes)
    adapter.pipeline = {
        "format": "nnU-Net v2",
        "trainer": parts[0]["trainer"], "configuration": config_name, "plans": plans.get("plans_name"),
        "folds": names, "checkpoint": file, "mirror_axes": list(axes), "tile_step_size": float(tile_step),
        "reproduced": "nnU-Net's prediction pipeline: axis order and transpose_forward, crop to non-zero voxels, "
                      "per-channel normalisation, resampling to the configuration's spacing and back (the same "
                      "B-spline / torch operators), tile positions, Gaussian blending, mirroring, fold mean, "
                      f"{activation}; equal to nnUNetPredictor to float rounding when it accumulates in float32",
        "differences": [
            "nnU-Net accumulates tiles in float16 (MedXAI in float32): about 1e-3 in the logits",
            "the crop box is fixed from the explained image; a perturbed input is cut to the same box",
            f"outside the crop nnU-Net predicts background without the network; MedXAI puts constant logits "
            f"there ({'all' if activation == 'sigmoid' else 'background 0, others'} {OUTSIDE_LOGIT:g})",
            "nnU-Net runs the network in float16 autocast on CUDA; MedXAI does with --mixed-precision",
        ],
    }
    return adapter
