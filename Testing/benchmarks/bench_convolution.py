"""Batch-1 3D convolutions on the CPU: PyTorch's kernel choice against oneDNN (not a pytest test).

Run from the repository root::

    .venv/bin/python Testing/benchmarks/bench_convolution.py [--threads 2] [--rounds 7] [--layers-only]
    .venv/bin/python Testing/benchmarks/bench_convolution.py --norms

Part 1 times single ``nn.Conv3d`` layers of the shapes volumetric networks have at batch 1, forward
and input gradient, as PyTorch runs them and inside :func:`MedXAILib.model.convolution.onednn_convolutions`,
and prints which kernel PyTorch picked (``slow_conv3d`` or oneDNN) and the largest difference.

Part 2 times one forward+backward pass (the gradient of the output's sum with respect to the input) of
whole networks at batch 1 in four executions: PyTorch as it comes (NCDHW), channels-last-3D only,
oneDNN routing only, and :func:`MedXAILib.model.layout.fast_convolutions` (what MedXAI's passes use:
both, channels-last only where :func:`~MedXAILib.model.layout.channels_last` converts the network). Each
gradient is compared with the same pass in float64 (``err``: max |g - g64| / max |g64|). Networks: the
two shipped demo models, MONAI's DenseNet121 and UNet of ``bench_explain.py --targets``, MONAI's
DynUNet (nnU-Net's layout), BasicUNet and SegResNet at 96^3, seeded random weights. All times are
medians of ``--rounds`` interleaved rounds after a warm-up.

``--norms`` instead shows torch's batch-1 instance-norm backward with a channels-last output gradient
(at batch 1 and 2), and the gradients it gave where a network ran channels-last with PyTorch's kernels,
as MedXAI's passes did before networks with instance norm kept NCDHW (ADR 0007): a conv / instance norm
/ conv stack at 48^3 and the MONAI UNet of docs/scale.md's full-CT first look at 96^3, against float64.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from MedXAILib.model.convolution import onednn_convolutions  # noqa: E402
from MedXAILib.model.layout import channels_last, fast_convolutions, to_channels_last  # noqa: E402
from profile_whole_call import interleaved  # noqa: E402

#: (input shape, output channels, stride) of single layers, kernel 3, padding 1
LAYERS = [((1, 1, 96, 96, 96), 8, 2), ((1, 8, 48, 48, 48), 8, 1), ((1, 16, 24, 24, 24), 16, 1),
          ((1, 32, 96, 96, 96), 32, 1), ((1, 64, 24, 24, 24), 64, 1), ((1, 128, 12, 12, 12), 128, 1),
          ((1, 64, 6, 6, 6), 64, 1), ((1, 16, 48, 48, 48), 32, 2)]


def _kernel(run) -> str:
    from torch.profiler import profile

    with profile() as prof:
        run()
    names = {event.key for event in prof.key_averages()}
    return "slow_conv3d" if any("slow_conv" in n for n in names) else "oneDNN" if any(
        "mkldnn" in n for n in names) else "other"


def layers(rounds: int) -> None:
    print("single layers, kernel 3 (ms): forward / input gradient")
    print(f"{'input':22s} {'out':>4s} {'stride':>6s}  {'PyTorch kernel':14s} {'PyTorch':>16s} {'oneDNN':>16s}  "
          "max rel diff")
    torch.manual_seed(0)
    for shape, out_channels, stride in LAYERS:
        conv = torch.nn.Conv3d(shape[1], out_channels, 3, stride=stride, padding=1).requires_grad_(False)
        x = torch.randn(shape)

        def forward():
            with torch.no_grad():
                return conv(x)

        def gradient():
            z = x.clone().requires_grad_(True)
            return torch.autograd.grad(conv(z).sum(), z)[0]

        def routed(run):
            def inner():
                with onednn_convolutions(conv):
                    return run()
            return inner

        kernel = _kernel(forward)
        times = interleaved({"f": forward, "g": gradient, "rf": routed(forward), "rg": routed(gradient)}, rounds)
        diff = max(float((a - b).abs().max() / a.abs().max()) for a, b in
                   ((forward(), routed(forward)()), (gradient(), routed(gradient)())))
        print(f"{str(shape):22s} {out_channels:4d} {stride:6d}  {kernel:14s} "
              f"{times['f'] * 1e3:7.2f} / {times['g'] * 1e3:6.2f} {times['rf'] * 1e3:7.2f} / {times['rg'] * 1e3:6.2f}"
              f"  {diff:.1e}")


def _networks() -> list[tuple[str, torch.nn.Module, tuple]]:
    import bench_explain as bench
    from monai.networks import nets

    found = []
    for case in ("classifier", "segmenter", "densenet121", "unet"):
        network, _ = bench.build_network(case, HERE.parents[1] / "Resources" / "Models")
        found.append((case, network, (1, 1, *bench.case_grid(case, False)[0])))
    torch.manual_seed(0)
    found.append(("DynUNet (nnU-Net layout)", nets.DynUNet(3, 1, 3, kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2],
                                                            upsample_kernel_size=[2] * 4, norm_name="instance"),
                  (1, 1, 96, 96, 96)))
    found.append(("BasicUNet", nets.BasicUNet(3, 1, 3), (1, 1, 96, 96, 96)))
    found.append(("SegResNet", nets.SegResNet(3, init_filters=16, in_channels=1, out_channels=3), (1, 1, 96, 96, 96)))
    return found


def networks(rounds: int) -> None:
    print("\nwhole networks, one forward+backward at batch 1 (ms), error against float64")
    executions = {"PyTorch": lambda n: contextlib.nullcontext(), "channels-last": channels_last,
                  "oneDNN": onednn_convolutions, "fast_convolutions": fast_convolutions}
    print(f"{'network':26s} " + " ".join(f"{name:>24s}" for name in executions))
    for name, network, shape in _networks():
        network = network.eval().requires_grad_(False)
        torch.manual_seed(1)
        x = torch.rand(shape)

        def gradient(execution, dtype=torch.float32):
            def run():
                with execution(network):
                    z = (to_channels_last(x) if execution is not executions["PyTorch"] else x).to(dtype)
                    z.requires_grad_(True)
                    return torch.autograd.grad(network(z).sum(), z)[0]
            return run

        network.double()
        reference = gradient(executions["PyTorch"], torch.float64)().float()
        network.float()
        scale = float(reference.abs().max())
        runs = {label: gradient(execution) for label, execution in executions.items()}
        errors = {label: float((run() - reference).abs().max()) / scale for label, run in runs.items()}
        times = interleaved(runs, rounds)
        print(f"{name:26s} " + " ".join(f"{times[label] * 1e3:9.1f} (err {errors[label]:.0e})" for label in runs))


def _forced_channels_last(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input gradient of the output's second channel squared with every 5-D weight and the input
    channels-last, PyTorch's kernels: what MedXAI's passes did before instance norm kept NCDHW."""
    saved = [(p, p.data) for p in network.parameters() if p.ndim == 5]
    try:
        for p, data in saved:
            p.data = data.contiguous(memory_format=torch.channels_last_3d)
        z = to_channels_last(x).requires_grad_(True)
        return torch.autograd.grad(network(z)[:, 1].square().sum(), z)[0]
    finally:
        for p, data in saved:
            p.data = data


