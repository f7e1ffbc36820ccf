"""Fault-injection benchmark (not a test): tries each fault on the real workflow with the tiny test config
and prints one table -- fault, tries, survived, data lost -- that docs/reliability.md quotes.

    .venv/bin/python bench/faults.py [--chains 2] [--seed 0] [--skip disk]

- **kills**: ``--chains`` runs, each killed at 5 seeded moments (SIGKILL of the main Snakemake process,
  whose jobs go on as orphans; SIGTERM of Snakemake and its jobs, as a preemption sends), recovered as the
  README says and run to the end; survived = the merged checkpoint's sha256 equals an uninterrupted run's;
  data lost = kept progress (cache chunks, clustered units) that the next run did not take over.
- **disk full**: ``results`` on a 48 MB tmpfs (needs root), filled to 1 MB free after the backbone; survived =
  the failure names the full disk, no folder appears under a final name, the backbone is intact, and
  the rerun after freeing space gives the same checkpoint.
- **concurrency**: ``--tries`` pairs of run names started together on one results folder; survived = both
  finish with the reference checkpoint; and, each time, a second invocation of a running run is refused
  with its message.
- **rotten artifacts**: a flipped byte in a zarr chunk, a truncated safetensors file, a deleted file;
  survived = ``--verify`` names each and the next job refuses to compute on it.
- **bad inputs**: every case of tests/test_faults.py's config table; survived = the message names the key.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fault_injection import (  # noqa: E402
    concurrent_runs,
    damage_artifacts,
    disk_full,
    in_progress,
    kill_chain,
    merged_sha256,
    mount_tmpfs,
    resumed,
)
from workflow_helpers import ids_for, snakemake, write_config  # noqa: E402


def lost_progress(out: dict, results: Path) -> int:
    """Kept progress (chunks, units) at the last kill that found each shard's work in progress, minus what its
    finished manifest says it took over."""
    kept: dict[str, int] = {}
    for k in out["kills"]:
        kept.update(k.get("progress", {}))
    took = resumed(results)
    return sum(max(0, n - took.get(s, 0)) for s, n in kept.items())


def kills(root: Path, reference: str, sig: int, chains: int, seed: int) -> tuple:
    tries = survived = lost = 0
    seconds = []
    for c in range(chains):
        work = root / f"{signal.Signals(sig).name}-{c}"
        work.mkdir()
        cfg = write_config(work / "tiny.yaml")
        t0 = time.time()
        out = kill_chain(work, cfg, sig, n_kills=5, seed=seed + c, span=(4, 25), whole_group=sig == signal.SIGTERM)
        seconds.append(time.time() - t0)
        n = sum("exit" in k for k in out["kills"])
        ok = out["final"].returncode == 0 and out["sha256"] == reference and not in_progress(work / "results")
        tries, survived, lost = tries + n, survived + (n if ok else 0), lost + lost_progress(out, work / "results")
    return tries, survived, f"{lost} chunks/units of kept progress redone; chain {min(seconds):.0f}-{max(seconds):.0f} s"


def disk(root: Path, reference: str) -> tuple:
    mnt = root / "mnt"
    if why := mount_tmpfs(mnt, 48):
        return 0, 0, f"not run: {why}"
    try:
        work = root / "disk"
        work.mkdir()
        out = disk_full(work, write_config(work / "tiny.yaml"), mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    ok = ("the disk is full" in out["full"].stderr and out["full"].returncode != 0 and not out["half_built"]
          and not out["damaged"] and out["sha256"] == reference)
    return 1, int(ok), f"{len(out['damaged'])} finished artifacts damaged, {len(out['half_built'])} half-built folders"


def concurrency(root: Path, reference: str, tries: int) -> tuple:
    finished = refused = reused = 0
    failures = []
    for t in range(tries):
        work = root / f"conc-{t}"
        work.mkdir()
        a, b = write_config(work / "a.yaml"), write_config(work / "b.yaml", {"run_name": "tiny-b"})
        out = concurrent_runs(work, a, b)
        if out["returncodes"] == [0, 0] and out["sha256"] == [reference, reference]:
            finished += 1
        else:
            failures.append(f"exit {out['returncodes']}")
        second = out["second_invocation"]
        refused += second.returncode != 0 and "is running in this directory" in second.stderr
        reused += out["reused"]
    return 2 * tries, finished + refused, (f"none: {finished} of {tries} pairs finished with the reference "
                                           f"checkpoint, {refused} of {tries} second invocations refused; "
                                           f"{reused} jobs reused the other run's artifact"
                                           + (f"; failed: {', '.join(failures)}" if failures else ""))


def rot(root: Path, reference_work: Path, cfg: Path) -> tuple:
    from elude.pipeline.housekeeping import check_inputs, verify

    work = root / "rot"
    shutil.copytree(reference_work, work, symlinks=True)
    results, ids = work / "results", ids_for(cfg)
    damage_artifacts(results, ids)
    found = {s for s, *_ in verify(results)}

    def refused(stage: str) -> bool:  # what the next job made from it does before computing
        try:
            check_inputs(results, {stage: ids[stage]})
        except RuntimeError:
            return True
        return False

    caught = sum(stage in found and refused(stage) for stage in ("cache", "merge", "evaluate"))
    return 3, caught, "none: each named by --verify (and the rebuild printed); the next job refuses to compute"


def bad_inputs() -> tuple:
    import yaml
    from test_faults import CONFIG_ERRORS

    from elude.pipeline.config import ConfigError, merge_config, validate_config

    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    ok = 0
    for override, message in CONFIG_ERRORS:
        try:
            validate_config(merge_config(base, override))
        except ConfigError as exc:
            ok += message in str(exc)
    return len(CONFIG_ERRORS), ok, "refused before any job"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=2, help="killed runs per signal (5 kills each)")
    ap.add_argument("--tries", type=int, default=3, help="pairs of concurrent runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", default="", help="comma-separated: kills,disk,concurrency,rot,bad")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    with tempfile.TemporaryDirectory(prefix="elude-faults-") as tmp:
        root = Path(tmp)
        ref = root / "reference"
        ref.mkdir()
        cfg = write_config(ref / "tiny.yaml")
        t0 = time.time()
        snakemake(ref, cfg)
        reference = merged_sha256(ref, cfg)
        print(f"uninterrupted tiny run: {time.time() - t0:.0f} s", flush=True)
        plan = [("SIGKILL of the main Snakemake process, 5 seeded moments per run", "kills",
                 lambda: kills(root, reference, signal.SIGKILL, args.chains, args.seed)),
                ("SIGTERM of Snakemake and its jobs (preemption), 5 seeded moments per run", "kills",
                 lambda: kills(root, reference, signal.SIGTERM, args.chains, args.seed + 100)),
                ("disk full while caching (48 MB tmpfs)", "disk", lambda: disk(root, reference)),
                ("two run names at once on one results folder; the same run twice", "concurrency",
                 lambda: concurrency(root, reference, args.tries)),
                ("rotten artifacts: flipped zarr byte, truncated safetensors, deleted file", "rot",
                 lambda: rot(root, ref, cfg)),
                ("bad configuration values (tests/test_faults.py table)", "bad", bad_inputs)]
        for name, key, fn in plan:
            if key in skip:
                continue
            t0 = time.time()
            tries, ok, lost = fn()
            rows.append((name, tries, ok, lost, time.time() - t0))
            print(f"  {name}: {ok}/{tries} ({time.time() - t0:.0f} s)", flush=True)
    print("\n| fault | tries | survived | data lost |\n| --- | --- | --- | --- |")
    for name, tries, ok, lost, _ in rows:
        print(f"| {name} | {tries} | {ok} | {lost} |")
    print(json.dumps({"seconds": {r[0]: round(r[4]) for r in rows}}))


if __name__ == "__main__":
    main()
