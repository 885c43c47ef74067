"""Explanation quality metrics: the registry, their parameters, and :func:`evaluate`.

Five families, each metric a :class:`MetricInfo` in :data:`METRICS` (a stable snake_case name, a
title, the family, whether it needs a ground-truth mask, which direction is better, the paper, and
a parameter dataclass declared with :func:`MedXAILib.params.param`, so the Slicer form and the CLI
are generated from it):

- faithfulness (:mod:`.faithfulness`): deletion and insertion curves, faithfulness correlation,
  ROAD, infidelity;
- localisation against a mask (:mod:`.localisation`): pointing game, energy-based pointing game,
  relevance mass and rank accuracy, top-k IoU, AUROC;
- robustness under input noise (:mod:`.robustness`): max- and average-sensitivity, local Lipschitz
  estimate, L2 distance between explanations;
- complexity (:mod:`.complexity`): sparseness (Gini) and entropy;
- randomisation (this module, reusing :mod:`.randomisation`): model-parameter randomisation and
  random-logit tests.

Conventions shared by every metric:

- The map is the attribution as computed (signed, raw); a metric that needs magnitudes or only
  positive relevance says so in its parameters. Multi-channel maps are summed over channels into
  one relevance per voxel, and a perturbed voxel is perturbed in every channel (as the
  perturbation methods do), except infidelity, which uses the per-channel map when there is one.
- The score is the target's score (logit or probability, summed or averaged over a segmenter's
  region) exactly as :func:`MedXAILib.explain` defines it; the target's class and region are fixed
  from the unperturbed input, so no perturbation moves them.
- Noise levels are fractions of each channel's intensity range (max - min), so one setting means
  the same for CT in HU, MRI or PET.
- Randomness comes from generators seeded by ``seed`` and the metric's name (or, for the
  robustness family, the family's name, so its metrics share one set of noisy explanations):
  results repeat exactly, and do not depend on which other metrics run.

This module imports only the standard library, numpy and the light core at module level (a GUI
lists metrics before torch is installed); :func:`evaluate` and the implementations load torch.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..errors import GeometryError, InputError, ParameterError, ProvenanceError, TargetError
from ..methods.catalog.fields import batch_size_field, blur_sigma_field
from ..methods.catalog.perturbation import PERTURBATION_BASELINES
from ..params import make_params, param, params_to_dict
from ..registry import Registry, load_implementation

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..attribution import Attribution
    from ..model import ModelAdapter
    from ..monitor import Monitor
    from ..target import Target
    from ..volume import ImageVolume

__all__ = [
    "METRIC_FAMILIES",
    "PERTURBATION_BASELINES",
    "ORDERS",
    "FEATURES",
    "MetricInfo",
    "METRICS",
    "MetricContext",
    "metric_names",
    "default_metrics",
    "derive_seed",
    "evaluate",
    "EvaluationResults",
    "provenance_mismatches",
    "graded_record",
    "estimate_passes",
    "method_passes",
    "DeletionParams",
    "InsertionParams",
    "FaithfulnessCorrelationParams",
    "RoadParams",
    "InfidelityParams",
    "PointingGameParams",
    "EnergyPointingGameParams",
    "RelevanceMassAccuracyParams",
    "RelevanceRankAccuracyParams",
    "TopKIoUParams",
    "AurocParams",
    "SensitivityParams",
    "LocalLipschitzParams",
    "NoiseL2Params",
    "ComplexityParams",
    "ModelRandomisationParams",
    "RandomLogitParams",
    "model_randomisation",
    "random_logit",
    "resolve_metrics",
    "parse_metric_params",
    "check_mask",
]

METRIC_FAMILIES = ("faithfulness", "localisation", "robustness", "complexity", "randomisation")
# PERTURBATION_BASELINES (imported above) are the perturbation methods' own: a removed voxel takes the
# value that MedXAILib.methods.perturbation.perturbation_baseline gives, as in those methods.
ORDERS = ("morf", "lerf")
FEATURES = ("voxels", "supervoxels")


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one explanation quality metric.

    Attributes:
        name: stable snake_case identifier (CLI, saved results, the Slicer form).
        title: display name.
        family: one of :data:`METRIC_FAMILIES`.
        needs_mask: True when the metric compares the map with a ground-truth mask.
        higher_is_better: the better direction of ``value`` with default parameters; ``None`` when
            neither is better (complexity describes a map, it does not grade it). A result may
            carry its own ``higher_is_better`` when a parameter flips it (e.g. ``order=lerf``).
        reference: the paper that defines the metric.
        params: parameter dataclass (fields declared with :func:`MedXAILib.params.param`).
        summary: one line for listings and tooltips.
        implementation: ``"module:function"`` imported lazily by :meth:`load`.
        needs_method: True when the metric re-runs the explanation method (robustness,
            randomisation), which then has to be known.
    """

    name: str
    title: str
    family: str
    needs_mask: bool
    higher_is_better: Optional[bool]
    reference: str
    params: type
    summary: str = ""
    implementation: str = ""
    needs_method: bool = False

    def __post_init__(self) -> None:
        if self.family not in METRIC_FAMILIES:
            raise ValueError(f"unknown metric family {self.family!r} for {self.name}")

    def load(self) -> Callable[..., dict]:
        """The implementation ``function(ctx: MetricContext, params) -> dict``."""
        return load_implementation(self.implementation)


METRICS: Registry[MetricInfo] = Registry("metric")

# ------------------------------------------------------------------------------------------------
# Parameter dataclasses

_BASELINE_HELP = (
    "Value a removed voxel takes: zeros, each channel's minimum (air in CT), each channel's mean, "
    "or a Gaussian blur of the image (blur_sigma_mm)."
)
_ORDER_HELP = (
    "morf: most relevant voxels first (a faithful map makes the curve fall fast for deletion, rise "
    "fast for insertion); lerf: least relevant first (the better direction flips)."
)
_SIGMA_HELP = "Standard deviation of the Gaussian input noise as a fraction of each channel's intensity range."


