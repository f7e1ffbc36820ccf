"""Borůvka rounds over the mutual-reachability graph, the one-pass finish, and long-edge ties."""
from __future__ import annotations

import numba
import numpy as np
import torch

from .. import limits
from .points import Points, _no_tf32

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


@numba.njit(cache=True)
def _radius_key_min(indptr, nbrs, core, comp):
    """Per point, its radius edge into another component with the smallest (weight, lower index, higher
    index), weight = max(core_a, core_b); (w, lo, hi) per point (inf, -1, -1 where none). The CPU's
    :func:`_edge_key_min` over the radius lists, in one pass."""
    n = len(core)
    bw = np.full(n, np.inf)
    blo = np.full(n, -1, dtype=np.int64)
    bhi = np.full(n, -1, dtype=np.int64)
    for a in range(n):
        for e in range(indptr[a], indptr[a + 1]):
            b = np.int64(nbrs[e])
            if comp[a] == comp[b]:
                continue
            w = max(core[a], core[b])
            lo, hi = min(a, b), max(a, b)
            if w < bw[a] or (w == bw[a] and (lo < blo[a] or (lo == blo[a] and hi < bhi[a]))):
                bw[a], blo[a], bhi[a] = w, lo, hi
    return bw, blo, bhi


def _radius_key_min_torch(indptr: torch.Tensor, nbrs: torch.Tensor, core: torch.Tensor, comp: torch.Tensor):
    """:func:`_radius_key_min` in torch, in chunks of whole rows (~GPU_RADIUS_CHUNK_EDGES edges): the flat edge
    tensors of all 400 M radius edges at paper scale would take ~25 GB of GPU memory at once."""
    n, dev = len(core), core.device
    bw = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
    blo = torch.full((n,), -1, dtype=torch.int64, device=dev)
    bhi = torch.full((n,), -1, dtype=torch.int64, device=dev)
    ptr = indptr.cpu().numpy()
    cuts = np.unique(np.r_[np.searchsorted(ptr, np.arange(0, ptr[-1], limits.GPU_RADIUS_CHUNK_EDGES), side="right") - 1, n])
    for r0, r1 in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        local = torch.repeat_interleave(torch.arange(r1 - r0, device=dev), indptr[r0 + 1 : r1 + 1] - indptr[r0:r1])
        src, dst = local + r0, nbrs[int(ptr[r0]) : int(ptr[r1])].long()
        cross = comp[src] != comp[dst]
        src, dst, local = src[cross], dst[cross], local[cross]
        w, lo, hi = _edge_key_min(local, torch.maximum(core[src], core[dst]), torch.minimum(src, dst),
                                  torch.maximum(src, dst), r1 - r0)  # d <= max(core) on a radius edge
        bw[r0:r1], blo[r0:r1], bhi[r0:r1] = w, lo, hi
    return bw, blo, bhi


def _better(w1, lo1, hi1, w2, lo2, hi2) -> torch.Tensor:
    return (w1 < w2) | ((w1 == w2) & ((lo1 < lo2) | ((lo1 == lo2) & (hi1 < hi2))))


def boruvka(pts: Points, core: torch.Tensor, indptr: torch.Tensor, neighbours: torch.Tensor) -> tuple[np.ndarray, dict]:
    """An MST of the mutual-reachability graph as (n - 1, 3) float64 rows (a, b, weight)."""
    n, dev = pts.n, pts.device
    comp = torch.arange(n, device=dev)
    if not pts.gpu_arithmetic:  # the CPU walks the lists in numba, the GPU in torch by chunks
        indptr_np, nbr_np, core_np = indptr.numpy(), neighbours.numpy(), core.numpy()
    edges: list[tuple[int, int, float]] = []
    rounds, searched, long_ties = 0, 0, False
    per_round: list[dict] = []  # per round: components at its start, points searched, seconds
    core2_s = (core * core).to(pts.screen)
    while True:
        n_comp = int(comp.max()) + 1
        if n_comp == 1:
            break
        rounds += 1
        started = pts.clock()
        if n_comp <= FINISH_COMPONENTS:  # one pass over all pairs settles every remaining merge
            fin, fin_ties = _finish(pts, core, comp, n_comp)
            edges.extend(fin)
            long_ties |= fin_ties
            searched += n
            per_round.append({"finish": True, "components": n_comp, "searched": n, "s": pts.clock() - started})
            break
        if pts.gpu_arithmetic:
            pw, plo, phi = _radius_key_min_torch(indptr, neighbours, core, comp)
        else:
            pw, plo, phi = map(torch.from_numpy, _radius_key_min(indptr_np, nbr_np, core_np, comp.numpy()))
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
            del d2
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
            unsettled = (~settled).nonzero()[:, 0]  # the band runs past the candidates: every column of the
            pts.counters["rows_screened_in_full"] += len(unsettled)  # screened row that can reach the best, exactly
            for s0 in range(0, len(unsettled), 64):  # a few rows at a time: mr2's rows are copied
                u = unsettled[s0 : s0 + 64]
                reach = (best[u] * best[u] * (1 + 1e-12))[:, None]
                r_u, cols = (mr2[u].double() - tol[u].double() <= reach).nonzero(as_tuple=True)
                a = rows[u][r_u]
                w = torch.maximum(pts.exact(a, cols), torch.maximum(core[a], core[cols]))
                # per row its cheapest, at the lowest index among equals
                wmin, cmin, _ = _edge_key_min(r_u, w, cols, cols, len(u))
                ex[u] = float("inf")
                ex[u, 0], idx[u, 0] = wmin, cmin
            del mr2
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
        per_round.append({"finish": False, "components": n_comp, "searched": int(len(need)), "s": pts.clock() - started})
    rows = np.array(edges, dtype=np.float64).reshape(-1, 3)
    return rows, {"boruvka_rounds": rounds, "boruvka_searched_points": int(searched), "long_ties_seen": long_ties,
                  "rounds": per_round}


