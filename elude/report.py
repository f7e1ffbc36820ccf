"""The run summary (summary.json) and a self-contained HTML report (numbers, Table 2 beside the baselines,
K_u histogram, and the paper's Figure 3 layout: a parent's top-16 evaluation images next to each
sub-unit's top 4)."""
from __future__ import annotations

import base64
import html as html_lib
import io
import json

import numpy as np


def _pct(x):
    return None if x is None else round(100.0 * x, 3)


TABLE2_COLUMNS = (("llm_rank", "LLM Rank (↓)"), ("ms_score", "MS-Score (↑)"), ("ms_score_pooled", "MS-Score, pooled space (↑)"),
                  ("accuracy", "Accuracy (↑)"), ("r2", "R² (↑)"))
LOWER_IS_BETTER = {"llm_rank"}


def table2(metrics: dict, baselines: dict[str, dict]) -> dict:
    """Table 2 of one token dataset: rows backbone only, each baseline family (paper order), ELUDe; columns
    MS-Score (layer and pooled space), accuracy, R^2, all in percent, and the LLM Rank (filled by the judges
    stage, a later issue; null until then). ``baselines``: family -> its baseline_eval metrics."""
    from .baselines import FAMILIES, FAMILY_NAMES

    ms = metrics["ms_score"]
    rows = {"backbone": {"method": "Backbone only", "ms_score": _pct(ms["units_mean"]),
                         "ms_score_pooled": _pct(ms["units_mean_pooled"]),
                         "accuracy": _pct(metrics["accuracy"]["original"]), "r2": 100.0, "llm_rank": None}}
    for family in [f for f in FAMILIES if f in baselines]:
        b = baselines[family]
        rows[family] = {"method": FAMILY_NAMES[family], "ms_score": _pct(b["ms_score"]["features_mean"]),
                        "ms_score_pooled": _pct(b["ms_score"]["features_mean_pooled"]),
                        "accuracy": _pct(b["accuracy"]["reconstructed"]), "r2": _pct(b["r2"]), "llm_rank": None,
                        "n_features": b["n_features"], "n_scored_features": b["n_scored_features"],
                        "l0_eval": b["l0_eval"], "hp": b["hp"]}
    rows["elude"] = {"method": "ELUDe", "ms_score": _pct(ms["subunits_mean"]),
                     "ms_score_pooled": _pct(ms["subunits_mean_pooled"]),
                     "accuracy": _pct(metrics["accuracy"]["disentangled"]), "r2": _pct(metrics["r2"]),
                     "llm_rank": None, "n_features": metrics["n_subunits"]}
    return {"unit": "percent", "rows": rows}


TABLE4_COLUMNS = (("stability", "Cross-init sim. (↑)"), ("effective_rank_share", "Eff. rank / min(atoms, dim), % (↑)"),
                  ("coherence", "Coherence, max |cos| (↓)"))
TABLE4_FIRST = (("space", "atoms"), ("dim", "atom dim"), ("n_atoms", "live atoms (mean)"), ("effective_rank_text", "Eff. rank"))


def _stat(d: dict | None, scale: float = 1.0) -> dict | None:
    return None if d is None or d.get("mean") is None else {"mean": scale * d["mean"], "std": scale * (d.get("std") or 0.0)}


def table4(t4: dict) -> dict:
    """Table 4 rows from the dictionary artifact: stability and coherence in percent (mean ± std over pairs
    / runs), the effective rank as is and, ranked, as a percentage of its bound min(live atoms, atom
    dimension) (ELUDe's atoms and the SAEs' live in spaces of different dimension: raw ranks do not
    compare). ELUDe's output-space row (the paper's apparent reading of its atoms, :mod:`elude.dictionary`)
    is a reference and not ranked."""
    from .baselines import FAMILIES, FAMILY_NAMES

    src = t4["rows"]
    names = {**FAMILY_NAMES, "elude_output_space": "ELUDe, one-hot output atoms e_u (reference)", "elude": "ELUDe"}
    rows = {}
    for key in [f for f in FAMILIES if f in src] + ["elude_output_space", "elude"]:
        r = src[key]
        er, bound = _stat(r["effective_rank"]), min(r["n_atoms"]["mean"], r["dim"])
        rows[key] = {"method": names[key], "stability": _stat(r["stability"], 100), "effective_rank": er,
                     "effective_rank_share": _stat(r["effective_rank"], 100 / bound) if bound else None,
                     "effective_rank_text": None if er is None else f"{er['mean']:.1f} ± {er['std']:.2f}",
                     "coherence": _stat(r["coherence"], 100), "dim": r["dim"], "n_atoms": r["n_atoms"]["mean"],
                     "space": "layer output e_u" if key == "elude_output_space" else
                     "sub-unit weight rows (input)" if key == "elude" else "decoder rows (output)"}
    return {"rows": rows, "elude_runs_identical": src["elude"].get("runs_identical"), "init_seeds": t4["init_seeds"],
            "elude_runs": t4["elude_runs"]}


