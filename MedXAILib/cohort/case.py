"""One cohort case, run and written: what a worker (a Ray actor or this process) does for each case.

:func:`process_case` runs the case's request (:func:`MedXAILib.runs.run_request`, kind ``qa_case``) with
the worker's model, writes every file into the staged case folder of its output guard part
(:meth:`MedXAILib.io.outputs.OutputSet.part`) and commits it with one rename::

    cases/<id>/request.json, arrays.npz    the case's run request (what ran)
    cases/<id>/result.json                 rows, provenance and the SHA-256 of every file below (written last)
    cases/<id>/prediction.seg.nrrd         the predicted segmentation (a Slicer segmentation file)
    cases/<id>/attribution_<structure>.nrrd  each structure's attribution, provenance in the header
    cases/<id>/entropy.nrrd                predictive entropy of the test-time ensemble
    cases/<id>/scene.mrb                   a Slicer scene: image, segmentation, entropy, attributions
    cases/<id>/thumbnails/<structure>.png  one axial slice per structure (with matplotlib)

Nothing in these files depends on the run (timestamps and durations are left out, the scene's zip
entries carry a fixed date), so 1 and 2 workers write the same bytes. A failed case (unreadable image,
wrong channels, a model error) becomes an outcome with its error and leaves no folder.
"""

from __future__ import annotations

import io
import math
import os
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..allocator import kept as allocator_kept
from ..errors import Cancelled, InputError
from ..io.outputs import OutputSet
from ..monitor import Monitor
from ..runs import RunRequest, RunResult, run_request, write_request, write_result
from .plan import VOLATILE_KEYS, case_complete, file_sha256, structure_file_stem

__all__ = ["process_case", "peak_rss_mb", "reset_peak_rss", "SEGMENT_COLOURS"]

#: Colours of the predicted segments by label (cycled); Slicer's default is one colour for all.
SEGMENT_COLOURS = ((0.89, 0.76, 0.62), (0.72, 0.33, 0.22), (0.55, 0.30, 0.62), (0.95, 0.80, 0.20),
                   (0.55, 0.75, 0.95), (0.98, 0.98, 0.86), (0.10, 0.95, 0.25), (0.95, 0.45, 0.70))
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def reset_peak_rss() -> None:
    """Start a new peak resident-set measurement of this process (Linux ``clear_refs``; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """This process's peak resident set since :func:`reset_peak_rss` (MB; Linux ``VmHWM``, else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _clean(provenance: Any) -> Any:
    if isinstance(provenance, dict):
        return {k: _clean(v) for k, v in provenance.items() if k not in VOLATILE_KEYS}
    if isinstance(provenance, list):
        return [_clean(v) for v in provenance]
    return provenance


