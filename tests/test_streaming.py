"""Streaming pieces equal their one-shot definitions: partial top-k per dataset shard + merge equals one
pass over all rows (ties included); the streamed MS-Score equals a literal reading of Section B.2."""
import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from elude.evaluation.metrics import ms_score
from elude.evaluation.top_images import TopImages
from elude.method.topk import merge_topk, streaming_topk
from elude.models import cache
from elude.models.backbones import layer_weight_bias


def test_sharded_topk_merge_equals_single_pass_with_ties(rng, tmp_path):
    rows = rng.integers(-3, 4, size=(97, 6)).astype(np.float32)  # small integers: many exact ties
    layer = nn.Linear(6, 5)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.integers(-2, 3, size=(5, 6)).astype(np.float32)))
        layer.bias.zero_()
    model = nn.Sequential(nn.Identity(), layer)
    kw = dict(batch_size=6, dtype="float32", chunk_rows=8, compressor="lz4-1")
    whole = tmp_path / "whole"
    whole.mkdir()
    cache.write_cache(model, layer, TensorDataset(torch.from_numpy(rows)), whole, **kw)
    shards = []
    for s in range(3):
        shards.append(tmp_path / f"s{s}")
        shards[-1].mkdir()
        cache.write_cache(model, layer, TensorDataset(torch.from_numpy(rows)), shards[-1],
                          images=cache.shard_range(97, 3, s), **kw)
    w, b = layer_weight_bias(layer)
    one = streaming_topk(cache.Cache([whole]), w, b, 20)
    # merging after every k columns, in blocks of 2 units, changes nothing
    many_merges = streaming_topk(cache.Cache([whole]), w, b, 20, buffer_rows=1, unit_block=2)
    np.testing.assert_array_equal(many_merges[0], one[0])
    ref_val = np.sort(rows @ w.numpy().T, axis=0)[::-1][:20].T  # brute force: the 20 largest values per unit
    np.testing.assert_array_equal(one[1], ref_val)
    sharded = cache.Cache(shards)
    parts = [streaming_topk(cache.Cache([d]), w, b, 20) for d in shards]
    merged = merge_topk([(i + off, v) for (i, v), off in zip(parts, sharded.offsets)], 20)
    np.testing.assert_array_equal(merged[0], one[0])
    np.testing.assert_array_equal(merged[1], one[1])
    np.testing.assert_array_equal(sharded.gather(merged[0][0]), rows[one[0][0]])
    np.testing.assert_array_equal(sharded.index(np.arange(97))[:, 0], np.arange(97))  # global image ids


def brute_force_ms(acts, valid, layer_emb, pooled_emb, k, weight_range="instances"):
    """Section B.2 read literally, per unit: rank images by max activation over valid instances, take the
    top k, weight by min-max normalised activation (the range over every valid instance, or over the images'
    max activations), embed at the argmax instance / as the image."""
    n_img, _, n_units = acts.shape
    out = {"layer": [], "pooled": []}
    for u in range(n_units):
        a = np.where(valid, acts[:, :, u], -np.inf)
        img_max, arg = a.max(1), a.argmax(1)
        lo = acts[:, :, u][valid].min() if weight_range == "instances" else img_max[valid.any(1)].min()
        hi = acts[:, :, u][valid].max()
        top = np.argsort(-img_max, kind="stable")[:k]
        w = (img_max[top] - lo) / (hi - lo)
        for space, e in (("layer", layer_emb[top, arg[top]]), ("pooled", pooled_emb[top])):
            e = e / np.linalg.norm(e, axis=1, keepdims=True)
            sims = e @ e.T
            ww = np.outer(w, w)
            np.fill_diagonal(ww, 0)
            out[space].append((ww * sims).sum() / ww.sum() if hi > 0 else np.nan)
    return {s: np.array(v) for s, v in out.items()}


def test_streamed_ms_score_equals_literal_reading(rng):
    acts = torch.from_numpy(rng.normal(size=(40, 6, 7)).astype(np.float32))
    valid = torch.from_numpy(rng.random((40, 6)) > 0.3)
    valid[:, 0] = True
    layer_emb = torch.from_numpy(rng.normal(size=(40, 6, 5)).astype(np.float32))
    pooled = torch.from_numpy(rng.normal(size=(40, 5)).astype(np.float32))
    valid[3] = False  # an image with no valid instance takes no part in either range
    got = {}
    for reading in ("instances", "images"):
        top = TopImages(7, 9, reading)
        for start in range(0, 40, 6):  # batches of 6 images
            sl = slice(start, start + 6)
            top.update(acts[sl], valid[sl], torch.arange(40)[sl])
        got[reading] = top.scores(lambda img, inst: layer_emb[img, inst], pooled)
        ref = brute_force_ms(acts.numpy(), valid.numpy(), layer_emb.numpy(), pooled.numpy(), 9, reading)
        np.testing.assert_allclose(got[reading]["layer"], ref["layer"], rtol=1e-5)
        np.testing.assert_allclose(got[reading]["pooled"], ref["pooled"], rtol=1e-5)
    # signed activations: the instances' minimum lies below every image's max, so the two readings differ
    assert not np.allclose(got["instances"]["layer"], got["images"]["layer"])
    assert ms_score(torch.nn.functional.normalize(torch.ones(1, 3, 2), dim=-1), torch.ones(1, 3)).item() > 0.999
