"""Training of the demo autoencoder behind the ``latent`` counterfactual generator, and its card.

``python -m MedXAILib.demo.training.autoencoder`` trains a tiny 3D ``monai.networks.nets.AutoencoderKL``
(Rombach et al. 2022, "High-resolution image synthesis with latent diffusion models", CVPR; the
KL-regularised autoencoder of latent diffusion) on crops of freshly generated CT phantoms
(:func:`MedXAILib.demo.samples.ct_phantom`), deterministically on CPU in a few minutes, and writes
``demo_autoencoder.json`` (spec), ``demo_autoencoder.pt`` (state dict) and ``demo_autoencoder.md``
(model card) into ``Resources/Models`` (or ``--out``). Nothing is downloaded.

The latent generator (:mod:`MedXAILib.counterfactual.latent`) follows Cohen et al. 2021 (Latent
Shift): it shifts the latent code of the image and adds the decoded change to the image.

The spec format, :func:`save_autoencoder` and :func:`load_autoencoder` live with the generator that
reads them (:mod:`MedXAILib.counterfactual.autoencoder`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ...counterfactual.autoencoder import (INTENSITY, NAME, build_autoencoder, default_autoencoder_path,
                                          save_autoencoder)
from ...io import write_atomic

__all__ = ["CROP", "EVAL_SEEDS", "training_case", "train_autoencoder", "evaluate_autoencoder", "train_and_write",
           "main"]

Log = Callable[[str], None]

CROP = (48, 48, 32)  # training crops (voxels), multiples of the downsampling factor 4
EVAL_SEEDS = tuple(range(3_000_000, 3_000_004))
TRAIN_SEED_OFFSET = 70_000  # training phantoms: seed * 100_000 + 70_000 + i (apart from the other demo models)
KL_WEIGHT = 1e-6  # as in MONAI's latent-diffusion tutorials: a nearly plain autoencoder, smooth latents


def training_case(seed: int) -> tuple[Any, np.ndarray]:
    """One training phantom: 0-3 lesions (liver three times as likely as spleen, kidney or lung),
    a grid rotation of up to 8 degrees and 10-20 HU noise, all drawn from `seed`."""
    from ..samples.phantom import ct_phantom

    rng = np.random.default_rng([int(seed), 3])
    volume, labels, _ = ct_phantom(
        int(seed), n_lesions=int(rng.integers(0, 4)),
        lesion_organs=("liver", "liver", "liver", "spleen", "kidney", "lung"),
        rotation_deg=float(rng.uniform(-8.0, 8.0)), noise_hu=float(rng.uniform(10.0, 20.0)))
    return volume, labels


def _normalise(array: np.ndarray) -> np.ndarray:
    low, high = INTENSITY["clip"]
    return np.clip((array - INTENSITY["offset"]) / INTENSITY["scale"], low, high).astype(np.float32)


def _window_hu() -> tuple[float, float]:
    low, high = INTENSITY["clip"]
    return INTENSITY["offset"] + low * INTENSITY["scale"], INTENSITY["offset"] + high * INTENSITY["scale"]


def train_autoencoder(seed: int = 0, steps: int = 400, n_phantoms: int = 16, batch_size: int = 2,
                      learning_rate: float = 3e-3, log: Log = print) -> tuple[Any, dict[str, Any]]:
    """Train the autoencoder on random crops of `n_phantoms` training phantoms (L1 + KL loss).

    Half of the crops are centred on a random voxel of the liver, spleen, kidney or a lesion (where
    the lesion classifiers look), the others anywhere. Deterministic for a seed on one platform
    (one CPU thread, ``torch.use_deterministic_algorithms``).

    Returns:
        ``(network in eval mode, training record)``.
    """
    import torch

    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(seed)
        started = time.perf_counter()
        seeds = [seed * 100_000 + TRAIN_SEED_OFFSET + i for i in range(n_phantoms)]
        pool = []
        for s in seeds:
            volume, labels = training_case(s)
            focus = np.flatnonzero(np.isin(labels, (2, 3, 4, 7)))  # liver, spleen, kidney, lesion
            pool.append((torch.as_tensor(_normalise(volume.array)), labels.shape, focus))
        log(f"  {NAME}: {n_phantoms} training phantoms in {time.perf_counter() - started:.0f} s")
        net = build_autoencoder()
        optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=learning_rate / 20)
        rng = np.random.default_rng([seed, 13])
        net.train()
        for step in range(steps):
            crops = []
            for i in rng.choice(n_phantoms, size=batch_size, replace=False):
                x, shape, focus = pool[int(i)]
                if rng.random() < 0.5 and len(focus):
                    centre = np.array(np.unravel_index(int(focus[rng.integers(len(focus))]), shape))
                else:
                    centre = np.array([int(rng.integers(n)) for n in shape])
                start = np.clip(centre - np.asarray(CROP) // 2, 0, np.asarray(shape) - np.asarray(CROP))
                a, b, c = (int(v) for v in start)
                crops.append(x[:, a:a + CROP[0], b:b + CROP[1], c:c + CROP[2]])
            batch = torch.stack(crops)
            reconstruction, mu, sigma = net(batch)
            l1 = (reconstruction - batch).abs().mean()
            kl = 0.5 * (mu * mu + sigma * sigma - torch.log(sigma * sigma) - 1).flatten(1).sum(1).mean()
            loss = l1 + KL_WEIGHT * kl
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if (step + 1) % max(1, steps // 10) == 0:
                log(f"  {NAME}: step {step + 1}/{steps}, L1 {l1.item() * INTENSITY['scale']:.1f} HU, "
                    f"KL {kl.item():.0f}")
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
    record = {"train_seeds": [seeds[0], seeds[-1]], "n_train_phantoms": n_phantoms, "steps": steps,
              "batch_size": batch_size, "crop": list(CROP), "learning_rate": learning_rate, "kl_weight": KL_WEIGHT,
              "seed": seed, "threads": 1, "train_seconds": round(seconds, 1),
              "n_parameters": int(sum(p.numel() for p in net.parameters()))}
    return net.eval(), record


def evaluate_autoencoder(net: Any, seeds: Sequence[int] = EVAL_SEEDS) -> dict[str, Any]:
    """Reconstruction error on held-out default phantoms ``ct_phantom(seed)`` (two liver lesions each).

    Returns:
        ``{"window_hu", "mae_hu_body", "mae_hu_liver", "lesion_contrast_hu": {"image", "reconstruction"},
        "seeds"}``: mean absolute error inside the body (against the image clipped to the network's
        window, all it sees) and in the liver, and the mean lesion-minus-liver contrast in the image and
        in its reconstruction (how much of a lesion the latent code keeps).
    """
    import torch

    from ..samples.phantom import ct_phantom

    body, liver, contrast_image, contrast_rec = [], [], [], []
    for seed in seeds:
        volume, labels, _ = ct_phantom(int(seed))
        with torch.no_grad():
            x = torch.as_tensor(_normalise(volume.array))[None]
            mu, _ = net.encode(x)
            rec = net.decode(mu)[0, 0].numpy() * INTENSITY["scale"] + INTENSITY["offset"]
        img = volume.array[0]
        err = np.abs(rec - np.clip(img, *_window_hu()))
        body.append(float(err[labels > 0].mean()))
        liver.append(float(err[labels == 2].mean()))
        if np.any(labels == 7):
            contrast_image.append(float(img[labels == 7].mean() - img[labels == 2].mean()))
            contrast_rec.append(float(rec[labels == 7].mean() - rec[labels == 2].mean()))
    return {"window_hu": list(_window_hu()), "mae_hu_body": round(float(np.mean(body)), 2),
            "mae_hu_liver": round(float(np.mean(liver)), 2),
            "lesion_contrast_hu": {"image": round(float(np.mean(contrast_image)), 2),
                                   "reconstruction": round(float(np.mean(contrast_rec)), 2)},
            "seeds": [int(s) for s in seeds]}


def _reproduce(seed: int, steps: int, n_phantoms: int) -> str:
    extra = f" --seed {seed}" if seed else ""
    extra += f" --steps {steps}" if steps != 400 else ""
    extra += f" --phantoms {n_phantoms}" if n_phantoms != 16 else ""
    return f"python -m MedXAILib.demo.training.autoencoder --out Resources/Models{extra}"


def _card(spec: dict[str, Any], weights: Path) -> str:
    t, m = spec["training"], spec["metrics"]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return "\n".join([
        f"# Demo autoencoder for latent counterfactuals (`{NAME}`)", "",
        f"{spec['description']} Spec `{NAME}.json`, weights `{NAME}.pt` ({weights.stat().st_size / 1024:.0f} KiB, "
        f"{t['n_parameters']:,} parameters, sha256 `{digest[:16]}…`).",
        "Used by the `latent` counterfactual generator (`medxai counterfactual --generator latent`); load it with "
        "`MedXAILib.counterfactual.autoencoder.load_autoencoder()`.", "",
        "## Task", "",
        f"Encode a CT volume (one channel, HU) into a {spec['downsampling']}x downsampled latent code with "
        f"{spec['network']['args']['latent_channels']} channels and decode it back. "
        "The latent generator shifts the code to change a model's prediction and adds the decoded change to the "
        "image (Cohen et al. 2021, *Gifsplanation via Latent Shift*, MIDL, arXiv:2102.09475).", "",
        "## Data", "",
        f"Training: {t['n_train_phantoms']} phantoms `MedXAILib.demo.training.autoencoder.training_case(s)`, seeds "
        f"{t['train_seeds'][0]} to {t['train_seeds'][1]}: `MedXAILib.demo.samples.ct_phantom(s, ...)` (96 x 96 x 64 voxels "
        "of 2 x 2 x 3 mm) with 0-3 lesions (liver three times as likely as spleen, kidney or lung), grid rotations "
        "of up to 8 degrees and 10-20 HU noise. Random crops of "
        f"{' x '.join(map(str, t['crop']))} voxels, half centred on liver, spleen, kidney or lesion.",
        f"Evaluation: the default phantoms `ct_phantom(s)` (two liver lesions, 15 HU noise) for the held-out seeds "
        f"{m['seeds'][0]} to {m['seeds'][-1]}.", "",
        "## Architecture", "", "`monai.networks.nets.AutoencoderKL` with arguments:", "", "```json",
        json.dumps(spec["network"]["args"], indent=2), "```", "",
        f"Input: (HU - {spec['intensity']['offset']:g}) / {spec['intensity']['scale']:g}, clipped to "
        f"{spec['intensity']['clip']}; shapes must be multiples of "
        f"{spec['downsampling']} (the generator pads by edge replication).", "",
        "## Training", "",
        f"Adam, learning rate {t['learning_rate']:g} with cosine decay to 1/20 of it, {t['steps']} steps of batch "
        f"{t['batch_size']}; loss: mean absolute error + {t['kl_weight']:g} x KL divergence of the latent code. CPU, "
        f"{t['threads']} thread, `torch.manual_seed({t['seed']})`, `torch.use_deterministic_algorithms(True)`. "
        f"Training took {t['train_seconds']:.0f} s (including drawing the phantoms) on {platform.machine()} with "
        + ", ".join(f"{k} {v}" for k, v in t["versions"].items()) + ".", "",
        "## Metrics on held-out phantoms", "",
        "| metric | value |", "|---|---|",
        f"| mean absolute error inside the body (image clipped to {m['window_hu'][0]:g} to {m['window_hu'][1]:g} HU) "
        f"| {m['mae_hu_body']:.1f} HU |",
        f"| mean absolute error in the liver | {m['mae_hu_liver']:.1f} HU |",
        f"| lesion - liver contrast, image | {m['lesion_contrast_hu']['image']:.1f} HU |",
        f"| lesion - liver contrast, reconstruction | {m['lesion_contrast_hu']['reconstruction']:.1f} HU |", "",
        f"The reconstruction is blurred (a tiny network, {spec['downsampling']}x downsampling); the generator therefore "
        "adds only the "
        "*difference* between the shifted and the unshifted reconstruction to the image, never the reconstruction "
        "itself.", "",
        "## Reproduce", "", "```bash", spec["reproduce"], "```", "",
        "The run is deterministic on one platform, thread count and set of library versions; elsewhere floating-point "
        "differences may change the last digits of the weights and metrics.", "",
        "## Limitations", "",
        "Synthetic CT phantoms only: the latent space knows nothing of real anatomy, other modalities or other "
        "voxel sizes. It exists to demonstrate and test the latent generator, never for patients.", ""])


def train_and_write(out: Optional[str | Path] = None, seed: int = 0, steps: int = 400, n_phantoms: int = 16,
                    log: Log = print) -> Path:
    """Train, evaluate and write spec, weights and model card into `out` (default ``Resources/Models``).

    Returns:
        The spec path.
    """
    import monai
    import torch

    from ... import __version__

    out = Path(out) if out is not None else default_autoencoder_path().parent
    out.mkdir(parents=True, exist_ok=True)
    log(f"Training {NAME} ...")
    net, record = train_autoencoder(seed=seed, steps=steps, n_phantoms=n_phantoms, log=log)
    record["versions"] = {"MedXAILib": __version__, "torch": torch.__version__, "monai": monai.__version__,
                          "numpy": np.__version__, "python": platform.python_version()}
    log("Evaluating on held-out phantoms ...")
    metrics = evaluate_autoencoder(net)
    spec_path = save_autoencoder(
        net, out / f"{NAME}.json", spacing_mm=[2.0, 2.0, 3.0], modality="CT",
        description="Demo only, trained on synthetic CT phantoms (MedXAILib.demo.samples.ct_phantom); not for clinical use.",
        training=record, metrics=metrics, reproduce=_reproduce(seed, steps, n_phantoms))
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    write_atomic(out / f"{NAME}.md", _card(spec, spec_path.with_suffix(".pt")).encode("utf-8"))
    log(f"  {NAME}: MAE {metrics['mae_hu_body']:.1f} HU in the body, lesion contrast "
        f"{metrics['lesion_contrast_hu']['reconstruction']:.1f} of {metrics['lesion_contrast_hu']['image']:.1f} HU kept")
    return spec_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m MedXAILib.demo.training.autoencoder``."""
    parser = argparse.ArgumentParser(prog="python -m MedXAILib.demo.training.autoencoder",
                                     description="Train the demo autoencoder of the latent counterfactual generator "
                                                 "on synthetic CT phantoms (CPU, deterministic, a few minutes).")
    parser.add_argument("--out", default=None, help="output folder (default: Resources/Models of the source tree)")
    parser.add_argument("--seed", type=int, default=0, help="0-9: training phantoms and initial weights (default 0)")
    parser.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    parser.add_argument("--phantoms", type=int, default=16, help="training phantoms (default 16)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    if not 0 <= args.seed <= 9 or args.steps < 1 or args.phantoms < 2:
        sys.stderr.write("autoencoder: error: --seed must be 0-9, --steps >= 1 and --phantoms >= 2\n")
        return 2
    log = (lambda *_: None) if args.quiet else (lambda text: print(text, flush=True))
    started = time.perf_counter()
    path = train_and_write(args.out, seed=args.seed, steps=args.steps, n_phantoms=args.phantoms, log=log)
    log(f"Done in {time.perf_counter() - started:.0f} s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
