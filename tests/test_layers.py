"""The merged layer (eq. 8): lossless hot-swap into real models, persistence, sub-unit access."""
import numpy as np
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import TensorDataset

from elude.evaluation.metrics import output_differences
from elude.method.layers import DisentangledLayer, swap_in, swap_out
from elude.method.surgery import bias_fractions, fractions_for_rho
from elude.models.backbones import get_module


def random_split(layer: nn.Module, rng, max_k: int = 6) -> DisentangledLayer:
    w = layer.weight.reshape(layer.weight.shape[0], -1)
    fracs = []
    for _ in range(w.shape[0]):
        k = int(rng.integers(1, max_k + 1))
        fracs.append(fractions_for_rho(np.abs(rng.normal(size=(k, w.shape[1]))), float(rng.choice([0.3, 0.6, 0.9])))
                     if k > 1 else np.ones((1, w.shape[1])))
    return DisentangledLayer.from_fractions(layer, fracs, [bias_fractions(f) for f in fracs])


def tiny_vit(seed: int) -> nn.Module:
    """A random-init timm ViT (3 blocks, width 64, 32 px images, 10 classes) in eval mode."""
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                             depth=3, num_heads=4, num_classes=10).eval()


def relative_error(y0, y1) -> float:
    return output_differences(y0, y1)["max_rel_diff"]


@torch.no_grad()
def test_lossless_hot_swap_in_random_timm_vit(rng, tmp_path):
    model = tiny_vit(0)
    x = torch.randn(6, 3, 32, 32)
    y0 = model(x)
    path = "blocks.2.mlp.fc2"
    dl = random_split(get_module(model, path), rng)
    assert dl.n_subunits > 64
    original = swap_in(model, path, dl)
    y1 = model(x)
    assert relative_error(y0, y1) < 1e-5
    assert torch.equal(y0.argmax(-1), y1.argmax(-1))
    # sub-unit activations, summed per parent, are the original unit activations
    capture = {}
    original.register_forward_hook(lambda m, a, o: capture.__setitem__("in", a[0]))
    assert swap_out(model, path, original) is dl
    assert get_module(model, path) is original
    assert torch.equal(model(x), y0)  # swapping out restores the exact original
    s = dl.subunits(capture["in"])
    summed = torch.zeros(*s.shape[:-1], 64).index_add_(-1, dl.parent, s)
    assert torch.allclose(summed, original(capture["in"]), atol=1e-5)
    # save + load round trip gives the same layer
    dl.metadata = {"layer": path, "note": "test"}
    dl.save(tmp_path)
    loaded = DisentangledLayer.load(tmp_path)
    assert loaded.metadata["note"] == "test" and torch.equal(loaded.parent, dl.parent)
    swap_in(model, path, loaded)
    assert torch.equal(model(x), y1)


@torch.no_grad()
def test_lossless_1x1_conv_and_inside_a_cnn(rng):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5)).eval()
    x = torch.randn(4, 3, 9, 9)
    y0 = net(x)
    dl = random_split(net[2], rng)
    assert dl.kind == "conv1x1"
    swap_in(net, "2", dl)
    y1 = net(x)
    assert relative_error(y0, y1) < 1e-5
    dl.record = True
    net(x)
    assert dl.last_subunits.shape == (4, 9, 9, dl.n_subunits)


@torch.no_grad()
def test_steering_gain_scales_only_chosen_subunits(rng):
    torch.manual_seed(2)
    layer = nn.Linear(10, 3)
    dl = random_split(layer, rng, max_k=3)
    x = torch.randn(5, 10)
    subs = dl.subunits_of(1)
    dl.subunit_gain = torch.ones(dl.n_subunits)
    dl.subunit_gain[subs] = 0.0
    out = dl(x)
    s = dl.subunits(x)
    assert torch.allclose(out[:, 1], layer(x)[:, 1] - s[:, subs].sum(-1), atol=1e-5)
    assert torch.allclose(out[:, [0, 2]], layer(x)[:, [0, 2]], atol=1e-5)


