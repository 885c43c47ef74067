"""Evaluation of explanations: sanity checks now; faithfulness, localisation and robustness metrics later."""

from .randomisation import RandomisationStep, cascading_randomisation, map_similarity

__all__ = ["RandomisationStep", "cascading_randomisation", "map_similarity"]
