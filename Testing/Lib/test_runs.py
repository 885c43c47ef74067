"""MedXAILib.runs: one request type and one worker for every kind of run.

The library's entry points (the functions the ``medxai`` subcommands call) are called directly as the
independent reference: a run must give exactly what the library gives, in process and through the
worker process ``python -m MedXAILib.runs FOLDER``. The worker is run as a real process: its progress
lines, exit codes and signals are those a parent (Slicer, a cohort scheduler) sees.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from MedXAILib import ImageVolume, Target
from MedXAILib.errors import Cancelled, InputError, TargetError
from MedXAILib.io import write_image
from MedXAILib.model import load_model, save_spec_model
from MedXAILib.monitor import Monitor
from MedXAILib.runs import (
    EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_OK, RUN_FUNCTIONS, RunKind, RunRequest, RunResult, clear_model_cache,
    has_result, load_model_cached, read_request, read_result, run_folder, run_request, write_request, write_result,
)
from MedXAILib.runs.folder import REQUEST_ARRAYS, REQUEST_FILE, RESULT_ARRAYS, RESULT_FILE

from conftest import oblique_affine

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (12, 10, 8)
UNET_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
             "num_res_units": 1, "dropout": 0.2}
CLASSIFIER_ARGS = {"in_shape": [1, *SHAPE], "classes": 2, "channels": [4, 8], "strides": [2, 2]}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny UNet (with dropout) and a tiny classifier, saved as spec models."""
    from monai.networks.nets import Classifier, UNet

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    unet = save_spec_model(UNet(**UNET_ARGS), "UNet", UNET_ARGS, folder / "unet.json", task="segmentation",
                           class_names=["background", "organ", "lesion"], in_channels=1)
    torch.manual_seed(0)
    classifier = save_spec_model(Classifier(**CLASSIFIER_ARGS), "Classifier", CLASSIFIER_ARGS,
                                 folder / "classifier.json", task="classification", class_names=["normal", "lesion"],
                                 in_channels=1)
    return {"segmenter": unet, "classifier": classifier}


@pytest.fixture(scope="module")
def image() -> ImageVolume:
    rng = np.random.default_rng(3)
    array = rng.normal(size=SHAPE).astype(np.float32)
    array[3:9, 3:7, 2:6] += 2.0
    return ImageVolume(array[np.newaxis], oblique_affine((1.2, 0.9, 2.0), (-30.0, 12.5, 4.0), angle_deg=15),
                       channel_names=["CT"])


def structure() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[4:8, 3:7, 2:6] = True
    return mask


def boundary_target() -> Target:
    return Target(class_index=1, region="boundary", score="margin", mask=structure(), band_mm=(1.0, 2.0))


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name != "stderr.txt"}


# ------------------------------------------------------------------------------------------------
# Requests and results through a folder


@pytest.mark.parametrize("target", [
    Target(class_index=1, region="mask", mask=structure(), score="probability", reduction="mean"),
    boundary_target(),
    Target(class_index=0, region="box", box=(1, 2, 3, 4, 5, 6)),
    None,
], ids=["mask", "boundary", "box", "none"])
def test_request_round_trips_exactly_through_a_folder(tmp_path, image, target):
    request = RunRequest(kind="evaluate", image=image, model_path="/m/model.json", device="cpu", seed=7,
                         trust_bundle=True, target=target, model_options={"folds": (0, "all"), "mirroring": False},
                         arguments={"metrics": ["deletion"], "provenance": {"method": "saliency", "x": (1, 2)}},
                         arrays={"attribution": np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE),
                                 "mask": structure()})
    written = write_request(request, tmp_path)
    assert [p.name for p in written] == [REQUEST_ARRAYS, REQUEST_FILE]  # request.json last
    back = read_request(tmp_path)
    assert back.kind is RunKind.evaluate and back.model_path == "/m/model.json"
    assert (back.device, back.seed, back.trust_bundle) == ("cpu", 7, True)
    assert back.model_options == {"folds": [0, "all"], "mirroring": False}
    np.testing.assert_array_equal(back.image.array, image.array)
    np.testing.assert_array_equal(back.image.affine, image.affine)  # bit-exact: no image file format in between
    assert back.image.channel_names == ["CT"]
    np.testing.assert_array_equal(back.arrays["attribution"], request.arrays["attribution"])
    assert back.arrays["mask"].dtype == bool and back.arrays["mask"].sum() == 64
    assert back.arguments == {"metrics": ["deletion"], "provenance": {"method": "saliency", "x": [1, 2]}}
    if target is None:
        assert back.target is None
    else:
        for name in ("class_index", "region", "score", "reduction", "box", "voxel", "band_mm"):
            assert getattr(back.target, name) == getattr(target, name), name
        if target.mask is None:
            assert back.target.mask is None
        else:
            np.testing.assert_array_equal(back.target.mask, target.mask)
    assert "pickle" not in (tmp_path / REQUEST_FILE).read_text()  # plain JSON
    with np.load(tmp_path / REQUEST_ARRAYS, allow_pickle=False) as data:  # no object arrays
        assert set(data.files) >= {"image", "image.affine", "arg.attribution", "arg.mask"}


