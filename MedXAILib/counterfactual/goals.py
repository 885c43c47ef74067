"""What a counterfactual must achieve: :class:`Goal`, and its differentiable loss and check.

:class:`Goal` is light (stdlib + numpy), so a GUI can build one before torch is installed.
:func:`resolve_goal` fixes a goal against the model's output for the unperturbed input (the
direction of a probability goal, the predicted structure, the voxel volume) and returns a
:class:`ResolvedGoal` whose methods take model outputs (torch tensors):

- ``quantity(output)``: the goal quantity (a class probability, or a structure volume in ml);
- ``reached(value)``: whether that value satisfies the goal;
- ``loss(output)``: a differentiable loss that is zero once the goal is reached with a margin.

Losses work on logits, which do not saturate: for a probability goal a hinge on the class's
log-odds log p - log(1 - p); for removing a structure a hinge on the logit margin (class logit minus
the largest other) of every voxel predicted as the class (on the input, or now); for a volume goal
the same hinge on the k voxels nearest the decision boundary, k being the number of voxels still to
remove or add. (A soft volume, sum of probabilities x voxel volume, would be the obvious loss, but a
confident segmenter's probabilities round to 1 in float32 and give exactly zero gradient.)

Goal quantities:

===================  ===============================================  ===========================
kind                 classifier                                       segmenter
===================  ===============================================  ===========================
class_probability    softmax (or sigmoid) probability of the class    mean probability of the class
                                                                      over the region (whole volume
                                                                      without a region)
remove_structure     (refused: use class_probability)                 predicted volume (ml) -> 0
structure_volume     (refused)                                        predicted volume (ml) -> target
===================  ===============================================  ===========================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import TargetError
from .catalog import GOAL_KINDS

__all__ = ["Goal", "GOAL_KINDS", "GoalWeight", "GoalSearch", "ResolvedGoal", "CounterfactualContext",
           "resolve_goal", "voxel_ml"]

_EPS = 1e-6


@dataclass
class Goal:
    """The change a counterfactual should bring about in the model's output.

    Attributes:
        kind: ``"class_probability"`` (move class ``class_index``'s probability to
            ``target_probability``), ``"remove_structure"`` (the segmenter's predicted volume of the
            class becomes 0) or ``"structure_volume"`` (it becomes ``target_volume_ml``).
        class_index: the output class.
        target_probability: in (0, 1); reached once the probability has crossed it in the direction
            it had to move. ``None``: 0.9 when the current probability is below 0.5, else 0.1
            (flip the decision).
        target_volume_ml: the structure volume to reach (``structure_volume`` goals), >= 0.
        volume_tolerance: a volume goal is reached within this fraction of the target (at least
            one voxel).
    """

    kind: str
    class_index: int
    target_probability: Optional[float] = None
    target_volume_ml: Optional[float] = None
    volume_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in GOAL_KINDS:
            import difflib

            close = difflib.get_close_matches(str(self.kind), GOAL_KINDS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise TargetError(f"unknown goal kind {self.kind!r}{hint} (known: {', '.join(GOAL_KINDS)})")
        if isinstance(self.class_index, bool) or int(self.class_index) != self.class_index or self.class_index < 0:
            raise TargetError(f"the goal's class index must be a whole number >= 0; got {self.class_index!r}")
        self.class_index = int(self.class_index)
        if self.target_probability is not None:
            if self.kind != "class_probability":
                raise TargetError(f"target_probability applies to class_probability goals, not {self.kind}")
            p = float(self.target_probability)
            if not 0.0 < p < 1.0:
                raise TargetError(f"target probability must lie strictly between 0 and 1; got {p}")
            self.target_probability = p
        if self.kind == "structure_volume":
            if self.target_volume_ml is None:
                raise TargetError("a structure_volume goal needs target_volume_ml (--target-volume-ml)")
            v = float(self.target_volume_ml)
            if not (math.isfinite(v) and v >= 0.0):
                raise TargetError(f"target volume must be a finite number of ml >= 0; got {self.target_volume_ml}")
            self.target_volume_ml = v
        elif self.target_volume_ml is not None:
            raise TargetError(f"target_volume_ml applies to structure_volume goals, not {self.kind}")
        if not 0.0 <= float(self.volume_tolerance) < 1.0:
            raise TargetError(f"volume tolerance must lie in [0, 1); got {self.volume_tolerance}")

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for provenance."""
        return {"kind": self.kind, "class_index": self.class_index, "target_probability": self.target_probability,
                "target_volume_ml": self.target_volume_ml, "volume_tolerance": self.volume_tolerance}


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres (|det| of the affine's 3x3 block, mm^3 / 1000)."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


@dataclass
class ResolvedGoal:
    """A :class:`Goal` fixed against one model and input (see the module docstring).

    Attributes:
        goal: the goal.
        task: ``"classification"`` or ``"segmentation"``.
        activation: ``"softmax"`` or ``"sigmoid"``.
        quantity_name: ``"probability"``, ``"mean_probability"`` or ``"volume_ml"``.
        before: the goal quantity for the unperturbed input.
        target: the value to reach.
        direction: +1 (raise), -1 (lower) or 0 (already there).
        tolerance: for volume goals, the accepted distance to the target (ml).
        voxel_ml: volume of one voxel.
        structure: (I, J, K) bool tensor, the structure predicted on the input (structure goals).
        measure_region: (I, J, K) bool tensor: where a segmenter's mean class probability is taken
            (class_probability), or where voxels may join or leave the structure (structure_volume).
    """

    goal: Goal
    task: str
    activation: str
    quantity_name: str
    before: float
    target: float
    direction: int
    tolerance: float
    voxel_ml: float
    margin: float = 0.1
    structure: Any = None
    measure_region: Any = None

    # -- quantities (no gradient) -------------------------------------------------------------

    def quantity(self, output: Any) -> float:
        """The goal quantity for one model output (1, K[, I, J, K])."""
        import torch

        with torch.no_grad():
            if self.quantity_name == "volume_ml":
                return float(self.predicted(output).sum()) * self.voxel_ml
            return float(self._probability(output))

    def reached(self, value: float) -> bool:
        """Whether `value` satisfies the goal."""
        if self.quantity_name == "volume_ml":
            if self.goal.kind == "remove_structure":
                return value <= 0.5 * self.voxel_ml
            return abs(value - self.target) <= self.tolerance
        if self.direction > 0:
            return value >= self.target
        if self.direction < 0:
            return value <= self.target
        return True

    def predicted(self, output: Any) -> Any:
        """(I, J, K) bool tensor of the voxels predicted as the goal's class."""
        c = self.goal.class_index
        if self.activation == "sigmoid":
            return output[0, c] > 0
        return output[0].argmax(0) == c

    def _probability(self, output: Any) -> Any:
        import torch

        c = self.goal.class_index
        probs = torch.sigmoid(output[:, c]) if self.activation == "sigmoid" else torch.softmax(output, 1)[:, c]
        if self.task == "classification":
            return probs[0]
        region = self.measure_region.to(probs.dtype)
        return (probs[0] * region).sum() / region.sum()

    # -- loss (differentiable) ----------------------------------------------------------------

    def loss(self, output: Any) -> Any:
        """Differentiable loss on one output (1, K[, I, J, K]); 0 once the goal is reached with the margin."""
        import torch

        relu = torch.nn.functional.relu
        c = self.goal.class_index
        if self.goal.kind == "class_probability":
            # work in logit space: probabilities saturate, their logits do not
            if self.task == "classification":
                z = output[0]
                if self.activation == "sigmoid":
                    q = z[c]
                else:
                    others = torch.cat([z[:c], z[c + 1:]])
                    q = z[c] - torch.logsumexp(others, 0)  # log p - log(1 - p)
            else:
                p = self._probability(output).clamp(_EPS, 1 - _EPS)
                q = torch.log(p) - torch.log1p(-p)
            return relu(self.direction * (_logit(self.target) - q) + self.margin)
        if self.goal.kind == "remove_structure":
            excess = self._margin(output)
            with torch.no_grad():  # the original structure plus wherever the class appears now
                where = self.structure | self.predicted(output)
            # normalised by the original size, so the loss reads "mean margin violation"
            return (relu(excess + self.margin) * where).sum() / max(int(self.structure.sum()), 1)
        # structure_volume. The soft volume (sum of probabilities x voxel volume) saturates for a
        # confident model: p rounds to 1 in float32 and its gradient is exactly 0. So the loss acts
        # on the logit margins of the k voxels nearest the decision boundary, k = voxels still to
        # remove (or add): a hinge that moves exactly as many voxels as the target needs.
        margin = self._margin(output)
        with torch.no_grad():
            predicted = self.predicted(output)
            count = int(predicted.sum())
            goal_count = self.target / self.voxel_ml
            k = int(math.ceil(abs(count - goal_count) - 0.5 * self.tolerance / self.voxel_ml))
            candidates = (predicted if count > goal_count else ~predicted)
            if self.measure_region is not None:
                candidates = candidates & self.measure_region.bool()
        if k <= 0 or not bool(candidates.any()):
            return margin.sum() * 0.0
        if count > goal_count:  # shrink: push the weakest predicted voxels below the boundary
            chosen = torch.topk(-margin[candidates], min(k, int(candidates.sum()))).indices
            return relu(margin[candidates][chosen] + self.margin).sum() / max(k, 1)
        chosen = torch.topk(margin[candidates], min(k, int(candidates.sum()))).indices
        return relu(self.margin - margin[candidates][chosen]).sum() / max(k, 1)

    def _margin(self, output: Any) -> Any:
        """(I, J, K) logit margin of the goal's class: > 0 where it is predicted."""
        import torch

        z = output[0]
        c = self.goal.class_index
        if self.activation == "sigmoid":
            return z[c]
        others = torch.cat([z[:c], z[c + 1:]])
        return z[c] - others.max(0).values

    def describe(self, after: Optional[float] = None) -> dict[str, Any]:
        """The validity record: goal quantity before/after, target, and whether it was reached."""
        out: dict[str, Any] = {"quantity": self.quantity_name, "before": round(self.before, 6),
                               "target": round(self.target, 6), "direction": self.direction}
        if self.quantity_name == "volume_ml":
            out["tolerance_ml"] = round(self.tolerance, 6)
        if after is not None:
            out["after"] = round(float(after), 6)
            out["reached"] = bool(self.reached(after))
        return out


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p) - math.log1p(-p)


