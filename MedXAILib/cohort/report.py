"""The cohort's table (one row per case x structure; CSV and Parquet) and its HTML report.

The report ranks the least trustworthy structures by the default QA score (the best failure detector of
docs/qa-validation.md, named on the page), each row with its thumbnail and a link to the case's Slicer
scene; failed cases are listed with their error; with reference segmentations it also shows how well
each score detected this cohort's failures (AURC, :func:`MedXAILib.analysis.qa.aurc`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..io import write_atomic
from .plan import CASES_FOLDER, structure_file_stem

__all__ = ["TABLE_COLUMNS", "table_columns", "write_table_csv", "write_table_parquet", "write_report",
           "failure_detection"]

#: The table's leading columns, in order; manifest metadata columns follow.
TABLE_COLUMNS = ("case_id", "status", "structure", "label", "risk", "xai_outside", "xai_boundary",
                 "xai_sensitivity", "entropy", "tta_variance", "tta_dice", "dice", "predicted_voxels", "volume_mm3",
                 "rel_share_abs", "rel_share_positive", "rel_density_ratio", "rel_abs_rank_accuracy",
                 "rel_peak_distance_mm", "rel_boundary_interior_ratio", "error", "scene")
_TEXT = ("case_id", "status", "structure", "error", "scene")
_INTEGER = ("label", "predicted_voxels")


def table_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Rows as columns: :data:`TABLE_COLUMNS`, then any other keys (manifest metadata) in first-seen order.

    Missing numbers are NaN, missing text is ``""``; ``label`` and ``predicted_voxels`` are -1 when missing
    (a failed case has no structure).
    """
    extra: list[str] = []
    for row in rows:
        for key in row:
            if key not in TABLE_COLUMNS and key not in extra:
                extra.append(key)
    columns: dict[str, list] = {}
    for name in (*TABLE_COLUMNS, *extra):
        values = []
        for row in rows:
            value = row.get(name)
            if name in _TEXT or name in extra:
                values.append("" if value is None else str(value))
            elif name in _INTEGER:
                values.append(-1 if value is None else int(value))
            else:
                values.append(math.nan if value is None else float(value))
        columns[name] = values
    return columns


def write_table_csv(columns: Mapping[str, list], path: str | Path) -> Path:
    """The table as CSV (NaN as ``nan``), atomically."""
    from ..analysis.statistics import table_to_csv

    return write_atomic(Path(path), table_to_csv(columns))


