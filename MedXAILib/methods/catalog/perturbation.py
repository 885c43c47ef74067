"""Perturbation family: metadata and parameter dataclasses (importable without torch).

Methods: occlusion (exhaustive and adaptive coarse-to-fine), RISE, feature ablation over regions,
and LIME over regions. KernelSHAP (in
``game_theoretic``) shares the region parameters declared here (:class:`RegionParams`).

Conventions shared by every perturbation method:

- A perturbed voxel takes the value of a *baseline* volume (``zeros``, each channel's ``min`` or
  ``mean``, or a Gaussian ``blur`` of the image), never a silently invented value.
- Perturbed inputs are evaluated in batches of ``batch_size`` forward passes without autograd.
- Multi-channel inputs (e.g. CT + PET): by default all channels of a window or region are
  perturbed together and the attribution of that window/region is split equally across the
  channels, so the channel-summed map carries the whole attribution and the channel shares are
  equal (uninformative). With ``per_channel`` on, every channel of every window/region is
  perturbed on its own (C times the forward passes), which gives genuine per-channel maps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...params import param
from ...registry import METHODS, MethodInfo

from ._common import BOTH
from .fields import batch_size_field, blur_sigma_field

__all__ = [
    "PERTURBATION_BASELINES",
    "REGION_KINDS",
    "RegionParams",
    "OcclusionParams",
    "AdaptiveOcclusionParams",
    "RiseParams",
    "FeatureAblationParams",
    "LimeParams",
]

PERTURBATION_BASELINES = ("zeros", "min", "mean", "blur")
REGION_KINDS = ("supervoxels", "grid", "labels")
UNITS = ("voxels", "mm")
DISTANCES = ("cosine", "euclidean")

_BASELINE_HELP = (
    "Value a perturbed voxel takes: zeros, each channel's minimum (air in CT), each channel's mean "
    "(the grey square of Zeiler & Fergus), or a Gaussian blur of the image (blur_sigma_mm)."
)
_PER_CHANNEL_HELP = (
    "Perturb each input channel of a window/region on its own (C times the forward passes) for "
    "genuine per-channel maps; off: channels are perturbed together and the attribution is split "
    "equally across them."
)


def _unit_field():
    return param(
        "voxels",
        choices=UNITS,
        help="Unit of window and stride; mm is converted per axis with the voxel spacing.",
    )


@dataclass
class RegionParams:
    """Parameters shared by the region-based methods (feature ablation, LIME, KernelSHAP)."""

    regions: str = param(
        "supervoxels",
        choices=REGION_KINDS,
        help="What a feature is: SLIC supervoxels of the image (isotropic in mm), cubes of a "
        "regular grid, or the structures of a label map (every label, background included).",
    )
    n_segments: int = param(
        50, range=(2, 100000), help="Approximate number of supervoxels (regions=supervoxels)."
    )
    compactness: float = param(
        0.3,
        range=(1e-4, 1000.0),
        help="SLIC compactness on intensities scaled to [0, 1] per channel (1st-99th percentile): "
        "higher gives rounder supervoxels, lower follows intensity edges more closely.",
    )
    grid_cell: str = param(
        "8",
        unit="voxels",
        help="Edge of a grid cell (regions=grid): one number for all axes or 'a,b,c' for I, J, K.",
    )
    label_map: str = param(
        "",
        help="Path of a label map (regions=labels), resampled (nearest neighbour) onto the image grid.",
    )


@dataclass
class OcclusionParams:
    window: str = param(
        "16",
        help="Edge of the occluding box: one number for all axes or 'a,b,c' for I, J, K (in "
        "`unit`); clipped to the image with a warning.",
    )
    stride: str = param(
        "8",
        help="Step between box positions: one number or 'a,b,c' (in `unit`); at most the window, "
        "so that every voxel is occluded at least once.",
    )
    unit: str = _unit_field()
    baseline: str = param("mean", choices=PERTURBATION_BASELINES, help=_BASELINE_HELP)
    blur_sigma_mm: float = blur_sigma_field()
    per_channel: bool = param(False, help=_PER_CHANNEL_HELP)
    batch_size: int = batch_size_field()


@dataclass
class AdaptiveOcclusionParams:
    window: str = param(
        "8",
        help="Edge of the fine occluding box: one number for all axes or 'a,b,c' for I, J, K (in `unit`).",
    )
    stride: str = param("4", help="Step between fine box positions: one number or 'a,b,c' (in `unit`).")
    unit: str = _unit_field()
    coarse_factor: int = param(
        2, range=(2, 16), help="The coarse pass uses window and stride times this factor."
    )
    refine_fraction: float = param(
        0.1,
        range=(0.001, 1.0),
        help="Share of the coarse boxes, those with the largest |score drop|, whose area is refined "
        "with fine boxes; the rest keeps the coarse map.",
    )
    compare_exhaustive: bool = param(
        False,
        help="Also run the remaining fine boxes and record the Spearman correlation of the map with "
        "exhaustive occlusion (a check; costs the exhaustive run).",
    )
    baseline: str = param("mean", choices=PERTURBATION_BASELINES, help=_BASELINE_HELP)
    blur_sigma_mm: float = blur_sigma_field()
    batch_size: int = batch_size_field()


@dataclass
class RiseParams:
    n_masks: int = param(
        256,
        range=(1, 1000000),
        help="Random masks evaluated (one forward pass each); the paper uses thousands in 2D, so "
        "raise it for smoother maps.",
    )
    cells: int = param(
        6, range=(1, 1024), help="Cells per axis of the low-resolution random grid before upsampling."
    )
    probability: float = param(
        0.5, range=(0.01, 0.99), help="Probability that a cell of the random grid is kept (p)."
    )
    baseline: str = param(
        "zeros",
        choices=PERTURBATION_BASELINES,
        help="Value where a mask is 0: x*m + b*(1-m). zeros is the paper's x*m. " + _BASELINE_HELP,
    )
    blur_sigma_mm: float = blur_sigma_field()
    per_channel: bool = param(
        False,
        help="Draw an independent mask per input channel for genuine per-channel maps; off: one "
        "mask for all channels and the saliency is split equally across them.",
    )
    batch_size: int = batch_size_field()


@dataclass
class _PerturbationCommon:
    baseline: str = param("mean", choices=PERTURBATION_BASELINES, help=_BASELINE_HELP)
    blur_sigma_mm: float = blur_sigma_field()
    per_channel: bool = param(False, help=_PER_CHANNEL_HELP)
    batch_size: int = batch_size_field()


@dataclass
class FeatureAblationParams(_PerturbationCommon, RegionParams):
    """Region parameters, then baseline, blur_sigma_mm, per_channel, batch_size."""


@dataclass
class LimeParams(RegionParams):
    n_samples: int = param(200, range=(2, 1000000), help="Random coalitions of regions evaluated.")
    kernel_width: float = param(
        1.0,
        range=(1e-6, None),
        help="Width of the exponential similarity kernel exp(-d^2 / (2 width^2)) on the distance "
        "between the input and a perturbed input (Captum's default).",
    )
    distance: str = param(
        "cosine", choices=DISTANCES, help="Distance between the input and a perturbed input in the kernel."
    )
    baseline: str = param("mean", choices=PERTURBATION_BASELINES, help=_BASELINE_HELP)
    blur_sigma_mm: float = blur_sigma_field()
    per_channel: bool = param(False, help=_PER_CHANNEL_HELP)
    batch_size: int = batch_size_field()


METHODS.register(
    MethodInfo(
        name="occlusion",
        title="Occlusion",
        family="perturbation",
        tasks=BOTH,
        params=OcclusionParams,
        reference="Zeiler, Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014. "
        "arXiv:1311.2901",
        summary="Slide a box over the volume; each voxel gets the mean drop of the target score over "
        "the box positions that cover it (Captum Occlusion semantics).",
        implementation="MedXAILib.methods.perturbation:occlusion",
    )
)
METHODS.register(
    MethodInfo(
        name="adaptive_occlusion",
        title="Occlusion, adaptive (coarse to fine)",
        family="perturbation",
        tasks=BOTH,
        params=AdaptiveOcclusionParams,
        reference="Zeiler, Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014. "
        "arXiv:1311.2901 (occlusion; coarse-to-fine refinement by MedXAI)",
        summary="Occlusion with coarse boxes, refined with fine boxes only where the coarse score drop "
        "is largest; exact occlusion there, the coarse map elsewhere.",
        implementation="MedXAILib.methods.perturbation:adaptive_occlusion",
    )
)
METHODS.register(
    MethodInfo(
        name="rise",
        title="RISE (randomised input sampling)",
        family="perturbation",
        tasks=BOTH,
        params=RiseParams,
        reference="Petsiuk, Das, Saenko. RISE: Randomized Input Sampling for Explanation of Black-box "
        "Models. BMVC 2018. arXiv:1806.07421",
        summary="Score-weighted average of random smooth masks: sum_i f(x*m_i) m_i / (N p).",
        implementation="MedXAILib.methods.perturbation:rise",
    )
)
METHODS.register(
    MethodInfo(
        name="feature_ablation",
        title="Feature ablation (regions)",
        family="perturbation",
        tasks=BOTH,
        params=FeatureAblationParams,
        reference="Zeiler, Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014. "
        "arXiv:1311.2901 (occlusion by region, as in Captum FeatureAblation with a feature mask)",
        summary="Replace one region at a time by the baseline; the score drop is painted on the region.",
        implementation="MedXAILib.methods.perturbation:feature_ablation",
    )
)
METHODS.register(
    MethodInfo(
        name="lime",
        title="LIME (regions)",
        family="perturbation",
        tasks=BOTH,
        params=LimeParams,
        reference="Ribeiro, Singh, Guestrin. \"Why Should I Trust You?\": Explaining the Predictions "
        "of Any Classifier. KDD 2016. arXiv:1602.04938",
        summary="Weighted linear surrogate fitted on random coalitions of regions; each region's "
        "coefficient is painted on it.",
        implementation="MedXAILib.methods.perturbation:lime",
    )
)
