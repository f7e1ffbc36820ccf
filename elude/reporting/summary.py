"""The run summary (summary.json) and the HTML report: report.html (numbers, Table 2 beside the baselines,
the studies' tables, K_u and MS-Score plots, the concept groups, the sortable index of every unit, and the
paper's Figure 3 layout: a parent's top-16 evaluation images next to each sub-unit's top 4) beside one page
per unit (:mod:`elude.reporting.pages`)."""
from __future__ import annotations

import html as html_lib
import json

import numpy as np

from .ef_tables import figure2, figure2_png, table6_ef_html
from .html import CSS
from .study_tables import studies_html, studies_summary, table3, table4, table5, table7
from .tables import (
    FAIR_COLUMNS,
    NOT_SPARSE_L0,
    NOT_SPARSE_MARK,
    column_findings,
    fair_columns,
    findings_html,
    fmt,
    pct,
    ranked_table_html,
)

TABLE2_COLUMNS = (("llm_rank", "LLM Rank (↓)"), ("ms_score", "MS-Score (↑)"), ("ms_score_pooled", "MS-Score, pooled space (↑)"),
                  ("accuracy", "Accuracy (↑)"), ("r2", "R² (↑)"))
# a language model's faithfulness, in nats per predicted token (SAEBench's): shown where the run has them
LM_COLUMNS = (("lm_loss", "Next-token loss (↓)"), ("lm_kl", "KL to the original (↓)"))
EXPLAIN_COLUMNS = (("detection", "Explanation detection (AUROC, ↑)"),)  # a text run with explain.model
ENCODER_COLUMNS = (("output_cosine", "Output cosine (↑)"),)  # an encoder: its own output with the method in place
LOWER_IS_BETTER = {"llm_rank", "lm_loss", "lm_kl"}


def table2_columns(rows: dict[str, dict]) -> tuple:
    """Table 2's ranked columns: the next-token ones only for a language model."""
    return TABLE2_COLUMNS + (LM_COLUMNS if any(r.get("lm_loss") is not None for r in rows.values()) else ()) + (
        ENCODER_COLUMNS if any(r.get("output_cosine") is not None for r in rows.values()) else ()) + (
        EXPLAIN_COLUMNS if any(r.get("detection") is not None for r in rows.values()) else ())


def lm_columns(next_token: dict | None, name: str) -> dict:
    """A row's next-token loss and KL (nats) from a metrics' ``next_token`` (None where not a language model)."""
    if not next_token:
        return {}
    return {"lm_loss": next_token["ce"][name], "lm_kl": next_token["kl"][name]}
def table2(metrics: dict, baselines: dict[str, dict]) -> dict:
    """Table 2 of one token dataset: rows backbone only, each baseline family (paper order), ELUDe; columns
    MS-Score (layer and pooled space), accuracy, R^2, all in percent, and the LLM Rank (filled by the judges
    stage, a later issue; null until then). ``baselines``: family -> its baseline_eval metrics."""
    from ..baselines import FAMILIES, FAMILY_NAMES

    ms, n_units = metrics["ms_score"], metrics["n_units"]
    features = metrics.get("features", {})
    rows = {"backbone": {"method": "Backbone only", "ms_score": pct(ms["units_mean"]),
                         "ms_score_pooled": pct(ms["units_mean_pooled"]),
                         "accuracy": pct(metrics["accuracy"]["original"]), "r2": 100.0, "llm_rank": None,
                         **lm_columns(metrics.get("next_token"), "original"),
                         **({"output_cosine": 1.0} if metrics.get("output_cosine") is not None else {}),
                         **fair_columns(features.get("units"), n_units)}}
    for family in [f for f in FAMILIES if f in baselines]:
        b = baselines[family]
        fair = fair_columns(b.get("features"), n_units)
        not_sparse = b["l0_eval"] > NOT_SPARSE_L0 * b["n_features"]
        rows[family] = {"method": FAMILY_NAMES[family] + (NOT_SPARSE_MARK if not_sparse else ""),
                        "ms_score": pct(b["ms_score"]["features_mean"]),
                        "ms_score_pooled": pct(b["ms_score"]["features_mean_pooled"]),
                        "accuracy": pct(b["accuracy"]["reconstructed"]), "r2": pct(b["r2"]), "llm_rank": None,
                        **lm_columns(b.get("next_token"), "reconstructed"),
                        **({"output_cosine": b["output_cosine"]} if b.get("output_cosine") is not None else {}),
                        "n_features": b["n_features"], "n_scored_features": b["n_scored_features"],
                        "l0_eval": b["l0_eval"], "hp": b["hp"], "ef": b["n_features"] / n_units,
                        "not_sparse": not_sparse, **fair}
    rows["elude"] = {"method": "ELUDe", "ms_score": pct(ms["subunits_mean"]),
                     "ms_score_pooled": pct(ms["subunits_mean_pooled"]),
                     "accuracy": pct(metrics["accuracy"]["disentangled"]), "r2": pct(metrics["r2"]),
                     **lm_columns(metrics.get("next_token"), "disentangled"),
                     **({"output_cosine": metrics["output_cosine"]} if metrics.get("output_cosine") is not None else {}),
                     "llm_rank": None, "n_features": metrics["n_subunits"], "ef": metrics["expansion_factor"],
                     **fair_columns(features.get("subunits"), n_units)}
    return {"unit": "percent", "rows": rows}


