"""Compare attribution methods on one image: explain with each, grade every map, rank the methods.

:func:`compare_methods` returns a :class:`ComparisonResult` whose ``table`` has one row per method
and one column per metric, ``curves`` the deletion/insertion (and ROAD) curves per method,
``ranking`` the methods ordered by their mean rank (:data:`RANKING_RULE`), and ``write(folder)``
saves it as CSV, JSON and PNG plots. Imports nothing heavy at module level.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError, ParameterError
from ..io import json_safe, write_atomic
from ..params import make_params
from .metrics import METRICS, check_mask, evaluate, parse_metric_params, resolve_metrics

if TYPE_CHECKING:  # pragma: no cover
    from ..attribution import Attribution
    from ..model import ModelAdapter
    from ..monitor import Monitor
    from ..target import Target
    from ..volume import ImageVolume

__all__ = ["RANKING_RULE", "SEPARATION_RULE", "SEPARATION_FRACTION", "ComparisonResult", "compare_methods",
           "rank_methods", "separation", "CURVE_METRICS"]

#: A metric separates the methods when their values spread over at least this fraction of the
#: largest distance of any of them from the metric's chance level (:func:`separation`).
SEPARATION_FRACTION = 0.05

SEPARATION_RULE = (
    "A metric separates the methods on this case when the spread of their values (largest minus smallest) "
    f"is at least {SEPARATION_FRACTION:.0%} of the largest distance of any value from the metric's chance "
    "level (the value of an uninformative map; 0 where none is defined). Otherwise all methods score about "
    "the same on it, whatever their maps show, and it does not rank them."
)

RANKING_RULE = (
    "For every metric with a better direction (the result's higher_is_better is true or false; the "
    "complexity metrics have none and are left out), the methods are ranked 1 (best) to n by value; "
    "equal values share the mean of the ranks they span, and undefined (NaN) values share the last "
    "ranks; a metric that does not separate the methods on this case (see the separation rule) gives "
    "them all the same rank. A method's score is the mean of its ranks over those metrics: lower is "
    "better. The ranking sorts by that score; equal scores keep the order in which the methods were given."
)

#: Metrics whose results carry a curve (``fractions``, ``curve``) that is plotted per method.
CURVE_METRICS = ("deletion", "insertion", "road")


def _mean_ranks(values: Sequence[float], higher_is_better: bool) -> np.ndarray:
    """Ranks 1..n (best first) with ties sharing their mean rank; NaN ranks last."""
    v = np.asarray(values, np.float64)
    key = np.where(np.isnan(v), np.inf, -v if higher_is_better else v)
    order = np.argsort(key, kind="stable")
    ranks = np.empty(v.size)
    position = 0
    while position < v.size:
        end = position
        while end + 1 < v.size and key[order[end + 1]] == key[order[position]]:
            end += 1
        ranks[order[position:end + 1]] = (position + end) / 2.0 + 1.0
        position = end + 1
    return ranks


def separation(results: Mapping[str, Mapping[str, Mapping[str, Any]]], methods: Sequence[str],
               metric: str) -> dict[str, Any]:
    """Whether `metric` separates `methods` on this case (:data:`SEPARATION_RULE`).

    Returns:
        ``separates`` (bool; True with fewer than two defined values, where there is nothing to
        separate), ``spread``, ``scale`` (the largest distance from ``chance``), ``chance`` and
        ``note`` (one sentence for a report when the metric does not separate the methods).
    """
    values = np.array([results[m][metric].get("value", np.nan) for m in methods], np.float64)
    chances = [results[m][metric].get("chance") for m in methods if results[m][metric].get("chance") is not None]
    chance = float(np.mean(chances)) if chances else 0.0
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return {"separates": True, "spread": None, "scale": None, "chance": chance, "note": ""}
    spread = float(finite.max() - finite.min())
    scale = float(np.abs(finite - chance).max())
    separates = bool(scale > 0 and spread >= SEPARATION_FRACTION * scale)
    title = METRICS.get(metric).title
    if separates:
        note = ""
    elif spread == 0:
        note = f"{title} does not separate the methods here: all score {finite[0]:.4g} (chance {chance:.4g})."
    else:
        note = (f"{title} does not separate the methods here: their values ({finite.min():.4g} to "
                f"{finite.max():.4g}) differ by {spread:.3g}, under {SEPARATION_FRACTION:.0%} of their distance "
                f"from chance ({chance:.4g}); it does not rank them.")
    return {"separates": separates, "spread": spread, "scale": scale, "chance": chance, "note": note}


def rank_methods(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]], methods: Sequence[str], metrics: Sequence[str],
    ties: Sequence[str] = (),
) -> list[tuple[str, float]]:
    """The ranking of :data:`RANKING_RULE`: ``[(method, mean rank), ...]``, best first.

    Args:
        results: ``{method: {metric: {"value": ..., "higher_is_better": ...}}}``.
        methods, metrics: the rows and columns to rank (in the order given).
        ties: metrics that do not separate the methods (:func:`separation`): every method gets the
            same rank on them.

    A method gets NaN as its mean rank when no metric has a direction.
    """
    columns = []
    for metric in metrics:
        direction = next((results[m][metric].get("higher_is_better") for m in methods
                          if results[m][metric].get("higher_is_better") is not None), None)
        if direction is None:
            continue
        if metric in ties:
            columns.append(np.full(len(methods), (len(methods) + 1) / 2.0))
            continue
        columns.append(_mean_ranks([results[m][metric]["value"] for m in methods], bool(direction)))
    if not columns:
        return [(m, float("nan")) for m in methods]
    mean = np.mean(np.stack(columns), axis=0)
    order = np.argsort(mean, kind="stable")
    return [(methods[i], float(mean[i])) for i in order]




@dataclass
class ComparisonResult:
    """Methods graded by metrics on one image.

    Attributes:
        methods: the method names (rows), in the order given.
        metrics: the metric names (columns).
        results: ``{method: {metric: result}}``, each result as :func:`evaluate` returns it.
        attributions: ``{method: Attribution}``, the maps that were graded.
        table: ``{"method": [...], metric: [value per method], ...}``: one row per method.
        curves: ``{method: {metric: {"fractions": [...], "curve": [...]}}}`` for the curve metrics
            (:data:`CURVE_METRICS`).
        ranking: ``[(method, mean rank), ...]`` best first, by :data:`RANKING_RULE`.
        ranking_rule: the rule, in words.
        info: target, seed, image and model descriptions for the saved JSON; ``graded``: per method,
            what was graded (:func:`MedXAILib.evaluation.metrics.graded_record`).
        separation: ``{metric: separation(...)}`` for the ranked metrics (:data:`SEPARATION_RULE`).
    """

    methods: list[str]
    metrics: list[str]
    results: dict[str, dict[str, dict[str, Any]]]
    attributions: dict[str, "Attribution"]
    table: dict[str, list]
    curves: dict[str, dict[str, dict[str, list[float]]]]
    ranking: list[tuple[str, float]]
    ranking_rule: str = RANKING_RULE
    info: dict[str, Any] = field(default_factory=dict)
    separation: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ranked_metrics(self) -> list[str]:
        """The metrics the ranking uses: those whose results have a better direction."""
        return [m for m in self.metrics
                if any(self.results[x][m].get("higher_is_better") is not None for x in self.methods)]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the maps, JSON-ready (NaN and infinities become null)."""
        metric_info = {}
        for name in self.metrics:
            entry = METRICS.get(name)
            metric_info[name] = {"title": entry.title, "family": entry.family, "reference": entry.reference,
                                 "higher_is_better": entry.higher_is_better, "needs_mask": entry.needs_mask}
        return json_safe({
            "methods": self.methods,
            "metrics": self.metrics,
            "metric_info": metric_info,
            "table": self.table,
            "ranking": [{"method": m, "mean_rank": r} for m, r in self.ranking],
            "ranking_rule": self.ranking_rule,
            "ranked_metrics": self.ranked_metrics,
            "separation": self.separation,
            "separation_rule": SEPARATION_RULE,
            "results": self.results,
            "curves": self.curves,
            "info": self.info,
        })

    def csv_text(self) -> str:
        """The table as CSV: one row per method, one column per metric, then the mean rank."""
        ranks = dict(self.ranking)
        stream = io.StringIO()
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["method", *self.metrics, "mean_rank"])
        for row, method in enumerate(self.methods):
            writer.writerow([method, *[repr(float(self.table[m][row])) for m in self.metrics],
                             repr(float(ranks[method]))])
        return stream.getvalue()

    def write(self, folder: str | Path, maps: bool = False) -> list[Path]:
        """Write ``comparison.csv``, ``comparison.json`` and, with matplotlib, ``curves.png`` (the
        deletion/insertion/ROAD curves of every method overlaid) and ``metrics.png`` (one bar chart
        per metric); with `maps`, also every method's map as ``<method>.nrrd`` (with provenance).
        Each file is written atomically; the folder is created if needed.

        Returns:
            The paths written.

        Raises:
            InputError: `folder` is an existing file.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder} is a file; give a folder for the comparison")
        folder.mkdir(parents=True, exist_ok=True)
        written = [
            write_atomic(folder / "comparison.csv", self.csv_text().encode()),
            write_atomic(folder / "comparison.json",
                          (json.dumps(self.to_dict(), indent=2) + "\n").encode()),
        ]
        if maps:
            for method, attribution in self.attributions.items():
                written += attribution.save(folder / f"{method}.nrrd")
        try:
            import matplotlib  # noqa: F401
        except ImportError:  # plots are optional
            return written
        if any(self.curves.get(m) for m in self.methods):
            written.append(write_atomic(folder / "curves.png", self._plot_curves()))
        written.append(write_atomic(folder / "metrics.png", self._plot_bars()))
        return written

    def _plot_curves(self) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        names = [c for c in CURVE_METRICS if any(c in self.curves.get(m, {}) for m in self.methods)]
        figure = Figure(figsize=(5.0 * len(names), 4.0), dpi=100)
        FigureCanvasAgg(figure)
        for column, name in enumerate(names):
            axes = figure.add_subplot(1, len(names), column + 1)
            for method in self.methods:
                curve = self.curves.get(method, {}).get(name)
                if curve:
                    value = self.results[method][name]["value"]
                    axes.plot(curve["fractions"], curve["curve"], marker=".", label=f"{method} (AUC {value:.3g})")
            axes.set_title(METRICS.get(name).title)
            axes.set_xlabel("fraction of voxels perturbed")
            axes.set_ylabel("target score")
            axes.grid(True, alpha=0.3)
            axes.legend(fontsize="small")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()

    def _plot_bars(self) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        n = len(self.metrics)
        columns = min(4, n)
        rows = -(-n // columns)
        figure = Figure(figsize=(3.6 * columns, 3.0 * rows), dpi=100)
        FigureCanvasAgg(figure)
        positions = np.arange(len(self.methods))
        for index, name in enumerate(self.metrics):
            axes = figure.add_subplot(rows, columns, index + 1)
            values = np.asarray(self.table[name], np.float64)
            axes.bar(positions, np.nan_to_num(values), color=[f"C{i % 10}" for i in range(len(self.methods))])
            direction = next((self.results[m][name].get("higher_is_better") for m in self.methods), None)
            arrow = {True: " (higher better)", False: " (lower better)"}.get(direction, "")
            axes.set_title(METRICS.get(name).title + arrow, fontsize="small")
            axes.set_xticks(positions)
            axes.set_xticklabels(self.methods, rotation=30, ha="right", fontsize="x-small")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()


def _given_attributions(attributions: Optional[Mapping[str, "Attribution"]], names: Sequence[str],
                        method_params: Mapping[str, Any]) -> dict[str, "Attribution"]:
    """The precomputed maps by registry name, checked against the compared methods and their provenance."""
    from ..methods import METHODS

    given = {}
    for key, attribution in (attributions or {}).items():
        name = METHODS.get(key).name
        if name not in names:
            raise ParameterError(f"a map was given for method '{key}', which is not compared "
                                 f"(compared: {', '.join(names)})")
        made_by = (getattr(attribution, "provenance", None) or {}).get("method")
        if made_by != name:
            raise ParameterError(f"the map given for '{name}' was made by {made_by or 'an unknown method'}; "
                                 "give each method its own map, or leave it out to compute it")
        if any(METHODS.get(k).name == name for k in method_params):
            raise ParameterError(f"give either parameters or a precomputed map for '{name}', not both")
        given[name] = attribution
    return given


def compare_methods(
    image: "ImageVolume",
    model: "ModelAdapter",
    methods: Sequence[str],
    target: Optional["Target"] = None,
    metrics: Optional[Sequence[str]] = None,
    mask: Optional[np.ndarray] = None,
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    monitor: Optional["Monitor"] = None,
    seed: int = 0,
    metric_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    attributions: Optional[Mapping[str, "Attribution"]] = None,
) -> ComparisonResult:
    """Explain `image` with each method, grade every map with the same metrics, and rank the methods.

    Args:
        image: the input volume.
        model: the model (a :class:`ModelAdapter`, an ``nn.Module`` or a model path).
        methods: method names (``MedXAILib.METHODS``), at least one, no repeats.
        target: what is explained (default: a classifier's predicted class); the same for all.
        metrics: metric names; default: every metric whose inputs are available (the localisation
            family needs `mask`).
        mask: ground-truth mask (I, J, K) on the image grid, non-zero inside.
        method_params: ``{method: {param: value}}`` for the methods (defaults otherwise).
        monitor: progress over all methods and cancel (``Cancelled`` propagates; nothing returned).
        seed: the seed of every explanation and of every metric's random draws.
        metric_params: ``{metric: {param: value}}`` as :func:`evaluate`'s ``params``.
        attributions: ``{method: Attribution}`` maps already computed for this image, model and
            target (e.g. by :func:`MedXAILib.explain`); those methods are graded without being run
            again, with the parameters recorded in each map's provenance.

    Returns:
        A :class:`ComparisonResult`.

    Raises:
        MedXAIError subclasses, before anything heavy runs where the request itself is wrong
        (unknown method, metric or parameter, a mask that is missing, empty or off the grid).
    """
    from ..engine import explain
    from ..methods import METHODS
    from ..model import ModelAdapter, load_model
    from ..monitor import Monitor
    from ..volume import ImageVolume

    if isinstance(methods, str):
        methods = [m for m in methods.replace(" ", "").split(",") if m]
    names = [METHODS.get(m).name for m in methods]
    if not names:
        raise ParameterError("name at least one method to compare (see 'medxai methods')")
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise ParameterError(f"method(s) named more than once: {', '.join(repeated)}")
    method_params = dict(method_params or {})
    for key in method_params:
        if METHODS.get(key).name not in names:
            raise ParameterError(f"parameters were given for method '{key}', which is not compared "
                                 f"(compared: {', '.join(names)})")
    given = _given_attributions(attributions, names, method_params)
    checked = {}
    for name in names:
        info = METHODS.get(name)
        value = next((v for k, v in method_params.items() if METHODS.get(k).name == name), None)
        if name in given:
            value = given[name].provenance.get("parameters")
        checked[name] = value if isinstance(value, info.params) else make_params(info.params, value)
    infos = resolve_metrics(metrics, mask is not None, True)
    metric_names_ = [i.name for i in infos]
    parsed_metric_params = parse_metric_params(infos, metric_params)
    if not isinstance(image, ImageVolume):
        raise InputError(f"image must be an ImageVolume; got {type(image).__name__}")
    check_mask(mask, image.shape, infos)
    adapter = model if isinstance(model, ModelAdapter) else load_model(model)
    monitor = monitor or Monitor()
    if target is None:  # one target for every method: a given map's own, or the default
        from ..target import Target

        first_given = next(iter(given.values()), None)
        target = (Target.from_description((first_given.provenance or {}).get("target")) if first_given is not None
                  else None) or Target()

    results: dict[str, dict[str, dict[str, Any]]] = {}
    attributions = {}
    for index, name in enumerate(names):
        with monitor.stage(index / len(names), (index + 1) / len(names)):
            with monitor.stage(0.0, 0.25):
                attribution = given.get(name) or explain(image, adapter, name, target, checked[name], seed=seed,
                                                         monitor=monitor)
            with monitor.stage(0.25, 1.0):
                results[name] = evaluate(image, adapter, attribution, target, metric_names_, mask, name,
                                         parsed_metric_params, monitor, seed, method_params=checked[name])
        attributions[name] = attribution
    table: dict[str, list] = {"method": list(names)}
    for metric in metric_names_:
        table[metric] = [results[m][metric]["value"] for m in names]
    curves = {m: {c: {"fractions": results[m][c]["fractions"], "curve": results[m][c]["curve"]}
                  for c in CURVE_METRICS if c in results[m]} for m in names}
    first = attributions[names[0]].provenance
    graded = {m: getattr(results[m], "graded", {}) for m in names}
    info = {"seed": seed, "target": graded[names[0]].get("target") or first.get("target"),
            "target_name": graded[names[0]].get("target_name") or first.get("target_name"),
            "model": first.get("model"), "input": first.get("input"), "versions": first.get("versions"),
            "method_parameters": {m: attributions[m].provenance.get("parameters") for m in names},
            "graded": graded}
    ranked = [m for m in metric_names_ if any(results[x][m].get("higher_is_better") is not None for x in names)]
    separated = {m: separation(results, names, m) for m in ranked}
    ties = [m for m, s in separated.items() if not s["separates"]]
    monitor.update(1.0, "Comparison done")
    return ComparisonResult(list(names), metric_names_, results, attributions, table, curves,
                            rank_methods(results, names, metric_names_, ties), info=info, separation=separated)
