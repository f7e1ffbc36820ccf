"""HDBSCAN's tree half in linear time: single linkage, condensed tree, leaf/EOM selection, probabilities.

The same outputs as the hdbscan package's ``_hdbscan_linkage.label`` + ``hdbscan_._tree_to_labels`` (with
the package's defaults: no epsilon, no persistence, no single cluster, no maximum size), which spend
Python-level time per node (30 s at 400k points). Every order that can reach a number is the package's:
the condensed tree is built from a FIFO breadth-first walk of the single-linkage tree (the package's
level order, left child first), so cluster ids, row order, stability sums (float64, row order) and the
EOM comparison (the package's ``cdef float subtree_stability``: float32 sums of float64 stabilities) are
bitwise the package's. Labels: a point belongs to the selected cluster above its condensed-tree parent,
if any (the package's union-find over rows whose child is not selected ends at that cluster, or at the
root = noise); probability = min(lambda_point, lambda_max) / lambda_max with lambda_max the largest lambda
of any row whose parent is that cluster (1 where lambda_max is 0 or lambda_point is infinite).
tests/test_exact_hdbscan.py checks every output against the package's functions.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def single_linkage(rows: np.ndarray) -> np.ndarray:
    """scipy-style linkage (n - 1, 4) from MST rows sorted by weight: the package's ``label``."""
    m = rows.shape[0]
    n = m + 1
    parent = np.full(2 * n - 1, -1, dtype=np.int64)
    size = np.zeros(2 * n - 1, dtype=np.int64)
    size[:n] = 1
    out = np.zeros((m, 4))
    nxt = n
    for i in range(m):
        roots = np.empty(2, dtype=np.int64)
        for s in range(2):
            p = np.int64(rows[i, s])
            r = p
            while parent[r] != -1:
                r = parent[r]
            while parent[p] != -1 and parent[p] != r:  # path compression
                q = parent[p]
                parent[p] = r
                p = q
            roots[s] = r
        a, b = roots[0], roots[1]
        out[i, 0], out[i, 1], out[i, 2] = a, b, rows[i, 2]
        out[i, 3] = size[a] + size[b]
        parent[a] = nxt
        parent[b] = nxt
        size[nxt] = size[a] + size[b]
        nxt += 1
    return out


@numba.njit(cache=True)
def _points_below(hier: np.ndarray, start: np.int64, num_points: np.int64, queue: np.ndarray,
                  ignore: np.ndarray, out: np.ndarray, pos: np.int64) -> np.int64:
    """Append the points of the subtree at ``start`` to ``out`` in breadth-first order (the package's
    ``bfs_from_hierarchy``) and mark every node of it ignored; returns the new length of ``out``."""
    head, tail = 0, 1
    queue[0] = start
    while head < tail:
        node = queue[head]
        head += 1
        ignore[node] = True
        if node < num_points:
            out[pos] = node
            pos += 1
        else:
            queue[tail] = np.int64(hier[node - num_points, 0])
            queue[tail + 1] = np.int64(hier[node - num_points, 1])
            tail += 2
    return pos


@numba.njit(cache=True)
def condense_tree(hier: np.ndarray, min_cluster_size: int):
    """The package's ``condense_tree``: (parent, child, lambda, child_size) arrays in the package's row order."""
    m = hier.shape[0]
    root = 2 * m
    num_points = m + 1
    relabel = np.empty(root + 1, dtype=np.int64)
    relabel[root] = num_points
    next_label = num_points + 1
    ignore = np.zeros(root + 1, dtype=np.bool_)
    cap = 2 * num_points
    parent = np.empty(cap, dtype=np.int64)
    child = np.empty(cap, dtype=np.int64)
    lam = np.empty(cap)
    csize = np.empty(cap, dtype=np.int64)
    pos = 0
    order = np.empty(root + 1, dtype=np.int64)  # the whole tree's breadth-first order
    queue = np.empty(root + 1, dtype=np.int64)
    points = np.empty(num_points, dtype=np.int64)
    head, tail = 0, 1
    order[0] = root
    while head < tail:
        node = order[head]
        head += 1
        if node >= num_points:
            order[tail] = np.int64(hier[node - num_points, 0])
            order[tail + 1] = np.int64(hier[node - num_points, 1])
            tail += 2
    for oi in range(tail):
        node = order[oi]
        if ignore[node] or node < num_points:
            continue
        row = node - num_points
        left, right = np.int64(hier[row, 0]), np.int64(hier[row, 1])
        lv = 1.0 / hier[row, 2] if hier[row, 2] > 0.0 else np.inf
        lc = np.int64(hier[left - num_points, 3]) if left >= num_points else 1
        rc = np.int64(hier[right - num_points, 3]) if right >= num_points else 1
        if lc >= min_cluster_size and rc >= min_cluster_size:
            for side, cnt in ((left, lc), (right, rc)):
                relabel[side] = next_label
                next_label += 1
                parent[pos], child[pos], lam[pos], csize[pos] = relabel[node], relabel[side], lv, cnt
                pos += 1
        else:
            for side, cnt in ((left, lc), (right, rc)):
                if cnt < min_cluster_size:
                    k = _points_below(hier, side, num_points, queue, ignore, points, 0)
                    for j in range(k):
                        parent[pos], child[pos], lam[pos], csize[pos] = relabel[node], points[j], lv, 1
                        pos += 1
                elif lc < min_cluster_size or rc < min_cluster_size:
                    relabel[side] = relabel[node]  # the big side carries the cluster on
    return parent[:pos], child[:pos], lam[:pos], csize[:pos]


