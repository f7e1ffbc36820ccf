"""The browsable parts of a run's report: one page per unit (``units/<u>.html``: the parent's top-16
evaluation images and each sub-unit's top 9 with its MS-Scores, cluster size and, where the run has them,
its concept label and group), the sortable index of every unit, the K_u and MS-Score plots, and the
concept groups; and why a split helps (the diagnostics' rank correlations, and each split unit's own on its
page). Unit pages are separate files because at paper scale (768 units, ~3,000 sub-units) one
page with every image inline would be over 100 MB; they show evaluation images written once each to
``img/`` (a parent's top images recur as its sub-units', and across units), and open from disk without a
server."""
from __future__ import annotations

import functools
import html as html_lib
from pathlib import Path

import numpy as np

from ..evaluation.diagnostics import DIAGNOSTICS, GAINS, subunits_of
from ..evaluation.scoring import CONTEXTS
from .html import CSS, ImageFile, _grid, bytes_data_uri, figure_png
from .tables import fmt, pct

# Figure 3's parent grid (4x4) and a sub-unit's 3x3 (as the judges see it); as many top texts in a text run
PARENT_IMAGES, SUBUNIT_IMAGES = CONTEXTS["units"], CONTEXTS["subunits"]
PLOTS = ("k_histogram.png", "ms_scores.png")


def _ms(x) -> str:
    return fmt(pct(float(x)))


def label_text(entry: dict | None, with_score: bool = True) -> str:
    """A unit's or sub-unit's label as HTML (empty without labels; "unlabelled" where it has none)."""
    if entry is None:
        return ""
    if entry["label"] is None:
        return '<span class="unl">unlabelled</span>'
    score = f' <span class="score" title="soft-WPMI score">({entry["score"]:.3g})</span>' if with_score and entry["score"] is not None else ""
    return f'<b class="label">{html_lib.escape(entry["label"])}</b>{score}'


def _group_link(labels: dict, g: int | None, up: str) -> str:
    if g is None:
        return "no group (inactive)"
    listed = {x["group"] for x in labels["groups"]["largest"]}
    return f'<a href="{up}report.html#group-{g}">group {g}</a>' if g in listed else f"group {g}"


# --- plots -------------------------------------------------------------------------------------------
def plots(tables: dict) -> dict[str, bytes]:
    """The K_u histogram and the MS-Score distributions (units, sub-units, random control; layer and pooled
    space) as PNG bytes. A Figure without pyplot: no global backend state (the Agg canvas is matplotlib's
    default for savefig)."""
    from matplotlib.figure import Figure

    k = np.asarray(tables["k_per_unit"]).astype(np.int64)
    counts = np.bincount(k)
    ks = np.arange(1, len(counts))
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(ks, counts[1:], color="#6a8")
    ax.bar_label(bars, labels=[str(c) if c else "" for c in counts[1:]], fontsize=8)
    ax.set_xticks(ks)
    ax.set(xlabel="sub-units per unit (K_u)", ylabel="units", title=f"K_u over {len(k)} units")
    out = {"k_histogram.png": figure_png(fig)}

    fig = Figure(figsize=(11, 3.5), layout="constrained")
    for i, (space, suf) in enumerate((("layer output (paper)", "layer"), ("pooled image embedding", "pooled"))):
        ax = fig.add_subplot(1, 2, i + 1)
        series = [(name, color, 100.0 * np.asarray(tables[f"{key}_ms_{suf}"], dtype=np.float64))
                  for name, color, key in (("original units", "#c8a000", "units"), ("ELUDe sub-units", "#d0609a", "subunits"),
                                           ("random partition", "#888888", "random"))]
        series = [(n, c, x[np.isfinite(x)]) for n, c, x in series]  # NaN: never active, constant or one image
        finite = np.concatenate([x for *_, x in series])
        if len(finite) == 0:
            ax.text(0.5, 0.5, "no unit scored (none activates)", ha="center", transform=ax.transAxes)
        else:
            lo, hi = float(finite.min()), float(finite.max())
            bins = np.linspace(lo - 1, hi + 1, 31) if hi - lo < 1e-9 else np.linspace(lo, hi, 31)
            for name, color, x in series:
                if len(x):
                    ax.hist(x, bins=bins, density=True, histtype="step", linewidth=1.6, color=color,
                            label=f"{name} (n={len(x)}, mean {x.mean():.3g})")
            ax.legend(fontsize=8)
        ax.set(xlabel="MS-Score (%)", ylabel="density", title=f"MS-Score, {space}")
    out["ms_scores.png"] = figure_png(fig)
    return out


