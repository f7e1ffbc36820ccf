"""Prim's order replayed on a sparse graph: the hdbscan package's edge list (see the package docstring)."""
from __future__ import annotations

import heapq

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _visit(current, ptr, nbrs, weights, core, in_tree, dist, source, heap):
    """Offer every neighbour of ``current`` in one CSR (``weights`` None: a radius edge, max(core_a, core_b))."""
    cc = core[current]
    for e in range(ptr[current], ptr[current + 1]):
        j = nbrs[e]
        if in_tree[j]:
            continue
        w = max(cc, core[j]) if weights is None else weights[e]
        if w < dist[j]:
            dist[j] = w
            source[j] = current
            heapq.heappush(heap, (w, np.int64(j)))


@numba.njit(cache=True, nogil=True)
def _prim_rows(indptr, nbrs, rev_ptr, rev_nbrs, core, long_ptr, long_nbr, long_w):
    """Prim from point 0 on the sparse graph (the radius lists, read forwards and backwards, whose edges
    weigh max(core_a, core_b); long edges their own weight), next point = the smallest (reachability, index),
    source = the first tree point reaching it at that weight: the package's ``mst_linkage_core_vector``.
    Returns (rows, n_reached)."""
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
        _visit(current, indptr, nbrs, None, core, in_tree, dist, source, heap)
        _visit(current, rev_ptr, rev_nbrs, None, core, in_tree, dist, source, heap)
        _visit(current, long_ptr, long_nbr, long_w, core, in_tree, dist, source, heap)
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


@numba.njit(cache=True, nogil=True)
def _reversed_lists(indptr, neighbours):
    """The radius lists read backwards (CSR): for each point, the points whose list holds it (counting sort).
    Only the reverse half: the forward lists are read where they are."""
    n = len(indptr) - 1
    ptr = np.zeros(n + 1, dtype=np.int64)
    for e in range(len(neighbours)):
        ptr[neighbours[e] + 1] += 1
    for i in range(n):
        ptr[i + 1] += ptr[i]
    fill = ptr[:-1].copy()
    nbr = np.empty(ptr[n], dtype=np.int32)
    for i in range(n):
        for e in range(indptr[i], indptr[i + 1]):
            j = neighbours[e]
            nbr[fill[j]] = i
            fill[j] += 1
    return ptr, nbr


def prim_order(n: int, core: np.ndarray, indptr: np.ndarray, neighbours: np.ndarray, long_edges: np.ndarray):
    """Prim's edge list on radius edges + ``long_edges`` (k, 3); (rows, reached)."""
    indptr, neighbours = indptr.astype(np.int64, copy=False), neighbours.astype(np.int32, copy=False)
    rev_ptr, rev_nbr = _reversed_lists(indptr, neighbours)
    lptr, lnbr, lw = _csr_both_directions(n, long_edges[:, 0].astype(np.int64), long_edges[:, 1].astype(np.int64),
                                          long_edges[:, 2].astype(np.float64))
    return _prim_rows(indptr, neighbours, rev_ptr, rev_nbr, core, lptr, lnbr, lw)
