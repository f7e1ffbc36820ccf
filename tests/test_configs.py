"""The paper configurations under configs/: one file per row of the paper's Table 9 (plus marked examples).

Each file is a ``snakemake --configfile``, which stands on its own over the schema's defaults (never the
demo's config.yaml); here it is resolved the same way (:func:`elude.pipeline.config.resolve_config`) and
validated against the schema, its Table 9 settings are checked, and its target layer is looked up in the
architecture (built without weights: nothing is downloaded) to be the expected nn.Linear.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from elude.pipeline.config import resolve_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# Table 9 (paper Section E.6), one entry per row: config file -> (row as printed, paper's 1-indexed layer,
# expected module path, top-k, min_cluster_size, effective EF as printed, (fc2 in_features, out_features)).
# Module paths follow Section E.6's mapping: index = layer_1idx - 1.
TABLE9 = {
    "augreg-vit-b16-l12": ("AugReg ViT-B/16 | 12 | 100k | default", 12, "blocks.11.mlp.fc2",
                           100_000, 1000, "7.49", (3072, 768)),
    "dinov2-b14-l12": ("DINOv2-B/14 | 12 | 400k | default", 12, "backbone.blocks.11.mlp.fc2",
                       400_000, 1000, "8", (3072, 768)),
    "dinov2-b14-l10": ("DINOv2-B/14 | 10 | 400k | default", 10, "backbone.blocks.9.mlp.fc2",
                       400_000, 1000, "8.01", (3072, 768)),
    "dinov2-b14-l11": ("DINOv2-B/14 | 11 | 200k | default", 11, "backbone.blocks.10.mlp.fc2",
                       200_000, 1000, "5.91", (3072, 768)),
    "dinov2-s14-l12": ("DINOv2-S/14 | 12 | 400k | default", 12, "backbone.blocks.11.mlp.fc2",
                       400_000, 1000, "8.1", (1536, 384)),
    "dinov2-l14-l23": ("DINOv2-L/14 | 23 | 400k | min_cluster_size = 500", 23, "backbone.blocks.22.mlp.fc2",
                       400_000, 500, "7.90", (4096, 1024)),
    "siglip2-b16-l12": ("SigLIP2-B/16 | 12 | 200k | default", 12, "encoder.layers.11.mlp.fc2",
                        200_000, 1000, "7.51", (3072, 768)),
    "convnextv2-b-stage4": ("ConvNeXtV2-B | last linear layer of the fourth stage | 500k | default", None,
                            "stages.3.blocks.2.mlp.fc2", 500_000, 1000, "7.58", (4096, 1024)),
    "dinov2-b14-l12-ef4": ("DINOv2-B/14 (EF4) | 12 | 60k | default", 12, "backbone.blocks.11.mlp.fc2",
                           60_000, 1000, "3.96", (3072, 768)),
    "dinov2-b14-l12-ef16": ("DINOv2-B/14 (EF16) | 12 | 400k | min_cluster_size = 750", 12,
                            "backbone.blocks.11.mlp.fc2", 400_000, 750, "11.41", (3072, 768)),
}
# Not Table 9 rows; their names start with "example-" and their first line says so.
EXAMPLES = {"example-llava-onevision-0.5b-tower-l26": ("encoder.layers.25.mlp.fc2", (4304, 1152))}

# DINOv2 hub entries -> timm's re-implementation of the same ViT (same blocks.N.mlp.fc2 naming and widths),
# used to check paths and widths without the dinov2 repository or its weights.
DINOV2_TIMM = {"dinov2_vits14_lc": "vit_small_patch14_dinov2", "dinov2_vitb14_lc": "vit_base_patch14_dinov2",
               "dinov2_vitl14_lc": "vit_large_patch14_dinov2"}
DINOV2_DEPTH = {"dinov2_vits14_lc": 12, "dinov2_vitb14_lc": 12, "dinov2_vitl14_lc": 24}

ALL = sorted([*TABLE9, *EXAMPLES])


def overlay(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def merged(name: str) -> dict:
    return resolve_config([CONFIGS / f"{name}.yaml"])


def expected_layer(name: str) -> tuple[str, tuple[int, int]]:
    if name in TABLE9:
        return TABLE9[name][2], TABLE9[name][6]
    return EXAMPLES[name]


@functools.lru_cache(maxsize=None)
def timm_architecture(name: str, **kwargs) -> nn.Module:
    """A timm architecture on the meta device: shapes and module names only (no weights, no init cost)."""
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def check_linear(module: nn.Module, path: str, dims: tuple[int, int]) -> None:
    layer = dict(module.named_modules()).get(path)
    assert layer is not None, f"{path} is not a module of {type(module).__name__}"
    assert isinstance(layer, nn.Linear), f"{path} is a {type(layer).__name__}, not an nn.Linear"
    assert (layer.in_features, layer.out_features) == dims


def test_every_table9_row_and_nothing_else():
    # (the template: tests/test_own_config.py; the text default demo-text: tests/test_text_run.py)
    files = sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem not in ("template", "demo-text"))
    assert files == ALL, "configs/ must hold exactly one file per Table 9 row plus the marked examples"
    for name in EXAMPLES:
        first = (CONFIGS / f"{name}.yaml").read_text().splitlines()[0]
        assert name.startswith("example-") and "NOT a Table 9 row" in first


@pytest.mark.parametrize("name", ALL)
def test_validates_against_schema(name):
    validate_config(merged(name))


@pytest.mark.parametrize("name", ALL)
def test_header_comment(name):
    text = (CONFIGS / f"{name}.yaml").read_text()
    head = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert text.startswith("#")
    assert f"configs/{name}.yaml" in head  # how to run it
    assert "index = layer_1idx - 1" in head and expected_layer(name)[0] in head  # the layer mapping
    assert "HF_HUB_OFFLINE=1" in head and "EDIT" in text  # weights offline; data paths to fill in
    if name in TABLE9:
        ef = TABLE9[name][5]
        assert "Table 9 row reproduced:" in head and f"Eff. EF {ef}" in " ".join(head.replace("#", "").split())
        assert f"Expected effective expansion factor (Table 9, mean over token seeds 42/123/999): {ef}" in head


@pytest.mark.parametrize("name", ALL)
def test_paper_settings(name):
    cfg = merged(name)
    path, _ = expected_layer(name)
    assert cfg["run_name"] == name
    assert cfg["backbone"]["layer"] == path
    assert cfg["compute"]["device"] == "cuda"
    assert cfg["data"]["kind"] == "imagefolder" and cfg["data"]["probe_dir"] and cfg["data"]["eval_dir"]
    # Section 4.1 / E.8: 2 random tokens per image, three seeded token datasets
    assert cfg["cache"]["tokens_per_image"] == 2 and cfg["cache"]["token_seed"] == [42, 123, 999]
    # Section E.7: HDBSCAN leaf, min_samples at the library default
    c = cfg["cluster"]
    assert c["cluster_selection_method"] == "leaf" and c["min_samples"] is None and c["backend"] == "auto"
    assert c["minutes_per_unit"] >= 1
    assert cfg["evaluate"]["ms_top_k"] == 100  # Section B.2: top 100 ImageNet-val images per unit
    if name in TABLE9:
        _, layer1, _, k, mcs, _, _ = TABLE9[name]
        assert cfg["topk"]["k"] == k and c["min_cluster_size"] == mcs
        if layer1 is not None:  # Section E.6: index = layer_1idx - 1
            assert f".{layer1 - 1}.mlp.fc2" in path
    else:
        assert c["min_cluster_size"] == 1000
    # the demo's reductions in config.yaml (a 9-point sweep of 5 epochs, two-run Table 4, Table 5 on the CPU)
    # must not leak into a paper run: every baseline setting is E.1's (the schema's defaults)
    from elude.pipeline.config import load_schema, with_defaults

    defaults = with_defaults({}, load_schema())
    b = cfg["baselines"]
    if b["families"]:
        for key in ("epochs", "batch_size", "archetypal_points", "grid", "sparsity"):  # (EF: Table 6 varies it)
            assert b[key] == defaults["baselines"][key], key
        assert all(v == defaults["baselines"]["grid"][axis] for g in b["family_grid"].values() for axis, v in g.items())
    j = validate_config(cfg)["judges"]  # LLM Rank on every Table 9 row (Tables 2 and 6), B.1's settings
    assert (len(j["models"]), j["backend"], j["pairs_per_method_pair"], j["cell_size"], j["max_tokens"], j["batch_size"],
            j["max_model_len"], j["tensor_parallel_size"]) == ((3, "vllm", 50, 336, 256, 64, 32768, 1) if name in TABLE9
                                                               else (0, "vllm", 50, 336, 256, 64, 32768, 1))
    lab = validate_config(cfg)["labels"]  # Sec. C.3: CLIP-Dissect with SigLIP2-SO400M, never the demo CLIP
    assert (lab["model"], lab["concepts"], lab["top_k"]) == ("google/siglip2-so400m-patch14-384", "default", 100)
    headline = name == "dinov2-b14-l12"  # Tables 4 and 5: DINOv2-B/14 at Section 4.1's configuration
    assert cfg["dictionary"]["enabled"] is headline and cfg["efficiency"]["enabled"] is headline
    if headline:
        assert cfg["dictionary"]["init_seeds"] == [42, 7, 1024] and cfg["dictionary"]["elude_runs"] == 3
        e = validate_config(cfg)["efficiency"]
        assert (e["batch_size"], e["warmup"], e["iterations"], e["compile"]) == (256, 100, 500, "auto")


TIMM = [n for n in ALL if overlay(n)["backbone"]["kind"] == "timm"]
HUB = [n for n in ALL if overlay(n)["backbone"]["kind"] == "hub"]
HF = [n for n in ALL if overlay(n)["backbone"]["kind"] == "hf"]


def test_every_config_has_a_layer_check():
    assert sorted(TIMM + HUB + HF) == ALL


@pytest.mark.parametrize("name", TIMM)
def test_timm_layer_is_the_expected_linear(name):
    bb = overlay(name)["backbone"]
    model = timm_architecture(bb["timm"]["name"].split(".")[0])  # the tag only selects weights
    check_linear(model, bb["layer"], expected_layer(name)[1])


@pytest.mark.parametrize("name", HUB)
def test_dinov2_hub_layer_is_the_expected_linear(name):
    """The _lc entries wrap the ViT as ``.backbone`` (dinov2/hub/classifiers.py), built with block_chunks=0
    so ``blocks`` is flat; timm's DINOv2 ViT has the same ``blocks.N.mlp.fc2`` naming and widths."""
    bb = overlay(name)["backbone"]
    assert bb["hub"]["repo"].split(":")[0] == "facebookresearch/dinov2"
    entry = bb["hub"]["entry"]
    assert entry in DINOV2_TIMM and bb["hub"]["kwargs"].get("pretrained") is True
    assert bb["layer"].startswith("backbone.blocks.")
    assert int(bb["layer"].split(".")[2]) < DINOV2_DEPTH[entry]
    vit = timm_architecture(DINOV2_TIMM[entry], img_size=224)
    assert len(vit.blocks) == DINOV2_DEPTH[entry]
    check_linear(vit, bb["layer"].removeprefix("backbone."), expected_layer(name)[1])


