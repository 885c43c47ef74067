"""Where a whole explain() call spends its time beyond the network (not a pytest test).

Run from the repository root::

    .venv/bin/python Testing/benchmarks/profile_whole_call.py [--case segmenter] [--method saliency]
        [--rounds 25] [--threads 2]
    .venv/bin/python Testing/benchmarks/profile_whole_call.py --argmax

The first form builds a case of ``bench_explain.py --targets`` (the same model, phantom and target) and
times, interleaved over ``--rounds`` rounds (medians): the whole call; for ``grad_cam`` the same call
with the network kept in NCDHW and Captum's ``LayerGradCam`` with its interpolation, otherwise one bare
forward+backward. Then it profiles 10 whole calls with cProfile and prints MedXAILib's functions by
cumulative time and the costliest functions by their own time. ``--argmax`` times the exact ways of counting a segmenter output's per-voxel argmax labels (the
provenance's prediction summary) on an (8, 96, 96, 64) channels-last output, each checked against the
current one.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
MODELS = HERE.parents[1] / "Resources" / "Models"


def interleaved(runs: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each run, the order rotating every round, after one warm-up each."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            started = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def whole_call(case: str, method: str, rounds: int) -> None:
    sys.path.insert(0, str(HERE))
    import bench_explain as bench
    from MedXAILib import explain

    s = bench.setup(case, bench.make_case_data(case, False, MODELS), "cpu", MODELS)
    network = s.adapter.network

    def medxai():
        explain(s.image, s.adapter, method, s.target)

    runs = {"MedXAI": medxai}
    if method == "grad_cam":
        from captum.attr import LayerAttribution, LayerGradCam

        cam = LayerGradCam(s.f, s.layer_module)

        def ncdhw():
            network.keep_layout = True
            try:
                medxai()
            finally:
                del network.keep_layout

        runs["MedXAI, network kept in NCDHW"] = ncdhw
        runs["Captum LayerGradCam + interpolation"] = lambda: LayerAttribution.interpolate(
            cam.attribute(s.x, relu_attributions=True), tuple(s.x.shape[2:]), "trilinear")
    else:
        runs["forward+backward"] = lambda: s.f(bench.leaf_input(s)).sum().backward()
    for name, seconds in interleaved(runs, rounds).items():
        print(f"{name:40s} {seconds * 1e3:8.1f} ms")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(10):
        medxai()
    profile.disable()
    print("\ncProfile of 10 whole calls (seconds for all 10): MedXAILib's functions by cumulative time, then "
          "everything by own time")
    stats = pstats.Stats(profile)
    stats.sort_stats("cumulative").print_stats("MedXAILib", 25)
    stats.sort_stats("tottime").print_stats(12)


def argmax_routes(rounds: int) -> None:
    torch.manual_seed(0)
    scores = torch.randn(1, 8, 96, 96, 64).contiguous(memory_format=torch.channels_last_3d)[0]
    flat = scores.permute(1, 2, 3, 0).reshape(-1, 8)  # a view: the channels innermost

    def current():  # MedXAILib.provenance.summarise_prediction's route
        return torch.bincount(scores.max(0)[1].flatten(), minlength=8)

    def compare():  # each voxel's maximum, the channels equal to it, a column sum (exact without ties)
        return (flat == flat.amax(1, keepdim=True)).float().sum(0).long()

    def tournament():  # adjacent pairs, the lower index winning ties, three rounds
        a, b = flat[:, 0::2], flat[:, 1::2]
        g1, v1 = b > a, torch.maximum(a, b)
        a, b = v1[:, 0::2], v1[:, 1::2]
        g2, v2 = b > a, torch.maximum(a, b)
        i3 = (v2[:, 1] > v2[:, 0]).long()
        k2 = 2 * i3 + torch.gather(g2, 1, i3[:, None])[:, 0].long()
        return torch.bincount(2 * k2 + torch.gather(g1, 1, k2[:, None])[:, 0].long(), minlength=8)

    def equal_bytes():  # the 8 booleans "equals the maximum" of a voxel read as one int64: its lowest set
        # byte is the first maximum; that power of 256 modulo 19 (256 has order 9 there) names the class
        found = (flat == flat.amax(1, keepdim=True)).view(torch.int64).view(-1)
        return torch.bincount((found & -found) % 19, minlength=19)[[1, 9, 5, 7, 6, 16, 11, 4]]

    def pooled():  # max pooling over the 8 channels of each voxel, returning indices
        return torch.bincount(F.max_pool1d(flat[:, None], 8, return_indices=True)[1].flatten(), minlength=8)

    array, contiguous = flat.numpy(), scores.contiguous()
    routes = {"max(0) + bincount (current)": current, "amax, compare, column sum": compare,
              "pairwise tournament": tournament, "amax, compare, bytes as int64": equal_bytes,
              "max_pool1d indices + bincount": pooled,
              "topk(1) + bincount": lambda: torch.bincount(flat.topk(1, 1)[1].flatten(), minlength=8),
              "NumPy argmax + bincount": lambda: torch.from_numpy(np.bincount(array.argmax(1), minlength=8)),
              "argmax(0) in NCDHW": lambda: torch.bincount(contiguous.argmax(0).flatten(), minlength=8)}
    expected = current()
    for name, route in routes.items():
        assert torch.equal(route().long(), expected), name
    for name, seconds in interleaved(routes, rounds).items():
        print(f"{name:40s} {seconds * 1e3:8.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="segmenter", help="a case of bench_explain.py")
    ap.add_argument("--method", default="saliency")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--argmax", action="store_true", help="time the prediction summary's argmax routes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.argmax:
        argmax_routes(args.rounds)
    else:
        whole_call(args.case, args.method, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
