"""Judge backends (Section B.1): the same prompt and two grid images to a vision-language model, greedy
decoding, ``max_tokens`` 256, seed 42.

* ``transformers``: the model's own processor and chat template, ``generate`` in batches; for small judges
  and for the CPU tests (a tiny random model's answers are noise; the plumbing is what is tested).
* ``vllm``: offline ``vllm.LLM`` with ``limit_mm_per_prompt={"image": 2}``, the paper's settings; GPU only,
  imported lazily behind :func:`vllm_check`.

Models come from a local folder or the Hugging Face cache (``local_files_only``): nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .protocol import PROMPT, parse_answer

EXTRA = "judges"  # pyproject extra that installs vLLM


class JudgeDependencyError(RuntimeError):
    pass


def messages(prompt: str = PROMPT) -> list[dict]:
    """One user turn: grid A, grid B, then the prompt (B.1: "Grid A = first image")."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": prompt}]}]


class TransformersJudge:
    """A judge run by transformers on ``device``: ``ask([(grid_a, grid_b), ...])`` -> raw replies."""

    def __init__(self, model: str, device: str = "cpu", max_tokens: int = 256, batch_size: int = 8,
                 trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kw = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        self.processor = AutoProcessor.from_pretrained(model, **kw)
        self.model = AutoModelForImageTextToText.from_pretrained(model, **kw).to(device).eval()
        self.device, self.max_tokens, self.batch_size, self.torch = device, max_tokens, batch_size, torch
        self.text = self.processor.apply_chat_template(messages(), add_generation_prompt=True)

    def ask(self, pairs: list[tuple]) -> list[str]:
        out = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i : i + self.batch_size]
            inputs = self.processor(text=[self.text] * len(chunk), images=[img for pair in chunk for img in pair],
                                    return_tensors="pt", padding=True).to(self.device)
            self.torch.manual_seed(42)
            with self.torch.no_grad():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_tokens, do_sample=False)
            out += self.processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return out


def vllm_check() -> None:
    """vLLM importable and a CUDA device visible, or an error naming the fix (before any job starts)."""
    try:
        import torch
        import vllm  # noqa: F401 (the capability check)
    except ImportError as exc:
        raise JudgeDependencyError(
            f"judges.backend: vllm needs the vLLM library, which is not importable here ({exc}): install the "
            f"'{EXTRA}' extra on a GPU machine (`.venv/bin/pip install -e '.[{EXTRA}]'`), or use backend "
            "'transformers'") from None
    if not torch.cuda.is_available():
        raise JudgeDependencyError("judges.backend: vllm needs a CUDA GPU and none is visible here: run the judge "
                                   "jobs on a GPU node (compute.device: cuda), or use backend 'transformers'")


def model_check(model: str, key: str = "judges.models") -> None:
    """A model's weights are a local folder or already in the Hugging Face cache (nothing is downloaded at
    run time), or an error naming the config entry (``key``) and the fix. ``demo:<seed>`` models are built
    by the job."""
    from ...models import demo_seed

    if demo_seed(model) is not None or Path(model).is_dir():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # not a valid repo id either
        cached = False
    if not cached:
        raise JudgeDependencyError(
            f"{key}: {model!r} is neither a model folder nor in the Hugging Face cache, and nothing is "
            f"downloaded at run time: fetch it first (`hf download {model}`, on a machine with "
            f"network, into the HF_HOME the jobs see), give its local folder, or remove it from {key}")


def vllm_requests(pairs: list[tuple], prompt: str = PROMPT) -> list[list[dict]]:
    """``vllm.LLM.chat`` conversations, one per presentation: grid A then grid B as PNG data URLs, then the
    prompt."""
    import base64
    import io

    def url(img) -> str:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    return [[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url(a)}},
                                          {"type": "image_url", "image_url": {"url": url(b)}},
                                          {"type": "text", "text": prompt}]}] for a, b in pairs]


