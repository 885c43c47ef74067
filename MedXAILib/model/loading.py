"""`load_model`: TorchScript, exported programs, MONAI bundles, nnU-Net v2 folders and state dict + network spec.

A network spec is a small JSON file beside a state dict::

    {
      "network": {"name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, ...}},
      "weights": "unet.pt",
      "task": "segmentation",
      "class_names": ["background", "liver", "lesion"],
      "in_channels": 1,
      "roi_size": [96, 96, 96],
      "preprocessing": [{"kind": "scale_intensity_range", "a_min": -200, "a_max": 300, "clip": true}]
    }

``network.name`` must be a class of ``monai.networks.nets``; weights load with
``torch.load(weights_only=True)``, so neither part can run code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ..errors import ModelError
from .adapter import ModelAdapter, resolve_device
from .bundle import build_monai_network, read_bundle
from .nnunet import checkpoint_location, is_nnunet_folder, load_nnunet
from .preprocessing import DivisiblePad, Preprocessing
from .totalsegmentator import is_totalsegmentator, load_totalsegmentator
from .windows import PADDING_MODES
from .weights import apply_state_dict, load_exported, load_state_dict, load_torchscript, sha256_of, sniff_file

__all__ = ["load_model", "save_spec_model"]

SPEC_KEYS = {"network", "weights", "task", "class_names", "in_channels", "roi_size", "sw_batch_size",
             "overlap", "blend_mode", "padding_mode", "output_activation", "preprocessing", "name", "description"}


def load_model(
    source: str | Path | torch.nn.Module | ModelAdapter,
    *,
    trust_bundle: bool = False,
    device: str | torch.device = "auto",
    task: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    in_channels: Optional[int] = None,
    roi_size: Optional[Sequence[int]] = None,
    preprocessing: Optional[Preprocessing | Sequence[Mapping[str, Any]]] = None,
    output_activation: Optional[str] = None,
    overlap: Optional[float] = None,
    blend_mode: Optional[str] = None,
    padding_mode: Optional[str] = None,
    pad_divisible: Optional[int | Sequence[int]] = None,
    bundle_overrides: Optional[Mapping[str, Any]] = None,
    folds: Optional[Sequence[int | str]] = None,
    configuration: Optional[str] = None,
    checkpoint: Optional[str] = None,
    mirroring: bool = True,
    structure: Optional[str] = None,
    borrow: bool = False,
) -> ModelAdapter:
    """Load a model from a file, folder or in-memory module into a :class:`ModelAdapter`.

    Args:
        source: TorchScript file (.ts/.pt/.zip), exported program (.pt2), MONAI bundle folder,
            network spec (.json), or an ``nn.Module`` / ``ModelAdapter`` already in memory.
        trust_bundle: allow a bundle config to execute code (``$`` expressions, non-MONAI targets).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        task, class_names, in_channels, roi_size: override what the model declares.
        preprocessing: replaces the model's own preprocessing when given (a :class:`Preprocessing`, or its
            steps as in a network spec: ``[{"kind": "spacing", "pixdim": [1, 1, 2]}]``).
        output_activation: ``softmax`` or ``sigmoid`` (multi-label), replacing what the model declares.
        overlap, blend_mode, padding_mode: the sliding window's overlap in [0, 1), blending (``constant``,
            ``gaussian``) and padding of inputs smaller than the ROI (``constant``, ``replicate``, ...).
        pad_divisible: pad every spatial size up to a multiple of this (one number or three) before the
            network, and crop its output back: for networks that need sizes divisible by their strides.
        bundle_overrides: for a MONAI bundle, config ids and the values that replace them, as MONAI's
            runner takes ``--id#sub value`` (``{"network_def#in_channels": 2, "device": "cpu"}``).
        folds, configuration, checkpoint, mirroring: for an nnU-Net v2 folder (or ``totalsegmentator:TASK``):
            the folds averaged (default all present), the configuration where the folder holds several,
            ``final`` or ``best``, and test-time mirroring (see :mod:`.nnunet`).
        structure: the structure to be explained; a model made of several parts
            (``totalsegmentator:total``) loads the part that predicts it.
        borrow: for an ``nn.Module``: leave it as it is (training mode, trainable parameters, device);
            each MedXAI call then sets it up and gives it back (:meth:`ModelAdapter.borrowed`).
            Without it the adapter takes the module over: ``eval()`` mode, frozen parameters, `device`.

    Raises:
        ModelError: missing, corrupted or unsupported model; UntrustedModelError for code.
    """
    if bundle_overrides and not (isinstance(source, (str, Path)) and Path(source).is_dir()):
        raise ModelError("bundle overrides (--bundle-override) apply to MONAI bundle folders only")
    if isinstance(source, ModelAdapter):
        adapter = source
    elif isinstance(source, torch.nn.Module):
        adapter = ModelAdapter(network=source, model_id=type(source).__name__, source="<memory>",
                               owns_network=not borrow)
    elif is_totalsegmentator(source) or _is_nnunet(source):
        adapter = _load_nnunet_source(source, folds, configuration, checkpoint, mirroring, structure)
    else:
        if folds is not None or configuration is not None or checkpoint is not None:
            raise ModelError("--folds, --configuration and --checkpoint apply to nnU-Net model folders only")
        adapter = _load_path(Path(source), trust_bundle, bundle_overrides)
    if task is not None:
        adapter.task = task
    if class_names is not None:
        adapter.class_names = list(class_names)
    if in_channels is not None:
        adapter.in_channels = int(in_channels)
    if roi_size is not None:
        adapter.roi_size = tuple(int(v) for v in roi_size)  # type: ignore[assignment]
    if preprocessing is not None:
        adapter.preprocessing = preprocessing if isinstance(preprocessing, Preprocessing) \
            else Preprocessing.from_config(preprocessing)
    if output_activation is not None:
        adapter.output_activation = output_activation
    if overlap is not None:
        adapter.overlap = overlap
    if blend_mode is not None:
        adapter.blend_mode = blend_mode
    if padding_mode is not None:
        adapter.padding_mode = padding_mode
    if pad_divisible is not None:  # after the model's own steps: the padding is what the network sees
        adapter.preprocessing = Preprocessing([*adapter.preprocessing.steps, DivisiblePad(k=pad_divisible)])
    adapter.__post_init__()  # re-validate overrides, eval() and freeze parameters
    if not adapter.owns_network:  # stays where the caller keeps it; a call may move it and moves it back
        parameter = next(iter(adapter.network.parameters()), None)
        adapter.device = parameter.device if parameter is not None else torch.device("cpu")
        return adapter
    return adapter.to(resolve_device(device))


def _is_nnunet(source: Any) -> bool:
    """An nnU-Net folder, or one of its fold checkpoints given as the model file."""
    path = Path(source)
    return is_nnunet_folder(path) or (path.is_file() and checkpoint_location(path) is not None)


def _load_nnunet_source(source: Any, folds: Optional[Sequence[int | str]], configuration: Optional[str],
                        checkpoint: Optional[str], mirroring: bool, structure: Optional[str]) -> ModelAdapter:
    if is_totalsegmentator(source):
        return load_totalsegmentator(str(source), structure, folds, checkpoint or "final")
    path = Path(source)
    found = checkpoint_location(path) if path.is_file() else None
    if found is not None:  # fold_N/checkpoint_*.pth: that fold of its model folder
        folder, fold, choice = found
        if (folds is not None and [str(f) for f in folds] != [fold]) or (checkpoint not in (None, choice)):
            raise ModelError(f"{path} is fold {fold}'s {choice} checkpoint; give the model folder to choose folds "
                             "or checkpoints")
        return load_nnunet(folder, [fold], configuration, choice, mirroring)
    return load_nnunet(path, folds, configuration, checkpoint or "final", mirroring)


def _load_path(path: Path, trust_bundle: bool, bundle_overrides: Optional[Mapping[str, Any]] = None) -> ModelAdapter:
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    if path.is_dir():
        return _load_bundle(path, trust_bundle, bundle_overrides)
    if path.suffix.lower() == ".json":
        return _load_spec(path)
    kind = sniff_file(path)
    if kind == "torchscript":
        network, extra = load_torchscript(path)
        adapter = ModelAdapter(network=network, model_id=path.stem, sha256=sha256_of(path), source=str(path))
        _apply_torchscript_metadata(adapter, extra.get("metadata.json", ""))
        return adapter
    if kind == "exported":
        module = load_exported(path)
        adapter = ModelAdapter(network=module, model_id=path.stem, sha256=sha256_of(path), source=str(path))
        if module.output_rank == 2:
            adapter.task = "classification"
        elif module.output_rank is not None and module.input_shape is not None \
                and module.output_rank == len(module.input_shape) >= 3:
            adapter.task = "segmentation"
            # a program exported with a fixed spatial shape runs on larger images window by window
            adapter.roi_size = module.static_spatial_shape  # type: ignore[assignment]
            if adapter.roi_size is not None:
                adapter.notes.append(
                    f"{path.name} was exported for inputs of spatial shape {tuple(adapter.roi_size)} only; it runs "
                    "window by window over other images, which can change its prediction near window edges: "
                    "export it with dynamic shapes (torch.export Dim) to run it on the whole image")
        if module.input_shape is not None and len(module.input_shape) >= 2 and module.input_shape[1] is not None:
            adapter.in_channels = int(module.input_shape[1])
        return adapter
    if kind == "state_dict":
        load_state_dict(path)  # refuses pickled code (UntrustedModelError) before giving the advice below
        raise ModelError(
            f"{path.name} holds weights only; MedXAI also needs the network they belong to. Write a "
            "model spec JSON naming the monai.networks.nets class and its arguments (see docs/user-guide.md)"
        )
    raise ModelError(
        f"cannot load {path.name}: not a TorchScript file, exported program (.pt2), MONAI bundle folder "
        "or model spec (.json); the file may be corrupted"
    )


def _apply_torchscript_metadata(adapter: ModelAdapter, text: str) -> None:
    """Read task, class names and channels from a MONAI-style ``metadata.json`` extra file."""
    if not text:
        return
    try:
        meta = json.loads(text)
    except ValueError:
        return
    _apply_bundle_metadata(adapter, meta)


def _apply_bundle_metadata(adapter: ModelAdapter, meta: dict[str, Any]) -> None:
    """Task, class names and input channels from MONAI's ``network_data_format`` (ignores the rest)."""
    fmt = meta.get("network_data_format") if isinstance(meta, dict) else None
    fmt = fmt if isinstance(fmt, dict) else {}

    def first(section: Any) -> dict[str, Any]:
        value = next(iter(section.values()), {}) if isinstance(section, dict) else {}
        return value if isinstance(value, dict) else {}

    inputs, outputs = first(fmt.get("inputs")), first(fmt.get("outputs"))
    try:
        if "num_channels" in inputs:
            adapter.in_channels = int(inputs["num_channels"])
        channel_def = outputs.get("channel_def")
        if isinstance(channel_def, dict) and channel_def:
            adapter.class_names = [str(channel_def[k]) for k in sorted(channel_def, key=lambda k: int(k))]
    except (TypeError, ValueError) as exc:
        raise ModelError(f"the model's metadata network_data_format is malformed: {exc}") from None
    kind = str(outputs.get("type", "")).lower()
    if kind in ("image", "segmentation", "label"):
        adapter.task = "segmentation"
    elif kind in ("probabilities", "probability", "logits", "classification"):
        adapter.task = "classification"