def long_edge_ties(pts: Points, core: torch.Tensor, weights: np.ndarray) -> np.ndarray:
    """Every long pair (a, b), max(core) below d(a, b), with d(a, b) exactly one of the MST ``weights``: the
    edges that can replace an MST edge at a tie. One more pass over all pairs (only for symmetric data)."""
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
    """The rest of the MST when few components are left: per pair of components its cheapest edge, then
    Kruskal on those pair edges (in (weight, lower index, higher index) order). Returns (edges, whether
    distinct long edges tie).

    Points are grouped by component. A first pass, pruned by the core pass's group minima to the rows that
    can hold a pair's cheapest edge (:func:`_finish_minima`), gives each screened row its cheapest screened
    edge into every other component. A screened value is within ``tol``
    of the truth, so every edge whose exact weight can equal a pair's minimum is screened within 2 tol of
    that pair's screened minimum:
    those candidates (the rows within ``band`` = 4 tol, against that component's columns only) are
    recomputed exactly."""
    n, dev, dt = pts.n, pts.device, pts.screen
    order = torch.argsort(comp, stable=True)  # points grouped by component: position p holds point order[p]
    ends = torch.bincount(comp, minlength=n_comp).cumsum(0).tolist()
    starts = [0] + ends[:-1]
    x = pts.screen_rows(order)
    sq = pts.sq64[order].to(dt)
    core2 = (core[order] * core[order]).to(dt)

    def screen(r: slice | torch.Tensor, c0: int | torch.Tensor, c1: int | None = None) -> torch.Tensor:
        """Screened mutual reachability^2 of positions ``r`` (a slice or an index tensor) against the positions
        c0:c1 (or the index tensor c0)."""
        c = c0 if c1 is None else slice(c0, c1)
        xr, sqr, cr, xc = x[r], sq[r], core2[r], x[c]
        pts.counters["pairs_screened"] += len(xr) * len(xc)
        with _no_tf32(dev):
            g = xr @ xc.T
        d2 = (sqr[:, None] + sq[None, c]) - 2.0 * g
        return torch.maximum(torch.maximum(d2, cr[:, None]), core2[None, c])

    row_min = torch.full((n, n_comp), float("inf"), dtype=dt, device=dev)  # per position, per other component
    comp_p = comp[order]
    band = 4 * float(pts.tol(torch.arange(n, device=dev), dt).max())
    _finish_minima(pts, core, comp, order, starts, ends, screen, row_min, band)
    pair_min = torch.full((n_comp, n_comp), float("inf"), dtype=dt, device=dev)
    pair_min.scatter_reduce_(0, comp_p[:, None].expand(-1, n_comp), row_min, "amin")
    pair_min = torch.minimum(pair_min, pair_min.T)  # a pair's minimum may have been seen from either side
    cand = torch.isfinite(row_min) & (row_min <= pair_min[comp_p] + band)  # (position, other component) that
    # may hold a pair's cheapest edge
    found = []  # exact candidate edges (w, a, b), original indices
    for cb in range(n_comp):
        pos = cand[:, cb].nonzero()[:, 0]
        for s in range(0, len(pos), pts.block):
            p = pos[s : s + pts.block]
            mr2 = screen(p, starts[cb], ends[cb])
            r_i, c_i = (mr2 <= (pair_min[comp_p[p], cb] + band)[:, None]).nonzero(as_tuple=True)
            a, b = order[p[r_i]], order[starts[cb] + c_i]
            found.append((torch.maximum(pts.exact(a, b), torch.maximum(core[a], core[b])), a, b))
    w = torch.cat([f[0] for f in found]).cpu().numpy()
    a = torch.cat([f[1] for f in found]).cpu().numpy()
    b = torch.cat([f[2] for f in found]).cpu().numpy()
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(lo * n + hi, return_index=True)  # each edge is found from both ends (one int64 key:
    # np.unique over rows of pairs sorts a void view, ~1 s per million candidates, which ties make)
    w, lo, hi = w[first], lo[first], hi[first]
    c_np = comp.cpu().numpy()
    order_e = np.lexsort((hi, lo, w))
    parent = list(range(n_comp))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edges = []
    core_np = core.cpu().numpy()
    for e in order_e:
        ra, rb = find(int(c_np[lo[e]])), find(int(c_np[hi[e]]))
        if ra != rb:
            parent[ra] = rb
            edges.append((int(lo[e]), int(hi[e]), float(w[e])))
            if len(edges) == n_comp - 1:  # spanning: the rest (ties can make millions of candidates) all close cycles
                break
    # distinct long edges of equal weight among the candidates: the sparse graph needs every such edge
    is_long = w > np.maximum(core_np[lo], core_np[hi])
    ties = bool(is_long.any()) and len(np.unique(w[is_long])) < int(is_long.sum()) and not _copies_only(pts, lo[is_long], hi[is_long], w[is_long])
    return edges, ties


