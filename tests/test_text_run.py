"""Language models through the whole workflow (issue 27, point 7): a random-init GPT-2-style model (its MLP output a
Hugging Face Conv1D) and a Llama-style one (mlp.down_proj, a Linear without bias), each saved with a small
tokenizer to a folder, loaded by ``backbone.kind: hf`` as AutoModelForCausalLM, on texts the test writes (a
.jsonl and a .txt file of Python's own documentation), with two baseline families: lossless, and Table 2 has
every row. The text default (configs/demo-text.yaml) is the base of both configs."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from safetensors.torch import load_file
from test_report_browser import CHROMIUM, _chromium
from test_text import gpt2, llama, small_tokenizer
from workflow_helpers import ids_for, snakemake

from elude.models.data import open_dataset
from elude.models.text import python_docs
from elude.pipeline.config import merge_config, resolve_config

REPO = Path(__file__).resolve().parents[1]


def write_lm(folder: Path, build, bos: bool) -> Path:
    model = build(vocab=300)
    model.save_pretrained(folder)
    small_tokenizer(folder, bos=bos)
    return folder


def text_config(work: Path, model_dir: Path, layer: str, data_file: Path, studies: bool, **text) -> Path:
    """The text default's config on this model and these texts, made small; ``studies``: with its explanations and
    LLM Rank (demo LMs), else without them (one run checks them: the suite's time)."""
    base = yaml.safe_load((REPO / "configs/demo-text.yaml").read_text())
    cfg = merge_config(base, {
        "run_name": "lm", "backbone": {"kind": "hf", "hf": {"model": str(model_dir), "class": "AutoModelForCausalLM"},
                                       "layer": layer},
        "data": {"text": {"builtin": None, "path": str(data_file), "max_texts": None, "max_len": 24, **text}},
        "cache": {"tokens_per_image": 4, "shards": 2, "chunk_rows": 400},
        "topk": {"k": 300}, "cluster": {"min_cluster_size": 15, "min_samples": 4, "units_per_shard": 16},
        "evaluate": {"ms_top_k": 20}, "baselines": {"epochs": 1, "expansion_factor": 2},
        "explain": {"positives": 3, "negatives": 3, "max_tokens": 4} if studies else {"model": None},
        **({} if studies else {"judges": {"models": []}})})
    path = work / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_causal_lm_runs_the_whole_workflow_losslessly(kind, tmp_path):
    docs = python_docs(8)[:500]
    if kind == "gpt2":
        model_dir, layer = write_lm(tmp_path / "model", gpt2, bos=False), "transformer.h.1.mlp.c_proj"
        data = tmp_path / "texts.jsonl"
        data.write_text("".join(json.dumps({"body": t}) + "\n" for t in docs))
        cfg = text_config(tmp_path, model_dir, layer, data, True, field="body")
    else:
        model_dir, layer = write_lm(tmp_path / "model", llama, bos=True), "model.layers.1.mlp.down_proj"
        data = tmp_path / "texts.txt"
        data.write_text("\n".join(docs))
        cfg = text_config(tmp_path, model_dir, layer, data, False)
    snakemake(tmp_path, cfg, timeout=900)
    ids = ids_for(cfg)
    results = tmp_path / "results"
    layer_info = json.loads((results / "backbone" / ids["backbone"] / "layer.json").read_text())
    assert layer_info == {"path": layer, "type": "Conv1D" if kind == "gpt2" else "Linear", "n_units": 32,
                          "n_upstream": 128 if kind == "gpt2" else 96}
    assert (results / "backbone" / ids["backbone"] / "tokenizer" / "tokenizer.json").is_file()
    summary = json.loads((results / "runs/lm/summary.json").read_text())
    assert summary["lossless"]["lossless"] and summary["lossless"]["max_rel_diff"] < 1e-5
    assert summary["n_subunits"] > summary["n_units"] == 32
    rows = summary["table2"]["rows"]
    assert {"backbone", "elude", "topk", "vanilla"} <= set(rows)
    assert rows["elude"]["r2"] == 100.0 and rows["topk"]["r2"] < 100.0  # (one epoch on a random model: far below)
    # a language model's faithfulness: ELUDe's next-token loss is the model's own, its KL ~0; a baseline's is not
    assert summary["lossless"]["next_token_agreement"] == 1.0
    assert rows["elude"]["lm_loss"] == pytest.approx(rows["backbone"]["lm_loss"], abs=1e-5) and rows["elude"]["lm_kl"] < 1e-8
    assert rows["topk"]["lm_kl"] > 1e-6 and rows["vanilla"]["lm_kl"] > 1e-6 and rows["backbone"]["lm_kl"] == 0.0  # (random models: small)
    report = (results / "runs/lm/report.html").read_text()
    assert "Next-token loss (↓)" in report and "KL to the original (↓)" in report
    # the unit pages show each feature's top texts, shaded token by token, the firing token outlined
    tables = load_file(str(results / "evaluate" / ids["evaluate"] / "tables.safetensors"))
    contexts = tables["subunits_top_contexts"].float()
    assert contexts.shape[:2] == (summary["n_subunits"], 9) and contexts.shape[2] == 24
    page = (results / "runs/lm/units/0.html").read_text()
    assert page.count('class="ctx"') >= 16 and page.count("class=fire") >= 16 and "top 16 texts" in page
    # instances are real tokens: every cached (text, position) is neither padding nor a special token
    data = resolve_config([cfg])["data"]
    probe = open_dataset(data, "probe", None, results / "backbone" / ids["backbone"] / "tokenizer")
    for shard in ("shard-0000", "shard-0001"):
        index = zarr.open_group(str(results / "cache" / ids["cache"] / shard / "q.zarr"), mode="r")["index"][:]
        assert len(index) > 0 and all(probe[int(t)]["valid"][int(pos)] for t, pos in index)
        if kind == "llama":
            assert (index[:, 1] > 0).all()  # <s> at position 0 is never an instance
    if kind == "llama":
        return  # the explanations, LLM Rank and the browser: on the GPT-2 run
    # explanations (the text default's demo LM) of every feature active on the evaluation texts, with detection
    ex = summary["explanations"]
    assert ex["model"] == "demo:0" and 0 < ex["n_explained"]["units"] <= 32 and ex["n_explained"]["subunits"] > 0
    assert ex["n_explained"]["topk"] > 0 and ex["n_explained"]["vanilla"] > 0 and page.count("(detection ") >= 2
    assert all(0.0 <= rows[k]["detection"] <= 1.0 for k in ("backbone", "elude", "topk", "vanilla"))  # Table 2's column
    assert rows["elude"]["detection"] == ex["detection_mean"]["subunits"]
    assert "Explanation detection (AUROC, ↑)" in report
    # LLM Rank on texts (the text default's three demo judges): every presentation answered, Table 2's rank column
    assert all(rows[k]["llm_rank"] is not None for k in ("backbone", "elude", "topk", "vanilla"))
    assert summary["table3"]["counts"]["presentations"] == 6 * 2 * 5 and "set A: " in report
    if CHROMIUM:  # as a reader sees it: the firing tokens in full orange
        from PIL import Image

        shot = tmp_path / "unit.png"
        _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1400", (results / "runs/lm/units/0.html").as_uri())
        px = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
        assert ((px[:, 0] > 240) & (px[:, 1] < 170) & (px[:, 2] < 60)).sum() > 500
