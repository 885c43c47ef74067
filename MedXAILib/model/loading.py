"""`load_model`: TorchScript, exported programs, MONAI bundles and state dict + network spec.

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
from typing import Any, Optional, Sequence

import torch

from ..errors import ModelError
from .adapter import ModelAdapter, resolve_device
from .bundle import build_monai_network, read_bundle
from .preprocessing import Preprocessing
from .weights import apply_state_dict, load_exported, load_state_dict, load_torchscript, sha256_of, sniff_file

__all__ = ["load_model", "save_spec_model"]

SPEC_KEYS = {"network", "weights", "task", "class_names", "in_channels", "roi_size", "sw_batch_size",
             "overlap", "blend_mode", "output_activation", "preprocessing", "name", "description"}


def load_model(
    source: str | Path | torch.nn.Module | ModelAdapter,
    *,
    trust_bundle: bool = False,
    device: str | torch.device = "auto",
    task: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    in_channels: Optional[int] = None,
    roi_size: Optional[Sequence[int]] = None,
    preprocessing: Optional[Preprocessing] = None,
    borrow: bool = False,
) -> ModelAdapter:
    """Load a model from a file, folder or in-memory module into a :class:`ModelAdapter`.

    Args:
        source: TorchScript file (.ts/.pt/.zip), exported program (.pt2), MONAI bundle folder,
            network spec (.json), or an ``nn.Module`` / ``ModelAdapter`` already in memory.
        trust_bundle: allow a bundle config to execute code (``$`` expressions, non-MONAI targets).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        task, class_names, in_channels, roi_size: override what the model declares.
        preprocessing: replaces the model's own preprocessing when given.
        borrow: for an ``nn.Module``: leave it as it is (training mode, trainable parameters, device);
            each MedXAI call then sets it up and gives it back (:meth:`ModelAdapter.borrowed`).
            Without it the adapter takes the module over: ``eval()`` mode, frozen parameters, `device`.

    Raises:
        ModelError: missing, corrupted or unsupported model; UntrustedModelError for code.
    """
    if isinstance(source, ModelAdapter):
        adapter = source
    elif isinstance(source, torch.nn.Module):
        adapter = ModelAdapter(network=source, model_id=type(source).__name__, source="<memory>",
                               owns_network=not borrow)
    else:
        adapter = _load_path(Path(source), trust_bundle)
    if task is not None:
        adapter.task = task
    if class_names is not None:
        adapter.class_names = list(class_names)
    if in_channels is not None:
        adapter.in_channels = int(in_channels)
    if roi_size is not None:
        adapter.roi_size = tuple(int(v) for v in roi_size)  # type: ignore[assignment]
    if preprocessing is not None:
        adapter.preprocessing = preprocessing
    adapter.__post_init__()  # re-validate overrides, eval() and freeze parameters
    if not adapter.owns_network:  # stays where the caller keeps it; a call may move it and moves it back
        parameter = next(iter(adapter.network.parameters()), None)
        adapter.device = parameter.device if parameter is not None else torch.device("cpu")
        return adapter
    return adapter.to(resolve_device(device))


def _load_path(path: Path, trust_bundle: bool) -> ModelAdapter:
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    if path.is_dir():
        return _load_bundle(path, trust_bundle)
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


def _load_bundle(folder: Path, trusted: bool) -> ModelAdapter:
    bundle = read_bundle(folder, trusted)
    weights = folder / "models" / "model.pt"
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
    adapter = ModelAdapter(
        network=network,
        preprocessing=bundle.preprocessing(),
        model_id=str(bundle.metadata.get("name") or folder.name),
        sha256=digest,
        source=str(folder),
        **bundle.inferer(),
    )
    if weights.is_file():
        adapter.in_channels = _declared_in_channels(bundle.config.get("network_def"))
    _apply_bundle_metadata(adapter, bundle.metadata)
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
    network = build_monai_network(str(net_spec.get("name", "")), net_args, nets)
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
        output_activation=str(spec.get("output_activation", "softmax")),
        preprocessing=Preprocessing.from_config(spec.get("preprocessing")),
        model_id=str(spec.get("name") or path.stem),
        sha256=sha256_of(weights),
        source=str(path),
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
                         ("task", ("classification", "segmentation"))):
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