def vllm_settings(max_model_len: int = 32768, tensor_parallel_size: int = 1, max_tokens: int = 256,
                  trust_remote_code: bool = False) -> dict:
    """The paper's engine and sampling settings (B.1)."""
    return {"engine": {"limit_mm_per_prompt": {"image": 2}, "max_model_len": max_model_len,
                       "tensor_parallel_size": tensor_parallel_size, "seed": 42,
                       "trust_remote_code": trust_remote_code},
            "sampling": {"temperature": 0.0, "max_tokens": max_tokens, "seed": 42}}


class VllmJudge:
    """A judge served by offline vLLM (GPU): ``ask`` sends batches of ``batch_size`` conversations."""

    def __init__(self, model: str, max_model_len: int = 32768, tensor_parallel_size: int = 1, max_tokens: int = 256,
                 batch_size: int = 64, trust_remote_code: bool = False):
        vllm_check()
        from vllm import LLM, SamplingParams

        s = vllm_settings(max_model_len, tensor_parallel_size, max_tokens, trust_remote_code)
        self.llm = LLM(model=model, **s["engine"])
        self.sampling, self.batch_size = SamplingParams(**s["sampling"]), batch_size

    def ask(self, pairs: list[tuple]) -> list[str]:
        out = []
        for i in range(0, len(pairs), self.batch_size):
            results = self.llm.chat(vllm_requests(pairs[i : i + self.batch_size]), self.sampling, use_tqdm=False)
            out += [r.outputs[0].text for r in results]
        return out


def judgment_key(judge: str, grid_a: bytes, grid_b: bytes, prompt: str = PROMPT) -> str:
    """A judgment's identity: its judge, both grids' contents in order, and the prompt."""
    h = hashlib.sha256()
    for part in (judge.encode(), hashlib.sha256(grid_a).digest(), hashlib.sha256(grid_b).digest(), prompt.encode()):
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()[:24]


class JudgmentStore:
    """Judgments saved as they are made: one JSON line per judgment in ``path`` (appended and flushed to
    disk), keyed by :func:`judgment_key`, so a killed judge job resumes with only the missing ones and a
    rerun with one more judge asks only that judge. A line cut by a kill is ignored."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed job
                self.done[rec["key"]] = rec

    def missing(self, keys: list[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.done]

    def add(self, records: list[dict]) -> None:
        with open(self.path, "a") as f:
            if f.tell() and not self.path.read_text().endswith("\n"):
                f.write("\n")  # after a cut line
            for rec in records:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
                self.done[rec["key"]] = rec
            f.flush()
            os.fsync(f.fileno())


def run_judge(name: str, ask, shown: list[dict], grid_png, store: JudgmentStore, batch_size: int = 64,
              load=None) -> list[dict]:
    """Every presentation of ``shown`` (:func:`elude.evaluation.judges.protocol.presentations`) judged by ``ask``
    (a backend's ``ask``), asking only what ``store`` lacks; returns the judgments in ``shown``'s order.
    ``grid_png((method, unit))`` gives that unit's grid as bytes (PNG); ``load(bytes)`` makes what ``ask`` reads
    (default: the RGB image; a text run's grids are texts)."""
    import io

    from PIL import Image

    load = load or (lambda b: Image.open(io.BytesIO(b)).convert("RGB"))
    keys = [judgment_key(name, grid_png(p["a"]), grid_png(p["b"])) for p in shown]
    by_key = dict(zip(keys, shown))
    todo = store.missing(keys)
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        pairs = [tuple(load(grid_png(by_key[k][side])) for side in ("a", "b")) for k in chunk]
        replies = ask(pairs)
        store.add([{"key": k, "judge": name, "a": list(by_key[k]["a"]), "b": list(by_key[k]["b"]), "reply": r,
                    **parse_answer(r)} for k, r in zip(chunk, replies)])
    return [store.done[k] for k in keys]
