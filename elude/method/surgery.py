"""Weight restructuring (Section 3.3): the set-winning margin rule, fractions, bias split, rho search.

Readings of the open choices, implemented exactly as stated here:

* Winning sets (eq. 3). S ranges over non-empty *proper* subsets of the K clusters. For S to win,
  its smallest |r_j| must exceed every outside |r_j| by the margin, so only the m largest |r_j| can
  form a winning set. Dimension j is won exclusively iff exactly one m in 1..K-1 satisfies
  rho * (m-th largest) > ((m+1)-th largest); otherwise it is shared equally (1/K each).
  A consequence worth knowing: where the upstream layer has exact zeros (ReLU), a column such as
  (0.3, 1e-6, 0) passes the margin twice (0.3 vs 1e-6 and 1e-6 vs 0) at every rho, so it is shared.
* Fractions (eq. 4). f_j^(c) = w_j^(u,c) / W_{u,j} is 1/|S| for c in S, 0 for c outside S, or 1/K
  where shared. The fraction comes from the rule even where W_{u,j} = 0, so the bias split below is
  well defined for zero weights.
* Bias split. omega_c = mean over j of f_j^(c); b_u^(c) = omega_c * b_u. Fractions of a dimension sum
  to 1, so the omegas and the sub-unit biases sum to 1 and b_u.
* Fewer than two clusters (one cluster, or all noise): the unit stays one sub-unit, unchanged.
* Rho criterion (Section 3.3: "each concept subunit activates most strongly on its own cluster and
  most weakly on the others"). For each rho in the grid, let A[c, c'] be the mean pre-activation of
  sub-unit c over the top-k instances of cluster c' (noise excluded). The score is the mean over c of
  A[c, c] - mean_{c' != c} A[c, c'], divided by the parent's mean activation over those instances
  (a scale that does not depend on rho). A fully shared split scores exactly 0. The highest score
  wins; ties (within 1e-9 relative) go to the smallest rho, i.e. the strictest margin that reaches it.
* Sibling merge (optional, off by default: :func:`merge_similar_siblings`). Sub-units of one unit that its
  top-k instances do not tell apart are summed into one, which keeps the layer exactly the original.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RHO_GRID = [round(0.05 * i, 2) for i in range(1, 21)]  # {0.05, 0.10, ..., 1.00}


def fractions_for_rho(rep_abs: np.ndarray, rho: float) -> np.ndarray:
    """Eqs. 3-4 as fractions f (K, upstream): sub-unit c's share of W_{u,j}. Columns sum to 1."""
    k, d = rep_abs.shape
    order = np.argsort(-rep_abs, axis=0, kind="stable")  # cluster indices by |r_j| descending
    s = np.take_along_axis(rep_abs, order, axis=0)
    wins = rho * s[:-1] > s[1:]  # (K-1, d): does the top-m set win, for m = 1..K-1
    exclusive = wins.sum(0) == 1
    m = wins.argmax(0) + 1  # size of the winning set, where exactly one wins
    rank = np.argsort(order, axis=0, kind="stable")  # rank of each cluster in its column
    frac = np.full((k, d), 1.0 / k)
    in_set = rank < m[None, :]
    frac[:, exclusive] = np.where(in_set[:, exclusive], 1.0 / m[None, exclusive], 0.0)
    return frac


def bias_fractions(frac: np.ndarray) -> np.ndarray:
    """omega_c = (1/d) sum_j f_j^(c) (Section 3.3, bias split)."""
    return frac.mean(axis=1)


def subunit_activations(contrib: np.ndarray, frac: np.ndarray, bias: float) -> np.ndarray:
    """Sub-unit pre-activations (instances, K) from raw contributions W_u * q (instances, upstream): eq. 4's
    weights f * W_u and the bias split omega_c * b_u."""
    return contrib @ frac.T + bias_fractions(frac)[None, :] * bias


def selectivity(frac: np.ndarray, contrib: np.ndarray, bias: float, labels: np.ndarray) -> float:
    """The rho criterion (module docstring) for one split of one unit.

    ``contrib`` holds the raw contributions W_u * q of the top-k instances (rows), ``labels`` their clusters.
    """
    k = frac.shape[0]
    member = labels >= 0
    act = subunit_activations(contrib[member], frac, bias)  # (members, K)
    lab = labels[member]
    a = np.stack([act[lab == c].mean(0) for c in range(k)], axis=1)  # a[c, c'] = mean of sub-unit c on cluster c'
    own = np.diag(a)
    others = (a.sum(1) - own) / (k - 1)
    scale = abs(contrib[member].sum(1).mean() + bias) + 1e-12
    return float((own - others).mean() / scale)


@dataclass
class UnitSplit:
    fractions: np.ndarray  # (K, upstream) float64, columns sum to 1
    omega: np.ndarray  # (K,) bias fractions
    rho: float | None  # chosen margin; None for an unchanged unit
    scores: list[float]  # criterion per rho in the grid (empty for an unchanged unit)


