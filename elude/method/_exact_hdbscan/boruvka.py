"""Borůvka rounds over the mutual-reachability graph, the one-pass finish, and long-edge ties."""
from __future__ import annotations

import numpy as np
import torch

from .points import Points

SEARCH_CANDIDATES = 16  # float32 candidates refined exactly per searched point in a Borůvka round
FINISH_COMPONENTS = 64  # at most this many components left: one pass finds every pair's cheapest edge


def _edge_key_min(group: torch.Tensor, w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n_groups: int):
    """Per group, the edge with the smallest (w, lo, hi); returns (w, lo, hi) per group (inf / -1 where none)."""
    dev = w.device
    inf = torch.full((n_groups,), float("inf"), dtype=torch.float64, device=dev)
    best_w = inf.scatter_reduce(0, group, w, "amin")
    big = torch.iinfo(torch.int64).max
    m = w == best_w[group]
    best_lo = torch.full((n_groups,), big, device=dev).scatter_reduce(0, group[m], lo[m], "amin")
    m2 = m & (lo == best_lo[group])
    best_hi = torch.full((n_groups,), big, device=dev).scatter_reduce(0, group[m2], hi[m2], "amin")
    none = torch.isinf(best_w)
    best_lo[none], best_hi[none] = -1, -1
    return best_w, best_lo, best_hi


def _better(w1, lo1, hi1, w2, lo2, hi2) -> torch.Tensor:
    return (w1 < w2) | ((w1 == w2) & ((lo1 < lo2) | ((lo1 == lo2) & (hi1 < hi2))))


def boruvka(pts: Points, core: torch.Tensor, indptr: torch.Tensor, neighbours: torch.Tensor) -> tuple[np.ndarray, dict]:
    """An MST of the mutual-reachability graph as (n - 1, 3) float64 rows (a, b, weight)."""
    n, dev = pts.n, pts.device
    comp = torch.arange(n, device=dev)
    src = torch.repeat_interleave(torch.arange(n, device=dev), indptr[1:] - indptr[:-1])
    dst = neighbours.long()
    short_w = torch.maximum(core[src], core[dst])  # d <= max(core) on a radius edge, so mr = max(core_a, core_b)
    edges: list[tuple[int, int, float]] = []
    rounds, searched, long_ties = 0, 0, False
    core2_s = (core * core).to(pts.screen)
    while True:
        n_comp = int(comp.max()) + 1
        if n_comp == 1:
            break
        rounds += 1
        if n_comp <= FINISH_COMPONENTS:  # one pass over all pairs settles every remaining merge
            fin, fin_ties = _finish(pts, core, comp, n_comp)
            edges.extend(fin)
            long_ties |= fin_ties
            searched += n
            break
        cross = comp[src] != comp[dst]
        lo, hi = torch.minimum(src, dst), torch.maximum(src, dst)
        pw, plo, phi = _edge_key_min(src[cross], short_w[cross], lo[cross], hi[cross], n)
        certified = pw == core  # no edge at a point weighs less than its core distance
        cw, _, _ = _edge_key_min(comp, pw, plo.clamp(min=0), phi.clamp(min=0), n_comp)
        need = (~certified & (core < cw[comp])).nonzero()[:, 0]
        searched += len(need)
        for s in range(0, len(need), pts.block):
            rows = need[s : s + pts.block]
            d2 = pts.d2_block(rows)
            tol = pts.tol(rows)[:, None]
            mr2 = torch.maximum(torch.maximum(d2, core2_s[rows, None]), core2_s[None, :])
            mr2[comp[rows][:, None] == comp[None, :]] = float("inf")
            k = min(SEARCH_CANDIDATES, n)
            vals, idx = torch.topk(mr2, k, dim=1, largest=False, sorted=True)
            del d2, mr2
            rr = rows[:, None].expand(-1, k)
            ok = torch.isfinite(vals)
            ex = torch.full(vals.shape, float("inf"), dtype=torch.float64, device=dev)
            ex[ok] = torch.maximum(pts.exact(rr[ok], idx[ok]), torch.maximum(core[rr[ok]], core[idx[ok]]))
            best = ex.min(1).values
            # two targets at exactly the best weight that are not copies of one point: distinct long edges
            # tie (symmetric data), so the sparse graph below needs every edge of that weight
            at_best = (ex == best[:, None]) & torch.isfinite(ex) & (ex > torch.maximum(core[rr], core[idx]))
            for r in ([] if long_ties else (at_best.sum(1) > 1).nonzero()[:, 0].tolist()):
                t = idx[r][at_best[r]]
                if bool((pts.exact(t[:1].expand(len(t) - 1), t[1:]) > 0).any()):
                    long_ties = True
                    break
            settled = (k == n) | ~torch.isfinite(vals[:, -1]) | \
                ((vals[:, -1].double() - tol[:, 0].double()) > best * best * (1 + 1e-12))
            for r in (~settled).nonzero()[:, 0].tolist():  # the band runs past the candidates: exact in full
                full = pts.exact_rows(rows[r : r + 1])[0]
                full = torch.maximum(full, torch.maximum(core[rows[r]], core))
                full[comp == comp[rows[r]]] = float("inf")
                ex[r] = float("inf")
                ex[r, 0] = full.min()
                idx[r, 0] = int(torch.nonzero(full == full.min())[0, 0])
            m = torch.isfinite(ex)
            r_i, c_i = m.nonzero(as_tuple=True)
            a, b = rows[r_i], idx[r_i, c_i]
            sw, slo, shi = _edge_key_min(r_i, ex[r_i, c_i], torch.minimum(a, b), torch.maximum(a, b), len(rows))
            better = _better(sw, slo, shi, pw[rows], plo[rows], phi[rows])
            upd = rows[better]
            pw[upd], plo[upd], phi[upd] = sw[better], slo[better], shi[better]
        has = plo >= 0
        bw, blo, bhi = _edge_key_min(comp[has], pw[has], plo[has], phi[has], n_comp)
        chosen = torch.stack([blo, bhi], 1)[blo >= 0]
        chosen_w = bw[blo >= 0]
        pairs, first = np.unique(chosen.cpu().numpy(), axis=0, return_index=True)
        ws = chosen_w.cpu().numpy()[first]
        edges.extend((int(a), int(b), float(w)) for (a, b), w in zip(pairs, ws))
        # merge components along the chosen edges
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        c_np = comp.cpu().numpy()
        g = coo_matrix((np.ones(len(pairs)), (c_np[pairs[:, 0]], c_np[pairs[:, 1]])), shape=(n_comp, n_comp))
        _, merged = connected_components(g, directed=False)
        comp = torch.from_numpy(merged[c_np].astype(np.int64)).to(dev)
    rows = np.array(edges, dtype=np.float64).reshape(-1, 3)
    return rows, {"boruvka_rounds": rounds, "boruvka_searched_points": int(searched), "long_ties_seen": long_ties}