TABLE5_COLUMNS = (("ms_per_batch", "ms/batch (↓)"), ("ms_ratio", "× backbone time"), ("peak_mem_mb", "peak mem MB (↓)"),
                  ("mem_ratio", "× backbone mem"), ("param_mb", "weights MB (↓)"))
TABLE5_LOWER = {c for c, _ in TABLE5_COLUMNS}


def table5(t5: dict) -> dict:
    """Table 5 rows from the efficiency artifact (backbone first, then the baselines, then ELUDe)."""
    from .baselines import FAMILIES, FAMILY_NAMES

    src = t5["rows"]
    names = {"backbone": "Backbone only", **FAMILY_NAMES, "elude_lazy": "ELUDe, lazy sub-units",
             "elude_dense": "ELUDe, dense (B.4)"}
    rows = {}
    for key in ["backbone"] + [f for f in FAMILIES if f in src] + ["elude_lazy", "elude_dense"]:
        r = src[key]
        rows[key] = {"method": names[key], "input_dim": r["input_dim"] or "N/A",
                     "ms_per_batch": {"mean": r["ms_per_batch"], "std": r["ms_std"]}, "ms_ratio": r["ms_per_batch_ratio"],
                     "peak_mem_mb": r["peak_mem_mb"], "mem_ratio": r["peak_mem_mb_ratio"], "param_mb": r["param_mb"]}
    return {"rows": rows, "device": t5["device"], "device_name": t5["device_name"], "settings": t5["settings"],
            "memory": t5["memory"]}


def studies_summary(tables: dict) -> dict:
    """Tables 4 and 5 (as :func:`table4`, :func:`table5` make them) for a summary, with where ELUDe is not
    the best (ELUDe dense for Table 5)."""
    out = {}
    if "table4" in tables:
        out["table4"] = tables["table4"]
        out["table4_elude_not_best"] = column_findings(out["table4"]["rows"], TABLE4_COLUMNS, {"coherence"},
                                                       skip=("elude_output_space",))
    if "table5" in tables:
        out["table5"] = tables["table5"]
        out["table5_elude_not_best"] = column_findings(out["table5"]["rows"], TABLE5_COLUMNS[::2], TABLE5_LOWER,
                                                       mine="elude_dense", name="ELUDe dense",
                                                       skip=("backbone", "elude_lazy"))
    return out


