"""Exact HDBSCAN with its expensive half in torch (Section 3.2's clustering, at paper scale).

HDBSCAN* = core distances -> minimum spanning tree (MST) of the mutual-reachability graph ->
single-linkage tree -> condensed tree -> leaf/EOM selection. This module computes the first two in
torch, in blocks of rows (GPU when given a CUDA device, else CPU); the rest runs in :mod:`.tree`, a
linear-time copy of the hdbscan package's ``_hdbscan_linkage.label`` + ``hdbscan_._tree_to_labels``
whose outputs are bitwise the package's (tests hold the package as the reference).

Definitions match hdbscan 0.8.x (its ``prims_kdtree`` / ``generic`` algorithms, which agree):
- core distance = distance to the point's ``min_samples``-th nearest *other* point (the package queries
  ``min_samples + 1`` neighbours with the point itself first); ``min_samples`` is capped at n - 1;
- mutual reachability mr(a, b) = max(core_a, core_b, d(a, b)), euclidean d.

Memory: O(block x n) for one block of screened distances, plus O(n x min_samples) for the radius
neighbour lists (int32) and the spanning-tree bookkeeping; never an n x n matrix.

**Exactness.** Distances are screened by one GEMM per block (float32 on the CPU and on GPUs whose float64
is slow; float64 on datacenter GPUs, where it costs the same: :func:`.points.screen_dtype`) and every value
that decides something is recomputed exactly: a screened squared distance is within ``tol`` of the truth (a
worst-case bound for a dot product of d terms in any summation order, (d + 16) u (|x|^2 + max |y|^2), u the
screen's unit roundoff; it holds for cuBLAS's float32 GEMMs as for the CPU's, TF32 being turned off around
every screen), so every candidate inside a ``2 tol`` band of a decision (the core distance's rank, the
cheapest edge out of a component or between two) is re-evaluated in float64 as sqrt(sum((x - y)^2)). On the
CPU that sum runs left to right (numba), the package's own arithmetic, so distances, core distances and tree
weights are bitwise the package's; on a GPU it runs in torch's order. The core distance's band: on the CPU
every point screened within 2 tol of the row's k-th screened value, found by a linear-time selection
(:func:`.core._core_rows`); on a GPU the band among a top-k of candidates (a row whose band runs past them
takes the band from its whole screened row). The core pass holds the points in groups (each point's
nearest of 64 pivots; the 10 % farthest in none, ordered by their nearest pivot; a float32 screen is kept in
that order, a float64 screen's group-ordered copy lives for the pass), takes its rows in that order and
screens a block of rows only against the column tiles that a prescreen (TF32 on a GPU, bfloat16 on the CPU,
with its own worst-case bound, checked on every block) cannot rule out: a tile whose lower bound exceeds an
upper bound of every row's core distance by 3 tol holds no candidate, band member or radius-list neighbour
(the proof in ``core.core_distances``). The prescreen's per-group minima, lowered by its bound, are the lower
bounds that let the few-components finish screen only the rows that can hold a pair's cheapest edge (the
proof in ``boruvka._finish_minima``). When few components remain, a float64 screen keeps the band narrow
where high-dimensional distances concentrate.

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
core distance is always in some MST and is in a radius list; a longer ("long") pair is in some MST only
where its distance equals the heaviest MST edge on the path between its ends (the cycle property): it
replaces that edge at a tie, and that edge is the pair itself, an exact duplicate's copy of it (added), or
another pair at exactly the same distance, long or a radius edge (exactly symmetric data, e.g. a lattice or
grid-quantised points): when a search sees such a tie, one more pass adds every long pair at exactly an MST
edge's weight (before 2026-12-06 only at a long edge's weight: on grid-quantised points and binary features a
long pair tied with a radius edge was Prim's choice, and settings of ``bench/cluster_exactness.py --tie-sweep
60`` clustered differently, ARI down to 0.52; now none of its 2,880 comparisons). Hence Prim on
G takes the same decisions as the package's Prim on all n^2 edges, and ``label`` receives the same rows in
the same order. Checked on every run: Prim must reach every point with exactly Borůvka's MST weights; where
not, the Borůvka tree is used (valid, but tied edges in its own order), ``tie_order`` says ``boruvka`` and a
warning is logged. A symmetric tie that no search sees can still reorder tied edges without that check
noticing; no such case is known outside contrived data. On the GPU
the float64 sums run in another order, so weights may differ from the package's in the last bit and
near-ties (within ~1e-16) may break the other way.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..limits import BLOCK_MB
from .boruvka import boruvka, long_edge_ties
from .core import core_distances
from .points import Points
from .prim import prim_order, reversed_lists_torch
from .tree import tree_to_labels

log = logging.getLogger(__name__)


@dataclass
class MST:
    rows: np.ndarray  # (n - 1, 3) float64: (source, new point, mutual reachability), hdbscan's edge-list layout
    core: np.ndarray  # (n,) float64 core distances
    tie_order: str  # 'prim' (the package's order, see the module docstring) or 'boruvka'
    stats: dict


def _duplicate_groups(pts: Points, points: np.ndarray) -> dict[int, np.ndarray]:
    """For each of ``points`` that has exact copies (identical rows, d == 0), all of its copies: the rows whose
    projection on one random direction lies within rounding of the point's (a window of the sorted
    projections), then compared exactly. (A sort of all rows, ``torch.unique(dim=0)``, would copy 9.8 GB of
    points at 400k x 3072.)"""
    probe = torch.randn(pts.d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(pts.device)
    proj = pts.x64 @ probe
    sorted_proj, order = proj.sort()
    asked = torch.from_numpy(np.unique(points)).to(pts.device)
    # |fl(x.r) - x.r| <= d u |x| |r| in any summation order: two copies' projections differ by at most twice that
    slack = 2 * (pts.d + 2) * float(torch.finfo(torch.float64).eps) * float(probe.norm()) * pts.sq64[asked].sqrt()
    first = torch.searchsorted(sorted_proj, proj[asked] - slack)
    last = torch.searchsorted(sorted_proj, proj[asked] + slack, right=True)
    out = {}
    for i in (last - first > 1).nonzero()[:, 0].tolist():  # another row's projection in the point's window
        p, cand = int(asked[i]), order[int(first[i]) : int(last[i])]
        copies = cand[(pts.x64[cand] == pts.x64[p]).all(1)]  # the point itself among them
        if len(copies) > 1:
            out[p] = np.sort(copies.cpu().numpy())
    return out


def mutual_reachability_mst(x: np.ndarray, min_samples: int, device: str | torch.device = "cpu",
                            block_mb: int | None = None, gpu_arithmetic: bool | None = None,
                            screen: str | None = None) -> MST:
    """Core distances and the MST of the mutual-reachability graph of ``x`` in the package's Prim order.

    ``block_mb``: memory of one block's working set (default :data:`BLOCK_MB` for the device; on a GPU a
    block must hold hundreds of rows, or each block's GEMM waits on reading all points once more).
    ``gpu_arithmetic``: None = as the device does; True runs the GPU's arithmetic (top-k selection, exact
    sums in torch) on any device, which is how CI tests the GPU path without a GPU. ``screen``: 'float32' or
    'float64' (None: :func:`.points.screen_dtype` chooses); the result is the same, only the speed differs."""
    n = len(x)
    ms = max(1, min(n - 1, min_samples))
    device = torch.device(device)
    if screen not in (None, "float32", "float64"):
        raise ValueError(f"screen must be 'float32', 'float64' or None, not {screen!r}")
    started = time.perf_counter()
    pts = Points(x, device, block_mb or BLOCK_MB[device.type], gpu_arithmetic, screen and getattr(torch, screen))
    phase = {"points": pts.clock() - started}
    t = pts.clock()
    core, indptr, neighbours, stats = core_distances(pts, ms)
    stats["pairs_screened_core"] = pts.counters["pairs_screened"]  # the rest: Borůvka's searches and the finish
    phase["core_distances"], t = pts.clock() - t, pts.clock()
    mst, bstats = boruvka(pts, core, indptr, neighbours)
    stats.update(bstats)
    phase["boruvka"], t = pts.clock() - t, pts.clock()
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
    if stats["long_ties_seen"]:  # a long pair may tie any MST edge, a radius edge included
        long_edges = np.concatenate([long_edges, long_edge_ties(pts, core, mst[:, 2])])
    stats["long_edges"] = int(is_long.sum())
    phase["long_edges"], t = pts.clock() - t, pts.clock()
    backwards = reversed_lists_torch(indptr, neighbours) if pts.gpu_arithmetic else None  # on the device
    rows, reached = prim_order(n, core_np, indptr.cpu().numpy(), neighbours.cpu().numpy(), long_edges, backwards)
    phase["prim"] = time.perf_counter() - t
    tie_order = "prim"
    if reached != n or not np.array_equal(np.sort(rows[:, 2]), np.sort(mst[:, 2])):
        log.warning("exact HDBSCAN: Prim's replay on the sparse graph did not reproduce the MST weights "
                    "(ties between distinct long edges); using the Borůvka tree, whose tie order may differ "
                    "from the hdbscan package's")
        rows, tie_order = mst[np.lexsort((mst[:, 1], mst[:, 0], mst[:, 2]))], "boruvka"
    stats.update(pts.counters, phase_s=phase, screen=str(pts.screen).removeprefix("torch."))
    return MST(rows=rows, core=core_np, tie_order=tie_order, stats=stats)


def hdbscan_from_mst(mst: MST, min_cluster_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The tree half on our MST: sort (as the package does), single linkage, condense, select."""
    started = time.perf_counter()
    labels, probs = tree_to_labels(mst.rows, min_cluster_size, method)
    mst.stats["phase_s"]["tree"] = time.perf_counter() - started
    return labels.astype(np.int64), probs.astype(np.float32)
