"""Two sections of the demo beyond the maps: a method comparison and a counterfactual.

- :func:`compare_demo_methods` grades the classifier's maps (already computed by the demo) with
  faithfulness, localisation (against the true lesion) and complexity metrics, ranks the methods
  (:func:`MedXAILib.evaluation.compare_methods`) and writes ``comparison/`` (CSV, JSON, plots);
- :func:`inpaint_lesion` asks "what if this lesion were absent": the true lesion (grown by
  :data:`GROW_MM`) is replaced in every channel by harmonic filling with the surrounding tissue's
  noise (the ``inpaint`` counterfactual generator) and the classifier's lesion probability is
  measured before and after, also with the lesion removed from one channel at a time (which channel
  decided); ``counterfactual/`` holds the volume, the signed difference and the summary.

Both return JSON-ready entries for the demo's ``summary.json`` with paths relative to the demo folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

__all__ = ["COMPARE_METRICS", "GROW_MM", "compare_demo_methods", "inpaint_lesion"]

#: Metrics of the demo comparison: those that need no re-run of the method (robustness and
#: randomisation re-explain many times; the demo runs its own randomisation check).
COMPARE_METRICS = ("deletion", "insertion", "faithfulness_correlation", "pointing_game", "relevance_mass_accuracy",
                   "relevance_rank_accuracy", "top_k_iou", "auroc", "sparseness", "entropy")


GROW_MM = 8.0  # the inpainted region: the lesion grown by this margin


def compare_demo_methods(image: Any, adapter: Any, attributions: Mapping[str, Any], target: Any,
                         lesion: np.ndarray, out: Path, small: bool, seed: int) -> dict[str, Any]:
    """Grade and rank the precomputed `attributions` ``{method: Attribution}``; write ``out/comparison``."""
    from ..evaluation.compare import compare_methods

    steps = 10 if small else 20
    # removed voxels take a blurred copy of the image: a constant (0 HU is water) would paint dark,
    # lesion-like spots into the liver and raise the lesion score instead of lowering it
    result = compare_methods(image, adapter, list(attributions), target, metrics=list(COMPARE_METRICS), mask=lesion,
                             seed=seed, attributions=attributions,
                             metric_params={"deletion": {"n_steps": steps, "baseline": "blur"},
                                            "insertion": {"n_steps": steps, "baseline": "blur"},
                                            "faithfulness_correlation": {"n_runs": 16 if small else 64,
                                                                         "baseline": "blur"}})
    written = result.write(out / "comparison")
    data = result.to_dict()
    return {"folder": "comparison",
            "files": {p.name: f"comparison/{p.name}" for p in written},
            "methods": data["methods"], "metrics": data["metrics"], "table": data["table"],
            "metric_info": {k: {"title": v["title"], "family": v["family"], "higher_is_better": v["higher_is_better"]}
                            for k, v in data["metric_info"].items()},
            "ranking": data["ranking"], "ranking_rule": data["ranking_rule"], "ranked_metrics": data["ranked_metrics"],
            "separation": data["separation"], "separation_rule": data["separation_rule"],
            "chance": {m: _chance(data["results"], m) for m in data["metrics"]},
            "graded": {k: (data["info"].get("graded") or {}).get(data["methods"][0], {}).get(k)
                       for k in ("image", "target", "target_name", "mask_voxels", "provenance_checked")}}


def _chance(results: Mapping[str, Any], metric: str) -> Optional[float]:
    """A metric's chance level on this case (the same for every method), or None."""
    values = [r[metric].get("chance") for r in results.values() if r[metric].get("chance") is not None]
    return float(values[0]) if values else None


def inpaint_lesion(image: Any, adapter: Any, lesion: np.ndarray, out: Path, seed: int) -> tuple[Any, dict[str, Any]]:
    """Replace the true lesion by surrounding tissue and measure the classifier; write ``out/counterfactual``.

    Returns:
        The :class:`~MedXAILib.counterfactual.Counterfactual` and its summary entry.
    """
    from ..counterfactual import OUTPUT_NAMES, Goal, generate_counterfactual
    from ..counterfactual.report import minimality

    # grown by 8 mm: the PET channel's point-spread (6 mm FWHM) carries the lesion's uptake beyond
    # its CT border, and a ring of it left behind would still look like a lesion (4 mm is not enough
    # on every demo phantom: Testing/benchmarks/demo_choices.py)
    result = generate_counterfactual(image, adapter, Goal("class_probability", 1, target_probability=0.5),
                                     generator="inpaint", region=lesion, params={"grow_mm": GROW_MM}, seed=seed)
    result.save(out / "counterfactual", overwrite=True)
    metrics = result.metrics
    names = list(image.channel_names or [f"channel {c}" for c in range(image.n_channels)])
    ml = abs(float(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    noise = [row["noise_level"] for row in metrics["per_channel"]]
    against_lesion = minimality(result.difference.array, noise, ml, lesion, names)
    entry = {
        "folder": "counterfactual", "generator": "inpaint", "grow_mm": GROW_MM,
        "question": "What would the classifier say if the lesion were absent?",
        "files": {k: f"counterfactual/{v}" for k, v in OUTPUT_NAMES.items() if (out / "counterfactual" / v).is_file()},
        "probability_before": round(float(result.before["probabilities"][1]), 4),
        "probability_after": round(float(result.after["probabilities"][1]), 4),
        "predicted_before": result.before["class_names"][result.before["predicted_class"]],
        "predicted_after": result.after["class_names"][result.after["predicted_class"]],
        "reached": result.reached,
        "changed_voxels": int(np.count_nonzero((result.difference.array != 0).any(axis=0))),  # in any channel
        "changed_ml": against_lesion["changed_ml"], "lesion_ml": against_lesion["structure_ml"],
        "changed_share_of_lesion": against_lesion["changed_share_of_structure"],
        "per_channel": [{**row, "mean_change_in_lesion": float(result.difference.array[c][lesion].mean())}
                        for c, row in enumerate(metrics["per_channel"])],
        "minimality": metrics["minimality"], "validity": metrics["validity"],
        "proximity": metrics["proximity"], "locality": metrics["locality"], "seconds": metrics["seconds"],
        "warnings": result.warnings,
        "per_channel_inpainting": _one_channel_at_a_time(image, adapter, result, names),
    }
    return result, entry


def _one_channel_at_a_time(image: Any, adapter: Any, result: Any, names: list[str]) -> list[dict[str, Any]]:
    """P(lesion) with the lesion inpainted in one channel only (the others as acquired): which channel decided.

    The inpainting fills each channel on its own, so taking one channel from the counterfactual is
    inpainting that channel alone. A one-channel image has nothing to compare.
    """
    import torch

    if image.n_channels < 2:
        return []
    bound = adapter.bind(image.affine, image.shape, image.array)
    rows = []
    for c, name in enumerate(names):
        mixed = image.array.copy()
        mixed[c] = result.volume.array[c]
        with torch.no_grad():
            logits = bound(torch.as_tensor(mixed[np.newaxis], device=adapter.device))[0].float()
        probabilities = torch.softmax(logits, 0).cpu().numpy()
        rows.append({"channel": name, "probability_after": round(float(probabilities[1]), 4)})
    return rows
