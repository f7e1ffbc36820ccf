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


def selectivity(frac: np.ndarray, contrib: np.ndarray, bias: float, labels: np.ndarray) -> float:
    """The rho criterion (module docstring) for one split of one unit.

    ``contrib`` holds the raw contributions W_u * q of the top-k instances (rows), ``labels`` their clusters.
    """
    k = frac.shape[0]
    member = labels >= 0
    act = contrib[member] @ frac.T + bias_fractions(frac)[None, :] * bias  # (members, K)
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
