"""Logging and progress for long stages: items done, rate and time left, to the log and the terminal."""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("elude")


def setup_logging(log_file: str | None, stage: str) -> logging.Logger:
    """Send library logs to ``log_file`` and to stderr, each line prefixed with the stage."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s [{stage}] %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="a"))  # Snakemake removes it before a job; kept when
        # the job reuses an artifact another process finished (rules/common.smk)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    logging.captureWarnings(True)
    return log


def process_age() -> float | None:
    """Seconds since this process started (psutil, which Snakemake brings; None without it)."""
    try:
        import psutil
    except ImportError:
        return None
    return time.time() - psutil.Process().create_time()


def progress(items: Iterable[T], total: int, what: str, every_s: float = 5.0) -> Iterator[T]:
    """Iterate, logging 'what: done/total, rate, time left' at most every ``every_s`` seconds and at the end."""
    t0 = last = time.time()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.time()
        if now - last >= every_s or done == total:
            last = now
            log.info("%s: %s", what, tqdm.format_meter(done, total, now - t0, unit="it"))
