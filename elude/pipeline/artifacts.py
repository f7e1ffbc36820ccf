"""Content-addressed artifacts: ids, manifests, atomic publication.

Every stage writes ``results/<stage>/<id>/`` where ``id`` is the first 12 hex characters of a sha256
over the stage's own parameters, its code-version string and the ids of its inputs. Bump a stage's
entry in :data:`CODE_VERSIONS` when a code change alters what it writes: that gives new ids for the
stage and everything downstream, and leaves old artifacts where they are.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Iterator

CODE_VERSIONS = {
    "backbone": "2",
    "cache": "2",
    "topk": "3",
    "cluster": "3",  # 3: torch backend (auto), cuML min_samples + 1, cluster.reduce
    "ef_search": "1",
    "surgery": "2",
    "merge": "3",
    "verify": "5",  # 5: next-token agreement of a language model; 4: the merge sums with index_add_ on the CPU (last bits of the differences)
    "evaluate": "7",  # 7: a language model's next-token loss and KL, its final hidden state as the pooled space; 6: live features (probe, evaluation) and L0 per feature set, split diagnostics; 4: one scoring path for ELUDe and baselines; R^2 of the disentangled layer; 5: merge
    "report": "13",  # 13: Table 2's next-token columns for a language model; 12: Table 2's fair columns (live features, live EF, L0, fraction scored), why a split helps; 11: Table 6 EF axis, Figure 2; 10: data faults block; 5: Table 2 (baselines); 6: Tables 4 and 5; 7: Table 3 and LLM Rank; 8: Table 7; 9: unit pages, plots, labels
    "aggregate": "8",  # 8: next-token columns; 7: Table 2's fair columns; 6: Table 6 EF axis, Figure 2; 2: Table 2; 3: Tables 4 and 5; 4: Table 3 and LLM Rank; 5: Table 7
    "baseline_train": "2",  # 2: activity.safetensors (features that fired: Table 4's dead atoms)
    "baseline_select": "1",
    "baseline_eval": "3",  # 3: next-token loss and KL; 2: live features (probe, evaluation), L0 of firings (> 0)
    "dictionary": "1",
    "efficiency": "1",
    "grids": "2",  # 2: presentations.json names its format (a text run shows texts)
    "judge": "1",
    "rank": "1",
    "ablation": "1",
    "ef_sweep": "2",  # 2: Table 2's fair columns per EF block
    "labels": "1",
    "explanations": "1",
}

_LIBRARIES = ("torch", "timm", "transformers", "zarr", "numcodecs", "numpy", "hdbscan", "scikit-learn", "safetensors", "overcomplete")


def artifact_id(stage: str, params: dict, inputs: dict[str, str]) -> str:
    """Id of a stage's artifact: sha256 over (stage, code version, params, input ids), 12 hex chars."""
    payload = {"stage": stage, "code_version": CODE_VERSIONS[stage], "params": params, "inputs": inputs}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# the manifest itself, and the marker Snakemake adds to a directory output after the job
NOT_CONTENT = ("manifest.json", ".snakemake_timestamp")


def checksums(folder: Path) -> tuple[str, dict[str, str]]:
    """(sha256 over the relative paths and bytes of every file in ``folder`` but :data:`NOT_CONTENT`; each file's
    own sha256 by relative path), in one read of the bytes. The per-file sums let an integrity check name
    the damaged file (``python -m elude.housekeeping --verify``)."""
    total, files = hashlib.sha256(), {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in NOT_CONTENT):
        rel = str(path.relative_to(folder))
        total.update(rel.encode())
        own = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                total.update(block)
                own.update(block)
        files[rel] = own.hexdigest()
    return total.hexdigest(), files


