"""Why a split helps (elude.evaluation.diagnostics): planted cases with known answers and a streamed correlation
against numpy on the whole data."""
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from elude.evaluation import diagnostics as dg
from elude.method.surgery import fractions_for_rho


def test_exclusive_fraction_counts_dimensions_won_by_a_proper_subset():
    assert dg.exclusive_fraction(np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])) == 1.0  # disjoint siblings
    assert dg.exclusive_fraction(np.full((3, 5), 1 / 3)) == 0.0  # every dimension shared
    assert dg.exclusive_fraction(np.ones((1, 4))) == 0.0  # an unsplit unit
    # eq. 3 on planted representatives: dims 0, 1 won by one cluster, dim 2 by two of three (counts), dim 3 shared
    reps = np.array([[9.0, 0.1, 5.0, 1.0], [0.1, 9.0, 5.0, 1.0], [0.1, 0.1, 0.1, 1.0]])
    frac = fractions_for_rho(reps, 0.5)
    assert frac[:, 2].tolist() == [0.5, 0.5, 0.0] and frac[:, 3].tolist() == [1 / 3] * 3
    assert dg.exclusive_fraction(frac) == 0.75


def test_top_overlap_is_the_mean_pairwise_jaccard(rng):
    assert dg.top_overlap(np.array([[1, 2, 3], [3, 2, 1]])) == 1.0  # identical sets
    assert dg.top_overlap(np.array([[1, 2], [3, 4], [5, 6]])) == 0.0
    assert np.isnan(dg.top_overlap(np.array([[1, 2]])))
    top = np.stack([rng.choice(30, 10, replace=False) for _ in range(4)])
    brute = np.mean([len(np.intersect1d(a, b)) / len(np.union1d(a, b)) for a, b in itertools.combinations(top, 2)])
    assert dg.top_overlap(top) == pytest.approx(brute)


def test_sibling_correlation_streamed_equals_numpy_on_all_valid_instances(rng):
    parent = np.array([0, 0, 0, 1, 2, 2])  # unit 0: 3 sub-units, unit 1 unsplit, unit 2: 2 identical sub-units
    acts = torch.from_numpy(rng.normal(size=(7, 5, 6)) + 100.0)  # a mean far from 0 (the shift keeps precision)
    acts[..., 5] = acts[..., 4]
    acts[..., 1] = 0.3 * acts[..., 0] + acts[..., 1]
    valid = torch.from_numpy(rng.random((7, 5)) < 0.7)
    acc = dg.SiblingCorrelation(parent)
    for i in range(0, 7, 3):  # three batches; update hands the activations on (it wraps a feature set)
        batch = acts[i : i + 3]
        assert acc.update(batch, valid[i : i + 3]) is batch
    x = acts[valid].numpy()
    c = np.corrcoef(x.T)
    assert acc.pairs() == pytest.approx([c[0, 1], c[0, 2], c[1, 2], c[4, 5]], abs=1e-10)
    per_unit = acc.per_unit()
    assert per_unit[0] == pytest.approx((c[0, 1] + c[0, 2] + c[1, 2]) / 3, abs=1e-10)
    assert np.isnan(per_unit[1]) and per_unit[2] == pytest.approx(1.0)
    # a constant sub-unit (all its weight given to siblings) has no correlation; its unit's other pairs count
    acts[..., 2] = 7.0
    acc = dg.SiblingCorrelation(parent)
    acc.update(acts, valid)
    assert np.isnan(acc.pairs()[1:3]).all() and acc.per_unit()[0] == pytest.approx(np.corrcoef(x[:, 0], x[:, 1])[0, 1])


def test_unit_diagnostics_and_their_rank_correlation_with_the_gain():
    k = np.array([2, 1, 2, 3, 2])
    parent = np.repeat(np.arange(5), k)
    s = len(parent)
    sub_ms = np.linspace(0.2, 0.9, s)
    tables = {"parent": parent, "k_per_unit": k, "subunits_top_images": np.arange(s * 4).reshape(s, 4) % 9,
              "units_ms_layer": np.full(5, 0.3), "units_ms_pooled": np.full(5, 0.3),
              "subunits_ms_layer": sub_ms, "subunits_ms_pooled": sub_ms,
              "random_ms_layer": sub_ms.copy(), "random_ms_pooled": np.full(s, np.nan)}
    meta = [{"exclusive_fraction": 0.1 * u, "noise": 10 - u, "top_k": 20} for u in range(5)]
    diag = dg.unit_diagnostics(tables, meta, np.array([0.5, np.nan, 0.4, 0.3, 0.2]))
    split = k > 1
    assert set(diag) == set(dg.DIAGNOSTICS) | set(dg.GAINS)
    assert all(np.isnan(v[1]) for v in diag.values())  # the unsplit unit has none
    assert diag["exclusive_fraction"][split].tolist() == pytest.approx([0.0, 0.2, 0.3, 0.4])
    assert diag["noise_share"][split].tolist() == pytest.approx([0.5, 0.4, 0.35, 0.3])
    subs = dg.subunits_of(parent, 5)
    for u in np.flatnonzero(split):
        assert diag["gain_parent_layer"][u] == pytest.approx(sub_ms[subs[u]].mean() - 0.3)
        assert diag["gain_random_layer"][u] == 0.0  # the control scores as the sub-units
        assert diag["top_overlap"][u] == pytest.approx(dg.top_overlap(tables["subunits_top_images"][subs[u]]))
    assert np.isnan(diag["gain_random_pooled"][split]).all()  # the control has no score there
    res = dg.rank_correlations(diag, k)
    corr = res["rank_correlation"]
    assert res["n_split_units"] == 4
    # the gain over the parent rises with the exclusive fraction unit by unit: rank correlation 1
    assert corr["gain_parent_layer"]["exclusive_fraction"]["rho"] == pytest.approx(1.0)
    assert corr["gain_parent_layer"]["noise_share"]["rho"] == pytest.approx(-1.0)
    expected = spearmanr(diag["top_overlap"][split], diag["gain_parent_layer"][split])
    assert corr["gain_parent_layer"]["top_overlap"] == pytest.approx(
        {"rho": expected.statistic, "p": expected.pvalue, "n": 4})
    # a constant gain (over the random partition) and no pooled control: no correlation, but n is said
    assert corr["gain_random_layer"]["exclusive_fraction"] == {"rho": None, "p": None, "n": 4}
    assert corr["gain_random_pooled"]["noise_share"] == {"rho": None, "p": None, "n": 0}
    assert res["mean"]["gain_random_layer"] == 0.0 and res["mean"]["gain_random_pooled"] is None
    no_meta = dg.unit_diagnostics(tables, None, np.zeros(5))
    assert np.isnan(no_meta["exclusive_fraction"]).all() and np.isnan(no_meta["noise_share"]).all()