def _load_bundle(folder: Path, trusted: bool, overrides: Optional[Mapping[str, Any]] = None) -> ModelAdapter:
    bundle = read_bundle(folder, trusted, overrides)
    checkpoint = bundle.checkpoint()  # where the config's CheckpointLoader reads the weights, when it says
    weights = checkpoint if checkpoint is not None and checkpoint.is_file() else folder / "models" / "model.pt"
    torchscript = folder / "models" / "model.ts"
    if weights.is_file():
        network = bundle.build_network()
        apply_state_dict(network, load_state_dict(weights), weights)
        digest = sha256_of(weights)
    elif torchscript.is_file():
        network, _ = load_torchscript(torchscript)
        digest = sha256_of(torchscript)
    else:
        raise ModelError(f"the bundle {folder.name} has neither models/model.pt nor models/model.ts")
    inferer = bundle.inferer()
    preprocessing = bundle.preprocessing()
    divisor = bundle.size_divisor()
    if divisor and not inferer.get("roi_size") and any(k > 1 for k in divisor):
        # the whole image goes through the network, which takes sizes that are multiples of k (its metadata)
        preprocessing.steps.append(DivisiblePad(k=divisor))
    adapter = ModelAdapter(
        network=network,
        preprocessing=preprocessing,
        model_id=bundle.name,
        sha256=digest,
        source=str(folder),
        output_activation=bundle.activation() or "softmax",
        notes=list(bundle.notes),
        **inferer,
    )
    if weights.is_file():
        adapter.in_channels = _declared_in_channels(bundle.config.get("network_def"))
    adapter.class_names = bundle.class_names()
    _apply_bundle_metadata(adapter, bundle.metadata)  # its channel_def, when it has one, comes first
    return adapter


