"""MONAI bundle folders: ``configs/inference.json`` or ``inference.yaml`` (+ ``metadata.json``) and ``models/``.

MedXAI reads a bundle as MONAI's own runner (``python -m monai.bundle run``) would, with three
differences that the gradient graph needs: the preprocessing is rebuilt in torch
(:mod:`.preprocessing`), the sliding window runs window by window (:mod:`.windows`), and nothing
but the network, preprocessing, inferer and the output activation is read. In detail:

- the config is JSON or YAML; ``bundle_root`` is set to the bundle folder (MONAI's runner takes it
  as ``--bundle_root``), and overrides ``{"id#sub#0": value}`` replace values as the runner's
  ``--id#sub#0 value`` does (a config pinned to ``cuda`` or to the author's paths can thus be fixed);
- ``network_def``, ``preprocessing`` and ``inferer`` (roi size, overlap, blending, padding mode)
  are read, and the output activation from ``postprocessing`` (``Activations(sigmoid=True)``:
  multi-label; softmax otherwise); the weights from the config's ``CheckpointLoader`` path, else
  ``models/model.pt`` or ``models/model.ts``;
- object-detection bundles are refused before anything is evaluated; network arguments that newer
  MONAI releases removed (SwinUNETR's ``img_size``) are dropped with a note.

A bundle's config can run arbitrary Python: ``$`` expressions are evaluated, and a ``_target_`` may
name any importable callable (for a trusted bundle also its own ``scripts/`` package: the bundle
folder is importable while its config is evaluated, as MONAI's runner makes it). Unless the caller
trusts the bundle, the values MedXAI reads (the whole ``network_def``; each transform's ``_target_``
and the arguments that are translated; the inferer's window settings; the activation arguments of
``postprocessing``), and everything they refer to with ``@``, must therefore be plain data: network
classes from ``monai.networks.nets``, no ``$`` expressions. Nothing is evaluated without trust;
arguments MedXAI ignores (``keys``, ``device`` ...) may hold expressions. An override that makes a
value plain (``pixdim=[1.5, 1.5, 1.5]`` for an expression) makes trust unnecessary for it. With
trust, MONAI's ``ConfigParser`` evaluates the values as MONAI would.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from ..errors import ModelError, UntrustedModelError, error_chain
from .preprocessing import Preprocessing

__all__ = ["BundleConfig", "read_bundle", "build_monai_network", "parse_override", "CONFIG_NAMES"]

#: The inference configs a bundle may have, in the order they are looked for.
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
SECTIONS = ("network_def", "preprocessing", "inferer", "postprocessing")
# Bundle transforms with no effect on an in-memory (C, I, J, K) float volume
_NO_OP_TRANSFORMS = {
    "LoadImage", "EnsureChannelFirst", "EnsureType", "ToTensor", "CastToType", "ToDevice",
    "AddChannel", "Identity",
}


def _short(name: str) -> str:
    short = name.rsplit(".", 1)[-1]
    return short[:-1] if short.endswith("d") and short[:-1] in _KNOWN_BASES else short


_KNOWN_BASES = _NO_OP_TRANSFORMS | {
    "Orientation", "Spacing", "ScaleIntensityRange", "NormalizeIntensity", "ScaleIntensity", "CropForeground",
    "DivisiblePad", "Activations", "AsDiscrete",
}


# The values MedXAI reads from each transform / inferer; everything else in them is ignored, so an
# expression there is never evaluated (e.g. ``"device": "@device"`` on EnsureTyped).
_USED_KEYS = {
    "Orientation": {"axcodes"},
    "Spacing": {"pixdim", "mode"},
    "ScaleIntensityRange": {"a_min", "a_max", "b_min", "b_max", "clip"},
    "NormalizeIntensity": {"subtrahend", "divisor", "nonzero", "channel_wise"},
    "ScaleIntensity": {"minv", "maxv", "factor", "channel_wise"},
    "CropForeground": {"keys", "source_key", "select_fn", "channel_indices", "margin", "allow_smaller",
                       "k_divisible", "mode", "value"},
    "DivisiblePad": {"k", "mode", "method", "value"},
    "SlidingWindowInferer": {"roi_size", "sw_batch_size", "overlap", "mode", "padding_mode", "cval"},
    "SlidingWindowInfererAdapt": {"roi_size", "sw_batch_size", "overlap", "mode", "padding_mode", "cval"},
    "SimpleInferer": set(),
}
# What is read of ``postprocessing``: the output activation; its other transforms are never looked at
_ACTIVATION_KEYS = {"Activations": {"sigmoid", "softmax"}, "AsDiscrete": {"argmax", "threshold"}}
_CODE_KEYS = ("_requires_", "_disabled_", "_mode_")

# Network arguments that newer MONAI releases removed. A bundle written for an older release still
# names them, and MONAI's own runner then stops with a TypeError. Value: the new name, or None when
# the network simply no longer takes it.
_REMOVED_ARGUMENTS: dict[str, dict[str, Optional[str]]] = {
    "SwinUNETR": {"img_size": None},  # MONAI 1.5: any input size divisible by 32
    "UNETR": {"pos_embed": "proj_type"},  # MONAI 1.3 renamed it; later releases removed the old name
    "ViT": {"pos_embed": "proj_type"},
}
_DETECTION_NETWORKS = ("RetinaNet", "RetinaNetDetector")
_CUDA_HINT = ("; the config asks for a CUDA device, which this machine does not have: replace that value with "
              "--bundle-override ID=VALUE (MONAI's runner: --ID VALUE), e.g. a device or map_location of 'cpu'")


def _is_code(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("$", "%"))


def _used_part(entry: Any) -> Any:
    """The part of a transform / inferer entry that MedXAI reads (all of it when unknown)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("_target_"), str) or _is_code(entry["_target_"]):
        return entry
    name = _short(entry["_target_"])
    keys = set() if name in _NO_OP_TRANSFORMS else _USED_KEYS.get(name)
    if keys is None:
        return entry
    return {k: v for k, v in entry.items() if k == "_target_" or k in keys or k in _CODE_KEYS}


