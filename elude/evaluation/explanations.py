"""Automatic explanations of a text run's features and how well they detect the feature (issue 27; the protocol of
Bills et al. 2023 and EleutherAI's delphi, reduced to its two steps):

1. **Explain**: an LLM reads a feature's top evaluation texts, each a window around its most active token, that
   token marked ``<<like this>>``, and writes a short explanation.
2. **Detect**: given only the explanation, the LLM is asked of each of other texts whether the feature fires
   there: ``positives`` of the feature's next top texts (never shown in step 1) and ``negatives`` random
   evaluation texts outside its top list. Its answer is read as a score, the log-odds of "1" over "0" as the
   first answer token (a forward pass: no parsing, any model, also a random one); the **detection score** is
   the AUROC of the scores of the positives against the negatives (0.5: chance, 1: perfect).

Backends: ``transformers`` (any causal LM folder or id in the Hugging Face cache; its chat template where it
has one) and ``vllm`` (GPU; explanations generated, answers read from the first token's top-20 log-probabilities).
``demo:<seed>``: a tiny random causal LM built in the job (:func:`elude.demo.lm.build_demo_explainer`): its
explanations are noise and its detection scores sit at chance by construction: the plumbing, not a finding.
"""
from __future__ import annotations

import json

import numpy as np

EXPLAIN_PROMPT = ("Below are texts on which one feature of a neural network is active. In each, the token where "
                  "it is most active is marked <<like this>>.\n\n{contexts}\n\nIn a few words, what does the feature "
                  "respond to? Explanation:")
DETECT_PROMPT = ("A feature of a neural network responds to: {explanation}\n\nText: {text}\n\nIs the feature active "
                 "somewhere in this text? Answer 1 for yes or 0 for no. Answer:")
WINDOW = 12  # tokens on each side of the marked one
MAX_TEXT_CHARS = 600  # a text asked about in step 2, cut to this


def marked(tokens: list[str], acts: np.ndarray, window: int = WINDOW) -> str | None:
    """A text's window around its most active (real) token, that token marked ``<<..>>``; None without one."""
    acts = np.asarray(acts, dtype=np.float32)
    if not np.isfinite(acts).any():
        return None
    fire = int(np.nanargmax(acts))
    last = int(np.flatnonzero(np.isfinite(acts))[-1])
    lo, hi = max(0, fire - window), min(last + 1, fire + window + 1)
    return "".join(f"<<{t}>>" if i == fire else t for i, t in zip(range(lo, hi), tokens[lo:hi])).strip()


def auroc(pos: list[float], neg: list[float]) -> float | None:
    """The probability that a positive scores above a negative, ties counted half (Mann-Whitney U / n_pos n_neg)."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos, dtype=np.float64)[:, None], np.asarray(neg, dtype=np.float64)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


class TransformersLLM:
    """A causal LM run by transformers: ``generate`` (greedy) and ``yes_scores`` (log-odds of "1" over "0")."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 8, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        self.tok = AutoTokenizer.from_pretrained(model, padding_side="left", **kw)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, **kw).to(device).eval()
        self.device, self.batch_size, self.torch = device, batch_size, torch

    def _text(self, prompt: str) -> str:
        if self.tok.chat_template:
            return self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
        return prompt

    def _batches(self, prompts: list[str]):
        for i in range(0, len(prompts), self.batch_size):
            yield self.tok([self._text(p) for p in prompts[i : i + self.batch_size]], return_tensors="pt",
                           padding=True).to(self.device)

    def generate(self, prompts: list[str], max_tokens: int) -> list[str]:
        out = []
        for inputs in self._batches(prompts):
            with self.torch.no_grad():
                ids = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                                          pad_token_id=self.tok.pad_token_id)
            out += self.tok.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return out

    def yes_scores(self, prompts: list[str], answers: tuple[str, str] = ("0", "1")) -> list[float]:
        """Per prompt: log p(answers[1]) - log p(answers[0]) as the first token of the reply."""
        ids = [answer_tokens(self.tok, a) for a in answers]
        out = []
        for inputs in self._batches(prompts):
            with self.torch.no_grad():
                logp = self.torch.log_softmax(self.model(**inputs).logits[:, -1].float(), -1)
            no, yes = (self.torch.logsumexp(logp[:, i], -1) for i in ids)
            out += (yes - no).tolist()
        return out


