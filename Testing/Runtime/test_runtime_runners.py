"""MedXAIRuntime.jobs and .runners end to end, without Qt: a real ``python -m MedXAILib.runs FOLDER``.

Every kind of run goes through the same runners: explanations (whatever their target, boundary bands
around a user mask included) and the analyses of the other sections. The Qt timer of
:class:`SubprocessRunner` is replaced by a scheduler that queues the callbacks and a loop that runs
them, so the runner's own polling code is what runs here. The library's entry points are called
directly as the reference.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAILib import ImageVolume, Target
from MedXAILib.errors import TargetError, UnknownNameError
from MedXAILib.model import load_model, save_spec_model
from MedXAILib.runs import RunResult
from MedXAIRuntime import boundaryPanel, evaluatePanel, forms, jobs, process
from MedXAIRuntime.jobs import RunJob, RunProcessError, analysisRequest, explainRequest, runInProcess
from MedXAIRuntime.runners import InProcessRunner, RunMode, SubprocessRunner, chooseRunMode
from runtime_models import oblique_affine, save_segmenter

SHAPE = (16, 14, 12)
CLASSIFIER_ARGS = {"in_shape": [1, *SHAPE], "classes": 2, "channels": [4, 8], "strides": [2, 2]}
UNET_ARGS = {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "channels": [4, 8], "strides": [2],
             "num_res_units": 1, "dropout": 0.2}


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


def structure() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[4:10, 3:9, 2:8] = True
    return mask


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


def runInBackground(request, **runner) -> tuple[Recorder, Path]:
    """Run `request` through SubprocessRunner and the fake timer; the job's folder is returned to check it is gone."""
    timer, record = FakeTimer(), Recorder()
    subprocessRunner = SubprocessRunner(scheduler=timer, pollIntervalMs=20, **runner)
    subprocessRunner.start(request, record.onProgress, record.onFinished)
    folder = subprocessRunner.job.folder
    assert subprocessRunner.running and folder.is_dir()
    timer.run()
    assert not subprocessRunner.running and len(record.outcomes) == 1
    return record, folder


# ------------------------------------------------------------------------------------------------
# Subprocess