@dataclass
class DeletionParams:
    n_steps: int = param(20, range=(1, 10000), help="Points on the curve after the unperturbed input: "
                         "step k removes k/n_steps of the voxels (or supervoxels).")
    order: str = param("morf", choices=ORDERS, help=_ORDER_HELP)
    baseline: str = param("zeros", choices=PERTURBATION_BASELINES, help=_BASELINE_HELP)
    blur_sigma_mm: float = blur_sigma_field()
    features: str = param("voxels", choices=FEATURES, help="Remove single voxels ranked by relevance, or "
                          "SLIC supervoxels ranked by their mean relevance (x axis: fraction of voxels removed).")
    n_segments: int = param(100, range=(2, 100000), help="Approximate number of supervoxels (features=supervoxels).")
    compactness: float = param(0.3, range=(1e-4, 1000.0), help="SLIC compactness (features=supervoxels).")
    batch_size: int = batch_size_field()


@dataclass
class InsertionParams(DeletionParams):
    baseline: str = param("blur", choices=PERTURBATION_BASELINES, help="Input that voxels are inserted into: "
                          "zeros, each channel's minimum or mean, or a Gaussian blur of the image (the paper's "
                          "choice; blur_sigma_mm).")


@dataclass
class FaithfulnessCorrelationParams:
    n_runs: int = param(64, range=(3, 100000), help="Random subsets of voxels removed, one forward each.")
    subset_fraction: float = param(0.05, range=(1e-7, 1.0), help="Size of each random subset as a fraction "
                                   "of the voxels (at least one voxel).")
    baseline: str = param("zeros", choices=PERTURBATION_BASELINES, help=_BASELINE_HELP)
    blur_sigma_mm: float = blur_sigma_field()
    batch_size: int = batch_size_field()


@dataclass
class RoadParams:
    n_steps: int = param(9, range=(1, 1000), help="Removal fractions k/(n_steps+1), k = 1..n_steps "
                         "(default 10 %, 20 %, ... 90 %); 100 % is never removed (nothing would be left "
                         "to impute from).")
    order: str = param("morf", choices=ORDERS, help=_ORDER_HELP)
    noise: float = param(0.01, range=(0.0, 10.0), help="Standard deviation of the noise added to the imputed "
                         "voxels, as a fraction of each channel's intensity range (the paper's 'noisy' part).")
    tolerance: float = param(1e-4, range=(1e-12, 0.1), help="Relative residual at which the imputation solve "
                             "stops: the imputed values are then accurate to about this fraction of the "
                             "intensity range (well below the default noise).")
    batch_size: int = batch_size_field()


@dataclass
class InfidelityParams:
    n_samples: int = param(32, range=(2, 100000), help="Gaussian perturbations averaged over.")
    sigma: float = param(0.1, range=(0.0, 10.0), help="Standard deviation of the perturbation I as a fraction "
                         "of each channel's intensity range.")
    normalize: bool = param(True, help="Scale the map by the beta that minimises infidelity first (Captum's "
                            "normalize; Yeh et al.'s experiments), so maps on different scales compare.")
    batch_size: int = batch_size_field()


@dataclass
class PointingGameParams:
    tolerance_mm: float = param(5.0, range=(0.0, None), unit="mm", help="A hit also counts when the maximum "
                                "lies within this distance of the mask (Zhang et al. used 15 pixels).")
    absolute: bool = param(False, help="Point with the largest |relevance| instead of the largest relevance.")


@dataclass
class EnergyPointingGameParams:
    bounding_box: bool = param(False, help="Use the mask's bounding box, as the paper does for object boxes, "
                               "instead of the mask itself.")


@dataclass
class RelevanceMassAccuracyParams:
    positive_only: bool = param(True, help="Count only positive relevance, as Arras et al. do; off sums the "
                                "signed map (Quantus' default).")


@dataclass
class RelevanceRankAccuracyParams:
    absolute: bool = param(False, help="Rank voxels by |relevance| instead of relevance.")


@dataclass
class TopKIoUParams:
    k_fraction: float = param(0.0, range=(0.0, 1.0), help="Top voxels kept, as a fraction of the image; "
                              "0 keeps as many voxels as the mask has.")
    absolute: bool = param(False, help="Rank voxels by |relevance| instead of relevance.")


@dataclass
class AurocParams:
    absolute: bool = param(True, help="Classify mask voxels by |relevance| (off: by signed relevance).")


@dataclass
class SensitivityParams:
    sigma: float = param(0.1, range=(0.0, 10.0), help=_SIGMA_HELP)
    n_samples: int = param(8, range=(1, 10000), help="Noisy inputs explained (one explanation each).")


@dataclass
class LocalLipschitzParams(SensitivityParams):
    normalise: str = param("max_abs", choices=("max_abs", "none"), help="Divide every map by its own "
                           "largest |value| first (Quantus' default), or compare raw maps.")


@dataclass
class NoiseL2Params(SensitivityParams):
    normalise: str = param("unit", choices=("unit", "none"), help="Scale every map to unit L2 norm first "
                           "(scale-free, in [0, 2]), or compare raw maps.")


@dataclass
class ComplexityParams:
    pass


@dataclass
class ModelRandomisationParams:
    stages: int = param(5, range=(1, 1000), help="Cumulative randomisation stages from the output layer "
                        "towards the input (one explanation each).")


@dataclass
class RandomLogitParams:
    other_class: int = param(-1, range=(-1, None), help="The class explained instead of the target's; -1 "
                             "draws one uniformly among the other classes.")


