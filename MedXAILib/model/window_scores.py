"""Score changes of locally perturbed inputs through sliding-window inference, window by window.

With MONAI's blending (see :mod:`.windows`) and a target score linear in the output (a logit summed
or averaged over a region, ``g = dS/dy`` constant), the score splits over the windows:

    S(x) = sum_w c_w(x),    c_w(x) = < (g m_w / N)|_w , f(x_w) >,

and ``c_w`` depends only on the input inside window ``w`` (every window is its own network call;
instance-norm statistics are per window too). A perturbation confined to a box ``B`` therefore
changes only the terms of the windows that overlap ``B``, and among those only the windows where
``g m_w / N`` is not zero (the windows overlapping the target region) count:

    S(x) - S(x') = sum_{w : w meets B and the region} (c_w(x) - c_w(x')).

:class:`LocalWindowScores` computes ``c_w(x)`` once for the windows that carry weight and then, per
box, runs only those of them that the box meets. The drops are exact (the same sums as the whole
blended output, taken in float64 per window), and for a small target region most boxes touch no
weighted window at all and cost nothing. Applies when the network input is the stored input (no
preprocessing steps, so a box on the input grid is a box on the network grid); otherwise callers
run whole perturbed inputs.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from . import memory
from .layout import fast_convolutions, to_channels_last
from .window_gradient import linear_output_gradient, score_is_linear, window_weights
from .windows import WindowPlan, network_output

__all__ = ["LocalWindowScores", "applies", "windows_per_call"]

Box = tuple[slice, ...]
Progress = Callable[[int, int], None]


def applies(bound: Any, scorer: Any, x: torch.Tensor) -> bool:
    """Whether :class:`LocalWindowScores` serves this model, target and input."""
    return (bool(getattr(bound, "windowed", False)) and not bound.adapter.preprocessing.steps
            and score_is_linear(scorer) and getattr(scorer, "region", None) is not None
            and int(x.shape[0]) == 1
            # a box changes only its own windows when the padding is zeros, not copies of the border
            and (bound.adapter.padding_mode == "constant" or not any(bound.plan().pad)))


class LocalWindowScores:
    """Score drops of box perturbations of one input, recomputing only the windows that matter.

    Args:
        bound: a windowed :class:`~MedXAILib.model.adapter.BoundModel` without preprocessing steps.
        x: the input (1, C, I, J, K).
        scorer: a linear target score (see :func:`.window_gradient.score_is_linear`).
        per_call: windows per network call.
    """

    def __init__(self, bound: Any, x: torch.Tensor, scorer: Any, per_call: int):
        self.adapter = bound.adapter
        self.plan: WindowPlan = bound.plan()
        self.per_call = max(1, int(per_call))
        self.x = x.detach()
        self.xp = self.plan.pad_input(self.x)
        self.lows = self.plan.pad[0::2][::-1]  # padding before each spatial axis
        channels, g = linear_output_gradient(scorer, 1, bound.output_channels(), tuple(x.shape[2:]),
                                              x.dtype, x.device)
        self.channels = channels
        h = window_weights(bound, self.plan, g)
        self.weighted = [k for k, where in enumerate(self.plan.slices)
                         if bool(h[(slice(None), slice(None), *where)].any())]
        self.weights = {k: h[(slice(None), slice(None), *self.plan.slices[k])] * self.plan.importance
                        for k in self.weighted}  # float32 here, summed in float64
        self.windows_run = 0
        self.base = dict(zip(self.weighted, self._terms([(k, None, None) for k in self.weighted])))

    def _terms(self, jobs: Sequence[tuple[int, Optional[Box], Optional[torch.Tensor]]],
               progress: Optional[Progress] = None) -> list[float]:
        """``c_w`` of each job ``(window, box or None, baseline)``: the box's voxels at the baseline."""
        out: list[float] = []
        plan, network = self.plan, self.adapter.network
        for start in range(0, len(jobs), self.per_call):
            part = jobs[start:start + self.per_call]
            windows = []
            for k, box, baseline in part:
                where = plan.slices[k]
                window = self.xp[(slice(None), slice(None), *where)]
                if box is not None:
                    window = window.clone()
                    inside = self._inside(box, where)
                    window[(slice(None), slice(None), *inside[0])] = \
                        baseline[(slice(None), slice(None), *inside[1])]
                windows.append(window)
            batch = torch.cat(windows) if len(windows) > 1 else windows[0]
            with torch.inference_mode(), fast_convolutions(network, backward=False):  # layout: same values, faster
                y = network_output(network, to_channels_last(batch), self.adapter.uses_amp())
                y = y[:, self.channels]
                for row, (k, _, _) in enumerate(part):
                    out.append(float((y[row:row + 1].double() * self.weights[k].double()).sum()))
            self.windows_run += len(part)
            if progress is not None:
                progress(start + len(part), len(jobs))
        return out

    def _inside(self, box: Box, where: Box) -> tuple[Box, Box]:
        """(box ∩ window in window coordinates, the same voxels in input-grid coordinates)."""
        local, grid = [], []
        for b, w, low in zip(box, where, self.lows):
            start, stop = max(b.start + low, w.start), min(b.stop + low, w.stop)
            local.append(slice(start - w.start, stop - w.start))
            grid.append(slice(start - low, stop - low))
        return tuple(local), tuple(grid)

    def _meets(self, box: Box, k: int) -> bool:
        return all(b.start + low < w.stop and b.stop + low > w.start
                   for b, w, low in zip(box, self.plan.slices[k], self.lows))

    def drops(self, boxes: Sequence[Box], baseline: torch.Tensor, channel: Optional[int] = None,
              progress: Optional[Progress] = None) -> torch.Tensor:
        """``S(x) - S(x with the box at the baseline)`` for every box (float64, one per box).

        Args:
            boxes: spatial slices on the input grid.
            baseline: (1, C, I, J, K) values a perturbed voxel takes (cut per window, so a box
                gets the same values as when the whole input is perturbed).
            channel: perturb only this input channel (``None``: all channels together).
        """
        base = baseline.detach()
        if channel is not None:  # other channels keep the input's values
            mixed = self.x.clone()
            mixed[:, channel] = base[:, channel]
            base = mixed
        jobs, owner = [], []
        for i, box in enumerate(boxes):
            for k in self.weighted:
                if self._meets(box, k):
                    jobs.append((k, box, base))
                    owner.append(i)
        terms = self._terms(jobs, progress)
        result = torch.zeros(len(boxes), dtype=torch.float64)
        for i, (k, _, _), term in zip(owner, jobs, terms):
            result[i] += self.base[k] - term
        return result


def windows_per_call(bound: Any, most: int) -> int:
    """Windows per no-grad call for :class:`LocalWindowScores`: `most`, lowered to the budget."""
    a = bound.adapter
    per_window = max(1, int(bound.window_bytes() * memory.NO_GRAD_FACTOR / memory.GRAD_FACTOR))
    return memory.items_per_call(a.budget_bytes(), bound.fixed_bytes(), per_window, most)