def test_result_round_trips_and_is_checked(tmp_path, image):
    with pytest.raises(InputError, match="without writing"):
        read_result(tmp_path)
    volume = ImageVolume(image.array * 2, image.affine, channel_names=["CT"], meta={"ensemble": {"members": 8}})
    result = RunResult(volumes={"entropy": volume}, data={"x": [1, 2], "nan": math.nan, "n": np.int64(3)},
                       warnings=["caveat"])
    written = write_result(result, tmp_path)
    assert [p.name for p in written] == [RESULT_ARRAYS, RESULT_FILE]
    back = read_result(tmp_path)
    np.testing.assert_array_equal(back.volumes["entropy"].array, image.array * 2)
    np.testing.assert_array_equal(back.volumes["entropy"].affine, image.affine)
    assert back.volumes["entropy"].meta == {"ensemble": {"members": 8}}
    assert back.volumes["entropy"].channel_names == ["CT"]
    assert back.data == {"x": [1, 2], "nan": None, "n": 3} and back.warnings == ["caveat"]
    assert has_result(tmp_path)

    damaged = bytearray((tmp_path / RESULT_ARRAYS).read_bytes())
    damaged[-100] ^= 0xFF
    (tmp_path / RESULT_ARRAYS).write_bytes(bytes(damaged))
    assert not has_result(tmp_path)
    with pytest.raises(InputError, match="checksum"):
        read_result(tmp_path)


def test_result_writing_leaves_nothing_when_it_fails(tmp_path, image):
    result = RunResult(volumes={"map": image}, data={"ok": True})
    with pytest.raises(InputError, match="JSON"):
        write_result(RunResult(volumes={"map": image}, data={"model": object()}), tmp_path)
    assert files_in(tmp_path) == set()  # refused before anything was written
    (tmp_path / RESULT_FILE).mkdir()  # result.json cannot be written after result.npz was
    with pytest.raises(InputError, match="folder"):
        write_result(result, tmp_path)
    assert files_in(tmp_path) == {RESULT_FILE}  # result.npz was removed again
    assert not has_result(tmp_path)


def test_request_validation(tmp_path, image):
    with pytest.raises(InputError, match="did you mean 'evaluate'"):
        RunRequest(kind="evalute", image=image, model_path="m")
    with pytest.raises(InputError, match="not the image grid"):
        RunRequest(kind="evaluate", image=image, model_path="m", arrays={"mask": np.ones((3, 3, 3), bool)})
    with pytest.raises(InputError, match="target mask"):
        RunRequest(kind="explain", image=image, model_path="m",
                   target=Target(class_index=1, region="mask", mask=np.ones((3, 3, 3), bool)))
    with pytest.raises(InputError, match="needs the input image"):
        RunRequest(kind="explain", image=None, model_path="m")
    with pytest.raises(InputError, match="unknown model option 'fold'; did you mean 'folds'"):
        RunRequest(kind="explain", image=image, model_path="m", model_options={"fold": [0]})
    with pytest.raises(InputError, match="model options must be JSON values"):
        RunRequest(kind="explain", image=image, model_path="m", model_options={"overlap": float("nan")})
    with pytest.raises(InputError, match="JSON"):
        write_request(RunRequest(kind="explain", image=image, model_path="m", arguments={"params": {"x": object()}}), tmp_path)
    assert files_in(tmp_path) == set()
    with pytest.raises(InputError, match="no run request"):
        read_request(tmp_path)
    assert set(RUN_FUNCTIONS) == set(RunKind)
    assert RunRequest(kind=RunKind.counterfactual, image=image, model_path="m").voxel_count == int(np.prod(SHAPE))


# ------------------------------------------------------------------------------------------------
# Each kind in process equals the library


