"""Why a split helps or not, per split unit (a unit with K_u >= 2 sub-units), and which of these diagnostics
predicts the gain across units.

Per split unit u:

* ``exclusive_fraction``: the share of upstream dimensions j won exclusively (Section 3.3, eq. 3): a proper
  subset S of the sub-units wins j, so the sub-units outside S get no share of W_{u,j} (eq. 4). A win by a
  set of m > 1 sub-units counts, as eq. 3 defines "exclusively"; for K_u = 2 the only proper subsets are
  single sub-units, so this and a win by one sub-unit alone are the same number. The merge records it per
  unit from the exact fractions (:func:`exclusive_fraction`; read from the weights, a dimension with
  W_{u,j} = 0 would have no fraction to read).
* ``noise_share``: the share of the unit's top-k instances (Section 3.1) that HDBSCAN left as noise (3.2),
  as the merge records it (``noise`` of ``top_k``).
* ``top_overlap``: the mean pairwise Jaccard overlap of the sibling sub-units' evaluation top-K image sets,
  the images their MS-Scores are taken over (B.2) (:func:`top_overlap`).
* ``activation_correlation``: the mean pairwise Pearson correlation of the sibling sub-units'
  pre-activations over every valid evaluation instance, streamed (:class:`SiblingCorrelation`).
* gains: the mean MS-Score (eq. 7) of the unit's sub-units minus the parent's (``gain_parent_*``) and minus
  the mean of its random-partition control's sub-units (``gain_random_*``; Table 7's control, the same K_u),
  in the layer space (B.2) and the pooled space. Sub-units without an MS-Score (never active) are left out of
  the means, as in the run's MS-Score means.

:func:`rank_correlations` asks which diagnostic predicts which gain: Spearman's rank correlation across the
split units, with n and the two-sided p-value.
"""
from __future__ import annotations

import itertools

import numpy as np

DIAGNOSTICS = {"exclusive_fraction": "upstream dimensions won exclusively (eq. 3)",
               "noise_share": "top-k instances left as noise (HDBSCAN)",
               "top_overlap": "sibling top-K image overlap (mean Jaccard)",
               "activation_correlation": "sibling activation correlation (mean Pearson)"}
GAINS = {"gain_parent_layer": "over the parent, layer space", "gain_random_layer": "over the random partition, layer space",
         "gain_parent_pooled": "over the parent, pooled space",
         "gain_random_pooled": "over the random partition, pooled space"}


def subunits_of(parent: np.ndarray, n_units: int) -> list[np.ndarray]:
    """Each unit's sub-units, in order (one pass, not a scan of ``parent`` per unit)."""
    parent = np.asarray(parent)
    order = np.argsort(parent, kind="stable")
    return np.split(order, np.cumsum(np.bincount(parent, minlength=n_units))[:-1])


def exclusive_fraction(fractions: np.ndarray) -> float:
    """The share of upstream dimensions (columns of a unit's fractions (K, d), eq. 4) that a proper subset
    of the sub-units wins exclusively (eq. 3): where a column is not the equal split 1/K. 0 for K = 1."""
    k = fractions.shape[0]
    return float((np.abs(fractions - 1.0 / k) > 1e-12).any(0).mean())


def top_overlap(top_images: np.ndarray) -> float:
    """Mean pairwise Jaccard overlap |A n B| / |A u B| of the rows of ``top_images`` (K, T): each sibling
    sub-unit's top-K evaluation images. NaN for fewer than two rows or empty sets."""
    sets = [set(row.tolist()) for row in np.asarray(top_images)]
    vals = [len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2) if a | b]
    return float(np.mean(vals)) if vals else float("nan")


