"""Training of the shipped demo models on synthetic phantoms (CPU, minutes, deterministic).

``python -m MedXAILib.demo.training --out Resources/Models --seed 0`` (also ``medxai train-demo``) trains
the segmenter and the two lesion classifiers of :mod:`.demo_models` on freshly generated phantoms
(:mod:`MedXAILib.demo.samples`) and writes their specs, weights, model cards and metrics. The metrics of
:mod:`.metrics` (Dice per class, ROC AUC by rank statistic, accuracy) need numpy only.
"""

from __future__ import annotations

from .metrics import accuracy, dice_per_class, roc_auc

__all__ = ["accuracy", "dice_per_class", "roc_auc", "train_all", "main"]


def train_all(*args, **kwargs):
    """See :func:`MedXAILib.demo.training.demo_models.train_all` (imported lazily: it needs torch)."""
    from .demo_models import train_all as _train_all

    return _train_all(*args, **kwargs)


def main(argv=None) -> int:
    """Entry point of ``python -m MedXAILib.demo.training``."""
    from .cli import main as _main

    return _main(argv)
