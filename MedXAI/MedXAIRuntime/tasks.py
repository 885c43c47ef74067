"""Model-based analyses other than ``explain`` (boundary uncertainty, evaluation, counterfactuals), without Qt.

The Boundary, Evaluate and Counterfactual panels run library functions that need the model:
:func:`MedXAILib.boundary.boundary_uncertainty`, :func:`MedXAILib.evaluation.evaluate`,
:func:`MedXAILib.evaluation.compare_methods` and :func:`MedXAILib.counterfactual.generate_counterfactual`
(:class:`TaskKind`). A fifth kind, ``explain``, runs :func:`MedXAILib.explain` in the background for
targets that ``medxai explain``'s options cannot express (boundary bands, the ``margin`` score;
:func:`cliCanExpress`): the worker receives the :class:`~MedXAILib.target.Target` itself.
They run like an explanation (:mod:`MedXAIRuntime.runners`), with the same interface::

    runner.start(request, onProgress, onFinished)   # onProgress(fraction, message, elapsedSeconds)
    runner.cancel()                                 # onFinished(TaskOutcome) is still called once
    runner.running

- :class:`TaskRequest`: the kind of analysis, the input already converted from MRML by the Bridge
  (an :class:`~MedXAILib.volume.ImageVolume`), the model, and the analysis' arguments (JSON values
  plus arrays on the image grid: masks, attribution maps).
- :func:`runTask`: the analysis in this interpreter with a :class:`~MedXAILib.monitor.Monitor`;
  the model is loaded through :func:`MedXAIRuntime.jobs.loadModelCached`, so an explanation and an
  analysis of the same model share one loaded copy.
- :class:`TaskRunner` (in process, main thread, events processed at every progress update) and
  :class:`SubprocessTaskRunner` (``python -m MedXAIRuntime.taskWorker`` through :class:`TaskJob`,
  polled without blocking; Cancel kills the process tree): the explanation runners of
  :mod:`MedXAIRuntime.runners` and the job lifecycle of :class:`~MedXAIRuntime.jobs.BackgroundJob`,
  with this module's computation, request files and outcome. The worker speaks the CLI's protocol:
  ``--progress-json`` lines on stdout, ``medxai: error: <reason>`` and exit code 2 for bad input,
  130 when cancelled.

Every result comes back as a :class:`TaskResult` (named volumes on the input grid plus JSON data),
whichever way it ran, so the panels have one code path for showing it. Nothing here imports qt,
slicer, torch or MONAI at module level (Slicer loads this file at start-up).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from MedXAILib.errors import InputError
from MedXAILib.monitor import Monitor
from MedXAILib.target import Target
from MedXAILib.volume import ImageVolume

from . import process, runners
from .jobs import BackgroundJob, BackgroundProcessError, Outcome, loadModelCached

__all__ = [
    "TaskKind",
    "TaskRequest",
    "TaskResult",
    "TaskOutcome",
    "TaskProcessError",
    "TASK_FUNCTIONS",
    "LIGHT_TASKS",
    "chooseTaskRunMode",
    "cliCanExpress",
    "explainAsTask",
    "attributionFromResult",
    "runTask",
    "jsonSafe",
    "targetToJson",
    "targetFromJson",
    "writeRequest",
    "readRequest",
    "writeResult",
    "readResult",
    "runtimeRoot",
    "taskCommand",
    "TaskJob",
    "TaskRunner",
    "SubprocessTaskRunner",
]


class TaskKind(str, enum.Enum):
    """The analyses a :class:`TaskRequest` can ask for (the value is what the worker reads)."""

    explain = "explain"
    boundaryUncertainty = "boundary_uncertainty"
    evaluate = "evaluate"
    compareMethods = "compare_methods"
    counterfactual = "counterfactual"


# Uncertainty is a handful of forward passes (flips, dropout samples); the others explain many times
# or optimise, so ``auto`` runs them in the background where Cancel is immediate.
LIGHT_TASKS = (TaskKind.boundaryUncertainty,)


@dataclass
class TaskRequest:
    """One analysis to run on one input with one model.

    Attributes:
        kind: which analysis (:class:`TaskKind`).
        image: the input, one channel per input volume, on the first volume's grid.
        modelPath: TorchScript file, exported program, MONAI bundle folder or model spec JSON.
        arguments: the analysis' keyword arguments that are plain JSON values, by kind:
            ``explain``: method, params; ``boundary_uncertainty``: class_index, flips, n_dropout;
            ``evaluate``: metrics, metric_params, method, method_params, provenance;
            ``compare_methods``: methods, metrics, method_params, metric_params;
            ``counterfactual``: goal (Goal's fields), generator, params, bounds.
        arrays: arguments that are arrays on the image grid: ``mask`` (bool, (I, J, K)),
            ``attribution`` ((C, I, J, K) or (I, J, K)), ``region`` (bool, (I, J, K)).
        target: what is explained (evaluation).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds every random draw.
        trustBundle: let a MONAI bundle's config run code.
    """

    kind: TaskKind
    image: ImageVolume
    modelPath: str
    arguments: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    target: Optional[Target] = None
    device: str = "auto"
    seed: int = 0
    trustBundle: bool = False

    def __post_init__(self) -> None:
        self.kind = TaskKind(self.kind)

    @property
    def voxelCount(self) -> int:
        i, j, k = self.image.shape
        return int(i) * int(j) * int(k) * self.image.n_channels


@dataclass
class TaskResult:
    """What an analysis produced: volumes on the input grid and JSON-able data (tables, metrics)."""

    volumes: dict[str, ImageVolume] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


class TaskOutcome(Outcome):
    """How an analysis ended; its `result` is a :class:`TaskResult`."""


class TaskProcessError(BackgroundProcessError):
    """The analysis subprocess failed; the message is its own one-line reason."""


def chooseTaskRunMode(mode: Any, kind: TaskKind, voxelCount: int) -> str:
    """``inProcess`` or ``subprocess`` for `mode` (a :class:`~MedXAIRuntime.runners.RunMode` or its value).

    ``auto`` runs light analyses (:data:`LIGHT_TASKS` on volumes up to
    :data:`~MedXAIRuntime.runners.LIGHT_VOXELS`) in Slicer and everything else in a background process.
    """
    return runners.resolveRunMode(mode, TaskKind(kind) in LIGHT_TASKS and voxelCount <= runners.LIGHT_VOXELS)


def cliCanExpress(target: Optional[Target]) -> bool:
    """Whether ``medxai explain``'s target options (:func:`MedXAIRuntime.process.targetArguments`) express `target` exactly.

    A boundary band around a user mask has no such option, so an explanation of it runs in the
    background through the task worker instead (:func:`explainAsTask`), which passes the
    :class:`Target` itself.
    """
    if target is None:
        return True
    try:
        process.targetArguments(target, maskPath="mask.nrrd")
    except ValueError:
        return False
    return True


def explainAsTask(request: Any) -> TaskRequest:
    """An :class:`~MedXAIRuntime.jobs.ExplainRequest` as a :class:`TaskRequest` for the worker."""
    return TaskRequest(kind=TaskKind.explain, image=request.image, modelPath=request.modelPath,
                       arguments={"method": request.method, "params": dict(request.params or {})},
                       target=request.target, device=request.device, seed=request.seed,
                       trustBundle=request.trustBundle)


def attributionFromResult(result: TaskResult) -> Any:
    """The :class:`~MedXAILib.attribution.Attribution` of an ``explain`` task's result."""
    from MedXAILib.attribution import Attribution

    volume = result.volumes["attribution"]
    return Attribution(array=volume.array, affine=volume.affine, provenance=dict(result.data.get("provenance") or {}))


# ------------------------------------------------------------------------------------------------
# The analyses (each imports its library module when it runs: torch and MONAI are heavy)


def _explain(request: TaskRequest, model: Any, monitor: Monitor) -> TaskResult:
    from MedXAILib.engine import explain

    args = request.arguments
    attribution = explain(request.image, model, args["method"], request.target, args.get("params") or {},
                          monitor=monitor, seed=request.seed)
    return TaskResult(volumes={"attribution": ImageVolume(attribution.array, attribution.affine)},
                      data={"provenance": jsonSafe(attribution.provenance)})


def _volumeOf(request: TaskRequest, array: np.ndarray) -> ImageVolume:
    return request.image.with_array(np.asarray(array, dtype=np.float32))


def _boundaryUncertainty(request: TaskRequest, model: Any, monitor: Monitor) -> TaskResult:
    from MedXAILib.analysis.boundary import boundary_uncertainty

    args = request.arguments
    maps = boundary_uncertainty(
        request.image, model, int(args["class_index"]), flips=bool(args.get("flips", True)),
        n_dropout=int(args.get("n_dropout", 0)), monitor=monitor, seed=request.seed,
    )
    return TaskResult(volumes={name: volume for name, volume in maps.items()},
                      data={"class_index": int(args["class_index"]), "maps": sorted(maps)})


def _attributionVolume(request: TaskRequest) -> Any:
    """The attribution argument as the library's :class:`~MedXAILib.attribution.Attribution`."""
    from MedXAILib.attribution import Attribution

    array = np.asarray(request.arrays["attribution"], dtype=np.float32)
    if array.ndim == 3:
        array = array[np.newaxis]
    return Attribution(array=array, affine=request.image.affine.copy(),
                       provenance=dict(request.arguments.get("provenance") or {}))


def _evaluate(request: TaskRequest, model: Any, monitor: Monitor) -> TaskResult:
    from MedXAILib.evaluation import evaluate

    args = request.arguments
    if "attribution" not in request.arrays:
        raise InputError("select the attribution result to evaluate")
    scores = evaluate(
        request.image, model, _attributionVolume(request), request.target, metrics=args.get("metrics") or None,
        mask=request.arrays.get("mask"), method=args.get("method") or None, params=args.get("metric_params") or None,
        monitor=monitor, seed=request.seed, method_params=args.get("method_params"),
    )
    return TaskResult(data={"scores": jsonSafe(scores)})


def _compareMethods(request: TaskRequest, model: Any, monitor: Monitor) -> TaskResult:
    from MedXAILib.evaluation import compare_methods

    args = request.arguments
    comparison = compare_methods(
        request.image, model, list(args["methods"]), request.target, metrics=args.get("metrics") or None,
        mask=request.arrays.get("mask"), method_params=args.get("method_params") or None, monitor=monitor,
        seed=request.seed, metric_params=args.get("metric_params") or None,
    )
    # everything but the maps (table, ranking, curves, per-metric results, info), JSON-ready
    return TaskResult(data=jsonSafe(comparison.to_dict()))


def _counterfactual(request: TaskRequest, model: Any, monitor: Monitor) -> TaskResult:
    from MedXAILib.counterfactual import Goal, generate_counterfactual

    args = request.arguments
    goal = Goal(**dict(args["goal"]))
    bounds = args.get("bounds")
    result = generate_counterfactual(
        request.image, model, goal, generator=args.get("generator", "gradient_search"),
        region=request.arrays.get("region"), params=args.get("params") or None,
        bounds=tuple(bounds) if bounds is not None else None, monitor=monitor, seed=request.seed,
    )
    # the predicted label maps (segmenters) stay out: (I, J, K) arrays would swell the JSON
    data = {name: jsonSafe({k: v for k, v in (getattr(result, name) or {}).items() if k != "label_map"})
            for name in ("before", "after", "metrics", "provenance")}
    return TaskResult(volumes={"counterfactual": result.volume, "difference": result.difference}, data=data)


#: kind -> the function that runs it: ``(request, model, monitor) -> TaskResult``.
TASK_FUNCTIONS: dict[TaskKind, Callable[[TaskRequest, Any, Monitor], TaskResult]] = {
    TaskKind.explain: _explain,
    TaskKind.boundaryUncertainty: _boundaryUncertainty,
    TaskKind.evaluate: _evaluate,
    TaskKind.compareMethods: _compareMethods,
    TaskKind.counterfactual: _counterfactual,
}


def runTask(request: TaskRequest, monitor: Optional[Monitor] = None) -> TaskResult:
    """Run `request` in this interpreter; MedXAILib errors and :class:`~MedXAILib.errors.Cancelled` rise."""
    monitor = monitor or Monitor()
    monitor.update(0.0, "Loading the model")
    model = loadModelCached(request)  # reads modelPath, device and trustBundle only
    with monitor.stage(0.02, 1.0):
        result = TASK_FUNCTIONS[request.kind](request, model, monitor)
    monitor.update(1.0, "Done")
    return result


# ------------------------------------------------------------------------------------------------
# Serialisation (the worker and the parent exchange files in a temporary folder)


def jsonSafe(value: Any) -> Any:
    """`value` with numpy scalars and arrays, tuples, paths, dataclasses and enums made JSON-able.

    Non-finite floats become None (JSON has no NaN); mapping keys become strings.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonSafe({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, enum.Enum):
        return jsonSafe(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonSafe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonSafe(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonSafe(value.tolist())
    if isinstance(value, np.generic):
        return jsonSafe(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, ImageVolume):
        return {"shape": list(value.shape), "channels": value.n_channels}
    return str(value)


def targetToJson(target: Optional[Target]) -> tuple[Optional[dict[str, Any]], dict[str, np.ndarray]]:
    """A :class:`Target` as JSON fields plus its array fields (the mask) kept apart."""
    if target is None:
        return None, {}
    fields, arrays = {}, {}
    for f in dataclasses.fields(target):
        value = getattr(target, f.name)
        if isinstance(value, np.ndarray):
            arrays[f"target.{f.name}"] = value
        else:
            fields[f.name] = jsonSafe(value)
    return fields, arrays


def targetFromJson(fields: Optional[Mapping[str, Any]], arrays: Mapping[str, np.ndarray]) -> Optional[Target]:
    """The inverse of :func:`targetToJson` (lists become tuples: boxes, voxels, bands)."""
    if fields is None:
        return None
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    for key, array in arrays.items():
        if key.startswith("target."):
            values[key[len("target."):]] = array
    return Target(**values)


def _saveArrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as stream:
        np.savez(stream, **{k: np.asarray(v) for k, v in arrays.items()})


def _loadArrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def writeRequest(request: TaskRequest, folder: Path) -> None:
    """Write `request` into `folder` (``request.json`` and ``arrays.npz``) for the worker."""
    folder = Path(folder)
    target, targetArrays = targetToJson(request.target)
    spec = {
        "kind": request.kind.value, "modelPath": str(request.modelPath), "arguments": jsonSafe(request.arguments),
        "target": target, "device": request.device, "seed": int(request.seed), "trustBundle": bool(request.trustBundle),
        "channelNames": list(request.image.channel_names),
    }
    arrays = {"image": request.image.array, "affine": request.image.affine, **targetArrays}
    arrays.update({f"arg.{k}": v for k, v in request.arrays.items()})
    _saveArrays(folder / "arrays.npz", arrays)
    (folder / "request.json").write_text(json.dumps(spec), encoding="utf-8")


def readRequest(folder: Path) -> TaskRequest:
    """The request written by :func:`writeRequest`."""
    folder = Path(folder)
    spec = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    arrays = _loadArrays(folder / "arrays.npz")
    image = ImageVolume(arrays.pop("image"), arrays.pop("affine"), channel_names=spec.get("channelNames") or [])
    return TaskRequest(
        kind=TaskKind(spec["kind"]), image=image, modelPath=spec["modelPath"], arguments=spec.get("arguments") or {},
        arrays={k[len("arg."):]: v for k, v in arrays.items() if k.startswith("arg.")},
        target=targetFromJson(spec.get("target"), arrays), device=spec.get("device", "auto"),
        seed=int(spec.get("seed", 0)), trustBundle=bool(spec.get("trustBundle", False)),
    )


def writeResult(result: TaskResult, folder: Path) -> list[Path]:
    """Write `result` into `folder`: ``result.npz`` (volumes) first, ``result.json`` last (its presence marks completion)."""
    folder = Path(folder)
    arrays = {}
    for name, volume in result.volumes.items():
        arrays[f"{name}.array"] = volume.array
        arrays[f"{name}.affine"] = volume.affine
    paths = []
    if arrays:
        _saveArrays(folder / "result.npz", arrays)
        paths.append(folder / "result.npz")
    spec = {"data": jsonSafe(result.data), "volumes": list(result.volumes)}
    partial = folder / "result.json.part"
    partial.write_text(json.dumps(spec), encoding="utf-8")
    partial.replace(folder / "result.json")
    return paths + [folder / "result.json"]


def readResult(folder: Path) -> TaskResult:
    """The result written by :func:`writeResult`.

    Raises:
        InputError: the worker ended without writing a complete result.
    """
    folder = Path(folder)
    if not (folder / "result.json").is_file():
        raise InputError("the analysis process ended without writing its result")
    spec = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    volumes = {}
    if spec.get("volumes"):
        arrays = _loadArrays(folder / "result.npz")
        for name in spec["volumes"]:
            volumes[name] = ImageVolume(arrays[f"{name}.array"], arrays[f"{name}.affine"])
    return TaskResult(volumes=volumes, data=spec.get("data") or {})


# ------------------------------------------------------------------------------------------------
# The subprocess


def runtimeRoot() -> Path:
    """The folder holding the ``MedXAIRuntime`` package (``qt-scripted-modules`` in Slicer)."""
    return Path(__file__).resolve().parent.parent


def taskCommand(python: str, folder: Path) -> list[str]:
    """``python -m MedXAIRuntime.taskWorker FOLDER`` (the worker writes progress as JSON lines)."""
    return [str(python), "-m", "MedXAIRuntime.taskWorker", str(folder)]


class TaskJob(BackgroundJob):
    """``python -m MedXAIRuntime.taskWorker`` for one :class:`TaskRequest`, polled without blocking."""

    what = "analysis"
    tempPrefix = "MedXAI-task-"
    outcomeType = TaskOutcome
    errorType = TaskProcessError

    def _prepare(self, folder: Path) -> list[str]:
        writeRequest(self.request, folder)
        return taskCommand(self.python, folder)

    def _readResult(self) -> TaskResult:
        return readResult(self.folder)

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        extra = str(runtimeRoot())
        if extra != str(process.libraryRoot()):  # a source checkout: MedXAIRuntime in MedXAI/, MedXAILib beside
            env["PYTHONPATH"] = extra + os.pathsep + env["PYTHONPATH"]
        return env


# ------------------------------------------------------------------------------------------------
# Runners


class TaskRunner(runners.InProcessRunner):
    """Runs a request on the calling (main) thread; returns after `onFinished` was called.

    Application events are processed at every progress update, so Cancel can be clicked; the
    monitor raises :class:`~MedXAILib.errors.Cancelled` at the analysis' next update.
    """

    outcomeType = TaskOutcome
    what = "analysis"

    def __init__(self, processEvents: Optional[Callable[[], None]] = None,
                 run: Callable[[TaskRequest, Monitor], TaskResult] = runTask):
        super().__init__(processEvents, run)


class SubprocessTaskRunner(runners.SubprocessRunner):
    """Runs a request in ``python -m MedXAIRuntime.taskWorker`` and polls it without blocking."""

    jobType = TaskJob