def studies_html(summary: dict) -> str:
    """Tables 4 and 5, where the run has them."""
    out = ""
    if "table4" in summary:
        t = summary["table4"]
        out += (f"<h2>Stability and dictionary geometry (Table 4)</h2>"
                f"{ranked_table_html(t['rows'], TABLE4_COLUMNS, {'coherence'}, unranked=('elude_output_space',), first=TABLE4_FIRST)}"
                f"{findings_html(summary['table4_elude_not_best'])}"
                f"<p>Baselines: the selected grid point trained with init seeds {t['init_seeds']} on the first token dataset;"
                f" ELUDe: {t['elude_runs']} runs on identical inputs (runs identical: {t['elude_runs_identical']})."
                " Stability: Hungarian-matched mean cosine over the pairs of runs (ELUDe per neuron, minus |k_a - k_b| / max"
                " for unmatched atoms), percent, mean ± std over pairs; effective rank and coherence: mean ± std over runs;"
                " dead atoms left out. ELUDe's atoms are its sub-unit weight rows in the layer's input space (they tell a"
                " neuron's sub-units apart; in the output space every sub-unit of a neuron is e_u, shown as a reference"
                " row), so its effective rank has another bound: ranks are compared as a share of min(live atoms, atom dim). Coherence is overcomplete's"
                " dictionary_collinearity, the largest |cos| between two atoms: lower is more distinguishable (the paper"
                " calls it higher-is-better; we rank by what the function measures).</p>")
    if "table5" in summary:
        t = summary["table5"]
        st = t["settings"]
        out += (f"<h2>Computational efficiency (Table 5)</h2>"
                f"{ranked_table_html(t['rows'], TABLE5_COLUMNS, TABLE5_LOWER, first=(('input_dim', 'input dim'),))}"
                + findings_html(summary["table5_elude_not_best"], "ELUDe (dense)")
                + f"<p>{html_lib.escape(t['device_name'])}; batch {st['batch_size']}, {st['warmup']} warm-up and"
                f" {st['iterations']} timed passes per variant in {st['rounds']} round(s), torch.compile"
                f" {'on' if st['compile'] else 'off'}; memory: {html_lib.escape(t['memory'])}. Mean ± std over the timed"
                " passes, every variant on the same loaded backbone. ELUDe lazy runs the original layer and computes"
                " sub-units only when asked.</p>")
    return out


def summary(run_name: str, verify: dict, metrics: dict, layer_meta: dict, artifacts: dict[str, str],
            baselines: dict[str, dict] | None = None, studies: dict | None = None) -> dict:
    """The run's headline numbers. MS-Scores are percentages, as in the paper. ``studies``: the
    dictionary and efficiency artifacts' tables (``table4``, ``table5``), where the run has them."""
    units = layer_meta["units"]
    split = [u for u in units if u["k"] > 1]
    studies = studies or {}
    tables = {name: make(studies[name]) for name, make in (("table4", table4), ("table5", table5)) if name in studies}
    return {**studies_summary(tables),
        "run_name": run_name,
        "lossless": {k: verify[k] for k in ("max_abs_diff", "max_rel_diff", "r2", "prediction_agreement", "lossless")},
        "accuracy": metrics["accuracy"],
        "ms_score": {k: _pct(v) for k, v in metrics["ms_score"].items()},
        "ms_score_unit": "percent",
        "ms_top_k": metrics["ms_top_k"],
        "n_units": metrics["n_units"],
        "n_subunits": metrics["n_subunits"],
        "n_split_units": metrics["n_split_units"],
        "expansion_factor": metrics["expansion_factor"],
        "k_histogram": metrics["k_histogram"],
        "clustering": {
            "noise_fraction_mean": float(np.mean([u["noise"] / u["top_k"] for u in units])),
            "exclusive_fraction_mean_split_units": float(np.mean([u["exclusive_fraction"] for u in split])) if split else None,
        },
        "table2": (t2 := table2(metrics, baselines or {})),
        "table2_elude_not_best": table2_findings(t2["rows"]),
        "artifacts": artifacts,
    }


def png_data_uri(img: np.ndarray, scale: int = 6) -> str:
    from PIL import Image

    im = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(thumbnail, i: int) -> str:
    img = thumbnail(int(i))
    if img is None:  # a dataset without images (e.g. text from a factory): its index
        return f'<span class="ex">example {int(i)}</span>'
    return f'<img src="{png_data_uri(img, scale=max(1, 48 // img.shape[0]))}" title="eval example {int(i)}">'


def _grid(thumbnail, ids, cols: int, cls: str) -> str:
    cells = "".join(_cell(thumbnail, i) for i in ids)
    return f'<div class="grid {cls}" style="grid-template-columns: repeat({cols}, auto)">{cells}</div>'


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _cell_value(cell):
    """A Table 2 cell's number: per seed a number (or None), in the aggregate {"mean", "std", ...}."""
    return cell.get("mean") if isinstance(cell, dict) else cell


