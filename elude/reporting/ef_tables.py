"""Table 6's expansion-factor axis (one block per target EF: Table 2's rows at that EF, mean ± std over
token seeds) and Figure 2 (MS-Score against R^2 and the accuracy drop). The search that matches ELUDe to a
target EF is the method's: :mod:`elude.method.expansion`."""
from __future__ import annotations

import numpy as np

from .html import bytes_data_uri, figure_png
from .tables import FAIR_COLUMNS, cell_value, column_findings, findings_html, ranked_table_html

TABLE6_COLUMNS = (("llm_rank", "LLM Rank (↓)"), ("ms_score", "MS-Score (↑)"), ("accuracy", "Accuracy (↑)"),
                  ("r2", "R² (↑)"))


def stat(values) -> dict | None:
    x = np.array([v for v in values if v is not None], dtype=float)
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
            "per_seed": x.tolist()} if len(x) else None


def ef_block(per_seed_rows: list[dict], efs: dict[str, list[float]], ranks: dict | None) -> dict:
    """One EF's rows (Table 2's, :func:`elude.reporting.summary.table2`, one dict per token seed) as mean ± std over
    the seeds, with each method's EF (features / units: ELUDe's effective EF) and its LLM Rank, where judges ran."""
    rows = {}
    for key, first in per_seed_rows[0].items():
        rows[key] = {"method": first["method"], **{c: stat([r[key].get(c) for r in per_seed_rows])
                                                   for c in ("ms_score", "accuracy", "r2") + tuple(k for k, _ in FAIR_COLUMNS)},
                     "ef": stat(efs[key]), "llm_rank": (ranks or {}).get(key)}
    return rows


def figure2_points(blocks: dict[str, dict]) -> list[dict]:
    """Figure 2's markers: per block (a name -> rows) and method, MS-Score against R^2 and against the
    accuracy drop from the backbone (percentage points), with the method's EF as marker size."""
    points = []
    for name, rows in blocks.items():
        base_acc = cell_value(rows.get("backbone", {}).get("accuracy"))
        for key, r in rows.items():
            if key == "backbone":
                continue
            acc = cell_value(r.get("accuracy"))
            points.append({"block": name, "method": key, "name": r["method"], "ef": cell_value(r.get("ef")),
                           "ms_score": cell_value(r.get("ms_score")), "r2": cell_value(r.get("r2")),
                           "live": cell_value(r.get("live")),
                           "accuracy_drop": None if acc is None or base_acc is None else round(base_acc - acc, 4)})
    return points


def figure2_png(points: list[dict]) -> bytes:
    """Interpretability (MS-Score) against faithfulness: R^2 (left) and the accuracy drop (middle), and against
    the live features (right: what a method's MS-Score is an average over); one marker per method and EF, its
    area proportional to the EF; ELUDe as pink diamonds (the paper's colour)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    methods = list(dict.fromkeys(p["name"] for p in points))
    palette = [f"C{i}" for i in range(10) if i != 6]  # C6 is pink: ELUDe's alone
    colors = {m: ("#d0609a" if m == "ELUDe" else palette[i % len(palette)]) for i, m in enumerate(methods)}
    for i, (key, label) in enumerate((("r2", "R² (%) ↑"), ("accuracy_drop", "accuracy drop (points) ↓"),
                                      ("live", "live features (probe)"))):
        ax = fig.add_subplot(1, 3, i + 1)
        for m in methods:
            mine = [p for p in points if p["name"] == m and p[key] is not None and p["ms_score"] is not None]
            if mine:
                ax.scatter([p[key] for p in mine], [p["ms_score"] for p in mine], s=[30 * (p["ef"] or 1) for p in mine],
                           color=colors[m], alpha=0.7, edgecolors="k", linewidths=0.5, label=m,
                           marker="D" if m == "ELUDe" else "o")
                for p in mine:
                    ax.annotate(f"{p['ef']:.3g}", (p[key], p["ms_score"]), fontsize=7, xytext=(4, 4),
                                textcoords="offset points")
        ax.set(xlabel=label, ylabel="MS-Score (%) ↑", title=f"interpretability vs. {label.split(' (')[0]}")
        if key == "live":
            ax.set_xscale("log")
        if i == 0:
            ax.legend(fontsize=7, markerscale=0.5)
    return figure_png(fig)


def figure2(table2_rows: dict, table6_ef: dict | None) -> list[dict]:
    """Figure 2's points: the run's Table 2 (ELUDe at its own EF, the baselines at theirs) and, where the run
    has Table 6's EF axis, each of its blocks."""
    blocks = {"Table 2": table2_rows, **{f"EF {k}": rows for k, rows in (table6_ef or {}).get("blocks", {}).items()}}
    return figure2_points(blocks)


def table6_ef_html(t6: dict, png: bytes | None) -> str:
    """Table 6's EF axis (one block per target EF: Table 2's rows at that EF) and Figure 2."""
    import html as html_lib

    out = ""
    for key, rows in (t6 or {}).get("blocks", {}).items():
        rows = {k: {**r, "ef_text": "—" if not r["ef"] else f"{r['ef']['mean']:.2f}"} for k, r in rows.items()}
        searches = "; ".join(
            f"seed {seed}: {s['axis']} = {s['chosen']['value']} → EF {s['chosen']['ef']:.3f} (tried "
            + ", ".join(f"{p['value']} → {p['ef']:.3f}" for p in s["path"]) + ")"
            for seed, s in t6["searches"][key].items())
        out += (f"<h3>EF {html_lib.escape(key)}</h3>"
                f"{ranked_table_html(rows, TABLE6_COLUMNS, {'llm_rank'}, first=(('ef_text', 'EF'),), plain=FAIR_COLUMNS)}"
                f"{findings_html(column_findings(rows, TABLE6_COLUMNS, {'llm_rank'}))}"
                f"<p>ELUDe's target-EF search: {html_lib.escape(searches)}.</p>")
    if out:
        out = ("<h2 id=\"table6-ef\">Expansion-factor axis (Table 6)</h2><p>Percent, mean ± std over token seeds. Per target"
               " EF: every baseline family at that expansion factor (its own sweep and eq. 9 choice) and ELUDe matched to it"
               " by the search over its clustering setting; EF column: features / units (ELUDe: its effective EF, which"
               " lands on the candidate closest to the target, not on the target itself). Bold: best, underlined: second"
               f" best; LLM Rank per EF where judges ran.</p>{out}")
    if png:
        out += ("<h2 id=\"figure2\">Interpretability vs. faithfulness (Figure 2)</h2>"
                f'<img src="{bytes_data_uri(png)}" alt="Figure 2: MS-Score against R², accuracy drop and live features">'
                "<p>One marker per method and table (Table 2 and each EF of Table 6), its area proportional to the"
                " EF (the number beside it); the backbone is the reference (R² 100%, no accuracy drop). Right: against"
                " the live features (fired on the probe instances), the count a method's MS-Score is averaged over."
                " Data: summary.json, figure2.</p>")
    return out