@numba.njit(cache=True, nogil=True)
def _lower_bounds(gmin, group, sq, core2, comp, group_ptr, group_comp, group_core2, lower, best):
    """lower[a, C] = a lower bound of point a's cheapest screened mr^2 into component C (C not a's own):
    max(core_a^2, min over the groups g meeting C of max(gmin[a, g] + |x_a|^2, the smallest core^2 of g's
    points in C)), gmin[a, g] = the core pass's smallest screened |y|^2 - 2 x_a.y over g. A minimum over a
    group bounds the minimum over its points in C from below whatever else the group holds; each screened
    value is within tol of the truth. Far points (group -1) get none: their pairs are screened directly.
    best[A, C] = the point of A with the smallest bound into C (-1: none)."""
    n, m = gmin.shape
    for a in range(n):
        if group[a] < 0:
            continue
        ca = comp[a]
        sq_a, core_a = np.float64(sq[a]), np.float64(core2[a])
        for g in range(m):
            d2 = np.float64(gmin[a, g]) + sq_a
            for e in range(group_ptr[g], group_ptr[g + 1]):
                c = group_comp[e]
                if c != ca:
                    v = max(d2, group_core2[e], core_a)
                    if v < lower[a, c]:
                        lower[a, c] = v
        for c in range(lower.shape[1]):
            if lower[a, c] < np.inf and (best[ca, c] < 0 or lower[a, c] < lower[best[ca, c], c]):
                best[ca, c] = a


