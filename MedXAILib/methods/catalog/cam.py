"""CAM family: metadata and parameter dataclasses (importable without torch).

Every CAM method weights the activations of one convolutional layer, upsamples the layer-resolution
map to the network input grid and maps it back onto the image grid through the inverse of the
model's spatial preprocessing. The map is raw: never min-max normalised; ReLU only where the
method's definition has it (switch it off with ``relu=false`` to keep the signed map, useful for
segmentation). Implementations live in :mod:`MedXAILib.methods.cam`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...params import param
from ...registry import METHODS, MethodInfo

from ._common import BOTH
from .fields import batch_size_field

__all__ = [
    "UPSAMPLE_MODES",
    "GRADCAMPP_VARIANTS",
    "CAMParams",
    "GradCAMParams",
    "GradCAMPlusPlusParams",
    "HiResCAMParams",
    "XGradCAMParams",
    "LayerCAMParams",
    "ScoreCAMParams",
]

UPSAMPLE_MODES = ("trilinear", "nearest")
GRADCAMPP_VARIANTS = ("paper", "monai")


def _layer(default: str = ""):
    return param(
        default,
        help="Layer whose activations are used (a module name as listed by 'medxai layers'); empty picks "
        "the encoder output before global pooling for classifiers, the last decoder block before the "
        "output head for segmenters.",
    )


def _relu():
    return param(
        True,
        help="Apply the final ReLU of the method's definition (keep positive evidence only); off keeps the "
        "signed map, useful for segmentation. A map with no positive value is empty and carries a warning.",
    )


def _upsample():
    return param(
        "trilinear",
        choices=UPSAMPLE_MODES,
        help="Interpolation from the layer grid to the network input grid (F.interpolate, align_corners "
        "false).",
    )


@dataclass
class CAMParams:
    """The fields every CAM method starts with: the layer, the final ReLU and the upsampling."""

    layer: str = _layer()
    relu: bool = _relu()
    upsample: str = _upsample()


@dataclass
class GradCAMParams(CAMParams):
    pass


@dataclass
class GradCAMPlusPlusParams(CAMParams):
    variant: str = param(
        "paper",
        choices=GRADCAMPP_VARIANTS,
        help="Closed form of the pixel weights alpha: 'paper' is eq. 19 of the paper with the channel sum of "
        "activations times the local gradient cubed (as the authors' code and pytorch-grad-cam); 'monai' "
        "sums activation x gradient^3 over space (as monai.visualize.GradCAMpp).",
    )
    exp_score: bool = param(
        False,
        help="Multiply the gradients by exp(score), the paper's exponential output (as MONAI); off (as "
        "pytorch-grad-cam) gives the same map divided by that positive factor. On overflows for large scores "
        "such as region sums.",
    )


@dataclass
class HiResCAMParams(CAMParams):
    pass


@dataclass
class XGradCAMParams(CAMParams):
    pass


@dataclass
class LayerCAMParams(CAMParams):
    pass


@dataclass
class ScoreCAMParams(CAMParams):
    batch_size: int = batch_size_field("Masked inputs evaluated per forward pass.")
    subtract_baseline: bool = param(
        False,
        help="Weight each channel by score(masked input) - score(all-zero network input), the paper's "
        "increase of confidence; off uses the masked input's target score itself.",
    )


_ENTRIES = [
    (
        "grad_cam",
        "Grad-CAM",
        GradCAMParams,
        "Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra. Grad-CAM: Visual Explanations from Deep Networks "
        "via Gradient-based Localization. ICCV 2017. arXiv:1610.02391",
        "Layer activations weighted by their spatially averaged gradients, summed over channels, ReLU.",
    ),
    (
        "grad_cam_pp",
        "Grad-CAM++",
        GradCAMPlusPlusParams,
        "Chattopadhay, Sarkar, Howlader, Balasubramanian. Grad-CAM++: Generalized Gradient-based Visual "
        "Explanations for Deep Convolutional Networks. WACV 2018. arXiv:1710.11063",
        "Grad-CAM with channel weights from positive gradients and closed-form higher-order pixel weights.",
    ),
    (
        "hires_cam",
        "HiResCAM",
        HiResCAMParams,
        "Draelos, Carin. Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional neural "
        "networks. arXiv:2011.08891, 2020",
        "Element-wise gradient x activation summed over channels: no spatial averaging of the gradient.",
    ),
    (
        "xgrad_cam",
        "XGrad-CAM",
        XGradCAMParams,
        "Fu, Hu, Dong, Guo, Gao, Chen. Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation "
        "of CNNs. BMVC 2020. arXiv:2008.02312",
        "Channel weights are gradients averaged with the normalised activations as weights (axioms of "
        "sensitivity and conservation).",
    ),
    (
        "layer_cam",
        "LayerCAM",
        LayerCAMParams,
        "Jiang, Zhang, Hou, Cheng, Wei. LayerCAM: Exploring Hierarchical Class Activation Maps for "
        "Localization. IEEE Transactions on Image Processing 30:5875-5888, 2021",
        "Activations weighted voxel by voxel by their positive gradients, summed over channels.",
    ),
    (
        "score_cam",
        "Score-CAM",
        ScoreCAMParams,
        "Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu. Score-CAM: Score-Weighted Visual Explanations for "
        "Convolutional Neural Networks. CVPR Workshops 2020. arXiv:1910.01279",
        "Gradient-free: each channel is weighted by the target score of the input masked with its upsampled, "
        "min-max normalised activation map.",
    ),
]

for _name, _title, _params, _reference, _summary in _ENTRIES:
    METHODS.register(
        MethodInfo(
            name=_name,
            title=_title,
            family="cam",
            tasks=BOTH,
            params=_params,
            reference=_reference,
            summary=_summary,
            implementation=f"MedXAILib.methods.cam:{_name}",
            units="layer",
        )
    )
