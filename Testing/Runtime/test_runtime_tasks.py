"""MedXAIRuntime.tasks and taskWorker without Qt: requests, serialisation, the in-process runner and the worker.

The library functions the panels run (boundary uncertainty, explanations with boundary targets) are
called directly as the independent reference: a task must give exactly what the library gives,
in process and through ``python -m MedXAIRuntime.taskWorker``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAILib import ImageVolume, Target
from MedXAILib.errors import Cancelled, InputError, TargetError
from MedXAILib.model import save_spec_model
from MedXAILib.monitor import Monitor
from MedXAIRuntime import process, tasks
from MedXAIRuntime.tasks import TaskKind, TaskRequest, TaskResult
from runtime_models import oblique_affine, save_segmenter

SHAPE = (12, 10, 8)
UNET_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
             "num_res_units": 1, "dropout": 0.2}


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    return save_segmenter(tmp_path_factory.mktemp("models"), UNET_ARGS, in_channels=1)


@pytest.fixture(scope="module")
def image() -> ImageVolume:
    rng = np.random.default_rng(3)
    array = rng.normal(size=SHAPE).astype(np.float32)
    array[3:9, 3:7, 2:6] += 2.0
    return ImageVolume(array[np.newaxis], oblique_affine((1.2, 0.9, 2.0), (-30.0, 12.5, 4.0), angle_deg=15))


def structure() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[4:8, 3:7, 2:6] = True
    return mask


# ------------------------------------------------------------------------------------------------
# Serialisation


def test_json_safe_converts_numpy_nan_tuples_dataclasses_and_enums():
    @dataclasses.dataclass
    class Row:
        a: float
        b: tuple

    class Colour(enum.Enum):
        red = "r"

    value = {"x": np.float32(1.5), "n": np.int64(3), "nan": float("nan"), "inf": math.inf, "arr": np.arange(3),
             "row": Row(np.float64(2.0), (1, np.bool_(True))), "colour": Colour.red, 4: Path("/a/b")}
    assert tasks.jsonSafe(value) == {"x": 1.5, "n": 3, "nan": None, "inf": None, "arr": [0, 1, 2],
                                     "row": {"a": 2.0, "b": [1, True]}, "colour": "r", "4": "/a/b"}


def test_boundary_target_round_trips_with_its_mask_and_band():
    target = Target(class_index=2, region="boundary", score="margin", mask=structure(), band_mm=(1.5, 3.0))
    fields, arrays = tasks.targetToJson(target)
    assert "mask" not in fields and set(arrays) == {"target.mask"}
    back = tasks.targetFromJson(fields, arrays)
    assert back.region == "boundary" and back.score == "margin" and back.band_mm == (1.5, 3.0)
    np.testing.assert_array_equal(back.mask, structure())
    box = tasks.targetFromJson(*tasks.targetToJson(Target(class_index=0, region="box", box=(1, 2, 3, 4, 5, 6))))
    assert box.box == (1, 2, 3, 4, 5, 6) and box.mask is None
    assert tasks.targetToJson(None) == (None, {}) and tasks.targetFromJson(None, {}) is None


def test_request_and_result_round_trip_exactly(tmp_path, image):
    request = TaskRequest(kind="evaluate", image=image, modelPath="/m/model.json", device="cpu", seed=7,
                          arguments={"metrics": ["deletion"], "provenance": {"method": "saliency"}},
                          arrays={"attribution": np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE),
                                  "mask": structure()},
                          target=Target(class_index=1, region="mask", mask=structure()))
    tasks.writeRequest(request, tmp_path)
    back = tasks.readRequest(tmp_path)
    assert back.kind is TaskKind.evaluate and back.modelPath == "/m/model.json" and back.seed == 7
    np.testing.assert_array_equal(back.image.array, image.array)
    np.testing.assert_array_equal(back.image.affine, image.affine)  # bit-exact: no file format in between
    np.testing.assert_array_equal(back.arrays["attribution"], request.arrays["attribution"])
    assert back.arrays["mask"].dtype == bool and back.target.region == "mask" and back.target.mask.sum() == 64
    assert back.arguments == request.arguments

    result = TaskResult(volumes={"entropy": image.with_array(image.array * 2)}, data={"x": [1, 2], "nan": math.nan})
    with pytest.raises(InputError, match="without writing"):
        tasks.readResult(tmp_path)
    tasks.writeResult(result, tmp_path)
    again = tasks.readResult(tmp_path)
    np.testing.assert_array_equal(again.volumes["entropy"].array, image.array * 2)
    assert again.data == {"x": [1, 2], "nan": None}


def test_run_mode_and_cli_expressibility():
    assert tasks.chooseTaskRunMode("auto", TaskKind.boundaryUncertainty, 1000) == "inProcess"
    assert tasks.chooseTaskRunMode("auto", TaskKind.boundaryUncertainty, 2**23) == "subprocess"
    assert tasks.chooseTaskRunMode("auto", TaskKind.counterfactual, 10) == "subprocess"
    assert tasks.chooseTaskRunMode("inProcess", TaskKind.counterfactual, 10) == "inProcess"
    with pytest.raises(ValueError):
        tasks.chooseTaskRunMode("sometimes", TaskKind.evaluate, 10)
    assert tasks.cliCanExpress(Target(class_index=1, region="box", box=(0, 0, 0, 2, 2, 2), score="probability"))
    assert tasks.cliCanExpress(Target(class_index=1, region="boundary", band_mm=(1.0, 2.0), score="margin"))
    mask = np.zeros((4, 4, 4), bool)
    mask[1:3, 1:3, 1:3] = True
    assert not tasks.cliCanExpress(Target(class_index=1, region="boundary", mask=mask))


# ------------------------------------------------------------------------------------------------
# The in-process runner


def test_task_runner_reports_progress_result_error_and_cancel(image):
    events = []
    request = TaskRequest(kind="evaluate", image=image, modelPath="x")

    def work(request, monitor):
        for i in range(3):
            monitor.update(i / 3, f"step {i}")
        return TaskResult(data={"ok": True})

    outcomes = []
    tasks.TaskRunner(processEvents=lambda: events.append("events"), run=work).start(
        request, lambda f, m, s: events.append((round(f, 3), m)), outcomes.append)
    assert outcomes[0].result.data == {"ok": True} and outcomes[0].error is None and not outcomes[0].cancelled
    assert (0.0, "step 0") in events and "events" in events

    def fail(request, monitor):
        raise TargetError("class 9 is out of range")

    tasks.TaskRunner(processEvents=lambda: None, run=fail).start(request, lambda *a: None, outcomes.append)
    assert isinstance(outcomes[1].error, TargetError) and outcomes[1].result is None

    runner = tasks.TaskRunner(processEvents=lambda: runner.cancel(), run=work)  # Cancel clicked at once
    runner.start(request, lambda *a: None, outcomes.append)
    assert outcomes[2].cancelled and outcomes[2].result is None and not runner.running


def test_uncertainty_task_equals_the_library(segmenter, image):
    from MedXAILib.analysis.boundary import boundary_uncertainty
    from MedXAILib.model import load_model

    request = TaskRequest(kind=TaskKind.boundaryUncertainty, image=image, modelPath=str(segmenter), device="cpu",
                          seed=4, arguments={"class_index": 1, "flips": True, "n_dropout": 2})
    messages = []
    result = tasks.runTask(request, Monitor(lambda f, m: messages.append(m)))
    reference = boundary_uncertainty(image, load_model(segmenter, device="cpu"), 1, flips=True, n_dropout=2, seed=4)
    assert set(result.volumes) == {"probability", "entropy", "variance"}
    for name, volume in reference.items():
        np.testing.assert_allclose(result.volumes[name].array, volume.array, rtol=1e-6, atol=1e-7)
    assert float(result.volumes["variance"].array.max()) > 0  # dropout and flips disagree somewhere
    assert messages[0] == "Loading the model" and messages[-1] == "Done"


def test_cancel_stops_an_analysis_in_process(segmenter, image):
    request = TaskRequest(kind=TaskKind.boundaryUncertainty, image=image, modelPath=str(segmenter), device="cpu",
                          arguments={"class_index": 1, "flips": True, "n_dropout": 0})
    monitor = Monitor(lambda f, m: monitor.cancel() if "flip" in m else None)
    with pytest.raises(Cancelled):
        tasks.runTask(request, monitor)


def test_counterfactual_task_equals_the_library_and_is_json(segmenter, image):
    import json

    from MedXAILib.counterfactual import Goal, generate_counterfactual
    from MedXAILib.model import load_model

    arguments = {"goal": {"kind": "class_probability", "class_index": 1, "target_probability": 0.9},
                 "generator": "gradient_search", "params": {"max_steps": 3}, "bounds": [-5.0, 5.0]}
    request = TaskRequest(kind=TaskKind.counterfactual, image=image, modelPath=str(segmenter), device="cpu", seed=1,
                          arguments=arguments, arrays={"region": structure()})
    result = tasks.runTask(request)
    reference = generate_counterfactual(image, load_model(segmenter, device="cpu"), Goal(**arguments["goal"]),
                                        "gradient_search", region=structure(), params={"max_steps": 3},
                                        bounds=(-5.0, 5.0), seed=1)
    np.testing.assert_allclose(result.volumes["counterfactual"].array, reference.volume.array, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.volumes["difference"].array, reference.difference.array, rtol=1e-6, atol=1e-6)
    assert "label_map" in reference.before and "label_map" not in result.data["before"]
    assert result.data["before"]["volumes_ml"] == reference.before["volumes_ml"]
    assert result.data["provenance"]["parameters"]["max_steps"] == 3
    json.dumps(result.data, allow_nan=False)  # the worker writes it as strict JSON


def test_compare_task_equals_the_library(image, tmp_path):
    from monai.networks.nets import Classifier

    from MedXAILib.evaluation import compare_methods
    from MedXAILib.model import load_model

    torch.manual_seed(0)
    args = {"in_shape": [1, *SHAPE], "classes": 2, "channels": [4, 8], "strides": [2, 2]}
    spec = save_spec_model(Classifier(**args), "Classifier", args, tmp_path / "classifier.json",
                           task="classification", class_names=["normal", "lesion"], in_channels=1)
    arguments = {"methods": ["saliency", "input_x_gradient"], "metrics": ["sparseness", "entropy"],
                 "method_params": {"saliency": {"absolute": True}}}
    request = TaskRequest(kind=TaskKind.compareMethods, image=image, modelPath=str(spec), device="cpu",
                          arguments=arguments, target=Target(class_index=1))
    result = tasks.runTask(request)
    reference = compare_methods(image, load_model(spec, device="cpu"), arguments["methods"], Target(class_index=1),
                                metrics=arguments["metrics"], method_params=arguments["method_params"])
    assert result.data["table"]["method"] == ["saliency", "input_x_gradient"]
    np.testing.assert_allclose(result.data["table"]["sparseness"], reference.table["sparseness"], rtol=1e-6)
    assert result.data["info"]["method_parameters"]["saliency"]["absolute"] is True


# ------------------------------------------------------------------------------------------------
# The worker process


def _runJob(request, tmp_path):
    job = tasks.TaskJob(request, tempRoot=str(tmp_path))
    job.start()
    folder = job.folder
    outcome = job.wait(timeout=300)
    assert not folder.exists(), "the temporary folder must be removed"
    return job, outcome


def test_worker_explains_a_boundary_margin_target_as_in_process(segmenter, image, tmp_path):
    from MedXAILib.engine import explain
    from MedXAILib.model import load_model

    target = Target(class_index=1, region="boundary", score="margin", mask=structure(), band_mm=(1.0, 2.0))
    request = TaskRequest(kind=TaskKind.explain, image=image, modelPath=str(segmenter), device="cpu", seed=2,
                          arguments={"method": "saliency", "params": {}}, target=target)
    job, outcome = _runJob(request, tmp_path)
    assert outcome.error is None, outcome.log
    attribution = tasks.attributionFromResult(outcome.result)
    reference = explain(image, load_model(segmenter, device="cpu"), "saliency", target, {}, seed=2)
    np.testing.assert_allclose(attribution.array, reference.array, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(attribution.affine, image.affine)
    assert attribution.provenance["target"]["region"] == "boundary"
    assert attribution.provenance["target"]["band_mm"] == [1.0, 2.0]
    assert job.fraction == 1.0  # progress lines were read


def test_worker_reports_bad_input_in_one_line(segmenter, image, tmp_path):
    request = TaskRequest(kind=TaskKind.boundaryUncertainty, image=image, modelPath=str(segmenter), device="cpu",
                          arguments={"class_index": 7})
    job, outcome = _runJob(request, tmp_path)
    assert isinstance(outcome.error, tasks.TaskProcessError) and outcome.error.returnCode == process.EXIT_BAD_INPUT
    assert "out of range" in str(outcome.error) and "\n" not in str(outcome.error)


@pytest.mark.slow
def test_cancel_kills_the_worker_and_removes_its_folder(segmenter, tmp_path):
    big = ImageVolume(np.random.default_rng(0).normal(size=(1, 48, 48, 40)).astype(np.float32), np.eye(4))
    request = TaskRequest(kind=TaskKind.boundaryUncertainty, image=big, modelPath=str(segmenter), device="cpu",
                          arguments={"class_index": 1, "flips": True, "n_dropout": 200})
    pending, outcomes, progress = [], [], []
    runner = tasks.SubprocessTaskRunner(scheduler=lambda ms, callback: pending.append(callback), pollIntervalMs=10)
    runner.start(request, lambda f, m, s: progress.append(m), outcomes.append)
    folder = runner.job.folder
    pid = runner.job._process.pid
    import time

    deadline = time.monotonic() + 120
    while pending and not any("Uncertainty" in m for m in progress) and time.monotonic() < deadline:
        time.sleep(0.05)
        pending.pop(0)()
    runner.cancel()
    assert outcomes and outcomes[0].cancelled and not runner.running
    assert not folder.exists() and not process.isProcessAlive(pid)