def _load_spec(path: Path) -> ModelAdapter:
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model spec {path}: {exc}") from None
    if not isinstance(spec, dict) or "network" not in spec or "weights" not in spec:
        raise ModelError(f"model spec {path.name} needs 'network' and 'weights' entries")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ModelError(
            f"model spec {path.name} has unknown entries: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(SPEC_KEYS))}"
        )
    from monai.networks import nets

    net_spec = spec["network"]
    if not isinstance(net_spec, dict) or not isinstance(net_spec.get("args", {}), dict) \
            or set(net_spec) - {"name", "args"}:
        raise ModelError(
            f"model spec {path.name}: 'network' must be {{\"name\": <monai.networks.nets class>, "
            f"\"args\": {{...}}}}; got {json.dumps(net_spec)[:200]}"
        )
    _check_spec_values(spec, path)
    net_args = dict(net_spec.get("args", {}))
    notes: list[str] = []
    network = build_monai_network(str(net_spec.get("name", "")), net_args, nets, notes)
    weights = (path.parent / spec["weights"]).resolve()
    if not weights.is_file():
        raise ModelError(f"weights file {weights} named in {path.name} does not exist")
    apply_state_dict(network, load_state_dict(weights), weights)
    roi = spec.get("roi_size")
    names = spec.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ModelError(f"model spec {path.name}: class_names must be a list of strings; got {names!r}")
    if roi is not None and (not isinstance(roi, list) or len(roi) != 3
                            or not all(isinstance(v, int) and not isinstance(v, bool) for v in roi)):
        raise ModelError(f"model spec {path.name}: roi_size must be three integers; got {roi!r}")
    channels = spec.get("in_channels")
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
        raise ModelError(f"model spec {path.name}: in_channels must be a positive integer; got {channels!r}")
    return ModelAdapter(
        network=network,
        task=spec.get("task"),
        class_names=spec.get("class_names"),
        in_channels=spec.get("in_channels", _declared_in_channels(net_args)),
        roi_size=tuple(int(v) for v in roi) if roi else None,
        sw_batch_size=int(spec.get("sw_batch_size", 1)),
        overlap=float(spec.get("overlap", 0.25)),
        blend_mode=str(spec.get("blend_mode", "constant")),
        padding_mode=str(spec.get("padding_mode", "constant")),
        output_activation=str(spec.get("output_activation", "softmax")),
        preprocessing=Preprocessing.from_config(spec.get("preprocessing")),
        model_id=str(spec.get("name") or path.stem),
        sha256=sha256_of(weights),
        source=str(path),
        notes=notes,
    )


