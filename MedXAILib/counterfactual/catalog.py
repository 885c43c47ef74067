"""Counterfactual generators: metadata and parameter dataclasses (importable without torch).

A GUI lists the generators and builds their parameter forms from this module before torch is
installed, exactly as it does for attribution methods (``methods/catalog``). Each entry names its
implementation as ``"module:function"``, imported on first use by :meth:`GeneratorInfo.load`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..params import param
from ..registry import TASKS, Registry, load_implementation

__all__ = [
    "GENERATORS",
    "GeneratorInfo",
    "GOAL_KINDS",
    "GradientSearchParams",
    "InpaintParams",
    "LatentParams",
    "DISTANCES",
    "NOISE_MODELS",
]

#: What a counterfactual is asked to achieve (see :class:`MedXAILib.counterfactual.goals.Goal`).
GOAL_KINDS = ("class_probability", "remove_structure", "structure_volume")
DISTANCES = ("l1", "l2")
NOISE_MODELS = ("matched", "white", "none")


@dataclass(frozen=True)
class GeneratorInfo:
    """Metadata of one counterfactual generator.

    Attributes:
        name: stable snake_case identifier (CLI ``--generator``, saved scenes, provenance).
        title: display name.
        params: the parameter dataclass (fields declared with :func:`MedXAILib.params.param`).
        reference: the paper the generator follows.
        summary: one line for listings and tooltips.
        implementation: ``"module:function"`` imported lazily by :meth:`load`; the function takes
            a :class:`~MedXAILib.counterfactual.goals.CounterfactualContext` and the parameters and
            returns the counterfactual input tensor (1, C, I, J, K).
        tasks: the model tasks it supports.
        goals: the goal kinds it supports.
        optimises_goal: True when it searches for an input that reaches the goal; False when it
            applies a fixed edit (inpainting) and only reports whether the goal was reached.
        needs_region: True when ``region`` is required (the structure to replace).
        heavy: True for generators that need extra weights or much more compute (optional).
    """

    name: str
    title: str
    params: type
    reference: str
    summary: str
    implementation: str
    tasks: tuple[str, ...] = TASKS
    goals: tuple[str, ...] = GOAL_KINDS
    optimises_goal: bool = True
    needs_region: bool = False
    heavy: bool = False

    def __post_init__(self) -> None:
        if not set(self.tasks) <= set(TASKS):
            raise ValueError(f"unknown task in {self.tasks!r} for {self.name}")
        if not set(self.goals) <= set(GOAL_KINDS):
            raise ValueError(f"unknown goal kind in {self.goals!r} for {self.name}")

    def load(self) -> Callable[..., Any]:
        return load_implementation(self.implementation)


_GROWTH_HELP = "Factor applied to goal_weight when the search stalls."
_PATIENCE_HELP = "Steps without a 1% drop of the goal loss before goal_weight grows."
_GOAL_WEIGHT_HELP = (
    "Initial weight of the goal loss against the distance terms; it is multiplied by "
    "goal_weight_growth whenever the goal loss has stalled for `patience` steps (Wachter et al. "
    "raise their lambda until the prediction changes)."
)


@dataclass
class GradientSearchParams:
    """Parameters of ``gradient_search`` (Wachter et al. 2017)."""

    max_steps: int = param(
        300, range=(0, 100000), help="Adam steps at most (0: only evaluate the input); the search stops as soon as "
        "the goal is reached.")
    step_size: float = param(
        0.01,
        range=(1e-6, 1.0),
        help="Adam learning rate as a fraction of the intensity range (bounds high - low): about the "
        "largest change of one voxel per step.",
    )
    distance: str = param(
        "l1",
        choices=DISTANCES,
        help="Distance to the input: l1 (sparse changes, applied as a proximal step so untouched voxels "
        "stay exactly unchanged) or l2 (small, spread-out changes).",
    )
    distance_weight: float = param(
        1.0, range=(0.0, None), help="Weight of the mean |x' - x| (or (x' - x)^2), intensities scaled by the range."
    )
    tv_weight: float = param(
        0.1,
        range=(0.0, None),
        help="Weight of the total variation of x' - x (mean over voxels): favours compact, smooth changes. "
        "Keep it below distance_weight, or the change spreads beyond where the model looks.",
    )
    smooth_mm: float = param(
        3.0, range=(0.0, 50.0), unit="mm",
        help="Standard deviation of the Gaussian through which the change is made (delta = G * u, the L1 acting "
        "on u): a sparse u gives a few smooth blobs, and the search follows the gradient that is coherent over "
        "a region rather than voxel-level noise. 0 changes single voxels.")
    goal_weight: float = param(0.0, range=(0.0, None), help=_GOAL_WEIGHT_HELP + " 0: for an L1 search, "
                               "calibrated on the first step so that only the voxels the goal depends on most "
                               "outweigh distance_weight (the growth then brings in more only while the goal "
                               "needs them); otherwise 1.")
    goal_weight_growth: float = param(2.0, range=(1.0, 1000.0), help=_GROWTH_HELP)
    patience: int = param(10, range=(1, 100000), help=_PATIENCE_HELP)
    margin: float = param(
        0.1,
        range=(0.0, 10.0),
        help="How far past the target the loss keeps pushing, in logit units (probability goals and "
        "structure removal), so rounding does not undo the goal.",
    )


@dataclass
class InpaintParams:
    """Parameters of ``inpaint`` (harmonic filling plus matched noise)."""

    grow_mm: float = param(
        0.0,
        range=(0.0, 50.0),
        unit="mm",
        help="Grow the region by this margin before filling, to also replace the partial-volume rim of a "
        "blurred structure (the grown region is then where change is allowed).",
    )
    ring_mm: float = param(
        4.0,
        range=(0.1, 100.0),
        unit="mm",
        help="Width of the ring of surrounding tissue whose values fix the filling at the region's border "
        "and whose texture (standard deviation) the added noise matches.",
    )
    noise: str = param(
        "matched",
        choices=NOISE_MODELS,
        help="Texture added to the smooth filling: matched (Gaussian noise with the ring's standard deviation "
        "and neighbour correlation), white (the ring's standard deviation, uncorrelated) or none.",
    )
    max_iterations: int = param(
        5000, range=(10, 1000000), help="Conjugate-gradient iterations at most for the Laplace equation."
    )


@dataclass
class LatentParams:
    """Parameters of ``latent`` (Latent Shift, Cohen et al. 2021)."""

    autoencoder: str = param(
        "",
        help="Autoencoder spec JSON written by MedXAILib.demo.training.autoencoder; empty: the shipped "
        "Resources/Models/demo_autoencoder.json (trained on the CT phantoms, demo only).",
    )
    max_steps: int = param(
        100, range=(0, 100000), help="Steps in latent space at most (0: only evaluate the input); stops when "
        "the goal is reached.")
    step_size: float = param(
        0.1, range=(1e-6, 10.0),
        help="How far the latent coordinate with the largest gradient moves per step (latent units); the "
        "others move in proportion to their gradient.")
    distance_weight: float = param(
        0.01, range=(0.0, None), help="Weight of the mean squared latent shift |z' - z|^2."
    )
    goal_weight: float = param(1.0, range=(1e-12, None), help=_GOAL_WEIGHT_HELP)
    goal_weight_growth: float = param(2.0, range=(1.0, 1000.0), help=_GROWTH_HELP)
    patience: int = param(10, range=(1, 100000), help=_PATIENCE_HELP)
    margin: float = param(0.1, range=(0.0, 10.0),
                          help="How far past the target the loss keeps pushing (logit units).")


GENERATORS: Registry[GeneratorInfo] = Registry("counterfactual generator")

GENERATORS.register(
    GeneratorInfo(
        name="gradient_search",
        title="Gradient search (Wachter)",
        params=GradientSearchParams,
        reference="Wachter, Mittelstadt & Russell 2017, 'Counterfactual explanations without opening the black "
        "box: automated decisions and the GDPR', Harv. J. Law Technol. 31(2), arXiv:1711.00399",
        summary="Smallest (L1 or L2) and smoothest (TV) change of the voxels that moves the model to the goal, "
        "by Adam on the image inside the intensity bounds.",
        implementation="MedXAILib.counterfactual.gradient_search:gradient_search",
    )
)
GENERATORS.register(
    GeneratorInfo(
        name="inpaint",
        title="Inpaint structure (what if it were absent)",
        params=InpaintParams,
        reference="Chan & Shen 2002, 'Mathematical models for local nontexture inpaintings', SIAM J. Appl. "
        "Math. 62(3):1019-1043 (harmonic inpainting), plus noise matched to the surrounding texture",
        summary="Replace the region by the harmonic (Laplace) interpolation of its surrounding ring plus noise "
        "of the ring's texture, and report how the prediction changes.",
        implementation="MedXAILib.counterfactual.inpaint:inpaint",
        optimises_goal=False,
        needs_region=True,
    )
)
GENERATORS.register(
    GeneratorInfo(
        name="latent",
        title="Latent shift (autoencoder)",
        params=LatentParams,
        reference="Cohen et al. 2021, 'Gifsplanation via Latent Shift: a simple autoencoder approach to "
        "counterfactual generation for chest X-rays', MIDL 2021, arXiv:2102.09475",
        summary="Shift the latent code of an autoencoder (MONAI AutoencoderKL) along the model's gradient until "
        "the goal is reached; the decoded change is added to the image. Heavier; the shipped autoencoder knows "
        "only the CT phantoms.",
        implementation="MedXAILib.counterfactual.latent:latent",
        heavy=True,
    )
)
