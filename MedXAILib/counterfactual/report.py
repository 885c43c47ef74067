"""The :class:`Counterfactual` result, its quality metrics, and saving it (numpy only at import).

Metrics (all in image units unless stated):

- validity: whether the goal was reached, with the goal quantity before and after;
- proximity: L1 (sum |delta|), L2 (Euclidean norm), max |delta| and mean |delta| of delta = x' - x;
- sparsity: the share of voxels changed by more than the image's noise level, estimated robustly
  as 1.4826 * MAD(first differences) / sqrt(2) (the MAD of a high-pass filter: structure edges are
  outliers and do not count; Donoho & Johnstone 1994 use the MAD of fine wavelet coefficients);
- per channel: the same proximity numbers and the changed voxels of every channel, in that
  channel's own units (HU for CT, SUV for PET): a multi-channel change is never summed over units;
- minimality in a reader's terms: the changed volume (voxels changed above noise in any channel) in
  ml and as a share of the image and of the structure (the region, or the goal's predicted
  structure), how much of it lies outside the structure, and the largest change per channel; a
  change over more than :data:`SPREAD_SHARE` of the image (or :data:`SPREAD_FACTOR` times the
  structure) is flagged as not minimal;
- locality: the share of sum |delta| that lies inside the region (``None`` without a region);
- plausibility (a proxy): for each tissue class, the 1-Wasserstein distance between the class's
  intensity histogram before and after the change. Classes are the segmenter's predicted labels on
  the input, or for classifiers the intensity quartiles of the input; each class keeps its voxels,
  so the distance is the mean |sorted before - sorted after| over them;
- seconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..attribution import PROVENANCE_KEY
from ..io.jsondata import to_json
from ..errors import InputError
from ..volume import ImageVolume

__all__ = ["Counterfactual", "OUTPUT_NAMES", "noise_level", "proximity", "per_channel", "minimality", "sparsity",
           "locality", "plausibility", "compute_metrics", "SPREAD_SHARE", "SPREAD_FACTOR"]

#: A change over more than this share of the image is not a minimal change (:func:`minimality`).
SPREAD_SHARE = 0.05
#: ... nor one over more than this many times the structure's volume.
SPREAD_FACTOR = 10.0

#: File names written by :meth:`Counterfactual.save` (the label maps only for segmenters).
OUTPUT_NAMES = {"counterfactual": "counterfactual.nrrd", "difference": "difference.nrrd",
                "labels_before": "prediction_before.nrrd", "labels_after": "prediction_after.nrrd",
                "summary": "summary.json"}
_N_QUANTILE_CLASSES = 4


def noise_level(array: np.ndarray) -> float:
    """Robust noise standard deviation of a (I, J, K) array: 1.4826 * MAD(first differences) / sqrt(2).

    First differences along I, J and K are a high-pass filter; for white noise of standard
    deviation s they have standard deviation s * sqrt(2). Edges are few and fall in the tails, which
    the median absolute deviation ignores. Spatially correlated noise is underestimated.
    """
    parts = [np.diff(array, axis=a).ravel() for a in range(3) if array.shape[a] > 1]
    if not parts:
        return 0.0
    d = np.concatenate(parts).astype(np.float64)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def proximity(delta: np.ndarray) -> dict[str, float]:
    """L1 (sum), L2 (Euclidean norm), max and mean of |delta| over every voxel and channel."""
    a = np.abs(delta.astype(np.float64))
    return {"l1": float(a.sum()), "l2": float(np.sqrt((a * a).sum())), "max_abs": float(a.max(initial=0.0)),
            "mean_abs": float(a.mean()) if a.size else 0.0}


def _changed(delta: np.ndarray, noise: list[float]) -> np.ndarray:
    changed = np.zeros(delta.shape[1:], bool)
    for c, sigma in enumerate(noise):
        changed |= np.abs(delta[c]) > max(sigma, 0.0)
    return changed


def per_channel(delta: np.ndarray, noise: list[float], names: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Proximity and changed voxels of each channel, in that channel's own intensity units."""
    names = list(names or [])
    out = []
    for c in range(delta.shape[0]):
        a = np.abs(delta[c].astype(np.float64))
        out.append({"channel": names[c] if c < len(names) else f"channel {c}", "l1": float(a.sum()),
                    "l2": float(np.sqrt((a * a).sum())), "max_abs": float(a.max(initial=0.0)),
                    "mean_abs": float(a.mean()) if a.size else 0.0,
                    "changed_voxels": int(np.count_nonzero(a > max(noise[c], 0.0))),
                    "noise_level": round(float(noise[c]), 6)})
    return out