def test_steering_at_the_nu_most_active_instances_only_in_both_modes(rng):
    from elude.method.layers import LazyDisentangledLayer

    torch.manual_seed(3)
    layer = nn.Linear(10, 4)
    dense = random_split(layer, rng, max_k=3)
    lazy = LazyDisentangledLayer.from_dense(dense, layer)
    x = torch.randn(2, 7, 10)  # 2 examples x 7 instances (tokens)
    sub = dense.subunits_of(2)[0]
    gain = torch.ones(dense.n_subunits)
    gain[sub] = -4.0
    s = dense.subunits(x)[..., sub]
    top = s.topk(2, dim=1).indices  # its 2 most active tokens per example
    expected = layer(x).detach().clone()
    for b in range(2):
        expected[b, top[b], 2] += (-4.0 - 1.0) * s[b, top[b]]
    for mode in (dense, lazy):
        mode.subunit_gain, mode.gain_instances = gain, 2
        assert torch.allclose(mode(x), expected, atol=1e-5)
        mode.gain_instances = None  # every instance
        assert torch.allclose(mode(x)[..., 2], layer(x)[..., 2] - 5.0 * s, atol=1e-5)


def test_rejects_non_contiguous_subunits():
    with pytest.raises(ValueError, match="contiguously"):
        DisentangledLayer(torch.zeros(3, 2), torch.zeros(3), torch.tensor([0, 1, 0]), 2)


def test_verify_and_evaluate_on_a_cnn_with_a_1x1_conv_target(rng):
    """Instances of a conv layer are spatial positions; verify/evaluate handle the swapped layer alike."""
    from elude.evaluation.scoring import evaluate, verify

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 12, 1), nn.GELU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4)).eval()
    images, labels = torch.randn(30, 1, 6, 6), torch.randint(0, 4, (30,))
    dl = random_split(net[2], rng)
    result = verify(net, "2", dl, TensorDataset(images), batch_size=8)
    assert result["max_rel_diff"] < 1e-5 and result["prediction_agreement"] == 1.0 and result["r2"] > 1 - 1e-9
    assert isinstance(net[2], nn.Conv2d)  # restored
    # probe instances: the conv's input at every position of other images, in two chunks (as a cache reads them)
    q = net[:2](torch.randn(5, 1, 6, 6)).permute(0, 2, 3, 1).reshape(-1, 8).detach()
    probe = type("Probe", (), {"iter_chunks": lambda self: iter([(0, q[:100].numpy()), (100, q[100:].numpy())])})()
    res = evaluate(net, "2", dl, TensorDataset(images, labels), ms_top_k=10, random_seed=0, batch_size=8, probe=probe)
    assert res["summary"]["n_units"] == 12 and res["summary"]["n_subunits"] == dl.n_subunits
    assert res["tables"]["subunits_ms_layer"].shape == (dl.n_subunits,)
    assert res["summary"]["accuracy"]["original"] == res["summary"]["accuracy"]["disentangled"]
    f = res["summary"]["features"]
    units = q @ net[2].weight[:, :, 0, 0].T + net[2].bias
    assert f["units"]["live_probe"] == int((units > 0).any(0).sum())
    assert f["subunits"]["live_probe"] == int((dl.subunits_of_instances(q) > 0).any(0).sum())
    assert f["subunits"]["n_features"] == dl.n_subunits and f["random"]["n_features"] == dl.n_subunits
    with torch.no_grad():  # L0 on the evaluation instances: firings per position
        acts = net[:3](images).permute(0, 2, 3, 1).reshape(-1, 12)
    assert f["units"]["l0_eval"] == pytest.approx(float((acts > 0).sum(1).float().mean()))