def _hf_architecture(hf: dict) -> nn.Module:
    """The architecture of ``hf.model`` on the meta device (no weights, no hub), from the published configs:
    google/siglip2-base-patch16-224 is a SiglipModel (model_type 'siglip', ViT-B/16 at 224); the
    LLaVA-OneVision tower is SigLIP-so400m/14 at 384 px without its last layer (26 layers, no head), as in
    transformers' convert_llava_onevision_weights_to_hf.py."""
    import transformers as tf

    if hf["model"] == "google/siglip2-base-patch16-224":
        config = tf.SiglipConfig(
            vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                               num_attention_heads=12, patch_size=16, image_size=224),
            text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12))
    elif hf["model"] == "llava-hf/llava-onevision-qwen2-0.5b-ov-hf":
        vision = tf.SiglipVisionConfig(hidden_size=1152, image_size=384, intermediate_size=4304,
                                       num_attention_heads=16, num_hidden_layers=26, patch_size=14,
                                       vision_use_head=False)
        text = tf.Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=2,  # depth: irrelevant here
                              num_attention_heads=14, num_key_value_heads=2, vocab_size=151936)
        config = tf.LlavaOnevisionConfig(vision_config=vision.to_dict(), text_config=text.to_dict())
    else:
        raise AssertionError(f"no architecture known for {hf['model']}")
    cls = getattr(tf, hf["class"])
    with torch.device("meta"):
        return cls.from_config(config) if cls is tf.AutoModel else cls(config)


@pytest.mark.parametrize("name", HF)
def test_hf_layer_is_the_expected_linear(name):
    bb = overlay(name)["backbone"]
    module = _hf_architecture(bb["hf"])
    for attr in bb["hf"]["submodule"].split("."):
        module = getattr(module, attr)
    check_linear(module, bb["layer"], expected_layer(name)[1])
