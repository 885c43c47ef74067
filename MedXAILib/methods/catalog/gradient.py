"""Gradient-family methods: metadata and parameter dataclasses (importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ...params import param
from ...registry import METHODS, MethodInfo

from ._common import BOTH
from .fields import batch_size_field, blur_sigma_field

__all__ = [
    "SaliencyParams",
    "InputXGradientParams",
    "IntegratedGradientsParams",
    "SmoothGradParams",
    "GradientShapParams",
    "GuidedBackpropParams",
    "DeepLiftParams",
    "BASELINES",
    "SMOOTHGRAD_VARIANTS",
]

BASELINES = ("zeros", "min", "blur", "noise")
SMOOTHGRAD_VARIANTS = ("plain", "squared", "vargrad")
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
    blur_sigma_mm: float = blur_sigma_field()
    integration: str = param(
        "gausslegendre", choices=INTEGRATION, help="Quadrature rule for the path integral."
    )
    batch_size: int = batch_size_field("Path points evaluated per forward/backward pass.")
    completeness: bool = param(
        True, help="Check that the map sums to F(input) - F(baseline) and warn when it misses (a rule "
        "without both endpoints on the path scores them in one extra forward pass without gradients). Off: "
        "no check, and for a target given by index no pass outside the path (the prediction is then not "
        "evaluated unless the rule's path holds the input).",
    )


@dataclass
class SmoothGradParams:
    variant: str = param(
        "plain",
        choices=SMOOTHGRAD_VARIANTS,
        help="plain: mean of the noisy gradients (SmoothGrad); squared: mean of their squares "
        "(SmoothGrad-squared, >= 0); vargrad: their variance (VarGrad, >= 0).",
    )
    n_samples: int = param(16, range=(1, 4096), help="Noisy copies of the input to average over.")
    noise_level: float = param(
        0.1,
        range=(0.0, 10.0),
        help="Standard deviation of the Gaussian noise as a fraction of each channel's intensity "
        "range (max - min); the paper recommends 0.1 to 0.2.",
    )
    multiply_by_input: bool = param(
        False, help="Average (noisy input) x gradient instead of the gradient alone."
    )
    batch_size: int = batch_size_field("Noisy copies evaluated per forward/backward pass.")


@dataclass
class GradientShapParams:
    n_samples: int = param(
        16, range=(1, 4096), help="Random (baseline, point on the path) pairs averaged over."
    )
    baseline: str = param(
        "blur",
        choices=BASELINES,
        help="Centre of the baseline distribution: zeros, each channel's minimum, a Gaussian blur "
        "of the image, or uniform noise in the image's intensity range (drawn once).",
    )
    blur_sigma_mm: float = blur_sigma_field()
    baseline_noise: float = param(
        0.1,
        range=(0.0, 10.0),
        help="Standard deviation of the Gaussian spread of the baselines around their centre, as "
        "a fraction of each channel's intensity range; 0 gives one fixed baseline.",
    )
    input_noise: float = param(
        0.0,
        range=(0.0, 10.0),
        help="Standard deviation of Gaussian noise added to the input for every sample (Captum's "
        "stdevs), as a fraction of each channel's intensity range.",
    )
    batch_size: int = batch_size_field("Samples evaluated per forward/backward pass.")


@dataclass
class GuidedBackpropParams:
    pass


@dataclass
class DeepLiftParams:
    baseline: str = param(
        "zeros",
        choices=BASELINES,
        help="Reference input: zeros, each channel's minimum, a Gaussian blur of the image, or "
        "uniform noise in the image's intensity range.",
    )
    blur_sigma_mm: float = blur_sigma_field()
    eps: float = param(
        1e-6,
        range=(0.0, 1.0),
        help="Where a unit's input differs from its baseline value by less than this, its local "
        "gradient replaces the difference quotient (Captum uses 1e-10).",
    )


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
        units="gradient",
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
METHODS.register(
    MethodInfo(
        name="smoothgrad",
        title="SmoothGrad / VarGrad",
        family="gradient",
        tasks=BOTH,
        params=SmoothGradParams,
        reference="Smilkov, Thorat, Kim, Viegas, Wattenberg. SmoothGrad: removing noise by adding noise. "
        "arXiv:1706.03825, 2017. VarGrad: Adebayo, Gilmer, Goodfellow, Kim. Local Explanation Methods "
        "for Deep Neural Networks Lack Sensitivity to Parameter Values. ICLR Workshop 2018. "
        "arXiv:1810.03307",
        summary="Gradient averaged over noisy copies of the input (or its square, or its variance).",
        implementation="MedXAILib.methods.gradient:smoothgrad",
        units="gradient",
    )
)
METHODS.register(
    MethodInfo(
        name="gradient_shap",
        title="GradientSHAP (expected gradients)",
        family="gradient",
        tasks=BOTH,
        params=GradientShapParams,
        reference="Lundberg, Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017. "
        "arXiv:1705.07874; Erion, Janizek, Sturmfels, Lundberg, Lee. Improving performance of deep "
        "learning models with axiomatic attribution priors and expected gradients. Nature Machine "
        "Intelligence 3, 2021. arXiv:1906.10670",
        summary="Expected value of (input - baseline) x gradient at a random point between a random "
        "baseline and the input.",
        implementation="MedXAILib.methods.gradient:gradient_shap",
    )
)
METHODS.register(
    MethodInfo(
        name="guided_backprop",
        title="Guided Backpropagation",
        family="gradient",
        tasks=BOTH,
        params=GuidedBackpropParams,
        reference="Springenberg, Dosovitskiy, Brox, Riedmiller. Striving for Simplicity: The All "
        "Convolutional Net. ICLR Workshop 2015. arXiv:1412.6806",
        summary="Gradient in which every rectifier passes back only positive signal, and only where "
        "its input was positive.",
        implementation="MedXAILib.methods.gradient:guided_backprop",
        units="gradient",
    )
)
METHODS.register(
    MethodInfo(
        name="deeplift",
        title="DeepLIFT (Rescale)",
        family="gradient",
        tasks=BOTH,
        params=DeepLiftParams,
        reference="Shrikumar, Greenside, Kundaje. Learning Important Features Through Propagating "
        "Activation Differences. ICML 2017. arXiv:1704.02685",
        summary="Differences from a baseline propagated with the Rescale rule; attributions sum to "
        "F(input) - F(baseline) on networks whose nonlinearities are all covered.",
        implementation="MedXAILib.methods.gradient:deeplift",
    )
)
