"""Core distances and radius lists (every neighbour within a point's core distance), in blocks."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

from .points import Points, exact_dist

SAMPLE_STEP = 8  # the CPU's selection reads every 8th screened value of a row for its first threshold


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


def core_distances(pts: Points, min_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Core distances (float64) and the radius lists: for each point a, every b != a with d(a, b) <= core_a.

    Returns (core, indptr, neighbours, stats); neighbours are int32 in CSR layout (indptr int64).
    """
    if not pts.gpu_arithmetic:
        return _core_distances_cpu(pts, min_samples)
    n, dev = pts.n, pts.device
    rank = min_samples  # index of the core distance in the sorted row, the point itself at index 0
    keep = min(n, rank + 1 + max(8, rank // 8))
    core = torch.empty(n, dtype=torch.float64, device=dev)
    lists: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (rows, their neighbours (int32), counts)
    fallback = 0
    group_ptr, col_point = pts.groups[1], torch.from_numpy(pts.groups[2]).to(dev)
    gmin = torch.full((n, len(group_ptr) - 1), float("inf"), dtype=pts.screen, device=dev)
    with pts.in_group_order():  # columns in group order: each group's minimum is a contiguous slice's
        for start in range(0, n, pts.block):
            rows = torch.arange(start, min(n, start + pts.block), device=dev)
            d2 = pts.d2_less_row_norm(rows)
            for g in range(len(group_ptr) - 1):  # each row's smallest value per group: the finish's bounds
                if group_ptr[g + 1] > group_ptr[g]:
                    gmin[start : start + len(rows), g] = d2[:, group_ptr[g] : group_ptr[g + 1]].amin(1)
            d2[torch.arange(len(rows), device=dev), pts.pos[rows]] = float("-inf")  # the point itself: always first
            vals, idx = torch.topk(d2, keep, dim=1, largest=False, sorted=True)
            idx = col_point[idx]  # columns back to points
            vals += pts.sq64[rows, None].to(vals.dtype)  # the row's |x|^2 back: screened d^2 (the point itself -inf)
            tol = pts.tol(rows)[:, None]
            v = vals[:, rank : rank + 1]
            inside = vals < v - 2 * tol  # certainly closer than the core distance
            band = ~inside & (vals <= v + 2 * tol)  # to be decided exactly
            overflow = band[:, -1] if keep < n else torch.zeros(len(rows), dtype=torch.bool, device=dev)
            r_i, c_i = band.nonzero(as_tuple=True)
            exact = pts.exact(rows[r_i], idx[r_i, c_i])
            band_d = torch.full(vals.shape, float("inf"), dtype=torch.float64, device=dev)
            band_d[r_i, c_i] = exact
            band_sorted = band_d.sort(dim=1).values
            n_in = inside.sum(1)
            core_b = band_sorted.gather(1, (rank - n_in).clamp(min=0, max=keep - 1)[:, None])[:, 0]
            member = inside | (band_d <= core_b[:, None])
            member[vals < -0.5] = False  # not the point itself
            for r in overflow.nonzero()[:, 0].tolist():  # the band runs past the kept candidates (ties): the
                fallback += 1  # same band over the whole screened row, still in d2
                pts.counters["rows_screened_in_full"] += 1
                row = d2[r] + pts.sq64[rows[r]].to(d2.dtype)
                lo, hi = float(v[r, 0] - 2 * tol[r, 0]), float(v[r, 0] + 2 * tol[r, 0])
                near = ((row <= hi) & (row > float("-inf"))).nonzero()[:, 0]  # not the point itself
                sure, maybe = near[row[near] < lo], near[row[near] >= lo]
                ex = pts.exact(rows[r].expand(len(maybe)), col_point[maybe])
                core_b[r] = ex.sort().values[rank - 1 - len(sure)]  # rank - 1: the point itself is not in near
                nb = torch.cat([col_point[sure], col_point[maybe[ex <= core_b[r]]]])
                lists.append((rows[r : r + 1], nb.to(torch.int32), torch.tensor([len(nb)], device=dev)))
            del d2
            core[rows] = core_b
            ok = ~overflow
            lists.append((rows[ok], idx[ok][member[ok]].to(torch.int32), member[ok].sum(1)))
    pts.group_minima = gmin.cpu().numpy()
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    if fallback:  # CSR in row order (fallback rows were appended out of order)
        row_of = torch.cat([r.repeat_interleave(c) for r, _, c in lists])
        order = torch.argsort(row_of, stable=True)
        neighbours = torch.cat([nb for _, nb, _ in lists])[order]
        indptr[1:] = torch.bincount(row_of, minlength=n).cumsum(0)
    else:  # the blocks' lists are already in row order
        neighbours = torch.cat([nb for _, nb, _ in lists])
        indptr[1:] = torch.cat([c for _, _, c in lists]).cumsum(0)
    return core, indptr, neighbours, {"core_fallback_rows": fallback, "radius_edges": int(len(neighbours))}


def _core_distances_cpu(pts: Points, min_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """:func:`core_distances` on the CPU: each block's screen (one GEMM into a reused buffer), then
    :func:`_core_rows` on the block's rows, split between the threads torch may use (the kernel releases the
    GIL); the lists go straight into one array (each at least min_samples long; grown when ties lengthen them)."""
    n, k = pts.n, min_samples - 1
    cap = min(n, min_samples + max(8, min_samples // 8))  # a radius list longer than this (ties) is redone alone
    group, group_ptr, col_point = pts.groups
    row_pos = pts.pos.numpy()
    gmin = np.empty((n, len(group_ptr) - 1), dtype=np.float32)
    seg_starts = np.minimum(group_ptr[:-1], group_ptr[-1] - 1)  # empty groups at the end: any index, set to inf
    workers = max(1, torch.get_num_threads())
    core = np.empty(n)
    counts = np.empty(n, dtype=np.int64)
    neighbours = np.empty(n * min_samples + cap, dtype=np.int32)
    used, long_rows = 0, 0
    screened = torch.empty((min(n, pts.block), n), dtype=pts.screen)
    members = np.empty((min(n, pts.block), cap), dtype=np.int32)
    exact = np.zeros(min(n, pts.block), dtype=np.int64)
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, n, pts.block):
            stop = min(n, start + pts.block)
            rows = np.arange(start, stop)
            s = pts.d2_less_row_norm(torch.from_numpy(rows), out=screened[: len(rows)]).numpy()
            tol = pts.tol(torch.from_numpy(rows)).numpy()
            cuts = np.linspace(0, len(rows), workers + 1).astype(int)

            def part(i: int, s=s, rows=rows, tol=tol, cuts=cuts, start=start) -> None:
                a, b = cuts[i], cuts[i + 1]
                _core_rows(s[a:b], rows[a:b], tol[a:b], k, pts.x64_np, cap, core[start + a : start + b],
                           counts[start + a : start + b], members[a:b], exact[a:b], col_point,
                           row_pos[start + a : start + b])
                # each row's smallest value per group (a contiguous segment of columns): the finish's bounds
                gmin[start + a : start + b] = np.minimum.reduceat(s[a:b, : group_ptr[-1]], seg_starts, axis=1)

            list(pool.map(part, range(workers)))
            pts.counters["pairs_exact"] += int(exact[: len(rows)].sum())
            cnt = counts[start:stop]
            if used + int(cnt.sum()) > len(neighbours):  # ties made lists longer than min_samples
                grown = np.empty(len(neighbours) + max(len(neighbours), int(cnt.sum())), np.int32)
                grown[:used] = neighbours[:used]
                neighbours = grown
            long_lists = {}
            for r in np.flatnonzero(cnt > cap):  # the long lists again, each with room for every point
                room, redone = np.empty((1, n), dtype=np.int32), np.zeros(1, dtype=np.int64)
                _core_rows(s[r : r + 1], rows[r : r + 1], tol[r : r + 1], k, pts.x64_np, n,
                           core[start + r : start + r + 1], counts[start + r : start + r + 1], room, redone, col_point,
                           row_pos[start + r : start + r + 1])
                pts.counters["pairs_exact"] += int(redone[0])
                long_lists[r] = room[0, : cnt[r]]
            long_rows += len(long_lists)
            if long_lists:
                block = np.concatenate([long_lists.get(r, members[r, : cnt[r]]) for r in range(len(rows))])
            else:
                block = members[: len(rows)][np.arange(cap)[None, :] < cnt[:, None]]
            neighbours[used : used + len(block)] = block
            used += len(block)
    gmin[:, group_ptr[:-1] == group_ptr[1:]] = np.inf  # an empty group (reduceat gives its neighbour's value)
    pts.group_minima = gmin
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return (torch.from_numpy(core), torch.from_numpy(indptr), torch.from_numpy(neighbours[:used]),
            {"core_fallback_rows": long_rows, "radius_edges": used})
