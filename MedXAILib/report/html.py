"""The HTML report of a demo run: one page tying the figures, numbers, models and files together.

:func:`write_report` turns the run's summary (the dict written as ``summary.json`` by
:func:`MedXAILib.demo.run_demo`) into ``report.html``. The page has no scripts and no external
resources; figures, files and model cards are relative links into the same folder, so the folder
can be moved or zipped as a whole.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any, Iterable, Optional

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6em;margin:.4em 0}h2{border-bottom:2px solid #d0d5de;padding-bottom:.2em;margin-top:1.6em}
h3{margin:1.2em 0 .4em}section.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 16px;
margin:12px 0}table{border-collapse:collapse;margin:.4em 0;font-size:.92em}
td,th{border:1px solid #d0d5de;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eef1f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;height:auto;border:1px solid #d0d5de}
.warn{background:#fff4e5;border:1px solid #f0a35e;padding:8px 12px;border-radius:6px}
.good{color:#1b7f3b;font-weight:600}.weak{color:#b3261e;font-weight:600}code{font-size:.9em}
details pre{white-space:pre-wrap;font-size:.8em;background:#f0f2f5;padding:8px;border-radius:4px}
.muted{color:#5b6472;font-size:.9em}
"""


def _table(header: Optional[Iterable[str]], rows: Iterable[Iterable[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, _Raw):
        return f"<td>{value}</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{escape('' if value is None else str(value))}</td>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _link(href: Optional[str], text: Optional[str] = None) -> str:
    if not href:
        return escape(text or "")
    return f'<a href="{escape(href, quote=True)}">{escape(text or href)}</a>'


def _percent(value: float) -> str:
    return f"{100 * value:.2f} %"


def _ratio(value: float) -> _Raw:
    css = "good" if value >= 3 else "weak" if value < 1.5 else ""
    return _Raw(f'<span class="{css}">{value:.1f} ×</span>')


def _models(summary: dict[str, Any]) -> str:
    parts = []
    for role, model in summary["models"].items():
        metrics = model.get("metrics") or {}
        if "dice" in metrics:
            shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics["dice"].items() if v is not None and k != "background")
            numbers = f"Dice on held-out phantoms: {shown} (mean {metrics.get('mean_dice_foreground', float('nan')):.2f})"
        elif "auc" in metrics:
            numbers = (f"ROC AUC {metrics['auc']:.3f}, accuracy {metrics['accuracy']:.3f} on {metrics.get('n')} "
                       "held-out phantoms")
        else:
            numbers = "no held-out metrics"
        card = _link(model.get("card"), "model card") if model.get("card") else "no model card"
        parts.append(
            f'<section class="card"><h3>{escape(role.title())}: {escape(model["title"])} '
            f'<code>{escape(model["name"])}</code></h3>'
            + (f'<p class="warn">{escape("Fallback model: trained on the spot, not the shipped weights.")}</p>'
               if model.get("fallback") else "")
            + f"<p>{escape(model.get('card_summary', ''))}</p><p>Task: {escape(str(model.get('task')))}; classes: "
            f"{escape(', '.join(model.get('class_names') or []))}.<br>{escape(numbers)}. {card}. "
            f'<span class="muted">Weights SHA-256 {escape(str(model.get("sha256", ""))[:16])}…</span></p></section>')
    return "".join(parts)


def _prediction(summary: dict[str, Any]) -> str:
    pred, lesion = summary["prediction"], summary["lesion"]
    rows = [("classifier: " + name, f"{p:.3f}") for name, p in pred["classifier"]["probabilities"].items()]
    html = "<h3>Classifier</h3>" + _table(("class", "probability"), rows)
    html += f"<p>Predicted: <b>{escape(pred['classifier']['predicted'])}</b>.</p>"
    seg = pred.get("segmentation")
    if seg:
        rows = [(name, seg["voxels_per_class"][name], seg["dice_vs_truth"][name]) for name in seg["class_names"]]
        html += ("<h3>Segmenter</h3>" + _table(("structure", "predicted voxels", "Dice vs truth"), rows)
                 + f"<p>Label map with class names: {_link(seg['file'])}.</p>")
    facts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in lesion.items() if k not in ("file", "volume_share"))
    html += (f"<p>True lesion: {escape(facts)}; it is {_percent(lesion['volume_share'])} of the voxels "
             f"({_link(lesion['file'])}).</p>")
    figure = summary.get("figures", {}).get("prediction")
    if figure:
        html += f'<img src="{escape(figure, quote=True)}" alt="input and predicted segmentation">'
    return html


def _overview(summary: dict[str, Any]) -> str:
    rows = []
    for r in summary["attributions"]:
        s = r["statistics"]
        rows.append((r["model"], r["method_title"], _ratio(s["positive_ratio"]), _percent(s["positive_share_in_lesion"]),
                     _ratio(s["abs_ratio"] or 0.0), s["rank_accuracy"], "yes" if s["pointing_hit"] else "no",
                     s["peak_distance_mm"], _shares(r.get("channel_shares")), r["seconds"]))
    return _table(("model", "method", "positive relevance in lesion / volume share",
                   "lesion's share of positive relevance", "|relevance| ratio", "rank accuracy", "max |a| in lesion",
                   "max a to lesion centre (mm)", "share of |relevance| per channel", "seconds"), rows)


