"""Exact HDBSCAN with its expensive half in torch (Section 3.2's clustering, at paper scale).

HDBSCAN* = core distances -> minimum spanning tree (MST) of the mutual-reachability graph ->
single-linkage tree -> condensed tree -> leaf/EOM selection. This module computes the first two in
torch, in blocks of rows (GPU when given a CUDA device, else CPU), and hands the tree to the hdbscan
package's own functions (``_hdbscan_linkage.label``, ``hdbscan_._tree_to_labels``) for the rest, so
labels and probabilities come from the reference code itself.

Definitions match hdbscan 0.8.x (its ``prims_kdtree`` / ``generic`` algorithms, which agree):
- core distance = distance to the point's ``min_samples``-th nearest *other* point (the package queries
  ``min_samples + 1`` neighbours with the point itself first); ``min_samples`` is capped at n - 1;
- mutual reachability mr(a, b) = max(core_a, core_b, d(a, b)), euclidean d.

Memory: O(block x n) for one block of screened distances, plus O(n x min_samples) for the radius
neighbour lists (int32) and the spanning-tree bookkeeping; never an n x n matrix.

**Exactness.** Distances are screened by one GEMM per block (float32 on the CPU; float64 on a GPU,
where it costs the same) and every value that decides something is recomputed exactly: a screened
squared distance is within ``tol`` of the truth (a worst-case bound for a dot product of d terms,
(d + 16) u (|x|^2 + max |y|^2), u the screen's unit roundoff), so every candidate inside a ``2 tol``
band of a decision (the core distance's rank, the cheapest edge out of a component or between two) is
re-evaluated in float64 as sqrt(sum((x - y)^2)). On the CPU that sum runs left to right (numba), the
package's own arithmetic, so distances, core distances and tree weights are bitwise the package's; on a
GPU it runs in torch's order. A row whose band does not fit the kept candidates is recomputed in full.
When few components remain, a float64 screen keeps the band narrow where high-dimensional distances
concentrate.

**The tree.** Borůvka rounds over the mutual-reachability graph find an MST: a point whose radius list
(its neighbours within its core distance) reaches another component through a neighbour with a smaller
core distance has its cheapest outgoing edge certified at weight core_a (no edge at a can be cheaper);
only the other points of a component whose core distance is below the component's best known edge are
searched against all points, in blocks. Borůvka breaks ties by the total order (weight, lower index,
higher index), so it never closes a cycle.

**Ties, and why labels still match.** Mutual reachability is full of exact ties (every edge from a
point to a denser neighbour weighs that point's core distance), and with ties the *binary*
single-linkage tree depends on the order in which tied edges are merged. The package's order is that of
Prim's algorithm started at point 0, next point = the smallest (reachability, index), each point joined
to the first tree point reaching it at that weight, then ``np.argsort`` of the weights. Borůvka's order
differs, and on noisy data a point bridging two clusters at a tie then falls out of the other cluster
(measured: ARI 0.9994 against the package on 3,000 noisy points with min_samples = min_cluster_size,
and hdbscan's own Borůvka differs from its Prim the same way). So the final edge list is not Borůvka's:
Prim's algorithm is replayed exactly on the sparse graph G = (all radius-list edges) + (the MST's long
edges and their exact-duplicate copies). Every edge that Prim can pick on the complete graph - an edge
that is the cheapest across some cut - lies in some MST, and every such edge is in G: an edge within a
core distance is always in some MST and is in a radius list; a longer edge is the unique MST edge between
its sides unless exact duplicates repeat it, or distinct pairs lie at exactly the same distance (exactly
symmetric data, e.g. a lattice): when a search sees such a tie, one more pass adds every pair at exactly a
long edge's weight. Hence Prim on G takes the same decisions as the package's Prim on all n^2 edges, and
``label`` receives the same rows in the same order. Checked on every run: Prim must reach every point
with exactly Borůvka's MST weights; where not, the Borůvka tree is used (valid, but tied edges in its own
order), ``tie_order`` says ``boruvka`` and a warning is logged. A symmetric tie that no search sees can
still reorder tied edges without that check noticing; no such case is known outside contrived data. On the GPU the float64 sums run in another order, so weights may
differ from the package's in the last bit and near-ties (within ~1e-16) may break the other way.
"""
from __future__ import annotations

