"""Tables 3, 4, 5 and 7 of a run's report: LLM Rank (Section B.1: consensus win rates, per-judge agreement,
one judged presentation), stability and dictionary geometry (B.3), inference cost (B.4) and the clustering
ablations (Table 7)."""
from __future__ import annotations

import base64
import html as html_lib

from .tables import column_findings, findings_html, fmt, pct, ranked_table_html

TABLE4_COLUMNS = (("stability", "Cross-init sim. (↑)"), ("effective_rank_share", "Eff. rank / min(atoms, dim), % (↑)"),
                  ("coherence", "Coherence, max |cos| (↓)"))
TABLE4_FIRST = (("space", "atoms"), ("dim", "atom dim"), ("n_atoms", "live atoms (mean)"), ("effective_rank_text", "Eff. rank"))


def _stat(d: dict | None, scale: float = 1.0) -> dict | None:
    return None if d is None or d.get("mean") is None else {"mean": scale * d["mean"], "std": scale * (d.get("std") or 0.0)}


def table4(t4: dict) -> dict:
    """Table 4 rows from the dictionary artifact: stability and coherence in percent (mean ± std over pairs
    / runs), the effective rank as is and, ranked, as a percentage of its bound min(live atoms, atom
    dimension) (ELUDe's atoms and the SAEs' live in spaces of different dimension: raw ranks do not
    compare). ELUDe's output-space row (the paper's apparent reading of its atoms, :mod:`elude.evaluation.dictionary`)
    is a reference and not ranked."""
    from ..baselines import FAMILIES, FAMILY_NAMES

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
    from ..baselines import FAMILIES, FAMILY_NAMES

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


TABLE3_COLUMNS = (("win_rate", "Consensus win rate, % (↑)"),)
TABLE3_FIRST = (("ci95_text", "95% CI"), ("rank", "LLM Rank"), ("comparisons", "comparisons"))


def table3(t3: dict) -> dict:
    """Table 3 from the rank artifact's table3.json: per method its consensus win rate (percent) with the
    bootstrap interval and ordinal rank, in Table 2's order; counts, per-judge agreement and the example."""
    from ..baselines import FAMILY_NAMES

    names = {"backbone": "Backbone only", "elude": "ELUDe", **FAMILY_NAMES}
    rows = {}
    for m, v in t3["methods"].items():
        ci = [pct(x) for x in v["ci95"]] if v["ci95"] else None
        rows[m] = {"method": names.get(m, m), "win_rate": pct(v["win_rate"]), "ci95": ci,
                   "ci95_text": f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "—", "rank": v["rank"],
                   "wins": v["wins"], "comparisons": v["comparisons"]}
    return {"unit": "percent", "rows": rows, **{k: t3[k] for k in ("counts", "judges", "token_seeds", "bootstrap")},
            "units_per_seed": t3["units_per_seed"], "example": t3.get("example")}


TABLE7_COLUMNS = (("ms_subunits", "MS-Score, sub-units (↑)"), ("ms_subunits_pooled", "MS-Score, pooled space (↑)"))
TABLE7_FIRST = (("setting", "cluster setting"), ("ef_text", "effective EF"), ("split_text", "split units"),
                ("random_text", "MS, random partition (same K_u)"), ("units_text", "MS, original units"))


def table7(t7: dict) -> dict:
    """Table 7 from the ablation artifact: one row per clustering (or surgery) variant, the base last
    (shaded, as ELUDe is in Table 2)."""
    import json

    rows = {}
    for name in [n for n in t7["rows"] if n != "base"] + ["base"]:
        r = t7["rows"][name]
        setting = r["cluster"]
        if "surgery" in r:
            setting = {**({"cluster": r["cluster"]} if r["cluster"] else {}), "surgery": r["surgery"]}
        rows[name] = {"method": "ELUDe (base)" if name == "base" else name,
                      "setting": json.dumps(setting) if setting else "base",
                      **{c: r[c] for c, _ in TABLE7_COLUMNS},
                      **{k: r[k] for k in ("ms_random", "ms_units", "expansion_factor", "n_split_units")},
                      "ef_text": _mean_std(r["expansion_factor"]), "split_text": _mean_std(r["n_split_units"], 1),
                      "random_text": _mean_std(r["ms_random"]), "units_text": _mean_std(r["ms_units"]),
                      **({"max_rel_diff": r["max_rel_diff"]} if "max_rel_diff" in r else {})}
    return {"unit": "percent", "rows": rows, "base": t7["base"], "token_seeds": t7["token_seeds"]}


