"""Prim's order replayed on a sparse graph: the hdbscan package's edge list (see the package docstring)."""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _push(heap, size, key):
    """Push ``key`` onto the binary min-heap heap[:size] (the caller made room); returns the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= key:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = key
    return size + 1


@numba.njit(cache=True, nogil=True)
def _pop(heap, size):
    """The smallest key of heap[:size], removed; returns (key, size)."""
    top = heap[0]
    size -= 1
    last = heap[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= last:
            break
        heap[i] = heap[child]
        i = child
    if size > 0:
        heap[i] = last
    return top, size


@numba.njit(cache=True, nogil=True)
def _relax(ptr, nbrs, current, state, source, heap, size):
    """Offer current's radius edges in one CSR (weight max(core_a, core_b), as core ranks) to the points they
    reach; an improvement is rare (~1 in 2,000 edges at n = 100k), so the loop is the reads."""
    n, cr = len(state), state[current, 1]
    for e in range(ptr[current], ptr[current + 1]):
        j = nbrs[e]
        w = max(cr, state[j, 1])
        if w < state[j, 0]:
            state[j, 0] = w
            source[j] = current
            size = _push(heap, size, np.int64(w) * n + j)
    return size


@numba.njit(cache=True, nogil=True)
def _prim_rows(indptr, nbrs, rev_ptr, rev_nbrs, core_rank, long_ptr, long_nbr, long_rank, weights):
    """Prim from point 0 on the sparse graph (the radius lists, read forwards and backwards, whose edges
    weigh max(core_a, core_b); long edges their own weight), next point = the smallest (reachability, index),
    source = the first tree point reaching it at that weight: the package's ``mst_linkage_core_vector``.

    Weights are ranks into the sorted distinct ``weights`` (order and equality as the float64 values), so a
    heap entry is one int64, rank * n + point, ordered as (weight, index); per point one int32 pair (its
    reachability so far, -1 once in the tree; its core's rank), one cache line for both reads of an edge.
    Returns (rows, n_reached)."""
    n = len(core_rank)
    state = np.empty((n, 2), dtype=np.int32)
    state[:, 0] = len(weights)  # above every rank: not reached yet
    state[:, 1] = core_rank
    source = np.ones(n, dtype=np.int64)
    rows = np.zeros((max(n - 1, 0), 3))
    heap, size = np.empty(max(16, 4 * n), dtype=np.int64), 0
    current, reached = 0, 1
    for i in range(1, n):
        state[current, 0] = -1  # in the tree: no edge improves it
        room = size + (indptr[current + 1] - indptr[current]) + (rev_ptr[current + 1] - rev_ptr[current]) + \
            (long_ptr[current + 1] - long_ptr[current])
        if room > len(heap):
            grown = np.empty(max(room, 2 * len(heap)), dtype=np.int64)
            grown[:size] = heap[:size]
            heap = grown
        size = _relax(indptr, nbrs, current, state, source, heap, size)
        size = _relax(rev_ptr, rev_nbrs, current, state, source, heap, size)
        for e in range(long_ptr[current], long_ptr[current + 1]):
            j = long_nbr[e]
            w = long_rank[e]
            if w < state[j, 0]:
                state[j, 0] = w
                source[j] = current
                size = _push(heap, size, np.int64(w) * n + j)
        new = -1
        while size > 0:
            key, size = _pop(heap, size)
            j, w = key % n, key // n
            if state[j, 0] == w:  # not a stale entry (and not in the tree: ranks are >= 0)
                new = j
                break
        if new < 0:
            return rows, reached
        rows[i - 1, 0] = source[new]
        rows[i - 1, 1] = new
        rows[i - 1, 2] = weights[state[new, 0]]
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


def reversed_lists_torch(indptr, neighbours) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_reversed_lists` on the radius lists' device (torch tensors), returned on the host: a stable sort
    of the list entries by target keeps each target's sources in increasing order, as the counting sort does
    (on a GPU this takes the host's longest pass, ~1 s per 100 M edges on 2 cores, off it)."""
    import torch

    n, dev = len(indptr) - 1, neighbours.device
    perm = torch.sort(neighbours, stable=True).indices
    sources = torch.repeat_interleave(torch.arange(n, dtype=torch.int32, device=dev), indptr[1:] - indptr[:-1])
    rev_nbr = sources[perm]
    del perm, sources
    rev_ptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    rev_ptr[1:] = torch.bincount(neighbours, minlength=n).cumsum(0)
    return rev_ptr.cpu().numpy(), rev_nbr.cpu().numpy()


def prim_order(n: int, core: np.ndarray, indptr: np.ndarray, neighbours: np.ndarray, long_edges: np.ndarray,
               reversed_lists: tuple[np.ndarray, np.ndarray] | None = None):
    """Prim's edge list on radius edges + ``long_edges`` (k, 3); (rows, reached). ``reversed_lists``: the
    radius lists read backwards when already built (:func:`reversed_lists_torch`)."""
    indptr, neighbours = indptr.astype(np.int64, copy=False), neighbours.astype(np.int32, copy=False)
    rev_ptr, rev_nbr = reversed_lists or _reversed_lists(indptr, neighbours)
    lptr, lnbr, lw = _csr_both_directions(n, long_edges[:, 0].astype(np.int64), long_edges[:, 1].astype(np.int64),
                                          long_edges[:, 2].astype(np.float64))
    weights = np.unique(np.concatenate([core, lw]))
    return _prim_rows(indptr, neighbours, rev_ptr, rev_nbr, np.searchsorted(weights, core).astype(np.int32), lptr,
                      lnbr, np.searchsorted(weights, lw).astype(np.int32), weights)