def summary(run_name: str, verify: dict, metrics: dict, layer_meta: dict, artifacts: dict[str, str],
            baselines: dict[str, dict] | None = None, studies: dict | None = None, labels: dict | None = None,
            explanations: dict | None = None) -> dict:
    """The run's headline numbers. MS-Scores are percentages, as in the paper. ``studies``: the
    dictionary and efficiency artifacts' tables (``table4``, ``table5``), where the run has them;
    ``labels``: the labels artifact's labels.json, where the run has one."""
    from .pages import labels_summary

    units = layer_meta["units"]
    split = [u for u in units if u["k"] > 1]
    studies = studies or {}
    tables = {name: make(studies[name]) for name, make in (("table3", table3), ("table4", table4), ("table5", table5),
                                                           ("table7", table7)) if name in studies}
    t2 = table2(metrics, baselines or {})
    for key, row in t2["rows"].items():  # the LLM Rank column (pooled over token seeds)
        row["llm_rank"] = tables["table3"]["rows"].get(key, {}).get("rank") if "table3" in tables else None
    if explanations:  # a text run's explanation detection per method: its features' mean AUROC
        kind = {"backbone": "units", "elude": "subunits"}
        for key, row in t2["rows"].items():
            row["detection"] = explanations["detection_mean"].get(kind.get(key, key))
    return {**studies_summary(tables),
        "run_name": run_name,
        "lossless": {k: verify.get(k) for k in ("max_abs_diff", "max_rel_diff", "r2", "prediction_agreement",
                                                 "next_token_agreement", "lossless")},
        "accuracy": metrics["accuracy"],
        "ms_score": {k: pct(v) for k, v in metrics["ms_score"].items()},
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
        "split_diagnostics": metrics["split_diagnostics"],  # why a split helps (elude.evaluation.diagnostics)
        **({"sibling_merge": sibling_merge_summary(units, metrics["n_units"])} if "k_before_merge" in units[0] else {}),
        "table2": t2,
        "table2_elude_not_best": table2_findings(t2["rows"]),
        **({"table6_ef": studies["table6_ef"]} if "table6_ef" in studies else {}),
        "figure2": figure2(t2["rows"], studies.get("table6_ef")),
        **({"labels": labels_summary(labels)} if labels else {}),
        **({"explanations": {k: v for k, v in explanations.items() if k != "kinds"}} if explanations else {}),
        "artifacts": artifacts,
    }


def explanations_html(ex: dict | None) -> str:
    """The explanations' detection scores (text runs with explain.model), where the run has them."""
    if not ex:
        return ""
    return (f'<h2 id="explanations">Explanations (detection)</h2><p>An LLM ({html_lib.escape(str(ex["model"]))}) explained '
            f'each feature from its top {ex["contexts"]} texts, then told, from the explanation alone, {ex["positives"]} '
            f'other top texts from {ex["negatives"]} random ones; the detection score is the AUROC (0.5: chance). '
            "A demo model's explanations are noise by construction. Each unit page shows the explanations.</p>"
            f'<table><tr><th>features</th><th>explained</th><th>mean detection AUROC</th></tr>'
            + "".join(f'<tr><td>{html_lib.escape({"units": "original units", "subunits": "ELUDe sub-units"}.get(k, k))}</td>'
                      f'<td>{n}</td><td>{fmt(ex["detection_mean"][k])}</td></tr>' for k, n in ex["n_explained"].items())
            + "</table>")