def long_edge_ties(pts: Points, core: torch.Tensor, weights: np.ndarray) -> np.ndarray:
    """Every pair (a, b) with d(a, b) exactly one of the long MST ``weights`` and max(core) below it: the
    edges that can replace a long MST edge at a tie. One more pass over all pairs (only for symmetric data)."""
    w_sorted = torch.from_numpy(np.unique(weights)).to(pts.device)
    w2 = (w_sorted * w_sorted).to(pts.screen)
    found = []
    for start in range(0, pts.n, pts.block):
        rows = torch.arange(start, min(pts.n, start + pts.block), device=pts.device)
        d2 = pts.d2_block(rows)
        tol = pts.tol(rows)[:, None]
        pos = torch.searchsorted(w2, d2.contiguous()).clamp(max=len(w2) - 1)
        near = ((d2 - w2[pos]).abs() <= 2 * tol) | ((d2 - w2[(pos - 1).clamp(min=0)]).abs() <= 2 * tol)
        near &= rows[:, None] < torch.arange(pts.n, device=pts.device)[None, :]
        r_i, c_i = near.nonzero(as_tuple=True)
        a, b = rows[r_i], c_i
        d = pts.exact(a, b)
        hit = torch.isin(d, w_sorted) & (torch.maximum(core[a], core[b]) < d)
        found.append(torch.stack([a[hit].double(), b[hit].double(), d[hit]], 1))
    return torch.cat(found).cpu().numpy() if found else np.zeros((0, 3))


