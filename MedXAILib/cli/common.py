"""Pieces shared by the ``medxai`` subcommands: parsing, input/model/target options, progress, output.

Every subcommand that runs a model uses the same options and contracts as ``medxai explain``:
exit code 2 with one line on stderr for bad input, 130 for Ctrl-C, progress as a bar or JSON lines,
and no output file unless the whole job succeeded.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import InputError
from ..runs.protocol import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_OK  # the one definition
from ..io.outputs import Output, OutputSet

__all__ = [
    "EXIT_OK", "EXIT_BAD_INPUT", "EXIT_CANCELLED", "OUTPUT_SUFFIXES", "Parser", "fail", "ints", "floats",
    "parse_params", "bundle_overrides", "folds", "class_by_name", "add_input_arguments", "add_target_arguments",
    "add_run_arguments",
    "read_input", "model_from_args", "target_from_args", "monitor_from_args", "finish",
    "MODEL_INPUTS", "OutputOption", "declare_io", "guard_outputs", "staged",
]

OUTPUT_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


class Parser(argparse.ArgumentParser):
    """argparse with MedXAI's error contract: one line on stderr, exit code 2.

    A value that starts with a minus sign and a digit (``--target-box -5,0,0,9,9,9``) is a value, not an
    option, as it is for plain negative numbers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> None:  # argparse already exits 2; keep the message to one line
        raise SystemExit(fail(f"{message} (see '{self.prog} --help')"))


def fail(message: str) -> int:
    sys.stderr.write(f"medxai: error: {message}\n")
    return EXIT_BAD_INPUT


def numbers(count: int, what: str, kind: type = float, positive: bool = False,
            increasing: bool = False) -> Callable[[str], tuple]:
    """An argparse type: `count` comma-separated numbers of `kind`, finite, optionally all > 0 or increasing."""
    noun = "integers" if kind is int else "numbers"

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.replace(" ", "").split(","))
        except ValueError:
            values = ()
        if len(values) != count or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated {noun}; got {text!r}")
        if positive and min(values) <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be {count} values > 0; got {text!r}")
        if increasing and any(b <= a for a, b in zip(values, values[1:])):
            raise argparse.ArgumentTypeError(f"{what} needs LOW < HIGH; got {text!r}")
        return values

    return parse


def ints(count: int, what: str, positive: bool = False) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: `count` comma-separated integers."""
    return numbers(count, what, int, positive)


def floats(count: int, what: str, positive: bool = False, increasing: bool = False) -> Callable[[str], tuple]:
    """An argparse type: `count` comma-separated finite numbers."""
    return numbers(count, what, float, positive, increasing)


def folds(text: str) -> list[int | str]:
    """An argparse type: ``0,1,2`` or ``all`` (nnU-Net's fold_all)."""
    from ..model.folders import parse_folds

    try:
        return parse_folds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def class_by_name(names: Optional[Sequence[str]], name: str) -> int:
    """The output channel named `name` (case-insensitive), with a did-you-mean when there is none."""
    if not names:
        raise InputError(f"--target-structure {name!r}: the model declares no class names; give --target-class")
    exact = [i for i, n in enumerate(names) if n == name] or [i for i, n in enumerate(names) if n.lower() == name.lower()]
    if exact:
        return exact[0]
    close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(names[[n.lower() for n in names].index(c)]) for c in close)}?" if close \
        else f"the model's classes: {', '.join(names[:40])}{' ...' if len(names) > 40 else ''}"
    raise InputError(f"the model has no structure {name!r}; {hint}")