def resolve_goal(goal: Goal, output: Any, task: str, activation: str, affine: np.ndarray,
                 region: Optional[np.ndarray] = None, margin: float = 0.1) -> ResolvedGoal:
    """Check `goal` against the model output for the unperturbed input and fix what it refers to.

    Args:
        goal: the goal.
        output: the model output on the input grid, (1, K) or (1, K, I, J, K).
        task: ``"classification"`` or ``"segmentation"``.
        activation: ``"softmax"`` or ``"sigmoid"``.
        affine: the input's affine (voxel volume).
        region: bool (I, J, K): where a segmenter's mean class probability is measured.
        margin: logit margin of the losses.

    Raises:
        TargetError: class out of range, a structure goal for a classifier, nothing to remove.
    """
    import torch

    n_classes = int(output.shape[1])
    c = goal.class_index
    if not 0 <= c < n_classes:
        raise TargetError(f"class {c} is out of range: the model has {n_classes} output classes "
                          f"(0..{n_classes - 1})")
    if activation == "softmax" and n_classes < 2:
        raise TargetError("the model has one output channel with softmax: its probability is always 1; "
                          "declare output_activation 'sigmoid' for a single-output model")
    ml = voxel_ml(affine)
    common = dict(goal=goal, task=task, activation=activation, voxel_ml=ml, margin=float(margin))
    if goal.kind == "class_probability":
        measure = None
        if task == "segmentation":
            shape = tuple(output.shape[2:])
            mask = np.ones(shape, bool) if region is None else np.asarray(region, bool)
            measure = torch.as_tensor(mask, device=output.device)
        resolved = ResolvedGoal(quantity_name="probability" if task == "classification" else "mean_probability",
                                before=0.0, target=0.0, direction=0, tolerance=0.0, measure_region=measure, **common)
        before = resolved.quantity(output)
        target = goal.target_probability
        if target is None:
            target = 0.9 if before < 0.5 else 0.1
        resolved.before, resolved.target = before, float(target)
        resolved.direction = 0 if target == before else (1 if target > before else -1)
        return resolved
    if task != "segmentation":
        raise TargetError(f"a {goal.kind} goal needs a segmentation model; for a classifier use a "
                          "class_probability goal with a low target probability")
    measure = None if region is None else torch.as_tensor(np.asarray(region, bool), device=output.device)
    resolved = ResolvedGoal(quantity_name="volume_ml", before=0.0, target=0.0, direction=0, tolerance=0.0,
                            measure_region=measure, **common)
    with torch.no_grad():
        structure = resolved.predicted(output)
    resolved.structure = structure
    before = float(structure.sum()) * ml
    resolved.before = before
    if goal.kind == "remove_structure":
        if before == 0:
            raise TargetError(f"the model predicts no voxel of class {c}: there is no structure to remove")
        resolved.target, resolved.direction = 0.0, -1
    else:
        target = float(goal.target_volume_ml)
        resolved.target = target
        resolved.tolerance = max(goal.volume_tolerance * target, ml)
        resolved.direction = 0 if abs(target - before) <= resolved.tolerance else (1 if target > before else -1)
    return resolved