def answer_tokens(tokenizer, answer: str) -> list[int]:
    """The first token of ``answer`` as a reply (or a continuation) would start it: alone and after a space (byte-level
    BPE spells a word differently after a space); a spelling the tokenizer gives no token is left out."""
    return sorted({ids[0] for text in (answer, " " + answer) if (ids := tokenizer.encode(text, add_special_tokens=False))})


class VllmLLM:
    """The same on offline vLLM (GPU): explanations generated greedily, answers read from the first generated
    token's 20 most likely tokens (an answer outside them counts at log-probability -30)."""

    def __init__(self, model: str, max_model_len: int = 8192, tensor_parallel_size: int = 1,
                 trust_remote_code: bool = False):
        from .judges.backends import vllm_check

        vllm_check()
        from vllm import LLM

        self.llm = LLM(model=model, max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
                       seed=42, trust_remote_code=trust_remote_code)

    def _chat(self, prompts: list[str], **sampling):
        from vllm import SamplingParams

        return self.llm.chat([[{"role": "user", "content": p}] for p in prompts],
                             SamplingParams(temperature=0.0, seed=42, **sampling), use_tqdm=False)

    def generate(self, prompts: list[str], max_tokens: int) -> list[str]:
        return [r.outputs[0].text for r in self._chat(prompts, max_tokens=max_tokens)]

    def yes_scores(self, prompts: list[str], answers: tuple[str, str] = ("0", "1")) -> list[float]:
        out = []
        for r in self._chat(prompts, max_tokens=1, logprobs=20):
            top = {lp.decoded_token.strip(): lp.logprob for lp in r.outputs[0].logprobs[0].values()}
            out.append(top.get(answers[1], -30.0) - top.get(answers[0], -30.0))
        return out


def choose(llm, pairs: list[tuple[str, str]]) -> list[str]:
    """LLM Rank on texts: for each (set A, set B), the reply as the image judges' JSON, the letter with the larger
    first-token probability (log-odds recorded)."""
    from .judges.protocol import text_prompt

    odds = llm.yes_scores([text_prompt(a, b) for a, b in pairs], answers=("A", "B"))
    return [json.dumps({"answer": "B" if x > 0 else "A", "log_odds_b": x}) for x in odds]


def explain_features(llm, contexts: list[list[str]], held_out: list[list[str]], negatives: list[list[str]],
                     max_tokens: int = 48) -> list[dict]:
    """Per feature: its explanation from ``contexts`` (marked windows, :func:`marked`), and the detection score of
    that explanation on ``held_out`` (its other top texts) against ``negatives`` (random texts)."""
    replies = llm.generate([EXPLAIN_PROMPT.format(contexts="\n".join(f"{i + 1}. {c}" for i, c in enumerate(ctx)))
                            for ctx in contexts], max_tokens)
    explanations = [(r.strip().splitlines() or [""])[0].strip()[:200] for r in replies]
    prompts = [DETECT_PROMPT.format(explanation=expl or "(no explanation)", text=text[:MAX_TEXT_CHARS])
               for expl, pos, neg in zip(explanations, held_out, negatives) for text in pos + neg]
    scores = llm.yes_scores(prompts)
    out, at = [], 0
    for expl, pos, neg in zip(explanations, held_out, negatives):
        s = scores[at : at + len(pos) + len(neg)]
        at += len(pos) + len(neg)
        out.append({"explanation": expl, "detection": auroc(s[: len(pos)], s[len(pos) :]),
                    "n_positives": len(pos), "n_negatives": len(neg)})
    return out
