"""Loader kinds with small random-init models and data made here: the cached instances equal the target
layer's inputs captured with a forward hook on the natively preprocessed inputs; a Hugging Face vision
tower and a text transformer (padding masked out) go through verify and evaluate losslessly."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_backbones import _cache_matches_hook
from torch import nn

from elude.evaluation.scoring import evaluate, random_control, verify
from elude.models.backbones import get_module, load_backbone
from elude.models.cache import Cache
from elude.models.data import image_transform, iter_batches, read_image
from elude.pipeline.stages import backbone, cache_shard
from elude.pipeline.stages.job import Stage, dataset


def make_images(root, sizes=((20, 24), (16, 16), (31, 18)), per_class=4):
    """RGB images of assorted sizes in class folders, and a file list of the same files."""
    rng = np.random.default_rng(0)
    lines = []
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            path = root / cls / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
            lines.append(f"{cls}/{i}.png {int(cls == 'dog')}")
    (root / "list.txt").write_text("# path label\n" + "\n".join(lines) + "\n")
    return root


def test_timm_model_without_weights_on_an_imagefolder(tmp_path):
    root = make_images(tmp_path / "imgs")
    out = tmp_path / "results/backbone/timm00000001"
    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 2, "num_heads": 2, "num_classes": 2}
    backbone(Stage("backbone", "timm00000001", {"kind": "timm", "layer": "blocks.1.mlp.fc2", "preprocess": None,
                                                "timm": {"name": "vit_tiny_patch16_224", "kwargs": kwargs,
                                                         "weights": None}}), str(out))
    pre = json.loads((out / "preprocess.json").read_text())
    # timm's data config of the architecture, at the size the model was built for
    assert pre == {"size": 16, "crop_pct": 0.9, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                   "interpolation": "bicubic", "channels": 3}
    data = {"kind": "imagefolder", "probe_dir": str(root), "eval_dir": str(root), "on_bad_image": "fail"}
    _cache_matches_hook(tmp_path, out, data, n_check=3)
    # the transform really is resize(16 / 0.9 = 17) + centre crop 16 + normalise
    x = image_transform(pre)(read_image(root / "cat/2.png", 3))
    assert x.shape == (3, 16, 16) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0


TINY_VIT = {"img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 2, "num_heads": 2, "num_classes": 2}


def test_timm_weights_in_the_formats_people_have(tmp_path):
    """backbone.timm.weights as researchers have them: safetensors, a bare state dict, and timm's training
    checkpoint (state_dict and state_dict_ema wrappers with DataParallel's "module." prefix, the training
    args pickled as an argparse.Namespace), read with weights_only=True; the EMA weights are the ones loaded
    (timm's rule) unless checkpoint_key says state_dict. A pickle holding anything else is refused with the
    key to set, and loads once trust_pickle says so; weights of another architecture are named as such."""
    import argparse
    import pathlib

    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    trained, ema = (timm.create_model("vit_tiny_patch16_224", **TINY_VIT).state_dict() for _ in range(2))
    files = {"bare.pth": trained, "timm-checkpoint.pth.tar": {
        "epoch": 299, "arch": "vit_tiny_patch16_224", "args": argparse.Namespace(lr=1e-3, model="vit_tiny_patch16_224"),
        "state_dict": {f"module.{k}": v for k, v in trained.items()}, "state_dict_ema": ema, "metric": 81.2}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file({k: v.contiguous() for k, v in trained.items()}, str(tmp_path / "model.safetensors"))
    torch.save({"state_dict": trained, "saved_from": pathlib.PurePosixPath("/home/me/run")}, tmp_path / "odd.pth")

    def load(weights: str, runtime: dict | None = None, **timm_keys) -> dict:
        out = tmp_path / "results/backbone" / f"{abs(hash((weights, str(timm_keys)))) % 10**12:012d}"
        backbone(Stage("backbone", out.name, {"kind": "timm", "layer": "blocks.1.mlp.fc2", "preprocess": None,
                                              "timm": {"name": "vit_tiny_patch16_224", "kwargs": TINY_VIT,
                                                       "weights": str(tmp_path / weights), **timm_keys}},
                       runtime=runtime or {}), str(out))
        return load_backbone(out).state_dict()

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert same(load("model.safetensors"), trained) and same(load("bare.pth"), trained)
    assert same(load("timm-checkpoint.pth.tar"), ema) and not same(ema, trained)
    assert same(load("timm-checkpoint.pth.tar", checkpoint_key="state_dict"), trained)
    with pytest.raises(ValueError, match=r"backbone.timm.weights: .*odd.pth holds objects that a safe load refuses"
                                         r".*backbone.timm.trust_pickle: true"):
        load("odd.pth")
    assert same(load("odd.pth", runtime={"trust_pickle": True}), trained)
    other = timm.create_model("vit_tiny_patch16_224", **{**TINY_VIT, "num_classes": 5}).state_dict()
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other.pth does not fit timm model vit_tiny_patch16_224 .*num_classes"):
        load("other.pth")


def test_a_timm_spec_with_pretrained_true_is_rebuilt_without_weights():
    """The paper's timm configs say kwargs {pretrained: true} (weights from the HF cache in the backbone job);
    every later job rebuilds the architecture from the saved spec with pretrained switched off, and the
    backbone job itself passes the flag through to timm (it used to raise "multiple values for 'pretrained'")."""
    from elude.models.backbones import build_from_spec

    spec = {"kind": "timm", "name": "vit_tiny_patch16_224", "kwargs": {**TINY_VIT, "pretrained": True}}
    model = build_from_spec(spec)  # rebuild: pretrained off, nothing looked up
    assert isinstance(model.blocks[1].mlp.fc2, nn.Linear) and model.blocks[1].mlp.fc2.out_features == 24


def tiny_siglip(folder):
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = SiglipConfig(text_config={**small, "vocab_size": 50},
                          vision_config={**small, "image_size": 16, "patch_size": 4})
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder


def test_hugging_face_vision_tower_from_a_local_folder(tmp_path):
    """SigLIP-style: AutoModel from a folder written by save_pretrained, the vision tower as submodule,
    preprocessing from the saved image processor, data from a file list; the tower's output is not a
    classifier's, so verify compares every output tensor and evaluate reports no accuracy."""
    model_dir = tiny_siglip(tmp_path / "siglip")
    root = make_images(tmp_path / "imgs")
    out = tmp_path / "results/backbone/hf0000000001"
    params = {"kind": "hf", "layer": "encoder.layers.1.mlp.fc2", "preprocess": None,
              "hf": {"model": str(model_dir), "class": "AutoModel", "submodule": "vision_model", "kwargs": {}}}
    backbone(Stage("backbone", "hf0000000001", params), str(out))
    assert json.loads((out / "model.json").read_text())["module"].endswith(":SiglipVisionModel")
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["size"] == 16 and pre["crop_pct"] == 1.0 and pre["mean"] == [0.5] * 3 and pre["resize"] == "squash"
    data = {"kind": "filelist", "probe_list": str(root / "list.txt"), "eval_list": str(root / "list.txt"),
            "on_bad_image": "fail"}
    _cache_matches_hook(tmp_path, out, data, n_check=3)

    model = load_backbone(out)
    layer = get_module(model, params["layer"])
    dl = random_control(layer, torch.arange(32).repeat_interleave(2), seed=1)  # 2 sub-units per unit
    ds = dataset(data, "eval", out)
    res = verify(model, params["layer"], dl, ds, batch_size=3)
    assert res["max_rel_diff"] < 1e-5 and res["prediction_agreement"] is None and res["r2"] > 1 - 1e-9
    ev = evaluate(model, params["layer"], dl, ds, ms_top_k=4, random_seed=0, batch_size=3)
    assert ev["summary"]["accuracy"] == {"original": None, "disentangled": None}
    assert ev["summary"]["pooled_space"] == "pooler output"
    assert np.isfinite(ev["tables"]["subunits_ms_layer"]).any()


# --- a text transformer from a factory, with padding masked out by the dataset ------------------------
class TinyTextModel(nn.Module):
    def __init__(self, vocab=30, width=16, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, classes)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        h = h + self.mlp(h)
        m = attention_mask[..., None].float()
        return self.head((h * m).sum(1) / m.sum(1))


def text_model():
    torch.manual_seed(0)
    return TinyTextModel()


class PaddedTexts(torch.utils.data.Dataset):
    """Token sequences of varying length padded to 9; 'valid' marks the real tokens."""

    def __init__(self, split, n=40):
        rng = np.random.default_rng(0 if split == "probe" else 1)
        self.lengths = rng.integers(3, 10, n)
        self.ids = [np.pad(rng.integers(1, 30, k), (0, 9 - k)) for k in self.lengths]
        self.labels = rng.integers(0, 3, n)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        mask = torch.arange(9) < int(self.lengths[i])
        return {"input": {"input_ids": torch.tensor(self.ids[i]), "attention_mask": mask.long()},
                "label": int(self.labels[i]), "valid": mask}


def padded_texts(split):
    return PaddedTexts(split)


@pytest.fixture
def text_factory(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "text_factory.py").write_text("from test_loaders import text_model, padded_texts\n")
    out = tmp_path / "results/backbone/txt000000001"
    backbone(Stage("backbone", "txt000000001", {"kind": "factory", "layer": "mlp.2", "preprocess": None,
                                                "factory": {"target": "text_factory:text_model", "kwargs": {}}}), str(out))
    return out, {"kind": "factory", "factory": {"target": "text_factory:padded_texts", "kwargs": {}}}


def test_text_factory_padding_never_enters_cache_or_metrics(tmp_path, text_factory):
    out, data = text_factory
    assert json.loads((out / "preprocess.json").read_text()) is None  # no images, no preprocessing
    params = {"data": data, "batch_size": 8, "dtype": "float32", "chunk_rows": 16, "compressor": "none",
              "device": "cpu", "tokens_per_image": None, "shards": 2}
    for s in range(2):
        cache_shard(Stage("cache", "c", params), s, str(out), str(tmp_path / f"c{s}"))
    c = Cache([tmp_path / "c0", tmp_path / "c1"])
    ds = PaddedTexts("probe")
    assert c.n_rows == int(ds.lengths.sum())  # exactly the real tokens
    index = c.index(np.arange(c.n_rows))
    assert (index[:, 1] < ds.lengths[index[:, 0]]).all()
    # rows equal the layer input at those tokens
    model = load_backbone(out)
    seen = []
    model.mlp[2].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    batch = next(iter_batches(dataset(data, "probe", out), len(ds)))
    with torch.no_grad():
        model(**batch.inputs)
    np.testing.assert_allclose(c.gather(np.arange(c.n_rows)), seen[0][index[:, 0], index[:, 1]].numpy(), atol=1e-6)

    # seeded token draws only pick valid tokens
    for s in range(2):
        cache_shard(Stage("cache", "t", {**params, "tokens_per_image": 2, "token_seed": 7}), s, str(out),
                    str(tmp_path / f"t{s}"))
    t_index = Cache([tmp_path / "t0", tmp_path / "t1"]).index(np.arange(2 * len(ds)))
    assert (t_index[:, 1] < ds.lengths[t_index[:, 0]]).all()

    # verify and evaluate with a random split: lossless, and top images sit at real tokens only
    dl = random_control(model.mlp[2], torch.arange(16).repeat_interleave(3), seed=0)
    eval_ds = dataset(data, "eval", out)
    res = verify(model, "mlp.2", dl, eval_ds, batch_size=7)
    assert res["max_rel_diff"] < 1e-5 and res["prediction_agreement"] == 1.0
    ev = evaluate(model, "mlp.2", dl, eval_ds, ms_top_k=5, random_seed=0, batch_size=7)
    assert ev["summary"]["accuracy"]["original"] == ev["summary"]["accuracy"]["disentangled"] is not None
    assert ev["summary"]["pooled_space"] == "mean of layer output over instances"


def test_decoding_in_worker_processes_gives_the_same_batches(tmp_path):
    """compute.workers > 0 decodes image files in DataLoader processes: same batches, same order, and an
    unreadable file (on_bad_image: skip) marked in its batch either way."""
    from elude.models.data import open_dataset

    root = make_images(tmp_path / "imgs")
    (root / "dog" / "9.png").write_bytes(b"not a png")
    pre = {"size": 16, "crop_pct": 0.875, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic",
           "channels": 3}
    ds = open_dataset({"kind": "imagefolder", "probe_dir": str(root), "on_bad_image": "skip"}, "probe", pre)
    serial, parallel = (list(iter_batches(ds, 3, workers=w)) for w in (0, 2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert torch.equal(a.index, b.index) and torch.equal(a.inputs, b.inputs) and a.bad == b.bad
    assert [list(b.bad.values()) for b in serial][-1] == [str(root / "dog" / "9.png")]
