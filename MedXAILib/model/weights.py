"""Safe reading of model files: hashes, plain-weight state dicts, TorchScript and exported programs."""

from __future__ import annotations

import contextlib
import importlib
import pickle
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..errors import ModelError, UntrustedModelError, first_line
from ..io.checksums import sha256_of

__all__ = [
    "sha256_of",
    "sniff_file",
    "load_state_dict",
    "apply_state_dict",
    "load_torchscript",
    "load_exported",
    "ExportedModule",
]


def sniff_file(path: Path) -> str:
    """What a model file holds, from its bytes (and the ``.pt2`` suffix).

    Returns ``"torchscript"``, ``"exported"`` (a ``torch.export`` archive), ``"state_dict"`` (a
    ``torch.save`` archive or legacy pickle: weights, or pickled objects) or ``"unknown"``.
    """
    if path.suffix.lower() == ".pt2":
        return "exported"
    if not zipfile.is_zipfile(path):
        try:
            with open(path, "rb") as handle:
                head = handle.read(2)
        except OSError:
            return "unknown"
        # a legacy (non-zip) torch.save file is a pickle stream: PROTO opcode, protocol 2..5
        return "state_dict" if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5 else "unknown"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith(("archive_format", "serialized_exported_program.json")) for n in names):
        return "exported"
    if any(n.endswith("data.pkl") for n in names):
        return "state_dict"
    return "unknown"


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load plain weights with ``torch.load(weights_only=True)``; never unpickle code.

    Accepts a bare state dict or one wrapped under ``"state_dict"``/``"model"`` (common checkpoint
    layouts) and strips a ``"module."`` prefix left by DataParallel.

    Raises:
        UntrustedModelError: the file holds pickled objects that would run code when loaded.
        ModelError: the file is missing, corrupted or not a PyTorch file.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():  # not a pickle of objects: not a PyTorch file
            raise ModelError(f"cannot read weights from {path}: not a PyTorch file ({first_line(exc, 300)})") from None
        raise UntrustedModelError(
            f"{path.name} contains pickled Python objects that would run code when loaded "
            f"({str(exc).strip().splitlines()[0][:160]}); MedXAI loads plain weights only. "
            "Re-save the weights with torch.save(model.state_dict(), path)."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(f"cannot read weights from {path}: corrupted or not a PyTorch file ({first_line(exc, 300)})") from None
    except Exception as exc:  # torch's legacy reader fails on arbitrary bytes with IndexError, KeyError, ...
        raise ModelError(f"cannot read weights from {path}: not a PyTorch file ({type(exc).__name__}: "
                         f"{first_line(exc, 300)})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ModelError(f"{path.name} does not hold a state dict (a mapping of names to tensors)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_torchscript(path: Path) -> tuple[torch.nn.Module, dict[str, str]]:
    """Load a TorchScript archive and the text of its ``metadata.json`` extra file, if any."""
    extra = {"metadata.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch >= 2.14 deprecates TorchScript; still supported
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"cannot load TorchScript model {path}: corrupted or incompatible ({first_line(exc, 300)})") from None
    return module, extra


_UNPICKLE_LOCK = threading.Lock()


class _WeightsOnlyTorch:
    """Stands in for the ``torch`` module inside torch.export's loaders: ``load`` is weights-only."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return torch.load(f, *args, **kwargs)


class _NoPickle:
    """Stands in for the ``pickle`` module inside torch.export's loader: refuses to unpickle."""

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)

    @staticmethod
    def loads(*_: Any, **__: Any) -> Any:
        raise pickle.UnpicklingError("a pickled Python object (arbitrary code) in the archive")

    load = loads


@contextlib.contextmanager
def _weights_only_unpickling() -> Iterator[None]:
    """Make ``torch.export.load`` refuse pickled code.

    torch.export.load unpickles parts of a .pt2 archive with ``weights_only=False`` (pickled weights
    and constants, opaque objects, and as a fallback for the sample inputs), so a crafted archive
    runs arbitrary code. While this context is active its loader modules see a ``torch.load`` that
    is always weights-only and a ``pickle.loads`` that refuses.
    """
    patched: list[tuple[Any, str, Any]] = []
    with _UNPICKLE_LOCK:
        try:
            for name in ("torch.export.pt2_archive._package", "torch._export.serde.serialize"):
                try:
                    module = importlib.import_module(name)
                except ImportError:
                    continue
                for attr, stand_in in (("torch", _WeightsOnlyTorch()), ("pickle", _NoPickle())):
                    if getattr(module, attr, None) is not None:
                        patched.append((module, attr, getattr(module, attr)))
                        setattr(module, attr, stand_in)
            if not any(attr == "torch" for _, attr, _ in patched):  # fail closed on an unknown torch layout
                raise ModelError(
                    f"this PyTorch ({torch.__version__}) has no torch.export loader MedXAI can guard against "
                    "pickled code; load the model as TorchScript or as a state dict + spec instead"
                )
            yield
        finally:
            for module, attr, original in reversed(patched):
                setattr(module, attr, original)


class ExportedModule(torch.nn.Module):
    """A ``torch.export`` program as an ``nn.Module`` that MedXAI can run.

    The graph module of an exported program refuses ``train()``/``eval()`` (the graph is frozen in
    the mode it was exported in) and only accepts the input shapes it was exported for. This
    wrapper accepts ``eval()``, runs a batch item by item when the program was exported with a
    fixed batch of one, and turns a shape mismatch into a :class:`ModelError` that says what to do.

    Attributes:
        input_shape: the exported input shape, ``None`` for dynamic dimensions.
        output_rank: number of dimensions of the (first) output, when known.
    """

    def __init__(self, program: Any, name: str = "model"):
        super().__init__()
        self.name = name
        self.graph_module = program.module()
        self.input_shape: Optional[tuple[Optional[int], ...]] = None
        self.output_rank: Optional[int] = None
        signature = program.graph_signature
        user_inputs = list(signature.user_inputs)
        if len(user_inputs) != 1:
            raise ModelError(
                f"the exported program {name} takes {len(user_inputs)} inputs; MedXAI needs a program "
                "with one image tensor input (B, C, I, J, K)"
            )
        for node in program.graph.nodes:
            value = node.meta.get("val")
            if node.op == "placeholder" and node.name == user_inputs[0] and value is not None:
                self.input_shape = tuple(d if isinstance(d, int) else None for d in value.shape)
            elif node.op == "output" and node.args:
                outputs = node.args[0]
                first = outputs[0] if isinstance(outputs, (tuple, list)) and outputs else outputs
                out_val = getattr(first, "meta", {}).get("val")
                if out_val is not None and hasattr(out_val, "shape"):
                    self.output_rank = len(out_val.shape)

    @property
    def static_spatial_shape(self) -> Optional[tuple[int, ...]]:
        """The spatial shape the program was exported for, when every spatial dimension is fixed."""
        shape = self.input_shape
        if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]):
            return None
        return tuple(int(d) for d in shape[2:])  # type: ignore[arg-type]

    def train(self, mode: bool = True) -> "ExportedModule":
        self.training = mode  # the exported graph keeps the mode it was exported in (eval)
        return self

    def forward(self, x: torch.Tensor) -> Any:
        shape = self.input_shape
        if shape is not None and x.ndim == len(shape):
            fixed = [(axis, want) for axis, want in enumerate(shape) if axis > 0 and want is not None]
            if any(x.shape[axis] != want for axis, want in fixed):
                want_text = tuple("*" if d is None else d for d in shape)
                raise ModelError(
                    f"the exported program {self.name} accepts inputs of shape {want_text} only, not "
                    f"{tuple(x.shape)}: give roi_size {list(shape[2:])} (sliding-window inference) for a "
                    "segmenter, resample the image, or re-export with torch.export dynamic_shapes"
                )
            if shape[0] is not None and x.shape[0] != shape[0]:
                if shape[0] == 1:
                    parts = [self._call(x[i : i + 1]) for i in range(x.shape[0])]
                    if all(torch.is_tensor(p) for p in parts):
                        return torch.cat(parts, 0)
                    if all(isinstance(p, (tuple, list)) for p in parts):
                        return type(parts[0])(torch.cat(items, 0) for items in zip(*parts))
                raise ModelError(
                    f"the exported program {self.name} was exported for a batch of {shape[0]}; "
                    "re-export it with a dynamic batch dimension"
                )
        return self._call(x)

    def _call(self, x: torch.Tensor) -> Any:
        try:
            return self.graph_module(x)
        except AssertionError as exc:  # guard failures of torch.export
            raise ModelError(f"the exported program {self.name} rejected the input {tuple(x.shape)}: "
                             f"{first_line(exc, 300)}") from None