@torch.no_grad()
def test_lazy_mode_is_the_original_model_bit_for_bit_and_gives_the_dense_subunits_on_demand(rng, tmp_path):
    from elude.method.layers import LazyDisentangledLayer, disentangle

    model = tiny_vit(4)
    x = torch.randn(5, 3, 32, 32)
    y0 = model(x)
    path = "blocks.2.mlp.fc2"
    original = get_module(model, path)
    capture = {}
    original.register_forward_hook(lambda m, a, o: capture.__setitem__("in", a[0]))
    dense = random_split(original, rng)
    dense.save(tmp_path)
    n_params, keys = sum(p.numel() for p in model.parameters()), set(model.state_dict())
    lazy = disentangle(model, path, tmp_path)  # lazy is the default
    assert isinstance(lazy, LazyDisentangledLayer) and get_module(model, path) is lazy
    assert torch.equal(model(x), y0)  # bit-identical: it runs the original layer
    assert sum(p.numel() for p in model.parameters()) == n_params  # +0 parameters, +0 buffers
    assert {k.replace(f"{path}.original.", f"{path}.") for k in model.state_dict()} == keys
    assert lazy._last is None  # nothing was read from the file
    # an explicit call for some units: only their sub-units, equal to the dense layer's
    units = [3, 7, 60]
    ids = lazy.subunit_ids(units)
    assert ids.tolist() == [i for u in units for i in dense.subunits_of(u)]
    w_lazy, b_lazy = lazy._rows(units, torch.device("cpu"))
    assert torch.equal(w_lazy, dense.weight[ids]) and torch.equal(b_lazy, dense.bias[ids])  # only those rows read
    torch.testing.assert_close(lazy.subunits(capture["in"], units), dense.subunits(capture["in"])[..., ids],
                               rtol=1e-6, atol=1e-6)
    # recording some units keeps the outputs bit-identical
    lazy.record = [7, 3]
    assert torch.equal(model(x), y0)
    assert lazy.last_subunit_ids.tolist() == dense.subunits_of(7) + dense.subunits_of(3)
    torch.testing.assert_close(lazy.last_subunits, dense.subunits(capture["in"])[..., lazy.last_subunit_ids],
                               rtol=1e-6, atol=1e-6)
    lazy.record = []
    assert torch.equal(model(x), y0) and lazy.last_subunits.shape == (5, 17, 0)
    lazy.record = True
    model(x)
    assert lazy.last_subunits.shape == (5, 17, dense.n_subunits)
    # steering: the gained units come from their sub-units, every other unit stays the original's
    lazy.record = False
    gain = torch.ones(lazy.n_subunits)
    gain[dense.subunits_of(5)[:1]] = 3.0
    lazy.subunit_gain = dense.subunit_gain = gain
    q = capture["in"]
    steered, reference = lazy(q), dense(q)
    torch.testing.assert_close(steered[..., 5], reference[..., 5], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered[..., 5], original(q)[..., 5])
    others = [u for u in range(64) if u != 5]
    assert torch.equal(steered[..., others], original(q)[..., others])
    with pytest.raises(ValueError, match="pass the module the merge artifact was made from"):
        LazyDisentangledLayer.load(tmp_path, torch.nn.Linear(64, 64))


@torch.no_grad()
def test_lazy_mode_on_a_1x1_conv(rng):
    from elude.method.layers import LazyDisentangledLayer

    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5)).eval()
    x = torch.randn(4, 3, 9, 9)
    y0 = net(x)
    dense = random_split(net[2], rng)
    hidden = net[1](net[0](x))
    lazy = LazyDisentangledLayer.from_dense(dense, net[2])
    swap_in(net, "2", lazy)
    assert torch.equal(net(x), y0)
    lazy.record = [2]
    net(x)
    assert lazy.last_subunits.shape == (4, 9, 9, len(dense.subunits_of(2)))
    torch.testing.assert_close(lazy.last_subunits, dense.subunits(hidden)[..., dense.subunits_of(2)], rtol=1e-6, atol=1e-6)
    gain = torch.ones(dense.n_subunits)
    gain[dense.subunits_of(2)] = 0.0
    lazy.record, lazy.subunit_gain = False, gain
    out = lazy(hidden)
    assert torch.allclose(out[:, 2], torch.zeros_like(out[:, 2]), atol=1e-6)
    assert torch.equal(out[:, 3:], net[2].original(hidden)[:, 3:])