def norms() -> None:
    """torch's instance-norm backward with a channels-last output gradient, and what it did to gradients."""
    from monai.networks.nets import UNet

    print("\ninstance norm, backward with a channels-last output gradient (max |g - g_NCDHW| / max |g_NCDHW|)")
    torch.manual_seed(0)
    for batch in (1, 2):
        norm = torch.nn.InstanceNorm3d(16, affine=True)
        x = torch.randn(batch, 16, 24, 24, 24, requires_grad=True)
        g = torch.randn(x.shape)
        expected = torch.autograd.grad(norm(x), x, g)[0]
        found = torch.autograd.grad(norm(x), x, g.contiguous(memory_format=torch.channels_last_3d))[0]
        print(f"  batch {batch}: {float((found - expected).abs().max() / expected.abs().max()):.1e}")
    print("gradients (float32, PyTorch's kernels) against float64: channels-last weights and input, and NCDHW")
    stack = torch.nn.Sequential(torch.nn.Conv3d(1, 16, 3, padding=1), torch.nn.InstanceNorm3d(16, affine=True),
                                torch.nn.PReLU(), torch.nn.Conv3d(16, 16, 3, padding=1),
                                torch.nn.InstanceNorm3d(16), torch.nn.Conv3d(16, 2, 3, padding=1))
    unet = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=1, norm="instance")  # docs/scale.md's full-CT network
    for name, network, size in (("conv / instance norm / conv, 48^3", stack, 48),
                                ("MONAI UNet with instance norm, 96^3", unet, 96)):
        network = network.eval().requires_grad_(False)
        x = torch.rand(1, 1, size, size, size)
        found = _forced_channels_last(network, x).double()
        z = x.clone().requires_grad_(True)
        ncdhw = torch.autograd.grad(network(z)[:, 1].square().sum(), z)[0].double()
        network.double()
        z = x.double().requires_grad_(True)
        reference = torch.autograd.grad(network(z)[:, 1].square().sum(), z)[0]
        network.float()
        scale = float(reference.abs().max())
        print(f"  {name}: channels-last {float((found - reference).abs().max()) / scale:.1e}, "
              f"NCDHW {float((ncdhw - reference).abs().max()) / scale:.1e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--layers-only", action="store_true")
    ap.add_argument("--norms", action="store_true", help="only the instance-norm checks (ADR 0007)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), oneDNN available: "
          f"{torch.backends.mkldnn.is_available()}")
    if args.norms:
        norms()
        return 0
    layers(args.rounds)
    if not args.layers_only:
        networks(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