def test_explain_run_equals_the_library_with_a_boundary_target(models, image):
    from MedXAILib.engine import explain

    request = RunRequest(kind="explain", image=image, model_path=str(models["segmenter"]), device="cpu", seed=2,
                         arguments={"method": "saliency", "params": {"absolute": False}}, target=boundary_target())
    messages = []
    result = run_request(request, Monitor(lambda f, m: messages.append((f, m))))
    reference = explain(image, load_model(models["segmenter"], device="cpu"), "saliency", boundary_target(),
                        {"absolute": False}, seed=2)
    attribution = result.attribution()
    np.testing.assert_allclose(attribution.array, reference.array, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(attribution.affine, image.affine)
    assert attribution.provenance["target"]["region"] == "boundary"
    assert attribution.provenance["target"]["band_mm"] == [1.0, 2.0]
    json.dumps(result.data, allow_nan=False)  # JSON as it is, in process too
    assert messages[0] == (0.0, "Loading the model") and messages[-1] == (1.0, "Done")
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions)


def test_boundary_uncertainty_run_equals_the_library(models, image):
    from MedXAILib.analysis.boundary import boundary_uncertainty

    request = RunRequest(kind="boundary_uncertainty", image=image, model_path=str(models["segmenter"]), device="cpu",
                         seed=4, arguments={"class_index": 1, "flips": True, "n_dropout": 2})
    result = run_request(request)
    reference = boundary_uncertainty(image, load_model(models["segmenter"], device="cpu"), 1, flips=True,
                                     n_dropout=2, seed=4)
    assert set(result.volumes) == {"probability", "entropy", "variance"} == set(result.data["maps"])
    for name, volume in reference.items():
        np.testing.assert_allclose(result.volumes[name].array, volume.array, rtol=1e-6, atol=1e-7)
    assert float(result.volumes["variance"].array.max()) > 0  # dropout and flips disagree somewhere
    assert result.volumes["entropy"].meta["ensemble"]["members"] == reference["entropy"].meta["ensemble"]["members"]


def test_evaluate_run_equals_the_library(models, image):
    from MedXAILib.attribution import Attribution
    from MedXAILib.evaluation import evaluate

    target = Target(class_index=1, region="mask", mask=structure())
    attribution = np.abs(image.array[0]) * structure()
    arguments = {"metrics": ["sparseness", "pointing_game"], "provenance": {"method": "saliency"}}
    request = RunRequest(kind="evaluate", image=image, model_path=str(models["segmenter"]), device="cpu",
                         arguments=arguments, arrays={"attribution": attribution, "mask": structure()}, target=target)
    result = run_request(request)
    reference = evaluate(image, load_model(models["segmenter"], device="cpu"),
                         Attribution(attribution[np.newaxis], image.affine, {"method": "saliency"}), target,
                         ["sparseness", "pointing_game"], mask=structure())
    assert set(result.data["scores"]) == {"sparseness", "pointing_game"}
    for name in reference:
        assert result.data["scores"][name]["value"] == pytest.approx(reference[name]["value"], rel=1e-6)
    with pytest.raises(InputError, match="attribution"):
        run_request(RunRequest(kind="evaluate", image=image, model_path=str(models["segmenter"]), device="cpu"))


def test_compare_methods_run_equals_the_library(models, image):
    from MedXAILib.evaluation import compare_methods

    arguments = {"methods": ["saliency", "input_x_gradient"], "metrics": ["sparseness", "entropy"],
                 "method_params": {"saliency": {"absolute": True}}}
    request = RunRequest(kind="compare_methods", image=image, model_path=str(models["classifier"]), device="cpu",
                         arguments=arguments, target=Target(class_index=1))
    result = run_request(request)
    reference = compare_methods(image, load_model(models["classifier"], device="cpu"), arguments["methods"],
                                Target(class_index=1), metrics=arguments["metrics"],
                                method_params=arguments["method_params"])
    assert result.data["table"]["method"] == ["saliency", "input_x_gradient"]
    np.testing.assert_allclose(result.data["table"]["sparseness"], reference.table["sparseness"], rtol=1e-6)
    assert result.data["info"]["method_parameters"]["saliency"]["absolute"] is True


