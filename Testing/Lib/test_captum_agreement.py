"""The gradient methods agree with Captum, an independent implementation, to 1e-4 relative.

Both sides attribute the same function (MedXAI's bound model followed by its target reducer), so
any difference comes from the attribution maths: gradients, baselines and quadrature.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency

from MedXAILib import Target, explain

from references import linear_model, masked_target, reference_function, relative_difference








CASES = {
    "classifier": ("classifier", lambda v: Target(class_index=2)),
    "segmenter-masked": ("segmenter", masked_target),
    "segmenter-mean-probability": ("segmenter", lambda v: Target(class_index=2, region="box",
                                                                  box=(2, 2, 2, 9, 9, 6), score="probability",
                                                                  reduction="mean")),
}


@pytest.fixture(params=sorted(CASES))
def case(request, volume):
    fixture, make_target = CASES[request.param]
    adapter = request.getfixturevalue(fixture)
    target = make_target(volume)
    forward, x = reference_function(adapter, volume, target)
    return adapter, target, forward, x


def test_saliency_matches_captum(case, volume):
    adapter, target, forward, x = case
    ours = explain(volume, adapter, "saliency", target).array
    theirs = Saliency(forward).attribute(x.clone().requires_grad_(), abs=False)[0].numpy()
    assert relative_difference(ours, theirs) < 1e-4


def test_saliency_absolute_is_abs_of_gradient(case, volume):
    adapter, target, forward, x = case
    ours = explain(volume, adapter, "saliency", target, {"absolute": True}).array
    theirs = Saliency(forward).attribute(x.clone().requires_grad_(), abs=True)[0].numpy()
    assert relative_difference(ours, theirs) < 1e-4


def test_input_x_gradient_matches_captum(case, volume):
    adapter, target, forward, x = case
    ours = explain(volume, adapter, "input_x_gradient", target).array
    theirs = InputXGradient(forward).attribute(x.clone().requires_grad_())[0].detach().numpy()
    assert relative_difference(ours, theirs) < 1e-4


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_integrated_gradients_matches_captum(case, volume, rule):
    adapter, target, forward, x = case
    params = {"n_steps": 12, "integration": rule, "baseline": "min", "batch_size": 5}
    ours = explain(volume, adapter, "integrated_gradients", target, params)
    baseline = x.amin(dim=(2, 3, 4), keepdim=True).expand_as(x)
    theirs, delta = IntegratedGradients(forward).attribute(
        x, baselines=baseline, n_steps=12, method=rule, internal_batch_size=5, return_convergence_delta=True
    )
    theirs = theirs[0].detach().numpy()
    if rule == "riemann_trapezoid":
        # Captum's trapezoid weights are 1/n (halved at the ends) and sum to (n-1)/n; the trapezoid
        # rule on n equispaced points has weights 1/(n-1), which is what MedXAI uses.
        theirs = theirs * 12 / 11
        delta = None
    assert relative_difference(ours.array, theirs) < 1e-4
    if delta is None:
        return
    recorded = ours.provenance["diagnostics"]["completeness_error"]
    assert recorded == pytest.approx(abs(float(delta)), rel=1e-2, abs=1e-5)


def test_integrated_gradients_is_complete_on_a_piecewise_linear_classifier(classifier, volume):
    result = explain(volume, classifier, "integrated_gradients", Target(class_index=1), {"baseline": "zeros"})
    diag = result.provenance["diagnostics"]
    assert diag["completeness_relative_error"] < 1e-4
    assert float(result.array.sum()) == pytest.approx(diag["score_input_minus_baseline"], rel=1e-4)
    assert "warnings" not in diag


def test_integrated_gradients_completeness_is_measured_and_warned(segmenter, volume):
    """Instance norm makes the zeros path abrupt: few steps miss completeness, and the result says so."""
    coarse = explain(volume, segmenter, "integrated_gradients", masked_target(volume),
                     {"n_steps": 16, "baseline": "zeros"}).provenance["diagnostics"]
    assert coarse["completeness_relative_error"] > 0.05
    assert "completeness" in coarse["warnings"][0]
    fine = explain(volume, segmenter, "integrated_gradients", masked_target(volume),
                   {"n_steps": 64, "baseline": "blur"}).provenance["diagnostics"]
    assert fine["completeness_relative_error"] < 0.01
    assert "warnings" not in fine


def test_integrated_gradients_on_a_linear_model_is_exact(volume):
    """Analytic case: for F(x) = sum(w * x), IG from zeros is w * x for any quadrature."""
    model, weights = linear_model(volume.shape)
    result = explain(volume, model, "integrated_gradients", Target(class_index=0),
                     {"n_steps": 3, "baseline": "zeros"})
    expected = (weights[0] * torch.as_tensor(volume.array)).numpy()
    np.testing.assert_allclose(result.array, expected, rtol=1e-5, atol=1e-6)