def _finish(pts: Points, core: torch.Tensor, comp: torch.Tensor, n_comp: int) -> tuple[list, bool]:
    """The rest of the MST when few components are left: one pass over all rows finds, per pair of
    components, its cheapest edge (float32 screen, then the rows within 2 tol of it exactly); Kruskal on
    those pair edges (in (weight, lower index, higher index) order) completes the tree. Returns (edges,
    whether distinct long edges tie)."""
    n, dev = pts.n, pts.device
    f64 = torch.float64  # a float64 screen here: its band is narrow even where distances concentrate
    core2 = core * core
    row_min = torch.full((n, n_comp), float("inf"), dtype=f64, device=dev)
    for start in range(0, n, pts.block):
        rows = torch.arange(start, min(n, start + pts.block), device=dev)
        mr2 = torch.maximum(torch.maximum(pts.d2_block(rows, f64), core2[rows, None]), core2[None, :])
        mr2[comp[rows][:, None] == comp[None, :]] = float("inf")
        row_min[rows] = row_min[rows].scatter_reduce(1, comp[None, :].expand(len(rows), -1), mr2, "amin")
    pair_min = torch.full((n_comp, n_comp), float("inf"), dtype=f64, device=dev)
    pair_min.scatter_reduce_(0, comp[:, None].expand(-1, n_comp), row_min, "amin")
    band = 2 * float(pts.tol(torch.zeros(1, dtype=torch.long, device=dev), f64)[0]) * 2  # 2 tol, uniform over rows
    cand = torch.isfinite(row_min) & (row_min <= pair_min[comp] + band)  # (row, other component) pairs that
    # may hold a pair's cheapest edge
    cand_rows = cand.any(1).nonzero()[:, 0]
    found = []  # exact candidate edges (w, a, b, component of a, component of b)
    for s in range(0, len(cand_rows), pts.block):
        rows = cand_rows[s : s + pts.block]
        mr2 = torch.maximum(torch.maximum(pts.d2_block(rows, f64), core2[rows, None]), core2[None, :])
        lim = (pair_min[comp[rows]] + band).gather(1, comp[None, :].expand(len(rows), -1))
        ok = (mr2 <= lim) & cand[rows].gather(1, comp[None, :].expand(len(rows), -1))
        r_i, c_i = ok.nonzero(as_tuple=True)
        a, b = rows[r_i], c_i
        w = torch.maximum(pts.exact(a, b), torch.maximum(core[a], core[b]))
        found.append((w, a, b))
    w = torch.cat([f[0] for f in found]).cpu().numpy()
    a = torch.cat([f[1] for f in found]).cpu().numpy()
    b = torch.cat([f[2] for f in found]).cpu().numpy()
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(np.stack([lo, hi], 1), axis=0, return_index=True)  # each edge is found from both ends
    w, lo, hi = w[first], lo[first], hi[first]
    c_np = comp.cpu().numpy()
    order = np.lexsort((hi, lo, w))
    parent = list(range(n_comp))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edges, taken_w = [], []
    core_np = core.cpu().numpy()
    for e in order:
        ra, rb = find(int(c_np[lo[e]])), find(int(c_np[hi[e]]))
        if ra != rb:
            parent[ra] = rb
            edges.append((int(lo[e]), int(hi[e]), float(w[e])))
            if w[e] > max(core_np[lo[e]], core_np[hi[e]]):
                taken_w.append(float(w[e]))
    # distinct long edges of equal weight among the candidates: the sparse graph needs every such edge
    is_long = w > np.maximum(core_np[lo], core_np[hi])
    ties = bool(is_long.any()) and len(np.unique(w[is_long])) < int(is_long.sum()) and not _copies_only(pts, lo[is_long], hi[is_long], w[is_long])
    return edges, ties


def _copies_only(pts: Points, lo: np.ndarray, hi: np.ndarray, w: np.ndarray) -> bool:
    """Whether edges of equal weight differ only by exact duplicate endpoints (handled by duplicate groups)."""
    vals, counts = np.unique(w, return_counts=True)
    for val in vals[counts > 1]:
        m = np.flatnonzero(w == val)
        a0, b0 = lo[m[0]], hi[m[0]]
        for e in m[1:]:
            ends = torch.tensor([lo[e], hi[e]])
            d_same = pts.exact(torch.tensor([a0, b0]).to(pts.device), ends.to(pts.device))
            d_swap = pts.exact(torch.tensor([a0, b0]).to(pts.device), ends.flip(0).to(pts.device))
            if not (bool((d_same == 0).all()) or bool((d_swap == 0).all())):
                return False
    return True