def _activation_part(entry: Any) -> Any:
    """An ``Activations`` / ``AsDiscrete`` entry cut to its activation arguments; None for any other entry."""
    if not isinstance(entry, dict) or not isinstance(entry.get("_target_"), str) or _is_code(entry["_target_"]):
        return None
    keys = _ACTIVATION_KEYS.get(_short(entry["_target_"]))
    return None if keys is None else {k: v for k, v in entry.items() if k == "_target_" or k in keys}


def _used_view(section: str, obj: Any) -> Any:
    """The values of a config section that MedXAI reads without trust (list positions kept)."""
    if section == "inferer":
        return _used_part(obj)
    if section == "postprocessing":
        transforms = obj.get("transforms") if isinstance(obj, dict) else obj
        return [_activation_part(t) for t in transforms] if isinstance(transforms, list) else None
    if section == "preprocessing":
        if isinstance(obj, dict) and "transforms" in obj:
            transforms = obj["transforms"]
            if isinstance(transforms, list):
                transforms = [_used_part(t) for t in transforms]
            return {k: v for k, v in obj.items() if k in ("_target_", *_CODE_KEYS)} | {"transforms": transforms}
        if isinstance(obj, list):
            return [_used_part(t) for t in obj]
    return obj


def _is_monai_name(name: str) -> bool:
    return "." not in name or name.startswith("monai.")


def _normalise_id(ref: str) -> str:
    """MONAI config ids separate levels with ``::`` (and, in older bundles, ``#``)."""
    return ref.replace("::", "#")


