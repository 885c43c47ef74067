"""The autoencoder behind the ``latent`` counterfactual generator: its spec format and loader.

A spec JSON holds ``network`` (``{"name": "AutoencoderKL", "args": {...}}``, a
``monai.networks.nets.AutoencoderKL``: Rombach et al. 2022, "High-resolution image synthesis with
latent diffusion models", CVPR), ``weights`` (a state dict beside it, read with ``weights_only``),
``intensity`` (``offset``, ``scale``, optional ``clip``: the network sees clip((HU - offset) / scale)),
``downsampling`` (the image shape must be a multiple of it; the generator pads), ``spacing_mm`` and
``modality`` of the training data, plus the training record and held-out metrics. The shipped one is
trained by :mod:`MedXAILib.demo.training.autoencoder`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError
from ..io import write_atomic
from ..model.weights import apply_state_dict, load_state_dict, sha256_of

__all__ = ["NAME", "AUTOENCODER_ARGS", "INTENSITY", "SPEC_KEYS", "default_autoencoder_path", "downsampling_of",
           "build_autoencoder", "save_autoencoder", "load_autoencoder"]

NAME = "demo_autoencoder"
#: ``monai.networks.nets.AutoencoderKL`` arguments: two levels (one 2x downsampling), no attention.
AUTOENCODER_ARGS: dict[str, Any] = {
    "spatial_dims": 3, "in_channels": 1, "out_channels": 1, "num_res_blocks": 1, "channels": [8, 16],
    "attention_levels": [False, False], "latent_channels": 4, "norm_num_groups": 4,
    "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False,
}
#: The network sees clip((HU - offset) / scale, *clip): a soft-tissue window of -250 to 350 HU mapped to
#: [-2, 2], so the small contrasts of organs and lesions are not drowned by air and bone.
INTENSITY = {"offset": 50.0, "scale": 150.0, "clip": [-2.0, 2.0]}
SPEC_KEYS = {"network", "weights", "intensity", "downsampling", "spacing_mm", "modality", "description",
             "training", "metrics", "reproduce"}


def default_autoencoder_path() -> Path:
    """``Resources/Models/demo_autoencoder.json`` of the source tree this package lives in."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Models" / f"{NAME}.json"


def downsampling_of(args: dict[str, Any]) -> int:
    return 2 ** (len(args["channels"]) - 1)


def build_autoencoder(args: Optional[dict[str, Any]] = None) -> Any:
    """A fresh ``AutoencoderKL`` with `args` (default :data:`AUTOENCODER_ARGS`)."""
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(**dict(args or AUTOENCODER_ARGS))



def save_autoencoder(net: Any, spec_path: str | Path, args: Optional[dict[str, Any]] = None,
                     intensity: Optional[dict[str, float]] = None, **extra: Any) -> Path:
    """Write `net`'s state dict (``<stem>.pt``) and its spec JSON, each atomically.

    Args:
        net: the trained ``AutoencoderKL``.
        spec_path: the JSON to write; the weights go beside it with the suffix ``.pt``.
        args: its constructor arguments (default :data:`AUTOENCODER_ARGS`).
        intensity: ``{"offset", "scale"}`` (default :data:`INTENSITY`).
        extra: more spec entries (``spacing_mm``, ``modality``, ``description``, ``training``, ``metrics``).

    Returns:
        The spec path.
    """
    import torch

    spec_path = Path(spec_path)
    args = dict(args or AUTOENCODER_ARGS)
    weights = spec_path.with_suffix(".pt")
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buffer)
    write_atomic(weights, buffer.getvalue())
    body = {"network": {"name": "AutoencoderKL", "args": args}, "weights": weights.name,
            "intensity": dict(intensity or INTENSITY), "downsampling": downsampling_of(args), **extra}
    unknown = set(body) - SPEC_KEYS
    if unknown:
        raise ValueError(f"unknown autoencoder spec entries: {sorted(unknown)}")
    write_atomic(spec_path, (json.dumps(body, indent=1) + "\n").encode("utf-8"))
    return spec_path


def load_autoencoder(path: Optional[str | Path] = None, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load an autoencoder spec written by :func:`save_autoencoder` (weights read with weights_only).

    Args:
        path: the spec JSON; default the shipped ``Resources/Models/demo_autoencoder.json``.
        device: torch device for the network.

    Returns:
        ``(network in eval mode with frozen parameters, spec dict)``.

    Raises:
        ModelError: missing or malformed spec or weights (UntrustedModelError for pickled code).
    """
        
    path = Path(path) if path else default_autoencoder_path()
    if not path.is_file():
        hint = " (train it with: medxai train-demo --only autoencoder)" if not path.exists() else ""
        raise ModelError(f"autoencoder spec not found: {path}{hint}")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read autoencoder spec {path}: {exc}") from None
    network = spec.get("network") if isinstance(spec, dict) else None
    if not isinstance(network, dict) or network.get("name") != "AutoencoderKL" or not isinstance(
            network.get("args"), dict) or not isinstance(spec.get("weights"), str):
        raise ModelError(f"{path.name} is not an autoencoder spec: it needs network "
                         "{\"name\": \"AutoencoderKL\", \"args\": {...}} and weights")
    intensity = spec.get("intensity", {})
    try:
        offset, scale = float(intensity["offset"]), float(intensity["scale"])
        clip = intensity.get("clip")
        clip = None if clip is None else [float(clip[0]), float(clip[1])]
    except (KeyError, TypeError, ValueError, IndexError):
        raise ModelError(f"{path.name}: intensity needs numbers offset and scale (and clip [low, high])") from None
    if not scale > 0 or (clip is not None and not clip[0] < clip[1]):
        raise ModelError(f"{path.name}: intensity scale must be > 0 and clip low < high; got {intensity}")
    try:
        net = build_autoencoder(network["args"])
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path.name}: AutoencoderKL does not accept these arguments: {exc}") from None
    weights = (path.parent / spec["weights"]).resolve()
    if not weights.is_file():
        raise ModelError(f"weights file {weights} named in {path.name} does not exist")
    apply_state_dict(net, load_state_dict(weights), weights)
    net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    spec = dict(spec, intensity={"offset": offset, "scale": scale, "clip": clip},
                downsampling=int(spec.get("downsampling", downsampling_of(network["args"]))),
                sha256=sha256_of(weights), source=str(path))
    return net, spec
