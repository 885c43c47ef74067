"""The built-in demo: a synthetic CT-like volume and a tiny lesion classifier trained on the spot.

``medxai demo`` (and ``make demo``) runs it end to end without any download: it draws phantoms
with and without a spherical lesion, trains a small MONAI classifier on them for a few seconds
(deterministic with the seed), explains the lesion class on a held-out phantom with three methods
and writes the image, the attribution volumes, the model and a summary into the output folder.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .volume import ImageVolume

__all__ = ["synthetic_ct", "train_tiny_classifier", "run_demo"]

SHAPE = (32, 32, 24)
SPACING = (1.5, 1.5, 2.5)
WINDOW = (-200.0, 300.0)
CLASSIFIER_ARGS = {"in_shape": [1, *SHAPE], "classes": 2, "channels": [4, 8, 16], "strides": [2, 2, 2]}


def synthetic_ct(rng: np.random.Generator, lesion: bool) -> tuple[ImageVolume, np.ndarray]:
    """A body-like ellipsoid of soft tissue in air, optionally with a bright spherical lesion.

    Returns the volume (HU-like values, anisotropic spacing, non-zero origin) and the lesion mask.
    """
    ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SHAPE], indexing="ij")
    centre = (np.array(SHAPE) - 1) / 2
    body = ((ii - centre[0]) / 14) ** 2 + ((jj - centre[1]) / 12) ** 2 + ((kk - centre[2]) / 11) ** 2 <= 1
    array = np.where(body, 40.0, -1000.0) + rng.normal(0, 12, SHAPE)
    mask = np.zeros(SHAPE, bool)
    if lesion:
        radius = rng.uniform(2.5, 4.0)
        c = centre + rng.uniform(-5, 5, 3) * np.array([1, 1, 0.6])
        mask = ((ii - c[0]) ** 2 + (jj - c[1]) ** 2 + ((kk - c[2]) * SPACING[2] / SPACING[0]) ** 2) <= radius**2
        mask &= body
        array = np.where(mask, array + 110.0, array)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-24.0, -30.0, 15.0)
    return ImageVolume(array.astype(np.float32)[None], affine, channel_names=["CT"], meta={"source": "synthetic"}), mask


def train_tiny_classifier(seed: int = 0, steps: int = 200, log=None):
    """Train a MONAI ``Classifier`` to tell phantoms with a lesion from phantoms without one."""
    import torch
    from monai.networks.nets import Classifier

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Classifier(**CLASSIFIER_ARGS)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    lo, hi = WINDOW
    for step in range(steps):
        labels = rng.integers(0, 2, 8)
        batch = np.stack([synthetic_ct(rng, bool(y))[0].array for y in labels])
        x = torch.as_tensor(np.clip((batch - lo) / (hi - lo), 0, 1))
        loss = torch.nn.functional.cross_entropy(net(x), torch.as_tensor(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if log and (step + 1) % 50 == 0:
            log(f"  training step {step + 1}/{steps}: loss {loss.item():.3f}")
    return net.eval()


def run_demo(out: Path, quiet: bool = False, seed: int = 0) -> int:
    """Train, explain and write everything into `out`; print what to open."""
    from .engine import explain
    from .io import write_image
    from .model import Preprocessing, load_model, save_spec_model
    from .target import Target

    log = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log("MedXAI demo: training a tiny lesion classifier on synthetic CT phantoms ...")
    net = train_tiny_classifier(seed, log=log)
    spec = save_spec_model(
        net, "Classifier", CLASSIFIER_ARGS, out / "demo_classifier.json",
        task="classification", class_names=["no lesion", "lesion"], in_channels=1,
        preprocessing=[{"kind": "scale_intensity_range", "a_min": WINDOW[0], "a_max": WINDOW[1],
                        "b_min": 0.0, "b_max": 1.0, "clip": True}],
    )
    model = load_model(spec, device="cpu")
    image, mask = synthetic_ct(np.random.default_rng(seed + 1000), lesion=True)
    write_image(image, out / "image.nrrd")
    write_image(image.with_array(mask.astype(np.float32)), out / "lesion_mask.nrrd")
    summary: dict = {"image": "image.nrrd", "lesion_mask": "lesion_mask.nrrd", "model": spec.name, "methods": {}}
    for method, params in (("saliency", {}), ("input_x_gradient", {}), ("integrated_gradients", {"baseline": "min"})):
        log(f"Explaining the 'lesion' class with {method} ...")
        attribution = explain(image, model, method, Target(class_index=1), params, seed=seed)
        path = out / f"attribution_{method}.nrrd"
        attribution.save(path)
        inside = float(np.abs(attribution.summed)[mask].sum() / max(np.abs(attribution.summed).sum(), 1e-12))
        summary["methods"][method] = {
            "file": path.name,
            "share_of_abs_relevance_in_lesion": round(inside, 4),
            "lesion_share_of_volume": round(float(mask.mean()), 4),
            "prediction": attribution.provenance["prediction"],
            "diagnostics": attribution.provenance["diagnostics"],
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"\nDone in {time.perf_counter() - started:.1f} s. Open in 3D Slicer: {out / 'image.nrrd'} with an "
        f"attribution_*.nrrd as foreground; the summary is {out / 'summary.json'}.")
    for method, info in summary["methods"].items():
        log(f"  {method:22s} lesion holds {info['share_of_abs_relevance_in_lesion']:.1%} of |relevance| "
            f"({info['lesion_share_of_volume']:.1%} of the volume)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("medxai-out")))
