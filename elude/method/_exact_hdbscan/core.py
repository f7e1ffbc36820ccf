"""Core distances and radius lists (every neighbour within a point's core distance), in blocks."""
from __future__ import annotations

import torch

from .points import Points


def core_distances(pts: Points, min_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Core distances (float64) and the radius lists: for each point a, every b != a with d(a, b) <= core_a.

    Returns (core, indptr, neighbours, stats); neighbours are int32 in CSR layout (indptr int64).
    """
    n, dev = pts.n, pts.device
    rank = min_samples  # index of the core distance in the sorted row, the point itself at index 0
    keep = min(n, rank + 1 + max(8, rank // 8))
    core = torch.empty(n, dtype=torch.float64, device=dev)
    lists: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (rows, their neighbours, counts)
    fallback = 0
    for start in range(0, n, pts.block):
        rows = torch.arange(start, min(n, start + pts.block), device=dev)
        d2 = pts.d2_less_row_norm(rows)
        d2[torch.arange(len(rows), device=dev), rows] = float("-inf")  # the point itself: always first
        vals, idx = torch.topk(d2, keep, dim=1, largest=False, sorted=True)
        del d2
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
        for r in overflow.nonzero()[:, 0].tolist():  # the band runs past the kept candidates (ties): exact in full
            fallback += 1
            full = pts.exact_rows(rows[r : r + 1])[0]
            full[rows[r]] = -1.0
            srt = full.sort().values
            core_b[r] = srt[rank]
            nb = ((full <= srt[rank]) & (full >= 0)).nonzero()[:, 0]
            lists.append((rows[r : r + 1], nb, torch.tensor([len(nb)], device=dev)))
        core[rows] = core_b
        ok = ~overflow
        lists.append((rows[ok], idx[ok][member[ok]], member[ok].sum(1)))
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    if fallback:  # CSR in row order (fallback rows were appended out of order)
        row_of = torch.cat([r.repeat_interleave(c) for r, _, c in lists])
        order = torch.argsort(row_of, stable=True)
        neighbours = torch.cat([nb for _, nb, _ in lists])[order].to(torch.int32)
        indptr[1:] = torch.bincount(row_of, minlength=n).cumsum(0)
    else:  # the blocks' lists are already in row order
        neighbours = torch.cat([nb.to(torch.int32) for _, nb, _ in lists])
        indptr[1:] = torch.cat([c for _, _, c in lists]).cumsum(0)
    return core, indptr, neighbours, {"core_fallback_rows": fallback, "radius_edges": int(len(neighbours))}