def plots_html(pngs: dict[str, bytes], k_histogram: dict) -> str:
    counts = ", ".join(f"K={k}: {n}" for k, n in sorted(k_histogram.items(), key=lambda kv: int(kv[0])))
    return (f'<h2 id="k-histogram">Sub-units per unit (K<sub>u</sub>): histogram</h2>'
            f'<img src="{bytes_data_uri(pngs["k_histogram.png"])}" alt="K_u histogram"><p>{counts}</p>'
            f'<h2 id="ms-distributions">MS-Score distributions</h2>'
            f'<p>Per-feature MS-Scores (density; features that never activate are left out).</p>'
            f'<img src="{bytes_data_uri(pngs["ms_scores.png"])}" alt="MS-Score distributions">')


# --- unit index --------------------------------------------------------------------------------------
# Click a header to sort (numbers first descending, text ascending; a second click reverses); empty cells
# (NaN, no label) stay last either way; ties keep unit order.
SORT_JS = """<script>
function sortBy(th) {
  const table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex, num = th.dataset.type === "num";
  const dir = th.dataset.dir ? (th.dataset.dir === "asc" ? -1 : 1) : (num ? -1 : 1);
  for (const h of th.parentNode.cells) delete h.dataset.dir;
  th.dataset.dir = dir === 1 ? "asc" : "desc";
  const rows = Array.from(body.rows), v = r => r.cells[col].dataset.v;
  rows.sort((a, b) => {
    const x = v(a), y = v(b);
    if (x === "" || y === "") return (x === "") - (y === "") || a.dataset.unit - b.dataset.unit;
    return dir * (num ? x - y : x.localeCompare(y)) || a.dataset.unit - b.dataset.unit;
  });
  for (const r of rows) body.appendChild(r);
}
for (const th of document.querySelectorAll("table.sortable th")) th.addEventListener("click", () => sortBy(th));
</script>"""


