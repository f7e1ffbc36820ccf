"""ELUDe's expansion factor on the demo (not a test): the EF curve over the target-EF search's default grid,
and Table 6's EF axis with the time the search adds.

    .venv/bin/python bench/ef_curve.py [--workdir /tmp/elude-ef-curve] [--targets 2 4 8] [--skip curve|sweep]

1. Curve: the default run (config.yaml) with one Table 7 variant per min_cluster_size of the search's
   default grid (the base value 25 times 2^(j/2), j = -6..6); per value the effective EF, split units and
   the MS-Score of units, sub-units and the random control (evaluation split, layer space, percent).
2. Sweep: the default run with ``ef_sweep.targets`` (ELUDe matched to each, every baseline family of
   config.yaml at each EF; judges and labels off): per target the search's choice and path, ELUDe against
   the best baseline by MS-Score, and the time the search adds: the search's cluster and step jobs
   (Snakemake's benchmark files: wall seconds per job) against the run's one plain clustering.
Both runs go through the real workflow on 2 cores; artifacts are shared by id between the two folders'
runs only where a folder is reused (each run starts in its own folder, so every number is from scratch).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from workflow_helpers import snakemake  # noqa: E402

from elude.method import expansion  # noqa: E402
from elude.pipeline.config import load_run_config
from elude.pipeline.plan import artifact_ids  # noqa: E402

OFF = {"judges": {"models": []}, "labels": {"model": None}, "dictionary": {"enabled": False},
       "efficiency": {"enabled": False}}


def run(folder: Path, override: dict) -> tuple[float, dict]:
    import yaml

    from elude.pipeline.config import DEMO_CONFIG, merge_config

    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "override.yaml"  # the demo with the override, whole: a --configfile stands on its own
    cfg.write_text(yaml.safe_dump(merge_config(yaml.safe_load(DEMO_CONFIG.read_text()), override)))
    t0 = time.time()
    snakemake(folder, cfg, timeout=7200)
    return time.time() - t0, json.loads((folder / "results/runs/demo/summary.json").read_text())


def job_seconds(folder: Path, stage: str, artifact: str) -> float:
    """Wall seconds of an artifact's jobs, from Snakemake's benchmark files."""
    total = 0.0
    for f in (folder / "results/benchmarks" / stage).glob(f"{artifact}*.tsv"):
        with f.open() as fh:
            total += float(next(csv.DictReader(fh, delimiter="\t"))["s"])
    return total


def curve(root: Path) -> None:
    base = load_run_config()["cluster"]
    grid = expansion.candidate_values(base, 0)
    variants = [{"name": f"mcs={v}", "cluster": {"min_cluster_size": v}} for v in grid if v != base["min_cluster_size"]]
    wall, summary = run(root / "curve", {**OFF, "baselines": {"families": []}, "ablations": {"variants": variants}})
    rows = summary["table7"]["rows"]
    print(f"\n## EF curve of the demo (min_cluster_size grid of the target-EF search; {wall:.0f} s for the run)\n")
    print("| min_cluster_size | effective EF | split units | MS sub-units | MS units | MS random (same K_u) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for v in grid:
        r = rows["base" if v == base["min_cluster_size"] else f"mcs={v}"]
        print(f"| {v} | {r['expansion_factor']['mean']:.3f} | {r['n_split_units']['mean']:.0f} | "
              f"{r['ms_subunits']['mean']:.2f} | {r['ms_units']['mean']:.2f} | {r['ms_random']['mean']:.2f} |")


def sweep(root: Path, targets: list[float]) -> None:
    folder = root / "sweep"
    targets = [int(t) if t.is_integer() else t for t in map(float, targets)]  # 8, not 8.0: the run's own baselines' ids
    override = {**OFF, "ablations": {"variants": []}, "ef_sweep": {"targets": targets}}
    wall, summary = run(folder, override)
    plain = artifact_ids(load_run_config(folder / "override.yaml"))["surgery"]["inputs"]["cluster"]
    plain_s = job_seconds(folder, "cluster", plain)
    t6 = summary["table6_ef"]
    print(f"\n## Table 6's EF axis on the demo ({wall:.0f} s for the whole run; one plain clustering: {plain_s:.1f} s of jobs)\n")
    print("| target EF | chosen min_cluster_size | ELUDe EF | clusterings (path) | s the search adds | ELUDe MS | best baseline (MS) | its R² | its acc. drop |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |")
    for key, rows in t6["blocks"].items():
        s = next(iter(t6["searches"][key].values()))
        steps = [p["value"] for p in s["path"]]
        cfg = load_run_config(folder / "override.yaml")
        chain = artifact_ids({**cfg, "cluster": {**cfg["cluster"], "target_ef": float(key)}})["ef_search"]
        step_ids = [a["id"] for a in chain["search"] if a["stage"] == "ef_search"] + [chain["id"]]
        # the grid's middle candidate is the plain run's own clustering: the search adds the others and its steps
        secs = sum(job_seconds(folder, "cluster", p["cluster"]) for p in s["path"] if p["cluster"] != plain) + sum(
            job_seconds(folder, "ef_search", i) for i in step_ids)
        base = [(r["ms_score"]["mean"], k) for k, r in rows.items() if k not in ("backbone", "elude") and r["ms_score"]]
        best = max(base)[1] if base else None
        b = rows[best] if best else None
        drop = None if not b else rows["backbone"]["accuracy"]["mean"] - b["accuracy"]["mean"]
        print(f"| {key} | {s['chosen']['value']} | {rows['elude']['ef']['mean']:.3f} | {len(steps)} ({' → '.join(map(str, steps))}) "
              f"| {secs:.1f} | {rows['elude']['ms_score']['mean']:.2f} | "
              + (f"{b['method']} ({b['ms_score']['mean']:.2f}) | {b['r2']['mean']:.2f} | {drop:.2f} |" if b else "— | — | — |"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/elude-ef-curve"))
    ap.add_argument("--targets", type=float, nargs="+", default=[2, 4, 8])
    ap.add_argument("--skip", default="", help="comma-separated: curve, sweep")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if "curve" not in skip:
        curve(args.workdir)
    if "sweep" not in skip:
        sweep(args.workdir, args.targets)


if __name__ == "__main__":
    main()