def _shares(shares: Optional[dict[str, float]]) -> str:
    return ", ".join(f"{name} {_percent(value)}" for name, value in (shares or {}).items())


def _structures(statistics: dict[str, Any]) -> str:
    rows = [(name, row["voxels"], _percent(row["share_abs"] or 0.0), row["density_ratio"], row["rank_accuracy"])
            for name, row in statistics.get("structures", {}).items()]
    return ("<details><summary>Relevance per true structure</summary>"
            + _table(("structure", "voxels", "share of |relevance|", "density ratio", "rank accuracy"), rows)
            + "</details>")


def _attribution(r: dict[str, Any]) -> str:
    s = r["statistics"]
    rows = [("target", r["target"]), ("method", _Raw(f"{escape(r['method_title'])} (<code>{escape(r['method'])}"
                                                        f"</code>); {escape(str(r.get('reference') or ''))}")),
            ("parameters", json.dumps(r["parameters"])),
            ("lesion's share of positive relevance", _percent(s["positive_share_in_lesion"])),
            ("lesion's share of |relevance|", _percent(s["abs_share_in_lesion"])),
            ("lesion's share of the voxels", _percent(s["lesion_volume_share"])),
            ("ratio (positive, |·|)", _Raw(f"{_ratio(s['positive_ratio'])}, {_ratio(s['abs_ratio'] or 0.0)}")),
            ("rank accuracy (top-|lesion| voxels of |a| inside it)", s["rank_accuracy"]),
            ("voxel of largest |a| in the lesion (pointing game)", "yes" if s["pointing_hit"] else "no"),
            ("voxel of largest a to the lesion centre", f"{s['peak_distance_mm']} mm"),
            ("time", f"{r['seconds']} s"), ("volume (NRRD, input geometry, provenance in header)", _Raw(_link(r["file"])))]
    diagnostics = r.get("diagnostics") or {}
    if diagnostics:
        rows.append(("diagnostics", json.dumps(diagnostics, default=str)))
    figure = (f'<img src="{escape(r["figure"], quote=True)}" alt="{escape(r["method_title"])}">'
              if r.get("figure") else '<p class="muted">(no figure: matplotlib is not installed)</p>')
    return (f'<section class="card"><h3>{escape(r["method_title"])} — {escape(r["model"])} '
            f'<code>{escape(r["model_name"])}</code></h3>{figure}{_table(None, rows)}'
            f'{_structures(s)}</section>')


def _randomisation(summary: dict[str, Any]) -> str:
    check = summary.get("randomisation") or {}
    steps = check.get("steps") or []
    if not steps:
        return ""
    rows = [(s["stage"], f"{s['layers_randomised']} / {s['layers_total']}", s["last_layer"], s["spearman"],
             s["spearman_abs"], s["ssim_abs"]) for s in steps]
    return ("<h2>Sanity check: cascading model randomisation</h2><p>The classifier's layers are re-initialised "
            "from the output backwards and its saliency map recomputed (Adebayo et al., NeurIPS 2018). A map "
            "that reflects the learned model must change: similarities should fall towards 0.</p>"
            + _table(("stage", "layers randomised", "down to layer", "Spearman", "Spearman |·|", "SSIM |·|"), rows))


def _comparison(summary: dict[str, Any]) -> str:
    comparison = summary.get("comparison")
    if not comparison:
        return ""
    info, table = comparison["metric_info"], comparison["table"]
    ranks = {r["method"]: r["mean_rank"] for r in comparison["ranking"]}
    arrows = {True: " ↑", False: " ↓", None: ""}
    header = ["method"] + [info[m]["title"] + arrows[info[m]["higher_is_better"]] for m in comparison["metrics"]]
    rows = [[method] + [table[m][row] for m in comparison["metrics"]] + [ranks[method]]
            for row, method in enumerate(comparison["methods"])]
    files = comparison["files"]
    plots = "".join(f'<img src="{escape(files[name], quote=True)}" alt="{escape(name)}">'
                    for name in ("curves.png", "metrics.png") if name in files)
    order = " > ".join(escape(r["method"]) for r in comparison["ranking"])
    return ("<h2>Method comparison</h2><p>The classifier's maps graded with the same metrics (MedXAILib.evaluation; "
            "localisation against the true lesion; ↑ higher is better, ↓ lower is better). Ranking: "
            f"<b>{order}</b>.</p>" + _table(header + ["mean rank"], rows)
            + f'<p class="muted">{escape(comparison["ranking_rule"])}</p>{plots}'
            + "<p>" + ", ".join(_link(f) for f in files.values()) + "</p>")