# ------------------------------------------------------------------------------------------------
# Registry entries

_PETSIUK = ("Petsiuk, Das, Saenko. RISE: Randomized Input Sampling for Explanation of Black-box Models. "
            "BMVC 2018. arXiv:1806.07421")
_BHATT = ("Bhatt, Weller, Moura. Evaluating and Aggregating Feature-based Model Explanations. IJCAI 2020. "
          "arXiv:2005.00631")
_YEH = ("Yeh, Hsieh, Suggala, Inouye, Ravikumar. On the (In)fidelity and Sensitivity of Explanations. "
        "NeurIPS 2019. arXiv:1901.09392")
_ARRAS = ("Arras, Osman, Samek. CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural "
          "network explanations. Information Fusion 81, 2022. arXiv:2003.07258")

_ENTRIES = [
    ("deletion", "Deletion (AUC)", "faithfulness", False, False, _PETSIUK, DeletionParams,
     "Target score as the most relevant voxels are removed; area under the curve (lower is better).",
     "faithfulness:deletion", False),
    ("insertion", "Insertion (AUC)", "faithfulness", False, True, _PETSIUK, InsertionParams,
     "Target score as the most relevant voxels are inserted into a baseline; area under the curve.",
     "faithfulness:insertion", False),
    ("faithfulness_correlation", "Faithfulness correlation", "faithfulness", False, True, _BHATT,
     FaithfulnessCorrelationParams,
     "Pearson correlation between the relevance of random voxel subsets and the score drop when they are removed.",
     "faithfulness:faithfulness_correlation", False),
    ("road", "ROAD (noisy linear imputation)", "faithfulness", False, False,
     "Rong, Leemann, Borisov, Kasneci, Kasneci. A Consistent and Efficient Evaluation Strategy for Attribution "
     "Methods. ICML 2022. arXiv:2202.00449", RoadParams,
     "Score as relevant voxels are removed and filled in from their neighbours (no out-of-distribution holes).",
     "faithfulness:road", False),
    ("infidelity", "Infidelity", "faithfulness", False, False, _YEH, InfidelityParams,
     "Mean squared error between I.map and f(x) - f(x - I) for Gaussian perturbations I.",
     "faithfulness:infidelity", False),
    ("pointing_game", "Pointing game", "localisation", True, True,
     "Zhang, Bargal, Lin, Brandt, Shen, Sclaroff. Top-Down Neural Attention by Excitation Backprop. IJCV 126, "
     "2018. arXiv:1608.00507", PointingGameParams,
     "1 when the most relevant voxel lies in the mask (within a tolerance in mm), else 0.",
     "localisation:pointing_game", False),
    ("energy_pointing_game", "Energy-based pointing game", "localisation", True, True,
     "Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu. Score-CAM: Score-Weighted Visual Explanations for "
     "Convolutional Neural Networks. CVPR Workshops 2020. arXiv:1910.01279", EnergyPointingGameParams,
     "Share of the positive relevance that falls inside the mask (or its bounding box).",
     "localisation:energy_pointing_game", False),
    ("relevance_mass_accuracy", "Relevance mass accuracy", "localisation", True, True, _ARRAS,
     RelevanceMassAccuracyParams, "Share of the (positive) relevance inside the mask.",
     "localisation:relevance_mass_accuracy", False),
    ("relevance_rank_accuracy", "Relevance rank accuracy", "localisation", True, True, _ARRAS,
     RelevanceRankAccuracyParams, "Share of the K most relevant voxels that lie in the mask (K = mask size).",
     "localisation:relevance_rank_accuracy", False),
    ("top_k_iou", "Top-k IoU", "localisation", True, True,
     "Intersection over union of the k most relevant voxels with the mask, as in weakly supervised "
     "localisation (e.g. Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016); "
     "precision = Theiner et al. 2021 top-k intersection", TopKIoUParams,
     "IoU between the k most relevant voxels and the mask.", "localisation:top_k_iou", False),
    ("auroc", "AUROC", "localisation", True, True,
     "Fawcett. An introduction to ROC analysis. Pattern Recognition Letters 27(8), 2006", AurocParams,
     "Area under the ROC curve of |relevance| as a voxel classifier of the mask.", "localisation:auroc", False),
    ("max_sensitivity", "Max-sensitivity", "robustness", False, False, _YEH, SensitivityParams,
     "Largest relative change ||map(x + noise) - map(x)|| / ||map(x)|| over noisy inputs.",
     "robustness:max_sensitivity", True),
    ("avg_sensitivity", "Average sensitivity", "robustness", False, False, _YEH, SensitivityParams,
     "Mean relative change ||map(x + noise) - map(x)|| / ||map(x)|| over noisy inputs.",
     "robustness:avg_sensitivity", True),
    ("local_lipschitz", "Local Lipschitz estimate", "robustness", False, False,
     "Alvarez-Melis, Jaakkola. On the Robustness of Interpretability Methods. ICML Workshop on Human "
     "Interpretability 2018. arXiv:1806.08049", LocalLipschitzParams,
     "Largest ||map(x') - map(x)|| / ||x' - x|| over noisy inputs x'.", "robustness:local_lipschitz", True),
    ("noise_l2", "Explanation L2 distance under noise", "robustness", False, False, _YEH, NoiseL2Params,
     "Mean L2 distance between the (unit-norm) maps of the input and of noisy inputs.",
     "robustness:noise_l2", True),
    ("sparseness", "Sparseness (Gini)", "complexity", False, None,
     "Chalasani, Chen, Chowdhury, Wu, Jha. Concise Explanations of Neural Networks using Adversarial "
     "Training. ICML 2020. arXiv:1810.06583", ComplexityParams,
     "Gini index of |relevance| over voxels: 0 uniform, 1 all relevance on one voxel.",
     "complexity:sparseness", False),
    ("entropy", "Complexity (entropy)", "complexity", False, None, _BHATT, ComplexityParams,
     "Shannon entropy of the voxels' shares of |relevance| (nats): low is concentrated.",
     "complexity:entropy", False),
    ("model_randomisation", "Model-parameter randomisation", "randomisation", False, False,
     "Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. Sanity Checks for Saliency Maps. NeurIPS 2018. "
     "arXiv:1810.03292", ModelRandomisationParams,
     "Spearman correlation of |map| with the map of a fully randomised network (low: the map depends on "
     "the learned weights).", "metrics:model_randomisation", True),
    ("random_logit", "Random logit", "randomisation", False, False,
     "Sixt, Granz, Landgraf. When Explanations Lie: Why Many Modified BP Attributions Fail. ICML 2020. "
     "arXiv:1912.09818", RandomLogitParams,
     "SSIM between the map and the map of another class (low: the map is class-specific).",
     "metrics:random_logit", True),
]