@numba.njit(cache=True)
def _select_and_label(parent, child, lam, csize, num_points: int, leaf: bool):
    """Stability, leaf or EOM selection, labels and probabilities, as the package's ``get_clusters``."""
    root = num_points  # the condensed tree's root cluster id (parent.min())
    n_ids = max(parent.max(), child.max()) + 1
    n_clusters = parent.max() - root + 1
    birth = np.zeros(n_ids)
    for i in range(len(child)):
        birth[child[i]] = lam[i]
    birth[root] = 0.0
    stability = np.zeros(n_clusters)
    for i in range(len(parent)):  # row order: the package's float64 sums
        stability[parent[i] - root] += (lam[i] - birth[parent[i]]) * csize[i]
    has_children = np.zeros(n_clusters, dtype=np.bool_)
    up = np.full(n_clusters, -1, dtype=np.int64)  # each cluster's parent cluster
    n_cluster_rows = 0
    for i in range(len(parent)):
        if csize[i] > 1:
            has_children[parent[i] - root] = True
            up[child[i] - root] = parent[i]
            n_cluster_rows += 1
    keeps = np.zeros(n_clusters, dtype=np.bool_)
    if leaf:
        if n_cluster_rows > 0:
            for c in range(1, n_clusters):
                keeps[c] = not has_children[c]
    else:
        # children's float32 sums, in row order (the package sums parent_to_children lists)
        first = np.full(n_clusters, -1, dtype=np.int64)
        second = np.full(n_clusters, -1, dtype=np.int64)
        for i in range(len(parent)):
            if csize[i] > 1:
                p = parent[i] - root
                if first[p] < 0:
                    first[p] = child[i] - root
                else:
                    second[p] = child[i] - root
        for c in range(n_clusters - 1, 0, -1):  # descending ids, the root excluded: children first
            sub = np.float32(0.0)
            for ch in (first[c], second[c]):
                if ch >= 0:
                    sub = np.float32(np.float64(sub) + stability[ch])
            if np.float64(sub) > stability[c]:
                stability[c] = np.float64(sub)
            else:
                keeps[c] = True
    # a kept cluster is selected unless an ancestor (not the root) is kept too; ids grow downwards
    selected_above = np.full(n_clusters, -1, dtype=np.int64)  # the selected cluster at or above each cluster
    for c in range(1, n_clusters):
        above = selected_above[up[c] - root]
        selected_above[c] = above if above >= 0 else (c if keeps[c] else -1)
    label_of = np.full(n_clusters, -1, dtype=np.int64)
    k = 0
    for c in range(n_clusters):
        if selected_above[c] == c:
            label_of[c] = k
            k += 1
    death = np.zeros(n_clusters)
    for i in range(len(parent)):
        death[parent[i] - root] = max(death[parent[i] - root], lam[i])
    labels = np.full(num_points, -1, dtype=np.int64)
    probs = np.zeros(num_points)
    for i in range(len(parent)):
        pt = child[i]
        if pt >= root:
            continue
        sel = selected_above[parent[i] - root]
        if sel < 0:
            continue
        labels[pt] = label_of[sel]
        mx = death[sel]
        if mx == 0.0 or not np.isfinite(lam[i]):
            probs[pt] = 1.0
        else:
            probs[pt] = min(lam[i], mx) / mx
    return labels, probs


def tree_to_labels(rows: np.ndarray, min_cluster_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities from unsorted MST rows (a, b, weight), as the package computes them."""
    if method not in ("leaf", "eom"):
        raise ValueError(f"cluster.method: {method!r} is not 'leaf' or 'eom'")
    rows = rows[np.argsort(rows.T[2]), :]  # the package's (unstable) sort: tied rows in its order
    hier = single_linkage(np.ascontiguousarray(rows, dtype=np.float64))
    parent, child, lam, csize = condense_tree(hier, int(min_cluster_size))
    return _select_and_label(parent, child, lam, csize, len(hier) + 1, method == "leaf")
