"""Backbone stage: a timm model by name, target-layer checks with clear errors, atomic artifacts."""
import json

import pytest
import torch

from elude.backbones import load_backbone
from elude.stages import Stage, backbone

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
    with pytest.raises(TypeError, match="Linear or 1x1"):
        run(tmp_path, "blocks.1.norm1")
