"""Pieces shared by the ``medxai`` subcommands: parsing, input/model/target options, progress, output.

Every subcommand that runs a model uses the same options and contracts as ``medxai explain``:
exit code 2 with one line on stderr for bad input, 130 for Ctrl-C, progress as a bar or JSON lines,
and no output file unless the whole job succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError

__all__ = [
    "EXIT_OK", "EXIT_BAD_INPUT", "EXIT_CANCELLED", "OUTPUT_SUFFIXES", "Parser", "fail", "ints", "floats",
    "parse_params", "check_output", "add_input_arguments", "add_target_arguments", "add_run_arguments",
    "read_input", "model_from_args", "target_from_args", "monitor_from_args", "finish",
]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
OUTPUT_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse already exits 2; keep the message short
        self.print_usage(sys.stderr)
        raise SystemExit(fail(message))


def fail(message: str) -> int:
    sys.stderr.write(f"medxai: error: {message}\n")
    return EXIT_BAD_INPUT


def ints(count: int, what: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: `count` comma-separated integers."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.replace(" ", "").split(","))
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated integers; got {text!r}")
        return values

    return parse


def floats(count: int, what: str) -> Callable[[str], tuple[float, ...]]:
    """An argparse type: `count` comma-separated numbers."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.replace(" ", "").split(","))
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers; got {text!r}")
        return values

    return parse


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` from repeated ``--param`` options."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--param needs NAME=VALUE; got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def check_output(out: Path, inputs: Sequence[str], suffixes: Sequence[str] = OUTPUT_SUFFIXES) -> None:
    """Refuse an output path with the wrong suffix, a folder, or one of the inputs."""
    if not str(out).lower().endswith(tuple(suffixes)):
        raise InputError(f"--out must end in one of {', '.join(suffixes)}; got {out.name}")
    for source in inputs:
        if Path(source).resolve() == out.resolve():
            raise InputError(f"--out {out} is an input file; MedXAI never overwrites its inputs")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--image`` (repeatable), ``--model``, ``--trust-bundle`` and the model override options."""
    parser.add_argument("--image", action="append", required=True, metavar="IMG",
                        help="image file (NIfTI, NRRD, MetaImage) or DICOM series folder; repeat for more "
                             "channels (resampled onto the first)")
    parser.add_argument("--model", required=True, help="TorchScript file, exported program (.pt2), MONAI bundle "
                        "folder or model spec JSON")
    parser.add_argument("--trust-bundle", action="store_true", help="allow a bundle's config to run code")
    group = parser.add_argument_group("model options (override what the model declares)")
    group.add_argument("--task", choices=("classification", "segmentation"))
    group.add_argument("--roi-size", metavar="X,Y,Z", type=ints(3, "--roi-size"), help="sliding-window ROI in voxels")
    group.add_argument("--orientation", metavar="AXCODES", help="reorient before the model, e.g. RAS")
    group.add_argument("--spacing", metavar="X,Y,Z", type=floats(3, "--spacing"),
                       help="resample to this spacing (mm) before the model")
    group.add_argument("--window", metavar="LOW,HIGH", type=floats(2, "--window"),
                       help="map intensities [LOW, HIGH] to [0, 1] with clipping before the model")


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
    parser.add_argument("--memory-budget", default="auto", metavar="SIZE",
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


def model_from_args(args: argparse.Namespace) -> Any:
    """``load_model`` with the command line's overrides and explicit preprocessing."""
    from ..model import Preprocessing, load_model

    steps: list[dict[str, Any]] = []
    if args.orientation:
        steps.append({"kind": "orientation", "axcodes": args.orientation})
    if args.spacing:
        steps.append({"kind": "spacing", "pixdim": args.spacing})
    if args.window:
        steps.append({"kind": "scale_intensity_range", "a_min": args.window[0], "a_max": args.window[1],
                      "b_min": 0.0, "b_max": 1.0, "clip": True})
    from ..model.memory import parse_budget

    adapter = load_model(args.model, trust_bundle=args.trust_bundle, device=args.device, task=args.task,
                         roi_size=args.roi_size, preprocessing=Preprocessing.from_config(steps) if steps else None)
    adapter.memory_budget = parse_budget(getattr(args, "memory_budget", None))
    adapter.mixed_precision = bool(getattr(args, "mixed_precision", False))
    return adapter


def target_from_args(args: argparse.Namespace, image: Any) -> Any:
    """The :class:`Target` the target options describe (masks resampled onto `image`)."""
    from ..io import read_label_map
    from ..target import Target

    score = "probability" if args.target_probability else "margin" if args.target_margin else "logit"
    common = dict(class_index=args.target_class, score=score, reduction="mean" if args.target_mean else "sum")
    if args.target_mask:
        mask = read_label_map(args.target_mask, reference=image).array[0] != 0
        return Target(region="mask", mask=mask, **common)
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


def finish(args: argparse.Namespace, written: Sequence[Path], warnings: Sequence[str] = ()) -> int:
    """Report the outputs (and any caveats on stderr) in the form the caller asked for."""
    for warning in warnings:
        sys.stderr.write(f"medxai: warning: {warning}\n")
    if args.progress_json:
        print(json.dumps({"done": True, "outputs": [str(p) for p in written], "warnings": list(warnings)}),
              flush=True)
    elif not args.quiet:
        for path in written:
            print(f"wrote {path}")
    return EXIT_OK
