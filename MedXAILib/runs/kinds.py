"""Running a :class:`~MedXAILib.runs.request.RunRequest` in this interpreter.

:data:`RUN_FUNCTIONS` maps each :class:`~MedXAILib.runs.request.RunKind` to a function
``(request, model, monitor) -> RunResult`` that calls the library's public entry point, the one the
matching ``medxai`` subcommand calls:

================================  ========================================================  ==================
kind                              entry point                                               subcommand
================================  ========================================================  ==================
``explain``                       :func:`MedXAILib.engine.explain`                          ``medxai explain``
``boundary_uncertainty``          :func:`MedXAILib.analysis.boundary.boundary_uncertainty`  ``medxai boundary``
``evaluate``                      :func:`MedXAILib.evaluation.evaluate`                     ``medxai evaluate``
``compare_methods``               :func:`MedXAILib.evaluation.compare_methods`              ``medxai compare``
``counterfactual``                :func:`MedXAILib.counterfactual.generate_counterfactual`  ``medxai counterfactual``
``qa_case``                       :func:`MedXAILib.analysis.qa.qa_case`                     ``medxai cohort``
================================  ========================================================  ==================

:func:`run_request` loads the model through a one-model cache (:func:`load_model_cached`): the
Slicer module's in-process runs and a cohort worker running case after case load it once.
torch and MONAI are imported by the entry points, when a run starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..errors import InputError
from ..io.jsondata import json_safe
from ..monitor import Monitor
from .request import RunKind, RunRequest, RunResult, check_model_options

__all__ = ["RUN_FUNCTIONS", "RunFunction", "run_request", "load_model_cached", "clear_model_cache"]

RunFunction = Callable[[RunRequest, Any, Monitor], RunResult]

_model_cache: dict[tuple, Any] = {}


def load_model_cached(model_path: str, device: str = "auto", trust_bundle: bool = False,
                      model_options: Optional[Mapping[str, Any]] = None) -> Any:
    """:func:`MedXAILib.model.load_model`, reusing the last model when path, file time, device, trust and
    `model_options` (its keyword arguments, :data:`~MedXAILib.runs.request.MODEL_OPTIONS`) match.

    At most one model stays in memory: loading another one drops the previous.
    """
    from ..model import load_model

    options = check_model_options(model_options)
    path = Path(model_path)
    try:
        stamp: Optional[int] = path.stat().st_mtime_ns  # a retrained model file is loaded again
    except OSError:
        stamp = None
    key = (str(path.resolve()) if path.exists() else str(model_path), stamp, device, bool(trust_bundle),
           json.dumps(options, sort_keys=True))
    if key not in _model_cache:
        _model_cache.clear()
        source = path if path.exists() else model_path  # totalsegmentator:TASK is a name, not a path
        _model_cache[key] = load_model(source, trust_bundle=trust_bundle, device=device, **options)
    return _model_cache[key]


def clear_model_cache() -> None:
    """Forget the cached model (frees its memory)."""
    _model_cache.clear()


def _required(request: RunRequest, name: str) -> Any:
    if request.arguments.get(name) is None:
        raise InputError(f"a '{request.kind.value}' run needs the argument '{name}'")
    return request.arguments[name]


def _explain(request: RunRequest, model: Any, monitor: Monitor) -> RunResult:
    from ..engine import explain
    from ..volume import ImageVolume

    args = request.arguments
    attribution = explain(request.resolved_image(), model, _required(request, "method"), request.target,
                          args.get("params") or {}, monitor=monitor, seed=request.seed,
                          memory_budget=args.get("memory_budget"), mixed_precision=args.get("mixed_precision"))
    warnings = list((attribution.provenance.get("diagnostics") or {}).get("warnings") or [])
    return RunResult(volumes={"attribution": ImageVolume(attribution.array, attribution.affine)},
                     data={"provenance": json_safe(attribution.provenance)}, warnings=warnings)


def _boundary_uncertainty(request: RunRequest, model: Any, monitor: Monitor) -> RunResult:
    from ..analysis.boundary import boundary_uncertainty

    args = request.arguments
    class_index = int(_required(request, "class_index"))
    maps = boundary_uncertainty(request.resolved_image(), model, class_index, flips=bool(args.get("flips", True)),
                                n_dropout=int(args.get("n_dropout", 0)), monitor=monitor, seed=request.seed)
    return RunResult(volumes=dict(maps), data={"class_index": class_index, "maps": sorted(maps)})


def _attribution_argument(request: RunRequest, image: Any) -> Any:
    """``arrays["attribution"]`` as an :class:`~MedXAILib.attribution.Attribution` on the image grid."""
    from ..attribution import Attribution

    if "attribution" not in request.arrays:
        raise InputError("an 'evaluate' run needs the attribution to evaluate (arrays['attribution'])")
    array = np.asarray(request.arrays["attribution"], dtype=np.float32)
    if array.ndim == 3:
        array = array[np.newaxis]
    return Attribution(array=array, affine=image.affine.copy(),
                       provenance=dict(request.arguments.get("provenance") or {}))


def _evaluate(request: RunRequest, model: Any, monitor: Monitor) -> RunResult:
    from ..evaluation import evaluate

    args = request.arguments
    image = request.resolved_image()
    scores = evaluate(image, model, _attribution_argument(request, image), request.target,
                      metrics=args.get("metrics") or None, mask=request.arrays.get("mask"),
                      method=args.get("method") or None, params=args.get("metric_params") or None,
                      monitor=monitor, seed=request.seed, method_params=args.get("method_params"),
                      check_provenance=bool(args.get("check_provenance", True)))
    # what was graded (image, model, method, target), as `medxai evaluate --out` records it
    return RunResult(data={"scores": json_safe(dict(scores)), "graded": json_safe(scores.graded)})


def _compare_methods(request: RunRequest, model: Any, monitor: Monitor) -> RunResult:
    from ..evaluation import compare_methods

    args = request.arguments
    comparison = compare_methods(request.resolved_image(), model, list(_required(request, "methods")), request.target,
                                 metrics=args.get("metrics") or None, mask=request.arrays.get("mask"),
                                 method_params=args.get("method_params") or None, monitor=monitor,
                                 seed=request.seed, metric_params=args.get("metric_params") or None)
    # everything but the maps: table, ranking, curves, per-metric results, info
    return RunResult(data=comparison.to_dict())


def _counterfactual(request: RunRequest, model: Any, monitor: Monitor) -> RunResult:
    from ..counterfactual import Goal, generate_counterfactual

    args = request.arguments
    goal = Goal(**dict(_required(request, "goal")))
    bounds = args.get("bounds")
    result = generate_counterfactual(request.resolved_image(), model, goal,
                                     generator=args.get("generator") or "gradient_search",
                                     region=request.arrays.get("region"), params=args.get("params") or None,
                                     bounds=tuple(bounds) if bounds is not None else None, monitor=monitor,
                                     seed=request.seed)
    # the predicted label maps (segmenters) stay out: as (I, J, K) lists they would swell the JSON
    data = json_safe({"before": {k: v for k, v in result.before.items() if k != "label_map"},
                      "after": {k: v for k, v in result.after.items() if k != "label_map"},
                      "metrics": result.metrics, "provenance": result.provenance})
    return RunResult(volumes={"counterfactual": result.volume, "difference": result.difference}, data=data,
                     warnings=result.warnings)


def _qa_case(request: RunRequest, model: Any, monitor: Monitor) -> RunResult:
    from ..analysis.qa import QAOptions, qa_case
    from ..volume import ImageVolume

    args = request.arguments
    image = request.resolved_image()
    reference = request.arrays.get("reference")
    if reference is None and args.get("reference_file"):
        from ..io import read_label_map

        reference = read_label_map(args["reference_file"], reference=image).array[0]
    found = qa_case(image, model, args.get("structures") or "all", QAOptions.from_json(args.get("options")),
                    reference=reference, monitor=monitor, seed=request.seed)
    volumes = {"prediction": image.with_array(found.labels[np.newaxis].astype(np.float32), channel_names=["labels"],
                                              meta={}),
               "entropy": image.with_array(found.entropy[np.newaxis], channel_names=["entropy"], meta={})}
    provenance = {}
    for name, attribution in found.attributions.items():
        volumes[f"attribution.{name}"] = ImageVolume(attribution.summed[np.newaxis], attribution.affine)
        provenance[name] = attribution.provenance
    data = {"rows": json_safe(found.rows), "class_names": found.class_names, "ensemble": found.ensemble,
            "provenance": json_safe(provenance), "reference": reference is not None}
    return RunResult(volumes=volumes, data=data, warnings=found.warnings)


#: kind -> the function that runs it (a new kind adds a :class:`RunKind` member and a row here).
RUN_FUNCTIONS: dict[RunKind, RunFunction] = {
    RunKind.explain: _explain,
    RunKind.boundary_uncertainty: _boundary_uncertainty,
    RunKind.evaluate: _evaluate,
    RunKind.compare_methods: _compare_methods,
    RunKind.counterfactual: _counterfactual,
    RunKind.qa_case: _qa_case,
}


def run_request(request: RunRequest, monitor: Optional[Monitor] = None, model: Any = None) -> RunResult:
    """Run `request` in this interpreter.

    Args:
        request: the run.
        monitor: progress and cancel; the model's loading is the first 2 %.
        model: a loaded model to use instead of ``request.model_path`` (tests, a worker holding its own).

    Raises:
        MedXAIError: bad input (model, target, arguments); the run wrote nothing.
        Cancelled: the monitor was cancelled.
    """
    monitor = monitor or Monitor()
    monitor.update(0.0, "Loading the model")
    if model is None:
        model = load_model_cached(request.model_path, request.device, request.trust_bundle, request.model_options)
    with monitor.stage(0.02, 1.0):
        result = RUN_FUNCTIONS[request.kind](request, model, monitor)
    monitor.update(1.0, "Done")
    return result
