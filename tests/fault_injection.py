"""Faults tried on purpose on the real workflow (tiny config), shared by tests/test_faults.py and
bench/faults.py: the whole run killed at seeded moments, a full disk, two runs at once."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

from workflow_helpers import catches, ids_for, snakemake, snakemake_cmd

from elude.pipeline.housekeeping import SHARDED, verify


def merged_sha256(work: Path, cfg: Path) -> str | None:
    """sha256 of the run's disentangled checkpoint (the merged layer), or None where it is missing."""
    path = work / "results/merge" / ids_for(cfg)["merge"] / "layer.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def in_progress(results: Path) -> list[str]:
    """Work-in-progress folders (``.<name>.partial`` / ``.<name>.tmp-<pid>``) under ``results``. os.walk skips
    folders that vanish while it reads: a killed run's orphaned jobs still publish (rename) theirs, and
    ``Path.rglob`` raised FileNotFoundError on one (seen once in a full suite on a loaded machine)."""
    found = []
    for top, dirs, _ in os.walk(results):
        for name in dirs:
            p = Path(top) / name
            if name.startswith(".") and (name.endswith(".partial") or ".tmp-" in name) \
                    and ".locks" not in p.relative_to(results).parts:
                found.append(str(p.relative_to(results)))
    return sorted(found)


def progress(results: Path) -> dict[str, int]:
    """What the resumable stages have kept: finished chunks per cache shard, finished units per cluster shard."""
    out = {}
    for p in results.glob("cache/*/.shard-*.partial/progress.json"):
        try:
            out[str(p.parent.relative_to(results))] = json.loads(p.read_text())["chunks_done"]
        except (OSError, ValueError):
            pass
    for p in results.glob("cluster/*/.shard-*.partial"):
        out[str(p.relative_to(results))] = len(list(p.glob("units/unit-*.safetensors")))
    return out