def test_both_merge_paths_sum_each_units_subunits_in_order():
    """The CPU path (index_add_) and the GPU path (slot by slot, run here on the CPU) are eq. 8, exactly the
    sequential per-unit sums, and agree with each other."""
    from elude.method.layers import _merge, merge_table

    torch.manual_seed(6)
    counts = torch.tensor([3, 1, 0, 5, 2])
    s = torch.randn(7, 4, int(counts.sum()))
    table = merge_table(counts)
    expected = torch.zeros(7, 4, 5)
    start = 0
    for u, k in enumerate(counts.tolist()):
        for c in range(k):
            expected[..., u] += s[..., start + c]
        start += k
    for slotwise in (False, True):
        assert torch.equal(_merge(s, table, slotwise), expected)


def test_steering_an_image_encoder_reports_the_output_change(rng):
    """Steering works on a model without class logits (an image encoder's embedding): no accuracy, but the
    largest output change, 0 with gains of 1."""
    from elude.evaluation.steering import steer

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                              depth=2, num_heads=4, num_classes=0).eval()
    path = "blocks.1.mlp.fc2"
    from elude.method.layers import LazyDisentangledLayer

    original = get_module(model, path)  # lazy, as the CLI loads it: gains of 1 run the original layer, bit-exact
    layer = LazyDisentangledLayer.from_dense(random_split(original, rng, max_k=3), original)
    data = TensorDataset(torch.randn(12, 3, 32, 32), torch.zeros(12, dtype=torch.int64))
    res = steer(model, path, layer, data, [], [0, 1, 2], gamma=-5.0, batch_size=5, accuracy="never")
    assert res["before"] == {} and res["after"] == {}  # a 64-wide embedding, not 10 classes' logits
    assert res["gains_one_max_change"] == 0.0 and res["max_output_change"] > 0.01
    assert get_module(model, path) is not layer  # swapped back out


@torch.no_grad()
def test_dense_layer_merges_block_by_block_as_it_would_all_at_once(rng):
    """The dense forward (sub-units a block of units at a time, never more than out_features of them) gives
    what projecting to every sub-unit and merging once gives, with and without steering gains, for a Linear
    and a 1x1 conv, to float rounding (BLAS may round a block's GEMM by its width: bitwise for a Linear on one
    Intel CPU, 3e-7 apart on an AMD EPYC); and the original layer's output to float rounding."""
    torch.manual_seed(7)
    for layer, x in ((nn.Linear(24, 10), torch.randn(5, 9, 24)), (nn.Conv2d(24, 10, 1), torch.randn(3, 24, 4, 5))):
        dense = random_split(layer, rng, max_k=9)
        assert len(dense._unit_blocks()) > 2  # EF ~5: several blocks

        def same(a, b):
            return float((a - b).abs().max()) < 1e-6

        all_at_once = dense.merge(dense.subunits(x))
        assert same(dense(x), all_at_once)
        assert relative_error(layer(x), dense(x)) < 1e-5
        dense.subunit_gain = torch.from_numpy(rng.uniform(0.0, 2.0, dense.n_subunits)).float()
        for nu in (None, 2):
            dense.gain_instances = nu
            assert same(dense(x), dense.merge(dense._gained(dense.subunits(x), dense.subunit_gain)))
        dense.record = True  # recording keeps every sub-unit: the all-at-once path, the same output
        dense.gain_instances, dense.subunit_gain = None, None
        assert torch.equal(dense(x), all_at_once) and dense.last_subunits.shape[-1] == dense.n_subunits