def minimality(delta: np.ndarray, noise: list[float], voxel_ml: float, structure: Optional[np.ndarray] = None,
               names: Optional[list[str]] = None) -> dict[str, Any]:
    """How small the change is, in the reader's terms: millilitres, shares, the largest change per channel.

    Args:
        delta: x' - x, (C, I, J, K).
        noise: each channel's noise level (:func:`noise_level`): smaller changes do not count.
        voxel_ml: the volume of one voxel (ml).
        structure: bool (I, J, K), the structure the change is about (the region, the goal's
            predicted structure, a lesion), or None.
        names: channel names.

    Returns:
        ``changed_voxels``, ``changed_ml``, ``changed_share_of_image``, ``structure_ml``,
        ``changed_share_of_structure`` (changed volume / structure volume; above 1 when the change
        is larger than the structure), ``changed_outside_structure_ml``, ``max_abs_per_channel``
        (``{channel: largest |delta|}``), ``minimal`` (False when the change spreads over more
        than :data:`SPREAD_SHARE` of the image or :data:`SPREAD_FACTOR` times the structure) and
        ``rule``.
    """
    changed = _changed(delta, noise)
    count = int(changed.sum())
    names = list(names or [])
    out: dict[str, Any] = {
        "changed_voxels": count, "changed_ml": round(count * voxel_ml, 4),
        "changed_share_of_image": float(changed.mean()) if changed.size else 0.0,
        "structure_ml": None, "changed_share_of_structure": None, "changed_outside_structure_ml": None,
        "max_abs_per_channel": {(names[c] if c < len(names) else f"channel {c}"): float(np.abs(delta[c]).max(initial=0.0))
                                for c in range(delta.shape[0])},
    }
    spread = out["changed_share_of_image"] > SPREAD_SHARE
    if structure is not None and np.any(structure):
        structure = np.asarray(structure, bool)
        size = int(structure.sum())
        out.update(structure_ml=round(size * voxel_ml, 4), changed_share_of_structure=count / size,
                   changed_outside_structure_ml=round(int((changed & ~structure).sum()) * voxel_ml, 4))
        spread = spread or count > SPREAD_FACTOR * size
    out["minimal"] = not spread
    out["rule"] = (f"not minimal when the voxels changed above noise exceed {SPREAD_SHARE:.0%} of the image or "
                   f"{SPREAD_FACTOR:g} times the structure's volume")
    return out


def sparsity(delta: np.ndarray, noise: list[float]) -> dict[str, Any]:
    """Share of voxels whose change exceeds the noise level in any channel (lower is sparser)."""
    changed = _changed(delta, noise)
    return {"changed_fraction": float(changed.mean()), "changed_voxels": int(changed.sum()),
            "noise_level": [round(float(s), 6) for s in noise]}


def locality(delta: np.ndarray, region: Optional[np.ndarray]) -> Optional[float]:
    """Share of sum |delta| inside `region` (1.0 when nothing changed; ``None`` without a region)."""
    if region is None:
        return None
    a = np.abs(delta.astype(np.float64)).sum(axis=0)
    total = a.sum()
    return float(a[np.asarray(region, bool)].sum() / total) if total > 0 else 1.0


def _wasserstein_same_support(a: np.ndarray, b: np.ndarray) -> float:
    # two empirical distributions of equally many equally weighted points: W1 = mean |sorted a - sorted b|
    return float(np.abs(np.sort(a.astype(np.float64)) - np.sort(b.astype(np.float64))).mean()) if a.size else 0.0