@dataclass
class GoalWeight:
    """The goal loss's weight in an optimising generator: it grows by `growth` whenever the goal loss
    has not improved by 1 % for `patience` steps (the search is stuck at too small a weight)."""

    value: float
    patience: int
    growth: float
    best: float = float("inf")
    stalled: int = 0

    def update(self, loss: float) -> float:
        """Record this step's goal loss; returns the weight for the next step."""
        if loss < self.best * 0.99:
            self.best, self.stalled = loss, 0
        else:
            self.stalled += 1
            if self.stalled >= self.patience:
                self.value *= self.growth
                self.stalled = 0
        return self.value


@dataclass
class CounterfactualContext:
    """What every generator receives.

    Attributes:
        x: the input (1, C, I, J, K) on the model's device.
        model: differentiable function input -> output on the input grid (a bound model).
        goal: the resolved goal (loss, quantity, validity).
        image: the input volume (geometry, spacing).
        region: bool (I, J, K) tensor where change is allowed, or None (everywhere).
        low, high: per-voxel intensity bounds (1, C, I, J, K): the requested bounds, widened where the
            input itself lies outside them (a voxel is never forced to change).
        scale: (1, C, 1, 1, 1) intensity range per channel (high - low of the bounds).
        monitor: progress and cancel.
        generator: seeded torch generator (CPU).
        seed: the seed (for numpy draws).
        diagnostics: generator-specific numbers recorded in the provenance.
        effective_region: bool (I, J, K) numpy array a generator sets when it changed a different
            region than the one given (inpainting with ``grow_mm``); the metrics use it.
    """

    x: Any
    model: Any
    goal: ResolvedGoal
    image: Any
    region: Any
    low: Any
    high: Any
    scale: Any
    monitor: Any
    generator: Any
    seed: int = 0
    diagnostics: dict[str, Any] = field(default_factory=dict)
    effective_region: Optional[np.ndarray] = None

    def warn(self, message: str) -> None:
        """Record a caveat about this result (shown by the CLI and kept in the provenance)."""
        self.diagnostics.setdefault("warnings", []).append(message)

    def clamp(self, x: Any) -> Any:
        """`x` projected onto the bounds and, with a region, equal to the input outside it."""
        import torch

        x = torch.minimum(torch.maximum(x, self.low), self.high)
        if self.region is not None:
            x = torch.where(self.region, x, self.x)
        return x