def test_counterfactual_run_equals_the_library(models, image):
    from MedXAILib.counterfactual import Goal, generate_counterfactual

    arguments = {"goal": {"kind": "class_probability", "class_index": 1, "target_probability": 0.9},
                 "generator": "gradient_search", "params": {"max_steps": 3}, "bounds": [-5.0, 5.0]}
    request = RunRequest(kind="counterfactual", image=image, model_path=str(models["segmenter"]), device="cpu",
                         seed=1, arguments=arguments, arrays={"region": structure()})
    result = run_request(request)
    reference = generate_counterfactual(image, load_model(models["segmenter"], device="cpu"),
                                        Goal(**arguments["goal"]), "gradient_search", region=structure(),
                                        params={"max_steps": 3}, bounds=(-5.0, 5.0), seed=1)
    np.testing.assert_allclose(result.volumes["counterfactual"].array, reference.volume.array, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.volumes["difference"].array, reference.difference.array, rtol=1e-6, atol=1e-6)
    assert "label_map" in reference.before and "label_map" not in result.data["before"]
    assert result.data["before"]["volumes_ml"] == reference.before["volumes_ml"]
    assert result.data["provenance"]["parameters"]["max_steps"] == 3
    assert result.warnings == reference.warnings
    json.dumps(result.data, allow_nan=False)  # the worker writes it as strict JSON


def test_a_run_can_read_its_image_files(models, tmp_path, image):
    """A cohort planner may name the image files instead of embedding the voxels; the worker reads them."""
    write_image(image, tmp_path / "ct.nrrd")
    inline = RunRequest(kind="explain", image=image, model_path=str(models["segmenter"]), device="cpu",
                        arguments={"method": "saliency"}, target=boundary_target())
    by_file = RunRequest(kind="explain", image=None, image_files=(str(tmp_path / "ct.nrrd"),),
                         model_path=str(models["segmenter"]), device="cpu", arguments={"method": "saliency"},
                         target=boundary_target())
    case = tmp_path / "case"
    case.mkdir()
    write_request(by_file, case)
    _, result = run_folder(case)
    np.testing.assert_allclose(result.attribution().array, run_request(inline).attribution().array,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.volumes["attribution"].affine, image.affine, atol=1e-5)
    assert has_result(case)


def test_cancel_stops_a_run_in_process(models, image):
    request = RunRequest(kind="boundary_uncertainty", image=image, model_path=str(models["segmenter"]),
                         device="cpu", arguments={"class_index": 1, "flips": True, "n_dropout": 0})
    monitor = Monitor(lambda f, m: monitor.cancel() if "flip" in m.lower() else None)
    with pytest.raises(Cancelled):
        run_request(request, monitor)


def test_every_model_option_is_a_load_model_argument():
    """A request's model options are handed to load_model as keywords: each name must be one of its parameters."""
    import inspect

    from MedXAILib.model import load_model
    from MedXAILib.runs.request import MODEL_OPTIONS

    parameters = inspect.signature(load_model).parameters
    assert set(MODEL_OPTIONS) <= set(parameters)
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in MODEL_OPTIONS)


