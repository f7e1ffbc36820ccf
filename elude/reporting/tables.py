"""Results tables as HTML, shared by the report and the studies' tables: per column the best method in
bold and the second best underlined (as in the paper), and where ELUDe is not the best, said in words."""
from __future__ import annotations

import html as html_lib

import numpy as np


def pct(x):
    return None if x is None else round(100.0 * x, 3)


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cell_value(cell):
    """A Table 2 cell's number: per seed a number (or None), in the aggregate {"mean", "std", ...}."""
    return cell.get("mean") if isinstance(cell, dict) else cell


# Issue 26's fair columns, not ranked: what each method's numbers rest on (live features, not dictionary size,
# make an expansion factor; an SAE that is not sparse is not the method the paper compares against)
FAIR_COLUMNS = (("n_features", "features"), ("live", "live features (probe)"), ("live_ef", "live EF"),
                ("l0_eval", "L0 (evaluation)"), ("scored", "scored (%)"))
NOT_SPARSE_L0 = 0.10  # a baseline whose evaluation L0 exceeds this fraction of its features is flagged
NOT_SPARSE_MARK = " †"


def fair_columns(features: dict | None, n_units: int) -> dict:
    """A feature set's fair columns (:data:`FAIR_COLUMNS`) from :func:`elude.evaluation.scoring.features_summary`:
    live = fired on the probe instances (on the evaluation instances for artifacts without a probe pass)."""
    if not features:
        return {}
    live = features["live_probe"] if features.get("live_probe") is not None else features["live_eval"]
    return {"n_features": features["n_features"], "live": live, "live_ef": live / n_units,
            "l0_eval": features["l0_eval"], "scored": 100.0 * features["n_scored"] / max(features["n_features"], 1)}



def ranked_table_html(rows: dict[str, dict], columns, lower_is_better=(), unranked=("backbone",), first=(),
                      plain=()) -> str:
    """A results table as HTML. ``rows``: key -> {"method", column: a number, None, or {"mean", "std"}};
    ``first``: (key, label) text columns before the numbers; ``plain``: number columns after them, not ranked.
    Per column the best method is bold and the second best underlined; ``unranked`` rows (references: the
    backbone) are not ranked, as in the paper."""
    value = cell_value
    marks = {}
    for col, _ in columns:
        vals = sorted({round(value(r.get(col)), 2) for k, r in rows.items() if k not in unranked and value(r.get(col)) is not None},
                      reverse=col not in lower_is_better)
        marks[col] = {v: tag for v, tag in zip(vals, ("b", "u"))}

    def cell(col, c, ranked):
        v = value(c)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "<td>—</td>"
        text = (str(v) if isinstance(v, int) else f"{v:.2f}") + (
            f" ± {c['std']:.2f}" if isinstance(c, dict) and c.get("std") is not None else "")  # ranks are integers
        tag = marks[col].get(round(v, 2)) if ranked else None
        return f"<td><{tag}>{text}</{tag}></td>" if tag else f"<td>{text}</td>"

    head = "".join(f"<th>{html_lib.escape(label)}</th>" for _, label in tuple(first) + tuple(columns) + tuple(plain))
    body = "".join(f"<tr><td>{html_lib.escape(r['method'])}</td>"
                   + "".join(f"<td>{fmt(r.get(k))}</td>" for k, _ in first)
                   + "".join(cell(col, r.get(col), k not in unranked) for col, _ in columns)
                   + "".join(cell(col, r.get(col), False) for col, _ in plain) + "</tr>"
                   for k, r in rows.items())
    return f'<table class="ranked"><tr><th>method</th>{head}</tr>{body}</table>'


def column_findings(rows: dict[str, dict], columns, lower_is_better=(), mine: str = "elude",
                    name: str = "ELUDe", skip=("backbone",)) -> list[str]:
    """Where method ``mine`` is not the best of a column (reported as measured), one sentence each."""
    value = cell_value
    out = []
    for col, label in columns:
        own = value(rows.get(mine, {}).get(col))
        others = [(value(r.get(col)), r["method"]) for k, r in rows.items()
                  if k != mine and k not in skip and value(r.get(col)) is not None]
        if own is None or not others:
            continue
        best, who = (min if col in lower_is_better else max)(others)
        if (best < own) if col in lower_is_better else (best > own):
            fmt = (lambda x: str(x)) if isinstance(own, int) else (lambda x: f"{x:.2f}")
            out.append(f"{label.split(' (')[0]}: {who} {fmt(best)} beats {name}'s {fmt(own)}.")
    return out


def findings_html(found: list[str], who: str = "ELUDe") -> str:
    if not found:
        return f"<p>{who} is best or tied in every column measured.</p>"
    return f"<p>Where {who} is not the best: " + " ".join(html_lib.escape(f) for f in found) + "</p>"
