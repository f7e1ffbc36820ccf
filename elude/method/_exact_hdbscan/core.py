"""Core distances and radius lists (every neighbour within a point's core distance), in blocks."""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

from .points import Points, Prescreen, PrescreenBoundError, exact_dist

log = logging.getLogger(__name__)

SAMPLE_STEP = 8  # the CPU's selection reads every 8th screened value of a row for its first threshold
PRESCREEN_WINDOW = 4  # the last prescreened blocks whose skipped shares decide whether the next blocks prescreen
PROBE_EVERY = 16  # where the prescreen does not pay, one block in this many still prescreens (_Tiles.account)


@numba.njit(cache=True, nogil=True)
def _core_rows(s, rows, tol, k, x, cap, core_out, count_out, members_out, exact_out, col_point, row_pos):
    """The CPU's core pass for screened rows ``s[r]`` = |y|^2 - 2 x_a.y (a = rows[r]; the row's own |x_a|^2
    left out: it shifts a row by one number), each within ``tol[r]`` of d^2 - |x_a|^2.

    Per row: v = the k-th smallest (0-based) screened value among the other points, found by a linear-time
    selection (a threshold from every SAMPLE_STEP-th value, checked by counting, then a partition of the
    few values below it); points screened below v - 2 tol are certainly closer than the core distance (the
    k-th order statistic moves by at most tol when every value does), those within v +- 2 tol are
    recomputed exactly (:func:`exact_dist`), the core distance is the (k - certain)-th of them, and the radius
    list = the certain ones + the band's within the core distance. Writes core_out[r], count_out[r] (the
    list's length; the list itself into members_out[r] only when it fits ``cap``) and exact_out[r].

    The columns are in the screen's order: column j is point col_point[j], the row's own point column
    row_pos[r]."""
    b, n = s.shape
    vals = np.empty(n, dtype=np.float32)
    idx = np.empty(n, dtype=np.int64)
    band = np.empty(n, dtype=np.float64)
    m = (n + SAMPLE_STEP - 1) // SAMPLE_STEP
    sample = np.empty(m, dtype=np.float32)
    want = k + 2  # k + 1 other points, and the point itself may fall below the threshold too
    ks = want * m // n + 4 + int(4.0 * np.sqrt(want * m / n))  # a sample rank well above the expected one
    for r in range(b):
        row, a, pa = s[r], rows[r], row_pos[r]
        threshold = np.inf
        if ks < m:
            for i in range(m):
                sample[i] = row[i * SAMPLE_STEP]
            threshold = np.partition(sample, ks)[ks]
        c = 0
        for j in range(n):
            if row[j] <= threshold and j != pa:
                vals[c], idx[c] = row[j], j
                c += 1
        if c < k + 1:  # the sample's threshold was too low: take the whole row
            threshold, c = np.inf, 0
            for j in range(n):
                if j != pa:
                    vals[c], idx[c] = row[j], j
                    c += 1
        v = np.float64(np.partition(vals[:c], k)[k])
        hi, lo = v + 2.0 * tol[r], v - 2.0 * tol[r]
        if hi > threshold:  # the band reaches past the threshold: collect again up to the band's top
            c = 0
            for j in range(n):
                if row[j] <= hi and j != pa:
                    vals[c], idx[c] = row[j], j
                    c += 1
        for e in range(c):  # the collected columns' points
            idx[e] = col_point[idx[e]]
        inside, nb = 0, 0
        for e in range(c):
            if vals[e] < lo:
                inside += 1
            elif vals[e] <= hi:
                band[nb] = exact_dist(x, a, idx[e])
                nb += 1
        core = np.partition(band[:nb], k - inside)[k - inside]
        count, nb = 0, 0
        for e in range(c):
            keep = vals[e] < lo
            if not keep and vals[e] <= hi:
                keep = band[nb] <= core
                nb += 1
            if keep:
                if count < cap:
                    members_out[r, count] = idx[e]
                count += 1
        core_out[r], count_out[r], exact_out[r] = core, count, nb