def content_checksum(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every file in ``folder`` (see :func:`checksums`)."""
    return checksums(folder)[0]


def partial_dir(final: str | Path) -> Path:
    """Where a resumable stage keeps its work in progress: a hidden sibling of its final folder."""
    final = Path(final)
    return final.parent / f".{final.name}.partial"


@contextlib.contextmanager
def atomic_dir(final: str | Path, stage: str, artifact: str, params: dict, inputs: dict[str, str],
               extra: dict | None = None, resumable: bool = False) -> Iterator[tuple[Path, dict]]:
    """Build an artifact folder in a temporary sibling; rename it into place only when complete.

    Yields (temporary folder, manifest dict); the caller may add entries to the manifest. A failure
    never touches a finished artifact. Non-resumable stages use a per-process folder, removed on
    failure; resumable ones use :func:`partial_dir`, kept across failures and kills so that the next
    run continues from the progress recorded there.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_dir(final) if resumable else final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists() and not resumable:
        shutil.rmtree(tmp)
    tmp.mkdir(exist_ok=resumable)
    manifest = {"stage": stage, "id": artifact, "params": params, "inputs": inputs, **(extra or {})}
    t0 = time.time()
    try:
        yield tmp, manifest
        manifest["wall_seconds"] = round(time.time() - t0, 3)
        manifest["libraries"] = library_versions()
        manifest["checksum"], manifest["files"] = checksums(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if final.exists():  # Snakemake may pre-create an empty output folder
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if not resumable:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def build_lock(final: str | Path, results: Path = Path("results")) -> Iterator[int | None]:
    """Hold the exclusive right to build the artifact folder ``final`` (an ``fcntl.flock`` on
    ``results/.locks/<path under results>.lock``, released by the kernel when the holder dies, even by
    SIGKILL). Yields the pid of the process that held it while this one waited, or None. Two runs that
    share an artifact, or a job left running by a killed Snakemake and its rerun, so never write the same
    work-in-progress folder at once; the one that waited finds the artifact finished (see
    :func:`elude.pipeline.stages.run_logged`). On a cluster file system the lock needs flock support (NFSv4; Lustre
    mounted with ``-o flock``); where there is none, the job warns and runs without it."""
    import fcntl

    final, results = Path(final).resolve(), results.resolve()
    rel = final.relative_to(results) if final.is_relative_to(results) else \
        Path("elsewhere", hashlib.sha256(str(final).encode()).hexdigest()[:16])
    lock = results / ".locks" / rel.with_name(rel.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        holder = None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = int(f.read().strip() or 0) or -1
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without flock (e.g. Lustre without -o flock): run unprotected
            import logging

            logging.getLogger(__name__).warning("no build lock on %s (%s): runs that share this results folder must "
                                                "not run at the same time on this file system", lock, exc)
            yield None
            return
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield holder


REMEMBERED = ".runs"  # results/.runs/: every run started on this results folder (housekeeping keeps their work)


def remember_run(results: str | Path, config: dict) -> Path:
    """Remember a run started on the results folder ``results``: its resolved config (defaults filled in) in
    ``results/.runs/<run_name>-<sha of the config>.json``, written before any job. Housekeeping keeps the
    artifacts of every remembered run until the user forgets it (``python -m elude.housekeeping --forget``),
    whatever config file or directory the run came from. The same config started again updates its record."""
    from ..util.files import write_atomic

    body = json.dumps(config, sort_keys=True, default=str)
    path = Path(results) / REMEMBERED / f"{config['run_name']}-{hashlib.sha256(body.encode()).hexdigest()[:12]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"run_name": config["run_name"], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "directory": os.getcwd(), "config": json.loads(body)}
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return path


RUN_RECORD = Path(".snakemake/elude-run.json")  # in the run's directory, beside Snakemake's own lock


def record_run(run_name: str) -> None:
    """Note the running main Snakemake process (pid, host, run name), so that a second invocation in the
    same directory is told who holds it (:func:`active_run`)."""
    import socket

    RUN_RECORD.parent.mkdir(exist_ok=True)
    RUN_RECORD.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run_name": run_name,
                                      "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "proc_start": process_start(os.getpid())}))


def process_start(pid: int) -> str | None:
    """The process's start time since boot (/proc/<pid>/stat, field 22): with the pid it names one process, so a
    pid the kernel has given to a later process (a job of another run, say) is not taken for the recorded run."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def active_run() -> dict | None:
    """The recorded run, if its Snakemake process is alive on this host; None after it ended or was killed
    (then Snakemake's own lock, if left behind, is what ``--unlock`` removes)."""
    import socket

    try:
        rec = json.loads(RUN_RECORD.read_text())
        cmdline = Path(f"/proc/{rec['pid']}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError):
        return None
    alive = (rec["pid"] != os.getpid() and rec.get("host") == socket.gethostname() and b"snakemake" in cmdline
             and rec.get("proc_start", process_start(rec["pid"])) == process_start(rec["pid"]))
    return rec if alive else None