def _counterfactual(summary: dict[str, Any]) -> str:
    cf = summary.get("counterfactual")
    if not cf:
        return ""
    proximity = cf["proximity"]
    rows = [("generator", cf["generator"]), ("P(lesion) before", cf["probability_before"]),
            ("P(lesion) after", cf["probability_after"]),
            ("prediction", f"{cf['predicted_before']} → {cf['predicted_after']}"),
            ("goal reached (P(lesion) below 0.5)", "yes" if cf["reached"] else "no"),
            ("voxels changed", cf["changed_voxels"]),
            ("L1 / L2 / max |Δ| (HU)", ", ".join(f"{proximity[k]:.4g}" for k in ("l1", "l2", "max_abs")
                                                 if k in proximity)),
            ("time", f"{cf['seconds']} s")]
    rows += [("warning", w) for w in cf.get("warnings", [])]
    figure = f'<img src="{escape(cf["figure"], quote=True)}" alt="counterfactual">' if cf.get("figure") else ""
    return (f"<h2>Counterfactual</h2><p>{escape(cf['question'])} The true lesion, grown by {cf['grow_mm']:g} mm, "
            "is replaced in every channel by harmonic filling from the surrounding tissue with its noise (the "
            "<code>inpaint</code> generator), and the classifier runs again.</p>" + _table(None, rows) + figure
            + "<p>" + ", ".join(_link(f) for f in cf["files"].values()) + "</p>")


def write_report(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``report.html`` for a demo `summary` (see :func:`MedXAILib.demo.run_demo`); returns the path."""
    notes = "".join(f'<p class="warn">{escape(n)}</p>' for n in summary.get("notes", []))
    by_model: dict[str, list[str]] = {}
    for r in summary["attributions"]:
        by_model.setdefault(r["model"], []).append(_attribution(r))
    explanations = "".join(f"<h3>{escape(m.title())}</h3>{''.join(parts)}" for m, parts in by_model.items())
    files = [("input CT (HU)", summary["image"]["file"]), ("true lesion mask", summary["lesion"]["file"]),
             ("3D Slicer scene (drag and drop into Slicer)", summary["scene"]), ("summary", "summary.json")]
    seg = summary["prediction"].get("segmentation")
    if seg:
        files.insert(2, ("predicted segmentation (.seg.nrrd)", seg["file"]))
    files += [(f"attribution: {r['model']} {r['method']}", r["file"]) for r in summary["attributions"]]
    for section in ("comparison", "counterfactual"):
        files += [(f"{section}: {name}", f) for name, f in (summary.get(section) or {}).get("files", {}).items()]
    versions = ", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items())
    body = f"""<main>
<h1>MedXAI demo report</h1>
<p class="muted">Created {escape(str(summary.get('created')))} by MedXAI {escape(str(summary.get('medxai_version')))}
in {summary.get('seconds')} s; seed {summary.get('seed')}{' (small grid)' if summary.get('small') else ''}.
Synthetic phantom and demo models: for demonstration and testing only, never for patients.</p>
{notes}
<p>Open <b>{_link(summary['scene'])}</b> in 3D Slicer to browse the volumes: the CT with the classifier's integrated
gradients as a coloured foreground layer (opacity 0.5; red = evidence for the lesion, blue = against; relevance
below 10 % of the colour window is transparent){', the PET volume' if summary.get('pet') else ''} and the
segmentation as segments (outlines).
The image is {escape(' x '.join(map(str, summary['image']['shape'])))} voxels of
{escape(' x '.join(f'{v:g}' for v in summary['image']['spacing_mm']))} mm, channels
{escape(', '.join(summary['image'].get('channels', ['CT'])))} ({escape(str(summary['image']['source']))}).</p>
<h2>Prediction</h2>{_prediction(summary)}
<h2>Models</h2>{_models(summary)}
<h2>Explanations</h2>
<p>How concentrated the relevance is in the true lesion: the lesion's share of the positive relevance divided
by its share of the voxels (1 × = no more than its size, higher = concentrated in the lesion).</p>
{_overview(summary)}
<p class="muted">Figures: top row, planes through the lesion centre; bottom row, signed maximum-|relevance|
projections over the mean image projection. Diverging colours symmetric around 0 (red positive, blue
negative), radiological convention (patient's right on the left), millimetre aspect ratio.</p>
{explanations}
{_randomisation(summary)}
{_comparison(summary)}
{_counterfactual(summary)}
<h2>Files</h2>{_table(("what", "file"), ((w, _Raw(_link(f))) for w, f in files))}
<h2>Provenance</h2><p>{escape(versions)}. Every attribution file carries its full provenance (method, parameters,
target, model and weights hash, versions, seed, device, time) in its NRRD header under
<code>MedXAI.Provenance</code>; the same is in {_link('summary.json')}.</p>
</main>"""
    html = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>MedXAI demo report</title>'
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_CSS}</style></head>"
            f"<body>{body}</body></html>\n")
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path