def split_unit(reps: np.ndarray, contrib: np.ndarray, bias: float, labels: np.ndarray,
               rho_grid: list[float]) -> UnitSplit:
    """Choose rho and return the unit's fractions; K < 2 leaves the unit unchanged (one sub-unit)."""
    k, d = reps.shape if reps.ndim == 2 else (0, contrib.shape[1])
    if k < 2:
        return UnitSplit(np.ones((1, d)), np.ones(1), None, [])
    rep_abs = np.abs(reps.astype(np.float64))
    candidates = [fractions_for_rho(rep_abs, rho) for rho in rho_grid]
    scores = [selectivity(f, contrib, bias, labels) for f in candidates]
    best = 0
    for i, sc in enumerate(scores):  # first maximum: the smallest rho among ties
        if sc > scores[best] + 1e-9 * max(1.0, abs(scores[best])):
            best = i
    frac = candidates[best]
    return UnitSplit(frac, bias_fractions(frac), float(rho_grid[best]), scores)


def random_partition(k: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Table 7's control: each upstream dimension goes to one of K groups at random (fractions 0/1)."""
    frac = np.zeros((k, d))
    frac[rng.integers(0, k, size=d), np.arange(d)] = 1.0
    return frac


# --- optional post-processing: merging sibling sub-units (off by default; the paper's method is above) ---------
# The paper's Sec. 4.2 (Limitations) suggests reducing redundant sub-units "in a post-processing step via
# correlation-based pruning"; within one neuron this can be done losslessly, by summing.
@dataclass
class SiblingMerge:
    fractions: np.ndarray  # (K', upstream): each merged sub-unit's fractions, the sum of its siblings'
    omega: np.ndarray  # (K',) bias fractions, the sum of its siblings'
    groups: list[list[int]]  # merged sub-unit -> the sub-units of the split it sums (ascending; by first member)
    correlation: np.ndarray  # (K, K) Pearson correlation of the split's sub-units over the top-k instances
    overlap: np.ndarray  # (K, K) Jaccard overlap of their top sets

    def merged_into(self) -> np.ndarray:
        """(K,) the merged sub-unit each sub-unit of the split went into."""
        into = np.empty(sum(map(len, self.groups)), np.int64)
        for g, members in enumerate(self.groups):
            into[members] = g
        return into


def merge_siblings(fractions: np.ndarray, omega: np.ndarray, groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum each group of sibling sub-units into one: fractions (so weight rows, f * W_u) and bias fractions
    add. Every upstream column still sums to 1 and the omegas to 1, so the unit stays exactly the original
    (eqs. 5, 6), and the merged omega is again the mean of its fractions (the paper's bias split). The
    post-processing of redundant sub-units that the paper suggests (Sec. 4.2, Limitations), done within a neuron."""
    return (np.stack([fractions[g].sum(0) for g in groups]), np.array([omega[g].sum() for g in groups]))


def sibling_similarity(act: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """For sub-unit activations ``act`` (instances, K): the (K, K) Pearson correlation over the instances
    (0 where a sub-unit is constant) and the Jaccard overlap of each sub-unit's ``top_n`` most active instances."""
    k = act.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(act, rowvar=False).reshape(k, k), nan=0.0)
    top = np.argsort(-act, axis=0, kind="stable")[:top_n]  # (top_n, K)
    member = np.zeros((len(act), k), bool)
    member[top, np.arange(k)[None, :]] = True
    inter = member.T.astype(np.int64) @ member.astype(np.int64)
    return corr, inter / (2 * top_n - inter)


def connected_groups(adj: np.ndarray) -> list[list[int]]:
    """Connected components of a symmetric boolean graph, each ascending, ordered by their first member."""
    group = np.full(len(adj), -1)
    for i in range(len(adj)):
        if group[i] < 0:
            group[i], stack = i, [i]
            while stack:
                j = stack.pop()
                for n in np.flatnonzero(adj[j] & (group < 0)):
                    group[n] = i
                    stack.append(n)
    return [np.flatnonzero(group == g).tolist() for g in np.unique(group)]


def merge_similar_siblings(frac: np.ndarray, contrib: np.ndarray, bias: float, labels: np.ndarray,
                           correlation: float | None = None, overlap: float | None = None) -> SiblingMerge:
    """Merge a unit's sibling sub-units that the unit's own top-k instances do not tell apart.

    The sub-units' pre-activations on the unit's top-k instances (all of them, noise included: the inputs
    that drive the unit, eq. 1) are ``contrib @ frac.T + omega * bias``. Two siblings are too similar when
    every criterion given holds: their Pearson correlation over these instances is at least ``correlation``,
    and the Jaccard overlap of their top sets is at least ``overlap``, a top set being a sub-unit's n most
    active instances with n the unit's smallest cluster (so each could lie in its own cluster). Thresholds
    are met up to 1e-9, so 1.0 merges exact duplicates. Siblings are merged by connected components of the
    too-similar graph (order-independent; a chain of similar pairs merges whole). Neither criterion given:
    nothing is merged.
    """
    k = frac.shape[0]
    omega = bias_fractions(frac)
    if k < 2:  # an unchanged unit
        return SiblingMerge(frac, omega, [[0]], np.ones((1, 1)), np.ones((1, 1)))
    act = subunit_activations(contrib, frac, bias)
    smallest = np.bincount(labels[labels >= 0], minlength=k).min()
    corr, jac = sibling_similarity(act, int(min(max(smallest, 1), len(act))))
    adj = np.full((k, k), correlation is not None or overlap is not None)
    for threshold, sim in ((correlation, corr), (overlap, jac)):
        if threshold is not None:
            adj &= sim >= threshold - 1e-9
    groups = connected_groups(adj | np.eye(k, dtype=bool))
    merged_frac, merged_omega = merge_siblings(frac, omega, groups)
    return SiblingMerge(merged_frac, merged_omega, groups, corr, jac)
