"""The :class:`Counterfactual` result, its quality metrics, and saving it (numpy only at import).

Metrics (all in image units unless stated):

- validity: whether the goal was reached, with the goal quantity before and after;
- proximity: L1 (sum |delta|), L2 (Euclidean norm), max |delta| and mean |delta| of delta = x' - x;
- sparsity: the share of voxels changed by more than the image's noise level, estimated robustly
  as 1.4826 * MAD(first differences) / sqrt(2) (the MAD of a high-pass filter: structure edges are
  outliers and do not count; Donoho & Johnstone 1994 use the MAD of fine wavelet coefficients);
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

__all__ = ["Counterfactual", "OUTPUT_NAMES", "noise_level", "proximity", "sparsity", "locality", "plausibility",
           "compute_metrics"]

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


def sparsity(delta: np.ndarray, noise: list[float]) -> dict[str, Any]:
    """Share of voxels whose change exceeds the noise level in any channel (lower is sparser)."""
    changed = np.zeros(delta.shape[1:], bool)
    for c, sigma in enumerate(noise):
        changed |= np.abs(delta[c]) > max(sigma, 0.0)
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
                    labels: Optional[np.ndarray], validity: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Every metric of the module docstring for input `before` and counterfactual `after` ((C, I, J, K))."""
    delta = after.astype(np.float64) - before.astype(np.float64)
    noise = [noise_level(before[c]) for c in range(before.shape[0])]
    return {"validity": validity, "proximity": proximity(delta), "sparsity": sparsity(delta, noise),
            "locality": locality(delta, region), "plausibility": plausibility(before, after, labels),
            "seconds": round(float(seconds), 4)}


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
        """JSON-friendly summary: predictions (label maps replaced by their file names), metrics, provenance."""

        def strip(prediction: dict[str, Any], name: str) -> dict[str, Any]:
            out = {k: v for k, v in prediction.items() if k != "label_map"}
            if "label_map" in prediction:
                out["label_map"] = OUTPUT_NAMES[name]
            return out

        out = {"before": strip(self.before, "labels_before"), "after": strip(self.after, "labels_after"),
               "metrics": self.metrics, "provenance": self.provenance}
        if outputs is not None:
            out["outputs"] = list(outputs)
        return out

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
