"""Workflow stages that summarise a run: the per-seed report, the aggregate over token seeds, and the
run's named alias under results/runs/."""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from pathlib import Path

from ...util.files import load_arrays, write_atomic
from .job import Stage, dataset

log = logging.getLogger(__name__)


# --- report -----------------------------------------------------------------------------------------
def report(st: Stage, verify_dir: str, evaluate_dir: str, merge_dir: str, backbone_dir: str,
           artifacts: dict[str, str], out: str, baseline_dirs: dict[str, str] | None = None,
           study_dirs: dict[str, str] | None = None) -> None:
    """``baseline_dirs``: family -> its baseline_eval artifact (Table 2); ``study_dirs``: the first token
    seed's ``dictionary`` (Table 4) and ``efficiency`` (Table 5) artifacts, the ``rank`` (Table 3) and
    ``ablation`` (Table 7) over all seeds and this seed's ``labels``, where the run has them. Writes
    summary.json, report.html, plots/*.png, units/<u>.html (one page per unit) and their images, img/."""
    from ...reporting import pages as report_pages
    from ...reporting import summary as report_mod
    from ...reporting.ef_tables import figure2_png

    verify_res = json.loads((Path(verify_dir) / "verify.json").read_text())
    metrics = json.loads((Path(evaluate_dir) / "metrics.json").read_text())
    tables = load_arrays(Path(evaluate_dir) / "tables.safetensors")
    layer_meta = json.loads((Path(merge_dir) / "layer.json").read_text())["metadata"]
    baselines = {f: json.loads((Path(d) / "metrics.json").read_text()) for f, d in (baseline_dirs or {}).items()}
    study_dirs = study_dirs or {}
    studies = {f"table{n}": json.loads((Path(study_dirs[s]) / f"table{n}.json").read_text())
               for s, n in (("rank", 3), ("dictionary", 4), ("efficiency", 5), ("ablation", 7)) if s in study_dirs}
    if "ef_sweep" in study_dirs:
        studies["table6_ef"] = json.loads((Path(study_dirs["ef_sweep"]) / "table6_ef.json").read_text())
    example = studies.get("table3", {}).get("example")
    example_images = ({side: (Path(study_dirs["rank"]) / f).read_bytes() for side, f in example["files"].items()}
                      if example else None)
    labels = json.loads((Path(study_dirs["labels"]) / "labels.json").read_text()) if "labels" in study_dirs else None
    explanations = (json.loads((Path(study_dirs["explanations"]) / "explanations.json").read_text())
                    if "explanations" in study_dirs else None)
    summary = report_mod.summary(st.params["run_name"], verify_res, metrics, layer_meta,
                                 {**artifacts, **{f"baseline_eval-{f}": d for f, d in (baseline_dirs or {}).items()},
                                  **study_dirs, "report": str(out)}, baselines, studies, labels, explanations)
    summary["data_faults"] = data_faults(artifacts, metrics, layer_meta)
    ds = dataset(st.params["data"], "eval", backbone_dir)
    # images recur across the unit pages (a parent's top images are its sub-units'): decode each once
    thumbnail = functools.lru_cache(maxsize=8192)(getattr(ds, "thumbnail", lambda i: None))
    plots = {**report_pages.plots(tables), "figure2.png": figure2_png(summary["figure2"])}
    with st.publish(out) as (tmp, _):
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        (tmp / "report.html").write_text(report_mod.html(summary, metrics, tables, layer_meta, thumbnail,
                                                         st.params["n_examples"], example_images, labels, plots))
        (tmp / "plots").mkdir()
        for name, png in plots.items():
            (tmp / "plots" / name).write_bytes(png)
        tokens = functools.lru_cache(maxsize=8192)(ds.tokens) if hasattr(ds, "tokens") else None  # text runs
        n = report_pages.write_unit_pages(tmp, st.params["run_name"], tables, layer_meta, thumbnail, labels, tokens,
                                          explanations)
    log.info("report: %d unit pages in %s/units", n, out)


