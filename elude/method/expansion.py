"""ELUDe at a chosen size: matching a target expansion factor (Sec. E.6). Table 6's EF axis and Figure 2,
which compare methods at equal EF, are drawn by :mod:`elude.reporting.ef_tables`.

The paper sets the SAEs' expansion factor first and then matches ELUDe to it "by adjusting either the TopK
activation budget or the HDBSCAN min_cluster_size". Here that is a search: the candidate settings form a
grid, ordered so that ELUDe's effective EF (sub-units / units, Table 9) does not rise along it (a larger
min_cluster_size gives fewer, larger clusters; a smaller top-k budget gives fewer points to split). On
such a monotone curve a bisection brackets the target between two neighbouring candidates after
``n_steps(len(grid))`` = ceil(log2(G + 1)) clusterings, and the closest candidate of the whole grid is one
of those two: any other lies beyond one of them on the curve. The choice is the closest evaluated
candidate (ties: the smaller EF), so a curve that is not monotone still gets the best point seen.
"""
from __future__ import annotations

import json
from pathlib import Path


def candidate_values(cluster: dict, topk_k: int) -> list[int]:
    """The search grid, ordered by falling EF: ``cluster.ef_search.values`` or, by default, the base setting
    times 2^(j/2) for j = -6..6 (1/8x to 8x in steps of sqrt 2: 13 candidates, 4 clusterings)."""
    axis, values = cluster["ef_search"]["axis"], cluster["ef_search"]["values"]
    base, low = (cluster["min_cluster_size"], 2) if axis == "min_cluster_size" else (topk_k, 1)
    values = sorted(values or {max(low, round(base * 2 ** (j / 2))) for j in range(-6, 7)})
    return values if axis == "min_cluster_size" else values[::-1]


def n_steps(n_candidates: int) -> int:
    """Clusterings a bisection over ``n_candidates`` needs at most: ceil(log2(n + 1))."""
    return int(n_candidates).bit_length()


def initial_state(n_candidates: int) -> dict:
    # bracket: EF(lo) >= target > EF(hi); the virtual ends -1 and n stand for +inf and -inf
    return {"lo": -1, "hi": n_candidates, "path": []}


def next_index(state: dict) -> int | None:
    """The candidate the next step clusters, or None when the bracket is closed."""
    lo, hi = state["lo"], state["hi"]
    return None if hi - lo <= 1 else (lo + hi) // 2


def advance(state: dict, index: int, ef: float, target: float, **record) -> dict:
    """The state after candidate ``index`` gave effective EF ``ef``; ``record`` is kept with it in the path."""
    lo, hi = (index, state["hi"]) if ef >= target else (state["lo"], index)
    if ef == target:
        hi = index + 1  # exact: nothing left to search
    return {"lo": lo, "hi": hi, "path": state["path"] + [{"index": index, "ef": ef, **record}]}


def choose(state: dict, target: float) -> dict | None:
    """The evaluated candidate closest to ``target`` (ties: the smaller EF, then the earlier in the grid)."""
    if not state["path"]:
        return None
    return min(state["path"], key=lambda p: (abs(p["ef"] - target), p["ef"], p["index"]))


def effective_ef(cluster_shards: list[str | Path]) -> tuple[float, int, int]:
    """(sub-units / units, sub-units, units) of a clustering, from its shards' manifests: each unit keeps
    max(1, clusters) sub-units (a unit HDBSCAN does not split, or that never activates, stays whole)."""
    counts = {}
    for shard in cluster_shards:
        counts.update(json.loads((Path(shard) / "manifest.json").read_text())["n_clusters"])
    subunits = sum(max(1, int(n)) for n in counts.values())
    return subunits / len(counts), subunits, len(counts)
