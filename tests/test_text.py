"""Language models and text data (issue 27, point 1): texts read from .txt, .jsonl and folders and tokenized by the
model's tokenizer (instances = real tokens), GPT-2's Conv1D and Llama's down_proj as target layers, lossless on
random-init models built here (nothing downloaded)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from elude.method.layers import DisentangledLayer, LazyDisentangledLayer, disentangle, swap_in
from elude.method.surgery import bias_fractions, fractions_for_rho
from elude.models import backbones
from elude.models.data import iter_batches, open_dataset
from elude.models.text import python_docs, read_texts
from elude.pipeline.config import ConfigError, merge_config, validate_config

TEXTS = ["The cat sat on the mat.", "A dog barked at the mailman twice.", "def f(x): return x + 1",
         "Numbers like 3.14159 and 2.71828 are constants.", "Tokenizers split words into pieces.",
         "Short.", "A much longer sentence that will certainly be cut at the context length of the test."]


def text_cfg(**text) -> dict:
    return validate_config(merge_config({"labels": {"model": None}},
                                        {"data": {"kind": "text", "eval_fraction": 0.3, "split_seed": 1, "text": text}}))["data"]


def gpt2(seed: int = 0, vocab: int = 300):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                      bos_token_id=0, eos_token_id=0)).eval()


def llama(seed: int = 0, vocab: int = 300):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                        bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()


def small_tokenizer(folder, bos: bool):
    """A byte-level BPE tokenizer trained here on TEXTS; ``bos``: it puts <s> before every text (Llama's habit)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    return folder


def test_texts_from_txt_jsonl_and_folders_with_errors_that_name_the_key(tmp_path):
    (tmp_path / "a.txt").write_text("first text\n\n  second text  \n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "third text", "id": 1}) + "\n\n" + json.dumps({"body": "fourth"}) + "\n")
    assert read_texts(text_cfg(path=str(tmp_path / "a.txt"))["text"]) == ["first text", "second text"]
    assert read_texts(text_cfg(path=str(tmp_path / "b.jsonl"), field="body")["text"]) == ["third text", "fourth"]
    assert read_texts(text_cfg(path=str(tmp_path), field="body")["text"]) == ["first text", "second text", "third text", "fourth"]
    assert read_texts(text_cfg(path=str(tmp_path), field="body", max_texts=3)["text"]) == ["first text", "second text", "third text"]
    with pytest.raises(ValueError, match=r"data.text.field: line 1 of .*b.jsonl has no string field 'text' \(its keys: \['body', 'id'\]\)"):
        read_texts(text_cfg(path=str(tmp_path / "b.jsonl"))["text"])
    with pytest.raises(FileNotFoundError, match="data.text.path: .*missing.txt' does not exist"):
        read_texts(text_cfg(path=str(tmp_path / "missing.txt"))["text"])
    (tmp_path / "c.csv").write_text("x\n")
    with pytest.raises(ValueError, match="neither a .txt"):
        read_texts(text_cfg(path=str(tmp_path / "c.csv"))["text"])
    with pytest.raises(ConfigError, match="exactly one of data.text.path .* and data.text.builtin"):
        text_cfg()
    docs = python_docs(8)  # ships with CPython: pydoc's topics and the standard library's docstrings
    assert len(docs) > 5000 and all(len(p.split()) >= 8 for p in docs[:200])


def test_instances_are_the_real_tokens_and_the_splits_are_disjoint(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    tok_dir = small_tokenizer(tmp_path / "tok", bos=True)
    cfg = text_cfg(path=str(tmp_path / "t.txt"), max_len=12)
    probe, ev = open_dataset(cfg, "probe", None, tok_dir), open_dataset(cfg, "eval", None, tok_dir)
    assert sorted(probe.texts + ev.texts) == sorted(TEXTS) and not set(probe.texts) & set(ev.texts)
    assert len(ev) == 2 and open_dataset(cfg, "eval", None, tok_dir).texts == ev.texts  # seeded
    item = probe[0]
    ids, mask, valid = item["input"]["input_ids"], item["input"]["attention_mask"], item["valid"]
    assert ids.shape == mask.shape == valid.shape == (12,)
    assert ids[0] == 1 and not valid[0] and mask[0]  # <s>: attended, but not an instance (skip_special)
    assert torch.equal(valid, mask.bool() & (ids != 1))  # padding is never an instance
    short = next(i for i, t in enumerate(probe.texts + ev.texts) if t == "Short.")
    ds = probe if short < len(probe) else ev
    assert not ds[short % len(probe) if ds is probe else short - len(probe)]["valid"].all()  # padded
    keep = open_dataset(text_cfg(path=str(tmp_path / "t.txt"), max_len=12, skip_special=False), "probe", None, tok_dir)
    assert torch.equal(keep[0]["valid"], mask.bool())
    batch = next(iter_batches(probe, 3))
    assert batch.inputs["input_ids"].shape == (3, 12) and batch.valid.shape == (3, 12)
    assert "".join(probe.tokens(0)).startswith("<s>" + probe.texts[0][:5])


def random_split(layer: nn.Module, rng) -> DisentangledLayer:
    w, _ = backbones.layer_weight_bias(layer)
    fracs = [fractions_for_rho(np.abs(rng.normal(size=(k, w.shape[1]))), 0.6) if k > 1 else np.ones((1, w.shape[1]))
             for k in rng.integers(1, 5, size=w.shape[0])]
    return DisentangledLayer.from_fractions(layer, fracs, [bias_fractions(f) for f in fracs])


@pytest.mark.parametrize("build,path", [(gpt2, "transformer.h.1.mlp.c_proj"), (llama, "model.layers.1.mlp.down_proj")])
@torch.no_grad()
def test_a_language_models_mlp_output_is_disentangled_losslessly(build, path, rng, tmp_path):
    model = build()
    layer = backbones.get_module(model, path)
    backbones.check_target_layer(layer, path)
    w, b = backbones.layer_weight_bias(layer)
    assert w.shape == (32, 128 if build is gpt2 else 96)  # (units, upstream): GPT-2's Conv1D stores (in, out)
    x = torch.randint(3, 300, (4, 16))
    mask = torch.ones_like(x)
    mask[1, 10:] = 0
    ref = model(input_ids=x, attention_mask=mask).logits
    q = {}
    layer.register_forward_hook(lambda m, a, o: q.__setitem__("in", a[0]))
    model(input_ids=x, attention_mask=mask)
    assert torch.allclose(nn.functional.linear(q["in"], w, b), layer(q["in"]), atol=1e-5)  # the weights read right
    dense = random_split(layer, rng)
    dense.save(tmp_path)
    original = swap_in(model, path, dense)
    out = model(input_ids=x, attention_mask=mask).logits
    assert (out - ref).abs().max() / ref.abs().max() < 1e-5 and torch.equal(out.argmax(-1), ref.argmax(-1))
    swap_in(model, path, original)
    lazy = disentangle(model, path, tmp_path)  # the original module runs: bit for bit
    assert isinstance(lazy, LazyDisentangledLayer) and lazy.in_features == w.shape[1]
    assert torch.equal(model(input_ids=x, attention_mask=mask).logits, ref)
    summed = torch.zeros(*q["in"].shape[:-1], 32).index_add_(-1, dense.parent, lazy.subunits(q["in"]))
    assert torch.allclose(summed, original(q["in"]), atol=1e-5)  # sub-units sum to their unit


def test_layer_weights_read_from_the_checkpoint_match_the_modules(tmp_path):
    """Stages that need only the weights read them from model.safetensors: GPT-2's Conv1D is transposed there."""
    from elude.pipeline.stages.job import layer_weights

    model = gpt2()
    spec = {"kind": "hf", "model": "test", "module": f"{type(model).__module__}:{type(model).__qualname__}",
            "config_class": f"{type(model.config).__module__}:{type(model.config).__qualname__}",
            "config": model.config.to_dict()}
    backbones.save_backbone(model, spec, tmp_path)
    path = "transformer.h.1.mlp.c_proj"
    (tmp_path / "layer.json").write_text(json.dumps({"path": path, "type": "Conv1D", "n_units": 32, "n_upstream": 128}))
    w, b, info = layer_weights(tmp_path)
    w0, b0 = backbones.layer_weight_bias(backbones.get_module(model, path))
    assert torch.equal(w, w0) and torch.equal(b, b0) and info["kind"] == "linear"
    assert torch.equal(backbones.load_backbone(tmp_path).transformer.h[1].mlp.c_proj.weight, model.transformer.h[1].mlp.c_proj.weight)


@torch.no_grad()
def test_next_token_loss_is_the_models_own_and_kl_measures_a_substitute(tmp_path):
    """Table 2's faithfulness for a language model: the next-token loss of the original model equals Hugging Face's
    own loss over the real tokens; a method in place of the layer adds to it, and its KL from the original is 0
    only for the original layer itself."""
    from elude.evaluation.language import NextTokenLoss, lm_vocabulary, next_token_logits
    from elude.evaluation.scoring import forward_batch, substituted

    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    tok_dir = small_tokenizer(tmp_path / "tok", bos=False)
    ds = open_dataset({**text_cfg(path=str(tmp_path / "t.txt"), max_len=12), "eval_fraction": 0.5}, "eval", None, tok_dir)
    model, path = gpt2(), "transformer.h.1.mlp.c_proj"
    assert lm_vocabulary(model) == 300 and lm_vocabulary(nn.Linear(3, 3)) is None
    batch = next(iter_batches(ds, len(ds)))
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    hf_loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    lm = NextTokenLoss()
    ref = forward_batch(model, path, batch)
    logits, targets = next_token_logits(ref, batch, 300)
    assert len(targets) == int((mask[:, 1:] & mask[:, :-1]).sum())  # every real next token, no padding
    lm.update("original", logits, targets)
    for name, change in (("same", lambda q, a: a), ("noisy", lambda q, a: a + 0.5 * torch.randn_like(a))):
        with substituted(model, path, change):
            new = forward_batch(model, path, batch)
        lm.update(name, next_token_logits(new, batch, 300)[0], targets, reference=logits)
    out = lm.value()
    assert out["ce"]["original"] == pytest.approx(float(hf_loss), rel=1e-5)
    assert out["ce"]["same"] == pytest.approx(out["ce"]["original"], abs=1e-9) and out["kl"]["same"] < 1e-12
    assert out["kl"]["noisy"] > 1e-4 and out["ce"]["noisy"] != out["ce"]["original"]
    assert next_token_logits(ref, batch, 299) is None  # logits of another width: not this model's head


def test_steering_a_language_model_by_words_moves_their_next_token_probability(rng, tmp_path):
    """`python -m elude.steer --by token`: sub-units matched to a word by their first-order effect on its
    next-token log-probability; amplifying them raises the word's mean next-token probability over the texts,
    suppressing lowers another's, gains of 1 change nothing, and prompts get their changes and continuations."""
    from elude.evaluation.steering import concept_tokens, steer_tokens
    from elude.models.text import load_tokenizer

    (tmp_path / "t.txt").write_text("\n".join(TEXTS * 4))
    tok_dir = small_tokenizer(tmp_path / "tok", bos=False)
    tok = load_tokenizer(tok_dir)
    ds = open_dataset({**text_cfg(path=str(tmp_path / "t.txt"), max_len=16), "eval_fraction": 0.5}, "eval", None, tok_dir)
    model, path = gpt2(3), "transformer.h.1.mlp.c_proj"
    original = backbones.get_module(model, path)
    lazy = LazyDisentangledLayer.from_dense(random_split(original, rng), original)
    assert concept_tokens(tok, "cat") and concept_tokens(tok, "cat") != concept_tokens(tok, "dog")
    res = steer_tokens(model, path, lazy, ds, tok, amplify=["cat"], suppress=["dog"], prompts=["The cat sat"],
                       kappa=8, alpha=3.0, gamma=-1.0, new_tokens=4)
    (b_cat, one_cat, a_cat), (b_dog, one_dog, a_dog) = res["concept_mass"]["cat"], res["concept_mass"]["dog"]
    assert one_cat == b_cat and one_dog == b_dog  # gains of 1: the original model, exactly
    assert a_cat > b_cat and a_dog < b_dog
    assert len(res["amplified"]) == len(res["suppressed"]) == 8
    (run,) = res["prompts"]
    assert run["gains_one_max_change"] == 0.0 and len(run["changes"]) == 5 and run["before"] and run["after"]
    assert backbones.get_module(model, path) is original  # the layer is swapped back out


def test_explanations_are_scored_by_detection_with_an_offline_llm(tmp_path):
    """explain.model: an LLM explains a feature from its marked top texts and is scored by telling its other top
    texts from random ones (AUROC); here the offline demo LM (noise by construction) through the real
    transformers backend, and the AUROC and the marking checked by hand."""
    from elude.demo.lm import build_demo_explainer
    from elude.evaluation.explanations import TransformersLLM, auroc, explain_features, marked

    assert marked(["a", " b", " c", "<pad>"], np.array([0.1, 2.0, -1.0, np.nan])) == "a<< b>> c"
    assert marked(["a"], np.array([np.nan])) is None
    assert auroc([3, 2], [1, 0]) == 1.0 and auroc([0], [1]) == 0.0 and auroc([1, 1], [1, 1]) == 0.5
    assert auroc([2, 0], [1]) == 0.5 and auroc([], [1]) is None
    llm = TransformersLLM(str(build_demo_explainer(tmp_path / "explainer", seed=0)), batch_size=4)
    res = explain_features(llm, [["The <<cat>> sat.", "A <<cat>> slept."], ["def <<f>>(x)"]],
                           [["Cats purr.", "My cat."], ["def g(): pass"]], [["Numbers.", "A dog."], ["Short."]],
                           max_tokens=6)
    assert len(res) == 2 and all(isinstance(r["explanation"], str) for r in res)
    assert all(0.0 <= r["detection"] <= 1.0 for r in res) and res[0]["n_positives"] == 2 and res[1]["n_negatives"] == 1
    # the answer is read from the logits, the same for the same prompt whatever the batch
    assert llm.yes_scores(["Answer:"]) == pytest.approx(TransformersLLM(str(tmp_path / "explainer"), batch_size=1)
                                                       .yes_scores(["Answer:"]), abs=1e-5)


def test_llm_rank_on_texts_reads_one_letter_from_the_first_token(tmp_path):
    """judges.models on a text run: the judge sees two sets of marked texts and its answer is the letter with the
    larger first-token probability, written as the image judges' JSON (so consensus and Table 3 read it as they
    do); swapping the sets swaps what the prompt shows."""
    from elude.demo.lm import build_demo_explainer
    from elude.evaluation.explanations import TransformersLLM, choose
    from elude.evaluation.judges.protocol import parse_answer, text_prompt

    a, b = "1. The <<cat>> sat.\n2. A <<cat>> slept.", "1. def <<f>>(x)\n2. Numbers <<3>>"
    prompt = text_prompt(a, b)
    assert prompt.index(a) < prompt.index(b) and prompt.rstrip().endswith("Answer:")
    llm = TransformersLLM(str(build_demo_explainer(tmp_path / "judge", seed=1)), batch_size=2)
    replies = choose(llm, [(a, b), (b, a)])
    parsed = [parse_answer(r) for r in replies]
    assert all(p["parsed"] and p["answer"] in ("A", "B") for p in parsed)
    odds = [json.loads(r)["log_odds_b"] for r in replies]
    assert [p["answer"] for p in parsed] == ["B" if x > 0 else "A" for x in odds]
    assert odds == pytest.approx(llm.yes_scores([text_prompt(a, b), text_prompt(b, a)], answers=("A", "B")))


@torch.no_grad()
def test_an_encoders_faithfulness_is_its_own_output_similarity(tmp_path):
    """A model without an output head whose first output is per-token hidden states (a text encoder): Table 2's
    faithfulness is the mean cosine similarity of that output with a method in place of the layer to the
    original's, over the real tokens: 1 for the layer itself, below 1 for a lossy substitute."""
    from transformers import GPT2Config, GPT2Model

    from elude.evaluation.language import OutputSimilarity, lm_vocabulary
    from elude.evaluation.scoring import forward_batch, substituted

    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    tok_dir = small_tokenizer(tmp_path / "tok", bos=False)
    ds = open_dataset({**text_cfg(path=str(tmp_path / "t.txt"), max_len=12), "eval_fraction": 0.5}, "eval", None, tok_dir)
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()
    path = "h.1.mlp.c_proj"
    assert lm_vocabulary(model) is None
    batch = next(iter_batches(ds, len(ds)))
    ref = forward_batch(model, path, batch)
    assert OutputSimilarity.applies(ref)
    sim = OutputSimilarity()
    for name, change in (("same", lambda q, a: a), ("noisy", lambda q, a: a + torch.randn_like(a))):
        with substituted(model, path, change):
            sim.update(name, ref, forward_batch(model, path, batch), count=name == "same")
    out = sim.value()
    assert out["same"] == pytest.approx(1.0, abs=1e-9) and out["noisy"] < 0.999


def test_image_studies_on_text_and_text_studies_on_images_are_refused_naming_the_key():
    text = {"data": {"kind": "text", "text": {"builtin": "python-docs"}}}
    with pytest.raises(ConfigError, match="labels.model labels features .* data.kind is 'text'.*explain.model"):
        validate_config({**text, "labels": {"model": "google/siglip2-base-patch16-224"}})
    with pytest.raises(ConfigError, match="explain.model explains text features .* data.kind is 'digits'"):
        validate_config({"explain": {"model": "demo:0"}, "labels": {"model": None}})
    with pytest.raises(ConfigError, match="backbone.kind 'timm' needs backbone.tokenizer"):
        validate_config({**text, "labels": {"model": None}, "backbone": {"kind": "timm", "timm": {"name": "vit_tiny_patch16_224"}}})
    assert validate_config({**text, "labels": {"model": None}, "explain": {"model": "demo:0"}})["explain"]["positives"] == 10
