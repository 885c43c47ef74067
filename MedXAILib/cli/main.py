"""The ``medxai`` command line (also ``python -m MedXAILib``).

Exit codes: 0 success; 2 bad input (a one-line reason on stderr, no traceback, no output file);
130 cancelled (Ctrl-C or SIGTERM, no output file); 1 an unexpected internal error.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import __version__
from ..errors import Cancelled, InputError, MedXAIError
from ..methods import METHODS
from ..params import param_specs
from . import progress

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
OUTPUT_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse already exits 2; keep the message short
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(message))


def _fail(message: str) -> int:
    sys.stderr.write(f"medxai: error: {message}\n")
    return EXIT_BAD_INPUT


def _ints(text: str, count: int, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated integers; got {text!r}") from None
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated integers; got {text!r}")
    return values


def _floats(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medxai", description="Explain MONAI/PyTorch models on CT, MRI and PET volumes.")
    parser.add_argument("--version", action="version", version=f"medxai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ex = sub.add_parser("explain", help="compute an attribution volume", description="Compute an attribution "
                        "volume on the input grid and write it with the input's geometry and the provenance.")
    ex.add_argument("--image", action="append", required=True, metavar="IMG",
                    help="image file (NIfTI, NRRD, MetaImage) or DICOM series folder; repeat for more channels "
                         "(resampled onto the first)")
    ex.add_argument("--model", required=True, help="TorchScript file, exported program (.pt2), MONAI bundle folder "
                    "or model spec JSON")
    ex.add_argument("--trust-bundle", action="store_true", help="allow a bundle's config to run code")
    ex.add_argument("--method", default="integrated_gradients", help="method name (see 'medxai methods')")
    ex.add_argument("--param", action="append", default=[], metavar="K=V", help="method parameter; repeatable")
    tgt = ex.add_argument_group("target (default: the predicted class of a classifier)")
    tgt.add_argument("--target-class", type=int, metavar="C", help="output class index")
    region = tgt.add_mutually_exclusive_group()
    region.add_argument("--target-predicted", action="store_true", help="the voxels predicted as the class")
    region.add_argument("--target-mask", metavar="MASK", help="label map: non-zero voxels (resampled onto the image)")
    region.add_argument("--target-box", metavar="I0,J0,K0,I1,J1,K1",
                        type=lambda t: _ints(t, 6, "--target-box"), help="inclusive voxel corners")
    region.add_argument("--target-voxel", metavar="I,J,K", type=lambda t: _ints(t, 3, "--target-voxel"))
    region.add_argument("--target-component", metavar="I,J,K", type=lambda t: _ints(t, 3, "--target-component"),
                        help="the connected component of the predicted class containing this voxel")
    tgt.add_argument("--target-probability", action="store_true", help="explain the probability, not the logit")
    tgt.add_argument("--target-mean", action="store_true", help="average the score over the region (default sum)")
    mdl = ex.add_argument_group("model options (override what the model declares)")
    mdl.add_argument("--task", choices=("classification", "segmentation"))
    mdl.add_argument("--roi-size", metavar="X,Y,Z", type=lambda t: _ints(t, 3, "--roi-size"),
                     help="sliding-window ROI in voxels")
    mdl.add_argument("--orientation", metavar="AXCODES", help="reorient before the model, e.g. RAS")
    mdl.add_argument("--spacing", metavar="X,Y,Z", type=lambda t: _floats(t, 3, "--spacing"),
                     help="resample to this spacing (mm) before the model")
    mdl.add_argument("--window", metavar="LOW,HIGH", type=lambda t: _floats(t, 2, "--window"),
                     help="map intensities [LOW, HIGH] to [0, 1] with clipping before the model")
    ex.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--out", required=True, help=f"attribution file ({', '.join(OUTPUT_SUFFIXES)})")
    ex.add_argument("--json", metavar="SUMMARY", help="also write a JSON summary (provenance, prediction, stats)")
    ex.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout")
    ex.add_argument("--quiet", action="store_true", help="no progress bar")

    la = sub.add_parser("layers", help="list the layers a CAM method can use, and the automatic choice",
                        description="List the convolutional layers of a model (name, type, output shape on an "
                        "example input) and mark the layer CAM methods use when 'layer' is left empty.")
    la.add_argument("--model", required=True, help="model spec JSON, MONAI bundle folder, TorchScript or .pt2 file")
    la.add_argument("--image", action="append", metavar="IMG",
                    help="example input (after the model's preprocessing; its first window for sliding-window "
                         "models); default: zeros of the model's ROI size, or a 64^3 cube; repeat for channels")
    la.add_argument("--trust-bundle", action="store_true", help="allow a bundle's config to run code")
    la.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    la.add_argument("--json", action="store_true", help="machine-readable output")

    me = sub.add_parser("methods", help="list the attribution methods and their parameters")
    me.add_argument("--json", action="store_true", help="machine-readable output")

    de = sub.add_parser("demo", help="explain a built-in synthetic volume with a built-in tiny model")
    de.add_argument("--out", default="medxai-out", help="output folder (default ./medxai-out)")
    de.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if args.command == "methods":
            return _cmd_methods(args)
        if args.command == "layers":
            return _cmd_layers(args)
        if args.command == "demo":
            from ..demo import run_demo

            return run_demo(Path(args.out), quiet=args.quiet)
        return _cmd_explain(args)
    except (KeyboardInterrupt, Cancelled):
        sys.stderr.write("\nmedxai: cancelled; nothing was written\n")
        return EXIT_CANCELLED
    except MedXAIError as exc:
        return _fail(str(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _cmd_methods(args: argparse.Namespace) -> int:
    entries = []
    for info in METHODS:
        specs = param_specs(info.params)
        entries.append({"name": info.name, "title": info.title, "family": info.family, "tasks": list(info.tasks),
                        "summary": info.summary, "reference": info.reference,
                        "parameters": [{"name": s.name, "type": s.type.__name__, "default": s.default,
                                        "range": s.range, "choices": s.choices, "unit": s.unit, "help": s.help}
                                       for s in specs]})
        if not args.json:
            print(f"{info.name}  [{info.family}; {', '.join(info.tasks)}]  {info.title}")
            print(f"    {info.summary}")
            print(f"    Reference: {info.reference}")
            for spec in specs:
                print(f"    --param {spec.describe()}")
            print()
    if args.json:
        print(json.dumps(entries, indent=2))
    return EXIT_OK


def _cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from ..io import read_image, read_images
    from ..methods.layers import default_layers, example_input
    from ..model import load_model

    model = load_model(args.model, trust_bundle=args.trust_bundle, device=args.device)
    network_input = None
    source = "zeros"
    if args.image:
        image = read_image(args.image[0]) if len(args.image) == 1 else read_images(args.image)
        model.check_input(image.n_channels)
        bound = model.bind(image.affine, image.shape)
        x = torch.as_tensor(image.array, device=model.device).unsqueeze(0)
        with torch.no_grad():
            network_input = model.preprocessing.apply(x, bound.grids)
        source = "image" if not model.roi_size else "image (first window)"
    example = example_input(model.in_channels, model.roi_size, network_input=network_input, device=model.device)
    layers, automatic = default_layers(model.network, example)
    task = model.task
    if task is None:
        with torch.no_grad():
            out = model.network(example)
        out = out[0] if isinstance(out, (tuple, list)) else out
        task = "classification" if out.ndim == 2 else "segmentation" if out.ndim == example.ndim else None
    if args.json:
        print(json.dumps({"model": model.model_id, "task": task, "example_input": {"source": source,
                          "shape": list(example.shape)}, "automatic": automatic,
                          "layers": [dict(info.describe(), automatic_for=[t for t, n in automatic.items()
                                                                          if n == info.name])
                                     for info in layers]}, indent=2))
        return EXIT_OK
    print(f"{model.model_id}: task {task or 'unknown'}; example input {source} {tuple(example.shape)}")
    width = max(len(info.name) for info in layers)
    for info in layers:
        marks = [f"auto ({t})" for t, n in automatic.items() if n == info.name and (task is None or t == task)]
        extra = f"  runs {info.calls}x" if info.calls != 1 else ""
        alias = f"  = {', '.join(info.aliases)}" if info.aliases else ""
        print(f"  {info.name:<{width}}  {info.type:<20} {str(tuple(info.output_shape)):<24}"
              f"{'  <- ' + ', '.join(marks) if marks else ''}{extra}{alias}")
    for t, name in automatic.items():
        if task is None or t == task:
            print(f"automatic layer for {t}: {name}")
    return EXIT_OK


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--param needs NAME=VALUE; got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _check_output(out: Path, inputs: Sequence[str]) -> None:
    if not str(out).lower().endswith(OUTPUT_SUFFIXES):
        raise InputError(f"--out must end in one of {', '.join(OUTPUT_SUFFIXES)}; got {out.name}")
    for source in inputs:
        if Path(source).resolve() == out.resolve():
            raise InputError(f"--out {out} is an input file; MedXAI never overwrites its inputs")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name")


def _cmd_explain(args: argparse.Namespace) -> int:
    from ..engine import explain
    from ..io import read_image, read_images, read_label_map
    from ..model import Preprocessing, load_model
    from ..monitor import Monitor
    from ..target import Target
    from .summary import write_summary

    out = Path(args.out)
    _check_output(out, args.image)
    METHODS.get(args.method)  # unknown names fail before anything heavy runs
    params = _parse_params(args.param)
    image = read_image(args.image[0]) if len(args.image) == 1 else read_images(args.image)

    steps = []
    if args.orientation:
        steps.append({"kind": "orientation", "axcodes": args.orientation})
    if args.spacing:
        steps.append({"kind": "spacing", "pixdim": args.spacing})
    if args.window:
        steps.append({"kind": "scale_intensity_range", "a_min": args.window[0], "a_max": args.window[1],
                      "b_min": 0.0, "b_max": 1.0, "clip": True})
    model = load_model(args.model, trust_bundle=args.trust_bundle, device=args.device, task=args.task,
                       roi_size=args.roi_size, preprocessing=Preprocessing.from_config(steps) if steps else None)

    score = "probability" if args.target_probability else "logit"
    reduction = "mean" if args.target_mean else "sum"
    common = dict(class_index=args.target_class, score=score, reduction=reduction)
    if args.target_mask:
        mask = read_label_map(args.target_mask, reference=image).array[0] != 0
        target = Target(region="mask", mask=mask, **common)
    elif args.target_box:
        target = Target(region="box", box=args.target_box, **common)
    elif args.target_voxel:
        target = Target(region="voxel", voxel=args.target_voxel, **common)
    elif args.target_component:
        target = Target(region="component", voxel=args.target_component, **common)
    elif args.target_predicted:
        target = Target(region="predicted", **common)
    else:
        target = Target(region="class", **common)

    if args.progress_json:
        sink = progress.json_lines()
    elif not args.quiet and sys.stderr.isatty():
        sink = progress.terminal_bar()
    else:
        sink = progress.silent
    monitor = Monitor(sink, min_interval_s=0.1)
    attribution = explain(image, model, args.method, target, params, seed=args.seed, monitor=monitor)
    written = attribution.save(out)
    if args.json:
        written += write_summary(attribution, Path(args.json), written)
    if args.progress_json:
        print(json.dumps({"done": True, "outputs": [str(p) for p in written]}), flush=True)
    elif not args.quiet:
        for path in written:
            print(f"wrote {path}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