class GoalSearch:
    """The loop bookkeeping shared by the optimising generators (gradient search, latent shift).

    A generator evaluates the model on its current counterfactual at every step and calls
    :meth:`check`, which records the goal quantity, reports progress and says whether the search ends
    there: the goal is reached (that iterate is the result) or ``max_steps`` steps were taken.
    Otherwise it minimises :meth:`weighted_goal_loss` (the goal loss times the growing
    :class:`GoalWeight`) plus its own terms, takes its step and calls :meth:`step_done`. At the end
    :meth:`finish` records the diagnostics and warns when the goal was not reached.

    Args:
        ctx: the generator's context (goal, monitor, diagnostics).
        params: the generator's parameters (``max_steps``, ``goal_weight``, ``goal_weight_growth``,
            ``patience``).
        label: what a step is called in progress messages and the warning (``"step"``).
        progress: (start, span) of the monitor's fraction that the steps cover.
    """

    HISTORY = 500  # goal quantities kept in the diagnostics

    def __init__(self, ctx: CounterfactualContext, params: Any, label: str = "step",
                 progress: tuple[float, float] = (0.0, 1.0)) -> None:
        self.ctx = ctx
        self.max_steps = params.max_steps
        self.weight = GoalWeight(float(params.goal_weight), params.patience, params.goal_weight_growth)
        self.label = label
        self.progress = progress
        self.history: list[float] = []
        self.stop = "max_steps"
        self.steps = 0
        self.value = float("nan")
        self._goal_loss: Any = None

    @property
    def reached(self) -> bool:
        return self.stop == "goal reached"

    def check(self, step: int, output: Any) -> bool:
        """Record the goal quantity of this step's model output; True when the search ends here."""
        goal = self.ctx.goal
        self.value = value = goal.quantity(output)
        if len(self.history) < self.HISTORY:
            self.history.append(round(value, 6))
        start, span = self.progress
        self.ctx.monitor.update(start + span * step / max(self.max_steps, 1),
                                f"{self.label} {step}/{self.max_steps}: {goal.quantity_name} {value:.4g} "
                                f"(target {goal.target:.4g})")
        if goal.reached(value):
            self.stop = "goal reached"
            return True
        return step == self.max_steps

    def weighted_goal_loss(self, output: Any) -> Any:
        """The goal loss of `output` (differentiable) times the current goal weight."""
        self._goal_loss = self.ctx.goal.loss(output)
        return self.weight.value * self._goal_loss

    def step_done(self, step: int) -> None:
        """Count the step and let the goal weight grow if the goal loss has stalled."""
        self.steps = step + 1
        self.weight.update(float(self._goal_loss.detach()))

    def finish(self, remedy: str, **diagnostics: Any) -> None:
        """Record steps, stop reason, final goal weight and history (then `diagnostics`); warn with
        `remedy` when the goal was not reached."""
        self.ctx.diagnostics.update(steps=self.steps, stop_reason=self.stop,
                                    final_goal_weight=self.weight.value, history=self.history, **diagnostics)
        if not self.reached:
            goal = self.ctx.goal
            self.ctx.warn(f"the goal was not reached in {self.max_steps} {self.label}s ({goal.quantity_name} "
                          f"{self.value:.4g}, target {goal.target:.4g}); {remedy}")