import contextlib
import heapq
import logging
from dataclasses import dataclass

import numba
import numpy as np
import torch

from .clustering import BLOCK_MB

log = logging.getLogger(__name__)

SEARCH_CANDIDATES = 16  # float32 candidates refined exactly per searched point in a Borůvka round
FINISH_COMPONENTS = 64  # at most this many components left: one pass finds every pair's cheapest edge


@dataclass
class MST:
    rows: np.ndarray  # (n - 1, 3) float64: (source, new point, mutual reachability), hdbscan's edge-list layout
    core: np.ndarray  # (n,) float64 core distances
    tie_order: str  # 'prim' (the package's order, see the module docstring) or 'boruvka'
    stats: dict


# --- exact distances ------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _exact_dist_pairs(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sqrt(sum((x[a] - x[b])^2)), summed left to right in float64, as hdbscan's euclidean metric does."""
    out = np.empty(len(a), dtype=np.float64)
    d = x.shape[1]
    for p in range(len(a)):
        s = 0.0
        i, j = a[p], b[p]
        for k in range(d):
            t = x[i, k] - x[j, k]
            s += t * t
        out[p] = np.sqrt(s)
    return out


class _Points:
    """The points on the device: float32 for screening, float64 (and on the CPU a numpy view) for exact values."""

    def __init__(self, x: np.ndarray, device: torch.device, block_mb: int, gpu_arithmetic: bool | None = None):
        self.x64_np = np.ascontiguousarray(x, dtype=np.float64)
        self.device = device
        self.x64 = torch.from_numpy(self.x64_np).to(device)
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

    def tol(self, rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Bound on |screened d^2 - d^2|: a dot product of d terms errs by at most d u sum|x_i y_i| <=
        d u (|x|^2 + |y|^2) / 2 (u = unit roundoff), doubled in d^2, plus the norms and the input cast."""
        u = float(torch.finfo(dtype or self.screen).eps) / 2
        return (self.d + 16) * u * (self.sq64[rows] + self.max_sq)

    def d2_block(self, rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Screened squared distances of ``rows`` to every point (block x n), in ``dtype`` (default: the screen's)."""
        dtype = dtype or self.screen
        x = self.xs if dtype == self.xs.dtype else self.x64.to(dtype)
        sq = self.sq64.to(dtype)
        with _no_tf32():
            g = x[rows] @ x.T
        return (sq[rows, None] + sq[None, :]) - 2.0 * g

    def exact(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Exact distances of the pairs (a, b), as float64 on the device."""
        if len(a) == 0:
            return torch.empty(0, dtype=torch.float64, device=self.device)
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
        a = rows.repeat_interleave(self.n)
        b = torch.arange(self.n, device=self.device).repeat(len(rows))
        return self.exact(a, b).reshape(len(rows), self.n)


@contextlib.contextmanager
def _no_tf32():
    """Screening bounds assume true float32 products: TF32 tensor cores would break them."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# --- core distances and radius lists -----------------------------------------------------------------
def core_distances(pts: _Points, min_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
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
        d2 = pts.d2_block(rows)
        d2[torch.arange(len(rows), device=dev), rows] = -1.0  # the point itself: exactly 0, always first
        vals, idx = torch.topk(d2, keep, dim=1, largest=False, sorted=True)
        del d2
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
    # CSR in row order (fallback rows were appended out of order)
    row_of = torch.cat([r.repeat_interleave(c) for r, _, c in lists])
    order = torch.argsort(row_of, stable=True)
    neighbours = torch.cat([nb for _, nb, _ in lists])[order].to(torch.int32)
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    indptr[1:] = torch.bincount(row_of, minlength=n).cumsum(0)
    return core, indptr, neighbours, {"core_fallback_rows": fallback, "radius_edges": int(len(neighbours))}


# --- Borůvka -------------------------------------------------------------------------------------------
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


def boruvka(pts: _Points, core: torch.Tensor, indptr: torch.Tensor, neighbours: torch.Tensor) -> tuple[np.ndarray, dict]:
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


def long_edge_ties(pts: _Points, core: torch.Tensor, weights: np.ndarray) -> np.ndarray:
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


def _finish(pts: _Points, core: torch.Tensor, comp: torch.Tensor, n_comp: int) -> tuple[list, bool]:
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


def _copies_only(pts: _Points, lo: np.ndarray, hi: np.ndarray, w: np.ndarray) -> bool:
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


# --- Prim's order --------------------------------------------------------------------------------------
@numba.njit(cache=True)
def _prim_rows(indptr, nbrs, core, long_ptr, long_nbr, long_w):
    """Prim from point 0 on the sparse graph (radius edges weigh max(core_a, core_b); long edges their
    own weight), next point = the smallest (reachability, index), source = the first tree point reaching
    it at that weight: the package's ``mst_linkage_core_vector``. Returns (rows, n_reached)."""
    n = len(core)
    dist = np.full(n, np.inf)
    source = np.ones(n, dtype=np.int64)
    in_tree = np.zeros(n, dtype=np.bool_)
    rows = np.zeros((max(n - 1, 0), 3))
    heap = [(np.inf, np.int64(0))]
    heap.pop()
    current = 0
    reached = 1
    for i in range(1, n):
        in_tree[current] = True
        cc = core[current]
        for e in range(indptr[current], indptr[current + 1]):
            j = nbrs[e]
            if in_tree[j]:
                continue
            w = max(cc, core[j])
            if w < dist[j]:
                dist[j] = w
                source[j] = current
                heapq.heappush(heap, (w, np.int64(j)))
        for e in range(long_ptr[current], long_ptr[current + 1]):
            j = long_nbr[e]
            if in_tree[j]:
                continue
            w = long_w[e]
            if w < dist[j]:
                dist[j] = w
                source[j] = current
                heapq.heappush(heap, (w, np.int64(j)))
        new = -1
        while len(heap) > 0:
            w, j = heapq.heappop(heap)
            if not in_tree[j] and w == dist[j]:
                new = j
                break
        if new < 0:
            return rows, reached
        rows[i - 1, 0] = source[new]
        rows[i - 1, 1] = new
        rows[i - 1, 2] = dist[new]
        current = new
        reached += 1
    return rows, reached


@numba.njit(cache=True)
def _csr_both_directions(n, a, b, w):
    """CSR adjacency of the undirected edges (a, b, weight w), each stored in both directions (counting
    sort: int32 neighbours, no argsort of the edge list)."""
    ptr = np.zeros(n + 1, dtype=np.int64)
    for e in range(len(a)):
        ptr[a[e] + 1] += 1
        ptr[b[e] + 1] += 1
    for i in range(n):
        ptr[i + 1] += ptr[i]
    fill = ptr[:-1].copy()
    nbr = np.empty(ptr[n], dtype=np.int32)
    ww = np.empty(ptr[n], dtype=np.float64)
    for e in range(len(a)):
        nbr[fill[a[e]]] = b[e]
        ww[fill[a[e]]] = w[e]
        fill[a[e]] += 1
        nbr[fill[b[e]]] = a[e]
        ww[fill[b[e]]] = w[e]
        fill[b[e]] += 1
    return ptr, nbr, ww


@numba.njit(cache=True)
def _radius_both_directions(indptr, neighbours):
    """The radius lists (CSR) with every edge also stored at its other end; weights are not stored
    (a radius edge weighs max(core_a, core_b))."""
    n = len(indptr) - 1
    ptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        ptr[i + 1] += indptr[i + 1] - indptr[i]
        for e in range(indptr[i], indptr[i + 1]):
            ptr[neighbours[e] + 1] += 1
    for i in range(n):
        ptr[i + 1] += ptr[i]
    fill = ptr[:-1].copy()
    nbr = np.empty(ptr[n], dtype=np.int32)
    for i in range(n):
        for e in range(indptr[i], indptr[i + 1]):
            j = neighbours[e]
            nbr[fill[i]] = j
            fill[i] += 1
            nbr[fill[j]] = i
            fill[j] += 1
    return ptr, nbr


def prim_order(n: int, core: np.ndarray, indptr: np.ndarray, neighbours: np.ndarray, long_edges: np.ndarray):
    """Prim's edge list on radius edges + ``long_edges`` (k, 3); (rows, reached)."""
    ptr, nbr = _radius_both_directions(indptr.astype(np.int64), neighbours.astype(np.int32))
    lptr, lnbr, lw = _csr_both_directions(n, long_edges[:, 0].astype(np.int64), long_edges[:, 1].astype(np.int64),
                                          long_edges[:, 2].astype(np.float64))
    return _prim_rows(ptr, nbr, core, lptr, lnbr, lw)


def _duplicate_groups(pts: _Points, points: np.ndarray) -> dict[int, np.ndarray]:
    """For each of ``points`` that has exact copies (identical rows, d == 0), all of its copies."""
    _, inverse, counts = torch.unique(pts.x64, dim=0, return_inverse=True, return_counts=True)
    inverse = inverse.cpu().numpy()
    repeated = counts.cpu().numpy()[inverse] > 1
    out = {}
    for p in np.unique(points):
        if repeated[p]:
            out[int(p)] = np.flatnonzero(inverse == inverse[p])
    return out


def mutual_reachability_mst(x: np.ndarray, min_samples: int, device: str | torch.device = "cpu",
                            block_mb: int | None = None, gpu_arithmetic: bool | None = None) -> MST:
    """Core distances and the MST of the mutual-reachability graph of ``x`` in the package's Prim order.

    ``block_mb``: memory of one block's working set (default :data:`BLOCK_MB` for the device; on a GPU a
    block must hold hundreds of rows, or each block's GEMM waits on reading all points once more).
    ``gpu_arithmetic``: None = as the device does; True runs the GPU's arithmetic (float64 screen, exact
    sums in torch) on any device, which is how CI tests the GPU path without a GPU."""
    n = len(x)
    ms = max(1, min(n - 1, min_samples))
    device = torch.device(device)
    pts = _Points(x, device, block_mb or BLOCK_MB[device.type], gpu_arithmetic)
    core, indptr, neighbours, stats = core_distances(pts, ms)
    mst, bstats = boruvka(pts, core, indptr, neighbours)
    stats.update(bstats)
    core_np = core.cpu().numpy()
    a, b, w = mst[:, 0].astype(np.int64), mst[:, 1].astype(np.int64), mst[:, 2]
    is_long = w > np.maximum(core_np[a], core_np[b])
    long_edges = mst[is_long]
    if len(long_edges):
        dups = _duplicate_groups(pts, long_edges[:, :2].astype(np.int64).ravel())
        if dups:  # exact duplicates repeat a long edge: every copy may be Prim's choice
            extra = [(p, q, we) for ea, eb, we in long_edges
                     for p in dups.get(int(ea), [int(ea)]) for q in dups.get(int(eb), [int(eb)])]
            long_edges = np.array(extra, dtype=np.float64).reshape(-1, 3)
    if stats["long_ties_seen"] and is_long.any():
        long_edges = np.concatenate([long_edges, long_edge_ties(pts, core, mst[is_long, 2])])
    stats["long_edges"] = int(is_long.sum())
    rows, reached = prim_order(n, core_np, indptr.cpu().numpy(), neighbours.cpu().numpy(), long_edges)
    tie_order = "prim"
    if reached != n or not np.array_equal(np.sort(rows[:, 2]), np.sort(mst[:, 2])):
        log.warning("exact HDBSCAN: Prim's replay on the sparse graph did not reproduce the MST weights "
                    "(ties between distinct long edges); using the Borůvka tree, whose tie order may differ "
                    "from the hdbscan package's")
        rows, tie_order = mst[np.lexsort((mst[:, 1], mst[:, 0], mst[:, 2]))], "boruvka"
    return MST(rows=rows, core=core_np, tie_order=tie_order, stats=stats)


def hdbscan_from_mst(mst: MST, min_cluster_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The package's cheap half on our tree: sort (as the package does), single linkage, condense, select."""
    from hdbscan._hdbscan_linkage import label
    from hdbscan.hdbscan_ import _tree_to_labels

    rows = mst.rows[np.argsort(mst.rows.T[2]), :]
    single_linkage = label(rows)
    labels, probs, *_ = _tree_to_labels(None, single_linkage, min_cluster_size, method)
    return labels.astype(np.int64), probs.astype(np.float32)