def ranked_table_html(rows: dict[str, dict], columns, lower_is_better=(), unranked=("backbone",), first=()) -> str:
    """A results table as HTML. ``rows``: key -> {"method", column: a number, None, or {"mean", "std"}};
    ``first``: (key, label) text columns before the numbers. Per column the best method is bold and the
    second best underlined; ``unranked`` rows (references: the backbone) are not ranked, as in the paper."""
    value = _cell_value
    marks = {}
    for col, _ in columns:
        vals = sorted({round(value(r.get(col)), 2) for k, r in rows.items() if k not in unranked and value(r.get(col)) is not None},
                      reverse=col not in lower_is_better)
        marks[col] = {v: tag for v, tag in zip(vals, ("b", "u"))}

    def cell(col, c, ranked):
        v = value(c)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "<td>—</td>"
        text = f"{v:.2f}" + (f" ± {c['std']:.2f}" if isinstance(c, dict) and c.get("std") is not None else "")
        tag = marks[col].get(round(v, 2)) if ranked else None
        return f"<td><{tag}>{text}</{tag}></td>" if tag else f"<td>{text}</td>"

    head = "".join(f"<th>{html_lib.escape(label)}</th>" for _, label in tuple(first) + tuple(columns))
    body = "".join(f"<tr><td>{html_lib.escape(r['method'])}</td>"
                   + "".join(f"<td>{_fmt(r.get(k))}</td>" for k, _ in first)
                   + "".join(cell(col, r.get(col), k not in unranked) for col, _ in columns) + "</tr>"
                   for k, r in rows.items())
    return f'<table class="ranked"><tr><th>method</th>{head}</tr>{body}</table>'


def table2_html(rows: dict[str, dict]) -> str:
    return ranked_table_html(rows, TABLE2_COLUMNS, LOWER_IS_BETTER)


def column_findings(rows: dict[str, dict], columns, lower_is_better=(), mine: str = "elude",
                    name: str = "ELUDe", skip=("backbone",)) -> list[str]:
    """Where method ``mine`` is not the best of a column (reported as measured), one sentence each."""
    value = _cell_value
    out = []
    for col, label in columns:
        own = value(rows.get(mine, {}).get(col))
        others = [(value(r.get(col)), r["method"]) for k, r in rows.items()
                  if k != mine and k not in skip and value(r.get(col)) is not None]
        if own is None or not others:
            continue
        best, who = (min if col in lower_is_better else max)(others)
        if (best < own) if col in lower_is_better else (best > own):
            out.append(f"{label.split(' (')[0]}: {who} {best:.2f} beats {name}'s {own:.2f}.")
    return out


def table2_findings(rows: dict[str, dict]) -> list[str]:
    return column_findings(rows, TABLE2_COLUMNS, LOWER_IS_BETTER)


def findings_html(found: list[str], who: str = "ELUDe") -> str:
    if not found:
        return f"<p>{who} is best or tied in every column measured.</p>"
    return f"<p>Where {who} is not the best: " + " ".join(html_lib.escape(f) for f in found) + "</p>"


TABLE2_NOTE = ("<p>Percent. MS-Score (eq. 7) of every feature that activates on the evaluation split (ELUDe: sub-units;"
               " backbone: the original units); accuracy with the method's reconstruction in place of the layer output;"
               " R² of the reconstructed layer output. Baselines are trained on the same probe instances and scored by"
               " the same code; each family's hyperparameters are the eq. 9 choice of its sweep. Bold: best, underlined:"
               " second best (the backbone-only row is not ranked). LLM Rank: not computed yet (the judges stage).</p>")