@pytest.mark.slow
def test_subprocess_runner_explains_and_progress_reaches_one(classifier):
    request = explainRequest(image(), str(classifier), "integrated_gradients", {"n_steps": 4, "baseline": "zeros"},
                             Target(class_index=1), seed=3)
    record, folder = runInBackground(request)
    outcome = record.outcomes[0]
    assert outcome.error is None and not outcome.cancelled, outcome.log
    fractions = [p[0] for p in record.progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert record.progress[0][1] == "Starting the explanation process"
    assert record.progress[-1][2] > 0  # elapsed seconds
    attribution = outcome.attribution
    assert attribution.array.shape == (1, *SHAPE)
    np.testing.assert_array_equal(attribution.affine, request.image.affine)  # no file format in between
    assert np.all(np.isfinite(attribution.array)) and np.abs(attribution.array).sum() > 0
    assert attribution.provenance["method"] == "integrated_gradients" and attribution.provenance["seed"] == 3
    assert attribution.provenance["target_name"] == "lesion"
    assert not folder.exists(), "the temporary folder must be removed"

    # the same request in process gives the same map (same seed, same device)
    direct = runInProcess(request).attribution()
    np.testing.assert_allclose(attribution.array, direct.array, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_subprocess_explains_a_boundary_band_around_a_user_mask(segmenter):
    """The target the command line cannot express (a band around a user's segment, margin score) runs in the background too."""
    from MedXAILib.engine import explain

    volume = image(channels=2)
    target = Target(class_index=1, region="boundary", score="margin", mask=structure(), band_mm=(1.0, 2.0))
    request = explainRequest(volume, str(segmenter), "saliency", {}, target, device="cpu", seed=2)
    record, _ = runInBackground(request)
    outcome = record.outcomes[0]
    assert outcome.error is None, outcome.log
    reference = explain(volume, load_model(segmenter, device="cpu"), "saliency", target, {}, seed=2)
    np.testing.assert_allclose(outcome.attribution.array, reference.array, rtol=1e-5, atol=1e-6)
    provenance = outcome.attribution.provenance
    assert provenance["input"]["channels"] == 2
    assert provenance["target"]["region"] == "boundary" and provenance["target"]["band_mm"] == [1.0, 2.0]
    assert provenance["target"]["mask_voxels"] == int(structure().sum())


@pytest.mark.slow
def test_subprocess_runs_an_analysis_as_in_process(segmenter):
    base = explainRequest(image(channels=2), str(segmenter), "saliency", device="cpu", seed=4)
    request = analysisRequest(base, "boundary_uncertainty", {"class_index": 1, "flips": True, "n_dropout": 2})
    record, folder = runInBackground(request)
    outcome = record.outcomes[0]
    assert outcome.error is None, outcome.log
    assert record.progress[0][1] == "Starting the uncertainty analysis process"
    direct = runInProcess(request)
    assert set(outcome.result.volumes) == {"probability", "entropy", "variance"}
    for name, volume in direct.volumes.items():
        np.testing.assert_allclose(outcome.result.volumes[name].array, volume.array, rtol=1e-6, atol=1e-7)
        assert outcome.result.volumes[name].meta == volume.meta  # the ensemble description comes back too
    assert not folder.exists()


@pytest.mark.slow
def test_subprocess_error_shows_the_workers_reason_and_cleans_up(tmp_path, segmenter):
    job = RunJob(explainRequest(image(), str(tmp_path / "missing.json"), "saliency"))
    job.start()
    folder = job.folder
    outcome = job.wait(timeout=180)
    assert isinstance(outcome.error, RunProcessError)
    assert outcome.error.returnCode == process.EXIT_BAD_INPUT
    assert str(outcome.error).startswith("model not found") and "missing.json" in str(outcome.error)
    assert not folder.exists() and job.folder is None

    base = explainRequest(image(channels=2), str(segmenter), "saliency", device="cpu")
    job = RunJob(analysisRequest(base, "boundary_uncertainty", {"class_index": 7}))
    job.start()
    outcome = job.wait(timeout=180)
    assert isinstance(outcome.error, RunProcessError) and outcome.error.returnCode == process.EXIT_BAD_INPUT
    assert "out of range" in str(outcome.error) and "\n" not in str(outcome.error)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["explain", "boundary_uncertainty"])
def test_cancel_kills_the_process_tree_and_removes_the_folder(classifier, segmenter, kind):
    if kind == "explain":
        request = explainRequest(image(), str(classifier), "integrated_gradients", {"n_steps": 1024, "batch_size": 1})
    else:
        big = ImageVolume(np.random.default_rng(0).normal(size=(2, 48, 48, 40)).astype(np.float32), np.eye(4))
        request = analysisRequest(explainRequest(big, str(segmenter), device="cpu"), "boundary_uncertainty",
                                  {"class_index": 1, "flips": True, "n_dropout": 200})
    timer, record = FakeTimer(), Recorder()
    runner = SubprocessRunner(scheduler=timer, pollIntervalMs=20)
    runner.start(request, record.onProgress, record.onFinished)
    job = runner.job
    folder, pid = job.folder, job._process.pid
    deadline = time.monotonic() + 120
    while not any(0.0 < p[0] < 1.0 for p in record.progress):  # wait until the run is under way
        assert time.monotonic() < deadline and timer.pending
        _, callback = timer.pending.pop(0)
        time.sleep(0.02)
        callback()
    started = time.perf_counter()
    runner.cancel()
    mainThreadMs = 1000 * (time.perf_counter() - started)
    assert mainThreadMs < 200, f"Cancel kept the main thread for {mainThreadMs:.0f} ms"
    assert len(record.outcomes) == 1 and record.outcomes[0].cancelled and record.outcomes[0].result is None
    assert not runner.running
    deadline = time.monotonic() + 20  # the tree ends and the folder goes, on the reaper thread
    while (process.isProcessAlive(pid) or folder.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process.isProcessAlive(pid) and not folder.exists()
    timer.run()  # a poll still queued finds nothing to do
    assert len(record.outcomes) == 1


def test_no_temporary_folder_left_when_the_process_cannot_start(tmp_path, classifier):
    job = RunJob(explainRequest(image(), str(classifier)), python=str(tmp_path / "no-such-python"),
                 tempRoot=str(tmp_path))
    with pytest.raises(OSError):
        job.start()
    assert [p for p in tmp_path.iterdir() if p.name.startswith("MedXAI-")] == []
    assert not os.path.exists(str(job.folder or ""))


def test_the_job_runs_the_library_worker(tmp_path, classifier):
    job = RunJob(explainRequest(image(), str(classifier)), python="/usr/bin/python3", tempRoot=str(tmp_path))
    assert jobs.runCommand("/usr/bin/python3", Path("/t/run")) == ["/usr/bin/python3", "-m", "MedXAILib.runs", "/t/run"]
    assert job.what == "explanation"


# ------------------------------------------------------------------------------------------------
# In process


def test_in_process_runner_reports_progress_and_result(classifier):
    request = explainRequest(image(), str(classifier), "saliency", target=Target(class_index=0))
    events = []
    record = Recorder()
    runner = InProcessRunner(processEvents=lambda: events.append(1))
    runner.start(request, record.onProgress, record.onFinished)
    outcome = record.outcomes[0]
    assert outcome.error is None and outcome.attribution.array.shape == (1, *SHAPE)
    assert record.progress[0][1] == "Loading the model" and record.progress[-1][0] == 1.0 and events
    assert not runner.running


def test_in_process_runner_cancel_from_the_event_loop(classifier):
    request = explainRequest(image(), str(classifier), "integrated_gradients", {"n_steps": 64, "batch_size": 1})
    record = Recorder()
    runner = InProcessRunner()

    def processEvents():  # the user clicks Cancel while events are processed
        if record.progress:
            runner.cancel()

    runner._processEvents = processEvents
    runner.start(request, record.onProgress, record.onFinished)
    assert record.outcomes[0].cancelled and record.outcomes[0].attribution is None


def test_in_process_runner_delivers_library_errors(classifier):
    request = explainRequest(image(), str(classifier), "integrated_gradiants")
    record = Recorder()
    InProcessRunner(processEvents=lambda: None).start(request, record.onProgress, record.onFinished)
    error = record.outcomes[0].error
    assert isinstance(error, UnknownNameError) and "integrated_gradients" in str(error)


def test_in_process_runner_with_another_computation():
    events, outcomes = [], []
    request = explainRequest(image(), "x")

    def work(request, monitor):
        for i in range(3):
            monitor.update(i / 3, f"step {i}")
        return RunResult(data={"ok": True})

    InProcessRunner(processEvents=lambda: events.append("events"), run=work).start(
        request, lambda f, m, s: events.append((round(f, 3), m)), outcomes.append)
    assert outcomes[0].result.data == {"ok": True} and outcomes[0].error is None and not outcomes[0].cancelled
    assert (0.0, "step 0") in events and "events" in events

    def fail(request, monitor):
        raise TargetError("class 9 is out of range")

    InProcessRunner(processEvents=lambda: None, run=fail).start(request, lambda *a: None, outcomes.append)
    assert isinstance(outcomes[1].error, TargetError) and outcomes[1].result is None


def test_run_in_process_lets_errors_rise(classifier):
    with pytest.raises(UnknownNameError):
        runInProcess(explainRequest(image(), str(classifier), "nope"))


# ------------------------------------------------------------------------------------------------
# Choosing where a run goes; the panels' requests


def analysis(kind: str, channels: int = 1, shape=SHAPE):
    volume = ImageVolume(np.zeros((channels, *shape), np.float32), np.eye(4))
    return analysisRequest(explainRequest(volume, "m"), kind, {})


@pytest.mark.parametrize(
    "mode, request_, expected",
    [
        ("auto", explainRequest(image(), "m", "saliency"), "inProcess"),
        ("auto", explainRequest(image(), "m", "grad_cam"), "inProcess"),
        ("auto", explainRequest(ImageVolume(np.zeros((1, 256, 128, 129), np.float32), np.eye(4)), "m", "saliency"),
         "subprocess"),
        ("auto", explainRequest(image(), "m", "occlusion"), "subprocess"),
        ("auto", explainRequest(image(), "m", "kernel_shap"), "subprocess"),
        ("auto", analysis("boundary_uncertainty"), "inProcess"),
        ("auto", analysis("boundary_uncertainty", channels=2, shape=(160, 160, 100)), "subprocess"),
        ("auto", analysis("counterfactual"), "subprocess"),
        ("auto", analysis("evaluate"), "subprocess"),
        (RunMode.inProcess, explainRequest(image(), "m", "occlusion"), "inProcess"),
        (RunMode.subprocess, explainRequest(image(), "m", "saliency"), "subprocess"),
        ("inProcess", analysis("counterfactual"), "inProcess"),
    ],
)
def test_choose_run_mode(mode, request_, expected):
    assert chooseRunMode(mode, request_) == expected


def test_run_mode_labels_for_the_combo_box():
    assert all(RunMode.label(mode) for mode in RunMode)
    with pytest.raises(ValueError):
        chooseRunMode("fast", explainRequest(image(), "m", "saliency"))


def test_requests_carry_the_explain_sections_model_device_seed_and_trust():
    volume = image(channels=2)
    request = explainRequest(volume, "/m/unet.json", "saliency", {"absolute": True}, Target(class_index=1), "cpu", 5, True)
    assert request.kind.value == "explain" and request.voxel_count == 2 * int(np.prod(SHAPE))
    assert request.arguments == {"method": "saliency", "params": {"absolute": True}}

    class Logic:
        def buildRequest(self, p, target=None):
            return explainRequest(volume, "/m/unet.json", "saliency", {}, target or Target(class_index=1), "cpu", 5, True)

    p = SimpleNamespace(boundaryClass=2, boundaryFlips=False, boundaryDropoutSamples=3)
    uncertainty = boundaryPanel.buildUncertaintyRequest(Logic(), p)
    assert uncertainty.kind.value == "boundary_uncertainty" and uncertainty.target is None
    assert uncertainty.arguments == {"class_index": 2, "flips": False, "n_dropout": 3}
    assert (uncertainty.model_path, uncertainty.device, uncertainty.seed, uncertainty.trust_bundle) == (
        "/m/unet.json", "cpu", 5, True)
    assert uncertainty.image is volume

    p = SimpleNamespace(evaluateMethods="saliency, grad_cam", evaluateMetrics="sparseness",
                        methodParameters=forms.encodeMethodParameters({"saliency": {"absolute": True}}),
                        evaluateSegmentation=None, evaluateSegmentId="")
    comparison = evaluatePanel.buildCompareRequest(Logic(), p)
    assert comparison.kind.value == "compare_methods" and comparison.target.class_index == 1
    assert comparison.arguments["methods"] == ["saliency", "grad_cam"]
    assert comparison.arguments["metrics"] == ["sparseness"]
    assert comparison.arguments["method_params"]["saliency"]["absolute"] is True
    assert comparison.arrays == {}
