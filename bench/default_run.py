"""Where a run's time goes (not a test): per stage, its jobs' wall and CPU time from Snakemake's benchmark
files, split into start-up (interpreter and imports, which every job logs before any work) and the rest;
and the run's own wall time from Snakemake's log, with the time no job was running. Start-up is what a
job imports before its stage function runs: stages that import torch or a model library inside the
function (the baselines', the studies', the judges') count that import as work.

    .venv/bin/python bench/default_run.py [--run DIR] [--fresh [--device cuda] [--cores N]]

``--fresh`` runs the default config (the README's first command) into a new temporary folder first and
reports on it (``--device cuda``: the same config with ``compute.device: cuda``, the GPU jobs sharing the GPU by
memory; ``--cores``: Snakemake's cores, else the local profile's 2); ``--run DIR`` reports on a finished run's working folder (default: the repository). The
numbers are of the last run made there: benchmark files are overwritten by each job that reruns.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP = re.compile(r"start-up ([\d.]+) s")


def stage_table(results: Path) -> list[dict]:
    rows = []
    for folder in sorted((results / "benchmarks").iterdir()):
        jobs = [f.read_text().splitlines()[1].split("\t") for f in folder.glob("*.tsv")]
        logs = [f.read_text() for f in (results / "logs" / folder.name).glob("*.log")]
        startups = [float(m.group(1)) for text in logs for m in [STARTUP.search(text)] if m]
        rows.append({"stage": folder.name, "jobs": len(jobs), "wall": sum(float(j[0]) for j in jobs),
                     "cpu": sum(float(j[-1]) for j in jobs), "startup": sum(startups), "logged": len(startups)})
    return sorted(rows, key=lambda r: -r["wall"])


def run_span(workdir: Path) -> float | None:
    """Seconds from the first to the last timestamp of the newest Snakemake log."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        return None
    stamps = re.findall(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", logs[-1].read_text(), flags=re.M)
    times = [datetime.strptime(s, "%a %b %d %H:%M:%S %Y") for s in stamps]
    return (max(times) - min(times)).total_seconds() if times else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO, help="working folder of a finished run")
    ap.add_argument("--fresh", action="store_true", help="run the default config into a new folder first")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="compute.device of the --fresh run")
    ap.add_argument("--cores", type=int, help="Snakemake's --cores for the --fresh run (default: the profile's)")
    args = ap.parse_args()
    work, took = args.run, None
    if args.fresh:
        work = Path(tempfile.mkdtemp(prefix="elude-default-"))
        extra = ["--cores", str(args.cores)] if args.cores else []
        if args.device != "cpu":  # a --configfile stands alone: the default config with the device changed
            import yaml

            cfg = yaml.safe_load((REPO / "config.yaml").read_text())
            cfg.setdefault("compute", {})["device"] = args.device
            (work / "config.yaml").write_text(yaml.safe_dump(cfg))
            extra += ["--configfile", str(work / "config.yaml")]
        print(f"working folder: {work}", flush=True)  # for --run DIR if this process is stopped
        t0 = time.perf_counter()
        # `python -m snakemake`: also where Snakemake's wheels are on PYTHONPATH (bench/gpu_default_run.sh)
        done = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                               "--directory", str(work), "--profile", str(REPO / "profiles/local"), *extra],
                              capture_output=True, text=True)
        took = time.perf_counter() - t0
        if done.returncode:
            sys.exit(f"the run failed (exit {done.returncode}); the end of Snakemake's output:\n"
                     + "\n".join((done.stdout + done.stderr).splitlines()[-60:]))
    rows = stage_table(work / "results")
    print(f"{'stage':<16} {'jobs':>4} {'wall s':>8} {'cpu s':>8} {'start-up s':>10} {'work s':>8}")
    for r in rows:
        startup = f"{r['startup']:10.1f}" if r["logged"] == r["jobs"] else f"{'-':>10}"
        work_s = f"{r['wall'] - r['startup']:8.1f}" if r["logged"] == r["jobs"] else f"{'-':>8}"
        print(f"{r['stage']:<16} {r['jobs']:>4} {r['wall']:8.1f} {r['cpu']:8.1f} {startup} {work_s}")
    total = {k: sum(r[k] for r in rows) for k in ("jobs", "wall", "cpu", "startup")}
    print(f"{'all jobs':<16} {total['jobs']:>4} {total['wall']:8.1f} {total['cpu']:8.1f} {total['startup']:10.1f} "
          f"{total['wall'] - total['startup']:8.1f}")
    span = run_span(work)
    if span:
        print(f"\nrun: {span:.0f} s from the first to the last job (Snakemake's log)"
              + (f"; {took:.0f} s for the whole command" if took else "")
              + f"; job wall time / run time = {total['wall'] / span:.2f} cores busy on average")


if __name__ == "__main__":
    main()