class _Tiles:
    """The core pass's column tiles (``pts.tiles``) and, per block of rows in group order, which of them its
    rows can have neighbours in (see :func:`core_distances`)."""

    def __init__(self, pts: Points, rank: int, prescreen: bool):
        self.pts, self.rank, self.bounds = pts, rank, pts.tiles
        self.lp = Prescreen(pts, prescreen)
        self.active = self.lp.usable  # prescreening every block: off while it does not pay (account)
        self._shares: deque[float] = deque(maxlen=PRESCREEN_WINDOW)
        self._block = 0
        dev = pts.device
        self.sizes = torch.from_numpy(np.diff(self.bounds)).to(dev)
        self.tile_of = torch.from_numpy(np.repeat(np.arange(len(self.sizes)), np.diff(self.bounds))).to(dev)
        group_ptr = pts.groups[1]
        groups = np.flatnonzero(group_ptr[1:] > group_ptr[:-1])  # a non-empty group is one tile
        self.group_tile = torch.from_numpy(np.searchsorted(self.bounds, group_ptr[groups])).to(dev)
        self.groups = torch.from_numpy(groups).to(dev)

    def ranges(self, chosen: torch.Tensor) -> list[tuple[int, int]]:
        """The chosen tiles' columns as maximal half-open ranges (neighbouring tiles merged)."""
        out: list[tuple[int, int]] = []
        for t in np.flatnonzero(chosen.cpu().numpy()):
            c0, c1 = int(self.bounds[t]), int(self.bounds[t + 1])
            if out and out[-1][1] == c0:
                out[-1] = (out[-1][0], c1)
            else:
                out.append((c0, c1))
        return out

    def first(self, rows: torch.Tensor, start: int, stop: int, sq_r: torch.Tensor
              ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(the prescreen of the block, per row and tile a lower bound of its squared distances (float64), the
        tiles to screen first: per row the tiles of smallest bound until they hold rank + 1 other points, and
        the rows' own). Without a prescreen: (None, None, every tile)."""
        self._block += 1
        if not (self.active or (self.lp.usable and self._block % PROBE_EVERY == 0)):
            return None, None, torch.ones(len(self.sizes), dtype=torch.bool, device=self.pts.device)
        pre = self.lp.less_row_norm(rows)
        lower = self.minima(pre) + (sq_r - self.lp.tol(rows))[:, None]
        near = lower.argsort(1)
        before = self.sizes[near].cumsum(1) - self.sizes[near]
        first = torch.zeros(len(self.sizes), dtype=torch.bool, device=self.pts.device)
        first[near[before < self.rank + 2]] = True
        first[self.tile_of[start:stop]] = True  # the rows' own columns
        return pre, lower, first

    def account(self, rows: int, screened: int, prescreened: bool) -> None:
        """A block of ``rows`` rows was screened against ``screened`` columns, after a prescreen or not. Each block
        prescreens while the share of columns skipped, averaged over the last PRESCREEN_WINDOW prescreened
        blocks, is at least the prescreen's cost (:attr:`.points.Prescreen.cost`); below it only every
        PROBE_EVERY-th block does, and turns it back on where the share rises (rows run in group order, and one
        group may be diffuse where others are tight). On points without clusters it skips little and would only
        add its cost (on the CPU more than the screen's third: its tile minima, a screen split into ranges).
        Only the speed depends on this."""
        if not prescreened:
            self.pts.counters["rows_not_prescreened"] += rows if self.lp.usable else 0
            return
        self._shares.append(1 - screened / self.pts.n)
        if len(self._shares) == self._shares.maxlen:
            self.active = sum(self._shares) / len(self._shares) >= self.lp.cost

    def minima(self, block: torch.Tensor) -> torch.Tensor:
        """Per row of ``block`` (every column, group order) its smallest value in each tile, as float64."""
        b = self.bounds
        return torch.stack([block[:, t0:t1].amin(1) for t0, t1 in zip(b[:-1], b[1:])], 1).double()

    def check(self, pre: torch.Tensor, screen: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor) -> None:
        """The prescreen's bound, checked on the columns screened (:class:`PrescreenBoundError` where it fails):
        on a GPU every row (TF32's arithmetic is the hardware's), on the CPU every 8th (the arithmetic is
        tested; a bound that failed would fail systematically)."""
        step = 1 if self.pts.device.type == "cuda" else 8
        slack = self.lp.tol(rows[::step]) + self.pts.tol(rows[::step])
        over = (pre[::step, cols].double() - screen[::step].double()).abs() - slack[:, None]
        if bool((over > 0).any()):
            raise PrescreenBoundError(f"a prescreened squared distance lay {float(over.max()):.3g} outside its bound")

    def more(self, lower: torch.Tensor, upper: torch.Tensor, tol: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """The other tiles some row may have a neighbour in: bound <= U + 3 tol, U >= that row's core^2."""
        return ~(lower - 3 * tol[:, None] > upper[:, None]).all(0) & ~first

    def group_minima(self, gmin, rows: torch.Tensor, lower: torch.Tensor, sq_r: torch.Tensor) -> None:
        """The finish's bounds: per row and group at most the smallest screened |y|^2 - 2 x.y over the group
        plus tol (``boruvka._finish_minima``): the tile bounds less |x|^2, rounded down to ``gmin``'s dtype."""
        low = lower[:, self.group_tile] - sq_r[:, None]
        if isinstance(gmin, np.ndarray):
            gmin[rows.numpy()[:, None], self.groups.numpy()[None, :]] = _round_down(low, torch.float32).numpy()
        else:
            gmin[rows[:, None], self.groups[None, :]] = _round_down(low, gmin.dtype)


def _round_down(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values`` (float64) in ``dtype``, never above: a lower bound stays one."""
    out = values.to(dtype)
    if dtype != values.dtype:
        out = torch.where(out.double() > values, torch.nextafter(out, torch.full_like(out, float("-inf"))), out)
    return out


def _csr(n: int, pieces: list, like: torch.Tensor, in_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(indptr, neighbours) in row order from lists made in any row order (``in_order``: the pieces' rows are
    0 .. n - 1 one after another): pieces of (rows, their lists one after another (int32), their lengths)."""
    counts = torch.zeros(n, dtype=torch.int64, device=like.device)
    for r, _, c in pieces:
        counts[r] = c
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=like.device)
    indptr[1:] = counts.cumsum(0)
    if in_order:
        return indptr, torch.cat([nb for _, nb, _ in pieces])
    neighbours = torch.empty(int(indptr[-1]), dtype=torch.int32, device=like.device)
    for r, nb, c in pieces:
        if len(nb):
            within = torch.arange(len(nb), device=like.device) - (c.cumsum(0) - c).repeat_interleave(c)
            neighbours[indptr[r].repeat_interleave(c) + within] = nb
    return indptr, neighbours


def core_distances(pts: Points, min_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Core distances (float64) and the radius lists: for each point a, every b != a with d(a, b) <= core_a.

    Returns (core, indptr, neighbours, stats); neighbours are int32 in CSR layout (indptr int64).

    Both arithmetics take the rows in blocks in group order and screen a block only against the column tiles
    (``pts.tiles``: the groups, the far points by nearest pivot) that can hold a neighbour of one of its rows.
    A prescreen (:class:`.points.Prescreen`: TF32 on a GPU, bfloat16 on the CPU) of the block against all
    points gives per row and tile a lower bound L of the squared distances in the tile; the block is
    screened first against the tiles of smallest L that hold the row's min_samples + 1 other points, which
    gives U = that screen's min_samples-th value + tol >= core^2 (that many other points lie within it). A
    tile whose L exceeds U + 3 tol for every row of the block is skipped: each of its points is screened
    above U + 2 tol >= v + 3 tol, v the min_samples-th screened value over all columns (more columns only
    lower it), so outside the band v +- 2 tol and every radius list: the core distances and lists are
    those of the full rows. The finish's group minima come from the prescreen, lowered by its bound (they
    need only be lower bounds, see ``boruvka._finish_minima``). On clustered data a block's rows meet few
    tiles; where the last blocks skipped less than the prescreen costs, most blocks are screened in full
    without it (:meth:`_Tiles.account`). Where the prescreen's bound fails on the columns screened
    (it never has), the pass runs again without it and a warning says so."""
    try:
        return _core_pass(pts, min_samples, prescreen=True)
    except PrescreenBoundError as exc:
        log.warning("exact HDBSCAN: %s; the core pass runs again without a prescreen", exc)
        pts.counters["prescreen_failed"] = 1
        return _core_pass(pts, min_samples, prescreen=False)


def _core_pass(pts: Points, min_samples: int, prescreen: bool):
    if not pts.gpu_arithmetic:
        return _core_distances_cpu(pts, min_samples, prescreen)
    n, dev = pts.n, pts.device
    rank = min_samples  # index of the core distance in the sorted row, the point itself at index 0
    keep = min(n, rank + 1 + max(8, rank // 8))
    core = torch.empty(n, dtype=torch.float64, device=dev)
    pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (rows, their neighbours (int32), counts)
    fallback = 0
    col_point = torch.from_numpy(pts.groups[2]).to(dev)
    gmin = torch.full((n, len(pts.groups[1]) - 1), float("inf"), dtype=pts.screen, device=dev)
    with pts.in_group_order():
        tiles = _Tiles(pts, rank, prescreen)
        for start in range(0, n, pts.block):
            stop = min(n, start + pts.block)
            rows = col_point[start:stop]  # point indices, in group order: a block's rows meet few tiles
            b, sq_r, tol = stop - start, pts.sq64[rows], pts.tol(rows)
            pre, lower, first = tiles.first(rows, start, stop, sq_r)
            d2, cols = pts.screen_ranges(rows, tiles.ranges(first))
            prescreened = pre is not None
            if not prescreened:  # the group minima from the screen itself (every column, in order)
                lower = tiles.minima(d2) + (sq_r - tol)[:, None]
            else:
                tiles.check(pre, d2, cols, rows)
                del pre
            tiles.group_minima(gmin, rows, lower, sq_r)
            d2[torch.arange(b, device=dev), torch.searchsorted(cols, torch.arange(start, stop, device=dev))] = \
                float("-inf")  # the point itself: always first
            screens = [(d2, cols)]  # the block's screen: its rows' whole rows, as far as any reaches the band
            vals, idx = torch.topk(d2, min(keep, d2.shape[1]), dim=1, largest=False, sorted=True)
            idx = cols[idx]
            if prescreened:
                more = tiles.more(lower, vals[:, rank].double() + sq_r + tol, tol, first)
                if bool(more.any()):  # their screen, merged with the candidates so far
                    extra, extra_cols = pts.screen_ranges(rows, tiles.ranges(more))
                    screens.append((extra, extra_cols))
                    merged = torch.cat([vals, extra], 1)
                    vals, pick = torch.topk(merged, min(keep, merged.shape[1]), dim=1, largest=False, sorted=True)
                    idx = torch.cat([idx, extra_cols[None, :].expand(b, -1)], 1).gather(1, pick)
                    del extra, merged
            width = sum(len(c) for _, c in screens)
            tiles.account(b, width, prescreened)
            idx = col_point[idx]  # columns back to points
            vals += sq_r[:, None].to(vals.dtype)  # the row's |x|^2 back: screened d^2 (the point itself -inf)
            v = vals[:, rank : rank + 1]
            inside = vals < v - 2 * tol[:, None]  # certainly closer than the core distance
            band = ~inside & (vals <= v + 2 * tol[:, None])  # to be decided exactly
            kept = vals.shape[1]
            overflow = band[:, -1] if kept < width else torch.zeros(b, dtype=torch.bool, device=dev)
            r_i, c_i = band.nonzero(as_tuple=True)
            exact = pts.exact(rows[r_i], idx[r_i, c_i])
            band_d = torch.full(vals.shape, float("inf"), dtype=torch.float64, device=dev)
            band_d[r_i, c_i] = exact
            band_sorted = band_d.sort(dim=1).values
            n_in = inside.sum(1)
            core_b = band_sorted.gather(1, (rank - n_in).clamp(min=0, max=kept - 1)[:, None])[:, 0]
            member = inside | (band_d <= core_b[:, None])
            member[vals < -0.5] = False  # not the point itself
            all_cols = torch.cat([c for _, c in screens]) if bool(overflow.any()) else None
            for r in overflow.nonzero()[:, 0].tolist():  # the band runs past the kept candidates (ties): the
                fallback += 1  # same band over the row's whole screen, still in memory (no skipped tile reaches it)
                pts.counters["rows_screened_in_full"] += 1
                row = torch.cat([sc[r] for sc, _ in screens]) + sq_r[r].to(d2.dtype)
                lo, hi = float(v[r, 0] - 2 * tol[r]), float(v[r, 0] + 2 * tol[r])
                near = ((row <= hi) & (row > float("-inf"))).nonzero()[:, 0]  # not the point itself
                sure, maybe = near[row[near] < lo], near[row[near] >= lo]
                ex = pts.exact(rows[r].expand(len(maybe)), col_point[all_cols[maybe]])
                core_b[r] = ex.sort().values[rank - 1 - len(sure)]  # rank - 1: the point itself is not in near
                nb = col_point[all_cols[torch.cat([sure, maybe[ex <= core_b[r]]])]]
                pieces.append((rows[r : r + 1], nb.to(torch.int32), torch.tensor([len(nb)], device=dev)))
            del d2, screens
            core[rows] = core_b
            ok = ~overflow
            pieces.append((rows[ok], idx[ok][member[ok]].to(torch.int32), member[ok].sum(1)))
    pts.group_minima = gmin.cpu().numpy()
    indptr, neighbours = _csr(n, pieces, core)
    return core, indptr, neighbours, {"core_fallback_rows": fallback, "radius_edges": int(len(neighbours))}


def _core_distances_cpu(pts: Points, min_samples: int, prescreen: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """:func:`core_distances` on the CPU: each block's screen (the tiles of :class:`_Tiles`), then
    :func:`_core_rows` on the block's rows, split between the threads torch may use (the kernel releases the
    GIL); a list longer than the kernel's room (ties) is redone alone with room for every point."""
    n, k = pts.n, min_samples - 1
    cap = min(n, min_samples + max(8, min_samples // 8))  # a radius list longer than this (ties) is redone alone
    order = pts.groups[2]
    gmin = np.full((n, len(pts.groups[1]) - 1), np.inf, dtype=np.float32)
    workers = max(1, torch.get_num_threads())
    core = np.empty(n)
    pieces = []
    long_rows = 0
    members = np.empty((min(n, pts.block), cap), dtype=np.int32)
    exact = np.zeros(min(n, pts.block), dtype=np.int64)
    tiles = _Tiles(pts, min_samples, prescreen)
    screened = torch.empty((min(n, pts.block), n), dtype=pts.screen)  # every block's screen, written into
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, n, pts.block):
            stop = min(n, start + pts.block)
            # point indices: in group order, where tiles can be skipped (a block's rows meet few), else in order
            rows = order[start:stop] if tiles.lp.usable else np.arange(start, stop)
            rows_t = torch.from_numpy(rows)
            b, sq_r, tol_t = stop - start, pts.sq64[rows_t], pts.tol(rows_t)
            pre, lower, first = tiles.first(rows_t, start, stop, sq_r)
            s, cols = pts.screen_ranges(rows_t, tiles.ranges(first), out=screened)
            row_pos = torch.searchsorted(cols, pts.pos[rows_t]).numpy()  # each row's own column in s
            prescreened = pre is not None
            if not prescreened:
                lower = tiles.minima(s) + (sq_r - tol_t)[:, None]
            else:
                tiles.check(pre, s, cols, rows_t)
                del pre
                # U: the (min_samples + 1)-th smallest with the point itself, so min_samples others within it
                least = s.topk(min(min_samples + 1, s.shape[1]), dim=1, largest=False, sorted=False).values
                upper = least.amax(1).double() + sq_r + tol_t
                more = tiles.more(lower, upper, tol_t, first)
                if bool(more.any()):  # screened into the columns after the first tiles'
                    _, extra_cols = pts.screen_ranges(rows_t, tiles.ranges(more), out=screened[:, len(cols) :])
                    s, cols = screened[:b, : len(cols) + len(extra_cols)], torch.cat([cols, extra_cols])
            tiles.account(b, len(cols), prescreened)
            tiles.group_minima(gmin, rows_t, lower, sq_r)
            s, cols = s.numpy(), cols.numpy()
            col_point = order[cols]
            tol = tol_t.numpy()
            core_b, cnt = np.empty(b), np.empty(b, dtype=np.int64)
            cuts = np.linspace(0, b, workers + 1).astype(int)

            def part(i: int, s=s, rows=rows, tol=tol, cuts=cuts, col_point=col_point, row_pos=row_pos,
                     core_b=core_b, cnt=cnt) -> None:
                a, e = cuts[i], cuts[i + 1]
                _core_rows(s[a:e], rows[a:e], tol[a:e], k, pts.x64_np, cap, core_b[a:e], cnt[a:e], members[a:e],
                           exact[a:e], col_point, row_pos[a:e])

            list(pool.map(part, range(workers)))
            pts.counters["pairs_exact"] += int(exact[:b].sum())
            long_lists = {}
            for r in np.flatnonzero(cnt > cap):  # the long lists again, each with room for every point
                room, redone = np.empty((1, n), dtype=np.int32), np.zeros(1, dtype=np.int64)
                _core_rows(s[r : r + 1], rows[r : r + 1], tol[r : r + 1], k, pts.x64_np, n, core_b[r : r + 1],
                           cnt[r : r + 1], room, redone, col_point, row_pos[r : r + 1])
                pts.counters["pairs_exact"] += int(redone[0])
                long_lists[r] = room[0, : cnt[r]]
            long_rows += len(long_lists)
            if long_lists:
                block = np.concatenate([long_lists.get(r, members[r, : cnt[r]]) for r in range(b)])
            else:
                block = members[:b][np.arange(cap)[None, :] < cnt[:, None]]
            core[rows] = core_b
            pieces.append((rows_t, torch.from_numpy(block), torch.from_numpy(cnt)))
    pts.group_minima = gmin
    indptr, neighbours = _csr(n, pieces, torch.from_numpy(core), in_order=not tiles.lp.usable)
    return torch.from_numpy(core), indptr, neighbours, {"core_fallback_rows": long_rows, "radius_edges": len(neighbours)}