def html(summary: dict, metrics: dict, tables: dict, layer_meta: dict, thumbnail, n_examples: int) -> str:
    """``thumbnail(i)``: evaluation example i as a uint8 image array, or None."""
    ms = summary["ms_score"]
    lossless = summary["lossless"]
    rows = "".join(f"<tr><td>{html_lib.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in [
        ("max |output difference|", lossless["max_abs_diff"]), ("max relative output difference", lossless["max_rel_diff"]),
        ("R² at the layer (pooled per-feature variance)", lossless["r2"]),
        ("top-1 prediction agreement", lossless["prediction_agreement"]),
        ("accuracy, original layer", summary["accuracy"]["original"]),
        ("accuracy, disentangled layer", summary["accuracy"]["disentangled"]),
        ("units", summary["n_units"]), ("sub-units", summary["n_subunits"]), ("units split (K ≥ 2)", summary["n_split_units"]),
        ("effective expansion factor", summary["expansion_factor"]),
        ("top-k instances left as noise by HDBSCAN (mean over units)", summary["clustering"]["noise_fraction_mean"]),
        ("upstream dimensions assigned exclusively (mean over split units)",
         summary["clustering"]["exclusive_fraction_mean_split_units"])])
    ms_rows = ""
    for label, key in (("all", ""), ("split units only", "split_")):
        for space, suf in (("layer output (paper, B.2)", ""), ("pooled pre-logit image embedding", "_pooled")):
            ms_rows += (f"<tr><td>{label}</td><td>{space}</td><td>{_fmt(ms[f'{key}units_mean{suf}'])}</td>"
                        f"<td>{_fmt(ms[f'{key}subunits_mean{suf}'])}</td><td>{_fmt(ms[f'{key}random_mean{suf}'])}</td></tr>")
    hist = summary["k_histogram"]
    top = max(hist.values())
    bars = "".join(f'<div class="bar"><span>K={k}</span><div style="width:{300 * n / top:.0f}px"></div>{n}</div>'
                   for k, n in sorted(hist.items(), key=lambda kv: int(kv[0])))
    k_per_unit = tables["k_per_unit"]
    parent = tables["parent"]
    examples = ""
    for u in sorted(range(len(k_per_unit)), key=lambda u: (-k_per_unit[u], u))[:n_examples]:
        if k_per_unit[u] < 2:
            break
        subs = np.nonzero(parent == u)[0]
        meta = layer_meta["units"][u]
        panels = "".join(
            f'<div class="panel"><div>sub-unit {s} (cluster {c}, {meta["cluster_sizes"][c]} instances)<br>'
            f'MS {_fmt(_pct(float(tables["subunits_ms_layer"][s])))} / pooled {_fmt(_pct(float(tables["subunits_ms_pooled"][s])))}</div>'
            f'{_grid(thumbnail, tables["subunits_top_images"][s][:4], 2, "sub")}</div>' for c, s in enumerate(subs))
        examples += (f'<h3>Unit {u}: K = {k_per_unit[u]}, rho = {meta["rho"]}, noise = {meta["noise"]}</h3>'
                     f'<div class="row"><div class="panel parent"><div>parent unit {u}<br>MS '
                     f'{_fmt(_pct(float(tables["units_ms_layer"][u])))} / pooled {_fmt(_pct(float(tables["units_ms_pooled"][u])))}</div>'
                     f'{_grid(thumbnail, tables["units_top_images"][u][:16], 4, "par")}</div>{panels}</div>')
    artifacts = "".join(f"<tr><td>{s}</td><td><code>{html_lib.escape(p)}</code></td></tr>"
                        for s, p in summary["artifacts"].items())
    details = "".join(
        f"<tr><td>{html_lib.escape(r['method'])}</td><td>{r['n_features']}</td><td>{r['n_scored_features']}</td>"
        f"<td>{_fmt(r['l0_eval'])}</td><td><code>{html_lib.escape(json.dumps(r['hp']))}</code></td></tr>"
        for k, r in summary["table2"]["rows"].items() if "hp" in r)
    details = (f"<table><tr><th>baseline</th><th>features</th><th>features scored (active on the evaluation split)</th>"
               f"<th>L0 (evaluation)</th><th>selected hyperparameters (eq. 9)</th></tr>{details}</table>" if details else
               "<p>No baseline family was run (baselines.families is empty).</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ELUDe run {html_lib.escape(summary['run_name'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}} .row{{display:flex;gap:12px;flex-wrap:wrap;align-items:flex-start}}
.panel{{border:3px solid #e8a0c8;padding:4px;font-size:12px}} .parent{{border-color:#e8c840}}
.grid{{display:grid;gap:2px}} .bar{{display:flex;gap:6px;align-items:center}} .bar span{{width:40px}}
.bar div{{background:#6a8;height:14px}} .ranked tr:last-child{{background:#f4e4f0}}</style></head><body>
<h1>ELUDe run “{html_lib.escape(summary['run_name'])}” — layer <code>{html_lib.escape(layer_meta['layer'])}</code></h1>
<h2>Lossless check and model accuracy</h2><table>{rows}</table>
<h2>Interpretability vs. faithfulness (Table 2)</h2>{table2_html(summary['table2']['rows'])}{findings_html(summary['table2_elude_not_best'])}{TABLE2_NOTE}{details}
{studies_html(summary)}
<h2>MS-Score (%, eq. 7; top {summary['ms_top_k']} evaluation images per unit)</h2>
<p>Higher is more monosemantic. “Random” is Table 7's control: the same K<sub>u</sub> per unit, upstream
dimensions assigned to sub-units at random. The paper's space embeds each image at the unit's argmax token in the
layer's own output; the pooled space uses the model's pre-logit image embedding. Reported as measured.</p>
<table><tr><th>units</th><th>embedding space</th><th>original units</th><th>ELUDe sub-units</th><th>random partition</th></tr>{ms_rows}</table>
<h2>Sub-units per unit (K<sub>u</sub>)</h2>{bars}
<h2>Most-split units (Figure 3 layout: parent top-16, sub-unit top-4; evaluation split)</h2>{examples or '<p>No unit was split.</p>'}
<h2>Artifacts</h2><table>{artifacts}</table></body></html>"""


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested summary, keyed by dotted path (booleans and None left out)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_numbers(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def aggregate(run_name: str, seeds: list[int], summaries: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof 1) across the seeded token datasets of every number the
    per-seed summaries share (MS-Scores, expansion factor, R^2, ...), and whether every seed was lossless."""
    per_seed = [_numbers({k: v for k, v in s.items() if k not in ("artifacts", "k_histogram")}) for s in summaries]
    keys = [k for k in per_seed[0] if all(k in p for p in per_seed)]
    stats = {}
    for k in keys:
        x = np.array([p[k] for p in per_seed])
        stats[k] = {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
                    "per_seed": x.tolist()}
    rows = {}
    for key, row in summaries[0]["table2"]["rows"].items():
        rows[key] = {"method": row["method"], **{col: stats.get(f"table2.rows.{key}.{col}") for col, _ in TABLE2_COLUMNS}}
    return {"run_name": run_name, "token_seeds": list(seeds), "n_seeds": len(seeds),
            "lossless_all_seeds": all(s["lossless"]["lossless"] for s in summaries), "metrics": stats,
            "table2": {"unit": "percent", "rows": rows}, "table2_elude_not_best": table2_findings(rows),
            **studies_summary({k: summaries[0][k] for k in ("table4", "table5") if k in summaries[0]}),
            "per_seed_reports": [s["artifacts"]["report"] for s in summaries]}


def aggregate_html(agg: dict) -> str:
    rows = "".join(f"<tr><td>{html_lib.escape(k)}</td><td>{_fmt(v['mean'])}</td><td>{_fmt(v['std'])}</td>"
                   f"<td>{', '.join(_fmt(x) for x in v['per_seed'])}</td></tr>" for k, v in agg["metrics"].items())
    seeds = ", ".join(map(str, agg["token_seeds"]))
    links = "".join(f'<li><a href="seed-{s}/report.html">seed {s}</a></li>' for s in agg["token_seeds"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ELUDe run {html_lib.escape(agg['run_name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px}}</style>
</head><body><h1>ELUDe run “{html_lib.escape(agg['run_name'])}”: {agg['n_seeds']} seeded token datasets ({seeds})</h1>
<p>Lossless on every seed: {agg['lossless_all_seeds']}. Mean ± sample standard deviation across seeds
(Section 4.1, E.8); MS-Scores in percent.</p><ul>{links}</ul>
<h2>Interpretability vs. faithfulness (Table 2), mean ± std over seeds</h2>{table2_html(agg['table2']['rows'])}{findings_html(agg['table2_elude_not_best'])}{TABLE2_NOTE}
{studies_html(agg).replace("</h2>", " — first token seed</h2>")}
<h2>Every number</h2>
<table><tr><th>metric</th><th>mean</th><th>std</th><th>per seed</th></tr>{rows}</table></body></html>"""
