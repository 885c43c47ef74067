"""The measurements behind three choices of the demo (``MedXAILib.demo``), on its held-out phantoms.

Run from the repository root (not a pytest test; about two minutes on a CPU)::

    OMP_NUM_THREADS=1 .venv/bin/python Testing/benchmarks/demo_choices.py [--seeds 0,1,2,3]

For each demo phantom (``demo_case(seed)``: one liver lesion, radius 9 mm, -45 HU, SUV 8) it prints

1. the lesion probability of both shipped classifiers (why the demo uses ``CLASSIFIER``, CT + PET);
2. the PET/CT classifier's Grad-CAM at each ResNet block, as the lesion's share of the positive
   relevance over its share of the voxels (why ``LAYERS`` names ``layer3``; the automatic choice is
   ``layer4``);
3. P(lesion) after inpainting the lesion grown by 4 mm and by :data:`GROW_MM`, and on the same
   phantom drawn without a lesion (why the demo grows the inpainted region).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from MedXAILib import Target, explain, load_model  # noqa: E402
from MedXAILib.counterfactual import Goal, generate_counterfactual  # noqa: E402
from MedXAILib.demo import CLASSIFIER, PHANTOM_SEED, demo_case, lesion_statistics  # noqa: E402
from MedXAILib.demo.sections import GROW_MM  # noqa: E402
from MedXAILib.demo.samples import ct_phantom, pet_channel  # noqa: E402
from MedXAILib.volume import ImageVolume  # noqa: E402

MODELS = ROOT / "Resources" / "Models"
BLOCKS = ("layer4", "layer3", "layer2", "layer1")


def probability(model, image: ImageVolume) -> float:
    with torch.no_grad():
        logits = model.bind(image.affine, image.shape)(torch.as_tensor(image.array)[None])
    return float(torch.softmax(logits, 1)[0, 1])


def inpainted(model, image: ImageVolume, lesion: np.ndarray, grow_mm: float) -> float:
    result = generate_counterfactual(image, model, Goal("class_probability", 1, target_probability=0.5),
                                     generator="inpaint", region=lesion, params={"grow_mm": grow_mm})
    return float(result.after["probabilities"][1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3", help="demo phantom seeds (default 0,1,2,3)")
    args = parser.parse_args(argv)
    ct_model = load_model(MODELS / "lesion_classifier_ct.json", device="cpu")
    petct = load_model(MODELS / f"{CLASSIFIER}.json", device="cpu")
    header = (["seed", "P CT-only", "P PET/CT"] + [f"Grad-CAM {b}" for b in BLOCKS]
              + ["P inpaint 4 mm", f"P inpaint {GROW_MM:g} mm", "P no lesion"])
    print(" | ".join(header))
    for seed in (int(s) for s in args.seeds.split(",")):
        case = demo_case(seed)
        ratios = [lesion_statistics(explain(case.image, petct, "grad_cam", Target(class_index=1),
                                            {"layer": block}).summed, case)["positive_ratio"] for block in BLOCKS]
        ct, labels, info = ct_phantom(PHANTOM_SEED + seed, lesions=[])
        clean = ImageVolume(np.concatenate([ct.array, pet_channel(labels, info).array]), ct.affine)
        row = [probability(ct_model, case.ct), probability(petct, case.image), *ratios,
               inpainted(petct, case.image, case.lesion, 4.0), inpainted(petct, case.image, case.lesion, GROW_MM),
               probability(petct, clean)]
        print(" | ".join([str(seed)] + [f"{v:.3f}" if i < 2 or i >= 2 + len(BLOCKS) else f"{v:.1f}x"
                                        for i, v in enumerate(row)]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
