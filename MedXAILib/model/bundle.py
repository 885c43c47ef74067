"""MONAI bundle folders: ``configs/inference.json`` (+ ``metadata.json``) and ``models/model.pt``.

Only three sections of the inference config are used: ``network_def``, ``preprocessing`` and
``inferer``. A bundle's config can run arbitrary Python: ``$`` expressions are evaluated, and a
``_target_`` may name any importable callable. Unless the caller trusts the bundle, the values
MedXAI reads from those sections (the whole ``network_def``; each transform's ``_target_`` and the
arguments that are translated; the inferer's window settings), and everything they refer to with
``@``, must therefore be plain data: network classes from ``monai.networks.nets``, no ``$``
expressions. Nothing is evaluated without trust; arguments MedXAI ignores (``keys``, ``device`` ...)
may hold expressions. With trust, MONAI's ``ConfigParser`` evaluates the values as MONAI would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ModelError, UntrustedModelError
from .preprocessing import Preprocessing

__all__ = ["BundleConfig", "read_bundle"]

SECTIONS = ("network_def", "preprocessing", "inferer")
# Bundle transforms with no effect on an in-memory (C, I, J, K) float volume
_NO_OP_TRANSFORMS = {
    "LoadImage", "EnsureChannelFirst", "EnsureType", "ToTensor", "CastToType", "ToDevice",
    "AddChannel", "Identity",
}


def _short(name: str) -> str:
    short = name.rsplit(".", 1)[-1]
    return short[:-1] if short.endswith("d") and short[:-1] in _KNOWN_BASES else short


_KNOWN_BASES = _NO_OP_TRANSFORMS | {"Orientation", "Spacing", "ScaleIntensityRange", "NormalizeIntensity"}


# The values MedXAI reads from each transform / inferer; everything else in them is ignored, so an
# expression there is never evaluated (e.g. ``"device": "@device"`` on EnsureTyped).
_USED_KEYS = {
    "Orientation": {"axcodes"},
    "Spacing": {"pixdim", "mode"},
    "ScaleIntensityRange": {"a_min", "a_max", "b_min", "b_max", "clip"},
    "NormalizeIntensity": {"subtrahend", "divisor", "nonzero", "channel_wise"},
    "SlidingWindowInferer": {"roi_size", "sw_batch_size", "overlap", "mode"},
    "SlidingWindowInfererAdapt": {"roi_size", "sw_batch_size", "overlap", "mode"},
    "SimpleInferer": set(),
}
_CODE_KEYS = ("_requires_", "_disabled_", "_mode_")


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


def _used_view(section: str, obj: Any) -> Any:
    """The values of a config section that MedXAI reads without trust."""
    if section == "inferer":
        return _used_part(obj)
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


class BundleConfig:
    """The parts of a bundle MedXAI uses, resolved with or without trust."""

    def __init__(self, folder: Path, trusted: bool):
        self.folder = folder
        config_path = folder / "configs" / "inference.json"
        if not config_path.is_file():
            raise ModelError(f"{folder} is not a MONAI bundle: configs/inference.json is missing")
        try:
            self.config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {config_path}: {exc}") from None
        self.metadata = _read_json(folder / "configs" / "metadata.json")
        missing = [s for s in ("network_def",) if s not in self.config]
        if missing:
            raise ModelError(f"{config_path} has no '{missing[0]}' section")
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
                "(trust_bundle=True) only if you trust its author."
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

    def _parsed(self, path: str) -> Any:
        """Evaluate a config id with MONAI's ConfigParser (trusted bundles only)."""
        assert self._parser is not None
        try:
            return self._parser.get_parsed_content(path)
        except Exception as exc:  # the bundle's own code: any error type
            text = str(exc).strip().splitlines()
            raise ModelError(
                f"the bundle {self.folder.name} failed to evaluate '{path}': "
                f"{type(exc).__name__}: {text[0][:300] if text else ''}"
            ) from None

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
        return build_monai_network(name, {k: v for k, v in spec.items() if k != "_target_"}, nets)

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
            return {
                "roi_size": tuple(roi),
                "sw_batch_size": int(spec.get("sw_batch_size", 1)),
                "overlap": float(spec.get("overlap", 0.25)),
                "blend_mode": str(spec.get("mode", "constant")),
            }
        raise ModelError(f"unsupported bundle inferer {name!r}; MedXAI runs SimpleInferer and SlidingWindowInferer")


def build_monai_network(name: str, args: dict[str, Any], nets_module: Any) -> Any:
    """Instantiate ``monai.networks.nets.<name>(**args)`` with a clear error on bad input."""
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
    try:
        return cls(**args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"cannot build {short} with arguments {args}: {exc}") from None


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
    else:
        raise ModelError(
            f"the bundle's preprocessing uses {entry['_target_']}, which MedXAI cannot run inside "
            "the gradient graph; supported: Orientation(d), Spacing(d), ScaleIntensityRange(d), "
            "NormalizeIntensity(d) and I/O transforms (LoadImage, EnsureChannelFirst, EnsureType)"
        )
    return steps


def _lookup(config: dict[str, Any], key: str) -> Any:
    """The config value at id ``a#b#0`` (or ``a::b::0``); ModelError when it does not exist."""
    node: Any = config
    for part in _normalise_id(key).split("#"):
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ModelError(f"the bundle config refers to '@{key}', which does not exist") from None
    return node


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None


def read_bundle(folder: Path, trusted: bool) -> BundleConfig:
    return BundleConfig(folder, trusted)
