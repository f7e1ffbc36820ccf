"""Edge cases: units that must stay unchanged, zero weights, silent instances, top-k clamping,
and the cache/top-k/MS-Score building blocks against direct computations."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from elude.evaluation.metrics import ms_score
from elude.method import clustering, contributions
from elude.method.layers import DisentangledLayer
from elude.method.surgery import DEFAULT_RHO_GRID, split_unit
from elude.method.topk import clamp_k, streaming_topk
from elude.models import cache
from elude.models.backbones import layer_weight_bias


def test_single_cluster_unit_is_unchanged(rng):
    reps = np.abs(rng.normal(size=(1, 12))).astype(np.float32)
    split = split_unit(reps, rng.normal(size=(50, 12)), 0.5, np.zeros(50, int), DEFAULT_RHO_GRID)
    assert split.fractions.shape == (1, 12) and (split.fractions == 1).all() and split.omega.tolist() == [1.0]
    assert split.rho is None


def test_all_noise_unit_is_unchanged(rng):
    # Uniform noise in 10 dimensions: hdbscan finds no cluster (all labels -1).
    c = contributions.normalise_rows(rng.random((200, 10)).astype(np.float32))
    labels, probs = clustering.hdbscan_labels(c, min_cluster_size=150, min_samples=None, method="eom", backend="hdbscan")
    assert (labels == -1).all()
    reps = clustering.representatives(c, labels, probs)
    assert reps.shape == (0, 10)
    split = split_unit(reps, c, 1.0, labels, DEFAULT_RHO_GRID)
    layer = nn.Linear(10, 1)
    dl = DisentangledLayer.from_fractions(layer, [split.fractions], [split.omega])
    assert torch.equal(dl.weight, layer.weight) and torch.equal(dl.bias, layer.bias)


def test_too_few_points_are_noise_not_an_error():
    labels, probs = clustering.hdbscan_labels(np.eye(3, dtype=np.float32), min_cluster_size=5, min_samples=None,
                                              method="leaf", backend="hdbscan")
    assert (labels == -1).all() and (probs == 0).all()


def test_all_zero_contribution_rows_do_not_give_nan():
    q = np.zeros((4, 6), np.float32)
    q[2] = 1.0
    c = contributions.normalise_rows(contributions.contributions(q, np.arange(6, dtype=np.float32)))
    assert np.isfinite(c).all()
    assert (c[[0, 1, 3]] == 0).all() and abs(np.linalg.norm(c[2]) - 1) < 1e-6


def test_zero_weight_unit_stays_exact(rng, tmp_path):
    """A unit whose weights are all zero: contributions are all zero, and the split is still lossless."""
    layer = nn.Linear(8, 2)
    with torch.no_grad():
        layer.weight[0] = 0.0
    q = rng.normal(size=(300, 8)).astype(np.float32)
    w, b = layer_weight_bias(layer)
    c = contributions.normalise_rows(contributions.contributions(q, w[0].numpy()))
    assert (c == 0).all()
    labels, probs = clustering.hdbscan_labels(c, min_cluster_size=20, min_samples=5, method="leaf", backend="hdbscan")
    split = split_unit(clustering.representatives(c, labels, probs), c, float(b[0]), labels, DEFAULT_RHO_GRID)
    dl = DisentangledLayer.from_fractions(layer, [split.fractions, np.ones((1, 8))], [split.omega, np.ones(1)])
    x = torch.from_numpy(q)
    assert torch.allclose(dl(x), layer(x), atol=1e-6)
    assert (dl.weight[dl.parent == 0] == 0).all()


def _write(tmp_path, rows: np.ndarray, chunk_rows: int):
    """Cache ``rows`` through an identity 'model' whose target layer reads them unchanged."""
    layer = nn.Linear(rows.shape[1], 3)
    model = nn.Sequential(nn.Identity(), layer)
    stats = cache.write_cache(model, layer, TensorDataset(torch.from_numpy(rows)), tmp_path, batch_size=7, dtype="float32",
                              chunk_rows=chunk_rows, compressor="lz4-1")
    return layer, stats


def test_cache_rows_equal_layer_inputs_and_topk_equals_brute_force(rng, tmp_path):
    rows = rng.normal(size=(53, 5)).astype(np.float32)
    layer, stats = _write(tmp_path, rows, chunk_rows=10)
    q, index = cache.open_cache(tmp_path)
    assert stats["n_instances"] == 53 and q.chunks == (10, 5)
    np.testing.assert_array_equal(q[:], rows)
    np.testing.assert_array_equal(index[:, 0], np.arange(53))
    picks = np.array([50, 3, 3, 17, 0])
    np.testing.assert_array_equal(cache.gather_rows(q, picks), rows[picks])
    w, b = layer_weight_bias(layer)
    idx, val = streaming_topk(cache.Cache([tmp_path]), w, b, k=9)
    ref_val, ref_idx = torch.topk(torch.from_numpy(rows) @ w.T + b, 9, dim=0)
    np.testing.assert_array_equal(idx, ref_idx.T.numpy())
    np.testing.assert_allclose(val, ref_val.T.numpy(), rtol=1e-6)


def test_topk_larger_than_instances_is_clamped_with_warning(rng, tmp_path):
    rows = rng.normal(size=(12, 4)).astype(np.float32)
    layer, _ = _write(tmp_path, rows, chunk_rows=5)
    q, _ = cache.open_cache(tmp_path)
    with pytest.warns(UserWarning, match="clamped to 12"):
        k = clamp_k(100, q.shape[0])
    w, b = layer_weight_bias(layer)
    idx, _ = streaming_topk(cache.Cache([tmp_path]), w, b, k)
    assert idx.shape == (3, 12) and all(sorted(r) == list(range(12)) for r in idx)


def test_nan_activation_names_the_instance(tmp_path):
    rows = np.ones((6, 3), np.float32)
    rows[4, 1] = np.nan
    with pytest.raises(FloatingPointError, match="image 4"):
        _write(tmp_path, rows, chunk_rows=4)


def test_ms_score_is_weighted_mean_offdiagonal_cosine(rng):
    e = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(2, 7, 5))).float(), dim=-1)
    w = torch.from_numpy(rng.random((2, 7))).float()
    for u in range(2):
        num = den = 0.0
        for i in range(7):
            for j in range(7):
                if i != j:
                    num += float(w[u, i] * w[u, j] * (e[u, i] @ e[u, j]))
                    den += float(w[u, i] * w[u, j])
        assert abs(ms_score(e, w)[u].item() - num / den) < 1e-5
    same = torch.nn.functional.normalize(torch.ones(1, 4, 3), dim=-1)
    assert abs(ms_score(same, torch.ones(1, 4)).item() - 1) < 1e-6


def test_seeded_token_dataset(tmp_path):
    """T random tokens per image (CLS eligible), drawn per image from the seed: the same seed gives the same
    tokens and rows (equal to the layer's inputs at those tokens), another seed other tokens."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    model = nn.Sequential(nn.Identity(), layer)
    images = torch.randn(30, 17, 5)  # 30 images x 17 tokens
    runs = {}
    for name, seed in (("a", 42), ("b", 42), ("c", 123)):
        folder = tmp_path / name
        folder.mkdir()
        stats = cache.write_cache(model, layer, TensorDataset(images), folder, batch_size=4, dtype="float32", chunk_rows=8,
                                  compressor="lz4-1", tokens_per_image=2, token_seed=seed)
        q, index = cache.open_cache(folder)
        runs[name] = (q[:], index[:])
        assert stats["tokens_per_image"] == 2 and stats["instances_per_image"] == 17 and q.shape == (60, 5)
    (qa, ia), (qb, ib), (qc, ic) = runs["a"], runs["b"], runs["c"]
    assert np.array_equal(qa, qb) and np.array_equal(ia, ib)
    assert not np.array_equal(ia[:, 1], ic[:, 1])
    np.testing.assert_array_equal(ia[:, 0], np.repeat(np.arange(30), 2))
    assert all(ia[2 * i, 1] < ia[2 * i + 1, 1] for i in range(30))  # two distinct tokens per image
    np.testing.assert_array_equal(qa, images[ia[:, 0], ia[:, 1]].numpy())
    assert (ia[:, 1] == 0).any()  # CLS (token 0) is eligible
    with pytest.raises(ValueError, match="tokens_per_image=18 exceeds the 17 instances"):
        cache.write_cache(model, layer, TensorDataset(images), tmp_path / "a", batch_size=4, dtype="float32", chunk_rows=8,
                          compressor="lz4-1", tokens_per_image=18)
