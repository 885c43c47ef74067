"""MedXAIRuntime.jobs and .runners end to end, without Qt: a real ``python -m MedXAILib explain``.

The Qt timer of :class:`SubprocessRunner` is replaced by a scheduler that queues the callbacks and a
loop that runs them, so the runner's own polling code is what runs here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAILib import ImageVolume, Target
from MedXAILib.errors import UnknownNameError
from MedXAILib.model import save_spec_model
from MedXAIRuntime import process
from MedXAIRuntime.jobs import ExplainJob, ExplainProcessError, ExplainRequest, runInProcess
from MedXAIRuntime.runners import InProcessRunner, RunMode, SubprocessRunner, chooseRunMode
from runtime_models import oblique_affine, save_segmenter

SHAPE = (16, 14, 12)
CLASSIFIER_ARGS = {"in_shape": [1, *SHAPE], "classes": 2, "channels": [4, 8], "strides": [2, 2]}
UNET_ARGS = {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "channels": [4, 8], "strides": [2],
             "num_res_units": 1}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    from monai.networks.nets import Classifier

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    return save_spec_model(Classifier(**CLASSIFIER_ARGS), "Classifier", CLASSIFIER_ARGS, folder / "classifier.json",
                           task="classification", class_names=["normal", "lesion"], in_channels=1)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    return save_segmenter(tmp_path_factory.mktemp("models"), UNET_ARGS, in_channels=2)


def image(channels: int = 1) -> ImageVolume:
    rng = np.random.default_rng(0)
    affine = oblique_affine((1.5, 0.8, 2.5), (-12.0, 30.5, 7.25), angle_deg=20)
    return ImageVolume(rng.normal(size=(channels, *SHAPE)).astype(np.float32), affine)


class FakeTimer:
    """Collects ``singleShot`` callbacks; :meth:`run` calls them until none is left."""

    def __init__(self):
        self.pending: list = []
        self.calls = 0

    def __call__(self, delayMs, callback):
        self.pending.append((delayMs, callback))

    def run(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pending:
            assert time.monotonic() < deadline, "the runner did not finish"
            delayMs, callback = self.pending.pop(0)
            time.sleep(delayMs / 1000.0)
            self.calls += 1
            callback()


class Recorder:
    def __init__(self):
        self.progress: list[tuple[float, str, float]] = []
        self.outcomes: list = []

    def onProgress(self, fraction, message, elapsed):
        self.progress.append((fraction, message, elapsed))

    def onFinished(self, outcome):
        self.outcomes.append(outcome)


# ------------------------------------------------------------------------------------------------
# Subprocess


@pytest.mark.slow
def test_subprocess_runner_explains_and_progress_reaches_one(classifier):
    request = ExplainRequest(image=image(), modelPath=str(classifier), method="integrated_gradients",
                             params={"n_steps": 4, "baseline": "zeros"}, target=Target(class_index=1), seed=3)
    timer, record = FakeTimer(), Recorder()
    runner = SubprocessRunner(scheduler=timer, pollIntervalMs=20)
    runner.start(request, record.onProgress, record.onFinished)
    folder = runner.job.folder
    assert runner.running and folder.is_dir()
    timer.run()

    assert not runner.running and len(record.outcomes) == 1
    outcome = record.outcomes[0]
    assert outcome.error is None and not outcome.cancelled, outcome.log
    fractions = [p[0] for p in record.progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert record.progress[-1][2] > 0  # elapsed seconds
    attribution = outcome.attribution
    assert attribution.array.shape == (1, *SHAPE)
    np.testing.assert_allclose(attribution.affine, request.image.affine, atol=1e-5)
    assert np.all(np.isfinite(attribution.array)) and np.abs(attribution.array).sum() > 0
    assert attribution.provenance["method"] == "integrated_gradients" and attribution.provenance["seed"] == 3
    assert attribution.provenance["target_name"] == "lesion"
    assert not folder.exists(), "the temporary folder must be removed"

    # the same request in process gives the same map (same seed, same device)
    direct = runInProcess(request)
    np.testing.assert_allclose(attribution.array, direct.array, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_subprocess_job_with_two_channels_and_a_mask_target(segmenter):
    volume = image(channels=2)
    mask = np.zeros(SHAPE, bool)
    mask[4:10, 3:9, 2:8] = True
    request = ExplainRequest(image=volume, modelPath=str(segmenter), method="saliency",
                             target=Target(class_index=1, region="mask", mask=mask))
    job = ExplainJob(request)
    job.start()
    assert len([c for c in job.command if c.startswith("--image=")]) == 2
    assert any(c.startswith("--target-mask=") for c in job.command)
    outcome = job.wait(timeout=180)
    assert outcome.error is None, outcome.log
    provenance = outcome.attribution.provenance
    assert provenance["input"]["channels"] == 2
    assert provenance["target"]["region"] == "mask" and provenance["target"]["mask_voxels"] == int(mask.sum())
    assert job.folder is None


@pytest.mark.slow
def test_subprocess_error_shows_the_cli_reason_and_cleans_up(tmp_path):
    request = ExplainRequest(image=image(), modelPath=str(tmp_path / "missing.json"), method="saliency")
    job = ExplainJob(request)
    job.start()
    folder = job.folder
    outcome = job.wait(timeout=180)
    assert isinstance(outcome.error, ExplainProcessError)
    assert outcome.error.returnCode == process.EXIT_BAD_INPUT
    assert str(outcome.error).startswith("model not found") and "missing.json" in str(outcome.error)
    assert not folder.exists()


@pytest.mark.slow
def test_cancel_kills_the_process_tree_and_removes_the_folder(classifier):
    request = ExplainRequest(image=image(), modelPath=str(classifier), method="integrated_gradients",
                             params={"n_steps": 1024, "batch_size": 1})
    timer, record = FakeTimer(), Recorder()
    runner = SubprocessRunner(scheduler=timer, pollIntervalMs=20)
    runner.start(request, record.onProgress, record.onFinished)
    job = runner.job
    folder, pid = job.folder, job._process.pid
    deadline = time.monotonic() + 120
    while not any(0.0 < p[0] < 1.0 for p in record.progress):  # wait until the method is under way
        assert time.monotonic() < deadline and timer.pending
        _, callback = timer.pending.pop(0)
        time.sleep(0.02)
        callback()
    runner.cancel()
    assert len(record.outcomes) == 1 and record.outcomes[0].cancelled
    assert not runner.running and not folder.exists()
    assert not process.isProcessAlive(pid)
    timer.run()  # a poll still queued finds nothing to do
    assert len(record.outcomes) == 1


# ------------------------------------------------------------------------------------------------
# In process


def test_in_process_runner_reports_progress_and_result(classifier):
    request = ExplainRequest(image=image(), modelPath=str(classifier), method="saliency", target=Target(class_index=0))
    events = []
    record = Recorder()
    runner = InProcessRunner(processEvents=lambda: events.append(1))
    runner.start(request, record.onProgress, record.onFinished)
    outcome = record.outcomes[0]
    assert outcome.error is None and outcome.attribution.array.shape == (1, *SHAPE)
    assert record.progress[-1][0] == 1.0 and events
    assert not runner.running


def test_in_process_runner_cancel_from_the_event_loop(classifier):
    request = ExplainRequest(image=image(), modelPath=str(classifier), method="integrated_gradients",
                             params={"n_steps": 64, "batch_size": 1})
    record = Recorder()
    runner = InProcessRunner()

    def processEvents():  # the user clicks Cancel while events are processed
        if record.progress:
            runner.cancel()

    runner._processEvents = processEvents
    runner.start(request, record.onProgress, record.onFinished)
    assert record.outcomes[0].cancelled and record.outcomes[0].attribution is None


def test_in_process_runner_delivers_library_errors(classifier):
    request = ExplainRequest(image=image(), modelPath=str(classifier), method="integrated_gradiants")
    record = Recorder()
    InProcessRunner(processEvents=lambda: None).start(request, record.onProgress, record.onFinished)
    error = record.outcomes[0].error
    assert isinstance(error, UnknownNameError) and "integrated_gradients" in str(error)


def test_run_in_process_lets_errors_rise(classifier):
    with pytest.raises(UnknownNameError):
        runInProcess(ExplainRequest(image=image(), modelPath=str(classifier), method="nope"))


@pytest.mark.parametrize(
    "mode, family, voxels, expected",
    [
        ("auto", "gradient", 64**3, "inProcess"),
        ("auto", "cam", 2**22, "inProcess"),
        ("auto", "gradient", 2**22 + 1, "subprocess"),
        ("auto", "perturbation", 1000, "subprocess"),
        ("auto", "game-theoretic", 1000, "subprocess"),
        (RunMode.inProcess, "perturbation", 10**9, "inProcess"),
        (RunMode.subprocess, "gradient", 10, "subprocess"),
    ],
)
def test_choose_run_mode(mode, family, voxels, expected):
    assert chooseRunMode(mode, family, voxels) == expected


def test_run_mode_labels_for_the_combo_box():
    assert all(RunMode.label(mode) for mode in RunMode)
    with pytest.raises(ValueError):
        chooseRunMode("fast", "gradient", 10)


def test_request_voxel_count():
    assert ExplainRequest(image=image(2), modelPath="m").voxelCount == 2 * int(np.prod(SHAPE))


def test_no_temporary_folder_left_when_the_process_cannot_start(tmp_path, classifier):
    request = ExplainRequest(image=image(), modelPath=str(classifier))
    job = ExplainJob(request, python=str(tmp_path / "no-such-python"), tempRoot=str(tmp_path))
    with pytest.raises(OSError):
        job.start()
    assert [p for p in tmp_path.iterdir() if p.name.startswith("MedXAI-")] == []
    assert not os.path.exists(str(job.folder or ""))
