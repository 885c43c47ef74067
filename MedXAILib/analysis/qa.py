"""Segmentation quality assurance: per-structure risk scores, and how well they detect failures.

One case (:func:`qa_case`) gives, for every requested structure of a segmenter's prediction:

- the attribution of the structure (the gradient of its summed logit over the predicted voxels), all
  structures from one shared pass (:func:`MedXAILib.engine.explain_structures`);
- a test-time-augmentation ensemble (:func:`tta_ensemble`): the identity and shifted copies of the
  input (optionally mirrored ones, for models trained with mirroring), giving the predictive entropy,
  the variance of the class probability and the agreement between the members' masks;
- risk scores, higher meaning less trustworthy (:data:`SCORES`):

  ========================  ========================================================================
  ``xai_outside``           share of the structure's |relevance| farther than ``near_mm`` from the
                            predicted structure: evidence the decision took from elsewhere
  ``xai_boundary``          1 - share of the |relevance| near the structure that lies within
                            ``band_mm`` of its predicted surface (a segmenter decides at the surface)
  ``xai_sensitivity``       sum |dS/dx| * std(x) / |S| for the summed logit S: the relative change of
                            the structure's score for a one-standard-deviation change of the input
  ``entropy``               mean predictive entropy of the ensemble over the members' union of the
                            structure (baseline)
  ``tta_variance``          mean variance of the class probability over the ensemble, same voxels
                            (baseline)
  ``tta_dice``              1 - mean pairwise Dice of the members' masks (baseline; the strongest
                            simple detector in Zenk et al. 2025)
  ========================  ========================================================================

- the per-structure relevance statistics (:func:`MedXAILib.analysis.statistics.structure_statistics`)
  and, when a reference segmentation is given (for evaluation only), the true Dice.

Failure detection is measured as Zenk et al. ("Comparative benchmarking of failure detection methods in
medical image segmentation", Medical Image Analysis 101:103392, 2025) do: the risk-coverage curve of a
score against the true risk ``1 - Dice`` and the area under it (:func:`aurc`).

numpy at import; torch, SciPy and the engine load on use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InputError, ParameterError, TargetError
from ..monitor import Monitor
from ..volume import ImageVolume

__all__ = [
    "SCORES", "XAI_SCORES", "BASELINE_SCORES", "DEFAULT_SCORE", "TTA_TRANSFORMS", "QAOptions", "CaseQA",
    "tta_ensemble", "structure_scores", "qa_case", "dice", "risk_coverage", "aurc", "resolve_structures",
]

#: Explanation-based risk scores (MedXAI's), then the uncertainty baselines; higher = less trustworthy.
XAI_SCORES = ("xai_outside", "xai_boundary", "xai_sensitivity")
BASELINE_SCORES = ("entropy", "tta_variance", "tta_dice")
SCORES = XAI_SCORES + BASELINE_SCORES
#: The score the cohort ranks by: the best detector of docs/qa-validation.md (lowest AURC per structure and
#: per case on the phantom failure cohort; the explanation-based scores did worse there).
DEFAULT_SCORE = "entropy"
#: Test-time transforms :func:`tta_ensemble` knows: a shift by ``shift_voxels`` along one axis, or a mirror.
TTA_TRANSFORMS = ("identity", "shift_i", "shift_j", "shift_k", "flip_i", "flip_j", "flip_k")


@dataclass
class QAOptions:
    """How a case is analysed.

    Attributes:
        method: attribution method (one gradient at the input is shared by all structures for
            ``saliency`` and ``input_x_gradient``).
        params: the method's parameters.
        tta: test-time transforms of the ensemble (:data:`TTA_TRANSFORMS`); mirrors only suit models
            trained with mirroring (nnU-Net), shifts suit any convolutional segmenter.
        shift_voxels: size of the shifts, in voxels of the input grid.
        near_mm: how far from the predicted structure relevance still counts as local (``xai_outside``).
        band_mm: half-width of the band around the predicted surface (``xai_boundary``).
        memory_budget: the model's memory budget (a fixed one keeps window batches, and so results,
            the same on every worker).
    """

    method: str = "saliency"
    params: dict[str, Any] = field(default_factory=dict)
    tta: tuple[str, ...] = ("identity", "shift_i", "shift_j", "shift_k")
    shift_voxels: int = 2
    near_mm: float = 10.0
    band_mm: float = 3.0
    memory_budget: Optional[str] = "2GB"

    def __post_init__(self) -> None:
        self.tta = tuple(self.tta)
        unknown = [t for t in self.tta if t not in TTA_TRANSFORMS]
        if unknown or "identity" not in self.tta:
            raise ParameterError(f"test-time transforms must include 'identity' and come from "
                                 f"{', '.join(TTA_TRANSFORMS)}; got {', '.join(self.tta)}")
        if int(self.shift_voxels) < 1:
            raise ParameterError(f"shift_voxels must be >= 1; got {self.shift_voxels}")
        if not (self.near_mm > 0 and self.band_mm > 0):
            raise ParameterError(f"near_mm and band_mm must be > 0; got {self.near_mm}, {self.band_mm}")

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params), "tta": list(self.tta),
                "shift_voxels": int(self.shift_voxels), "near_mm": float(self.near_mm),
                "band_mm": float(self.band_mm), "memory_budget": self.memory_budget}

    @classmethod
    def from_json(cls, values: Optional[dict[str, Any]]) -> "QAOptions":
        values = dict(values or {})
        known = {k: values[k] for k in ("method", "params", "tta", "shift_voxels", "near_mm", "band_mm",
                                        "memory_budget") if k in values}
        return cls(**known)


@dataclass
class CaseQA:
    """What :func:`qa_case` gives for one case.

    Attributes:
        labels: (I, J, K) uint8 predicted label map (the model's own output: the identity member).
        attributions: structure name -> :class:`~MedXAILib.attribution.Attribution`.
        entropy: (I, J, K) float32 predictive entropy of the ensemble mean (nats).
        rows: one dict per structure: ``structure``, ``label``, ``predicted_voxels``, ``volume_mm3``, the
            :data:`SCORES`, relevance statistics (``rel_*``), ``dice`` (NaN without a reference).
        class_names: the model's class names.
        ensemble: the members of the ensemble.
        warnings: caveats (shown to the user, kept in the provenance).
    """

    labels: np.ndarray
    attributions: dict[str, Any]
    entropy: np.ndarray
    rows: list[dict[str, Any]]
    class_names: list[str]
    ensemble: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Structures


def resolve_structures(requested: str | Sequence[str], class_names: Sequence[str]) -> list[tuple[int, str]]:
    """``(label, name)`` of the requested structures: ``"all"`` is every class but the first (background).

    Raises:
        InputError: a name the model does not declare (with the closest one), or no structure at all.
    """
    import difflib

    names = list(class_names)
    if not names:
        raise InputError("the model declares no class names; a cohort needs them to name its structures")
    if isinstance(requested, str):
        requested = [requested] if requested == "all" else [n.strip() for n in requested.split(",") if n.strip()]
    if list(requested) == ["all"]:
        return [(k, names[k]) for k in range(1, len(names))]
    out = []
    for name in requested:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; the model's classes are {', '.join(names)}"
            raise InputError(f"unknown structure '{name}'{hint}")
        out.append((names.index(name), name))
    if not out:
        raise InputError("no structure was requested; use --structures all or a comma-separated list of names")
    return out


# ------------------------------------------------------------------------------------------------
# The ensemble


def _shift(x: Any, axis: int, by: int) -> Any:
    """Shift the spatial `axis` (0..2) of a (B, C, I, J, K) tensor by `by` voxels, edge values repeated."""
    import torch

    dim = 2 + axis
    n = x.shape[dim]
    if by >= 0:
        return torch.cat([x.narrow(dim, 0, 1).expand(*x.shape[:dim], by, *x.shape[dim + 1:]),
                          x.narrow(dim, 0, n - by)], dim)
    by = -by
    return torch.cat([x.narrow(dim, by, n - by), x.narrow(dim, n - 1, 1).expand(*x.shape[:dim], by, *x.shape[dim + 1:])], dim)


def tta_ensemble(image: ImageVolume, model: Any, transforms: Sequence[str] = ("identity", "shift_i", "shift_j",
                 "shift_k"), shift_voxels: int = 2, monitor: Optional[Monitor] = None) -> dict[str, Any]:
    """Run the segmenter on test-time transforms of the input and map each output back.

    Args:
        image: the input volume.
        model: a segmentation :class:`~MedXAILib.model.ModelAdapter`.
        transforms: from :data:`TTA_TRANSFORMS`; ``identity`` first gives the model's own prediction.
        shift_voxels: a shift moves the input by this many voxels (edge values repeated) and the output
            back (the border voxels it leaves are taken from the identity member).
        monitor: progress per member.

    Returns:
        ``labels`` (M, I, J, K) uint8 argmax per member (member 0 the identity), ``mean`` (K, I, J, K)
        float32 ensemble-mean probability, ``mean_sq`` (K, I, J, K) float32 mean squared probability,
        ``output`` the identity member's raw output (1, K, I, J, K) tensor, ``members`` the transforms.
    """
    import torch

    from ..provenance import channel_argmax

    monitor = monitor or Monitor()
    if transforms[0] != "identity":
        raise ParameterError("the first test-time transform must be 'identity' (the model's own prediction)")
    bound = model.bind(image.affine, image.shape, image.array)
    x = torch.as_tensor(image.array, device=model.device)[None]
    labels, total, total_sq, identity_output = [], None, None, None
    by = int(shift_voxels)
    with torch.no_grad():
        for m, name in enumerate(transforms):
            monitor.update(m / len(transforms), f"Test-time ensemble: {name} ({m + 1}/{len(transforms)})")
            if name == "identity":
                out = bound(x)
                identity_output = out
            elif name.startswith("flip_"):
                dim = 2 + "ijk".index(name[-1])
                out = torch.flip(bound(torch.flip(x, (dim,))), (dim,))
            else:
                axis = "ijk".index(name[-1])
                if image.shape[axis] <= by:
                    raise ParameterError(f"a shift of {by} voxels needs more than {by} voxels along {name[-1]}")
                out = _shift(bound(_shift(x, axis, by)), axis, -by)
                # the last `by` planes were extrapolated: take them from the identity member
                keep = [slice(None)] * out.ndim
                keep[2 + axis] = slice(image.shape[axis] - by, None)
                out[tuple(keep)] = identity_output[tuple(keep)]
            if model.output_activation == "sigmoid":
                prob = torch.sigmoid(out[0].float())
                member = channel_argmax(torch.cat([torch.zeros_like(prob[:1]), prob - 0.5]))
            else:
                prob = torch.softmax(out[0].float(), 0)
                member = channel_argmax(out[0])
            labels.append(member.to(torch.uint8).cpu().numpy())
            total = prob.clone() if total is None else total.add_(prob)
            total_sq = prob * prob if total_sq is None else total_sq.add_(prob * prob)
    n = len(transforms)
    return {"labels": np.stack(labels), "mean": (total / n).cpu().numpy(), "mean_sq": (total_sq / n).cpu().numpy(),
            "output": identity_output, "members": list(transforms)}


# ------------------------------------------------------------------------------------------------
# Scores


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (nothing to find, nothing found)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def structure_scores(relevance: Optional[np.ndarray], structure: np.ndarray, members: np.ndarray, label: int,
                     mean: np.ndarray, mean_sq: np.ndarray, entropy: np.ndarray, image: np.ndarray,
                     spacing: Sequence[float], score: Optional[float], near_mm: float = 10.0,
                     band_mm: float = 3.0) -> dict[str, float]:
    """The :data:`SCORES` of one structure (risk: higher = less trustworthy); NaN where undefined.

    Args:
        relevance: (I, J, K) attribution of the structure's summed logit (None: not predicted).
        structure: boolean (I, J, K) predicted structure.
        members: (M, I, J, K) label maps of the ensemble members.
        label: the structure's class.
        mean, mean_sq: (K, I, J, K) ensemble mean and mean square of the class probabilities.
        entropy: (I, J, K) predictive entropy of the ensemble mean.
        image: (C, I, J, K) input intensities (``xai_sensitivity`` scales by their spread).
        spacing: voxel size in mm.
        score: the structure's summed logit S (the attributed score).
        near_mm, band_mm: see :class:`QAOptions`.
    """
    from ..regions import boundary_band

    out = {name: math.nan for name in SCORES}
    masks = members == label
    union = masks.any(axis=0)
    if union.any():
        out["entropy"] = float(entropy[union].mean())
        variance = np.clip(mean_sq[label] - mean[label] ** 2, 0.0, None)
        out["tta_variance"] = float(variance[union].mean())
    pairs = [dice(masks[a], masks[b]) for a in range(len(masks)) for b in range(a + 1, len(masks))]
    out["tta_dice"] = 1.0 - float(np.mean(pairs)) if pairs else math.nan
    if relevance is None or not structure.any() or structure.all():
        return out
    magnitude = np.abs(np.asarray(relevance, dtype=np.float64))
    total = float(magnitude.sum())
    if total <= 0:
        return out
    near = structure | boundary_band(structure, spacing, 0.0, near_mm)
    out["xai_outside"] = float(magnitude[~near].sum() / total)
    near_mass = float(magnitude[near].sum())
    surface = boundary_band(structure, spacing, band_mm, band_mm)
    out["xai_boundary"] = 1.0 - float(magnitude[surface].sum()) / near_mass if near_mass > 0 else math.nan
    spread = float(np.asarray(image, dtype=np.float64)[:, near].std())
    if score is not None and score != 0 and spread > 0:
        out["xai_sensitivity"] = total * spread / abs(float(score))
    return out


def qa_case(image: ImageVolume, model: Any, structures: str | Sequence[str] = "all",
            options: Optional[QAOptions] = None, reference: Optional[np.ndarray] = None,
            monitor: Optional[Monitor] = None, seed: int = 0) -> CaseQA:
    """Predict, explain and score every requested structure of one case.

    Args:
        image: the input volume.
        model: a segmentation :class:`~MedXAILib.model.ModelAdapter` with class names.
        structures: ``"all"`` (every class but background) or names.
        options: :class:`QAOptions`.
        reference: (I, J, K) integer reference segmentation on the image grid, for the true Dice only
            (never used by a score).
        monitor: progress and cancel.
        seed: seeds every random draw of the attribution method.

    Raises:
        ModelError, TargetError: not a segmenter, or the model does not accept the image.
        InputError: an unknown structure, or a reference on another grid.
    """
    from ..analysis.statistics import structure_statistics
    from ..engine import explain_structures
    from ..target import Target

    options = options or QAOptions()
    monitor = monitor or Monitor()
    if model.task not in (None, "segmentation"):
        raise TargetError(f"quality assurance of segmentations needs a segmentation model; this one is a {model.task}")
    wanted = resolve_structures(structures, model.class_names or [])
    if reference is not None:
        reference = np.asarray(reference)
        if reference.ndim == 4 and reference.shape[0] == 1:
            reference = reference[0]
        if reference.shape != image.shape:
            raise InputError(f"the reference segmentation has shape {reference.shape}, not the image grid "
                             f"{image.shape}; resample it onto the image first (MedXAILib.io.read_label_map)")
    image.check_finite()
    model.check_input(image.n_channels)
    warnings: list[str] = []
    budget = options.memory_budget
    from ..model.memory import parse_budget

    with model.borrowed(None, parse_budget(budget) if budget is not None else None, None):
        with monitor.stage(0.0, 0.35):
            ensemble = tta_ensemble(image, model, options.tta, options.shift_voxels, monitor)
        if model.task != "segmentation":
            raise TargetError("quality assurance of segmentations needs a segmentation model")
        labels = ensemble["labels"][0]
        mean, mean_sq = ensemble["mean"], ensemble["mean_sq"]
        entropy = -(np.where(mean > 0, mean * np.log(np.clip(mean, 1e-30, None)), 0.0)).sum(axis=0).astype(np.float32)
        present = [(k, name) for k, name in wanted if bool((labels == k).any())]
        for k, name in wanted:
            if (k, name) not in present:
                warnings.append(f"the model predicts no voxel of '{name}': it is not explained, and its "
                                "explanation scores are undefined (NaN)")
        attributions: dict[str, Any] = {}
        if present:
            with monitor.stage(0.35, 0.9):
                found = explain_structures(image, model, [Target(class_index=k, region="predicted") for k, _ in present],
                                           options.method, options.params, monitor=monitor, seed=seed,
                                           output=ensemble["output"])  # the identity member: no second pass
            attributions = {name: a for (_, name), a in zip(present, found)}
    monitor.update(0.9, "Scoring the structures")
    rows = []
    logits = ensemble["output"][0].cpu().numpy()  # once, not a float64 volume per structure
    spacing = image.spacing
    voxel_mm3 = float(abs(np.linalg.det(image.affine[:3, :3])))
    for k, name in wanted:
        monitor.check()
        structure = labels == k
        attribution = attributions.get(name)
        relevance = attribution.summed if attribution is not None else None
        score = None
        if attribution is not None:  # the attributed score: the class logit summed over the structure
            score = float(logits[k][structure].sum(dtype=np.float64))
        row: dict[str, Any] = {"structure": name, "label": int(k), "predicted_voxels": int(structure.sum()),
                               "volume_mm3": float(structure.sum()) * voxel_mm3}
        row.update(structure_scores(relevance, structure, ensemble["labels"], k, mean, mean_sq, entropy,
                                    image.array, spacing, score, options.near_mm, options.band_mm))
        statistics = {}
        if relevance is not None and not structure.all():
            table = structure_statistics(relevance, structure.astype(np.int64), ["rest", name], image.affine)
            statistics = {c: table[c][1] for c in ("share_abs", "share_positive", "density_ratio",
                                                   "abs_rank_accuracy", "peak_distance_mm",
                                                   "boundary_interior_ratio")}
        for column in ("share_abs", "share_positive", "density_ratio", "abs_rank_accuracy", "peak_distance_mm",
                       "boundary_interior_ratio"):
            row[f"rel_{column}"] = float(statistics.get(column, math.nan))
        row["dice"] = dice(structure, reference == k) if reference is not None else math.nan
        rows.append(row)
    monitor.update(1.0, f"{len(rows)} structures scored")
    members = {"members": ensemble["members"], "shift_voxels": int(options.shift_voxels)}
    return CaseQA(labels=labels.astype(np.uint8), attributions=attributions, entropy=entropy, rows=rows,
                  class_names=list(model.class_names or []), ensemble=members, warnings=warnings)


# ------------------------------------------------------------------------------------------------
# Failure detection


def risk_coverage(scores: Sequence[float], risks: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve of a risk score.

    Cases are accepted from the lowest score up; at coverage ``i / N`` the selective risk is the mean
    true risk of the ``i`` accepted cases. Tied scores are accepted together (each tie group's cases
    share the group's mean risk), so the curve does not depend on the order of ties. A NaN score counts
    as the highest risk (accepted last).

    Returns:
        ``(coverage, selective_risk)``, each of length N.

    Raises:
        InputError: lengths differ, no cases, or a non-finite true risk.
    """
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(risks, dtype=np.float64)
    if s.shape != r.shape or s.ndim != 1 or s.size == 0:
        raise InputError(f"scores and risks need the same non-zero length; got {s.shape} and {r.shape}")
    if not np.all(np.isfinite(r)):
        raise InputError("every true risk must be finite")
    s = np.where(np.isnan(s), np.inf, s)
    order = np.argsort(s, kind="stable")
    s, r = s[order], r[order]
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    for a, n in zip(start, counts):
        if n > 1:
            r[a:a + n] = r[a:a + n].mean()
    n = np.arange(1, s.size + 1)
    return n / s.size, np.cumsum(r) / n


def aurc(scores: Sequence[float], risks: Sequence[float]) -> float:
    """Area under the risk-coverage curve (the mean of the selective risks; lower is better).

    A perfect score orders cases by their true risk (the oracle AURC, ``aurc(risks, risks)``); a score that
    says nothing gives about the mean risk.
    """
    return float(risk_coverage(scores, risks)[1].mean())
