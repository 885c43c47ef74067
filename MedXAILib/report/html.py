"""The HTML report of a demo run: one page tying the figures, numbers, models and files together.

:func:`write_report` turns the run's summary (the dict written as ``summary.json`` by
:func:`MedXAILib.demo.run_demo`) into ``report.html``. The page has no scripts and no external
resources; figures, files and model cards are relative links into the same folder, so the folder
can be moved or zipped as a whole.

The page answers a reader's two questions first (which region and which channel decided, and how
far the numbers can be trusted), then shows the evidence. Every localisation number stands beside
its chance level; a verdict comes from :func:`MedXAILib.evaluation.localisation.localisation_verdict`
(a rule a map whose most relevant voxels miss the lesion cannot pass), never from a ratio to the
lesion's tiny volume share. Each name means one definition everywhere on the page: the lesion
numbers of the explanations and of the method comparison are the same registry metrics.
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
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;white-space:nowrap}
.good{background:#dff3e4;color:#1b7f3b}.mixed{background:#fff1cc;color:#8a5a00}.weak{background:#fde2df;color:#b3261e}
code{font-size:.9em}details pre{white-space:pre-wrap;font-size:.8em;background:#f0f2f5;padding:8px;border-radius:4px}
.muted{color:#5b6472;font-size:.9em}section.answer{border-left:6px solid #3b6fb6}
.answer li{margin:.3em 0}summary{cursor:pointer;font-weight:600}
"""

_VERDICT_CSS = {"on target": "good", "partly on target": "mixed", "off target": "weak"}
_PET_SCENE = ", the PET volume, each channel's map of the classifier ([CT], [PET]; not for Grad-CAM)"


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