def write_table_parquet(columns: Mapping[str, list], path: str | Path) -> Path:
    """The table as Parquet (pyarrow, part of the ``cohort`` extra), atomically.

    Raises:
        InputError: pyarrow is missing (the message says how to install it).
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("the Parquet table needs pyarrow: pip install 'slicer-medxai[cohort]'") from None
    import io

    arrays = {}
    for name, values in columns.items():
        kind = pa.string() if name in _TEXT or isinstance(values[0] if values else "", str) else (
            pa.int64() if name in _INTEGER else pa.float64())
        arrays[name] = pa.array(values, type=kind)
    buffer = io.BytesIO()
    pq.write_table(pa.table(arrays), buffer)
    return write_atomic(Path(path), buffer.getvalue())


def failure_detection(columns: Mapping[str, list], scores: Sequence[str]) -> Optional[dict[str, dict[str, float]]]:
    """AURC of each score per structure and per case (true risk 1 - Dice), with the oracle and random levels;
    None without reference segmentations."""
    from ..analysis.qa import aurc

    dice = np.asarray(columns["dice"], dtype=float)
    done = np.asarray([s == "done" for s in columns["status"]]) & np.isfinite(dice)
    if done.sum() < 2:
        return None
    risk = 1.0 - dice[done]
    cases = np.asarray(columns["case_id"])[done]
    out: dict[str, dict[str, float]] = {}
    ids = sorted(set(cases))
    case_risk = np.array([risk[cases == c].mean() for c in ids])
    for name in scores:
        values = np.asarray(columns[name], dtype=float)[done]
        case_score = np.array([np.nanmean(values[cases == c]) if np.isfinite(values[cases == c]).any() else np.nan
                               for c in ids])
        out[name] = {"structure": aurc(values, risk), "case": aurc(case_score, case_risk)}
    out["oracle"] = {"structure": aurc(risk, risk), "case": aurc(case_risk, case_risk)}
    out["random"] = {"structure": float(risk.mean()), "case": float(case_risk.mean())}
    return out


def _number(value: Any) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.3g}"
    return html.escape(str(value))


def write_report(path: str | Path, columns: Mapping[str, list], summary: Mapping[str, Any], default_score: str,
                 top: int = 100) -> Path:
    """``report.html``: the least trustworthy structures first (by `default_score`), with thumbnails and
    links to each case's scene (paths relative to the cohort folder), failed cases, failure detection."""
    from ..analysis.qa import SCORES

    n = len(columns["case_id"])
    done = [i for i in range(n) if columns["status"][i] == "done"]
    score = np.asarray(columns[default_score], dtype=float)
    # an undefined score (the structure is not predicted) ranks first: it needs a look
    order = sorted(done, key=lambda i: (0 if not math.isfinite(score[i]) else 1, -score[i] if math.isfinite(score[i]) else 0))
    has_dice = any(math.isfinite(v) for v in columns["dice"])
    head = ["rank", "case", "structure", default_score + " (risk)", *[s for s in SCORES if s != default_score],
            *(["Dice"] if has_dice else []), "view", "scene"]
    lines = []
    for rank, i in enumerate(order[:top], start=1):
        case, structure = columns["case_id"][i], columns["structure"][i]
        thumb = f"{CASES_FOLDER}/{case}/thumbnails/{structure_file_stem(structure)}.png"  # as case.py writes it
        cells = [str(rank), html.escape(case), html.escape(structure), _number(score[i]),
                 *[_number(columns[s][i]) for s in SCORES if s != default_score],
                 *([_number(columns["dice"][i])] if has_dice else []),
                 f'<img src="{html.escape(thumb)}" alt="" width="96" loading="lazy">',
                 f'<a href="{html.escape(columns["scene"][i])}">scene.mrb</a>']
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    failed = [i for i in range(n) if columns["status"][i] == "failed"]
    failures = "".join(f"<tr><td>{html.escape(columns['case_id'][i])}</td><td>{html.escape(columns['error'][i])}</td></tr>"
                       for i in failed)
    detection = failure_detection(columns, SCORES) if has_dice else None
    detection_html = ""
    if detection:
        rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{v['structure']:.4f}</td><td>{v['case']:.4f}</td></tr>"
                       for name, v in detection.items())
        detection_html = ("<h2>Failure detection on this cohort</h2><p>Area under the risk-coverage curve against "
                          "the true risk 1 - Dice (lower is better; Zenk et al. 2025).</p><table><tr><th>score</th>"
                          f"<th>AURC per structure</th><th>AURC per case</th></tr>{rows}</table>")
    facts = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in summary.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MedXAI cohort QA</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:2px 6px;font-size:13px}}th{{background:#eee}}</style></head><body>
<h1>Cohort segmentation QA</h1>
<ul>{facts}</ul>
<p>Structures ranked by the QA score <b>{html.escape(default_score)}</b> (higher = less trustworthy), the best
failure detector in MedXAI's validation (docs/qa-validation.md). A structure the model does not predict at all
has no score and comes first. Each scene opens in 3D Slicer with the image, the predicted segmentation, the
ensemble's entropy and every structure's attribution.</p>
<h2>Least trustworthy structures</h2>
<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>
{''.join(lines)}</table>
<h2>Failed cases ({len(failed)})</h2>
<table><tr><th>case</th><th>error</th></tr>{failures}</table>
{detection_html}
</body></html>
"""
    return write_atomic(Path(path), page)