def _finish_minima(pts: Points, core: torch.Tensor, comp: torch.Tensor, order: torch.Tensor,
                   starts: list[int], ends: list[int], screen, row_min: torch.Tensor, band: float) -> None:
    """The finish's first pass, pruned by the core pass's group minima: every pair with a far point (group
    -1) is screened directly (all rows against the far points' columns); for the other pairs a row a is
    screened against component C's columns only where its lower bound into C (:func:`_lower_bounds`) is
    within ``band`` of the best actual edge known between a's component A and C (from the far pairs, and from
    screening each A's row of smallest bound into C). Why this keeps every edge the finish needs: the
    cheapest pair (a*, b*) between A and C weighs M; a*'s screened bound is at most M + tol and the best known
    edge's screened weight at least M - tol, so with band >= 2 tol row a* is screened against C (or, with a
    far end, its pair directly), and ``row_min`` holds M within tol for that pair, as the full pass would.
    Screens run on the points' device; the bookkeeping (bounds, per-pair bests) on the host."""
    n, n_comp, dev = pts.n, len(ends), pts.device
    group = pts.groups[0]
    comp_np, core2_np, sq_np = comp.cpu().numpy(), (core * core).cpu().numpy(), pts.sq64.cpu().numpy()
    order_np = order.cpu().numpy()
    pos_of = np.empty(n, dtype=np.int64)
    pos_of[order_np] = np.arange(n)
    comp_p = comp_np[order_np]
    upper = np.full((n_comp, n_comp), np.inf)  # best actual edge known per pair of components

    def screen_rows(p: np.ndarray, c: int, s0: int | torch.Tensor, s1: int | None = None) -> None:
        """row_min[p, c] lowered by positions p's screen against positions s0:s1 (or index tensor s0); the
        pairs' best known edges with it."""
        p_t = torch.from_numpy(p).to(dev)
        new = torch.minimum(row_min[p_t, c], screen(p_t, s0, s1).amin(1))
        row_min[p_t, c] = new
        np.minimum.at(upper[:, c], comp_p[p], new.cpu().numpy().astype(np.float64))

    far_pos = np.sort(pos_of[group < 0])  # far points' positions, so grouped by component
    if len(far_pos):  # every pair with a far end, from the rows' side
        far_comp = comp_p[far_pos]
        cuts = np.flatnonzero(np.diff(far_comp)) + 1
        segments = list(zip(np.r_[0, cuts], np.r_[cuts, len(far_pos)]))
        far_t = torch.from_numpy(far_pos).to(dev)
        for r0 in range(0, n, pts.block):
            r1 = min(n, r0 + pts.block)
            mr2 = screen(slice(r0, r1), far_t)
            for s0, s1 in segments:
                c = int(far_comp[s0])
                row_min[r0:r1, c] = torch.minimum(row_min[r0:r1, c], mr2[:, s0:s1].amin(1))
        row_min[torch.arange(n, device=dev), torch.from_numpy(comp_p).to(dev)] = float("inf")  # not edges
        rm = row_min.cpu().numpy()  # position-indexed
        for c in range(n_comp):
            np.minimum.at(upper[:, c], comp_p, rm[:, c].astype(np.float64))
    # per group, the components its points lie in and the smallest core^2 there
    inside = group >= 0
    keys, where = np.unique(np.stack([group[inside], comp_np[inside]], 1), axis=0, return_inverse=True)
    group_core2 = np.full(len(keys), np.inf)
    np.minimum.at(group_core2, where.ravel(), core2_np[inside])
    group_ptr = np.searchsorted(keys[:, 0], np.arange(pts.group_minima.shape[1] + 1)).astype(np.int64)
    lower = np.full((n, n_comp), np.inf)
    best = np.full((n_comp, n_comp), -1, dtype=np.int64)
    _lower_bounds(pts.group_minima, group, sq_np, core2_np, comp_np, group_ptr, keys[:, 1].astype(np.int64),
                  group_core2, lower, best)
    for c in range(n_comp):  # per other component A, A's row of smallest bound into C against C
        rows = best[:, c][best[:, c] >= 0]
        if len(rows):
            screen_rows(pos_of[rows], c, starts[c], ends[c])
    upper = np.minimum(upper, upper.T)
    for c in range(n_comp):
        rows = np.flatnonzero(np.isfinite(lower[:, c]) & (lower[:, c] <= upper[comp_np, c] + band))  # point indices
        p = np.sort(pos_of[rows])
        for s0 in range(0, len(p), pts.block):
            screen_rows(p[s0 : s0 + pts.block], c, starts[c], ends[c])


def _copies_only(pts: Points, lo: np.ndarray, hi: np.ndarray, w: np.ndarray) -> bool:
    """Whether edges of equal weight differ only by exact duplicate endpoints (handled by duplicate groups): each
    such edge against the first of its weight, both ways round, in one batch of exact distances (exact copies
    of a point repeat every edge at it: a Python loop per edge took seconds on 100 copies)."""
    _, inverse, counts = np.unique(w, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    tied = np.flatnonzero(counts[inverse] > 1)
    first = np.full(len(counts), len(w))
    np.minimum.at(first, inverse[tied], tied)  # each tied weight's first edge
    e = tied[tied != first[inverse[tied]]]
    if not len(e):
        return True
    for s in range(0, len(e), 4096):  # in batches: data with distinct tied edges (a lattice) stop at the first
        es = e[s : s + 4096]
        f = first[inverse[es]]
        a = torch.from_numpy(np.concatenate([lo[f], hi[f], lo[f], hi[f]]).astype(np.int64)).to(pts.device)
        b = torch.from_numpy(np.concatenate([lo[es], hi[es], hi[es], lo[es]]).astype(np.int64)).to(pts.device)
        zero = (pts.exact(a, b) == 0).cpu().numpy().reshape(4, len(es))
        if not ((zero[0] & zero[1]) | (zero[2] & zero[3])).all():
            return False
    return True
