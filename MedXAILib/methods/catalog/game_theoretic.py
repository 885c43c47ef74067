"""Game-theoretic family: metadata and parameter dataclasses (importable without torch).

KernelSHAP over regions (supervoxels, a grid, or the structures of a label map); it shares the
region and baseline parameters of the perturbation family (see ``catalog.perturbation``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...params import param
from ...registry import METHODS, MethodInfo

from ._common import BOTH
from .fields import batch_size_field, blur_sigma_field
from .perturbation import PERTURBATION_BASELINES, RegionParams

__all__ = ["KernelShapParams"]


@dataclass
class KernelShapParams(RegionParams):
    n_samples: int = param(
        200,
        range=(2, 1000000),
        help="Coalitions evaluated: the full and the empty coalition, then coalitions drawn with "
        "the Shapley kernel's size distribution. More than the number of regions is needed for a "
        "determined fit.",
    )
    baseline: str = param(
        "mean",
        choices=PERTURBATION_BASELINES,
        help="Value an absent region takes: zeros, each channel's minimum or mean, or a Gaussian "
        "blur of the image (blur_sigma_mm).",
    )
    blur_sigma_mm: float = blur_sigma_field()
    per_channel: bool = param(
        False,
        help="Each channel of each region is its own player (C times the players) for genuine "
        "per-channel maps; off: channels play together and a region's value is split equally "
        "across them.",
    )
    batch_size: int = batch_size_field()


METHODS.register(
    MethodInfo(
        name="kernel_shap",
        title="KernelSHAP (regions)",
        family="game-theoretic",
        tasks=BOTH,
        params=KernelShapParams,
        reference="Lundberg, Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017. "
        "arXiv:1705.07874",
        summary="Shapley values of regions estimated by a Shapley-kernel weighted linear regression "
        "on sampled coalitions; each region's value is painted on it.",
        implementation="MedXAILib.methods.game_theoretic:kernel_shap",
    )
)