def _first(value: Any) -> Any:
    """A per-key argument (``[True]`` for ``keys: [pred]``) as one value."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


def parse_override(text: str) -> tuple[str, Any]:
    """``"ID=VALUE"`` -> ``(id, value)``, VALUE read as MONAI's runner reads ``--ID VALUE``.

    The value is YAML (so JSON too): ``2``, ``[96, 96, 96]``, ``true``, ``cpu``; a value starting
    with ``$``, ``@`` or ``%`` stays a string (an expression or reference, as in a config).

    Raises:
        ModelError: no ``=`` or an empty id.
    """
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ModelError(f"a bundle override is ID=VALUE (e.g. network_def#in_channels=2); got {text!r}")
    raw = raw.strip()
    if raw.startswith(("$", "@", "%")):
        return key, raw
    import yaml

    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError:
        return key, raw


class BundleConfig:
    """The parts of a bundle MedXAI uses, resolved with or without trust.

    Attributes:
        folder: the bundle folder.
        config: the inference config with ``bundle_root`` and the overrides applied.
        metadata: ``configs/metadata.json`` (empty when absent).
        notes: caveats found while reading (e.g. a removed network argument that was dropped).
    """

    def __init__(self, folder: Path, trusted: bool, overrides: Optional[Mapping[str, Any]] = None):
        self.folder = folder
        self.notes: list[str] = []
        config_path = next((folder / "configs" / n for n in CONFIG_NAMES if (folder / "configs" / n).is_file()), None)
        if config_path is None:
            raise ModelError(f"{folder} is not a MONAI bundle: configs/inference.json is missing (and so are "
                             "inference.yaml and inference.yml)")
        self.config_path = config_path
        self.config = _read_config(config_path)
        if not isinstance(self.config, dict):
            raise ModelError(f"{config_path} must hold a mapping of config ids; got a {type(self.config).__name__}")
        self.metadata = _read_json(folder / "configs" / "metadata.json")
        self.name = str(self.metadata.get("name") or folder.name)
        reason = _detection_reason(self.config, self.metadata)
        if reason:  # before anything is evaluated or imported
            raise ModelError(
                f"the bundle {self.name} is an object-detection model ({reason}): it returns boxes, not class "
                "scores per image or per voxel, and MedXAI explains classification and segmentation models only")
        # MONAI's runner is told the bundle's folder (--bundle_root); the published "." or the author's own
        # path would resolve against the wrong place
        self.config["bundle_root"] = str(folder.resolve())
        self.config.setdefault("_meta_", self.metadata)  # as the runner's read_meta puts it (@_meta_#...)
        for key, value in (overrides or {}).items():
            _set_id(self.config, str(key), value)
        if "network_def" not in self.config:
            raise ModelError(f"{config_path} has no 'network_def' section")
        self._drop_removed_arguments()
        sites = [
            site
            for section in SECTIONS
            for site in self._code_sites(_used_view(section, self.config.get(section)), section, frozenset())
        ]
        if sites and not trusted:
            raise UntrustedModelError(
                f"the bundle {folder.name} would execute code from its config ("
                + "; ".join(sites[:3])
                + (" ..." if len(sites) > 3 else "")
                + "). Loading it runs that code with your permissions; pass --trust-bundle "
                "(trust_bundle=True) only if you trust its author, or replace an expression by its value "
                "with --bundle-override ID=VALUE."
            )
        self.trusted = trusted
        self._parser = None
        if trusted:
            from monai.bundle import ConfigParser

            self._parser = ConfigParser(self.config)

    def _code_sites(self, obj: Any, path: str, seen: frozenset[str]) -> list[str]:
        """Config paths whose values would execute code when parsed, following ``@`` references."""
        sites: list[str] = []
        if _is_code(obj):
            sites.append(f"{path} = {obj[:60]!r}")
        elif isinstance(obj, str) and obj.startswith("@"):
            ref = _normalise_id(obj[1:])
            if ref not in seen:
                try:
                    target = _lookup(self.config, ref)
                except ModelError:
                    target = None  # reported when the value is resolved
                sites.extend(self._code_sites(target, f"{path} -> @{ref}", seen | {ref}))
        elif isinstance(obj, dict):
            for key, value in obj.items():
                if key == "_target_" and isinstance(value, str) and not value.startswith(("$", "%", "@")):
                    if not _is_monai_name(value):
                        sites.append(f"{path}#_target_ = {value!r}")
                elif key in _CODE_KEYS:
                    sites.append(f"{path}#{key}")
                else:
                    sites.extend(self._code_sites(value, f"{path}#{key}", seen))
        elif isinstance(obj, list):
            for index, value in enumerate(obj):
                sites.extend(self._code_sites(value, f"{path}#{index}", seen))
        return sites

    def _drop_removed_arguments(self) -> None:
        spec = self.config.get("network_def")
        if not isinstance(spec, dict) or not isinstance(spec.get("_target_"), str) or _is_code(spec["_target_"]) \
                or not _is_monai_name(spec["_target_"]):
            return
        from monai.networks import nets

        cls = getattr(nets, spec["_target_"].rsplit(".", 1)[-1], None)
        kept, notes = compatible_arguments(spec["_target_"], spec, cls)
        spec.clear()
        spec.update(kept)
        self.notes.extend(notes)

    @contextlib.contextmanager
    def _importable(self) -> Iterator[None]:
        """The bundle folder on ``sys.path`` (a trusted bundle's own ``scripts/``), as MONAI's runner puts it.

        Every bundle calls its package ``scripts``: one of another bundle, imported before, is put aside
        so that this bundle's own is imported.
        """
        root = self.folder.resolve()
        names = {p.stem for p in root.glob("*.py")} | {p.parent.name for p in root.glob("*/__init__.py")}
        for name in [n for n in sys.modules if n.split(".")[0] in names]:
            origin = getattr(sys.modules[name], "__file__", None)
            if origin is None or root not in Path(origin).resolve().parents:
                del sys.modules[name]
        sys.path.insert(0, str(root))
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(root))

    def _parsed(self, path: str) -> Any:
        """Evaluate a config id with MONAI's ConfigParser (trusted bundles only)."""
        assert self._parser is not None
        try:
            with self._importable():
                return self._parser.get_parsed_content(path)
        except Exception as exc:  # the bundle's own code: any error type
            cause = error_chain(exc)
            raise ModelError(f"the bundle {self.folder.name} failed to evaluate '{path}': {cause}"
                             f"{_CUDA_HINT if _cuda_missing(cause) else ''}") from None

    def value(self, obj: Any, path: str) -> Any:
        """A config value with ``@`` references (and, when trusted, ``$`` code) resolved."""
        if self._parser is not None and isinstance(obj, str) and obj.startswith(("$", "@", "%")):
            return self._parsed(path)
        if isinstance(obj, str) and obj.startswith("@"):
            key = _normalise_id(obj[1:])
            return self.value(_lookup(self.config, key), key)
        if isinstance(obj, dict):
            return {k: self.value(v, f"{path}#{k}") for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.value(v, f"{path}#{i}") for i, v in enumerate(obj)]
        return obj

    def build_network(self) -> Any:
        if self._parser is not None:
            network = self._parsed("network_def")
            import torch

            if not isinstance(network, torch.nn.Module):
                raise ModelError(f"the bundle's network_def gives a {type(network).__name__}, not a torch module")
            return network
        from monai.networks import nets

        spec = self.value(self.config["network_def"], "network_def")
        if not isinstance(spec, dict) or not isinstance(spec.get("_target_"), str):
            raise ModelError("the bundle's network_def must be {\"_target_\": <monai.networks.nets class>, ...}")
        name = spec["_target_"]
        return build_monai_network(name, {k: v for k, v in spec.items() if k != "_target_"}, nets, self.notes)

    def preprocessing(self) -> Preprocessing:
        section = self.config.get("preprocessing")
        if section is None:
            return Preprocessing()
        used = _used_view("preprocessing", section)
        if isinstance(used, dict):
            transforms = self.value(used.get("transforms", []), "preprocessing#transforms")
        else:
            transforms = self.value(used, "preprocessing")
        if not isinstance(transforms, list):
            raise ModelError("the bundle's preprocessing must be a list of transforms")
        return Preprocessing.from_config(_translate_transforms(transforms))

    def inferer(self) -> dict[str, Any]:
        section = self.config.get("inferer")
        if not section:
            return {}
        spec = self.value(_used_part(section), "inferer")
        if not isinstance(spec, dict):
            raise ModelError("the bundle's inferer must be {\"_target_\": \"SlidingWindowInferer\", ...}")
        name = _short(str(spec.get("_target_", "")))
        if name == "SimpleInferer":
            return {}
        if name in ("SlidingWindowInferer", "SlidingWindowInfererAdapt"):
            roi = spec.get("roi_size")
            try:
                roi = [int(roi)] * 3 if isinstance(roi, (int, float)) else [int(v) for v in roi]
                if len(roi) != 3:
                    raise ValueError(roi)
            except (TypeError, ValueError):
                raise ModelError(f"the bundle's SlidingWindowInferer needs a 3D roi_size; got {roi!r}") from None
            if spec.get("cval", 0) not in (0, 0.0, None):
                raise ModelError(f"the bundle's SlidingWindowInferer pads with cval={spec['cval']!r}; MedXAI pads "
                                 "with zeros (padding_mode constant) or copies of the border (replicate, reflect)")
            return {
                "roi_size": tuple(roi),
                "sw_batch_size": int(spec.get("sw_batch_size", 1)),
                "overlap": float(_first(spec.get("overlap", 0.25))),
                "blend_mode": str(spec.get("mode", "constant")),
                "padding_mode": str(spec.get("padding_mode", "constant")),
            }
        raise ModelError(f"unsupported bundle inferer {name!r}; MedXAI runs SimpleInferer and SlidingWindowInferer")

    def activation(self) -> Optional[str]:
        """``"sigmoid"`` or ``"softmax"`` as the bundle's postprocessing applies it; None when it says nothing.

        ``Activations(sigmoid=True)`` (or ``AsDiscrete(threshold=...)`` without an argmax) marks a
        multi-label model; ``Activations(softmax=True)`` or ``AsDiscrete(argmax=True)`` a softmax one.
        """
        section = self.config.get("postprocessing")
        view = _used_view("postprocessing", section)
        if not view:
            return None
        path = "postprocessing#transforms" if isinstance(section, dict) else "postprocessing"
        for index, entry in enumerate(view):
            if entry is None:
                continue
            entry = self.value(entry, f"{path}#{index}")
            name = _short(str(entry.get("_target_")))
            if name == "Activations":
                if _first(entry.get("sigmoid")):
                    return "sigmoid"
                if _first(entry.get("softmax")):
                    return "softmax"
            elif name == "AsDiscrete":
                if _first(entry.get("argmax")):
                    return "softmax"
                if _first(entry.get("threshold")) is not None:
                    return "sigmoid"
        return None

    def checkpoint(self) -> Optional[Path]:
        """The weights file the config's ``CheckpointLoader`` loads into the network, when it can be told.

        Trusted: its ``load_path`` as MONAI evaluates it; otherwise a plain path or the common
        ``"$@bundle_root + '/models/<file>'"``, which is read as text, not evaluated.
        """
        for path, entry in _walk(self.config, ""):
            if not (isinstance(entry, dict) and isinstance(entry.get("_target_"), str)
                    and _short(entry["_target_"]) == "CheckpointLoader" and "load_path" in entry):
                continue
            load_dict = entry.get("load_dict")
            if isinstance(load_dict, dict) and not any(str(v).lstrip("@") in ("network", "network_def")
                                                       for v in load_dict.values()):
                continue
            raw = entry["load_path"]
            if self._parser is not None and isinstance(raw, str) and raw.startswith(("$", "@", "%")):
                try:
                    raw = self._parsed(f"{path}#load_path")
                except ModelError:
                    return None  # e.g. a path built from values only a GPU run has; the default file is tried
            elif isinstance(raw, str):
                match = re.fullmatch(r"\$\s*@bundle_root\s*\+\s*(['\"])(.+?)\1\s*", raw)
                raw = str(self.folder / match.group(2).lstrip("/")) if match else raw
            if isinstance(raw, (str, Path)) and not str(raw).startswith(("$", "@", "%")):
                return Path(raw)
        return None

    def class_names(self) -> Optional[list[str]]:
        """Class names from a plain ``labels`` mapping (``{"background": 0, "liver": 1}``, MONAI Label's way),
        for bundles whose metadata has no ``channel_def``."""
        labels = self.config.get("labels")
        if not isinstance(labels, dict) or not labels or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in labels.items()):
            return None
        by_index = {v: k for k, v in labels.items()}
        return [by_index[i] for i in range(len(by_index))] if set(by_index) == set(range(len(by_index))) else None

    def size_divisor(self) -> Optional[tuple[int, int, int]]:
        """``k`` per axis when the metadata declares input sizes as multiples, ``["16*n", "16*n", "8*n"]``."""
        fmt = self.metadata.get("network_data_format") if isinstance(self.metadata, dict) else None
        inputs = fmt.get("inputs") if isinstance(fmt, dict) else None
        first = next(iter(inputs.values()), None) if isinstance(inputs, dict) else None
        shape = first.get("spatial_shape") if isinstance(first, dict) else None
        if not isinstance(shape, list) or len(shape) != 3:
            return None
        found = [re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*", str(v)) for v in shape]
        if not all(found):
            return None
        return tuple(int(m.group(1)) for m in found)  # type: ignore[union-attr, return-value]


def compatible_arguments(name: str, args: Mapping[str, Any], cls: Any) -> tuple[dict[str, Any], list[str]]:
    """`args` without the arguments newer MONAI releases removed from network `name`, and notes saying so.

    Only arguments of the table ``_REMOVED_ARGUMENTS`` that the installed class no longer takes are
    dropped (or renamed to their successor); any other unknown argument still fails as before.
    """
    kept, notes = dict(args), []
    table = _REMOVED_ARGUMENTS.get(name.rsplit(".", 1)[-1], {})
    if not table or cls is None:
        return kept, notes
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return kept, notes
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kept, notes
    import monai

    for arg, successor in table.items():
        if arg in kept and arg not in params:
            value = kept.pop(arg)
            if successor and successor in params and successor not in kept:
                kept[successor] = value
                notes.append(f"{cls.__name__}'s argument {arg}={value!r} is called {successor} in MONAI "
                             f"{monai.__version__}; it was passed as {successor}")
            else:
                notes.append(f"{cls.__name__}'s argument {arg}={value!r} was removed in newer MONAI releases "
                             f"(this is MONAI {monai.__version__}) and was left out")
    return kept, notes


def build_monai_network(name: str, args: dict[str, Any], nets_module: Any,
                        notes: Optional[list[str]] = None) -> Any:
    """Instantiate ``monai.networks.nets.<name>(**args)`` with a clear error on bad input.

    Arguments that newer MONAI releases removed are dropped (:func:`compatible_arguments`), with a
    note appended to `notes`.
    """
    short = name.rsplit(".", 1)[-1]
    if "." in name and not name.startswith("monai.networks.nets."):
        raise ModelError(
            f"network {name!r} is not in monai.networks.nets; name a class of monai.networks.nets "
            "(e.g. UNet), or export the model as TorchScript or a torch.export program"
        )
    cls: Optional[Callable[..., Any]] = getattr(nets_module, short, None)
    if cls is None:
        import difflib

        close = difflib.get_close_matches(short, [n for n in dir(nets_module) if n[:1].isupper()], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ModelError(f"monai.networks.nets has no network {short!r}{hint}")
    args, found = compatible_arguments(short, args, cls)
    if notes is not None:
        notes.extend(found)
    try:
        return cls(**args)
    except (TypeError, ValueError, AssertionError, ImportError) as exc:
        raise ModelError(f"cannot build {short} with arguments {args}: {error_chain(exc)}") from None


def _translate_transforms(transforms: list[Any]) -> list[dict[str, Any]]:
    steps = []
    for entry in transforms:
        if not isinstance(entry, dict) or "_target_" not in entry:
            raise ModelError(f"cannot interpret bundle transform {entry!r}")
        name = _short(str(entry["_target_"]))
        if name in _NO_OP_TRANSFORMS:
            continue
        try:
            steps.extend(_translate_one(name, entry))
        except KeyError as exc:
            raise ModelError(f"the bundle transform {entry['_target_']} lacks its {exc} argument") from None
    return steps


def _monai_default(transform: str, argument: str, fallback: Any) -> Any:
    """An argument's default in the installed MONAI (defaults change between releases, and the bundle runs
    with the installed one)."""
    import monai.transforms

    try:
        parameter = inspect.signature(getattr(monai.transforms, transform)).parameters[argument]
    except (AttributeError, KeyError, TypeError, ValueError):
        return fallback
    return fallback if parameter.default is inspect.Parameter.empty else parameter.default


def _translate_one(name: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    if name == "Orientation":
        steps.append({"kind": "orientation", "axcodes": entry.get("axcodes", "RAS")})
    elif name == "Spacing":
        mode = entry.get("mode", "bilinear")
        mode = mode[0] if isinstance(mode, (list, tuple)) else mode
        steps.append({"kind": "spacing", "pixdim": entry["pixdim"],
                      "mode": "nearest" if mode in ("nearest", 0) else "bilinear"})
    elif name == "ScaleIntensityRange":
        steps.append({"kind": "scale_intensity_range", "a_min": entry["a_min"], "a_max": entry["a_max"],
                      "b_min": entry.get("b_min"), "b_max": entry.get("b_max"),
                      "clip": bool(entry.get("clip", False))})
    elif name == "NormalizeIntensity":
        steps.append({"kind": "normalize_intensity", "subtrahend": entry.get("subtrahend"),
                      "divisor": entry.get("divisor"), "nonzero": bool(entry.get("nonzero", False)),
                      "channel_wise": bool(entry.get("channel_wise", False))})
    elif name == "ScaleIntensity":
        steps.append({"kind": "scale_intensity", "minv": entry.get("minv", 0.0), "maxv": entry.get("maxv", 1.0),
                      "factor": entry.get("factor"), "channel_wise": bool(entry.get("channel_wise", False))})
    elif name == "CropForeground":
        if entry.get("select_fn") is not None:
            raise ModelError(f"the bundle's {entry['_target_']} selects its foreground with its own select_fn; "
                             "MedXAI crops to MONAI's default foreground (voxels > 0) only")
        keys = entry.get("keys")
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        source = entry.get("source_key")
        if source is not None and keys and source not in keys:
            raise ModelError(f"the bundle's {entry['_target_']} crops the image to the foreground of "
                             f"'{source}', which MedXAI does not read (it reads the image only)")
        steps.append({"kind": "crop_foreground", "margin": entry.get("margin", 0),
                      "allow_smaller": bool(entry.get("allow_smaller",
                                                      _monai_default("CropForegroundd", "allow_smaller", False))),
                      "k_divisible": entry.get("k_divisible", 1), "channel_indices": entry.get("channel_indices"),
                      "mode": _first(entry.get("mode", "constant")), "value": entry.get("value", 0.0)})
    elif name == "DivisiblePad":
        steps.append({"kind": "divisible_pad", "k": entry["k"], "mode": _first(entry.get("mode", "constant")),
                      "method": entry.get("method", "symmetric"), "value": entry.get("value", 0.0)})
    else:
        raise ModelError(
            f"the bundle's preprocessing uses {entry['_target_']}, which MedXAI cannot run inside "
            "the gradient graph; supported: Orientation(d), Spacing(d), ScaleIntensityRange(d), "
            "NormalizeIntensity(d), ScaleIntensity(d), CropForeground(d), DivisiblePad(d) and I/O transforms "
            "(LoadImage, EnsureChannelFirst, EnsureType, CastToType)"
        )
    return steps


def _detection_reason(config: dict[str, Any], metadata: dict[str, Any]) -> Optional[str]:
    """Why a bundle is an object detector (boxes out), or None; read from plain values only."""
    fmt = metadata.get("network_data_format") if isinstance(metadata, dict) else None
    outputs = fmt.get("outputs") if isinstance(fmt, dict) else None
    first = next(iter(outputs.values()), None) if isinstance(outputs, dict) else None
    if isinstance(first, dict) and str(first.get("type", "")).lower() in ("object", "box", "boxes", "detection"):
        return f"its metadata declares the output as {first.get('type')!r}"
    for key in ("network_def", "detector"):
        entry = config.get(key)
        target = entry.get("_target_") if isinstance(entry, dict) else None
        if isinstance(target, str) and ("detection" in target.lower()
                                        or target.rsplit(".", 1)[-1] in _DETECTION_NETWORKS):
            return f"its {key} is {target}"
    return None


def _cuda_missing(text: str) -> bool:
    if "cuda" not in text.lower():
        return False
    import torch

    return not torch.cuda.is_available()


def _set_id(config: dict[str, Any], key: str, value: Any) -> None:
    """``config[id] = value`` as MONAI's ``ConfigParser.__setitem__``: the parent must exist, the last level
    may be new (a list index must exist)."""
    parts = _normalise_id(key).split("#")
    if any(not part for part in parts):
        raise ModelError(f"bundle override {key!r}: not a config id (levels separated by '#' or '::')")
    node: Any = config
    for depth, part in enumerate(parts[:-1]):
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ModelError(f"bundle override {key!r}: '{'#'.join(parts[:depth + 1])}' does not exist in "
                             "the config") from None
    last = parts[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ModelError(f"bundle override {key!r}: the list '{'#'.join(parts[:-1])}' has no item "
                             f"{last!r}") from None
    else:
        raise ModelError(f"bundle override {key!r}: '{'#'.join(parts[:-1])}' is a value, not a section")


def _walk(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (id, value) of a config, depth first."""
    yield path, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield from _walk(value, f"{path}#{key}" if path else str(key))


def _lookup(config: dict[str, Any], key: str) -> Any:
    """The config value at id ``a#b#0`` (or ``a::b::0``); ModelError when it does not exist."""
    node: Any = config
    for part in _normalise_id(key).split("#"):
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ModelError(f"the bundle config refers to '@{key}', which does not exist") from None
    return node


def _read_config(path: Path) -> Any:
    """A JSON or YAML config (YAML with PyYAML's safe loader: data only, as MONAI reads it)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {error_chain(exc)}") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ModelError(f"cannot read {path}: {error_chain(exc)}") from None
    try:
        import yaml
    except ImportError:
        raise ModelError(f"{path.name} is YAML, which needs PyYAML: pip install 'PyYAML>=5.1'") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelError(f"cannot read {path}: {error_chain(exc)}") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None


def read_bundle(folder: Path, trusted: bool, overrides: Optional[Mapping[str, Any]] = None) -> BundleConfig:
    """Read a bundle folder's inference config (see :class:`BundleConfig`)."""
    return BundleConfig(folder, trusted, overrides)