class SiblingCorrelation:
    """Streaming Pearson correlation of every pair of sibling sub-units (sub-units of one unit) over the valid
    instances it is shown. Keeps, in float64, per sub-unit the sum and sum of squares and per pair the sum of
    products, all of the values shifted by the first batch's means (so a mean far from 0 loses no precision).
    Memory: O(sub-units + pairs), and per batch a float32 and a float64 copy of the valid instances' sub-unit
    activations."""

    PAIR_CHUNK = 256  # pairs multiplied at once (bounds the per-batch products to instances x 256)

    def __init__(self, parent: np.ndarray):
        parent = np.asarray(parent)
        self.n_units = int(parent.max()) + 1 if len(parent) else 0
        pairs = [(s, t, u) for u, subs in enumerate(subunits_of(parent, self.n_units))
                 for s, t in itertools.combinations(subs.tolist(), 2)]
        self.a, self.b, self.unit = (np.array(x, dtype=np.int64) for x in (zip(*pairs) if pairs else ([], [], [])))
        self.n, self.shift = 0, None
        self.s, self.ss = np.zeros(len(parent)), np.zeros(len(parent))
        self.sab = np.zeros(len(self.a))

    def update(self, acts, valid):
        """``acts`` (B, instances, sub-units) and ``valid`` (B, instances) (torch on the CPU, or numpy); returns
        ``acts``, so it can wrap a feature set's function."""
        x = np.asarray(acts[valid], dtype=np.float64)
        if len(x) == 0:
            return acts
        if self.shift is None:
            self.shift = x.mean(0)
        x -= self.shift
        self.n += len(x)
        self.s += x.sum(0)
        self.ss += np.einsum("ij,ij->j", x, x)
        for i in range(0, len(self.a), self.PAIR_CHUNK):
            a, b = self.a[i : i + self.PAIR_CHUNK], self.b[i : i + self.PAIR_CHUNK]
            self.sab[i : i + self.PAIR_CHUNK] += np.einsum("ij,ij->j", x[:, a], x[:, b])
        return acts

    def pairs(self) -> np.ndarray:
        """Pearson r of every sibling pair (``self.a``, ``self.b``); NaN where a sub-unit is constant."""
        if self.n == 0:
            return np.full(len(self.a), np.nan)
        m = self.s / self.n
        var = self.ss / self.n - m * m
        const = var <= 1e-12 * (var + (m + self.shift) ** 2)  # relative to the raw second moment
        sd = np.sqrt(np.where(const, 1.0, var))
        r = (self.sab / self.n - m[self.a] * m[self.b]) / (sd[self.a] * sd[self.b])
        return np.where(const[self.a] | const[self.b], np.nan, np.clip(r, -1.0, 1.0))

    def per_unit(self) -> np.ndarray:
        """(units,) the mean over each unit's sibling pairs of their correlation; NaN for a unit that is not
        split or whose pairs all involve a constant sub-unit."""
        r = self.pairs()
        ok = np.isfinite(r)
        total = np.bincount(self.unit[ok], r[ok], minlength=self.n_units)
        count = np.bincount(self.unit[ok], minlength=self.n_units)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _finite_mean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def unit_diagnostics(tables: dict, units_meta: list[dict] | None, correlation: np.ndarray) -> dict[str, np.ndarray]:
    """Every diagnostic and gain of the module docstring per unit, as (units,) float64 arrays, NaN for units
    that are not split. ``tables``: :func:`elude.evaluation.scoring.evaluate`'s tables (``parent``,
    ``k_per_unit``, ``subunits_top_images`` and the MS-Scores of units, sub-units and random control in both
    spaces); ``units_meta``: the merge's per-unit metadata (``exclusive_fraction``, ``noise``, ``top_k``), or
    None for a layer built without it (those two diagnostics are then NaN); ``correlation``:
    :meth:`SiblingCorrelation.per_unit`."""
    k = np.asarray(tables["k_per_unit"])
    out = {name: np.full(len(k), np.nan) for name in (*DIAGNOSTICS, *GAINS)}
    for u, subs in enumerate(subunits_of(tables["parent"], len(k))):
        if k[u] < 2:
            continue
        if units_meta:
            meta = units_meta[u]
            out["exclusive_fraction"][u] = meta["exclusive_fraction"]
            out["noise_share"][u] = meta["noise"] / meta["top_k"] if meta["top_k"] else np.nan
        out["top_overlap"][u] = top_overlap(np.asarray(tables["subunits_top_images"])[subs])
        out["activation_correlation"][u] = correlation[u]
        for space in ("layer", "pooled"):
            mean_subs = _finite_mean(np.asarray(tables[f"subunits_ms_{space}"])[subs])
            out[f"gain_parent_{space}"][u] = mean_subs - float(tables[f"units_ms_{space}"][u])
            out[f"gain_random_{space}"][u] = mean_subs - _finite_mean(np.asarray(tables[f"random_ms_{space}"])[subs])
    return out


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def rank_correlations(diag: dict[str, np.ndarray], k_per_unit: np.ndarray) -> dict:
    """Spearman's rank correlation of each diagnostic with each gain across the split units where both are
    defined: {"n_split_units", "rank_correlation": {gain: {diagnostic: {"rho", "p", "n"}}}, "mean": {name:
    mean over split units}}. rho and p are None with fewer than 3 units or a constant column (JSON-safe)."""
    from scipy.stats import spearmanr

    split = np.asarray(k_per_unit) > 1
    table = {}
    for g in GAINS:
        table[g] = {}
        for d in DIAGNOSTICS:
            m = split & np.isfinite(diag[d]) & np.isfinite(diag[g])
            x, y = diag[d][m], diag[g][m]
            rho = p = None
            if m.sum() >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                res = spearmanr(x, y)
                rho, p = _none_if_nan(res.statistic), _none_if_nan(res.pvalue)
            table[g][d] = {"rho": rho, "p": p, "n": int(m.sum())}
    return {"n_split_units": int(split.sum()), "rank_correlation": table,
            "mean": {name: _none_if_nan(_finite_mean(diag[name][split])) for name in (*DIAGNOSTICS, *GAINS)}}
