"""surgery.merge_siblings (issue 26, point 3): sibling sub-units summed into one keep the layer exactly the
original; the criterion merges planted duplicates and leaves distinct clusters; bad settings name their key;
off by default, the paper's ids are untouched and turning it on changes surgery's id and everything below."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from elude.method.layers import DisentangledLayer
from elude.method.surgery import (
    DEFAULT_RHO_GRID,
    bias_fractions,
    connected_groups,
    fractions_for_rho,
    merge_siblings,
    merge_similar_siblings,
    split_unit,
)
from elude.pipeline.config import ConfigError, merge_config, validate_config
from elude.pipeline.input_keys import ablation_runs
from elude.pipeline.plan import ablation_artifacts, artifact_ids, surgery_params

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "config.yaml").read_text())
ON = {"surgery": {"merge_siblings": {"correlation": 0.9}}}


# --- lossless: the merged layer is the original layer ---------------------------------------------------
def test_merged_siblings_sum_to_the_parent_and_the_layer_is_the_original(rng):
    d, units = 24, 6
    layer = nn.Linear(d, units)
    fracs, omegas, merged_k = [], [], []
    for u in range(units):
        k = int(rng.integers(1, 6))
        frac = fractions_for_rho(np.abs(rng.normal(size=(k, d))), float(rng.choice(DEFAULT_RHO_GRID))) if k > 1 \
            else np.ones((1, d))
        similar = rng.random((k, k)) > 0.6
        groups = connected_groups(similar | similar.T)  # an arbitrary merge
        f, o = merge_siblings(frac, bias_fractions(frac), groups)
        np.testing.assert_allclose(f.sum(0), 1.0, rtol=0, atol=1e-12)
        np.testing.assert_allclose(o, bias_fractions(f), rtol=0, atol=1e-12)  # still the paper's bias split
        fracs.append(f), omegas.append(o), merged_k.append(len(groups))
    dl = DisentangledLayer.from_fractions(layer, fracs, omegas)
    assert dl.n_subunits == sum(merged_k)
    eps = np.finfo(np.float32).eps
    summed_w = torch.zeros(units, d).index_add_(0, dl.parent, dl.weight.data)
    summed_b = torch.zeros(units).index_add_(0, dl.parent, dl.bias.data)
    assert torch.allclose(summed_w, layer.weight, rtol=4 * eps, atol=4 * eps * layer.weight.abs().max().item())
    assert torch.allclose(summed_b, layer.bias, rtol=4 * eps, atol=1e-6)
    x = torch.randn(5, 7, d)
    with torch.no_grad():
        assert torch.allclose(dl(x), layer(x), atol=1e-5)


# --- the criterion ---------------------------------------------------------------------------------------
def planted(rng, duplicate: bool):
    """A unit whose top-k holds concept A (upstream dims 0-3) and concept B (dims 4-7), B's instances split
    over two clusters with one representative (duplicate) or B alone (distinct clusters only)."""
    d, n = 12, 30
    blocks = [slice(0, 4), slice(4, 8)] + ([slice(4, 8)] if duplicate else [])
    contrib = np.zeros((n * len(blocks), d))
    reps = np.full((len(blocks), d), 0.01)
    for c, b in enumerate(blocks):
        contrib[c * n:(c + 1) * n, b] = rng.random((n, 4)) + 1
        reps[c, b] = 1.0
    contrib += 0.05 * rng.random(contrib.shape)  # every instance touches every dimension a little
    labels = np.repeat(np.arange(len(blocks)), n)
    split = split_unit(reps.astype(np.float32), contrib, 0.3, labels, DEFAULT_RHO_GRID)
    return split, contrib, labels


def test_duplicate_clusters_are_merged_and_distinct_ones_are_not(rng):
    split, contrib, labels = planted(rng, duplicate=True)
    assert len(split.omega) == 3
    for criteria in ({"correlation": 0.99}, {"overlap": 0.9}, {"correlation": 1.0, "overlap": 1.0}):
        m = merge_similar_siblings(split.fractions, contrib, 0.3, labels, **criteria)
        assert m.groups == [[0], [1, 2]], criteria
        assert m.merged_into().tolist() == [0, 1, 1]
        np.testing.assert_array_equal(m.fractions[1], split.fractions[1] + split.fractions[2])
        assert m.correlation[1, 2] == pytest.approx(1.0) and m.overlap[1, 2] == 1.0
    assert m.correlation[0, 1] < 0 and m.overlap[0, 1] == 0  # A and B: anti-correlated, disjoint top sets
    nothing = merge_similar_siblings(split.fractions, contrib, 0.3, labels)  # no criterion given: off
    assert nothing.groups == [[0], [1], [2]] and np.array_equal(nothing.fractions, split.fractions)

    split, contrib, labels = planted(rng, duplicate=False)
    for threshold in (0.999, 0.5):
        m = merge_similar_siblings(split.fractions, contrib, 0.3, labels, correlation=threshold, overlap=threshold)
        assert m.groups == [[0], [1]] and np.array_equal(m.fractions, split.fractions)


def test_similar_pairs_merge_by_connected_components():
    chain = np.zeros((4, 4), bool)
    chain[0, 2] = chain[2, 0] = chain[2, 3] = chain[3, 2] = True  # 0 ~ 2 ~ 3: one sub-unit, 1 alone
    assert connected_groups(chain) == [[0, 2, 3], [1]]
    assert connected_groups(np.eye(3, dtype=bool)) == [[0], [1], [2]]


# --- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ({"surgery": {"merge_siblings": {"correlation": 0}}},
     "surgery.merge_siblings.correlation: 0 is out of range; allowed: > 0"),
    ({"surgery": {"merge_siblings": {"overlap": 1.5}}},
     "surgery.merge_siblings.overlap: 1.5 is out of range; allowed: <= 1"),
    ({"surgery": {"merge_siblings": {"correlation": "high"}}},
     "surgery.merge_siblings.correlation: 'high' has the wrong type"),
    ({"surgery": {"merge_siblings": {"pearson": 0.9}}},
     "surgery.merge_siblings: unknown key(s) pearson; allowed keys: correlation, overlap"),
    ({"ablations": {"variants": [{"name": "m", "surgery": {"merge_siblings": {"correlation": 2}}}]}},
     "ablations.variants[0] (m): surgery: merge_siblings.correlation: 2 is out of range; allowed: <= 1"),
    ({"ablations": {"variants": [{"name": "m", "surgery": {"merge_siblings": {"correlation": None}}}]}},
     "ablations.variants[0] (m): changes nothing in the cluster or surgery section"),
    ({"ablations": {"variants": [{"name": "m"}]}}, "ablations.variants[0] (m): changes nothing"),
])
def test_bad_merge_settings_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        validate_config(merge_config(DEMO, override))
    assert message in str(err.value)


# --- ids ---------------------------------------------------------------------------------------------------
def test_off_by_default_keeps_the_papers_ids_and_on_changes_surgery_and_everything_below():
    base = validate_config(DEMO)
    assert base["surgery"]["merge_siblings"] == {"correlation": None, "overlap": None}
    assert surgery_params(base["surgery"]) == {"rho_grid": base["surgery"]["rho_grid"]}
    off = artifact_ids(base)
    on = artifact_ids(validate_config(merge_config(DEMO, ON)))
    assert on["surgery"]["params"]["merge_siblings"] == {"correlation": 0.9, "overlap": None}
    for stage in ("backbone", "cache", "topk", "cluster"):
        assert on[stage]["id"] == off[stage]["id"]
    for stage in ("surgery", "merge", "verify", "evaluate", "report"):
        assert on[stage]["id"] != off[stage]["id"]


def test_a_surgery_variant_shares_the_base_clustering_and_is_verified():
    cfg = validate_config(merge_config(DEMO, {"ablations": {"variants": [
        *DEMO["ablations"]["variants"], {"name": "merge-r0.9", **ON}]}}))
    arts = ablation_artifacts(cfg)
    (table,) = [a for a in arts if a["stage"] == "ablation"]
    evaluations, verifications = ablation_runs(table["inputs"]), ablation_runs(table["inputs"], "verify")
    assert sorted(evaluations) == sorted(["base", "merge-r0.9", *(v["name"] for v in DEMO["ablations"]["variants"])])
    assert list(verifications) == ["merge-r0.9"]  # only the variant that changes the surgery
    base = artifact_ids(cfg)
    (verify_id,) = verifications["merge-r0.9"].values()
    (verify,) = [a for a in arts if a["id"] == verify_id]
    (merge,) = [a for a in arts if a["id"] == verify["inputs"]["merge"]]
    (surgery,) = [a for a in arts if a["id"] == merge["inputs"]["surgery"]]
    assert surgery["inputs"] == {"cluster": base["cluster"]["id"]}  # the base run's clustering, by id
    assert surgery["params"]["merge_siblings"]["correlation"] == 0.9