def sibling_merge_summary(units: list[dict], n_units: int) -> dict:
    """With surgery.merge_siblings: sub-units and effective EF before the merge, and the units it merged."""
    before = sum(u["k_before_merge"] for u in units)
    return {"subunits_before": before, "expansion_factor_before": before / n_units,
            "units_merged": sum(u["k"] < u["k_before_merge"] for u in units)}


def table2_html(rows: dict[str, dict]) -> str:
    return ranked_table_html(rows, table2_columns(rows), LOWER_IS_BETTER, plain=FAIR_COLUMNS)


def table2_findings(rows: dict[str, dict]) -> list[str]:
    return column_findings(rows, table2_columns(rows), LOWER_IS_BETTER)


TABLE2_NOTE = ("<p>Percent. MS-Score (eq. 7) of every feature that activates on the evaluation split (ELUDe: sub-units;"
               " backbone: the original units); accuracy with the method's reconstruction in place of the layer output;"
               " R² of the reconstructed layer output. Baselines are trained on the same probe instances and scored by"
               " the same code; each family's hyperparameters are the eq. 9 choice of its sweep. Bold: best, underlined:"
               " second best (the backbone-only row is not ranked). LLM Rank (1 = best): order of the consensus win rates"
               " of Table 3, pooled over the token seeds; — where the run has no judges (judges.models). Not ranked, what the"
               " numbers rest on: a method's features; those live (that fire, > 0, on at least one probe instance: the"
               " instances ELUDe's top-k and the baselines' training read); the live expansion factor (live features /"
               " units); the evaluation L0 (features firing per evaluation instance); the share of features scored (an"
               f" MS-Score needs a feature that fires on the evaluation split). {NOT_SPARSE_MARK.strip()}: not sparse, a"
               f" baseline whose evaluation L0 is above {NOT_SPARSE_L0:.0%} of its features. A language model also gets,"
               " in nats per predicted token over every real next token of the evaluation texts, the next-token loss"
               " (cross-entropy) with the method in place of the layer (the backbone row: the original model's) and the"
               " KL divergence of its next-token distribution from the original's; an encoder (per-token hidden states as"
               " its output) the mean cosine similarity of its output to the original's; with explain.model, the mean detection"
               " AUROC of its features' explanations (the backbone row: the original units').</p>")




