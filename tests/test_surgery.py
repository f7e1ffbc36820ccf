"""Surgery (eqs. 3-5): the margin rule against a brute-force reading of eq. 3, and the additive
partition of weights and bias through the merged layer, over random representatives and weights."""
from itertools import combinations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from elude.method.layers import DisentangledLayer
from elude.method.surgery import (
    DEFAULT_RHO_GRID,
    bias_fractions,
    fractions_for_rho,
    split_unit,
)


def brute_force_fractions(rep_abs: np.ndarray, rho: float) -> np.ndarray:
    """Eqs. 3-4 taken literally: enumerate every non-empty proper subset S of the K clusters."""
    k, d = rep_abs.shape
    frac = np.full((k, d), 1.0 / k)
    for j in range(d):
        winners = []
        for size in range(1, k):
            for s in combinations(range(k), size):
                outside = [c for c in range(k) if c not in s]
                if rho * min(rep_abs[c, j] for c in s) > max(rep_abs[c, j] for c in outside):
                    winners.append(s)
        if len(winners) == 1:
            frac[:, j] = 0.0
            frac[list(winners[0]), j] = 1.0 / len(winners[0])
    return frac


reps_strategy = st.integers(2, 5).flatmap(
    lambda k: st.integers(1, 12).flatmap(
        lambda d: arrays(np.float64, (k, d), elements=st.one_of(
            st.floats(-1, 1, allow_nan=False, width=32), st.sampled_from([0.0, 0.5, -0.5])))))


@settings(max_examples=200, deadline=None)
@given(reps=reps_strategy, rho=st.sampled_from(DEFAULT_RHO_GRID))
def test_margin_rule_matches_literal_eq3(reps, rho):
    np.testing.assert_array_equal(fractions_for_rho(np.abs(reps), rho), brute_force_fractions(np.abs(reps), rho))


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(1, 6), d=st.integers(1, 48), units=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
    rho=st.sampled_from(DEFAULT_RHO_GRID), zero_frac=st.floats(0, 1),
)
def test_subunits_partition_weights_and_bias(k, d, units, seed, rho, zero_frac):
    rng = np.random.default_rng(seed)
    layer = nn.Linear(d, units)
    with torch.no_grad():
        w = torch.from_numpy(rng.normal(size=(units, d)) * (rng.random((units, d)) > zero_frac)).float()
        layer.weight.copy_(w)
        layer.bias.copy_(torch.from_numpy(rng.normal(size=units)).float())
    fracs = []
    for _ in range(units):
        kk = int(rng.integers(1, k + 1))
        fracs.append(fractions_for_rho(np.abs(rng.normal(size=(kk, d))), rho) if kk > 1 else np.ones((1, d)))
    for f in fracs:
        kk = f.shape[0]
        np.testing.assert_allclose(f.sum(0), 1.0, rtol=0, atol=1e-12)
        # every fraction is 0, 1/|S| for some set size, or 1/K
        allowed = {0.0, 1.0 / kk} | {1.0 / m for m in range(1, kk)}
        assert all(any(abs(x - a) < 1e-12 for a in allowed) for x in np.unique(f))
        # within a column, an exclusive set's members share equally and the rest get 0
        for col in f.T:
            nz = col[col > 0]
            assert np.allclose(nz, nz[0]) and abs(nz[0] * len(nz) - 1) < 1e-12
    dl = DisentangledLayer.from_fractions(layer, fracs, [bias_fractions(f) for f in fracs])
    summed_w = torch.zeros(units, d).index_add_(0, dl.parent, dl.weight.data)
    summed_b = torch.zeros(units).index_add_(0, dl.parent, dl.bias.data)
    eps = np.finfo(np.float32).eps
    assert torch.allclose(summed_w, layer.weight, rtol=4 * eps, atol=4 * eps * layer.weight.abs().max().item())
    assert torch.allclose(summed_b, layer.bias, rtol=4 * eps, atol=1e-6)
    # zero weights stay zero in every sub-unit
    assert (dl.weight.data[(layer.weight.data == 0)[dl.parent]] == 0).all()


def test_bias_fractions_sum_to_one_even_with_zero_weights(rng):
    frac = fractions_for_rho(np.abs(rng.normal(size=(4, 30))), 0.5)
    omega = bias_fractions(frac)
    assert abs(omega.sum() - 1) < 1e-12 and (omega >= 0).all()


def test_rho_choice_prefers_selective_split_and_breaks_ties_to_smallest_rho(rng):
    # Two clusters driven by disjoint upstream halves: any exclusive assignment beats sharing.
    d = 8
    reps = np.zeros((2, d))
    reps[0, :4], reps[1, 4:] = 1.0, 1.0
    reps += 0.01
    contrib = np.zeros((40, d))
    contrib[:20, :4] = rng.random((20, 4)) + 1
    contrib[20:, 4:] = rng.random((20, 4)) + 1
    labels = np.repeat([0, 1], 20)
    split = split_unit(reps.astype(np.float32), contrib, 0.3, labels, DEFAULT_RHO_GRID)
    assert split.rho == 0.05  # every rho gives the same exclusive split: the smallest wins the tie
    np.testing.assert_array_equal(split.fractions[0, :4], 1.0)
    np.testing.assert_array_equal(split.fractions[1, :4], 0.0)
    assert split.scores[0] > 0
    # A fully shared split scores exactly zero.
    from elude.method.surgery import selectivity

    assert abs(selectivity(np.full((2, d), 0.5), contrib, 0.3, labels)) < 1e-12
