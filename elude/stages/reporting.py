"""Workflow stages that summarise a run: the per-seed report, the aggregate over token seeds, and the
run's named alias under results/runs/."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..artifacts import load_arrays, write_atomic
from . import Stage, _dataset

log = logging.getLogger(__name__)


# --- report -----------------------------------------------------------------------------------------
def report(st: Stage, verify_dir: str, evaluate_dir: str, merge_dir: str, backbone_dir: str,
           artifacts: dict[str, str], out: str, baseline_dirs: dict[str, str] | None = None,
           study_dirs: dict[str, str] | None = None) -> None:
    """``baseline_dirs``: family -> its baseline_eval artifact (Table 2); ``study_dirs``: the first token
    seed's ``dictionary`` (Table 4) and ``efficiency`` (Table 5) artifacts and the ``rank`` (Table 3) and
    ``ablation`` (Table 7) over all seeds, where the run has them."""
    from .. import report as report_mod

    verify_res = json.loads((Path(verify_dir) / "verify.json").read_text())
    metrics = json.loads((Path(evaluate_dir) / "metrics.json").read_text())
    tables = load_arrays(Path(evaluate_dir) / "tables.safetensors")
    layer_meta = json.loads((Path(merge_dir) / "layer.json").read_text())["metadata"]
    baselines = {f: json.loads((Path(d) / "metrics.json").read_text()) for f, d in (baseline_dirs or {}).items()}
    study_dirs = study_dirs or {}
    studies = {f"table{n}": json.loads((Path(study_dirs[s]) / f"table{n}.json").read_text())
               for s, n in (("rank", 3), ("dictionary", 4), ("efficiency", 5), ("ablation", 7)) if s in study_dirs}
    example = studies.get("table3", {}).get("example")
    example_images = ({side: (Path(study_dirs["rank"]) / f).read_bytes() for side, f in example["files"].items()}
                      if example else None)
    summary = report_mod.summary(st.params["run_name"], verify_res, metrics, layer_meta,
                                 {**artifacts, **{f"baseline_eval-{f}": d for f, d in (baseline_dirs or {}).items()},
                                  **study_dirs, "report": str(out)}, baselines, studies)
    ds = _dataset(st.params["data"], "eval", backbone_dir)
    thumbnail = getattr(ds, "thumbnail", lambda i: None)
    with st.publish(out) as (tmp, _):
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        (tmp / "report.html").write_text(report_mod.html(summary, metrics, tables, layer_meta, thumbnail,
                                                         st.params["n_examples"], example_images))


def aggregate(st: Stage, report_dirs: list[str], out: str) -> None:
    """Mean and standard deviation over the seeded token datasets (Section 4.1, E.8) of every number
    in the per-seed summaries."""
    from .. import report as report_mod

    summaries = [json.loads((Path(d) / "summary.json").read_text()) for d in report_dirs]
    with st.publish(out) as (tmp, _):
        agg = report_mod.aggregate(st.params["run_name"], st.params["token_seeds"], summaries)
        (tmp / "summary.json").write_text(json.dumps(agg, indent=2))
        (tmp / "report.html").write_text(report_mod.aggregate_html(agg))


def publish_run(report_dir: str | Path, run_dir: str | Path, seed_reports: dict | None = None) -> None:
    """Copy a run's summary.json and report.html to ``results/runs/<run name>/``: a named alias of the
    content-addressed report, refreshed after every successful run (even one that reran nothing). A run
    over several token seeds publishes the aggregate there and each seed's report in ``seed-<seed>/``."""
    report_dir, run_dir = Path(report_dir), Path(run_dir)
    if not (report_dir / "summary.json").exists():
        return  # a run that targeted an earlier stage
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "report.html"):
        write_atomic(run_dir / name, lambda tmp: shutil.copyfile(report_dir / name, tmp))
    for seed, seed_dir in (seed_reports or {}).items():
        publish_run(seed_dir, run_dir / f"seed-{seed}")
    log.info("published %s to %s", report_dir, run_dir)
