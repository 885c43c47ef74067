"""Analyses of a result, beside :mod:`MedXAILib.evaluation` and :mod:`MedXAILib.counterfactual`.

- :mod:`.boundary`: relevance profiles across a structure's surface, the predicted structure and its
  uncertainty (test-time flips, Monte-Carlo dropout);
- :mod:`.statistics`: per-structure relevance statistics, relevance-volume curves, tables.

Both measure regions through :mod:`MedXAILib.regions`. Import the submodules directly; this
``__init__`` loads nothing.
"""