def table7_html(summary: dict) -> str:
    t = summary["table7"]
    worse = [r["method"] for r in t["rows"].values()
             if r["ms_subunits"] and r["ms_random"] and r["ms_subunits"]["mean"] <= r["ms_random"]["mean"]]
    first, note = TABLE7_FIRST, ""
    if any("max_rel_diff" in r for r in t["rows"].values()):  # surgery variants (surgery.merge_siblings)
        first = (("setting", "setting"), *TABLE7_FIRST[1:], ("max_rel_diff", "verify: max relative output difference"))
        note = (" A variant that changes the surgery (merge_siblings) sums the sibling sub-units its thresholds find"
                " too similar: fewer sub-units, the layer unchanged (verify checks it on the evaluation split; the largest"
                " difference over seeds is shown).")
    return (f"<h2>Clustering ablations (Table 7)</h2>"
            f"{ranked_table_html(t['rows'], TABLE7_COLUMNS, unranked=(), first=first)}"
            f"<p>Percent, mean ± std over token seeds {t['token_seeds']}. Each variant changes the base clustering"
            f" (<code>{html_lib.escape(str(t['base']))}</code>) as shown and reruns clustering, surgery, merge and evaluation on"
            " the same cache and top-k; its random control keeps its K_u and assigns upstream dimensions at random."
            + note + (f" Not above its own random control: {html_lib.escape(', '.join(worse))}." if worse else
                      " Every variant scores above its own random control.") + "</p>")


def _mean_std(c, digits: int = 2) -> str:
    return "—" if not c else f"{c['mean']:.{digits}f} ± {c['std']:.{digits}f}"


def studies_summary(tables: dict) -> dict:
    """Tables 3, 4 and 5 (as :func:`table3`, :func:`table4`, :func:`table5` make them) for a summary, with
    where ELUDe is not the best (ELUDe dense for Table 5)."""
    out = {}
    if "table7" in tables:
        out["table7"] = tables["table7"]
    if "table3" in tables:
        out["table3"] = tables["table3"]
        out["table3_elude_not_best"] = column_findings(out["table3"]["rows"], TABLE3_COLUMNS, skip=())
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


PNG_SIGNATURE = b"\x89PNG"


def table3_html(summary: dict, example_images: dict[str, bytes] | None = None) -> str:
    """Table 3, the judges' agreement, and one presentation (Figure 6's layout) where its grids are given."""
    t = summary["table3"]
    c = t["counts"]
    judges = "".join(
        f"<tr><td>{html_lib.escape(j)}</td><td>{fmt(pct(v['parsed_share']))}</td><td>{fmt(pct(v['chose_a_share']))}</td>"
        f"<td>{fmt(pct(v['order_consistency']))}</td><td>{fmt(pct(v['agreement_with_consensus']))}</td>"
        f"<td>{', '.join(f'{html_lib.escape(k)}: {fmt(pct(a))}' for k, a in v['agreement_with'].items()) or '—'}</td></tr>"
        for j, v in t["judges"].items())
    example = ""
    ex = t.get("example")
    if ex and example_images:
        def shown(data: bytes) -> tuple[str, str]:  # a grid (PNG), or a text run's set of texts
            if data.startswith(PNG_SIGNATURE):
                return "grid", f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" width="336">'
            return "set", f'<pre class="ctx" style="max-width:34em">{html_lib.escape(data.decode())}</pre>'

        imgs = "".join(f'<div class="panel"><div>{kind} {side.upper()}: {html_lib.escape(ex[side][0])} unit {ex[side][1]}'
                       f'</div>{body}</div>' for side in ("a", "b") for kind, body in [shown(example_images[side])])
        answers = ", ".join(f"{html_lib.escape(j)}: {a or 'unparseable'}" for j, a in ex["answers"].items())
        example = (f"<h3>One presentation (token seed {ex['seed']})</h3><div class=\"row\">{imgs}</div>"
                   f"<p>Answers: {answers}; consensus: {ex['consensus'] or 'none (dropped)'}.</p>")
    return (f"<h2>LLM Rank: consensus win rates (Table 3)</h2>"
            f"{ranked_table_html(t['rows'], TABLE3_COLUMNS, unranked=(), first=TABLE3_FIRST)}"
            f"{findings_html(summary['table3_elude_not_best'])}"
            f"<p>{len(t['judges'])} judge(s), token seeds {t['token_seeds']}: {c['presentations']} presentations (every unit"
            f" pair in both orders), {c['ties_dropped']} without a majority of all judges (dropped), {c['comparisons']}"
            f" comparisons. Win rate = comparisons won / taken part in, pooled over the seeds; 95% percentile interval"
            f" from {t['bootstrap']} bootstrap resamples of the comparisons. Units that never activate on two evaluation"
            " images are not shown to the judges (the MS-Score rule). 50% is chance: a judge that answers at random, or"
            " always the same letter, puts every method there."
            + (" The demo:&lt;seed&gt; judges are tiny random-init models: their answers are noise, so these rates are"
               " chance by construction, not a finding." if any(j.startswith("demo:") for j in t["judges"]) else "")
            + "</p>"
            "<table><tr><th>judge</th><th>parsed %</th><th>chose A %</th><th>same unit in both orders %</th>"
            f"<th>agrees with consensus %</th><th>agrees with each judge %</th></tr>{judges}</table>{example}")


def studies_html(summary: dict, example_images: dict[str, bytes] | None = None) -> str:
    """Tables 3, 4, 5 and 7, where the run has them."""
    out = table3_html(summary, example_images) if "table3" in summary else ""
    out += table7_html(summary) if "table7" in summary else ""
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
