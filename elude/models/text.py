"""Text data (``data.kind: text``): texts from a file, a folder or the corpus that ships with Python, tokenized
by the backbone's own tokenizer to a fixed context length.

- ``data.text.path``: a ``.txt`` file (one text per non-empty line), a ``.jsonl`` file (the string field
  ``data.text.field`` of each line), or a folder of such files (read in sorted path order);
  ``data.text.builtin: python-docs`` instead: CPython's own documentation, which ships with every CPython (the
  language-reference topics of ``pydoc_data.topics`` and the docstrings of the standard library), as
  paragraphs of at least ``min_words`` words. The corpus then depends on the Python version.
- The texts are split into probe and evaluation texts by a seeded permutation (``data.eval_fraction``,
  ``data.split_seed``); ``data.text.max_texts`` caps the texts read (the first ones, before the split).
- Each text is tokenized on access by the tokenizer saved in the backbone artifact (``tokenizer/``), cut or
  padded to ``max_len`` tokens. Instances are the tokens: padding is never one, and with ``skip_special`` the
  tokenizer's special tokens (BOS, CLS, SEP, EOS) are not either. The model gets ``input_ids`` and
  ``attention_mask``.
"""
from __future__ import annotations

import ast
import functools
import json
import re
import sysconfig
from pathlib import Path

import numpy as np
import torch

TEXT_SUFFIXES = (".txt", ".jsonl")
SKIP_DIRS = {"test", "tests", "site-packages", "idlelib", "lib2to3", "tkinter", "turtledemo"}


@functools.lru_cache(maxsize=4)
def python_docs(min_words: int = 8) -> tuple[str, ...]:
    """The built-in corpus, in a fixed order: pydoc's topics (sorted by name), then the standard library's
    docstrings (files sorted by path, nodes in ``ast.walk`` order), split into paragraphs. Parsing the standard
    library takes ~4 s, so the result is kept in the user's cache folder, per Python version and stdlib path."""
    import hashlib
    import os
    import sys

    key = hashlib.sha256(f"{sys.version}|{sysconfig.get_paths()['stdlib']}|{min_words}|1".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "elude" / f"python-docs-{key}.json"
    try:
        return tuple(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    out = _parse_python_docs(min_words)
    try:  # written whole, then renamed: jobs reading it at the same time see all of it or nothing
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(out))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only home: parse again next time
    return out


def _parse_python_docs(min_words: int) -> tuple[str, ...]:
    import pydoc_data.topics as topics

    out: list[str] = []

    def add(text: str) -> None:
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if len(para.split()) >= min_words:
                out.append(para)

    for name in sorted(topics.topics):
        add(topics.topics[name])
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    (doc := ast.get_docstring(node)):
                add(doc)
    return tuple(out)


def _read_file(path: Path, field: str) -> list[str]:
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"data.text.path: {path} line {n} is not JSON ({exc})") from None
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise ValueError(f"data.text.field: line {n} of {path} has no string field {field!r} (its keys: "
                             f"{sorted(row) if isinstance(row, dict) else type(row).__name__}); name the field "
                             "that holds the text")
        if row[field].strip():
            out.append(row[field])
    return out


def read_texts(text_cfg: dict) -> list[str]:
    """Every text of the ``data.text`` section, in a fixed order (at most ``max_texts``)."""
    if text_cfg.get("builtin"):
        texts = list(python_docs(text_cfg["min_words"]))
    else:
        root = Path(text_cfg["path"])
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
            if not files:
                raise ValueError(f"data.text.path: no .txt or .jsonl files under {root}")
        elif root.is_file():
            if root.suffix not in TEXT_SUFFIXES:
                raise ValueError(f"data.text.path: {root} is neither a .txt (one text per line) nor a .jsonl file")
            files = [root]
        else:
            raise FileNotFoundError(f"data.text.path: {str(root)!r} does not exist (a .txt or .jsonl file, or a "
                                    "folder of them)")
        texts = [t for f in files for t in _read_file(f, text_cfg["field"])]
    if text_cfg.get("max_texts"):
        texts = texts[: text_cfg["max_texts"]]
    if len(texts) < 2:
        raise ValueError(f"data.text: {len(texts)} text(s) read; the probe and the evaluation split need one each")
    return texts


def split_texts(texts: list[str], split: str, eval_fraction: float, seed: int) -> list[str]:
    """The probe or eval texts: a seeded permutation, its first ``eval_fraction`` for 'eval' (at least one)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    n_eval = min(len(texts) - 1, max(1, round(eval_fraction * len(texts))))
    chosen = np.sort(order[:n_eval] if split == "eval" else order[n_eval:])
    return [texts[i] for i in chosen]


def load_tokenizer(folder: str | Path):
    """The tokenizer a backbone artifact saved (``tokenizer/``), with a padding token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:  # GPT-2 and Llama have none: pad with EOS, masked out anyway
        tok.pad_token = tok.eos_token
    return tok


class TextDataset(torch.utils.data.Dataset):
    """One split of the texts; items tokenized on access (see the module docstring)."""

    def __init__(self, data_cfg: dict, split: str, tokenizer_dir: str | Path | None = None):
        text = data_cfg["text"]
        self.texts = split_texts(read_texts(text), split, data_cfg["eval_fraction"], data_cfg["split_seed"])
        self.max_len, self.skip_special = text["max_len"], text["skip_special"]
        self.tokenizer_dir = tokenizer_dir
        self._tok = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def tokenizer(self):
        if self._tok is None:
            if self.tokenizer_dir is None:
                raise RuntimeError("data.kind text: the dataset was opened without the backbone's tokenizer")
            self._tok = load_tokenizer(self.tokenizer_dir)
        return self._tok

    def encode(self, texts: list[str]) -> dict:
        """Token ids, attention mask and the instances that count, (len(texts), max_len) each."""
        enc = self.tokenizer(texts, max_length=self.max_len, truncation=True, padding="max_length",
                             return_special_tokens_mask=True, return_tensors="pt")
        valid = enc["attention_mask"].bool()
        if self.skip_special:
            valid &= ~enc["special_tokens_mask"].bool()
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "valid": valid}

    def __getitem__(self, i: int) -> dict:
        enc = self.encode([self.texts[i]])
        return {"input": {"input_ids": enc["input_ids"][0], "attention_mask": enc["attention_mask"][0]},
                "label": -1, "valid": enc["valid"][0]}

    def tokens(self, i: int) -> list[str]:
        """Text i's tokens as strings, position by position (padding included), for display."""
        ids = self.encode([self.texts[i]])["input_ids"][0].tolist()
        return [self.tokenizer.decode([t]) for t in ids]

    def thumbnail(self, i: int, size: int = 64):
        return None  # text has no image
