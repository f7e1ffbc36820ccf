"""The report as a researcher reads it (issue 13): report.html with the plots, the sortable unit index and
the concept groups, one page per unit beside it; rendered from a hand-made run with labels, and the tiny
workflow's report opened from disk in headless Chromium (screenshot, sections, links, sorting by click)."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from workflow_helpers import snakemake, write_config

from elude.evaluation import diagnostics
from elude.pipeline.stages.reporting import publish_run
from elude.reporting import pages as report_pages
from elude.reporting import summary as report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# --- rendering, on a hand-made run ------------------------------------------------------------------
def _run(k=(2, 1, 3), nan_units=(), labels=True):
    """Tables, layer metadata, metrics and (optionally) labels.json of a small run: units with ``k``
    sub-units each; ``nan_units``: units (and their sub-units) that never activate."""
    parent = np.repeat(np.arange(len(k)), k)
    n, s = len(k), len(parent)
    ms_u, ms_s = np.linspace(0.5, 0.9, n), np.linspace(0.6, 0.99, s)
    for u in nan_units:
        ms_u[u] = np.nan
        ms_s[parent == u] = np.nan
    tables = {"parent": parent, "k_per_unit": np.array(k), "units_ms_layer": ms_u, "units_ms_pooled": ms_u,
              "subunits_ms_layer": ms_s, "subunits_ms_pooled": ms_s, "random_ms_layer": ms_s - 0.1,
              "random_ms_pooled": ms_s - 0.1, "units_top_images": np.arange(n * 20).reshape(n, 20) % 30,
              "subunits_top_images": np.arange(s * 20).reshape(s, 20) % 30}
    meta = {"layer": "blocks.1.mlp.fc2", "units": [
        {"k": kk, "rho": 0.5 if kk > 1 else None, "noise": 3, "top_k": 20, "cluster_sizes": [5] * kk if kk > 1 else [],
         "exclusive_fraction": 0.25, "never_active": u in nan_units} for u, kk in enumerate(k)]}
    diag = diagnostics.unit_diagnostics(tables, meta["units"], np.linspace(-0.5, 0.5, n))
    tables.update({f"diag_{name}": v for name, v in diag.items()})
    hist = {str(kk): int(c) for kk, c in zip(*np.unique(k, return_counts=True))}
    ms = {f"{p}{w}_mean{suf}": 0.8 for p in ("", "split_") for w in ("units", "subunits", "random") for suf in ("", "_pooled")}
    metrics = {"accuracy": {"original": 0.9, "disentangled": 0.9}, "ms_score": ms, "ms_top_k": 20, "n_units": n,
               "n_subunits": s, "n_split_units": sum(kk > 1 for kk in k), "expansion_factor": s / n, "k_histogram": hist,
               "r2": 1.0, "split_diagnostics": diagnostics.rank_correlations(diag, np.array(k))}
    verify = {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "r2": 1.0, "prediction_agreement": 1.0, "lossless": True}
    lab = None
    if labels:
        names = ["cat", "dog", None, "cat", "<wheel>", "dog"][:s]
        lab = {"model": "demo:0", "concepts": "default", "n_concepts": 40, "top_k": 10,
               "units": [{"unit": u, "label": ["pets", None, "cars"][u % 3], "score": 0.5,
                          "alternatives": [["pets", 0.5], ["fur", 0.25]]} for u in range(n)],
               "subunits": [{"subunit": i, "unit": int(parent[i]), "label": names[i % len(names)],
                             "score": None if names[i % len(names)] is None else 0.4, "alternatives": [],
                             "group": None if names[i % len(names)] is None else i % 2} for i in range(s)],
               "groups": {"threshold": 0.6, "n_active_subunits": s - 1, "n_groups": 2, "n_multi_unit_groups": 1,
                          "largest": [{"group": 0, "size": 3, "n_units": 2, "members": [0, 3, 5],
                                       "labels": {"cat": 2, "dog": 1}, "mean_corr": 0.7}]}}
    return tables, meta, metrics, verify, lab


def _render(tmp_path, **kw):
    tables, meta, metrics, verify, lab = _run(**kw)
    summary = report.summary("hand", verify, metrics, meta, {"report": "results/report/x"}, labels=lab)
    thumb = lambda i: np.full((8, 8), 8 * i, np.uint8)  # noqa: E731
    page = report.html(summary, metrics, tables, meta, thumb, 2, labels=lab)
    report_pages.write_unit_pages(tmp_path, "hand", tables, meta, thumb, lab)
    return summary, page, tables, lab


def test_report_renders_labels_concept_groups_and_a_page_per_unit(tmp_path):
    summary, page, tables, lab = _render(tmp_path)
    assert summary["labels"] == {"model": "demo:0", "n_concepts": 40, "n_groups": 2, "n_active_subunits": 5,
                                 "n_multi_unit_groups": 1}
    # the index: one row per unit, its labels, a link to its page; label text escaped
    rows = re.findall(r'<tr data-unit="(\d+)">(.*?)</tr>', page)
    assert [int(u) for u, _ in rows] == [0, 1, 2]
    assert 'href="units/2.html"' in rows[2][1] and ">cars<" in rows[2][1] and "cat, &lt;wheel&gt;, dog" in rows[2][1]
    assert "<wheel>" not in page
    # concept groups: distinct concepts vs sub-units, the largest group's members linking to their units' pages
    groups = page[page.index('id="concept-groups"'):page.index('id="unit-index"')]
    assert "5 of 6 sub-units are labelled, with 3 distinct concepts" in groups
    assert '<tr id="group-0">' in groups and "cat ×2, dog ×1" in groups
    assert all(f'href="units/{u}.html#s{s}"' in groups for s, u in ((0, 0), (3, 2), (5, 2)))
    # the most-split examples carry the labels above each sub-unit's images
    examples = page[page.index('id="most-split"'):]
    assert '<a href="units/2.html">Unit 2</a>' in examples and 'id="s4"' in examples and "&lt;wheel&gt;" in examples
    # a page per unit: the parent's images, each sub-unit's 3x3 with label, score and group, navigation
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == ["0.html", "1.html", "2.html"]
    u2 = (tmp_path / "units/2.html").read_text()
    assert '<a href="1.html">' in u2 and "3.html" not in u2 and 'href="../report.html#unit-index"' in u2
    assert [f's{s}"' in u2 for s in range(6)] == [False] * 3 + [True] * 3
    assert u2.count("<img") == 16 + 3 * 9 and "cars" in u2 and "fur (0.25)" in u2
    # images are files written once each (a parent's top images recur as its sub-units'), not inlined
    srcs = re.findall(r'<img src="([^"]+)"', u2)
    assert all(src.startswith("../img/") and (tmp_path / "units" / src).resolve().is_file() for src in srcs)
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == sorted(f"{i}.png" for i in range(30))
    assert '<a href="../report.html#group-0">group 0</a>' in u2 and "group 1" in u2  # group 1 is not listed
    u1 = (tmp_path / "units/1.html").read_text()
    assert "unlabelled" in u1 and "no group (inactive)" in u1
    # why a split helps: the rank correlations in the summary and the report, each split unit's own on its page
    diag = summary["split_diagnostics"]
    assert diag["n_split_units"] == 2 and set(diag["rank_correlation"]) == set(diagnostics.GAINS)
    assert diag["rank_correlation"]["gain_parent_layer"]["top_overlap"] == {"rho": None, "p": None, "n": 2}
    assert "across 2 split units</h2>" in page and 'href="#why-split"' in page
    assert 'id="why-split"' in u2 and "Why this split helps" in u2 and 'id="why-split"' not in u1
    cells = dict(re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td></tr>", u2[u2.index('id="why-split"'):]))
    assert cells[diagnostics.DIAGNOSTICS["exclusive_fraction"]] == "0.25"
    assert cells[diagnostics.DIAGNOSTICS["noise_share"]] == "0.15"
    assert cells[diagnostics.DIAGNOSTICS["activation_correlation"]] == "0.5"
    assert float(cells["MS-Score gain over the parent, layer space (points)"]) == pytest.approx(
        100 * (tables["subunits_ms_layer"][3:].mean() - tables["units_ms_layer"][2]), abs=1e-3)


def test_report_without_labels_has_no_label_columns_or_groups(tmp_path):
    summary, page, *_ = _render(tmp_path, labels=False)
    assert "labels" not in summary and 'id="concept-groups"' not in page and "unit label" not in page
    assert "unlabelled" not in (tmp_path / "units/0.html").read_text()


def test_plots_handle_nans_and_a_run_where_no_unit_split(tmp_path):
    for k, nan in (((1, 1, 1), ()), ((1, 1), (0, 1)), ((3, 2), (1,))):
        tables = _run(k=k, nan_units=nan, labels=False)[0]
        pngs = report_pages.plots(tables)
        assert set(pngs) == set(report_pages.PLOTS) and all(b.startswith(b"\x89PNG") for b in pngs.values())
    assert report_pages.plots(tables) == pngs  # deterministic: report artifacts are checksummed
    summary, page, *_ = _render(tmp_path, k=(1, 1), nan_units=(0,), labels=False)
    assert "No unit was split." in page and 'data-v="">n/a</td>' in page


def test_publish_run_replaces_the_unit_pages_and_drops_folders_a_new_report_lacks(tmp_path):
    def fake_report(name, pages):
        d = tmp_path / name
        (d / "units").mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"report": name}))
        (d / "report.html").write_text(name)
        for p in pages:
            (d / "units" / p).write_text(name)
        return d

    run = tmp_path / "runs/r"
    publish_run(fake_report("a", ["0.html", "1.html"]), run)
    publish_run(fake_report("b", ["0.html"]), run)
    assert [p.name for p in (run / "units").iterdir()] == ["0.html"] and (run / "units/0.html").read_text() == "b"
    agg = tmp_path / "agg"
    agg.mkdir()
    (agg / "summary.json").write_text("{}")
    (agg / "report.html").write_text("agg")
    publish_run(agg, run, {1: tmp_path / "a"})
    assert not (run / "units").exists() and sorted(p.name for p in (run / "seed-1/units").iterdir()) == ["0.html", "1.html"]
    assert not [p for p in run.rglob(".*")]  # no temporary folder left behind


# --- the tiny workflow's report in headless Chromium -------------------------------------------------
def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                           *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# Clicks headers of the unit index like a reader (the real click handler runs) and records the row order
# after each click on <body>, where --dump-dom shows it.
CLICKS = """<script>
const th = name => [...document.querySelectorAll("#unit-index-table th")].find(h => h.textContent === name);
const order = () => [...document.querySelectorAll("#unit-index-table tbody tr")].map(r => r.dataset.unit).join(",");
th("K").click(); document.body.dataset.kDesc = order();
th("unit MS-Score (%)").click(); document.body.dataset.msDesc = order();
th("unit MS-Score (%)").click(); document.body.dataset.msAsc = order(); document.body.dataset.msDir = th("unit MS-Score (%)").dataset.dir;
th("unit").click(); document.body.dataset.unitDesc = order();
th("unit label").click(); document.body.dataset.labelAsc = order();
</script></body>"""


def _expected(rows: dict[int, list[str]], col: int, descending: bool = False, text: bool = False) -> str:
    """The order the index should show: by the column's value, empty (NaN, no label) last, ties by unit."""
    def key(u):
        v = rows[u][col]
        return (v == "", v if text else 0.0 if v == "" else (-float(v) if descending else float(v)), u)
    return ",".join(str(u) for u in sorted(rows, key=key))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (scripts/setup.sh --test installs Debian's chromium)")
def test_tiny_report_opens_from_disk_in_a_headless_browser_and_sorts_by_click(tiny_run, tmp_path):
    from PIL import Image, ImageStat

    # the tiny run with the demo CLIP's concept labels (a copy: other tests read the tiny run's alias);
    # only the labels and report jobs run
    work = tmp_path / "work"
    shutil.copytree(tiny_run[0], work, symlinks=True)
    snakemake(work, write_config(work / "labels.yaml", {"labels": {"model": "demo:0", "concepts": "digits"}}))
    run = work / "results/runs/tiny"
    summary = json.loads((run / "summary.json").read_text())
    src = (run / "report.html").read_text()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', src), "the report must not load anything from the network"
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(report_pages.PLOTS + ("figure2.png",))

    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,4000", (run / "report.html").as_uri())
    im = Image.open(shot).convert("L")
    assert im.size == (1280, 4000) and ImageStat.Stat(im).var[0] > 0
    dom = _chromium(tmp_path, "--dump-dom", (run / "report.html").as_uri()).stdout
    headings = {a: re.sub(r"<[^>]+>", "", t) for a, t in re.findall(r'<h2 id="([\w-]+)">(.*?)</h2>', dom)}
    for anchor, words in (("lossless", "Lossless check"), ("table2", "Table 2"), ("ms-score", "MS-Score"),
                          ("k-histogram", "histogram"), ("ms-distributions", "MS-Score distributions"),
                          ("figure2", "Figure 2"), ("unit-index", "Unit index"), ("most-split", "Most-split units")):
        assert words in headings.get(anchor, ""), (anchor, headings)
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="K_u histogram">', dom)
    assert summary["labels"]["model"] == "demo:0" and "Concept labels" in headings["concept-groups"]
    members = re.findall(r'href="units/(\d+)\.html#s(\d+)"', dom)  # the largest groups' sub-units
    assert members and all(f'id="s{s}"' in (run / f"units/{u}.html").read_text() for u, s in members)

    # every unit: a row in the index whose link opens its page, which links back
    rows = {int(u): re.findall(r'data-v="([^"]*)"', r)
            for u, r in re.findall(r'<tr data-unit="(\d+)">(.*?)</tr>', dom)}
    assert sorted(rows) == list(range(summary["n_units"]))
    for u in rows:
        page = run / f"units/{u}.html"
        assert f'href="units/{u}.html"' in dom and page.is_file()
        assert 'href="../report.html#unit-index"' in page.read_text()
    unit_shot = tmp_path / "unit.png"
    _chromium(tmp_path, f"--screenshot={unit_shot}", "--window-size=1280,1200", (run / "units/0.html").as_uri())
    assert ImageStat.Stat(Image.open(unit_shot).convert("L")).var[0] > 0

    # sorting: the page with a script that clicks headers appended (the report's own JavaScript sorts)
    variant = tmp_path / "clicked.html"
    variant.write_text(src.replace("</body>", CLICKS))
    body = re.search(r"<body([^>]*)>", _chromium(tmp_path, "--dump-dom", variant.as_uri()).stdout).group(1)
    state = dict(re.findall(r'data-([\w-]+)="([^"]*)"', body))
    k, ms, label = 1, 3, 6  # index columns: unit, K, rho, unit MS-Score, mean and max sub-unit MS, unit label, ...
    assert any(r[label] for r in rows.values())
    assert state["k-desc"] == _expected(rows, k, True)
    assert state["ms-desc"] == _expected(rows, ms, True) and state["ms-asc"] == _expected(rows, ms, False)
    assert state["ms-dir"] == "asc" and state["unit-desc"] == ",".join(map(str, range(len(rows) - 1, -1, -1)))
    assert state["label-asc"] == _expected(rows, label, text=True) and state["k-desc"] != state["unit-desc"]
