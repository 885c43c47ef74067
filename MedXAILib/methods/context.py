"""What every attribution method receives: the input, the model, the target and the services.

**The target is resolved from the method's own passes.** :func:`MedXAILib.explain` does not run the
model before the method. It hands the context a :class:`PendingTarget`, and the first model output
the method computes fixes it: the output at the input itself (a gradient at ``x``, a CAM's forward
pass, a batch whose row ``input_row`` is ``x``) fixes any target, detached and before the score is
taken, and is kept as the model output for the provenance (:attr:`MethodContext.output`); for a target
whose region does not depend on the output's values (a class of a classifier given by index, a
segmenter's class, mask, box or voxel, a boundary band around a given mask) the output of any input
fixes it (its channel count is all it needs). A method that reads :attr:`MethodContext.scorer` before
any of that has happened gets one pass over the input first (:meth:`MethodContext.input_output`), the
only extra pass, so a method that shares nothing is still right. A method whose passes never evaluate
the input (SmoothGrad, GradientSHAP) says so (:meth:`MethodContext.no_input_pass`), and the provenance
then records the prediction as not evaluated rather than paying a pass for it.

:meth:`MethodContext.gradient` is where gradient methods meet sliding-window inference: for a
segmenter that runs window by window it backpropagates one batch of windows at a time
(:func:`MedXAILib.model.window_gradient.window_backward`), exactly and with bounded memory, and
reports "window i of n" through the monitor; methods need no code of their own for it. The gradient
at the input itself also yields the model output (the blended windows). A predicted region needs the
whole blended output before any window's backward pass: when every window fits in one network call
(the memory budget says so) that call is shared too, otherwise one pass over the windows comes first
(recorded in the diagnostics as ``target_pass``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..model.layout import fast_convolutions, to_channels_last
from ..monitor import Monitor
from ..scoring import TargetScorer
from ..target import Target
from ..volume import ImageVolume
from .modified_backprop import cancel_points

__all__ = ["MethodContext", "PendingTarget"]


@dataclass
class PendingTarget:
    """A target not resolved yet, and how to resolve it (made by :func:`MedXAILib.explain`).

    Attributes:
        target: what is explained.
        resolve: ``output -> scorer``: checks the output against the model and the target and fixes the
            region (raises :class:`~MedXAILib.errors.TargetError` / ``ModelError``).
        output_free: the region does not depend on the output's values, so the output of any input
            (its channel count) resolves it; otherwise only the output at the input does.
        check: called with the output at the input and the scorer once both are known: refuses (or
            warns about) an undefined output where the target reads it.
    """

    target: Target
    resolve: Callable[[torch.Tensor], TargetScorer]
    output_free: bool = False
    check: Optional[Callable[[torch.Tensor, TargetScorer], None]] = None


class MethodContext:
    """Inputs and services for one attribution run.

    Attributes:
        x: the input (1, C, I, J, K) on the model's device.
        model: differentiable function input -> output on the input grid.
        scorer: output -> target score (B,); resolved on first use (see the module docstring).
        image: the input volume (geometry, spacing for mm-based parameters).
        monitor: progress and cancel.
        generator: seeded torch generator (CPU) for any randomness.
        diagnostics: method-specific numbers recorded in the provenance.
        output: the model output for `x` once known: given by the caller, or kept from the first pass
            of the method at the input (a gradient at `x`, a CAM's pass, a batch row that is `x`).
        cache: what a method computes once per run and reuses across its passes.
        pending: how to resolve the target when no `scorer` is given.
    """

    def __init__(self, x: torch.Tensor, model: torch.nn.Module, scorer: Optional[TargetScorer] = None,
                 image: Optional[ImageVolume] = None, monitor: Optional[Monitor] = None,
                 generator: Optional[torch.Generator] = None, diagnostics: Optional[dict[str, Any]] = None,
                 output: Optional[torch.Tensor] = None, cache: Optional[dict[str, Any]] = None,
                 pending: Optional[PendingTarget] = None):
        if scorer is None and pending is None:
            raise ValueError("a MethodContext needs a scorer or a pending target")
        self.x = x
        self.model = model
        self.image = image
        self.monitor = monitor or Monitor()
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.diagnostics: dict[str, Any] = {} if diagnostics is None else diagnostics
        self.output = output
        self.cache: dict[str, Any] = {} if cache is None else cache
        self.pending = pending
        self._scorer = scorer
        self.input_unevaluated: Optional[str] = None
        self._checked = False

    def no_input_pass(self, why: str) -> None:
        """Declare that the method's passes never evaluate the input itself (`why`, for the reader).

        For a target fixed without the output at the input, :func:`MedXAILib.explain` then records the
        prediction as not evaluated instead of running the model on the input for the provenance alone
        (a batch-1 forward pass: a twelfth of a SmoothGrad of 8 samples on a ResNet whose forward pass is
        half of its forward+backward). A target that needs the output still gets its pass and its
        prediction. The finiteness check of the output at the input then reads the method's first output
        instead (a whole-volume output: windowed passes return none, and the map's own check remains).
        """
        self.input_unevaluated = why

    # ------------------------------------------------------------------------------------------
    # The target

    @property
    def target(self) -> Target:
        """What is explained (readable before the target is resolved)."""
        return self._scorer.target if self._scorer is not None else self.pending.target

    @property
    def resolved(self) -> bool:
        """Whether the scorer is known (its region fixed)."""
        return self._scorer is not None

    @property
    def output_free(self) -> bool:
        """Whether any model output (not only the one at the input) can resolve the target."""
        return self._scorer is not None or bool(self.pending and self.pending.output_free)

    @property
    def scorer(self) -> TargetScorer:
        """output -> target score (B,); resolved from the output at the input when still pending
        (one pass over the input, unless a pass of the method has resolved it already)."""
        if self._scorer is None:
            self.input_output()
        assert self._scorer is not None
        return self._scorer

    def keep_output(self, output: torch.Tensor) -> None:
        """Record `output` (1, K, ...) as the model output for `x`: resolves a pending target from it
        (before any score is taken) and checks it where the target reads it."""
        output = output.detach()
        self.output = output
        if self._scorer is None:
            self._scorer = self.pending.resolve(output)
        if self.pending is not None and self.pending.check is not None:
            self.pending.check(output, self._scorer)

    def observe(self, output: torch.Tensor, input_row: Optional[int] = None) -> None:
        """A batch output the method computed: row `input_row` (if any) is the output at `x`; any
        output resolves an output-free target."""
        if input_row is not None and self.output is None:
            self.keep_output(output[input_row:input_row + 1])
            return
        if self._scorer is None and self.output_free:
            self._scorer = self.pending.resolve(output.detach())
        if (self.input_unevaluated and self.output is None and not self._checked
                and self.pending is not None and self.pending.check):
            # no output at the input will be checked: the method's first output is, where the target reads it
            self._checked = True
            self.pending.check(output[:1].detach(), self.scorer)

    # ------------------------------------------------------------------------------------------
    # Passes

    def score(self, batch: torch.Tensor, input_row: Optional[int] = None) -> torch.Tensor:
        """Target score for a batch of inputs, shape (B,).

        Args:
            input_row: the row of `batch` that is the input `x` itself, if any: its output resolves
                the target and is kept as the model output (no pass of its own).
        """
        output = self.model(batch)
        self.observe(output, input_row)
        return self.scorer(output)

    @property
    def windowed(self) -> bool:
        """Whether the model runs window by window (then gradients go window batch by batch)."""
        return bool(getattr(self.model, "windowed", False))

    def input_output(self) -> torch.Tensor:
        """The model output for the input `x` (computed once, without autograd, if no pass kept it)."""
        if self.output is None:
            x = self.x.detach()
            with torch.no_grad():
                if self.windowed:  # the windows run in channels-last layout themselves
                    output = self.model(x)
                else:
                    with fast_convolutions(self.network, backward=False):
                        output = self.model(to_channels_last(x))
            self.keep_output(output)
        return self.output

    def window_progress(self, label: str = "") -> Callable[[int, int], None]:
        """A ``progress(done, total)`` for window loops: "<current message>: window i of n"."""

        def report(done: int, total: int) -> None:
            base = label or self.monitor.message.split(": window ")[0]
            where = f"window {done} of {total}"
            self.monitor.update(0.0, f"{base}: {where}" if base else where)

        return report

    def at_input(self, batch: torch.Tensor, input_row: Optional[int] = None) -> Optional[int]:
        """`input_row`, or 0 when `batch` is the input itself (one item equal to `x`)."""
        if input_row is not None:
            return input_row
        same = batch is self.x or (batch.shape == self.x.shape and torch.equal(batch, self.x))
        return 0 if same else None

    def gradient(self, batch: torch.Tensor, input_row: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(d score / d input, score) for a batch; each batch item's gradient is its own.

        The output of row `input_row` (found automatically when `batch` is the input) is kept as the
        model output, and a pending target is resolved from it before the score is taken, so the
        gradient at the input costs one forward and one backward pass in all.
        """
        row = self.at_input(batch, input_row)
        if self.windowed:
            return self._windowed_gradient(batch, row)
        with fast_convolutions(self.network), torch.enable_grad():  # same values, faster convolutions
            batch = to_channels_last(batch.detach()).requires_grad_(True)  # follows the network's layout
            output = self.model(batch)
            self.observe(output, row)
            scores = self.scorer(output)
            (grads,) = torch.autograd.grad(scores.sum(), batch)
        return grads.contiguous(), scores.detach()

    def _windowed_gradient(self, batch: torch.Tensor, row: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
        same = row == 0 and batch.shape[0] == 1  # windows blend one item's output only
        with cancel_points(self.network, self.monitor.check):
            found = self.model.gradient(batch, self._scorer or self.windowed_scorer(same),
                                        output=self.output if same else None, keep_output=same,
                                        resolve=self.resolve_at_input if self._scorer is None else None,
                                        progress=self.window_progress())
        if same and self.output is None:  # the windows ran anyway: their blend is the output
            self.keep_output(found.output)
        return found.grad, found.scores

    def windowed_scorer(self, at_input: bool) -> Optional[TargetScorer]:
        """The scorer for a windowed pass over `x` (`at_input`) or another input; None when that pass
        itself can resolve it: at the input, with every window in one network call (the blended output,
        and so the region, is known before any window's backward pass)."""
        if self._scorer is not None:
            return self._scorer
        if at_input and self.output is None and self.model.windows_per_call() >= self.model.plan().n_windows:
            return None
        if not self.output_free:
            self.diagnostics.setdefault(
                "target_pass",
                f"a separate pass over the {self.model.plan().n_windows} windows resolved the target: its "
                "region depends on the whole output, and the windows do not all fit in one network call "
                "under the memory budget")
        return self.scorer

    def resolve_at_input(self, output: torch.Tensor) -> TargetScorer:
        """``resolve`` callback of a windowed pass at the input: the blended output fixes the target."""
        self.keep_output(output)
        assert self._scorer is not None
        return self._scorer

    @property
    def network(self) -> torch.nn.Module:
        """The wrapped network itself (for layer hooks)."""
        return self.model.adapter.network

    def network_input(self, batch: torch.Tensor | None = None) -> torch.Tensor:
        """`batch` (default: the input) after the model's preprocessing, as the network sees it."""
        batch = self.x if batch is None else batch
        return self.model.adapter.preprocessing.apply(batch, self.model.grids)

    def to_input_grid(self, volume: torch.Tensor) -> torch.Tensor:
        """Map a (B, C, ...) tensor on the network's input grid back onto the image grid."""
        return self.model.adapter.preprocessing.invert_output(volume, self.model.grids)

    def warn(self, message: str) -> None:
        """Record a caveat about this result (shown by the CLI and kept in the provenance)."""
        warnings = self.diagnostics.setdefault("warnings", [])
        if message not in warnings:
            warnings.append(message)

    @property
    def spacing(self) -> np.ndarray:
        return self.image.spacing