def _num(x) -> str:
    """A sortable numeric cell: data-v holds the full value ('' for NaN/None), the cell shows fmt()."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return '<td data-v="">n/a</td>'
    return f'<td data-v="{x!r}">{fmt(x)}</td>'


def index_html(tables: dict, layer_meta: dict, labels: dict | None = None) -> str:
    """Every unit, one row: id (link to its page), K, rho, MS-Scores, and the labels where the run has them."""
    units = layer_meta["units"]
    subs = subunits_of(tables["parent"], len(units))
    cols = [("unit", "num"), ("K", "num"), ("rho", "num"), ("unit MS-Score (%)", "num"),
            ("mean sub-unit MS-Score (%)", "num"), ("max sub-unit MS-Score (%)", "num")]
    if labels:
        cols += [("unit label", "text"), ("sub-unit labels", "text")]
    head = "".join(f'<th data-type="{t}" title="click to sort">{name}</th>' for name, t in cols)
    rows = []
    for u, meta in enumerate(units):
        ms = np.asarray(tables["subunits_ms_layer"][subs[u]], dtype=np.float64)
        ms = ms[np.isfinite(ms)]
        cells = (f'<td data-v="{u}"><a href="units/{u}.html">{u}</a></td>' + _num(int(tables["k_per_unit"][u]))
                 + _num(meta["rho"]) + _num(pct(float(tables["units_ms_layer"][u])))
                 + _num(pct(float(ms.mean())) if len(ms) else None) + _num(pct(float(ms.max())) if len(ms) else None))
        if labels:
            own = labels["units"][u]["label"]
            names = [labels["subunits"][s]["label"] for s in subs[u]]
            text = ", ".join(n if n is not None else "—" for n in names) if any(n is not None for n in names) else ""
            cells += (f'<td data-v="{html_lib.escape(own or "")}">{html_lib.escape(own or "—")}</td>'
                      f'<td data-v="{html_lib.escape(text)}">{html_lib.escape(text)}</td>')
        rows.append(f'<tr data-unit="{u}">{cells}</tr>')
    return (f'<h2 id="unit-index">Unit index ({len(units)} units)</h2><p>Every unit of the layer; click a column '
            f'header to sort, a unit to open its page (its top evaluation images and every sub-unit\'s). MS-Scores '
            f'in the layer space (the paper\'s); n/a: the feature never activates, is constant or fires on one image.</p>'
            f'<table id="unit-index-table" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


# --- concept groups ----------------------------------------------------------------------------------
def groups_html(labels: dict | None, tables: dict) -> str:
    """How many distinct concepts the sub-units carry, and the largest groups of sub-units whose activations
    correlate across images (ELUDe splits each neuron on its own, so one concept can recur across neurons)."""
    if not labels:
        return ""
    subs = labels["subunits"]
    named = [s["label"] for s in subs if s["label"] is not None]
    g = labels["groups"]
    parent = tables["parent"]
    rows = ""
    for grp in g["largest"]:
        names = ", ".join(f"{html_lib.escape(n)} ×{c}" for n, c in grp["labels"].items()) or "—"
        members = " ".join(f'<a href="units/{int(parent[s])}.html#s{s}" title="unit {int(parent[s])}">{s}</a>'
                           for s in grp["members"])
        rows += (f'<tr id="group-{grp["group"]}"><td>{grp["group"]}</td><td>{grp["size"]}</td><td>{grp["n_units"]}</td>'
                 f'<td>{fmt(grp["mean_corr"])}</td><td>{names}</td><td>{members}</td></tr>')
    table = (f'<table><tr><th>group</th><th>sub-units</th><th>units</th><th>mean correlation</th><th>labels</th>'
             f'<th>member sub-units (link: its unit\'s page)</th></tr>{rows}</table>' if rows else "<p>No group.</p>")
    return (f'<h2 id="concept-groups">Concept labels and concept groups</h2>'
            f'<p>Labels: CLIP-Dissect (soft-WPMI) with <code>{html_lib.escape(str(labels["model"]))}</code> over '
            f'{labels["n_concepts"]} concepts (<code>{html_lib.escape(str(labels["concepts"]))}</code>), top '
            f'{labels["top_k"]} evaluation images per feature. {len(named)} of {len(subs)} sub-units are labelled, '
            f'with {len(set(named))} distinct concepts; {len({u["label"] for u in labels["units"] if u["label"]})} '
            f'distinct concepts over the {len(labels["units"])} original units.</p>'
            f'<p>Groups: average linkage on the correlation of per-image activations, cut at a mean correlation of '
            f'{g["threshold"]}: {g["n_groups"]} groups over {g["n_active_subunits"]} active sub-units, '
            f'{g["n_multi_unit_groups"]} spanning several units. The largest:</p>{table}')


def labels_summary(labels: dict | None) -> dict | None:
    if not labels:
        return None
    return {"model": labels["model"], "n_concepts": labels["n_concepts"],
            **{k: labels["groups"][k] for k in ("n_groups", "n_active_subunits", "n_multi_unit_groups")}}


# --- why a split helps --------------------------------------------------------------------------------
def why_split_html(diag: dict) -> str:
    """The report's table: Spearman's rank correlation of each per-unit diagnostic with each MS-Score gain
    across the split units (``split_diagnostics`` of summary.json; :mod:`elude.evaluation.diagnostics`)."""
    corr, mean = diag["rank_correlation"], diag["mean"]

    def cell(c: dict) -> str:
        return "<td>—</td>" if c["rho"] is None or c["p"] is None else f'<td>{c["rho"]:+.2f} <small>(p {c["p"]:.2g}, n {c["n"]})</small></td>'

    head = "".join(f"<th>gain {html_lib.escape(text)}</th>" for text in GAINS.values())
    rows = "".join(f"<tr><td>{html_lib.escape(text)}</td><td>{fmt(mean[d])}</td>{''.join(cell(corr[g][d]) for g in GAINS)}</tr>"
                   for d, text in DIAGNOSTICS.items())
    gains = ", ".join(f"{html_lib.escape(text)} {fmt(pct(mean[g]))}" for g, text in GAINS.items())
    return (f'<h2 id="why-split">Why a split helps: rank correlation of each diagnostic with the MS-Score gain across '
            f'{diag["n_split_units"]} split units</h2>'
            f'<p>Per split unit: the gain is the mean MS-Score of its sub-units minus its own (over the parent) or minus '
            f'the mean of its random-partition sub-units (over the random partition). Cells: Spearman\'s rho '
            f'(two-sided p, units where both are defined); — with fewer than 3 units or a constant column. Mean gains '
            f'over the split units, in MS-Score points: {gains}. Each unit\'s own values are on its page.</p>'
            f'<table><tr><th>diagnostic</th><th>mean over split units</th>{head}</tr>{rows}</table>')


def unit_diagnostics_html(u: int, tables: dict) -> str:
    """A split unit's own diagnostics and MS-Score gains (evaluate's ``diag_*`` tables); empty for a unit
    that is not split."""
    if tables["k_per_unit"][u] < 2:
        return ""
    rows = "".join(f"<tr><td>{html_lib.escape(text)}</td><td>{fmt(float(tables[f'diag_{d}'][u]))}</td></tr>"
                   for d, text in DIAGNOSTICS.items())
    rows += "".join(f"<tr><td>MS-Score gain {html_lib.escape(text)} (points)</td><td>{_ms(tables[f'diag_{g}'][u])}</td></tr>"
                    for g, text in GAINS.items())
    return (f'<h2 id="why-split">Why this split helps or not</h2><table class="diagnostics">{rows}</table>'
            f'<p>Across the split units: <a href="../report.html#why-split">which diagnostic predicts the gain</a>.</p>')


# --- unit pages --------------------------------------------------------------------------------------
CONTEXT_WINDOW = 24  # tokens shown on each side of the firing token


def contexts_html(tokens, ids, acts: np.ndarray) -> str:
    """A feature's top texts as token strips (text runs, instead of image grids): each token shaded by the
    feature's activation there (full colour = its largest over these texts; negative: none), the firing token
    (the text's largest) outlined, at most CONTEXT_WINDOW tokens on each side; tokens that are not instances
    (special tokens) grey, padding left out. ``tokens(i)``: text i's tokens as strings; ``acts`` (texts, tokens)."""
    acts = np.asarray(acts, dtype=np.float32)
    finite = np.isfinite(acts)
    top = float(np.nanmax(acts)) if finite.any() else 0.0
    rows = []
    for i, a, ok in zip(ids, acts, finite):
        if not ok.any():
            continue
        toks, fire = tokens(int(i)), int(np.nanargmax(a))
        lo, hi = max(0, fire - CONTEXT_WINDOW), min(int(np.flatnonzero(ok)[-1]) + 1, fire + CONTEXT_WINDOW + 1)
        spans = []
        for t in range(lo, hi):
            text = html_lib.escape(toks[t])
            if not ok[t]:
                spans.append(f'<span class="special">{text}</span>')
                continue
            alpha = max(0.0, float(a[t])) / top if top > 0 else 0.0
            spans.append(f'<span{" class=fire" if t == fire else ""} style="background:rgba(255,140,0,{alpha:.2f})" '
                         f'title="{a[t]:.3g}">{text}</span>')
        rows.append(f'<div class="ctx">{"…" if lo else ""}{"".join(spans)}</div>')
    return f'<div class="contexts">{"".join(rows)}</div>'


def _examples(kind: str, f: int, tables: dict, thumbnail, tokens, n: int, cols: int, cls: str) -> str:
    """Feature ``f`` of ``kind`` (units, subunits): its top texts (text runs) or its top images as a grid."""
    if tokens is not None and f"{kind}_top_contexts" in tables:
        return contexts_html(tokens, tables[f"{kind}_top_images"][f][:n], tables[f"{kind}_top_contexts"][f][:n])
    return _grid(thumbnail, tables[f"{kind}_top_images"][f][:n], cols, cls)


def explanation_text(explanations: dict | None, kind: str, f: int) -> str:
    """A feature's explanation and detection score as a line of its panel (text runs with explain.model)."""
    entry = (explanations or {}).get("kinds", {}).get(kind, {}).get(str(f))
    if not entry:
        return ""
    return (f'<i>“{html_lib.escape(entry["explanation"] or "—")}”</i> (detection {fmt(entry["detection"])})<br>')


def subunit_panel(s: int, c: int, size, tables: dict, thumbnail, n_images: int, cols: int,
                  labels: dict | None = None, up: str = "", tokens=None, explanations: dict | None = None) -> str:
    """One sub-unit: its label (when the run has labels) or explanation, MS-Scores, cluster size and top images
    (texts); ``up``: the path from the page to the report folder."""
    lab = explanation_text(explanations, "subunits", s)
    if labels:
        entry = labels["subunits"][s]
        lab = f'{label_text(entry)} · {_group_link(labels, entry["group"], up)}<br>'
    return (f'<div class="panel" id="s{s}"><div>{lab}sub-unit {s} (cluster {c}, {fmt(size)} instances)<br>'
            f'MS {_ms(tables["subunits_ms_layer"][s])} / pooled {_ms(tables["subunits_ms_pooled"][s])}</div>'
            f'{_examples("subunits", s, tables, thumbnail, tokens, n_images, cols, "sub")}</div>')


def parent_panel(u: int, tables: dict, thumbnail, labels: dict | None = None, tokens=None,
                 explanations: dict | None = None) -> str:
    lab = f"{label_text(labels['units'][u])}<br>" if labels else explanation_text(explanations, "units", u)
    return (f'<div class="panel parent"><div>{lab}parent unit {u}<br>MS {_ms(tables["units_ms_layer"][u])} / pooled '
            f'{_ms(tables["units_ms_pooled"][u])}</div>'
            f'{_examples("units", u, tables, thumbnail, tokens, PARENT_IMAGES, 4, "par")}</div>')


def unit_page(u: int, subs: np.ndarray, run_name: str, tables: dict, layer_meta: dict, thumbnail,
              labels: dict | None = None, tokens=None, explanations: dict | None = None) -> str:
    n = len(layer_meta["units"])
    meta = layer_meta["units"][u]
    sizes = meta.get("cluster_sizes") or []
    nav = " · ".join(['<a href="../report.html#unit-index">index</a>']
                     + ([f'<a href="{u - 1}.html">← unit {u - 1}</a>'] if u > 0 else [])
                     + ([f'<a href="{u + 1}.html">unit {u + 1} →</a>'] if u + 1 < n else []))
    alts = ""
    if labels and labels["units"][u]["alternatives"]:
        alts = "<p>Unit label candidates: " + ", ".join(
            f"{html_lib.escape(a)} ({b:.3g})" for a, b in labels["units"][u]["alternatives"]) + "</p>"
    panels = "".join(subunit_panel(int(s), c, sizes[c] if c < len(sizes) else None, tables, thumbnail,
                                   SUBUNIT_IMAGES, 3, labels, "../", tokens, explanations) for c, s in enumerate(subs))
    what = "texts" if tokens is not None and "units_top_contexts" in tables else "images"
    facts = (f'K = {int(tables["k_per_unit"][u])}, rho = {meta["rho"]}, {meta["noise"]} of its top {meta["top_k"]} '
             f'instances left as noise' + ("; never active on the probe split" if meta.get("never_active") else "")
             + (f"; sibling merge: K {meta['k_before_merge']} → {meta['k']}, clusters per sub-unit {meta['clusters']}"
                if meta.get("k_before_merge", meta["k"]) != meta["k"] else ""))
    title = f"Unit {u} — ELUDe run {html_lib.escape(run_name)}"
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head><body>'
            f'<nav>{nav}</nav><h1>Unit {u} of layer <code>{html_lib.escape(layer_meta["layer"])}</code></h1>'
            f'<p>{facts}.</p>{alts}{unit_diagnostics_html(u, tables)}<p>Evaluation split: the parent\'s top '
            f'{PARENT_IMAGES} {what}, each sub-unit\'s top {SUBUNIT_IMAGES}; MS-Scores in %, layer space / pooled space.'
            + (" Each text is shaded by the feature's activation at every token (full colour: its largest over these"
               " texts), the firing token outlined; grey: special tokens." if what == "texts" else "") + '</p>'
            f'<div class="row">{parent_panel(u, tables, thumbnail, labels, tokens, explanations)}{panels}</div>'
            f'<nav>{nav}</nav></body></html>')