def html(summary: dict, metrics: dict, tables: dict, layer_meta: dict, thumbnail, n_examples: int,
         example_images: dict[str, bytes] | None = None, labels: dict | None = None,
         plots: dict[str, bytes] | None = None) -> str:
    """``thumbnail(i)``: evaluation example i as a uint8 image array, or None; ``example_images``: the
    judged example's two grids (PNG bytes), where the run has LLM Rank; ``labels``: labels.json, where the
    run has concept labels; ``plots``: :func:`elude.reporting.pages.plots` (made here when not given). Links to
    the unit pages ``units/<u>.html`` that :func:`elude.reporting.pages.write_unit_pages` writes beside it."""
    from . import pages

    ms = summary["ms_score"]
    lossless = summary["lossless"]
    rows = "".join(f"<tr><td>{html_lib.escape(k)}</td><td>{fmt(v)}</td></tr>" for k, v in [
        ("max |output difference|", lossless["max_abs_diff"]), ("max relative output difference", lossless["max_rel_diff"]),
        ("R² at the layer (pooled per-feature variance)", lossless["r2"]),
        ("top-1 prediction agreement", lossless["prediction_agreement"]),
        *([("most likely next token: agreement", lossless["next_token_agreement"])]
          if lossless.get("next_token_agreement") is not None else []),
        ("accuracy, original layer", summary["accuracy"]["original"]),
        ("accuracy, disentangled layer", summary["accuracy"]["disentangled"]),
        ("units", summary["n_units"]), ("sub-units", summary["n_subunits"]), ("units split (K ≥ 2)", summary["n_split_units"]),
        ("effective expansion factor", summary["expansion_factor"]),
        ("top-k instances left as noise by HDBSCAN (mean over units)", summary["clustering"]["noise_fraction_mean"]),
        ("upstream dimensions assigned exclusively (mean over split units)",
         summary["clustering"]["exclusive_fraction_mean_split_units"])])
    if merged := summary.get("sibling_merge"):
        rows += "".join(f"<tr><td>{k}</td><td>{fmt(v)}</td></tr>" for k, v in [
            ("sub-units before the sibling merge (surgery.merge_siblings)", merged["subunits_before"]),
            ("effective expansion factor before the sibling merge", merged["expansion_factor_before"]),
            ("units whose sibling sub-units were merged", merged["units_merged"])])
    if faults := summary.get("data_faults"):
        rows += "".join(f"<tr><td>{k}</td><td>{html_lib.escape(str(v))}</td></tr>" for k, v in [
            ("probe images skipped (did not decode; data.on_bad_image: skip)", len(faults["probe_images_skipped"])),
            ("evaluation images skipped (did not decode)", len(faults["eval_images_skipped"])),
            ("top-k per unit (requested → used; clamped to the cached instances)", f"{faults['k_requested']} → {faults['k']}"),
            ("units that never activate on the probe split (left unchanged, K = 1)",
             ", ".join(map(str, faults["never_active_units"])) or "none")])
    ms_rows = ""
    pooled = metrics.get("pooled_space") or "pooled pre-logit image embedding"
    for label, key in (("all", ""), ("split units only", "split_")):
        for space, suf in (("layer output (paper, B.2)", ""), (pooled, "_pooled")):
            ms_rows += (f"<tr><td>{label}</td><td>{space}</td><td>{fmt(ms[f'{key}units_mean{suf}'])}</td>"
                        f"<td>{fmt(ms[f'{key}subunits_mean{suf}'])}</td><td>{fmt(ms[f'{key}random_mean{suf}'])}</td></tr>")
    plots = plots if plots is not None else {**pages.plots(tables), "figure2.png": figure2_png(summary["figure2"])}
    k_per_unit = tables["k_per_unit"]
    subs_of = pages.subunits_of(tables["parent"], len(k_per_unit))
    examples = ""
    for u in sorted(range(len(k_per_unit)), key=lambda u: (-k_per_unit[u], u))[:n_examples]:
        if k_per_unit[u] < 2:
            break
        meta = layer_meta["units"][u]
        panels = "".join(pages.subunit_panel(int(s), c, meta["cluster_sizes"][c], tables, thumbnail, 4, 2, labels)
                         for c, s in enumerate(subs_of[u]))
        examples += (f'<h3><a href="units/{u}.html">Unit {u}</a>: K = {k_per_unit[u]}, rho = {meta["rho"]}, '
                     f'noise = {meta["noise"]}</h3><div class="row">{pages.parent_panel(u, tables, thumbnail, labels)}'
                     f'{panels}</div>')
    artifacts = "".join(f"<tr><td>{s}</td><td><code>{html_lib.escape(p)}</code></td></tr>"
                        for s, p in summary["artifacts"].items())
    details = "".join(
        f"<tr><td>{html_lib.escape(r['method'])}</td><td><code>{html_lib.escape(json.dumps(r['hp']))}</code></td></tr>"
        for k, r in summary["table2"]["rows"].items() if "hp" in r)
    details = (f"<table><tr><th>baseline</th><th>selected hyperparameters (eq. 9)</th></tr>{details}</table>" if details
               else "<p>No baseline family was run (baselines.families is empty).</p>")
    sections = [("lossless", "Lossless check"), ("table2", "Table 2")] + (
        [("table6-ef", "Table 6 (EF axis)")] if summary.get("table6_ef") else []) + [
        ("figure2", "Figure 2"), ("ms-score", "MS-Score"), ("why-split", "Why a split helps"),
                ("k-histogram", "K<sub>u</sub> histogram"), ("ms-distributions", "MS-Score distributions")] + (
        [("concept-groups", "Concept groups")] if labels else []) + (
        [("explanations", "Explanations")] if summary.get("explanations") else []) + [("unit-index", "Unit index"),
                                                                      ("most-split", "Most-split units")]
    toc = " · ".join(f'<a href="#{a}">{t}</a>' for a, t in sections)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ELUDe run {html_lib.escape(summary['run_name'])}</title>