def data_faults(artifacts: dict[str, str], metrics: dict, layer_meta: dict) -> dict:
    """What the run set aside or changed on messy data, from the manifests (docs/reliability.md): images that
    did not decode (``data.on_bad_image: skip``), a top-k clamped to the instances cached, units that never
    activate on the probe split (left unchanged, K=1)."""
    cache_manifests = [json.loads(m.read_text()) for m in sorted(Path(artifacts["cache"]).glob("shard-*/manifest.json"))]
    topk = json.loads((Path(artifacts["topk"]) / "merged" / "manifest.json").read_text())
    return {"probe_images_skipped": [p for m in cache_manifests for p in m.get("bad_images_skipped", [])],
            "eval_images_skipped": metrics.get("bad_images_skipped", []),
            "k_requested": topk["k_requested"], "k": topk["k"],
            "never_active_units": [i for i, u in enumerate(layer_meta["units"]) if u.get("never_active")]}


def aggregate(st: Stage, report_dirs: list[str], out: str) -> None:
    """Mean and standard deviation over the seeded token datasets (Section 4.1, E.8) of every number
    in the per-seed summaries."""
    from ...reporting import summary as report_mod

    summaries = [json.loads((Path(d) / "summary.json").read_text()) for d in report_dirs]
    with st.publish(out) as (tmp, _):
        agg = report_mod.aggregate(st.params["run_name"], st.params["token_seeds"], summaries)
        (tmp / "summary.json").write_text(json.dumps(agg, indent=2))
        (tmp / "report.html").write_text(report_mod.aggregate_html(agg))


REPORT_FOLDERS = ("units", "img", "plots")  # beside report.html, which links to them


def _link_or_copy(src: str, dst: str) -> None:
    """Hard link where possible: the unit pages are hundreds of MB at paper scale and never change (the
    report folder is content-addressed); a link also outlives a garbage-collected artifact."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _replace_folder(src: Path, dst: Path) -> None:
    """Copy folder ``src`` to ``dst`` through a temporary sibling, so ``dst`` is never half copied (a
    directory cannot be renamed over a non-empty one: the old copy is moved aside first, then removed)."""
    tmp, old = dst.with_name(f".{dst.name}.tmp-{os.getpid()}"), dst.with_name(f".{dst.name}.old-{os.getpid()}")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=_link_or_copy)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def publish_run(report_dir: str | Path, run_dir: str | Path, seed_reports: dict | None = None) -> None:
    """Copy a run's summary.json, report.html and its folders (unit pages, plots) to
    ``results/runs/<run name>/``: a named alias of the content-addressed report, refreshed after every
    successful run (even one that reran nothing). A run over several token seeds publishes the aggregate
    there and each seed's report in ``seed-<seed>/``."""
    report_dir, run_dir = Path(report_dir), Path(run_dir)
    if not (report_dir / "summary.json").exists():
        return  # a run that targeted an earlier stage
    run_dir.mkdir(parents=True, exist_ok=True)
    # summary.json names the report's content-addressed folder: the same bytes, the same report, whose
    # folders are already here (thousands of pages at paper scale are not recopied on every invocation)
    same = (run_dir / "summary.json").exists() and (run_dir / "summary.json").read_bytes() == (
        report_dir / "summary.json").read_bytes()
    for name in REPORT_FOLDERS:
        if (report_dir / name).is_dir():
            if not (same and (run_dir / name).is_dir()):
                _replace_folder(report_dir / name, run_dir / name)
        elif (run_dir / name).exists():
            shutil.rmtree(run_dir / name)  # left by an earlier report of this run name
    for name in ("summary.json", "report.html"):
        write_atomic(run_dir / name, lambda tmp: shutil.copyfile(report_dir / name, tmp))
    for seed, seed_dir in (seed_reports or {}).items():
        publish_run(seed_dir, run_dir / f"seed-{seed}")
    log.info("published %s to %s", report_dir, run_dir)