def _check_spec_values(spec: dict[str, Any], path: Path) -> None:
    """Refuse spec values of the wrong type or range with one line naming the entry."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(spec["weights"], str) or not spec["weights"]:
        raise ModelError(f"model spec {path.name}: weights must be a file name (a string); got {spec['weights']!r}")
    if "overlap" in spec and not (number(spec["overlap"]) and 0 <= spec["overlap"] < 1):
        raise ModelError(f"model spec {path.name}: overlap must be a number in [0, 1); got {spec['overlap']!r}")
    batch = spec.get("sw_batch_size", 1)
    if not (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1):
        raise ModelError(f"model spec {path.name}: sw_batch_size must be a positive integer; got {batch!r}")
    for key, allowed in (("blend_mode", ("constant", "gaussian")), ("output_activation", ("softmax", "sigmoid")),
                         ("padding_mode", PADDING_MODES), ("task", ("classification", "segmentation"))):
        if key in spec and spec[key] not in allowed:
            raise ModelError(f"model spec {path.name}: {key} must be one of {', '.join(allowed)}; "
                             f"got {spec[key]!r}")


def _declared_in_channels(args: Any) -> Optional[int]:
    """``in_channels`` from a network's constructor arguments, when it is a plain integer."""
    value = args.get("in_channels") if isinstance(args, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def save_spec_model(
    network: torch.nn.Module, name: str, args: dict[str, Any], spec_path: str | Path, **spec: Any
) -> Path:
    """Write ``network``'s state dict and a spec JSON naming ``monai.networks.nets.<name>(**args)``."""
    spec_path = Path(spec_path)
    weights = spec_path.with_suffix(".pt")
    torch.save(network.state_dict(), weights)
    body = {"network": {"name": name, "args": args}, "weights": weights.name, **spec}
    spec_path.write_text(json.dumps(body, indent=2))
    return spec_path
