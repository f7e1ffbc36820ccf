"""Why a split helps (elude.evaluation.diagnostics): planted cases with known answers, a streamed correlation
against numpy on the whole data, and evaluate's diagnostics of a real split against a brute-force computation."""
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import TensorDataset

from elude.evaluation import diagnostics as dg
from elude.method.layers import DisentangledLayer
from elude.method.surgery import bias_fractions, fractions_for_rho


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


def test_evaluate_writes_each_split_units_diagnostics_and_their_rank_correlations(rng):
    """A real split of a CNN's 1x1 conv (instances: positions): evaluate's tables and summary against a
    brute-force computation over every evaluation instance."""
    from elude.evaluation.scoring import evaluate

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 12, 1), nn.GELU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4)).eval()
    images, labels = torch.randn(30, 1, 6, 6), torch.randint(0, 4, (30,))
    fracs = [fractions_for_rho(np.abs(rng.normal(size=(k, 8))), 0.6) if k > 1 else np.ones((1, 8))
             for k in rng.integers(1, 4, 12)]
    fracs[0] = np.array([[1.0, 0, 0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0, 1, 1]])  # disjoint sub-units
    meta = {"units": [{"exclusive_fraction": dg.exclusive_fraction(f), "noise": 2, "top_k": 8} for f in fracs]}
    dl = DisentangledLayer.from_fractions(net[2], fracs, [bias_fractions(f) for f in fracs], meta)
    res = evaluate(net, "2", dl, TensorDataset(images, labels), ms_top_k=10, random_seed=0, batch_size=8)
    t, k = res["tables"], res["tables"]["k_per_unit"]
    assert t["diag_exclusive_fraction"][0] == 1.0 and t["diag_noise_share"][0] == 0.25
    with torch.no_grad():  # every position of every image is a valid instance of the conv layer
        q = net[1](net[0](images)).movedim(1, -1).reshape(-1, 8)
        subs = dl.subunits_of_instances(q).double().numpy()
    c = np.corrcoef(subs.T)
    for u in range(12):
        ids = dl.subunits_of(u)
        if k[u] < 2:
            assert all(np.isnan(t[f"diag_{name}"][u]) for name in (*dg.DIAGNOSTICS, *dg.GAINS))
            continue
        assert t["diag_activation_correlation"][u] == pytest.approx(
            np.mean([c[a, b] for a, b in itertools.combinations(ids, 2)]), abs=1e-6)
        assert t["diag_gain_parent_layer"][u] == pytest.approx(
            np.nanmean(t["subunits_ms_layer"][ids]) - t["units_ms_layer"][u])
    diag = res["summary"]["split_diagnostics"]
    assert diag["n_split_units"] == int((k > 1).sum()) == res["summary"]["n_split_units"]
    cell = diag["rank_correlation"]["gain_random_layer"]["activation_correlation"]
    m = (k > 1) & np.isfinite(t["diag_gain_random_layer"])
    assert cell["n"] == int(m.sum()) and cell["rho"] == pytest.approx(
        spearmanr(t["diag_activation_correlation"][m], t["diag_gain_random_layer"][m]).statistic)