def _fixed_dates(path: Path) -> None:
    """Rewrite a zip archive with a fixed date on every entry (the same bytes from every run)."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            fixed = zipfile.ZipInfo(info.filename, date_time=_ZIP_DATE)
            fixed.compress_type, fixed.external_attr = info.compress_type, 0o644 << 16
            archive.writestr(fixed, data)
    path.write_bytes(buffer.getvalue())


def _thumbnail(path: Path, ct: np.ndarray, relevance: np.ndarray, structure: np.ndarray, title: str) -> None:
    """One axial slice (the structure's middle slice): the image in grey, relevance in colour, the outline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = int(round(float(np.nonzero(structure.any(axis=(0, 1)))[0].mean()))) if structure.any() else ct.shape[2] // 2
    figure = Figure(figsize=(2.4, 2.6), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 0.88))
    low, high = np.percentile(ct, [1, 99])
    axes.imshow(np.rot90(ct[:, :, k]), cmap="gray", vmin=low, vmax=high)
    limit = float(np.percentile(np.abs(relevance), 99.5)) or 1.0
    shown = np.ma.masked_where(np.abs(relevance[:, :, k]) < 0.1 * limit, relevance[:, :, k])
    axes.imshow(np.rot90(shown), cmap="coolwarm", vmin=-limit, vmax=limit, alpha=0.8)
    if structure[:, :, k].any():
        axes.contour(np.rot90(structure[:, :, k].astype(float)), levels=[0.5], colors=["lime"], linewidths=0.8)
    axes.set_axis_off()
    figure.suptitle(title, fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    path.write_bytes(buffer.getvalue())


def _export(folder: Path, request: RunRequest, result: RunResult, image: Any) -> dict[str, Any]:
    """Write the case's files into `folder`; returns the result data with their checksums."""
    from ..attribution import PROVENANCE_KEY
    from ..io import to_json, write_image
    from ..report.mrb import SceneSegmentation, SceneVolume, write_mrb, write_seg_nrrd

    data = dict(result.data)
    data["provenance"] = _clean(data.get("provenance") or {})
    names = list(data.get("class_names") or [])
    labels = result.volumes["prediction"].array[0].astype(np.uint8)
    segments = [(k, names[k] if k < len(names) else f"label {k}", SEGMENT_COLOURS[(k - 1) % len(SEGMENT_COLOURS)])
                for k in range(1, int(labels.max()) + 1) if np.any(labels == k)]
    segmentation = SceneSegmentation("prediction", labels, image.affine, segments)
    write_seg_nrrd(folder / "prediction.seg.nrrd", segmentation)
    entropy = result.volumes["entropy"]
    write_image(entropy, folder / "entropy.nrrd", metadata={"MedXAI.Map": "entropy", "MedXAI.Unit": "nats"})
    rows = data.get("rows") or []
    ct = image.with_array(image.array[:1], channel_names=image.channel_names[:1], meta={})
    volumes = [SceneVolume("image", ct, tuple(float(v) for v in np.percentile(ct.array, [1, 99])))]
    volumes.append(SceneVolume("entropy", entropy, (0.0, float(max(entropy.array.max(), 1e-6)))))
    risky, risk = None, -math.inf
    thumbnails = folder / "thumbnails"
    for row in rows:
        name = row["structure"]
        key = f"attribution.{name}"
        if key not in result.volumes:
            continue
        volume = result.volumes[key]
        provenance = to_json(data["provenance"].get(name, {}), indent=None, sort_keys=True)
        file = f"attribution_{structure_file_stem(name)}.nrrd"
        write_image(volume, folder / file, metadata={PROVENANCE_KEY: provenance, "MedXAI.Structure": name})
        limit = float(np.percentile(np.abs(volume.array), 99.9)) or float(np.abs(volume.array).max()) or 1.0
        volumes.append(SceneVolume(f"attribution {name}", volume, (-limit, limit), "diverging",
                                   {"MedXAI.Result": "attribution", "MedXAI.Structure": name}))
        score = row.get(data.get("default_score") or "", math.nan)
        if isinstance(score, (int, float)) and math.isfinite(score) and score > risk:
            risky, risk = len(volumes) - 1, score
        try:
            thumbnails.mkdir(exist_ok=True)
            _thumbnail(thumbnails / f"{structure_file_stem(name)}.png", ct.array[0], volume.array[0], labels == row["label"],
                       f"{request.arguments.get('case_id', '')}: {name}")
        except ImportError:  # matplotlib is optional: the report then shows no thumbnails
            pass
    focus = None
    if risky is not None:
        structure = labels == next(r["label"] for r in rows if f"attribution {r['structure']}" == volumes[risky].name)
        if structure.any():
            focus = (image.affine @ np.append(np.argwhere(structure).mean(axis=0), 1.0))[:3]
    write_mrb(folder / "scene.mrb", volumes, segmentation, 0, risky if risky is not None else None, 0.5, focus)
    _fixed_dates(folder / "scene.mrb")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    data["files"] = {p.relative_to(folder).as_posix(): file_sha256(p) for p in files}
    return data


def process_case(case_id: str, request: RunRequest, part: OutputSet, model: Any = None,
                 monitor: Optional[Monitor] = None, default_score: str = "") -> dict[str, Any]:
    """Run one case and commit its folder; never raises for a bad case.

    Args:
        case_id: the case.
        request: its ``qa_case`` request (:func:`MedXAILib.cohort.plan.case_request`).
        part: the output guard's part for the case folder (``cohort OUT``'s ``cases/<id>``).
        model: the worker's loaded model (None: loaded from the request, cached).
        monitor: progress and cancel.
        default_score: the score the scene focuses on (its riskiest structure).

    Returns:
        The outcome: ``case``, ``status`` (``done``, ``skipped`` when the folder was complete already,
        ``failed``), ``rows``, ``error``, ``warnings``, ``seconds``, ``cpu_seconds`` (of every thread),
        ``peak_rss_mb``, ``worker`` (process id), ``allocator`` (``keep`` where ``MEDXAI_ALLOCATOR=keep`` took
        effect in the worker's process, else ``system``: the memory and time figures depend on it).

    Raises:
        Cancelled, KeyboardInterrupt: the run was cancelled (nothing of this case is left behind).
    """
    started, cpu = time.perf_counter(), time.process_time()
    reset_peak_rss()
    final = part.outputs[0].path
    outcome: dict[str, Any] = {"case": case_id, "status": "done", "rows": [], "error": None, "warnings": [],
                               "worker": os.getpid()}
    try:
        if case_complete(final, request):  # a retried task whose first attempt committed before it died
            from ..runs import read_result

            outcome.update(status="skipped", rows=read_result(final).data.get("rows") or [])
            return outcome
        image = request.resolved_image()
        request = RunRequest(**{**request.__dict__, "image": image})  # read once, here
        result = run_request(request, monitor, model=model)
        result.data["default_score"] = default_score
        with part:
            staged = part.staged(final)
            data = _export(staged, request, result, image)
            stored = RunRequest(**{**request.__dict__, "image": None})  # the files, not a copy of the image
            write_request(stored, staged)
            write_result(RunResult(volumes={}, data=data, warnings=result.warnings), staged)
            part.commit()
        outcome.update(rows=data.get("rows") or [], warnings=list(result.warnings))
    except (Cancelled, KeyboardInterrupt):
        part.discard()
        raise
    except InputError as error:
        outcome.update(status="failed", error=str(error))
    except Exception as error:  # noqa: BLE001 - a model's own failure must not stop the cohort
        from ..errors import MedXAIError

        if isinstance(error, MedXAIError):
            outcome.update(status="failed", error=str(error))
        else:
            outcome.update(status="failed", error=f"internal error: {type(error).__name__}: {error}",
                           traceback=traceback.format_exc(limit=8))
    finally:
        part.discard()
        outcome["seconds"] = round(time.perf_counter() - started, 3)
        outcome["cpu_seconds"] = round(time.process_time() - cpu, 3)  # all threads of this process
        outcome["peak_rss_mb"] = round(peak_rss_mb(), 1)
        outcome["allocator"] = "keep" if allocator_kept() else "system"
    return outcome