def memory_budget(text: str) -> Optional[int]:
    """An argparse type: ``auto`` or a size of at least :data:`~MedXAILib.model.memory.MIN_BUDGET`."""
    from ..model.memory import MIN_BUDGET, parse_budget

    try:
        return parse_budget(text, minimum=MIN_BUDGET)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` from repeated ``--param`` options."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--param needs NAME=VALUE; got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class OutputOption:
    """An option that names an output: its argparse ``dest``, the suffixes it takes, folder or file."""

    dest: str
    suffixes: tuple[str, ...] = ()
    folder: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


def declare_io(parser: argparse.ArgumentParser, inputs: Sequence[str], outputs: Sequence[OutputOption]) -> None:
    """Declare which options of a subcommand name its inputs (dests) and its outputs.

    :func:`MedXAILib.cli.main.main` builds the one output guard (:class:`~MedXAILib.io.outputs.OutputSet`)
    from this before the command runs, and commits the outputs when it succeeds;
    ``Testing/Repo/test_output_guard.py`` proves every declared output option is guarded and that no
    subcommand writes through an undeclared option.
    """
    parser.set_defaults(io_inputs=tuple(inputs), io_outputs=tuple(outputs))


def guard_outputs(args: argparse.Namespace) -> OutputSet:
    """The run's :class:`~MedXAILib.io.outputs.OutputSet`, checked against every input before any work."""
    inputs = []
    for dest in getattr(args, "io_inputs", ()):
        value = getattr(args, dest, None)
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path and dest == "param":  # NAME=FILE parameters (a label map, an autoencoder) are inputs too
                path = str(path).partition("=")[2]
                path = path if path and Path(path).exists() else None
            if path:
                inputs.append(("--" + dest.replace("_", "-"), path))
    outputs = [Output(option.flag, Path(getattr(args, option.dest)), option.suffixes, option.folder)
               for option in getattr(args, "io_outputs", ()) if getattr(args, option.dest, None)]
    return OutputSet(outputs, inputs)


def staged(args: argparse.Namespace, path: str | Path) -> Path:
    """Where the command writes the output that ends up at `path` (committed by :func:`finish`)."""
    return args.outputs.staged(path)


#: The input options of :func:`add_input_arguments` and :func:`add_target_arguments`, for :func:`declare_io`.
MODEL_INPUTS = ("image", "model", "target_mask")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--image`` (repeatable), ``--model``, ``--trust-bundle``, ``--target-structure`` and the model options."""
    parser.add_argument("--image", action="append", required=True, metavar="IMG",
                        help="image file (NIfTI, NRRD, MetaImage) or DICOM series folder; repeat for more "
                             "channels (resampled onto the first)")
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--trust-bundle", action="store_true", help="allow a bundle's config to run code")
    parser.add_argument("--target-structure", metavar="NAME",
                        help="the structure to explain, by the model's class name (sets the class; for a model made "
                             "of several parts, such as totalsegmentator:total, loads the part that predicts it)")
    add_model_options(parser)


#: What ``--model`` accepts.
MODEL_HELP = ("TorchScript file, exported program (.pt2), MONAI bundle folder, model spec JSON, nnU-Net v2 model "
              "folder, or totalsegmentator:TASK")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The nnU-Net options and the overrides of what a model declares (read by :func:`model_options`)."""
    nnunet = parser.add_argument_group("nnU-Net and TotalSegmentator models")
    nnunet.add_argument("--folds", type=folds, metavar="F,F|all",
                        help="folds to average (fold numbers, or 'all' for fold_all; default: every fold present)")
    nnunet.add_argument("--configuration", metavar="NAME",
                        help="configuration (3d_fullres, 2d, ...) where the dataset folder holds several")
    nnunet.add_argument("--checkpoint", choices=("final", "best"), help="checkpoint_final.pth (default) or "
                        "checkpoint_best.pth")
    nnunet.add_argument("--no-mirroring", action="store_true", help="no test-time mirroring (faster; nnU-Net's "
                        "--disable_tta)")
    group = parser.add_argument_group("model options (override what the model declares)")
    group.add_argument("--task", choices=("classification", "segmentation"))
    group.add_argument("--roi-size", metavar="X,Y,Z", type=ints(3, "--roi-size", positive=True),
                       help="sliding-window ROI in voxels")
    group.add_argument("--orientation", metavar="AXCODES", help="reorient before the model, e.g. RAS")
    group.add_argument("--spacing", metavar="X,Y,Z", type=floats(3, "--spacing", positive=True),
                       help="resample to this spacing (mm) before the model")
    group.add_argument("--window", metavar="LOW,HIGH", type=floats(2, "--window", increasing=True),
                       help="map intensities [LOW, HIGH] to [0, 1] with clipping before the model")
    group.add_argument("--pad-divisible", metavar="K", type=ints(1, "--pad-divisible", positive=True),
                       help="pad each size to a multiple of K before the network (for networks that need sizes "
                            "divisible by their strides, e.g. 16 or 32); its output is cropped back")
    group.add_argument("--output-activation", choices=("softmax", "sigmoid"),
                       help="how the output's channels relate: softmax (one class per voxel) or sigmoid "
                            "(multi-label; a bundle's Activations(sigmoid=True) sets it)")
    group.add_argument("--overlap", type=_overlap, metavar="F", help="sliding-window overlap in [0, 1)")
    group.add_argument("--blend-mode", choices=("constant", "gaussian"), help="sliding-window blending")
    group.add_argument("--padding-mode", choices=("constant", "replicate", "reflect", "circular"),
                       help="how an image smaller than the sliding window is padded up to it (constant: zeros)")
    group.add_argument("--bundle-override", action="append", default=[], metavar="ID=VALUE",
                       help="replace a value of a MONAI bundle's config, as MONAI's runner does with --ID VALUE "
                            "(e.g. device=cpu, network_def#in_channels=2, inferer#roi_size=[96,96,96]); "
                            "repeatable; VALUE is YAML/JSON, a $expression needs --trust-bundle")


def _overlap(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"--overlap must be a number in [0, 1); got {text!r}")
    return value


def bundle_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--bundle-override ID=VALUE`` options as ``{id: value}`` (see :func:`MedXAILib.model.bundle.parse_override`)."""
    from ..model.bundle import parse_override

    return dict(parse_override(pair) for pair in pairs)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The target options shared by every command that explains or evaluates a model output."""
    group = parser.add_argument_group("target (default: the predicted class of a classifier)")
    group.add_argument("--target-class", type=int, metavar="C", help="output class index")
    region = group.add_mutually_exclusive_group()
    region.add_argument("--target-predicted", action="store_true", help="the voxels predicted as the class")
    region.add_argument("--target-mask", metavar="MASK", help="label map: non-zero voxels (resampled onto the image)")
    region.add_argument("--target-box", metavar="I0,J0,K0,I1,J1,K1", type=ints(6, "--target-box"),
                        help="inclusive voxel corners")
    region.add_argument("--target-voxel", metavar="I,J,K", type=ints(3, "--target-voxel"))
    region.add_argument("--target-component", metavar="I,J,K", type=ints(3, "--target-component"),
                        help="the connected component of the predicted class containing this voxel")
    region.add_argument("--target-boundary", metavar="INNER,OUTER", type=floats(2, "--target-boundary"),
                        help="the band (mm inside, mm outside) around the predicted structure's boundary")
    score = group.add_mutually_exclusive_group()
    score.add_argument("--target-probability", action="store_true", help="explain the probability, not the logit")
    score.add_argument("--target-margin", action="store_true",
                       help="explain the margin: the class logit minus the strongest other logit")
    group.add_argument("--target-mean", action="store_true", help="average the score over the region (default sum)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--memory-budget``, ``--mixed-precision``, ``--seed``, ``--progress-json``, ``--quiet``."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--memory-budget", default=None, type=memory_budget, metavar="SIZE",
                        help="memory the run may use, e.g. 4GB or 500MB; sizes sliding-window and perturbation "
                             "batches (default auto: half the free VRAM on CUDA; half the free RAM, at most "
                             "4GB, on the CPU)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="run the network in float16 autocast on CUDA (faster, less exact; no effect on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def read_input(args: argparse.Namespace) -> Any:
    """The ``--image`` file(s) as one :class:`ImageVolume` (one channel per file)."""
    from ..io import read_image, read_images

    return read_image(args.image[0]) if len(args.image) == 1 else read_images(args.image)


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options of the command line as :func:`~MedXAILib.load_model` keyword arguments that are JSON
    values (:data:`MedXAILib.runs.request.MODEL_OPTIONS`: a run request or a cohort carries them); options
    left at their defaults are omitted."""
    steps: list[dict[str, Any]] = []
    if args.orientation:
        steps.append({"kind": "orientation", "axcodes": args.orientation})
    if args.spacing:
        steps.append({"kind": "spacing", "pixdim": list(args.spacing)})
    if args.window:
        steps.append({"kind": "scale_intensity_range", "a_min": args.window[0], "a_max": args.window[1],
                      "b_min": 0.0, "b_max": 1.0, "clip": True})
    options: dict[str, Any] = {
        "task": args.task, "roi_size": list(args.roi_size) if args.roi_size else None, "preprocessing": steps or None,
        "folds": args.folds, "configuration": args.configuration, "checkpoint": args.checkpoint,
        "mirroring": False if args.no_mirroring else None, "structure": getattr(args, "target_structure", None),
        "output_activation": args.output_activation, "overlap": args.overlap, "blend_mode": args.blend_mode,
        "padding_mode": args.padding_mode, "pad_divisible": args.pad_divisible,
        "bundle_overrides": bundle_overrides(args.bundle_override) or None,
    }
    return {name: value for name, value in options.items() if value is not None}


def model_from_args(args: argparse.Namespace) -> Any:
    """``load_model`` with the command line's model options; sets the run options (memory, precision) and
    resolves ``--target-structure`` to the class."""
    from ..model import load_model

    adapter = load_model(args.model, trust_bundle=args.trust_bundle, device=args.device, **model_options(args))
    adapter.memory_budget = getattr(args, "memory_budget", None)
    adapter.mixed_precision = bool(getattr(args, "mixed_precision", False))
    if args.target_structure:  # the class by name, in whichever option the command reads it from
        index = class_by_name(adapter.class_names, args.target_structure)
        for dest in ("target_class", "class_index"):
            if hasattr(args, dest):
                if getattr(args, dest) not in (None, index):
                    raise InputError(f"--target-structure {args.target_structure} is class {index}, not "
                                     f"{getattr(args, dest)}: give one of them")
                setattr(args, dest, index)
    return adapter


def target_from_args(args: argparse.Namespace, image: Any) -> Any:
    """The :class:`Target` the target options describe (masks resampled onto `image`)."""
    from ..io import read_label_map
    from ..target import Target

    score = "probability" if args.target_probability else "margin" if args.target_margin else "logit"
    common = dict(class_index=args.target_class, score=score, reduction="mean" if args.target_mean else "sum")
    if args.target_mask:
        labels = read_label_map(args.target_mask, reference=image).array[0]  # non-zero voxels; odd labels warned
        return Target(region="mask", mask=labels, **common)
    if args.target_box:
        return Target(region="box", box=args.target_box, **common)
    if args.target_voxel:
        return Target(region="voxel", voxel=args.target_voxel, **common)
    if args.target_component:
        return Target(region="component", voxel=args.target_component, **common)
    if args.target_boundary:
        return Target(region="boundary", band_mm=args.target_boundary, **common)
    return Target(region="predicted" if args.target_predicted else "class", **common)


def monitor_from_args(args: argparse.Namespace) -> Any:
    """A :class:`Monitor` that draws a bar on a terminal, or prints JSON lines with --progress-json."""
    from ..monitor import Monitor
    from . import progress

    if args.progress_json:
        sink = progress.json_lines()
    elif not args.quiet and sys.stderr.isatty():
        sink = progress.terminal_bar()
    else:
        sink = progress.silent
    return Monitor(sink, min_interval_s=0.1)


def finish(args: argparse.Namespace, written: Sequence[Path] = (), warnings: Sequence[str] = ()) -> int:
    """Commit the staged outputs together, then report them (and any caveats on stderr) as asked."""
    outputs = getattr(args, "outputs", None)
    if outputs is not None:
        written = outputs.commit() or outputs.final_paths(written)
    for warning in warnings:
        sys.stderr.write(f"medxai: warning: {warning}\n")
    if args.progress_json:
        print(json.dumps({"done": True, "outputs": [str(p) for p in written], "warnings": list(warnings)}),
              flush=True)
    elif not args.quiet:
        for path in written:
            print(f"wrote {path}")
    return EXIT_OK