def plausibility(before: np.ndarray, after: np.ndarray, labels: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Per-class 1-Wasserstein distance between the intensity histograms before and after.

    Args:
        before, after: (C, I, J, K) arrays.
        labels: (I, J, K) integer classes (a segmentation of the input); ``None``: the quartiles of
            each channel of `before`.

    Returns:
        ``{"classes": "segmentation" | "quartiles", "per_class": [{"channel", "class", "voxels",
        "wasserstein"}], "mean_wasserstein": voxel-weighted mean}`` (image units).
    """
    rows = []
    for c in range(before.shape[0]):
        if labels is None:
            edges = np.quantile(before[c], np.linspace(0, 1, _N_QUANTILE_CLASSES + 1)[1:-1])
            classes = np.searchsorted(edges, before[c], side="right")
        else:
            classes = np.asarray(labels)
        for k in np.unique(classes):
            sel = classes == k
            rows.append({"channel": c, "class": int(k), "voxels": int(sel.sum()),
                         "wasserstein": _wasserstein_same_support(before[c][sel], after[c][sel])})
    total = sum(r["voxels"] for r in rows)
    mean = sum(r["wasserstein"] * r["voxels"] for r in rows) / total if total else 0.0
    return {"classes": "quartiles" if labels is None else "segmentation", "per_class": rows,
            "mean_wasserstein": float(mean)}


def compute_metrics(before: np.ndarray, after: np.ndarray, region: Optional[np.ndarray],
                    labels: Optional[np.ndarray], validity: dict[str, Any], seconds: float,
                    voxel_ml: float = 0.0, structure: Optional[np.ndarray] = None,
                    names: Optional[list[str]] = None) -> dict[str, Any]:
    """Every metric of the module docstring for input `before` and counterfactual `after` ((C, I, J, K)).

    `structure` (default: `region`) is what :func:`minimality` measures the change against;
    ``proximity`` over all channels adds up different units and is kept for single-channel images
    and compatibility: read ``per_channel`` for a multi-channel input.
    """
    delta = after.astype(np.float64) - before.astype(np.float64)
    noise = [noise_level(before[c]) for c in range(before.shape[0])]
    return {"validity": validity, "proximity": proximity(delta), "per_channel": per_channel(delta, noise, names),
            "minimality": minimality(delta, noise, voxel_ml, region if structure is None else structure, names),
            "sparsity": sparsity(delta, noise), "locality": locality(delta, region),
            "plausibility": plausibility(before, after, labels), "seconds": round(float(seconds), 4)}


def _umask() -> int:
    # /proc avoids os.umask's set-and-restore, which races with other threads creating files
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass
class Counterfactual:
    """A counterfactual input and what it does to the model.

    Attributes:
        volume: the counterfactual x' on the input grid (same channels and geometry).
        difference: x' - x, signed, on the input grid.
        before, after: the predictions for x and x'. Classifiers: ``task``, ``class_names``,
            ``logits``, ``probabilities``, ``predicted_class``. Segmenters: ``task``,
            ``class_names``, ``voxels_per_class``, ``volumes_ml`` and ``label_map`` (an (I, J, K)
            int array).
        metrics: validity, proximity, sparsity, locality, plausibility and seconds (see the module
            docstring).
        provenance: generator, parameters, goal, region, bounds, model, input, versions, seed,
            device, time and the generator's diagnostics (``diagnostics["warnings"]`` for caveats).
    """

    volume: ImageVolume
    difference: ImageVolume
    before: dict[str, Any]
    after: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        """Whether the goal was reached."""
        return bool(self.metrics.get("validity", {}).get("reached", False))

    @property
    def warnings(self) -> list[str]:
        return list(self.provenance.get("diagnostics", {}).get("warnings", []))

    def summary(self, outputs: Optional[list[str]] = None) -> dict[str, Any]:
        """JSON-friendly summary: whether the goal was reached and the change is minimal, the warnings,
        predictions (label maps replaced by their file names), metrics and provenance."""

        def strip(prediction: dict[str, Any], name: str) -> dict[str, Any]:
            out = {k: v for k, v in prediction.items() if k != "label_map"}
            if "label_map" in prediction:
                out["label_map"] = OUTPUT_NAMES[name]
            return out

        out = {"goal_reached": self.reached, "minimal": bool(self.metrics.get("minimality", {}).get("minimal", True)),
               "warnings": self.warnings,
               "before": strip(self.before, "labels_before"), "after": strip(self.after, "labels_after"),
               "metrics": self.metrics, "provenance": self.provenance}
        if outputs is not None:
            out["outputs"] = list(outputs)
        return out

    def outcome_line(self) -> str:
        """One line for a console: goal reached or not, and how much changed per channel."""
        validity = self.metrics.get("validity", {})
        spread = self.metrics.get("minimality", {})
        quantity = str(validity.get("quantity", "goal")).replace("_", " ")
        largest = ", ".join(f"{name} {value:.4g}" for name, value in (spread.get("max_abs_per_channel") or {}).items())
        return (f"goal {'reached' if self.reached else 'NOT reached'}: {quantity} {validity.get('before', float('nan')):.4g}"
                f" -> {validity.get('after', float('nan')):.4g} (target {validity.get('target', float('nan')):.4g}); "
                f"changed {spread.get('changed_ml', 0):.4g} ml ({spread.get('changed_share_of_image', 0):.2%} of the image)"
                + (f"; largest change per channel (its own units): {largest}" if largest else ""))

    def summary_json(self, outputs: Optional[list[str]] = None) -> str:
        return to_json(self.summary(outputs))

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> list[Path]:
        """Write counterfactual.nrrd, difference.nrrd, the label maps (segmenters) and summary.json.

        All files are written into a temporary folder beside `folder` and then moved into place, so
        either every file appears or none does. The volumes keep the input's geometry; the
        counterfactual's header holds the provenance under :data:`MedXAILib.PROVENANCE_KEY`.

        Args:
            folder: the output folder (created when missing).
            overwrite: replace files of a previous result in `folder`; otherwise they are refused.

        Returns:
            The paths written, summary last.

        Raises:
            InputError: `folder` is a file, holds a previous result (without `overwrite`), or a
                write failed.
        """
        from ..io import write_image  # SimpleITK is heavy; keep this module light

        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"cannot save the counterfactual into '{folder}': it is a file, not a folder")
        parent = folder.parent if folder.parent != Path("") else Path(".")
        if not parent.is_dir():
            raise InputError(f"cannot save the counterfactual: the folder '{parent}' does not exist")
        names = [OUTPUT_NAMES["counterfactual"], OUTPUT_NAMES["difference"]]
        segmenter = "label_map" in self.before
        if segmenter:
            names += [OUTPUT_NAMES["labels_before"], OUTPUT_NAMES["labels_after"]]
        names.append(OUTPUT_NAMES["summary"])
        existing = [n for n in names if (folder / n).exists()]
        if existing and not overwrite:
            raise InputError(f"'{folder}' already holds {', '.join(existing)}; choose another folder or pass "
                             "overwrite=True")
        header = {PROVENANCE_KEY: to_json(self.provenance, indent=None, sort_keys=True)}
        try:
            tmp = Path(tempfile.mkdtemp(prefix=".medxai-counterfactual-", dir=parent))
        except OSError as error:
            raise InputError(f"cannot write into '{parent}': {error.strerror or error}") from None
        moved: list[tuple[Path, Optional[Path]]] = []  # (target, backup of the file it replaced)
        created_folder = False
        try:
            write_image(self.volume, tmp / names[0], metadata=header)
            write_image(self.difference, tmp / names[1], metadata=header)
            if segmenter:
                for key, name in (("before", names[2]), ("after", names[3])):
                    labels = getattr(self, key)["label_map"]
                    write_image(self.volume.with_array(np.asarray(labels, np.float32)[np.newaxis], meta={}),
                                tmp / name)
            targets = [str(folder / n) for n in names]
            (tmp / names[-1]).write_text(self.summary_json(targets) + "\n", encoding="utf-8")
            if not folder.exists():
                os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a new folder should not be
                os.replace(tmp, folder)  # one atomic rename: the whole folder appears at once
                created_folder = True
                return [folder / n for n in names]
            backup = tmp / ".replaced"
            backup.mkdir()
            for name in names:  # summary last: a reader never sees a summary without its volumes
                target = folder / name
                saved = None
                if target.exists():
                    saved = backup / name
                    os.replace(target, saved)
                os.replace(tmp / name, target)
                moved.append((target, saved))
            return [folder / n for n in names]
        except BaseException as error:
            for target, saved in reversed(moved):  # roll back: restore what was there before
                target.unlink(missing_ok=True)
                if saved is not None:
                    os.replace(saved, target)
            if isinstance(error, OSError):
                reason = error.strerror or error
                raise InputError(f"cannot write the counterfactual into '{folder}': {reason}") from None
            raise
        finally:
            if not created_folder:
                shutil.rmtree(tmp, ignore_errors=True)