def test_the_model_cache_keeps_one_model_and_reloads_a_changed_file(models):
    clear_model_cache()
    first = load_model_cached(str(models["segmenter"]), "cpu")
    assert load_model_cached(str(models["segmenter"]), "cpu") is first
    stat = models["segmenter"].stat()
    os.utime(models["segmenter"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was replaced
    assert load_model_cached(str(models["segmenter"]), "cpu") is not first
    again = load_model_cached(str(models["segmenter"]), "cpu")
    other = load_model_cached(str(models["segmenter"]), "cpu", model_options={"overlap": 0.5})
    assert other is not again and other.overlap == 0.5  # other options: another model
    assert load_model_cached(str(models["segmenter"]), "cpu", model_options={"overlap": 0.5}) is other


# ------------------------------------------------------------------------------------------------
# The worker process


def _folder(tmp_path: Path, request: RunRequest) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    write_request(request, folder)
    return folder


def _worker(folder: Path, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "MedXAILib.runs", str(folder), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_worker_writes_progress_lines_and_the_result(models, image, tmp_path):
    request = RunRequest(kind="explain", image=image, model_path=str(models["segmenter"]), device="cpu", seed=2,
                         arguments={"method": "saliency"}, target=boundary_target())
    folder = _folder(tmp_path, request)
    process = _worker(folder)
    out, err = process.communicate(timeout=300)
    assert process.returncode == EXIT_OK, err
    records = [json.loads(line) for line in out.splitlines()]  # every line is a protocol record
    progress = [r for r in records if "progress" in r]
    assert all(set(r) == {"progress", "message", "elapsed_s"} for r in progress)
    fractions = [r["progress"] for r in progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert records[-1] == {"done": True, "outputs": [str(folder / RESULT_ARRAYS), str(folder / RESULT_FILE)],
                           "warnings": []}
    result = read_result(folder)
    np.testing.assert_allclose(result.attribution().array, run_request(request).attribution().array,
                               rtol=1e-5, atol=1e-6)


def test_medxai_run_is_the_same_worker(models, image, tmp_path, capsys):
    from MedXAILib.cli.main import main

    request = RunRequest(kind="boundary_uncertainty", image=image, model_path=str(models["segmenter"]),
                         device="cpu", arguments={"class_index": 2, "flips": False})
    folder = _folder(tmp_path, request)
    assert main(["run", str(folder)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0])["message"] == "Loading the model"
    assert json.loads(lines[-1])["done"] is True
    assert read_result(folder).data == {"class_index": 2, "maps": ["entropy", "probability", "variance"]}


@pytest.mark.parametrize("case", ["class out of range", "no request", "no folder", "no argument"])
def test_worker_reports_bad_input_in_one_line_and_writes_nothing(models, image, tmp_path, case):
    folder = tmp_path / "run"
    args: list[str] = [str(folder)]
    if case == "class out of range":
        folder = _folder(tmp_path, RunRequest(kind="boundary_uncertainty", image=image, device="cpu",
                                              model_path=str(models["segmenter"]), arguments={"class_index": 7}))
    elif case == "no request":
        folder.mkdir()
    elif case == "no argument":
        args = []
    process = subprocess.run([sys.executable, "-m", "MedXAILib.runs", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert process.returncode == EXIT_BAD_INPUT
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("medxai: error: "), process.stderr
    expected = {"class out of range": "out of range", "no request": "no run request", "no folder": "not a folder",
                "no argument": "usage"}[case]
    assert expected in lines[0]
    if folder.is_dir():
        assert not {RESULT_FILE, RESULT_ARRAYS} & files_in(folder)


def _ignore_sigint() -> None:  # the state a child of a background shell starts in
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("sig, start", [(signal.SIGTERM, _default_sigint), (signal.SIGINT, _default_sigint),
                                        (signal.SIGINT, _ignore_sigint)],
                         ids=["SIGTERM", "SIGINT", "SIGINT-ignored-at-start"])
def test_worker_cancels_on_a_signal_and_writes_nothing(models, image, tmp_path, sig, start):
    big = ImageVolume(np.random.default_rng(0).normal(size=(1, 48, 48, 40)).astype(np.float32), np.eye(4))
    request = RunRequest(kind="boundary_uncertainty", image=big, model_path=str(models["segmenter"]), device="cpu",
                         arguments={"class_index": 1, "flips": True, "n_dropout": 200})  # minutes if not stopped
    folder = _folder(tmp_path, request)
    process = _worker(folder, preexec_fn=start)
    records = []
    deadline = time.monotonic() + 120
    for line in process.stdout:  # wait until the method is under way
        records.append(json.loads(line))
        if records[-1].get("progress", 0) > 0.05 or time.monotonic() > deadline:
            break
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == EXIT_CANCELLED, err
    assert "cancelled" in err and "Traceback" not in err
    assert not any(r.get("done") for r in records)
    assert files_in(folder) == {REQUEST_FILE, REQUEST_ARRAYS}  # no result, nothing half-written
    assert not any(p.name.endswith(".tmp") for p in folder.iterdir())


def test_a_failed_rerun_leaves_no_earlier_result(models, image, tmp_path):
    """The folder never shows a result that the last run did not make."""
    folder = _folder(tmp_path, RunRequest(kind="boundary_uncertainty", image=image, device="cpu",
                                          model_path=str(models["segmenter"]), arguments={"class_index": 1,
                                                                                          "flips": False}))
    run_folder(folder)
    assert has_result(folder)
    write_request(RunRequest(kind="boundary_uncertainty", image=image, device="cpu",
                             model_path=str(models["segmenter"]), arguments={"class_index": 9}), folder)
    with pytest.raises(TargetError):
        run_folder(folder)
    assert not has_result(folder) and not {RESULT_FILE, RESULT_ARRAYS} & files_in(folder)


def test_the_command_line_shares_the_protocol():
    from MedXAILib.cli import common, progress
    from MedXAILib.runs import protocol

    assert progress.json_lines is protocol.json_lines
    assert (common.EXIT_OK, common.EXIT_BAD_INPUT, common.EXIT_CANCELLED) == (0, 2, 130)
    assert (protocol.EXIT_OK, protocol.EXIT_BAD_INPUT, protocol.EXIT_CANCELLED) == (0, 2, 130)


def test_the_run_package_is_light_at_import():
    """Slicer's module imports it before torch exists, and a cohort planner writes requests without torch."""
    code = ("import sys, MedXAILib.runs, MedXAILib.runs.worker, MedXAILib.runs.__main__\n"
            "print(sorted(m for m in ('torch', 'monai', 'SimpleITK', 'scipy', 'captum') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
