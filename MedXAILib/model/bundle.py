"""MONAI bundle folders: ``configs/inference.json`` (+ ``metadata.json``) and ``models/model.pt``.

Only three sections of the inference config are used: ``network_def``, ``preprocessing`` and
``inferer``. A bundle's config can run arbitrary Python: ``$`` expressions are evaluated, and a
``_target_`` may name any importable callable. Unless the caller trusts the bundle, those sections
must therefore be plain data: network classes from ``monai.networks.nets``, no ``$`` expressions.
With trust, MONAI's ``ConfigParser`` evaluates them as MONAI itself would.
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


def _code_sites(obj: Any, path: str) -> list[str]:
    """Config paths whose values would execute code when parsed."""
    sites = []
    if isinstance(obj, str) and obj.startswith(("$", "%")):
        sites.append(f"{path} = {obj[:60]!r}")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key == "_target_" and not _is_monai_name(str(value)):
                sites.append(f"{path}#_target_ = {value!r}")
            elif key in ("_requires_", "_disabled_", "_mode_"):
                sites.append(f"{path}#{key}")
            else:
                sites.extend(_code_sites(value, f"{path}#{key}"))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            sites.extend(_code_sites(value, f"{path}#{index}"))
    return sites


def _is_monai_name(name: str) -> bool:
    return "." not in name or name.startswith("monai.")


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
        sites = [s for section in SECTIONS for s in _code_sites(self.config.get(section), section)]
        sites += self._references_to_code()
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

    def _references_to_code(self) -> list[str]:
        sites = []

        def visit(obj: Any, path: str) -> None:
            if isinstance(obj, str) and obj.startswith("@"):
                key = obj[1:].split("#")[0]
                sites.extend(_code_sites(self.config.get(key), f"{path} -> {key}"))
            elif isinstance(obj, dict):
                for k, v in obj.items():
                    visit(v, f"{path}#{k}")
            elif isinstance(obj, list):
                for i, v in enumerate(obj):
                    visit(v, f"{path}#{i}")

        for section in SECTIONS:
            visit(self.config.get(section), section)
        return sites

    def value(self, obj: Any, path: str) -> Any:
        """A config value with ``@`` references (and, when trusted, ``$`` code) resolved."""
        if self._parser is not None and isinstance(obj, str) and obj.startswith(("$", "@", "%")):
            return self._parser.get_parsed_content(path)
        if isinstance(obj, str) and obj.startswith("@"):
            key = obj[1:]
            return self.value(_lookup(self.config, key), key)
        if isinstance(obj, dict):
            return {k: self.value(v, f"{path}#{k}") for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.value(v, f"{path}#{i}") for i, v in enumerate(obj)]
        return obj

    def build_network(self) -> Any:
        if self._parser is not None:
            return self._parser.get_parsed_content("network_def")
        from monai.networks import nets

        spec = self.value(self.config["network_def"], "network_def")
        name = str(spec.get("_target_", ""))
        return build_monai_network(name, {k: v for k, v in spec.items() if k != "_target_"}, nets)

    def preprocessing(self) -> Preprocessing:
        section = self.config.get("preprocessing")
        if section is None:
            return Preprocessing()
        transforms = self.value(section.get("transforms", []) if isinstance(section, dict) else section,
                                "preprocessing#transforms")
        if not isinstance(transforms, list):
            raise ModelError("the bundle's preprocessing must be a list of transforms")
        return Preprocessing.from_config(_translate_transforms(transforms))

    def inferer(self) -> dict[str, Any]:
        section = self.config.get("inferer")
        if not section:
            return {}
        spec = self.value(section, "inferer")
        name = _short(str(spec.get("_target_", "")))
        if name == "SimpleInferer":
            return {}
        if name in ("SlidingWindowInferer", "SlidingWindowInfererAdapt"):
            return {
                "roi_size": tuple(int(v) for v in spec["roi_size"]),
                "sw_batch_size": int(spec.get("sw_batch_size", 1)),
                "overlap": float(spec.get("overlap", 0.25)),
                "blend_mode": str(spec.get("mode", "constant")),
            }
        raise ModelError(f"unsupported bundle inferer {name!r}; MedXAI runs SimpleInferer and SlidingWindowInferer")


def build_monai_network(name: str, args: dict[str, Any], nets_module: Any) -> Any:
    """Instantiate ``monai.networks.nets.<name>(**args)`` with a clear error on bad input."""
    short = name.rsplit(".", 1)[-1]
    if name.startswith("monai.") and not name.startswith("monai.networks.nets."):
        raise ModelError(f"network {name!r} is not in monai.networks.nets")
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
        if name == "Orientation":
            steps.append({"kind": "orientation", "axcodes": entry.get("axcodes", "RAS")})
        elif name == "Spacing":
            mode = entry.get("mode", "bilinear")
            mode = mode[0] if isinstance(mode, (list, tuple)) else mode
            steps.append({"kind": "spacing", "pixdim": tuple(float(v) for v in entry["pixdim"]),
                          "mode": "nearest" if mode == "nearest" else "bilinear"})
        elif name == "ScaleIntensityRange":
            steps.append({"kind": "scale_intensity_range", "a_min": float(entry["a_min"]),
                          "a_max": float(entry["a_max"]), "b_min": float(entry.get("b_min", 0.0)),
                          "b_max": float(entry.get("b_max", 1.0)), "clip": bool(entry.get("clip", False))})
        elif name == "NormalizeIntensity":
            steps.append({"kind": "normalize_intensity", "subtrahend": entry.get("subtrahend"),
                          "divisor": entry.get("divisor"), "nonzero": bool(entry.get("nonzero", False))})
        else:
            raise ModelError(
                f"the bundle's preprocessing uses {entry['_target_']}, which MedXAI cannot run inside "
                "the gradient graph; supported: Orientation(d), Spacing(d), ScaleIntensityRange(d), "
                "NormalizeIntensity(d) and I/O transforms (LoadImage, EnsureChannelFirst, EnsureType)"
            )
    return steps


def _lookup(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("#"):
        node = node[int(part)] if isinstance(node, list) else node.get(part)
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
