"""Backbone stage: a timm model by name, target-layer checks with clear errors, atomic artifacts."""
import json

import numpy as np
import pytest
import torch

from elude.models.backbones import load_backbone
from elude.pipeline.stages import backbone
from elude.pipeline.stages.job import Stage

TIMM = {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2,
                                                   "num_heads": 3, "num_classes": 7}, "weights": None}


def run(tmp_path, layer):
    out = tmp_path / "results/backbone/abc123def456"
    backbone(Stage("backbone", "abc123def456", {"kind": "timm", "layer": layer, "timm": TIMM}), str(out))
    return out


def test_timm_backbone_round_trip(tmp_path):
    out = run(tmp_path, "blocks.1.mlp.fc2")
    info = json.loads((out / "layer.json").read_text())
    assert info == {"path": "blocks.1.mlp.fc2", "type": "Linear", "n_units": 48, "n_upstream": 192}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["id"] == "abc123def456" and len(manifest["checksum"]) == 64
    a, b = load_backbone(out), load_backbone(out)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))


def test_unknown_layer_names_nearest(tmp_path):
    with pytest.raises(KeyError, match=r"blocks\.1\.mlp\.fc2"):
        run(tmp_path, "blocks.1.mlp.fc3")
    assert not any((tmp_path / "results/backbone").iterdir())  # nothing half-written is left


def test_non_linear_layer_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="nn.Linear, 1x1 nn.Conv2d .* or Hugging Face Conv1D"):
        run(tmp_path, "blocks.1.norm1")


def _cache_matches_hook(tmp_path, out, data=None, n_check=10):
    """The cache stage, run as 2 dataset shards, stores exactly the target layer's inputs captured
    directly with a forward hook, in image order, with their (image, instance) index."""
    from elude.models.cache import Cache
    from elude.models.data import iter_batches
    from elude.pipeline.stages import cache_shard
    from elude.pipeline.stages.job import dataset

    data = data or {"kind": "digits", "eval_fraction": 0.3, "split_seed": 0}
    params = {"data": data, "batch_size": 4, "dtype": "float32", "chunk_rows": 50, "compressor": "lz4-1",
              "device": "cpu", "tokens_per_image": None, "shards": 2}
    folders = [tmp_path / f"cache/shard-{s}" for s in range(2)]
    for s, folder in enumerate(folders):
        cache_shard(Stage("cache", "c", params), s, str(out), str(folder))
    c = Cache(folders)
    model = load_backbone(out)
    layer_path = json.loads((out / "layer.json").read_text())["path"]
    captured = []
    dict(model.named_modules())[layer_path].register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    ds = dataset(data, "probe", out)
    last = len(ds) - 1
    batch = next(iter_batches(ds, n_check, [*range(n_check - 1), last]))  # includes the second shard's last image
    with torch.no_grad():
        model(batch.inputs)
    direct = captured[0].reshape(n_check, -1, captured[0].shape[-1])
    t = direct.shape[1]
    assert c.n_rows == len(ds) * t
    rows = np.r_[0 : (n_check - 1) * t, last * t : (last + 1) * t]
    assert torch.allclose(torch.from_numpy(c.gather(rows)), direct.reshape(-1, direct.shape[-1]), atol=1e-6)
    np.testing.assert_array_equal(c.index(rows[-t:]), np.stack([np.full(t, last), np.arange(t)], 1))  # (image, token)


def test_factory_backbone(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import timm\n"
        "def tiny_vit(width):\n"
        "    return timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=8, patch_size=2,\n"
        "                             in_chans=1, num_classes=10, embed_dim=width, depth=1, num_heads=2)\n"
        "def not_a_model():\n"
        "    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "results/backbone/fac000000001"
    params = {"kind": "factory", "layer": "blocks.0.mlp.fc2", "factory": {"target": "my_models:tiny_vit",
                                                                         "kwargs": {"width": 16}}}
    backbone(Stage("backbone", "fac000000001", params), str(out))
    assert json.loads((out / "layer.json").read_text())["n_units"] == 16
    _cache_matches_hook(tmp_path, out)
    bad = {**params, "factory": {"target": "my_models:not_a_model", "kwargs": {}}}
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        backbone(Stage("backbone", "fac000000002", bad), str(tmp_path / "results/backbone/fac000000002"))
    missing = {**params, "factory": {"target": "no_such_module:f", "kwargs": {}}}
    with pytest.raises(ImportError, match="PYTHONPATH"):
        backbone(Stage("backbone", "fac000000003", missing), str(tmp_path / "results/backbone/fac000000003"))


def test_torch_hub_backbone_from_a_local_repository(tmp_path):
    """A torch.hub repository made here (hubconf.py), loaded as DINOv2 would be from a local clone."""
    repo = tmp_path / "hubrepo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(
        "dependencies = ['torch', 'timm']\n"
        "import timm\n"
        "import pathlib, torch\n"
        "def vit_s(pretrained=True, width=24):\n"
        "    m = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=8, patch_size=2,\n"
        "                          in_chans=1, num_classes=10, embed_dim=width, depth=2, num_heads=2)\n"
        "    if pretrained:  # stands in for a download: count the calls, set known weights\n"
        "        flag = pathlib.Path(__file__).with_name('pretrained_loads')\n"
        "        flag.write_text(str(int(flag.read_text()) + 1 if flag.exists() else 1))\n"
        "        torch.manual_seed(7)\n"
        "        for p in m.parameters():\n"
        "            torch.nn.init.normal_(p, std=0.05)\n"
        "    return m\n")
    out = tmp_path / "results/backbone/hub000000001"
    params = {"kind": "hub", "layer": "blocks.1.mlp.fc2",
              "hub": {"repo": str(repo), "entry": "vit_s", "kwargs": {"pretrained": True, "width": 24}}}
    backbone(Stage("backbone", "hub000000001", params), str(out))
    assert json.loads((out / "model.json").read_text())["entry"] == "vit_s"
    _cache_matches_hook(tmp_path, out)
    # the pretrained weights were fetched once, by the backbone stage; later stages load the artifact
    assert (repo / "pretrained_loads").read_text() == "1"
    torch.manual_seed(7)
    expected = torch.nn.init.normal_(torch.empty(1, 1, 24), std=0.05)  # the first parameter: cls_token
    assert torch.equal(load_backbone(out).cls_token, expected)
    with pytest.raises(FileNotFoundError, match="hubconf.py"):
        backbone(Stage("backbone", "hub000000002", {**params, "hub": {**params["hub"], "repo": str(tmp_path)}}),
                 str(tmp_path / "results/backbone/hub000000002"))


@pytest.mark.parametrize("layer", [torch.nn.Linear(6, 4), torch.nn.Conv2d(6, 4, 1, bias=False)])
def test_layer_weights_read_from_the_saved_file_equal_the_built_layer(tmp_path, layer):
    from safetensors.torch import save_file

    from elude.models.backbones import layer_weight_bias
    from elude.pipeline.stages.job import layer_weights

    net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Sequential(layer))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "layer.json").write_text(json.dumps({"path": "1.0"}))
    w, b, info = layer_weights(tmp_path)
    w0, b0 = layer_weight_bias(layer)
    assert torch.equal(w, w0) and torch.equal(b, b0) and w.shape == (4, 6) and info["path"] == "1.0"
