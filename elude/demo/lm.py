"""The text demo's language model: a tiny GPT-2 (Hugging Face's, so its MLP output is a ``Conv1D``) and a byte-level
BPE tokenizer, both trained in the backbone job on the probe texts (``backbone.kind: demo`` with
``data.kind: text``). Nothing is downloaded; about a minute on 2 CPU cores at the text default's size
(configs/demo-text.yaml)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

log = logging.getLogger("elude.demo.lm")
EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int, folder: Path):
    """A byte-level BPE tokenizer (GPT-2's scheme) of ``vocab_size`` tokens learned from ``texts``, saved to
    ``folder`` as a Hugging Face tokenizer; returns it (padding with EOS, which is masked out)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS)
    fast.save_pretrained(str(folder))
    return fast


def demo_lm_config(arch: dict, vocab_size: int, max_len: int):
    """GPT-2's configuration from the demo's ``arch`` keys (embed_dim, depth, num_heads, mlp_ratio)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=max_len, n_embd=arch["embed_dim"], n_layer=arch["depth"],
                      n_head=arch["num_heads"], n_inner=int(arch["mlp_ratio"] * arch["embed_dim"]),
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)


def train_demo_lm(demo: dict, data: dict, tokenizer_dir: Path, device: str | torch.device = "cpu"):
    """Train the tokenizer and the model on the probe texts. Returns (model on the CPU in eval mode, the spec
    that rebuilds its architecture: elude.models.backbones.build_hf, training stats). Next-token loss over
    the real tokens; AdamW with a one-cycle schedule, seeded; ``train.threads`` CPU threads (part of the id)."""
    from transformers import GPT2LMHeadModel

    from ..models.text import TextDataset

    train = demo["train"]
    probe = TextDataset(data, "probe", tokenizer_dir)
    t0 = time.time()
    tok = train_tokenizer(probe.texts, demo["vocab_size"], tokenizer_dir)
    enc = probe.encode(probe.texts)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    log.info("tokenizer: %d tokens learned from %d texts in %.1f s; %d real tokens in the probe split",
             len(tok), len(probe), time.time() - t0, int(mask.sum()))
    job_threads = torch.get_num_threads()
    torch.set_num_threads(train["threads"])
    try:
        torch.manual_seed(train["seed"])
        config = demo_lm_config(demo["arch"], len(tok), data["text"]["max_len"])
        model = GPT2LMHeadModel(config).to(device)  # initialised on the CPU's generator: the same start everywhere
        opt = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
        steps = train["epochs"] * -(-len(ids) // train["batch_size"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train["lr"], total_steps=steps, pct_start=0.15)
        gen = torch.Generator().manual_seed(train["seed"])
        t0 = time.time()
        for epoch in range(train["epochs"]):
            model.train()
            total, n = 0.0, 0
            for rows in torch.randperm(len(ids), generator=gen).split(train["batch_size"]):
                x, m = ids[rows].to(device), mask[rows].to(device)
                labels = x.masked_fill(m == 0, -100)  # padding predicts nothing
                loss = model(input_ids=x, attention_mask=m, labels=labels).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total, n = total + loss.item() * len(rows), n + len(rows)
            log.info("epoch %d/%d: next-token loss %.4f (%.0f s)", epoch + 1, train["epochs"], total / n, time.time() - t0)
    finally:
        torch.set_num_threads(job_threads)
    model = model.cpu().eval()
    spec = {"kind": "hf", "model": "elude-demo-lm",
            "module": f"{type(model).__module__}:{type(model).__qualname__}",
            "config_class": f"{type(config).__module__}:{type(config).__qualname__}", "config": config.to_dict()}
    return model, spec, {"train_seconds": time.time() - t0, "final_loss": total / n, "device": str(device),
                         "vocab_size": len(tok), "probe_texts": len(probe), "probe_tokens": int(mask.sum())}


def build_demo_explainer(folder: Path, seed: int = 0) -> Path:
    """The explanations' offline stand-in (``explain.model: demo:<seed>``): a tiny random GPT-2 (1 block, width 32,
    2,048 positions) with a byte-level BPE tokenizer of 512 tokens learned from Python's documentation and the
    prompts, saved like a Hugging Face model folder. Its explanations are noise and its answers carry no
    information about the texts, by construction."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ..evaluation.explanations import DETECT_PROMPT, EXPLAIN_PROMPT
    from ..models.text import python_docs

    folder = Path(folder)
    tok = train_tokenizer(list(python_docs(8)[:2000]) + [EXPLAIN_PROMPT, DETECT_PROMPT], 512, folder)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=2048, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    model.save_pretrained(folder)
    return folder