def image_files(folder: Path, thumbnail, prefix: str):
    """A ``thumbnail`` for pages that link images: evaluation image i written once to ``folder`` (JPEG for
    photos, PNG for small or grey ones, which JPEG would blur) and shown from ``prefix`` + its name."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)

    @functools.lru_cache(maxsize=None)
    def image(i: int) -> ImageFile | None:
        img = thumbnail(i)
        if img is None:
            return None
        a = np.asarray(img, dtype=np.uint8)
        photo = a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 32
        name = f"{i}.{'jpg' if photo else 'png'}"
        Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a).save(folder / name, quality=90)
        return ImageFile(prefix + name, *a.shape[:2])

    return image


def write_unit_pages(folder: Path, run_name: str, tables: dict, layer_meta: dict, thumbnail,
                     labels: dict | None = None, tokens=None, explanations: dict | None = None) -> int:
    """``folder/units/<u>.html`` for every unit, their images in ``folder/img/`` (text runs: ``tokens(i)``, text
    i's tokens, shows the top texts instead); returns how many pages."""
    pages = folder / "units"
    pages.mkdir(parents=True, exist_ok=True)
    image = image_files(folder / "img", thumbnail, "../img/")
    n = len(layer_meta["units"])
    for u, subs in enumerate(subunits_of(tables["parent"], n)):
        (pages / f"{u}.html").write_text(unit_page(u, subs, run_name, tables, layer_meta, image, labels, tokens,
                                                   explanations))
    return n
