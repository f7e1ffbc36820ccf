"""Language models through the whole workflow (issue 27, point 7): a random-init GPT-2-style model (its MLP output a
Hugging Face Conv1D) and a Llama-style one (mlp.down_proj, a Linear without bias), each saved with a small
tokenizer to a folder, loaded by ``backbone.kind: hf`` as AutoModelForCausalLM, on texts the test writes (a
.jsonl and a .txt file of Python's own documentation), with two baseline families: lossless, and Table 2 has
every row. The text default (configs/demo-text.yaml) is the base of both configs."""
import json
from pathlib import Path

import pytest
import yaml
import zarr
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


def text_config(work: Path, model_dir: Path, layer: str, data_file: Path, **text) -> Path:
    base = yaml.safe_load((REPO / "configs/demo-text.yaml").read_text())
    cfg = merge_config(base, {
        "run_name": "lm", "backbone": {"kind": "hf", "hf": {"model": str(model_dir), "class": "AutoModelForCausalLM"},
                                       "layer": layer},
        "data": {"text": {"builtin": None, "path": str(data_file), "max_texts": None, "max_len": 24, **text}},
        "cache": {"tokens_per_image": 4, "shards": 2, "chunk_rows": 400},
        "topk": {"k": 300}, "cluster": {"min_cluster_size": 15, "min_samples": 4, "units_per_shard": 16},
        "evaluate": {"ms_top_k": 20}, "baselines": {"epochs": 1}})
    path = work / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_causal_lm_runs_the_whole_workflow_losslessly(kind, tmp_path):
    docs = python_docs(8)[:800]
    if kind == "gpt2":
        model_dir, layer = write_lm(tmp_path / "model", gpt2, bos=False), "transformer.h.1.mlp.c_proj"
        data = tmp_path / "texts.jsonl"
        data.write_text("".join(json.dumps({"body": t}) + "\n" for t in docs))
        cfg = text_config(tmp_path, model_dir, layer, data, field="body")
    else:
        model_dir, layer = write_lm(tmp_path / "model", llama, bos=True), "model.layers.1.mlp.down_proj"
        data = tmp_path / "texts.txt"
        data.write_text("\n".join(docs))
        cfg = text_config(tmp_path, model_dir, layer, data)
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
    # instances are real tokens: every cached (text, position) is neither padding nor a special token
    data = resolve_config([cfg])["data"]
    probe = open_dataset(data, "probe", None, results / "backbone" / ids["backbone"] / "tokenizer")
    for shard in ("shard-0000", "shard-0001"):
        index = zarr.open_group(str(results / "cache" / ids["cache"] / shard / "q.zarr"), mode="r")["index"][:]
        assert len(index) > 0 and all(probe[int(t)]["valid"][int(pos)] for t, pos in index)
        if kind == "llama":
            assert (index[:, 1] > 0).all()  # <s> at position 0 is never an instance
