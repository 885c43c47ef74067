"""``medxai layers``: the layers a CAM method can use, and the automatic choice per task."""

from __future__ import annotations

import argparse
import json

from . import common
from .common import EXIT_OK

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("layers", help="list the layers a CAM method can use, and the automatic choice",
                            description="List the convolutional layers of a model (name, type, output shape on "
                            "an example input) and mark the layer CAM methods use when 'layer' is left empty.")
    parser.add_argument("--model", required=True, help="model spec JSON, MONAI bundle folder, TorchScript or .pt2 file")
    parser.add_argument("--image", action="append", metavar="IMG",
                        help="example input (after the model's preprocessing; its first window for sliding-window "
                             "models); default: zeros of the model's ROI size, or a 64^3 cube; repeat for channels")
    parser.add_argument("--trust-bundle", action="store_true", help="allow a bundle's config to run code")
    parser.add_argument("--bundle-override", action="append", default=[], metavar="ID=VALUE",
                        help="replace a value of a MONAI bundle's config (as in 'medxai explain'); repeatable")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    common.declare_io(parser, ("image", "model"), [])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..io import read_image, read_images
    from ..methods.layers import default_layers, example_input
    from ..model import load_model

    model = load_model(args.model, trust_bundle=args.trust_bundle, device=args.device,
                       bundle_overrides=common.bundle_overrides(args.bundle_override))
    network_input = None
    source = "zeros"
    if args.image:
        image = read_image(args.image[0]) if len(args.image) == 1 else read_images(args.image)
        model.check_input(image.n_channels)
        bound = model.bind(image.affine, image.shape, image.array)
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