def _percent(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _number(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _badge(verdict: str) -> _Raw:
    return _Raw(f'<span class="badge {_VERDICT_CSS.get(verdict, "mixed")}">{escape(verdict)}</span>')


def _img(href: Optional[str], alt: str) -> str:
    return f'<img src="{escape(href, quote=True)}" alt="{escape(alt)}">' if href else ""


def _units(summary: dict[str, Any], channel: str) -> str:
    return (summary.get("channel_units") or {}).get(channel) or "image units"


# ------------------------------------------------------------------------------------------------
# The answer first: which region, which channel, how far to trust the comparison


def _answer(summary: dict[str, Any]) -> str:
    items = []
    classifier = [r for r in summary["attributions"] if r["model"] == "classifier"]
    for role in ("classifier", "segmenter"):
        records = [r for r in summary["attributions"] if r["model"] == role]
        if not records:
            continue
        parts = [f"{escape(r['method_title'])} {_badge(r['statistics']['verdict']['verdict'])} (maximum "
                 f"{r['statistics']['peak_distance_mm']:.1f} mm from the lesion, rank accuracy "
                 f"{r['statistics']['relevance_rank_accuracy']['value']:.2f})" for r in records]
        items.append(f"<li><b>Which region decided ({escape(role)})?</b> " + "; ".join(parts) + ".</li>")
    cf = summary.get("counterfactual") or {}
    rows = cf.get("per_channel_inpainting") or []
    evidence = []
    if rows:
        target = (cf.get("validity") or {}).get("target", 0.5)
        deciding = [r["channel"] for r in rows if r["probability_after"] < target]
        evidence.append(
            "Counterfactual, the lesion inpainted in one channel at a time: "
            + "; ".join(f"removed from {escape(r['channel'])} only, P(lesion) {cf['probability_before']:.4f} → "
                        f"{r['probability_after']:.4f}" for r in rows)
            + f"; from every channel, {cf['probability_after']:.4f}."
            + (f" <b>{escape(' and '.join(deciding))} alone decides</b>: removing the lesion there flips the decision."
               if len(deciding) == 1 else ""))
    evidence += _channel_evidence(classifier)
    if evidence:
        items.append("<li><b>Which channel decided?</b><ul>" + "".join(f"<li>{e}</li>" for e in evidence)
                     + "</ul></li>")
    comparison = summary.get("comparison") or {}
    weak = [note for note in (s.get("note") for s in (comparison.get("separation") or {}).values()) if note]
    if weak:
        items.append("<li><b>How far to trust the method comparison:</b> " + " ".join(escape(n) for n in weak)
                     + "</li>")
    return ('<section class="card answer"><h2 style="margin-top:.2em">What decided</h2><ul>' + "".join(items)
            + "</ul><p class=\"muted\">Verdict rule: " + escape(_verdict_rule(summary)) + "</p></section>")


def _verdict_rule(summary: dict[str, Any]) -> str:
    for record in summary["attributions"]:
        return str(record["statistics"]["verdict"].get("rule", ""))
    return ""


def _channel_evidence(records: list[dict[str, Any]]) -> list[str]:
    """One sentence per multi-channel map: its contributions over the lesion region, or why it cannot say."""
    parts = []
    for r in records:
        channels = r.get("channels") or {}
        if len(channels.get("names", [])) < 2:
            continue
        if channels.get("comparable"):
            lesion = r["statistics"].get("channels") or []
            sums = ", ".join(f"{escape(c['channel'])} {c['sum_in_lesion_region']:+.2g}" for c in lesion)
            totals = ", ".join(f"{escape(c['channel'])} {_percent(c['share_abs'], 0)}" for c in lesion)
            parts.append(f"{escape(r['method_title'])} (contributions in logits, comparable across channels): summed "
                         f"over the lesion region {sums}. Its shares of |relevance| over the whole image ({totals}) "
                         "also count relevance far from the lesion, of both signs (the checkerboard of the maps "
                         "below), which largely cancels: the lesion region's sums say which channel carried it.")
        else:
            parts.append(f"{escape(r['method_title'])}: {escape(channels.get('note', ''))}.")
    return parts


# ------------------------------------------------------------------------------------------------
# Sections


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
    rows = [("classifier: " + name, f"{p:.4f}") for name, p in pred["classifier"]["probabilities"].items()]
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
    figures = summary.get("figures", {})
    html += _img(figures.get("prediction"), "input CT and predicted segmentation")
    if figures.get("pet"):
        html += "<p>The PET channel of the same input:</p>" + _img(figures["pet"], "input PET")
    return html


def _reading(summary: dict[str, Any]) -> str:
    smoothing = summary.get("display_smoothing_mm") or 0
    return f"""<h2>How to read the maps</h2><section class="card">
<ul>
<li><b>One figure per input channel, over its own image.</b> A map of the PET channel is drawn over the PET (SUV),
a map of the CT channel over the CT (HU). Maps whose values are contributions to the logit (integrated gradients)
share one colour scale across channels, so their colours compare; gradient maps (saliency) are per HU or per SUV
and each channel has its own scale (their channel shares depend on those units and say nothing about which
channel decided). Grad-CAM works on a layer after the network has mixed the channels: it is one map for all
channels and is shown once.</li>
<li><b>Top row:</b> the raw map in the planes through the lesion centre. <b>Bottom row:</b> the signed
maximum-|a| projection (the value of largest magnitude along each view's axis, with its sign) of the map
smoothed for display by a Gaussian of {smoothing:g} mm (σ). The smoothing never touches the saved maps or any
number on this page.</li>
<li><b>Checkerboard.</b> Gradients of networks with strided convolutions alternate in sign from voxel to voxel
(Odena, Dumoulin &amp; Olah, <i>Deconvolution and Checkerboard Artifacts</i>, Distill 2016). In the raw planes
this looks like red-blue noise over the body; it is a property of the network's sampling grid, not evidence.
Read regions from the smoothed projections, where the alternation cancels, and from the numbers below.</li>
<li><b>The hard-edged box of the segmenter's maps</b> (dashed cyan) is the receptive field of the target
region: only voxels inside it can change the segmenter's lesion score at all, so every gradient-based map is
exactly 0 outside it. It is a property of the network's architecture, not a finding.</li>
<li><b>Markers:</b> green outline, the true lesion; yellow cross, the voxel of the map's maximum (the one the
pointing game tests). Colours saturate beyond the 99.9th percentile of |a| (window in the colour bar); red is
evidence for the target, blue against it.</li>
</ul></section>"""


def _chance_cell(value: Optional[float], chance: Optional[float], percent: bool = False) -> _Raw:
    if value is None:
        return _Raw("–")
    shown = _percent(value) if percent else f"{value:.3g}"
    base = _percent(chance, 3) if percent else _number(chance, 3)
    return _Raw(f"{escape(shown)} <span class=\"muted\">(chance {escape(base)})</span>")


def _overview(summary: dict[str, Any]) -> str:
    rows = []
    for r in summary["attributions"]:
        s = r["statistics"]
        pointing = s["pointing_game"]
        rows.append((r["model"], r["method_title"], _badge(s["verdict"]["verdict"]),
                     _Raw(f"{pointing['distance_mm']:.1f} mm ({'hit' if pointing['value'] else 'miss'}; chance of a "
                          f"hit {_percent(pointing['chance'], 3)})"),
                     _chance_cell(s["relevance_rank_accuracy"]["value"], s["relevance_rank_accuracy"]["chance"]),
                     _chance_cell(s["positive_share_in_lesion"], s["lesion_volume_share"], percent=True),
                     _chance_cell(s["auroc"]["value"], s["auroc"]["chance"]),
                     _Raw(_channel_cell(r)), r["seconds"]))
    return _table(("model", "method", "verdict", "map's maximum to the lesion (pointing game, 5 mm)",
                   "relevance rank accuracy", "lesion's share of positive relevance (relevance mass accuracy)",
                   "AUROC of |a|", "channels", "seconds"), rows)


def _channel_cell(r: dict[str, Any]) -> str:
    channels = r.get("channels") or {}
    names = channels.get("names") or []
    if len(names) < 2:
        return escape(names[0] if names else "CT") + " only"
    shares = ", ".join(f"{escape(n)} {_percent(v, 1)}" for n, v in zip(names, channels.get("shares", [])))
    if channels.get("comparable"):
        return f"share of |a|: {shares}"
    if not channels.get("resolved"):
        return "one map for all channels: cannot tell them apart"
    return f"share of |a|: {shares} <span class=\"muted\">(units differ: not comparable)</span>"


def _structures(statistics: dict[str, Any]) -> str:
    rows = [(name, row["voxels"], _percent(row.get("volume_share")), _percent(row.get("share_positive")),
             _percent(row.get("share_abs")), row.get("abs_rank_accuracy"), row.get("peak_distance_mm"))
            for name, row in statistics.get("structures", {}).items()]
    return ("<details open><summary>Relevance per true structure (the channel sum)</summary>"
            + _table(("structure", "voxels", "share of the volume (chance)", "share of positive relevance",
                      "share of |relevance|", "rank accuracy of |a| (chance = volume share)",
                      "map's maximum to the structure (mm)"), rows)
            + "</details>")


def _channels_table(r: dict[str, Any], summary: dict[str, Any]) -> str:
    rows = r["statistics"].get("channels") or []
    if not rows:
        return ""
    comparable = (r.get("channels") or {}).get("comparable")
    unit = "logit" if comparable else "per channel's own units"
    body = [(c["channel"], _percent(c["share_abs"], 1), c["sum_in_lesion_region"], c["sum"], c["peak_distance_mm"])
            for c in rows]
    return (f"<p><b>Per channel</b> ({escape(unit)}; lesion region = the lesion grown by "
            f"{r['statistics'].get('lesion_region_grow_mm', 8):g} mm, the region the counterfactual replaces):</p>"
            + _table(("channel", "share of |relevance|", "relevance summed over the lesion region",
                      "relevance summed over the image", "channel's maximum to the lesion (mm)"), body))


def _attribution(r: dict[str, Any], summary: dict[str, Any]) -> str:
    s = r["statistics"]
    verdict = s["verdict"]
    pointing = s["pointing_game"]
    rows = [("target", r["target"]), ("method", _Raw(f"{escape(r['method_title'])} (<code>{escape(r['method'])}"
                                                        f"</code>); {escape(str(r.get('reference') or ''))}")),
            ("parameters", json.dumps(r["parameters"])),
            ("verdict", _Raw(f"{_badge(verdict['verdict'])} {escape('; '.join(verdict.get('reasons', [])))}")),
            ("map's maximum to the lesion (pointing game, tolerance 5 mm)",
             f"{pointing['distance_mm']:.1f} mm: {'a hit' if pointing['value'] else 'a miss'} (a randomly placed "
             f"maximum hits with probability {_percent(pointing['chance'], 3)})"),
            ("relevance rank accuracy", _chance_cell(s["relevance_rank_accuracy"]["value"],
                                                     s["relevance_rank_accuracy"]["chance"])),
            ("lesion's share of positive relevance (relevance mass accuracy)",
             _Raw(f"{_percent(s['positive_share_in_lesion'])} <span class=\"muted\">(chance = its share of the "
                  f"voxels, {_percent(s['lesion_volume_share'], 3)}: {s['positive_ratio']:.1f} × chance; the other "
                  f"{_percent(1 - s['positive_share_in_lesion'], 1)} lie elsewhere)</span>")),
            ("lesion's share of |relevance|", _percent(s["abs_share_in_lesion"])),
            ("AUROC of |a| (lesion voxels against all others)", _chance_cell(s["auroc"]["value"], 0.5)),
            ("time", f"{r['seconds']} s"),
            ("volume (NRRD, input geometry, provenance in header)",
             _Raw(_link(r["file"]) + (" (one map per channel); sum: " + _link(r["file_sum"])
                                      if r.get("file_sum") and r["file_sum"] != r["file"] else "")))]
    diagnostics = {k: v for k, v in (r.get("diagnostics") or {}).items() if k != "warnings"}
    if diagnostics:
        rows.append(("diagnostics", json.dumps(diagnostics, default=str)))
    channels = r.get("channels") or {}
    if len(channels.get("names", [])) > 1:
        rows.insert(3, ("which channel", channels.get("note", "")))
    figures = "".join(_img(path, f"{r['method_title']} {name}") for name, path in (r.get("figures") or {}).items())
    if not figures:
        figures = '<p class="muted">(no figure: matplotlib is not installed)</p>'
    return (f'<section class="card"><h3>{escape(r["method_title"])} — {escape(r["model"])} '
            f'<code>{escape(r["model_name"])}</code> {_badge(verdict["verdict"])}</h3>{figures}{_table(None, rows)}'
            f'{_channels_table(r, summary)}{_structures(s)}</section>')


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
    separation = comparison.get("separation") or {}
    chance = comparison.get("chance") or {}
    ranks = {r["method"]: r["mean_rank"] for r in comparison["ranking"]}
    arrows = {True: " ↑", False: " ↓", None: ""}
    metrics = comparison["metrics"]
    header = ["method"] + [info[m]["title"] + arrows[info[m]["higher_is_better"]]
                           + ("" if separation.get(m, {}).get("separates", True) else " (does not separate)")
                           for m in metrics]
    rows = [[method] + [table[m][row] for m in metrics] + [ranks[method]]
            for row, method in enumerate(comparison["methods"])]
    rows.append([_Raw("<i>chance</i>")] + [_Raw(f"<i>{_number(chance.get(m), 3)}</i>") if chance.get(m) is not None
                                           else "" for m in metrics] + [""])
    files = comparison["files"]
    plots = "".join(_img(files[name], name) for name in ("curves.png", "metrics.png") if name in files)
    order = " > ".join(escape(r["method"]) for r in comparison["ranking"])
    notes = "".join(f"<li>{escape(s['note'])}</li>" for s in separation.values() if s.get("note"))
    graded = comparison.get("graded") or {}
    target = graded.get("target") or {}
    what = (f"Graded: the classifier's '{graded.get('target_name')}' score (class {target.get('class_index')}, "
            f"{target.get('score')}), against the true lesion ({graded.get('mask_voxels')} voxels); every map's "
            "provenance was checked against that target and model." if graded else "")
    return ("<h2>Method comparison</h2><p>The classifier's maps graded with the same metrics (MedXAILib.evaluation; "
            "localisation against the true lesion; ↑ higher is better, ↓ lower is better). The localisation "
            "columns are the same definitions as the explanations table above. Ranking: "
            f"<b>{order}</b>.</p><p class=\"muted\">{escape(what)}</p>" + _table(header + ["mean rank"], rows)
            + (f"<ul>{notes}</ul>" if notes else "")
            + "<p class=\"muted\">AUROC counts every voxel outside the lesion as a negative; most are air or tissue far "
              "away with almost no relevance, so a map with some relevance anywhere near the lesion scores close to 1. "
              "Read the pointing game and the rank accuracy for localisation.</p>"
            + f'<p class="muted">{escape(comparison["ranking_rule"])} {escape(comparison.get("separation_rule", ""))}'
              f"</p>{plots}"
            + "<p>" + ", ".join(_link(f) for f in files.values()) + "</p>")


def _counterfactual(summary: dict[str, Any]) -> str:
    cf = summary.get("counterfactual")
    if not cf:
        return ""
    reached = cf["reached"]
    validity = cf.get("validity") or {}
    goal = (f"yes: P(lesion) {cf['probability_after']:.4f}, below the target {validity.get('target', 0.5):g}" if reached
            else f"NO: P(lesion) {cf['probability_after']:.4f} is not below the target {validity.get('target', 0.5):g}")
    rows = [("generator", cf["generator"]), ("P(lesion) before", f"{cf['probability_before']:.4f}"),
            ("P(lesion) after", f"{cf['probability_after']:.4f}"),
            ("prediction", f"{cf['predicted_before']} → {cf['predicted_after']}"),
            ("goal reached", _Raw(f"<span class=\"badge {'good' if reached else 'weak'}\">{escape(goal)}</span>")),
            ("volume changed (above noise, any channel)",
             f"{cf.get('changed_ml', 0):.3g} ml = {cf.get('changed_share_of_lesion') or 0:.1f} × the lesion's "
             f"{cf.get('lesion_ml') or 0:.3g} ml (the region replaced is the lesion grown by {cf['grow_mm']:g} mm)"),
            ("time", f"{cf['seconds']} s")]
    rows += [("warning", w) for w in cf.get("warnings", [])]
    channel_rows = [(c["channel"], _units(summary, c["channel"]), c["max_abs"], c["mean_change_in_lesion"],
                     c["changed_voxels"], c["l1"]) for c in cf.get("per_channel", [])]
    one = cf.get("per_channel_inpainting") or []
    one_rows = [(f"{r['channel']} only", f"{cf['probability_before']:.4f}", f"{r['probability_after']:.4f}")
                for r in one] + ([("every channel", f"{cf['probability_before']:.4f}", f"{cf['probability_after']:.4f}")]
                                 if one else [])
    figures = "".join(_img(path, f"counterfactual {name}") for name, path in (cf.get("figures") or {}).items())
    return (f"<h2>Counterfactual</h2><p>{escape(cf['question'])} The true lesion, grown by {cf['grow_mm']:g} mm, "
            "is replaced in every channel by harmonic filling from the surrounding tissue with its noise (the "
            "<code>inpaint</code> generator), and the classifier runs again.</p>" + _table(None, rows)
            + "<p><b>The change per channel</b>, each in its own units (never added across channels):</p>"
            + _table(("channel", "units", "largest |change|", "mean change in the lesion", "voxels changed above noise",
                      "sum of |change|"), channel_rows)
            + ("<p><b>One channel at a time</b> (which channel decided): the lesion replaced in one channel, the "
               "others as acquired:</p>" + _table(("lesion removed from", "P(lesion) before", "P(lesion) after"),
                                                  one_rows) if one_rows else "")
            + figures + "<p>" + ", ".join(_link(f) for f in cf["files"].values()) + "</p>")


def write_report(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``report.html`` for a demo `summary` (see :func:`MedXAILib.demo.run_demo`); returns the path."""
    notes = "".join(f'<p class="warn">{escape(n)}</p>' for n in summary.get("notes", []))
    by_model: dict[str, list[str]] = {}
    for r in summary["attributions"]:
        by_model.setdefault(r["model"], []).append(_attribution(r, summary))
    explanations = "".join(f"<h3>{escape(m.title())}</h3>{''.join(parts)}" for m, parts in by_model.items())
    files = [("input CT (HU)", summary["image"]["file"])]
    if summary.get("pet"):
        files.append(("input PET (SUV)", summary["pet"]["file"]))
    files += [("true lesion mask", summary["lesion"]["file"]),
              ("3D Slicer scene (drag and drop into Slicer)", summary["scene"]), ("summary", "summary.json")]
    seg = summary["prediction"].get("segmentation")
    if seg:
        files.insert(len(files) - 2, ("predicted segmentation (.seg.nrrd)", seg["file"]))
    for r in summary["attributions"]:
        per_channel = r.get("file_sum") and r["file_sum"] != r["file"]
        files.append((f"attribution: {r['model']} {r['method']}" + (" (one map per channel)" if per_channel else ""),
                      r["file"]))
        if per_channel:
            files.append((f"attribution: {r['model']} {r['method']} (channel sum)", r["file_sum"]))
    for section in ("comparison", "counterfactual"):
        files += [(f"{section}: {name}", f) for name, f in (summary.get(section) or {}).get("files", {}).items()]
    versions = ", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items())
    channels = summary["image"].get("channels", ["CT"])
    body = f"""<main>
<h1>MedXAI demo report</h1>
<p class="muted">Created {escape(str(summary.get('created')))} by MedXAI {escape(str(summary.get('medxai_version')))}
in {summary.get('seconds')} s; seed {summary.get('seed')}{' (small settings)' if summary.get('small') else ''}.
Synthetic phantom and demo models: for demonstration and testing only, never for patients.</p>
{notes}
{_answer(summary)}
<p>Open <b>{_link(summary['scene'])}</b> in 3D Slicer to browse the volumes: the CT with the classifier's integrated
gradients (channel sum) as a coloured foreground layer (opacity 0.5; red = evidence for the lesion, blue = against;
relevance below 10 % of the colour window is transparent){_PET_SCENE if summary.get('pet') else ''} and the
segmentation as segments (outlines).
The image is {escape(' x '.join(map(str, summary['image']['shape'])))} voxels of
{escape(' x '.join(f'{v:g}' for v in summary['image']['spacing_mm']))} mm, channels
{escape(', '.join(f"{c} ({_units(summary, c)})" for c in channels))} ({escape(str(summary['image']['source']))}).</p>
<h2>Prediction</h2>{_prediction(summary)}
<h2>Models</h2>{_models(summary)}
{_reading(summary)}
<h2>Explanations</h2>
<p>Does each map find the true lesion? Every number stands beside its chance level, the value a map without
information scores. The verdict needs the map's maximum near the lesion and a fair share of its most relevant
voxels inside it; a high share of relevance relative to the lesion's tiny share of the volume
({_percent(summary['lesion']['volume_share'], 3)}) never decides on its own.</p>
{_overview(summary)}
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
