"""Gradient-family methods: metadata and parameter dataclasses (importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ...params import param
from ...registry import METHODS, MethodInfo

from ._common import BOTH

__all__ = ["SaliencyParams", "InputXGradientParams", "IntegratedGradientsParams", "BASELINES"]

BASELINES = ("zeros", "min", "blur", "noise")
INTEGRATION = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")


@dataclass
class SaliencyParams:
    absolute: bool = param(
        False, help="Return |gradient| as in the original paper; off keeps the signed gradient."
    )


@dataclass
class InputXGradientParams:
    pass


@dataclass
class IntegratedGradientsParams:
    n_steps: int = param(32, range=(1, 1024), help="Points on the straight path from the baseline to the input.")
    baseline: str = param(
        "blur",
        choices=BASELINES,
        help="Reference input: zeros, the image minimum per channel, a Gaussian blur of the image "
        "(default: it keeps the intensity statistics that instance-normalised networks depend on), "
        "or uniform noise in the image's intensity range.",
    )
    blur_sigma_mm: float = param(8.0, range=(0.0, None), unit="mm", help="Blur width for the 'blur' baseline.")
    integration: str = param(
        "gausslegendre", choices=INTEGRATION, help="Quadrature rule for the path integral."
    )
    batch_size: int = param(8, range=(1, 1024), help="Path points evaluated per forward/backward pass.")


METHODS.register(
    MethodInfo(
        name="saliency",
        title="Saliency (gradient)",
        family="gradient",
        tasks=BOTH,
        params=SaliencyParams,
        reference="Simonyan, Vedaldi, Zisserman. Deep Inside Convolutional Networks: Visualising Image "
        "Classification Models and Saliency Maps. ICLR Workshop 2014. arXiv:1312.6034",
        summary="Gradient of the target score with respect to every input voxel.",
        implementation="MedXAILib.methods.gradient:saliency",
    )
)
METHODS.register(
    MethodInfo(
        name="input_x_gradient",
        title="Input x Gradient",
        family="gradient",
        tasks=BOTH,
        params=InputXGradientParams,
        reference="Shrikumar, Greenside, Shcherbina, Kundaje. Not Just a Black Box: Learning Important "
        "Features Through Propagating Activation Differences. arXiv:1605.01713, 2016",
        summary="Input times the gradient of the target score: first-order contribution of each voxel.",
        implementation="MedXAILib.methods.gradient:input_x_gradient",
    )
)
METHODS.register(
    MethodInfo(
        name="integrated_gradients",
        title="Integrated Gradients",
        family="gradient",
        tasks=BOTH,
        params=IntegratedGradientsParams,
        reference="Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017. "
        "arXiv:1703.01365",
        summary="Path integral of gradients from a baseline to the input; attributions sum to "
        "f(input) - f(baseline) (completeness).",
        implementation="MedXAILib.methods.gradient:integrated_gradients",
    )
)
