"""Points on the device, screened squared distances in blocks, and exact distances (the package's arithmetic)."""
from __future__ import annotations

import contextlib
import threading
import time

import numba
import numpy as np
import torch


@numba.njit(cache=True, nogil=True)
def exact_dist(x: np.ndarray, i: int, j: int) -> float:
    """sqrt(sum((x[i] - x[j])^2)), summed left to right in float64, as hdbscan's euclidean metric does."""
    s = 0.0
    for k in range(x.shape[1]):
        t = x[i, k] - x[j, k]
        s += t * t
    return np.sqrt(s)


@numba.njit(cache=True, nogil=True)
def _exact_dist_pairs(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), dtype=np.float64)
    for p in range(len(a)):
        out[p] = exact_dist(x, a[p], b[p])
    return out


class Points:
    """The points on the device: float32 for screening, float64 (and on the CPU a numpy view) for exact values."""

    def __init__(self, x: np.ndarray, device: torch.device, block_mb: int, gpu_arithmetic: bool | None = None):
        self.device = device
        # float64 made on the device: a GPU run keeps no float64 copy on the host (9.8 GB at 400k x 3072)
        x = np.ascontiguousarray(x) if x.flags.writeable else np.array(x)  # torch wants writeable arrays
        self.x64 = torch.from_numpy(x).to(device).double()
        self.x64_np = self.x64.numpy() if device.type == "cpu" else None  # the CPU's exact sums read it
        self.sq64 = (self.x64 * self.x64).sum(1)
        # The GPU's arithmetic (float64 screen, exact sums in torch) also runs on the CPU when asked: tests do.
        self.gpu_arithmetic = device.type == "cuda" if gpu_arithmetic is None else gpu_arithmetic
        # The screen's precision: float64 GEMMs run as fast as float32 ones on datacenter GPUs (no TF32
        # here), and give a band ~1e9 times narrower; on a CPU float32 is twice as fast.
        self.screen = torch.float64 if self.gpu_arithmetic else torch.float32
        self.xs = self.x64 if self.screen == torch.float64 else self.x64.float()
        self.n, self.d = x.shape
        self.max_sq = float(self.sq64.max()) if self.n else 0.0
        self.block = max(16, min(self.n, (block_mb * 2**20) // (4 * 8 * max(self.n, 1))))
        # machine-independent work counters (bench/cluster_scale.py prints them)
        self.counters = {"pairs_screened": 0, "pairs_exact": 0, "rows_exact_in_full": 0}

    def clock(self) -> float:
        """Wall time after the device's queued work has finished (phase timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def tol(self, rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Bound on |screened d^2 - d^2|: a dot product of d terms errs by at most d u sum|x_i y_i| <=
        d u (|x|^2 + |y|^2) / 2 (u = unit roundoff), doubled in d^2, plus the norms and the input cast."""
        u = float(torch.finfo(dtype or self.screen).eps) / 2
        return (self.d + 16) * u * (self.sq64[rows] + self.max_sq)

    def d2_block(self, rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Screened squared distances of ``rows`` to every point (block x n), in ``dtype`` (default: the screen's)."""
        dtype = dtype or self.screen
        self.counters["pairs_screened"] += len(rows) * self.n
        x = self.xs if dtype == self.xs.dtype else self.x64.to(dtype)
        sq = self.sq64.to(dtype)
        with _no_tf32():
            g = x[rows] @ x.T
        return (sq[rows, None] + sq[None, :]) - 2.0 * g

    def d2_less_row_norm(self, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Screened |y|^2 - 2 x.y of ``rows`` to every point: d^2 less the row's own |x|^2, which no ranking
        within a row needs (one fused GEMM, no extra passes); within tol of the truth once |x|^2 is added.
        ``out``: a (rows x n) buffer to write into (reused between blocks: fresh pages cost more than the GEMM
        on some machines)."""
        self.counters["pairs_screened"] += len(rows) * self.n
        sq = self.sq64.to(self.screen)
        with _no_tf32():
            return torch.addmm(sq[None, :].expand(len(rows), -1), self.xs[rows], self.xs.T, alpha=-2.0, out=out)

    def exact(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Exact distances of the pairs (a, b), as float64 on the device."""
        if len(a) == 0:
            return torch.empty(0, dtype=torch.float64, device=self.device)
        self.counters["pairs_exact"] += len(a)
        if not self.gpu_arithmetic:
            return torch.from_numpy(_exact_dist_pairs(self.x64_np, a.numpy().astype(np.int64),
                                                      b.numpy().astype(np.int64)))
        out = torch.empty(len(a), dtype=torch.float64, device=self.device)
        step = max(1, (256 * 2**20) // (8 * self.d))
        for s in range(0, len(a), step):
            diff = self.x64[a[s : s + step]] - self.x64[b[s : s + step]]
            out[s : s + step] = (diff * diff).sum(1).sqrt()
        return out

    def exact_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Exact distances of ``rows`` to every point (len(rows) x n); for the rare rows the screen cannot settle."""
        self.counters["rows_exact_in_full"] += len(rows)
        a = rows.repeat_interleave(self.n)
        b = torch.arange(self.n, device=self.device).repeat(len(rows))
        return self.exact(a, b).reshape(len(rows), self.n)


_TF32_LOCK = threading.Lock()
_TF32_HOLDERS = [0, False]  # [threads inside _no_tf32, the setting they found]


@contextlib.contextmanager
def _no_tf32():
    """Screening bounds assume true float32 products: TF32 tensor cores would break them. Reentrant across
    threads (a cluster shard clusters several units at once): the first in turns TF32 off, the last out
    restores it, so no thread's GEMM runs while another has turned it back on."""
    with _TF32_LOCK:
        if _TF32_HOLDERS[0] == 0:
            _TF32_HOLDERS[1] = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
        _TF32_HOLDERS[0] += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _TF32_HOLDERS[0] -= 1
            if _TF32_HOLDERS[0] == 0:
                torch.backends.cuda.matmul.allow_tf32 = _TF32_HOLDERS[1]
