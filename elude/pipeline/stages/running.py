"""Running a stage as a workflow job: logging, the artifact's build lock, SIGTERM, a full disk
(docs/reliability.md)."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from ..artifacts import build_lock, partial_dir
from .job import Stage

log = logging.getLogger("elude.pipeline.stages")


class Terminated(BaseException):
    """SIGTERM (a SLURM preemption, ``scancel``, a graceful shutdown) arrived in a job; like
    KeyboardInterrupt it is not an ``Exception``, so no library ``except`` swallows it on the way out."""


def _terminate(signum, frame):
    raise Terminated()


def run_logged(stage: dict, log_file: str, threads: int, out: str, fn) -> None:
    """Run the stage job that builds the artifact folder ``out``: logging to its log file and the terminal,
    torch threads, and a failure message that names the stage, the artifact id and the log file.

    Faults (docs/reliability.md): the job holds :func:`elude.pipeline.artifacts.build_lock` on ``out``, and finds
    the artifact finished when another process built it meanwhile (a concurrent run sharing it, or a job
    left running by a killed Snakemake): then it reuses it. SIGTERM stops the job through the normal
    failure path (temporary folders removed, a resumable stage's progress kept for the rerun), exit 143.
    A full disk is named as such."""
    import signal

    from ...util.progress import process_age, setup_logging
    from ..housekeeping import check_inputs

    setup_logging(log_file, f"{stage['name']} {stage['id']}")
    if (age := process_age()) is not None:
        log.info("start-up %.2f s (interpreter and imports, before any work; bench/default_run.py sums these)", age)
    _set_threads(max(1, int(threads)))
    signal.signal(signal.SIGTERM, _terminate)
    _dump_stacks_on_sigusr1(log_file)
    what = f"stage {stage['name']} (artifact {stage['id']})"
    try:
        with build_lock(out) as holder:
            if holder is not None:
                log.info("%s: waited for process %s, which was building %s", what, holder, out)
            if (Path(out) / "manifest.json").is_file():
                log.info("%s: %s was finished by another process; reusing it", what, out)
                return
            check_inputs(Path("results"), stage["inputs"])  # jobs run in the run's directory
            fn(Stage(**stage))
    except Terminated:
        kept = partial_dir(out)
        log.error("%s stopped by SIGTERM; %s -- log: %s", what,
                  f"its progress is kept in {kept}, and the next run continues from it" if kept.exists() else
                  "its temporary folder is removed (this stage restarts when the run is started again)", log_file)
        raise SystemExit(143)
    except Exception as exc:
        if not _disk_full(exc):
            log.error("%s failed: %s: %s -- log: %s", what, type(exc).__name__, exc, log_file)
            raise
        free = shutil.disk_usage(Path(out).parent if Path(out).parent.exists() else ".").free
        log.error("%s failed: the disk is full (%s; %.1f MB free where %s is written). Finished artifacts are "
                  "intact and nothing was published under %s; free space (`python -m elude.housekeeping` lists what "
                  "no run started on this results folder uses, without removing anything; add --delete to remove "
                  "it), then run the same command again -- log: %s", what, exc, free / 1e6, out, out, log_file)
        raise


_STACKS_TO: list = []  # the open log file faulthandler writes to (it must outlive the call that registers it)


def _dump_stacks_on_sigusr1(log_file: str | None) -> None:
    """``kill -USR1 <pid>`` writes every thread's Python stack to the job's log (stderr without one) and the
    job goes on: where a job that seems stuck is, on a laptop or a cluster node, without a debugger."""
    import faulthandler
    import signal

    _STACKS_TO[:] = [open(log_file, "a") if log_file else sys.stderr]  # noqa: SIM115 (open for the process's life)
    faulthandler.register(signal.SIGUSR1, file=_STACKS_TO[0], all_threads=True)


def _set_threads(n: int) -> None:
    """torch's threads: set now where the stage's module imported torch, else through the environment that
    torch reads when the job imports it later (light jobs, e.g. eq. 9's selection, never import it)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or during (zarr and safetensors wrap I/O
    errors), is ENOSPC."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
