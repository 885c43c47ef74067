"""Contract tests generated from the registry: every method x {classifier, segmenter, 2 channels}.

A method added to the registry is picked up here without any new test code.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from MedXAILib import METHODS, Cancelled, Monitor, Target, explain

CONFIGS = {
    # name: (model fixture, volume fixture, target, a different target)
    # the classifier explains its predicted class (where CAMs have positive evidence) and another one
    "classifier": ("classifier", "volume", Target(), None),
    "segmenter": ("segmenter", "volume", Target(class_index=1, region="predicted"),
                  Target(class_index=2, region="predicted")),
    "two-channel": ("two_channel_segmenter", "two_channel_volume", Target(class_index=1, region="predicted"),
                    Target(class_index=2, region="predicted")),
}

CASES = [
    pytest.param((name, config), id=f"{name}-{config}")
    for name in METHODS.names()
    for config in CONFIGS
    if ("classification" if config == "classifier" else "segmentation") in METHODS.get(name).tasks
]


@pytest.fixture
def setup(request):
    name, config = request.param
    model_fixture, volume_fixture, target, other = CONFIGS[config]
    model, volume = request.getfixturevalue(model_fixture), request.getfixturevalue(volume_fixture)
    if other is None:
        predicted = explain(volume, model, "saliency").provenance["target"]["class_index"]
        other = Target(class_index=(predicted + 1) % 3)
    return name, model, volume, target, other


def _hooks(network) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in network.modules()
    )


@pytest.mark.parametrize("setup", CASES, indirect=True)
def test_output_on_input_grid_finite_float32_and_deterministic(setup):
    name, model, volume, target, _ = setup
    first = explain(volume, model, name, target, seed=11)
    again = explain(volume, model, name, target, seed=11)
    assert first.array.shape == volume.array.shape and first.array.dtype == np.float32
    assert np.all(np.isfinite(first.array)) and np.abs(first.array).sum() > 0
    np.testing.assert_array_equal(first.array, again.array)
    np.testing.assert_array_equal(first.affine, volume.affine)
    shares = first.channel_shares
    assert len(shares) == volume.n_channels and sum(shares) == pytest.approx(1.0)


@pytest.mark.parametrize("setup", CASES, indirect=True)
def test_changes_when_the_target_changes(setup):
    name, model, volume, target, other = setup
    a = explain(volume, model, name, target, seed=0).array
    b = explain(volume, model, name, other, seed=0).array
    assert not np.allclose(a, b)


@pytest.mark.parametrize("setup", CASES, indirect=True)
def test_progress_is_monotone_and_complete(setup):
    name, model, volume, target, _ = setup
    seen = []
    explain(volume, model, name, target, monitor=Monitor(lambda f, m: seen.append(f)))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 2


@pytest.mark.parametrize("setup", CASES, indirect=True)
def test_cancel_is_honoured_within_a_second(setup):
    name, model, volume, target, _ = setup
    asked = []
    monitor = Monitor()

    def cancel_once_started(fraction, message):
        if fraction > 0 and not asked:
            asked.append(time.monotonic())
            monitor.cancel()

    monitor._callback = cancel_once_started
    with pytest.raises(Cancelled):
        explain(volume, model, name, target, monitor=monitor)
    assert asked and time.monotonic() - asked[0] < 1.0


@pytest.mark.parametrize("setup", CASES, indirect=True)
def test_hooks_are_removed_after_an_error(setup):
    name, model, volume, target, _ = setup
    before = _hooks(model.network)
    calls = []

    def fail_midway(fraction, message):
        calls.append(fraction)
        if len(calls) == 2:
            raise RuntimeError("simulated failure")

    with pytest.raises(RuntimeError, match="simulated failure"):
        explain(volume, model, name, target, monitor=Monitor(fail_midway))
    assert _hooks(model.network) == before
    assert not any(p.requires_grad for p in model.network.parameters())


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.parametrize("name", METHODS.names())
def test_no_memory_growth_across_repeated_runs(name, segmenter, volume):
    target = Target(class_index=1, region="predicted")
    for _ in range(3):
        explain(volume, segmenter, name, target)
    start = _rss_mb()
    for _ in range(6):
        explain(volume, segmenter, name, target)
    assert _rss_mb() - start < 40, "resident memory grew across repeated runs"