for _name, _title, _family, _mask, _better, _ref, _params, _summary, _impl, _method in _ENTRIES:
    METRICS.register(MetricInfo(_name, _title, _family, _mask, _better, _ref, _params, _summary,
                                f"MedXAILib.evaluation.{_impl}", _method))
del _name, _title, _family, _mask, _better, _ref, _params, _summary, _impl, _method


def metric_names(family: Optional[str] = None) -> list[str]:
    """Registered metric names, optionally of one family, in registration order."""
    if family is not None and family not in METRIC_FAMILIES:
        raise ParameterError(f"unknown metric family {family!r}; use one of {', '.join(METRIC_FAMILIES)}")
    return [m.name for m in METRICS if family is None or m.family == family]


def default_metrics(has_mask: bool, has_method: bool) -> list[str]:
    """The metrics :func:`evaluate` runs when none are named: every one whose inputs are available."""
    return [m.name for m in METRICS if (has_mask or not m.needs_mask) and (has_method or not m.needs_method)]


def derive_seed(seed: int, name: str) -> int:
    """A seed for the random draws of `name` (a metric or family), independent of the others."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


# ------------------------------------------------------------------------------------------------
# What every metric receives


@dataclass
class MetricContext:
    """Inputs and services for one :func:`evaluate` call, shared by its metrics.

    Attributes:
        image: the input volume.
        model: the model adapter; ``bound`` is it bound to the image grid.
        x: the input (1, C, I, J, K) on the model's device.
        output: the model output for ``x`` (no grad).
        scorer: output -> target score (B,), with class and region fixed from ``x``.
        target: the target with its class (and, for segmenters, its region as a mask) fixed, so
            re-explanations explain the same quantity.
        attribution: the map evaluated, (C', I, J, K) float32 with C' = C or 1 (channel-summed).
        mask: ground-truth mask (I, J, K) bool, or None.
        method, method_params, explain_seed: how to re-run the explanation (robustness and
            randomisation); ``method`` may be None when no metric needs it.
        monitor: progress and cancel.
        seed: the evaluation seed (see :func:`derive_seed`).
        cache: results shared between metrics (e.g. the noisy explanations of the robustness family).
    """

    image: "ImageVolume"
    model: "ModelAdapter"
    bound: Any
    x: "torch.Tensor"
    output: "torch.Tensor"
    scorer: Any
    target: "Target"
    attribution: np.ndarray
    mask: Optional[np.ndarray]
    method: Optional[str]
    method_params: Any
    explain_seed: int
    monitor: "Monitor"
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def relevance(self) -> np.ndarray:
        """The channel-summed map (I, J, K) in float64."""
        if "relevance" not in self.cache:
            self.cache["relevance"] = self.attribution.astype(np.float64).sum(axis=0)
        return self.cache["relevance"]

    @property
    def spacing(self) -> np.ndarray:
        return self.image.spacing

    @property
    def n_classes(self) -> int:
        return int(self.output.shape[1])

    @property
    def score_input(self) -> float:
        """The target score of the unperturbed input."""
        import torch

        if "score_input" not in self.cache:
            with torch.no_grad():
                self.cache["score_input"] = float(self.scorer(self.output).reshape(-1)[0])
        return self.cache["score_input"]

    def generator(self, name: str) -> "torch.Generator":
        """A CPU generator seeded by the evaluation seed and `name` (:func:`derive_seed`)."""
        import torch

        return torch.Generator().manual_seed(derive_seed(self.seed, name))

    def require_mask(self, metric: str) -> np.ndarray:
        if self.mask is None:
            raise InputError(f"metric '{metric}' compares the map with a ground-truth mask; pass mask= "
                             "(--mask on the command line)")
        return self.mask

    def score(self, batch: "torch.Tensor", scorer: Any = None) -> np.ndarray:
        """Target scores (B,) of a batch of inputs, without autograd, as float64."""
        import torch

        with torch.no_grad():
            out = (scorer or self.scorer)(self.bound(batch))
        return out.detach().double().cpu().numpy().reshape(-1)

    def forward(self, batch: "torch.Tensor") -> "torch.Tensor":
        """Model outputs for a batch of inputs, without autograd."""
        import torch

        with torch.no_grad():
            return self.bound(batch)

    def score_batches(self, n: int, batch_size: int, make_batch: Callable[[int, int], "torch.Tensor"],
                      label: str, on_outputs: Optional[Callable[[int, "torch.Tensor"], None]] = None) -> np.ndarray:
        """Score `n` inputs built ``batch_size`` at a time (one forward pass per batch), with progress.

        Args:
            make_batch: ``(start, stop) -> (stop - start, C, I, J, K)`` inputs.
            label: progress message prefix.
            on_outputs: called as ``on_outputs(start, outputs)`` after each forward pass.
        """
        import torch

        scores = np.zeros(n, dtype=np.float64)
        self.monitor.update(0.0, f"{label}: {n} perturbed inputs")
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            with torch.no_grad():
                batch = make_batch(start, stop)
                outputs = self.bound(batch)
                scores[start:stop] = self.scorer(outputs).detach().double().cpu().numpy().reshape(-1)
                if on_outputs is not None:
                    on_outputs(start, outputs)
            del batch, outputs
            self.monitor.update(stop / n, f"{label}: {stop}/{n} perturbed inputs")
        return scores

    def baseline(self, kind: str, blur_sigma_mm: float = 8.0) -> "torch.Tensor":
        """The value removed voxels take, (1, C, I, J, K): zeros, min, mean or blur (as the methods)."""
        from ..methods.perturbation import perturbation_baseline

        key = f"baseline:{kind}:{blur_sigma_mm}"
        if key not in self.cache:
            self.cache[key] = perturbation_baseline(self._method_context(), kind, blur_sigma_mm)
        return self.cache[key]

    def channel_range(self) -> "torch.Tensor":
        """max - min of each channel of the input, shaped (1, C, 1, 1, 1)."""
        dims = (2, 3, 4)
        return self.x.amax(dim=dims, keepdim=True) - self.x.amin(dim=dims, keepdim=True)

    def as_evaluated(self, array: np.ndarray) -> np.ndarray:
        """A (C, I, J, K) map in the channel layout of the evaluated attribution (summed if it is)."""
        if self.attribution.shape[0] == 1 and array.shape[0] > 1:
            return array.sum(axis=0, keepdims=True)
        return array

    def explain(self, x: "torch.Tensor", target: Any = None) -> np.ndarray:
        """Re-run the explanation method on input `x` (1, C, I, J, K), as :func:`MedXAILib.explain` would.

        The target (default: the fixed target of the evaluation) is resolved against the model's
        output for `x`; the method runs with the attribution's own seed, so the method's internal
        randomness is the same as for the evaluated map and only the input differs.

        Returns:
            The map (C, I, J, K) float32 in the layout of the evaluated attribution.
        """
        import torch

        from ..methods import METHODS
        from ..methods.context import MethodContext
        from ..scoring import resolve_target

        if self.method is None:
            raise ParameterError("this metric re-runs the explanation method; pass method= (the attribution "
                                 "carries no provenance naming it)")
        info = METHODS.get(self.method)
        x = x.detach()
        with torch.no_grad():
            output = self.bound(x)
        scorer = resolve_target(target or self.target, output, self.model.task, self.model.output_activation,
                                spacing=self.image.spacing)
        torch.manual_seed(self.explain_seed)  # as explain() does, for methods that use the global RNG
        generator = torch.Generator().manual_seed(self.explain_seed)
        image = self.image.with_array(x[0].detach().cpu().numpy())
        ctx = MethodContext(x=x, model=self.bound, scorer=scorer, image=image, monitor=self.monitor,
                            generator=generator)
        result = info.load()(ctx, self.method_params)[0].detach().float().cpu().numpy()
        if not np.all(np.isfinite(result)):
            raise TargetError(f"method '{info.name}' produced non-finite values on a perturbed input")
        return self.as_evaluated(result)

    def _method_context(self) -> Any:
        from ..methods.context import MethodContext

        return MethodContext(x=self.x, model=self.bound, scorer=self.scorer, image=self.image,
                             monitor=self.monitor, generator=self.generator("baseline"))


# ------------------------------------------------------------------------------------------------
# evaluate()


def resolve_metrics(metrics: Optional[Sequence[str]], has_mask: bool, has_method: bool) -> list[MetricInfo]:
    if metrics is None:
        return [METRICS.get(n) for n in default_metrics(has_mask, has_method)]
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(" ", "").split(",") if m]
    infos, seen = [], set()
    for name in metrics:
        info = METRICS.get(name)
        if info.name not in seen:
            seen.add(info.name)
            infos.append(info)
    if not infos:
        raise ParameterError(f"no metric named; choose from {', '.join(metric_names())}")
    return infos


def parse_metric_params(infos: Sequence[MetricInfo], params: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    params = dict(params or {})
    names = {i.name for i in infos}
    for key in params:
        if key not in names:
            info = METRICS.get(key)  # unknown names raise with the closest one
            raise ParameterError(f"parameters were given for metric '{info.name}', which is not evaluated "
                                 f"(evaluated: {', '.join(sorted(names))})")
    out = {}
    for info in infos:
        value = params.get(info.name)
        out[info.name] = value if isinstance(value, info.params) else make_params(info.params, value)
    return out


def check_mask(mask: Any, shape: tuple[int, int, int], infos: Sequence[MetricInfo]) -> Optional[np.ndarray]:
    if mask is None:
        missing = [i.name for i in infos if i.needs_mask]
        if missing:
            raise InputError(f"metric(s) {', '.join(missing)} compare the map with a ground-truth mask; pass "
                             "mask= (--mask on the command line)")
        return None
    array = np.asarray(mask)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.shape != tuple(shape):
        raise GeometryError(f"the mask has shape {array.shape} but the image grid is {tuple(shape)}; resample it "
                            "onto the image first (MedXAILib.io.read_label_map does)")
    if not np.all(np.isfinite(array)):
        raise InputError("the mask has NaN or infinite values")
    array = array != 0
    if any(i.needs_mask for i in infos):
        if not array.any():
            raise InputError("the mask is empty: localisation metrics need at least one mask voxel")
        if array.all():
            raise InputError("the mask covers the whole image: localisation metrics need voxels outside it too")
    return array


def _check_attribution(attribution: Any, image: "ImageVolume") -> np.ndarray:
    array = np.asarray(getattr(attribution, "array", attribution), dtype=np.float32)
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4 or tuple(array.shape[1:]) != image.shape:
        raise GeometryError(f"the attribution has shape {tuple(array.shape)} but the image grid is "
                            f"{image.shape}; evaluate a map computed on this image")
    if array.shape[0] not in (1, image.n_channels):
        raise GeometryError(f"the attribution has {array.shape[0]} channels for an image with "
                            f"{image.n_channels}; give one map per channel or their sum")
    affine = getattr(attribution, "affine", None)
    if affine is not None and not np.allclose(np.asarray(affine), image.affine, atol=1e-4):
        raise GeometryError("the attribution's geometry (affine) differs from the image's; evaluate a map "
                            "computed on this image")
    if not np.all(np.isfinite(array)):
        raise InputError("the attribution has NaN or infinite values")
    return array


def _fixed_target(target: "Target", scorer: Any, task: str) -> "Target":
    from ..target import Target

    if task == "classification":
        return dataclasses.replace(target, class_index=scorer.class_index)
    return Target(class_index=scorer.class_index, region="mask", mask=scorer.region.bool().cpu().numpy(),
                  score=target.score, reduction=target.reduction)


class EvaluationResults(dict):
    """What :func:`evaluate` returns: ``{metric: result}``, plus :attr:`graded`, the record of what was
    graded (image, model, method, target, mask, and whether the map's provenance was checked)."""

    graded: dict[str, Any]

    def __init__(self, *args: Any, graded: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.graded = dict(graded or {})


def _provenance_message(problems: Sequence[str]) -> str:
    return ("the attribution does not belong to what it would be graded for: " + "; ".join(problems)
            + ". Give the map's own model and target (--target-* options), or pass --ignore-provenance "
            "(check_provenance=False) to grade it anyway")


#: Target fields that must agree between a map's provenance and the target it is graded for.
_TARGET_FIELDS = ("class_index", "score", "reduction", "region_voxels")


def provenance_mismatches(provenance: Mapping[str, Any], model: "ModelAdapter", image: "ImageVolume",
                          target: Mapping[str, Any]) -> list[str]:
    """How a map's provenance disagrees with what it is about to be graded for (empty: it agrees).

    Compares the model's weights (SHA-256), the input's grid and channels, and the resolved target
    (class, score, reduction and the size of its region); fields missing on either side are not
    compared, so a map without provenance passes.

    Args:
        provenance: the map's provenance (:attr:`MedXAILib.Attribution.provenance`).
        model: the model the map is graded with.
        image: the image it is graded on.
        target: the resolved target's description (``TargetScorer.describe()``).
    """
    problems = []
    made_with = (provenance.get("model") or {}).get("sha256")
    if made_with and model.sha256 and made_with != model.sha256:
        problems.append(f"it was computed with model {(provenance.get('model') or {}).get('id') or '?'} (weights "
                        f"SHA-256 {made_with[:12]}...), not with the model given ({model.sha256[:12]}...)")
    source = provenance.get("input") or {}
    if source.get("shape") and list(source["shape"]) != list(image.shape):
        problems.append(f"it was computed on an image of shape {source['shape']}, not {list(image.shape)}")
    if source.get("channels") and int(source["channels"]) != image.n_channels:
        problems.append(f"it was computed on {source['channels']} channel(s), not {image.n_channels}")
    made_for = provenance.get("target") or {}
    differing = [f"{key} {made_for[key]!r} (given: {target.get(key)!r})" for key in _TARGET_FIELDS
                 if key in made_for and key in target and made_for[key] != target[key]]
    if differing:
        name = provenance.get("target_name")
        problems.append(f"its target{f' ({name})' if name else ''} differs: " + ", ".join(differing))
    return problems


def graded_record(image: "ImageVolume", model: "ModelAdapter", method: Optional[str], method_params: Any,
                  target: Mapping[str, Any], target_name: Optional[str], provenance: Mapping[str, Any],
                  mask: Optional[np.ndarray], checked: bool) -> dict[str, Any]:
    """What a grade refers to, for its JSON: the image, the model, the method, the target and the mask."""
    return {
        "image": {"source": str(image.meta.get("source", "<memory>")), "shape": list(image.shape),
                  "channels": image.n_channels, "channel_names": list(image.channel_names),
                  "spacing_mm": [round(float(v), 6) for v in image.spacing]},
        "model": model.describe(),
        "method": method,
        "method_parameters": params_to_dict(method_params) if dataclasses.is_dataclass(method_params) else method_params,
        "target": dict(target),
        "target_name": target_name,
        "mask_voxels": None if mask is None else int(np.count_nonzero(mask)),
        "attribution": {key: provenance.get(key) for key in ("method", "target", "target_name", "created", "seed")
                        if key in provenance},
        "attribution_model_sha256": (provenance.get("model") or {}).get("sha256"),
        "provenance_checked": bool(checked),
    }


#: Forward passes of the model per metric, as a function of its parameters (for the cost estimate).
_PASSES: dict[str, Callable[[Any], int]] = {
    "deletion": lambda p: p.n_steps + 1,
    "insertion": lambda p: p.n_steps + 1,
    "faithfulness_correlation": lambda p: p.n_runs,
    "road": lambda p: p.n_steps,
    "infidelity": lambda p: p.n_samples,
}
#: Explanations (each costing the method's own passes) per metric that re-runs the method.
_EXPLANATIONS: dict[str, Callable[[Any], int]] = {
    "max_sensitivity": lambda p: p.n_samples,
    "avg_sensitivity": lambda p: p.n_samples,
    "local_lipschitz": lambda p: p.n_samples,
    "noise_l2": lambda p: p.n_samples,
    "model_randomisation": lambda p: p.stages + 1,
    "random_logit": lambda p: 1,
}


def method_passes(method: str, params: Any, shape: Optional[Sequence[int]] = None) -> Optional[int]:
    """Model passes (forward + backward, or forward for perturbations) of one explanation with
    `method` and its `params` on a grid of `shape`, or None when it depends on more than that
    (adaptive occlusion, Score-CAM's layer width, window sizes in mm)."""
    import math

    from ..methods import METHODS

    name = METHODS.get(method).name
    for field_name in ("n_steps", "n_masks"):
        if hasattr(params, field_name):
            return int(getattr(params, field_name))
    if hasattr(params, "n_samples"):
        return int(params.n_samples)
    if hasattr(params, "n_segments"):
        return int(params.n_segments) + 1
    if name == "occlusion":
        try:
            window, stride = int(str(params.window)), int(str(params.stride))
        except ValueError:
            return None
        if shape is None:
            return None
        return 1 + math.prod(max(math.ceil((n - window) / stride), 0) + 1 for n in shape)
    if name in ("adaptive_occlusion", "score_cam"):
        return None
    return 1


def estimate_passes(infos: Sequence[MetricInfo], metric_params: Mapping[str, Any],
                    method_passes: Optional[int] = None) -> dict[str, Any]:
    """The cost of grading one map before any work: model passes per metric.

    Args:
        infos: the metrics (:func:`resolve_metrics`).
        metric_params: their parameters (:func:`parse_metric_params`).
        method_passes: forward + backward passes of one explanation with the graded method (for the
            metrics that re-run it), when known.

    Returns:
        ``forward_passes`` (metrics that only run the model, batched), ``explanations`` (re-runs
        of the method; robustness metrics share one set), ``passes`` (the total in model passes,
        counting ``method_passes`` per explanation, or 1 when unknown) and ``per_metric``.
    """
    per_metric, forward, explanations = {}, 0, 0
    robustness_done = False
    for info in infos:
        params = metric_params[info.name]
        n_forward = _PASSES[info.name](params) if info.name in _PASSES else 0
        n_explain = _EXPLANATIONS[info.name](params) if info.name in _EXPLANATIONS else 0
        if info.family == "robustness":  # the four share one set of noisy explanations
            n_explain = 0 if robustness_done else n_explain
            robustness_done = True
        per_metric[info.name] = {"forward_passes": n_forward, "explanations": n_explain}
        forward += n_forward
        explanations += n_explain
    return {"forward_passes": forward, "explanations": explanations,
            "passes": forward + explanations * max(int(method_passes or 1), 1), "per_metric": per_metric}


def evaluate(
    image: "ImageVolume",
    model: "ModelAdapter",
    attribution: "Attribution",
    target: Optional["Target"] = None,
    metrics: Optional[Sequence[str]] = None,
    mask: Optional[np.ndarray] = None,
    method: Optional[str] = None,
    params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    monitor: Optional["Monitor"] = None,
    seed: int = 0,
    method_params: Optional[Mapping[str, Any]] = None,
    check_provenance: bool = True,
) -> EvaluationResults:
    """Grade an attribution map with explanation quality metrics.

    Args:
        image: the input volume the map was computed on.
        model: the model explained (a :class:`ModelAdapter`, an ``nn.Module`` or a model path).
        attribution: the map, an :class:`Attribution` (or a (C, I, J, K) / (I, J, K) array) on the
            image grid, with C the image's channels or 1 (channel-summed, as saved files hold).
        target: what the map explains; its class and region are fixed from the unperturbed input.
            Default: the target in the map's provenance when it can be rebuilt from it
            (:meth:`MedXAILib.Target.from_description`), else the predicted class of a classifier.
        metrics: metric names (``METRICS.names()``); default: every metric whose inputs are available
            (the localisation family needs `mask`, robustness and randomisation a method).
        mask: ground-truth mask (I, J, K) on the image grid, non-zero inside.
        method: the method that made the map, re-run by robustness and randomisation metrics;
            default: the attribution's provenance.
        params: per-metric parameters, ``{"deletion": {"n_steps": 10}, ...}`` (strings allowed).
        monitor: progress and cancel; ``Cancelled`` propagates and nothing is returned.
        seed: seeds every random draw of the metrics (see :func:`derive_seed`).
        method_params: the method's parameters; default: the provenance's when `method` is the
            provenance's method, else the method's defaults.
        check_provenance: refuse a map whose provenance names another model (weights), image grid
            or target than the ones given (:func:`provenance_mismatches`); False grades it anyway
            and says so in the record.

    Returns:
        An :class:`EvaluationResults`: ``{metric: {"value": float, ...}}`` in the order asked, and
        ``.graded`` (:func:`graded_record`). Each result holds its ``value``,
        ``higher_is_better`` (the effective direction), ``seconds``, the metric's ``parameters``
        and its curves or details (e.g. ``fractions`` and ``curve`` for deletion). A value that is
        undefined for this input (e.g. a correlation of constant data) is NaN with a ``warning``.

    Raises:
        MedXAIError subclasses with an actionable message: unknown metric or parameter, mask
        missing, empty or off the grid, attribution off the grid, method unknown or missing;
        :class:`~MedXAILib.errors.ProvenanceError` for a map made for another model or target.
    """
    import torch

    from ..methods import METHODS
    from ..model import ModelAdapter, load_model
    from ..monitor import Monitor
    from ..scoring import resolve_target
    from ..target import Target
    from ..volume import ImageVolume

    provenance = dict(getattr(attribution, "provenance", None) or {})
    method = method or provenance.get("method")
    infos = resolve_metrics(metrics, mask is not None, method is not None)
    metric_params = parse_metric_params(infos, params)
    if method is None and any(i.needs_method for i in infos):
        needing = ", ".join(i.name for i in infos if i.needs_method)
        raise ParameterError(f"metric(s) {needing} re-run the explanation method; pass method= (--method): the "
                             "attribution carries no provenance naming it")
    method_info = METHODS.get(method) if method is not None else None
    if method_info is not None:
        if method_params is None and provenance.get("method") == method_info.name:
            method_params = provenance.get("parameters") or {}
        if not isinstance(method_params, method_info.params):
            method_params = make_params(method_info.params, method_params)
    if not isinstance(image, ImageVolume):
        raise InputError(f"image must be an ImageVolume; got {type(image).__name__}")
    image.check_finite()
    array = _check_attribution(attribution, image)
    mask = check_mask(mask, image.shape, infos)
    adapter = model if isinstance(model, ModelAdapter) else load_model(model)
    adapter.check_input(image.n_channels)
    monitor = monitor or Monitor()
    target = target or Target.from_description(provenance.get("target")) or Target()

    if check_provenance and (problems := provenance_mismatches(provenance, adapter, image, {})):
        raise ProvenanceError(_provenance_message(problems))  # model and grid: before the model runs
    monitor.update(0.0, "Running the model on the input")
    bound = adapter.bind(image.affine, image.shape, image.array)
    x = torch.as_tensor(image.array, device=adapter.device).unsqueeze(0)
    with torch.no_grad():
        output = bound(x)
    scorer = resolve_target(target, output, adapter.task, adapter.output_activation, spacing=image.spacing)
    described = scorer.describe()
    if check_provenance and (problems := provenance_mismatches(provenance, adapter, image, described)):
        raise ProvenanceError(_provenance_message(problems))
    names = adapter.class_names or []
    graded = graded_record(image, adapter, method_info.name if method_info else None, method_params, described,
                           names[scorer.class_index] if scorer.class_index < len(names) else None, provenance,
                           mask, check_provenance)
    ctx = MetricContext(
        image=image, model=adapter, bound=bound, x=x, output=output, scorer=scorer,
        target=_fixed_target(target, scorer, adapter.task), attribution=array, mask=mask,
        method=method_info.name if method_info else None, method_params=method_params,
        explain_seed=int(provenance.get("seed", seed)), monitor=monitor, seed=int(seed),
    )
    results = EvaluationResults(graded=graded)
    for index, info in enumerate(infos):
        started = time.perf_counter()
        with monitor.stage(0.02 + 0.98 * index / len(infos), 0.02 + 0.98 * (index + 1) / len(infos)):
            monitor.update(0.0, f"{info.title}")
            result = dict(info.load()(ctx, metric_params[info.name]))
        value = result.get("value")
        result["value"] = float("nan") if value is None else float(value)
        result.setdefault("higher_is_better", info.higher_is_better)
        result["parameters"] = params_to_dict(metric_params[info.name])
        result["seconds"] = round(time.perf_counter() - started, 4)
        results[info.name] = result
    monitor.update(1.0, "Evaluation done")
    return results


# ------------------------------------------------------------------------------------------------
# Randomisation family (reuses evaluation.randomisation)


def model_randomisation(ctx: MetricContext, params: ModelRandomisationParams) -> dict[str, Any]:
    """Cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018).

    Runs :func:`MedXAILib.evaluation.randomisation.cascading_randomisation` with the evaluation's
    fixed target, method, parameters and seed. ``value`` is the Spearman correlation of the
    absolute maps after every layer is randomised (the paper's headline measure; lower is better:
    the map depends on what the network learned); the per-stage signed and absolute Spearman
    correlations and the 3D SSIM of the absolute maps are returned as curves.
    """
    from .randomisation import cascading_randomisation

    _, steps = cascading_randomisation(ctx.image, ctx.model, ctx.method, ctx.target, ctx.method_params,
                                       stages=params.stages, seed=ctx.explain_seed, monitor=ctx.monitor)
    last = steps[-1]
    return {
        "value": last.spearman_abs,
        "spearman": last.spearman,
        "spearman_abs": last.spearman_abs,
        "ssim_abs": last.ssim_abs,
        "stages": [dataclasses.asdict(s) for s in steps],
    }


def random_logit(ctx: MetricContext, params: RandomLogitParams) -> dict[str, Any]:
    """Random-logit test (Sixt, Granz, Landgraf, ICML 2020).

    Explains another class (``other_class``, or one drawn uniformly among the other classes with
    the metric's seeded generator) over the same region with the same method and seed, and compares
    the two maps: Spearman rank correlation (signed and absolute) and the 3D SSIM of the absolute
    maps scaled to [0, 1] (:func:`MedXAILib.evaluation.randomisation.map_similarity`). ``value`` is
    the SSIM, the paper's measure (lower is better: the map is specific to the class explained).
    Quantus' RandomLogit computes SSIM on the flattened map (a 1D window over voxels in memory
    order); a 3D window compares spatial structure, which is what the paper's 2D SSIM does on images.
    """
    import torch

    from .randomisation import map_similarity

    n = ctx.n_classes
    own = int(ctx.scorer.class_index)
    if n < 2:
        raise TargetError("the random-logit test needs a model with at least two output classes")
    if params.other_class >= 0:
        other = int(params.other_class)
        if other >= n or other == own:
            raise ParameterError(f"other_class must be a class index in 0..{n - 1} other than the target's "
                                 f"({own}); got {other}")
    else:
        choices = [c for c in range(n) if c != own]
        other = choices[int(torch.randint(len(choices), (1,), generator=ctx.generator("random_logit")))]
    other_target = dataclasses.replace(ctx.target, class_index=other)
    other_map = ctx.explain(ctx.x, other_target)
    similarity = map_similarity(ctx.attribution, other_map)
    return {"value": similarity["ssim_abs"], "other_class": other, **similarity}

