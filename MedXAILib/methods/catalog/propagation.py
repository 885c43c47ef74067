"""Propagation family: metadata and parameter dataclasses (importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ...params import param
from ...registry import METHODS, MethodInfo

from ._common import BOTH

__all__ = ["LRPParams", "LRP_RULES"]

LRP_RULES = ("epsilon", "alpha_beta", "z_plus", "epsilon_plus")


@dataclass
class LRPParams:
    rule: str = param(
        "epsilon",
        choices=LRP_RULES,
        help="Rule of the convolution and dense layers: epsilon (LRP-epsilon), alpha_beta (positive and "
        "negative contributions weighted alpha and alpha - 1), z_plus (positive contributions only, "
        "alpha 1 beta 0), or epsilon_plus (z_plus for convolutions, epsilon for dense layers).",
    )
    epsilon: float = param(
        0.1,
        range=(0.0, None),
        help="Stabiliser of the epsilon rule: larger values absorb weak, contradictory contributions "
        "(sparser, less noisy maps); near 0 the map approaches input x gradient.",
    )
    epsilon_relative: bool = param(
        True,
        help="Scale epsilon by the root-mean-square of each layer's pre-activations, so one value suits "
        "every layer, network and intensity unit (as in Montavon's LRP tutorial); off: epsilon is absolute.",
    )
    alpha: float = param(
        1.0,
        range=(1.0, 10.0),
        help="Weight of positive contributions for the alpha_beta rule; negative ones are weighted "
        "beta = alpha - 1, so relevance is conserved. 1 (alpha1-beta0) is the most stable choice.",
    )


METHODS.register(
    MethodInfo(
        name="lrp",
        title="Layer-wise Relevance Propagation (LRP)",
        family="propagation",
        tasks=BOTH,
        params=LRPParams,
        reference="Bach, Binder, Montavon, Klauschen, Mueller, Samek. On Pixel-Wise Explanations for "
        "Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation. PLoS ONE 10(7):e0130140, "
        "2015; rules per Montavon, Binder, Lapuschkin, Samek, Mueller. Layer-Wise Relevance Propagation: "
        "An Overview. In Explainable AI, LNCS 11700, Springer 2019",
        summary="Redistributes the target score backwards layer by layer with conservation rules; the "
        "input relevance sums to the score up to what biases and epsilon absorb.",
        implementation="MedXAILib.methods.lrp:lrp",
    )
)