def half_built(results: Path) -> list[str]:
    """Folders under a final artifact name (``results/<stage>/<id>``, or a shard of a sharded stage) without
    the manifest that is written last: there must be none, whatever failed."""
    out = []
    for p in results.glob("*/*"):
        if not p.is_dir() or p.name.startswith(".") or p.parent.name.startswith(".") \
                or p.parent.name in ("logs", "benchmarks", "runs"):
            continue
        parts = [c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")] if p.parent.name in SHARDED else [p]
        out += [str(c.relative_to(results)) for c in parts if not (c / "manifest.json").is_file()]
    return out


def resumed(results: Path) -> dict[str, int]:
    """What each finished cache/cluster shard took over from an earlier, interrupted job (its manifest)."""
    out = {}
    for stage, key in (("cache", "chunks_resumed"), ("cluster", "units_resumed")):
        for m in results.glob(f"{stage}/*/shard-*/manifest.json"):
            shard = m.parent
            out[str((shard.parent / f".{shard.name}.partial").relative_to(results))] = json.loads(m.read_text())[key]
    return out


def stopped_jobs(results: Path) -> list[str]:
    """Jobs whose log says they stopped on SIGTERM (read right after a kill: a rerun of the job replaces it)."""
    return sorted(str(p.relative_to(results)) for p in results.glob("logs/*/*.log") if "stopped by SIGTERM" in p.read_text())


def wait_for_job(proc: subprocess.Popen, timeout: float = 120) -> bool:
    """After a seeded moment, wait until a job of Snakemake ``proc`` (its process group, Snakemake itself
    aside) handles SIGTERM, i.e. a stage is under way (``run_logged`` installed its handler), so the signal
    lands in a job, not in the gaps between jobs, on any machine's speed. False where ``proc`` ended first."""
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
            try:
                if pid != proc.pid and os.getpgid(pid) == proc.pid and catches(pid, signal.SIGTERM):
                    return True
            except (OSError, StopIteration):  # the process ended meanwhile
                continue
        time.sleep(0.05)
    return False


def unlock_if_needed(work: Path, cfg: Path) -> bool:
    """The documented recovery before the same command (docs/reliability.md): ``--unlock`` where a killed
    Snakemake left its lock behind."""
    locks = work / ".snakemake/locks"
    if locks.is_dir() and any(locks.iterdir()):
        snakemake(work, cfg, "--unlock")
        return True
    return False


def wait_group_gone(pgid: int, timeout: float = 300) -> float:
    """Wait until no process of group ``pgid`` is left (a killed Snakemake's jobs); seconds waited."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return time.time() - t0
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    raise TimeoutError(f"processes of group {pgid} still running after {timeout} s")


def kill_chain(work: Path, cfg: Path, sig: int, n_kills: int = 5, seed: int = 0, span: tuple[float, float] = (4, 30),
               whole_group: bool = False) -> dict:
    """Start the run and send ``sig`` after a seeded moment in ``span`` seconds, ``n_kills`` times, each
    restart after the documented recovery; then run it to the end. ``whole_group``: signal Snakemake and
    its jobs (a SLURM preemption or Ctrl-C does), at the first moment after the seeded one when a job is
    running (:func:`wait_for_job`); else the main Snakemake process alone, whose running jobs
    then carry on as orphans while the next start runs. Returns the kills (moment, work in progress and kept
    progress right after, whether ``--unlock`` was needed first, Snakemake's exit status), the final run and
    the merged checkpoint's sha256."""
    rng = random.Random(seed)
    results = work / "results"
    kills, groups = [], []
    for _ in range(n_kills):
        unlocked = unlock_if_needed(work, cfg)
        at = round(rng.uniform(*span), 2)
        proc = subprocess.Popen(snakemake_cmd(work, cfg), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        groups.append(proc.pid)
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            if whole_group:
                wait_for_job(proc)
        if proc.poll() is not None:  # it finished before its moment: not a kill, and the chain ends here
            kills.append({"at_s": at, "finished_first": True, "unlock": unlocked})
            break
        (os.killpg if whole_group else os.kill)(proc.pid, sig)
        rc = proc.wait(timeout=300)
        if whole_group:
            wait_group_gone(proc.pid)
        kills.append({"at_s": at, "unlock": unlocked, "exit": rc, "in_progress": in_progress(results),
                      "progress": progress(results), "stopped": stopped_jobs(results)})
    unlocked = unlock_if_needed(work, cfg)
    final = snakemake(work, cfg, check=False)
    orphans_s = max([wait_group_gone(g) for g in groups] or [0.0])
    return {"kills": kills, "final_unlock": unlocked, "final": final, "orphans_waited_s": orphans_s,
            "sha256": merged_sha256(work, cfg)}


def damage_artifacts(results: Path, ids: dict[str, str]) -> tuple[Path, Path, Path]:
    """Rot on purpose: flip a byte in a zarr chunk of cache shard 1, truncate the merged layer, delete the
    evaluation tables. Returns (chunk, layer file, deleted file)."""
    chunk = next(p for p in sorted((results / "cache" / ids["cache"] / "shard-0001").rglob("*"))
                 if p.is_file() and "q.zarr" in p.parts and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    layer = results / "merge" / ids["merge"] / "layer.safetensors"
    layer.write_bytes(layer.read_bytes()[:1000])
    tables = results / "evaluate" / ids["evaluate"] / "tables.safetensors"
    tables.unlink()
    return chunk, layer, tables


def fill_disk(folder: Path, leave_bytes: int) -> Path:
    """A ballast file that leaves ``leave_bytes`` free on ``folder``'s file system."""
    ballast = folder / "ballast"
    size = shutil.disk_usage(folder).free - leave_bytes
    with open(ballast, "wb") as f:
        block = b"\0" * (1 << 20)
        while size > 0:
            f.write(block[:min(size, len(block))])
            size -= len(block)
    return ballast


def mount_tmpfs(mountpoint: Path, size_mb: int) -> str | None:
    """Mount a tmpfs of ``size_mb`` at ``mountpoint``; None on success, else why it cannot (not root)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else f"cannot mount a tmpfs ({proc.stderr.strip()}): needs root, as in CI"


def disk_full(work: Path, cfg: Path, mountpoint: Path, leave_bytes: int = 1 << 20) -> dict:
    """``results`` on a small tmpfs: build the backbone, fill the disk to ``leave_bytes`` free, run (the cache
    jobs fail), then free the space and run again. Returns both runs, the folders found under final names
    without a manifest, the damage found in finished artifacts, and the merged checkpoint's sha256."""
    (work / "results").symlink_to(mountpoint)
    snakemake(work, cfg, f"results/backbone/{ids_for(cfg)['backbone']}")
    ballast = fill_disk(mountpoint, leave_bytes)
    full = snakemake(work, cfg, check=False)
    damaged = [f"{stage} {i}" for stage, i, _, _ in verify(mountpoint)]
    ballast.unlink()
    unlocked = unlock_if_needed(work, cfg)
    again = snakemake(work, cfg, check=False)
    return {"full": full, "half_built": half_built(mountpoint), "damaged": damaged, "unlock": unlocked, "again": again,
            "sha256": merged_sha256(work, cfg)}


def concurrent_runs(root: Path, cfg_a: Path, cfg_b: Path) -> dict:
    """Two runs started at once, each from its own directory whose ``results`` links to one shared folder
    (docs/reliability.md), and, while they run, the first invoked a second time in its directory. Returns
    both processes, the jobs that found an artifact built by the other run (or waited for it), each run's
    merged checkpoint sha256 and the second invocation."""
    shared = root / "shared-results"
    shared.mkdir()
    works = [root / "a", root / "b"]
    procs = []
    for work, cfg in zip(works, (cfg_a, cfg_b)):
        work.mkdir()
        (work / "results").symlink_to(shared)
        procs.append(subprocess.Popen(snakemake_cmd(work, cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    # meanwhile, the same run invoked a second time in its directory: refused
    record = works[0] / ".snakemake/elude-run.json"
    while not record.is_file() and procs[0].poll() is None:
        time.sleep(0.1)
    second = snakemake(works[0], cfg_a, check=False)
    outs = [p.communicate(timeout=900) for p in procs]
    logs = "\n".join(f.read_text() for f in shared.glob("logs/*/*.log"))
    return {"returncodes": [p.returncode for p in procs], "stderr": [o[1] for o in outs],
            "reused": logs.count("was finished by another process"), "waited": logs.count("waited for process"),
            "sha256": [merged_sha256(w, c) for w, c in zip(works, (cfg_a, cfg_b))], "second_invocation": second}
