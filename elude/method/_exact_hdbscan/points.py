"""Points on the device, screened squared distances in blocks, and exact distances (the package's arithmetic)."""
from __future__ import annotations

import contextlib
import threading
import time

import numba
import numpy as np
import torch

from ...util.timing import timed_ms


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
    """The points on the device: float32 (the CPU, and GPUs with slow float64) or float64 (datacenter GPUs) for
    screening, float64 (and on the CPU a numpy view) for exact values."""

    def __init__(self, x: np.ndarray, device: torch.device, block_mb: int, gpu_arithmetic: bool | None = None,
                 screen: torch.dtype | None = None):
        self.device = device
        # The GPU's arithmetic (top-k selection, exact sums in torch) also runs on the CPU when asked: tests do.
        self.gpu_arithmetic = device.type == "cuda" if gpu_arithmetic is None else gpu_arithmetic
        # The screen's precision, chosen before any other work on the device (see screen_dtype)
        self.screen = screen or screen_dtype(device, self.gpu_arithmetic)
        if self.screen not in (torch.float32, torch.float64) or (self.screen == torch.float64
                                                                  and not self.gpu_arithmetic):
            raise ValueError(f"screen {self.screen}: the CPU's arithmetic screens in float32, the GPU's in float32 "
                             "or float64")
        # float64 made on the device: a GPU run keeps no float64 copy on the host (9.8 GB at 400k x 3072)
        x = np.ascontiguousarray(x) if x.flags.writeable else np.array(x)  # torch wants writeable arrays
        self.x64 = torch.from_numpy(x).to(device).double()
        self.x64_np = self.x64.numpy() if device.type == "cpu" else None  # the CPU's exact sums read it
        self.sq64 = (self.x64 * self.x64).sum(1)
        self.n, self.d = x.shape
        # Groups of points (see _groups): the core pass records each row's minimum per group, the finish's
        # bounds. A float32 screen holds the points in group order (each group one contiguous segment of
        # columns; pos[p] = p's row in xs); a float64 screen is the float64 points themselves, put in group
        # order only for the core pass (:meth:`in_group_order`).
        # (group per point, ptr, points in group order) and the core pass's column tiles, on the host
        group, ptr, order, self.tiles = _groups(self.x64, self.sq64)
        self.groups = (group, ptr, order)
        self.pos: torch.Tensor | None = None
        self.group_minima: np.ndarray | None = None  # per point and group: the core pass's (core.core_distances)
        if self.screen == torch.float64:
            self.xs, self.sq_cols = self.x64, self.sq64  # sq_cols: |y|^2 in the screen's dtype and column order
        else:
            order = torch.from_numpy(self.groups[2]).to(device)
            self.pos = torch.empty(self.n, dtype=torch.int64, device=device)
            self.pos[order] = torch.arange(self.n, device=device)
            self.xs = torch.empty((self.n, self.d), dtype=self.screen, device=device)
            for s in range(0, self.n, 4096):  # in chunks: no float64 copy of all points in group order
                self.xs[s : s + 4096] = self.x64[order[s : s + 4096]]
            self.sq_cols = self.sq64[order].to(self.screen)
        self.max_sq = float(self.sq64.max()) if self.n else 0.0
        self.block = max(16, min(self.n, (block_mb * 2**20) // (4 * 8 * max(self.n, 1))))
        # machine-independent work counters (bench/cluster_scale.py prints them)
        self.counters = {"pairs_screened": 0, "pairs_prescreened": 0, "pairs_exact": 0, "rows_screened_in_full": 0,
                         "rows_not_prescreened": 0}

    @contextlib.contextmanager
    def in_group_order(self):
        """The screen in group order for the duration (a float32 screen always is): a float64 screen becomes a copy
        of the points in group order, freed afterwards (9.8 GB at 400k x 3072 on a GPU)."""
        if self.pos is not None:
            yield
            return
        order = torch.from_numpy(self.groups[2]).to(self.device)
        self.xs, self.pos, self.sq_cols = self.x64[order], torch.empty_like(order), self.sq64[order]
        self.pos[order] = torch.arange(self.n, device=self.device)
        try:
            yield
        finally:
            self.xs, self.pos, self.sq_cols = self.x64, None, self.sq64

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

    def screen_rows(self, points: torch.Tensor) -> torch.Tensor:
        """The screen's float rows of ``points`` (point indices)."""
        return self.xs[points if self.pos is None else self.pos[points]]

    def d2_block(self, rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Screened squared distances of ``rows`` to every point (block x n, columns in point order), in
        ``dtype`` (default: the screen's)."""
        dtype = dtype or self.screen
        self.counters["pairs_screened"] += len(rows) * self.n
        sq = self.sq64.to(dtype)
        if dtype == self.xs.dtype:
            with _no_tf32(self.device):
                g = self.screen_rows(rows) @ self.xs.T
            if self.pos is not None:
                g = g[:, self.pos]  # the screen's columns (group order) back to point order
        else:
            x = self.x64.to(dtype)
            with _no_tf32(self.device):
                g = x[rows] @ x.T
        return (sq[rows, None] + sq[None, :]) - 2.0 * g

    def screen_ranges(self, rows: torch.Tensor, ranges: list[tuple[int, int]], out: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Screened |y|^2 - 2 x.y of ``rows`` (point indices) to the points in columns ``ranges`` (half-open, in
        the screen's order: ``self.groups``'s for a float32 screen and inside :meth:`in_group_order`), one fused
        GEMM per range: d^2 less the row's own |x|^2, which no ranking within a row needs; within tol of the
        truth once |x|^2 is added. Returns (rows x the ranges' total width, those columns' positions). ``out``:
        a buffer of at least that many rows and columns to write into (its top left corner is returned; fresh
        pages cost more than the GEMM on some machines)."""
        x = self.screen_rows(rows)
        width = sum(c1 - c0 for c0, c1 in ranges)
        self.counters["pairs_screened"] += len(rows) * width
        cols = torch.cat([torch.arange(c0, c1, device=self.device) for c0, c1 in ranges])
        if out is None:
            out = torch.empty((len(rows), width), dtype=self.xs.dtype, device=self.device)
        out = out[: len(rows), :width]
        at = 0
        with _no_tf32(self.device):
            for c0, c1 in ranges:
                torch.addmm(self.sq_cols[None, c0:c1], x, self.xs[c0:c1].T, alpha=-2.0, out=out[:, at : at + c1 - c0])
                at += c1 - c0
        return out, cols

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


class Prescreen:
    """A cheap screen that only bounds, used by the core pass to skip column tiles that cannot hold a row's neighbours
    (:func:`.core.core_distances`). The GPU's arithmetic: float32 copies of the points through TF32 tensor cores
    (~7x the float64 GEMM's rate on an H100/H200 by the data sheets; where the GPU's arithmetic runs on the CPU, for
    tests, the copies are cut to TF32's 10 mantissa bits, so the bound is exercised as on a GPU). The CPU's:
    bfloat16 copies (3x float32's rate on CPUs with AVX-512 BF16 or AMX), whose GEMM torch returns in bfloat16.

    Bound (:meth:`tol`): each input x_i becomes x~_i with |x~_i - x_i| <= delta |x_i| (TF32: delta = 2^-10, 10
    mantissa bits rounded or cut; bfloat16: 2^-8, rounded to nearest; both + 2^-23 from float64), so |x~.y~ - x.y|
    <= (2 delta + delta^2) sum|x_i y_i|. The products are exact in float32 and their float32 sum errs by at most (d
    + 64) 2^-22 (1 + delta)^2 sum|x_i y_i| in any order (twice the usual unit roundoff: tensor cores may cut instead
    of rounding); a bfloat16 result errs by 2^-7 of itself (cut or rounded), at most 2^-7 (1 + delta)^2 (1 + (d +
    64) 2^-22) sum|x_i y_i|. With C the sum of those factors, sum|x_i y_i| <= (|x|^2 + |y|^2) / 2 and d^2 = |x|^2 +
    |y|^2 - 2 x.y, the product term errs by at most C (|x|^2 + |y|^2); |y|^2 in float32 and the addition's rounding
    add 2^-21 (|x|^2 + |y|^2), values flushed to zero d 2^-100. The core pass checks the bound on every block's
    screened columns (:class:`PrescreenBoundError`). Points whose squares overflow float32's range get no prescreen
    (:attr:`usable`)."""

    def __init__(self, pts: Points, enabled: bool = True):
        self.pts = pts
        self.tf32 = pts.gpu_arithmetic
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # the CPU's bfloat16 product and result
        # float32 sums of d products stay finite; on the CPU only where bfloat16 GEMMs are fast
        self.usable = enabled and pts.max_sq < 1e30 and (self.tf32 or _cpu_bf16_speedup() >= BF16_SPEEDUP)
        # its time per column as a share of the screen's, on the low side (the core pass leaves it out where
        # it skips less than this share): the CPU's measured rate; TF32's below the data sheets' 1/7 of
        # float64 (H100, H200) and 1/2 to 1/8 of float32 (the GPUs that screen in float32)
        self.cost = TF32_COST if self.tf32 else 1 / _cpu_bf16_speedup() if self.usable else 1.0
        if not self.usable:
            return
        order = torch.from_numpy(pts.groups[2]).to(pts.device)
        if pts.device.type == "cuda" and pts.xs.dtype == torch.float32 and pts.pos is not None:
            self.x = pts.xs  # the float32 screen itself: cuBLAS cuts it to TF32
        else:
            self.x = torch.empty((pts.n, pts.d), dtype=torch.float32 if self.tf32 else torch.bfloat16,
                                 device=pts.device)
            for s in range(0, pts.n, 4096):  # in chunks: no float64 copy of all points in group order
                self.x[s : s + 4096] = pts.x64[order[s : s + 4096]]
            if self.tf32 and pts.device.type != "cuda":  # the GPU's TF32 inputs: 10 mantissa bits (cut)
                self.x.view(torch.int32).bitwise_and_(~0x1FFF)
        self.sq = pts.sq64[order].float()
        delta = (2.0**-10 if self.tf32 else 2.0**-8) + 2.0**-23
        summed = (pts.d + 64) * 2.0**-22 * (1 + delta) ** 2
        result = 0.0 if self.tf32 else 2.0**-7 * (1 + delta) ** 2 * (1 + (pts.d + 64) * 2.0**-22)
        coeff = 2 * delta + delta**2 + summed + result + 2.0**-21  # the docstring's bound
        self._tol = coeff * (pts.sq64 + pts.max_sq) + pts.d * 2.0**-100

    def tol(self, rows: torch.Tensor) -> torch.Tensor:
        """Bound on |prescreened d^2 - d^2| for ``rows``' pairs (float64)."""
        return self._tol[rows]

    def less_row_norm(self, rows: torch.Tensor) -> torch.Tensor:
        """Prescreened |y|^2 - 2 x.y of ``rows`` (point indices) to every point, columns in group order (float32)."""
        pts = self.pts
        pts.counters["pairs_prescreened"] += len(rows) * pts.n
        x = self.x[pts.pos[rows]]
        if not self.tf32:  # torch's bfloat16 GEMM returns bfloat16 (in the bound); into buffers kept between blocks
            if self._buffers is None or len(self._buffers[0]) < len(rows):
                self._buffers = (torch.empty((len(rows), pts.n), dtype=torch.bfloat16),
                                 torch.empty((len(rows), pts.n), dtype=torch.float32))
            product = torch.matmul(x, self.x.T, out=self._buffers[0][: len(rows)])
            return torch.sub(self.sq[None, :], product, alpha=2.0, out=self._buffers[1][: len(rows)])
        with _cublas_tf32(True, pts.device):
            return torch.addmm(self.sq[None, :].expand(len(rows), -1), x, self.x.T, alpha=-2.0)


BF16_SPEEDUP = 2.0  # the CPU prescreens where a bfloat16 GEMM runs this much faster than a float32 one or more
TF32_COST = 1 / 8  # the share of the screen's time per column a TF32 prescreen is taken to cost (see Prescreen)
_CPU_BF16: list[float] = []  # measured once per process


def _best_gemm_ms(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fastest of 3 timed ``a @ b.T`` (milliseconds) after a warm-up pass, on their device: the probes'
    measure of a GEMM's rate."""
    return min(timed_ms(lambda m: m[0] @ m[1].T, (a, b), 4, a.device)[1:])


def _cpu_bf16_speedup() -> float:
    """How many times faster a bfloat16 GEMM runs than a float32 one on this CPU (best of 3 of a 256 x 1,024 x
    8,192 product after a warm-up; ~20 ms): 3x with AVX-512 BF16 or AMX, below 1 without them, where a bfloat16
    prescreen would cost more than the float32 screen it saves."""
    with _PROBE_LOCK:
        if not _CPU_BF16:
            gen = torch.Generator().manual_seed(0)
            a, b = torch.randn(256, 1024, generator=gen), torch.randn(8192, 1024, generator=gen)
            _CPU_BF16.append(_best_gemm_ms(a, b) / _best_gemm_ms(a.bfloat16(), b.bfloat16()))
        return _CPU_BF16[0]


class PrescreenBoundError(RuntimeError):
    """A prescreened value lay outside its bound of the screen's: the core pass runs again without prescreen."""


GROUPS = 64  # groups of points whose per-row minima the core pass records for the finish's bounds
FAR_SHARE = 0.1  # the points farthest from their group's pivot join no group: the finish screens them directly


def _groups(x64: torch.Tensor, sq64: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(each point's group or -1, group g's points at order[ptr[g]:ptr[g + 1]] with the far points after
    ptr[-1], order, tiles). A group = the points nearest to one of GROUPS pivots spread over the index range; the
    FAR_SHARE of points farthest from their pivot join none: noise-like points end up in any component, and a
    group meeting components other than its rows' own bounds nothing there. The far points are ordered by their
    nearest pivot too. ``tiles``: the core pass's column tiles in that order (the groups, then the far points
    cut at pivot changes into tiles of about n / GROUPS). Only the speed depends on this."""
    n = len(x64)
    pivots = torch.from_numpy(np.unique(np.linspace(0, n - 1, min(GROUPS, n)).astype(np.int64))).to(x64.device)
    d2 = torch.addmm(sq64[pivots][None, :].expand(n, -1), x64, x64[pivots].T, alpha=-2.0)
    dmin, group = d2.min(1)
    dmin = (dmin + sq64).cpu().numpy()
    nearest = group.cpu().numpy().astype(np.int32)
    group = nearest.copy()
    if n > 1:
        group[dmin > np.quantile(dmin, 1 - FAR_SHARE)] = -1
    key = np.where(group < 0, len(pivots) + nearest, group)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    ptr = np.searchsorted(sorted_key, np.arange(len(pivots) + 1)).astype(np.int64)
    far_cuts, last = [], int(ptr[-1])
    for c in np.flatnonzero(np.diff(sorted_key[ptr[-1]:])) + 1 + int(ptr[-1]):  # pivot changes among far points
        if c - last >= max(1, n // GROUPS):
            far_cuts.append(int(c))
            last = int(c)
    tiles = np.unique(np.concatenate([ptr, far_cuts, [n]])).astype(np.int64)
    return group, ptr, order, tiles


_TF32_LOCK = threading.RLock()


def _cublas_fp32_precision(value: str | None = None) -> str:
    """cuBLAS's float32 matmul precision: read, or set when ``value`` is given ('ieee': no TF32). Through torch's
    ``fp32_precision`` where it exists (torch >= 2.9): there reading the legacy ``allow_tf32`` raises once anything
    in the process set the new one (e.g. ``torch.backends.fp32_precision = "tf32"``)."""
    matmul = torch.backends.cuda.matmul
    try:
        current = matmul.fp32_precision
    except AttributeError:  # torch < 2.9: the legacy flag only
        if value is not None:
            matmul.allow_tf32 = value == "tf32"
        return "tf32" if matmul.allow_tf32 else "ieee"
    if value is not None:
        matmul.fp32_precision = value
    return current if value is None else value


@contextlib.contextmanager
def _cublas_tf32(allowed: bool, device: torch.device | None = None):
    """cuBLAS's float32 GEMMs launched inside run with TF32 ``allowed`` or not, whatever the process set; the
    process's setting comes back afterwards. torch reads the setting when it launches a GEMM (the GPU runs it
    later, in that mode), so the lock is held around launches only: threads (a cluster shard clusters several
    units at once) take turns, and no thread's screen is launched while another has TF32 on for its prescreen.
    GEMMs on the CPU (``device``) need neither: their threads run side by side."""
    if device is not None and device.type != "cuda":
        yield
        return
    with _TF32_LOCK:
        before = _cublas_fp32_precision()
        _cublas_fp32_precision("tf32" if allowed else "ieee")
        try:
            yield
        finally:
            _cublas_fp32_precision(before)


def _no_tf32(device: torch.device | None = None):
    """Screening bounds assume true float32 products: TF32 tensor cores would break them (:func:`_cublas_tf32`)."""
    return _cublas_tf32(False, device)


FLOAT64_SLOWDOWN = 4.0  # a GPU whose float64 GEMMs run this much slower than float32's screens in float32


def screen_dtype(device: torch.device, gpu_arithmetic: bool) -> torch.dtype:
    """The screen's precision. The CPU's arithmetic: float32 (twice float64's rate). The GPU's: float64 where
    float64 GEMMs run about as fast as float32 ones (datacenter GPUs: A100, H100, H200; its band, ~1e9 times
    narrower, leaves almost nothing to recompute), float32 where they run FLOAT64_SLOWDOWN times slower or
    more (workstation and consumer GPUs run float64 at 1/32-1/64 of float32: at 400k x 3072 the float64 screen
    alone would take minutes there). Exact either way: only the speed depends on it. The GPU's arithmetic run
    on the CPU (tests) keeps float64, as on a datacenter GPU."""
    if not gpu_arithmetic:
        return torch.float32
    if device.type != "cuda":
        return torch.float64
    return torch.float32 if _float64_gemm_slowdown(device.index or 0) >= FLOAT64_SLOWDOWN else torch.float64


_PROBE_LOCK = threading.Lock()
_SLOWDOWN: dict[int, float] = {}  # per CUDA device index, measured once per process


def _float64_gemm_slowdown(index: int) -> float:
    """How many times longer a float64 GEMM takes than a float32 one (TF32 off) on CUDA device ``index``: the best
    of 3 timed 2048^3 GEMMs each, after a warm-up (~1 ms on a datacenter GPU, ~15 ms where float64 is slow). The
    lock keeps a shard's units (threads) from measuring it at once, against each other's GEMMs."""
    with _PROBE_LOCK:
        if index not in _SLOWDOWN:
            device = torch.device("cuda", index)
            # its own generator: the process's CUDA random state stays as the caller left it
            a = torch.randn(2048, 2048, device=device, generator=torch.Generator(device).manual_seed(0))
            with _no_tf32():
                _SLOWDOWN[index] = _best_gemm_ms(a.double(), a.double()) / _best_gemm_ms(a, a)
        return _SLOWDOWN[index]