<style>{CSS}</style></head><body>
<h1>ELUDe run “{html_lib.escape(summary['run_name'])}” — layer <code>{html_lib.escape(layer_meta['layer'])}</code></h1>
<nav>{toc}</nav>
<h2 id="lossless">Lossless check and model accuracy</h2><table>{rows}</table>
<h2 id="table2">Interpretability vs. faithfulness (Table 2)</h2>{table2_html(summary['table2']['rows'])}{findings_html(summary['table2_elude_not_best'])}{TABLE2_NOTE}{details}
{studies_html(summary, example_images)}
{table6_ef_html(summary.get("table6_ef"), plots.get("figure2.png"))}
<h2 id="ms-score">MS-Score (%, eq. 7; top {summary['ms_top_k']} evaluation images per unit)</h2>
<p>Higher is more monosemantic. “Random” is Table 7's control: the same K<sub>u</sub> per unit, upstream
dimensions assigned to sub-units at random. The paper's space embeds each image at the unit's argmax token in the
layer's own output; the pooled space uses the model's pre-logit image embedding. Reported as measured.</p>
<table><tr><th>units</th><th>embedding space</th><th>original units</th><th>ELUDe sub-units</th><th>random partition</th></tr>{ms_rows}</table>
{explanations_html(summary.get("explanations"))}
{pages.why_split_html(summary['split_diagnostics'])}
{pages.plots_html(plots, summary['k_histogram'])}
{pages.groups_html(labels, tables)}
{pages.index_html(tables, layer_meta, labels)}
<h2 id="most-split">Most-split units (Figure 3 layout: parent top-16, sub-unit top-4; evaluation split)</h2>{examples or '<p>No unit was split.</p>'}
<h2>Artifacts</h2><table>{artifacts}</table>{pages.SORT_JS}</body></html>"""


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
        rows[key] = {"method": row["method"],
                     **{col: stats.get(f"table2.rows.{key}.{col}")
                        for col, _ in TABLE2_COLUMNS + LM_COLUMNS + ENCODER_COLUMNS + EXPLAIN_COLUMNS + FAIR_COLUMNS},
                     "ef": stats.get(f"table2.rows.{key}.ef"),
                     "llm_rank": row["llm_rank"]}  # one rank pooled over the seeds (Table 3), not a mean
    t6 = summaries[0].get("table6_ef")  # over every seed already, on the first seed's report
    return {"run_name": run_name, "token_seeds": list(seeds), "n_seeds": len(seeds),
            "lossless_all_seeds": all(s["lossless"]["lossless"] for s in summaries), "metrics": stats,
            "table2": {"unit": "percent", "rows": rows}, "table2_elude_not_best": table2_findings(rows),
            **studies_summary({k: summaries[0][k] for k in ("table3", "table4", "table5", "table7") if k in summaries[0]}),
            **({"table6_ef": t6} if t6 else {}), "figure2": figure2(rows, t6),
            "per_seed_reports": [s["artifacts"]["report"] for s in summaries]}


def aggregate_html(agg: dict) -> str:
    rows = "".join(f"<tr><td>{html_lib.escape(k)}</td><td>{fmt(v['mean'])}</td><td>{fmt(v['std'])}</td>"
                   f"<td>{', '.join(fmt(x) for x in v['per_seed'])}</td></tr>" for k, v in agg["metrics"].items())
    seeds = ", ".join(map(str, agg["token_seeds"]))
    links = "".join(f'<li><a href="seed-{s}/report.html">seed {s}</a></li>' for s in agg["token_seeds"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ELUDe run {html_lib.escape(agg['run_name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px}}</style>
</head><body><h1>ELUDe run “{html_lib.escape(agg['run_name'])}”: {agg['n_seeds']} seeded token datasets ({seeds})</h1>
<p>Lossless on every seed: {agg['lossless_all_seeds']}. Mean ± sample standard deviation across seeds
(Section 4.1, E.8); MS-Scores in percent.</p><ul>{links}</ul>
<h2>Interpretability vs. faithfulness (Table 2), mean ± std over seeds</h2>{table2_html(agg['table2']['rows'])}{findings_html(agg['table2_elude_not_best'])}{TABLE2_NOTE}
{studies_html(agg).replace("</h2>", " — first token seed</h2>")}
{table6_ef_html(agg.get("table6_ef"), figure2_png(agg["figure2"]))}
<h2>Every number</h2>
<table><tr><th>metric</th><th>mean</th><th>std</th><th>per seed</th></tr>{rows}</table></body></html>"""