def load_exported(path: Path) -> ExportedModule:
    """Load a ``torch.export`` program (.pt2) as a callable module, never unpickling code.

    Raises:
        UntrustedModelError: the archive holds pickled Python objects that would run code.
        ModelError: the file is damaged or not an exported program.
    """
    try:
        with warnings.catch_warnings(), _weights_only_unpickling():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except pickle.UnpicklingError as exc:
        raise UntrustedModelError(
            f"{path.name} contains pickled Python objects that would run code when loaded "
            f"({first_line(exc, 300)[:160]}); MedXAI loads exported programs with plain tensors only."
        ) from None
    except Exception as exc:  # torch.export raises many types for a damaged archive
        raise ModelError(f"cannot load exported program {path}: corrupted or incompatible ({first_line(exc, 300)})") from None
    try:
        return ExportedModule(program, name=path.name)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot run exported program {path}: {first_line(exc, 300)}") from None


def apply_state_dict(network: torch.nn.Module, state: dict[str, Any], source: Path) -> None:
    """Load `state` strictly, explaining mismatches in terms of keys and shapes."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        detail = " ".join(lines[1:4]) if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        raise ModelError(
            f"the weights in {source.name} do not fit the network definition "
            f"{type(network).__name__}: {detail[:600]} (check the network name and arguments in the spec or bundle)"
        ) from None
