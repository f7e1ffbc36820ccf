"""Steering by sub-units (Section C.3): match concepts to the sub-units that carry them (by label or by class
selectivity) and scale those sub-units' activations, with the disentangled layer hot-swapped into the loaded
model; gains of 1 give the original outputs exactly. The command line is ``python -m elude.steer``
(:mod:`elude.evaluation.steering`), whose help says how concepts are matched and which defaults it uses."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..method.layers import swapped
from ..models.data import iter_batches
from .groups import per_image_max
from .scoring import forward_batch, logits_of


def class_selectivity(model: nn.Module, layer_path: str, layer, dataset, batch_size: int = 256) -> np.ndarray:
    """(n_sub-units, n_classes): how specifically each sub-unit responds to each class on ``dataset``
    (the original model's layer input, so the model is not changed here)."""
    res = per_image_max(model, layer_path, layer, dataset, batch_size)
    acts, labels = res["subunits"].double(), res["labels"]
    ok = labels >= 0
    acts, labels = acts[ok], labels[ok]
    std = acts.std(0).clamp_min(1e-12)
    out = []
    for c in range(int(labels.max()) + 1):
        inside = labels == c
        out.append(((acts[inside].mean(0) - acts[~inside].mean(0)) / std) if inside.any() else torch.zeros_like(std))
    return torch.stack(out, 1).numpy()


def match(selectivity: np.ndarray, concept: int, kappa: int) -> list[int]:
    """The kappa sub-units most selective for class ``concept``."""
    return [int(i) for i in np.argsort(-selectivity[:, concept], kind="stable")[:kappa]]


@torch.no_grad()
def match_labels(clip, labels: list[dict], concept: str, kappa: int) -> list[int]:
    """The kappa sub-units whose labels' text embeddings are most similar to ``concept``'s (``labels``:
    labels.json's sub-unit entries; unlabelled sub-units never match; ties: higher soft-WPMI score first)."""
    names = sorted({e["label"] for e in labels if e["label"] is not None})
    sim = dict(zip(names, (clip.encode_texts(names) @ clip.encode_texts([concept]).T)[:, 0].tolist()))
    ranked = sorted((i for i, e in enumerate(labels) if e["label"] is not None),
                    key=lambda i: (-sim[labels[i]["label"]], -labels[i]["score"], i))
    return ranked[:kappa]


def with_groups(ids: list[int], labels: list[dict]) -> list[int]:
    """``ids`` and every sub-unit in the same concept group as one of them."""
    groups = {labels[i]["group"] for i in ids} - {None}
    return sorted(set(ids) | {i for i, e in enumerate(labels) if e["group"] in groups})


def gains(n_subunits: int, amplify: list[int] = (), suppress: list[int] = (), alpha: float = 5.0,
          gamma: float = -10.0) -> torch.Tensor:
    """Per sub-unit gain: alpha on ``amplify``, gamma on ``suppress``, 1 elsewhere; a sub-unit matched by
    both is amplified (C.3)."""
    g = torch.ones(n_subunits)
    g[list(suppress)] = gamma
    g[list(amplify)] = alpha
    return g


@contextlib.contextmanager
def steering(layer, gain: torch.Tensor | None, nu: int | None = None):
    """The layer's sub-units scaled by ``gain`` (restricted to the nu most active instances per example
    when ``nu`` is set) inside the block; its previous steering restored after."""
    before = layer.subunit_gain, layer.gain_instances
    layer.subunit_gain, layer.gain_instances = gain, nu
    try:
        yield layer
    finally:
        layer.subunit_gain, layer.gain_instances = before


@torch.no_grad()
def per_class_accuracy(model: nn.Module, layer_path: str, dataset, batch_size: int = 256,
                       reference: list[torch.Tensor] | None = None,
                       accuracy: str = "auto") -> tuple[dict[int, float], list[torch.Tensor]]:
    """Top-1 accuracy per class of the model as it is now (empty for a model without class logits, or with
    ``accuracy`` never, as evaluate.accuracy: an image encoder's 2-D embedding is not logits), and its
    outputs per batch (every floating output tensor, flattened per example; pass the original run's as
    ``reference`` to also get the largest absolute output change under key -1)."""
    correct, total, outputs, change = {}, {}, [], 0.0
    for i, batch in enumerate(iter_batches(dataset, batch_size)):
        fwd = forward_batch(model, layer_path, batch)
        out = torch.cat([t.reshape(len(batch), -1) for t in fwd.outputs], 1)
        outputs.append(out)
        if reference is not None:
            change = max(change, float((out - reference[i]).abs().max()))
        logits = logits_of(fwd)
        if logits is None or accuracy == "never":
            continue
        for c, hit in zip(batch.labels.tolist(), (logits.argmax(-1) == batch.labels).tolist()):
            if 0 <= c < logits.shape[1]:
                total[c] = total.get(c, 0) + 1
                correct[c] = correct.get(c, 0) + int(hit)
    acc = {c: correct[c] / total[c] for c in sorted(total)}
    if reference is not None:
        acc[-1] = change
    return acc, outputs


def steer_classes(model: nn.Module, layer_path: str, layer, dataset, *, amplify: list[int] = (),
                  suppress: list[int] = (), kappa: int = 16, batch_size: int = 256, **settings) -> dict:
    """:func:`steer` with concepts given as classes, matched by class selectivity."""
    sel = class_selectivity(model, layer_path, layer, dataset, batch_size)
    up = sorted({s for c in amplify for s in match(sel, c, kappa)})
    down = sorted({s for c in suppress for s in match(sel, c, kappa)})
    return {**steer(model, layer_path, layer, dataset, up, down, batch_size=batch_size, **settings), "kappa": kappa}


def steer_labels(model: nn.Module, layer_path: str, layer, dataset, labels: list[dict], clip, *,
                 amplify: list[str] = (), suppress: list[str] = (), kappa: int = 16, groups: bool = False,
                 batch_size: int = 256, **settings) -> dict:
    """:func:`steer` with concepts given as text, matched to the sub-units' labels (C.3); ``groups`` adds
    the matched sub-units' concept groups."""
    def matched(concepts):
        ids = sorted({s for c in concepts for s in match_labels(clip, labels, c, kappa)})
        return with_groups(ids, labels) if groups else ids

    res = steer(model, layer_path, layer, dataset, matched(amplify), matched(suppress), batch_size=batch_size, **settings)
    return {**res, "kappa": kappa, "groups": groups}


def steer(model: nn.Module, layer_path: str, layer, dataset, up: list[int], down: list[int], *, alpha: float = 5.0,
          gamma: float = -10.0, nu: int | None = None, batch_size: int = 256, accuracy: str = "auto") -> dict:
    """Steer ``model`` (``layer`` hot-swapped in at ``layer_path``): sub-units ``up`` scaled by alpha and
    ``down`` by gamma (C.3); accuracy per class before (original layer), with gains of 1 (must equal it),
    and after."""
    before, ref = per_class_accuracy(model, layer_path, dataset, batch_size, accuracy=accuracy)
    with swapped(model, layer_path, layer):
        with steering(layer, torch.ones(layer.n_subunits), nu):
            unit_gain, _ = per_class_accuracy(model, layer_path, dataset, batch_size, ref, accuracy)
        with steering(layer, gains(layer.n_subunits, up, down, alpha, gamma), nu):
            after, _ = per_class_accuracy(model, layer_path, dataset, batch_size, ref, accuracy)
    return {"amplified": up, "suppressed": down, "before": before, "gains_one_max_change": unit_gain.pop(-1),
            "gains_one": unit_gain, "max_output_change": after.pop(-1), "after": after,
            "settings": {"alpha": alpha, "gamma": gamma, "nu": nu}}


def load_labels(labels_dir: str | Path, device: str = "cpu"):
    """A labels artifact's sub-unit entries and its CLIP-like model (the demo CLIP is saved inside it)."""
    import json

    from .labels import load_clip

    labels_dir = Path(labels_dir)
    doc = json.loads((labels_dir / "labels.json").read_text())
    clip = load_clip(str(labels_dir / "clip") if (labels_dir / "clip").is_dir() else doc["model"], device)
    return doc["subunits"], clip


# --- language models: concepts are tokens ------------------------------------------------------------------
def concept_tokens(tokenizer, concept: str) -> list[int]:
    """The token ids that start ``concept`` as a word: its first token with and without a leading space (byte-level
    BPE spells a word differently after a space), special tokens left out."""
    from .explanations import answer_tokens

    ids = set(answer_tokens(tokenizer, concept.strip())) - set(tokenizer.all_special_ids)
    if not ids:
        raise ValueError(f"concept {concept!r}: the tokenizer gives it no ordinary token")
    return sorted(ids)


def _log_p(logits: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """log of the probability mass the next-token distribution puts on ``tokens`` (..., vocab) -> (...)."""
    return torch.logsumexp(torch.log_softmax(logits.float(), -1)[..., tokens], -1)


def token_attribution(model: nn.Module, layer_path: str, layer, dataset, concepts: list[list[int]],
                      batch_size: int = 64) -> np.ndarray:
    """(n_sub-units, n_concepts): each sub-unit's first-order effect on the model's log-probability of each
    concept's tokens at the next position, summed over the evaluation texts' real tokens: activation x gradient,
    s_(u,c)(t) * d log p_concept(t) / d y_u(t) (attribution patching), where y is the layer's output. Scaling
    sub-unit (u, c) by g changes y_u by (g - 1) s_(u,c), so the largest positive scores are the sub-units whose
    amplification raises the concept most, to first order."""
    from ..models.backbones import call_model, get_module

    target, device = get_module(model, layer_path), next(model.parameters()).device
    parent = layer.parent.to(device)
    out = torch.zeros(layer.n_subunits, len(concepts), dtype=torch.float64)
    seen = {}

    def hook(mod, args, y):
        y.retain_grad()
        seen["q"], seen["y"] = args[0].detach(), y

    handle = target.register_forward_hook(hook)
    try:
        for batch in iter_batches(dataset, batch_size):
            valid = batch.valid_mask(batch.inputs["input_ids"].shape[1]).to(device)
            for j, tokens in enumerate(concepts):
                with torch.enable_grad():
                    logits = call_model(model, batch.inputs, device)
                    logits = logits.logits if hasattr(logits, "logits") else logits[0]
                    _log_p(logits, tokens)[valid].sum().backward()
                s = layer.subunits(seen["q"])  # (B, T, sub-units)
                g = seen["y"].grad[..., parent]  # the gradient at each sub-unit's own output unit
                out[:, j] += (s * g)[valid].sum(0).double().cpu()
                model.zero_grad(set_to_none=True)
    finally:
        handle.remove()
    return out.numpy()


@torch.no_grad()
def _lm_run(model: nn.Module, encode, prompts: list[str], concepts: list[list[int]], dataset, new_tokens: int,
            batch_size: int) -> dict:
    """What steering is judged by on a language model, as the model is now: the mean next-token probability of
    each concept's tokens over the evaluation texts' real positions; per prompt the next-token distribution at
    its last token and a greedy continuation of ``new_tokens`` tokens."""
    device = next(model.parameters()).device
    mass, n = torch.zeros(len(concepts), dtype=torch.float64), 0
    for batch in iter_batches(dataset, batch_size):
        logits = model(**{k: v.to(device) for k, v in batch.inputs.items()}).logits
        valid = batch.inputs["attention_mask"].bool().to(device)
        for j, tokens in enumerate(concepts):
            mass[j] += float(_log_p(logits, tokens).exp()[valid].sum())
        n += int(valid.sum())
    runs = []
    for prompt in prompts:
        ids = encode(prompt).to(device)
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        cont, limit = ids, getattr(getattr(model, "config", None), "max_position_embeddings", None)
        for _ in range(new_tokens):  # greedy, without a cache: the steered layer sees every position
            nxt = model(input_ids=cont[:, -limit:] if limit else cont).logits[0, -1].argmax()
            cont = torch.cat([cont, nxt.view(1, 1)], 1)
        runs.append({"probs": probs.cpu(), "continuation": cont[0, ids.shape[1]:].cpu().tolist()})
    return {"concept_mass": (mass / max(n, 1)).tolist(), "prompts": runs}


def steer_tokens(model: nn.Module, layer_path: str, layer, dataset, tokenizer, *, amplify: list[str] = (),
                 suppress: list[str] = (), prompts: list[str] = (), kappa: int = 16, alpha: float = 5.0,
                 gamma: float = -10.0, nu: int | None = None, new_tokens: int = 12, batch_size: int = 64,
                 top_changes: int = 5) -> dict:
    """Steer a causal language model toward (``amplify``) or away from (``suppress``) concepts given as words:
    each matched to the kappa sub-units with the largest :func:`token_attribution` to its tokens, scaled by alpha
    or gamma (C.3). Reports, before / with gains of 1 (must equal before) / after: every concept's mean
    next-token probability over the evaluation texts, and per prompt the largest next-token probability changes
    and a greedy continuation."""
    from ..method.layers import swapped

    words = list(amplify) + list(suppress)
    concepts = [concept_tokens(tokenizer, w) for w in words]
    score = token_attribution(model, layer_path, layer, dataset, concepts, batch_size) if concepts else None
    up = sorted({int(i) for j in range(len(amplify)) for i in np.argsort(-score[:, j], kind="stable")[:kappa]})
    down = sorted({int(i) for j in range(len(amplify), len(words)) for i in np.argsort(-score[:, j], kind="stable")[:kappa]})

    def encode(text):
        return torch.tensor([tokenizer(text)["input_ids"]])

    before = _lm_run(model, encode, list(prompts), concepts, dataset, new_tokens, batch_size)
    with swapped(model, layer_path, layer):
        with steering(layer, torch.ones(layer.n_subunits), nu):
            ones = _lm_run(model, encode, list(prompts), concepts, dataset, 0, batch_size)
        with steering(layer, gains(layer.n_subunits, up, down, alpha, gamma), nu):
            after = _lm_run(model, encode, list(prompts), concepts, dataset, new_tokens, batch_size)
    per_prompt = []
    for prompt, b, o, a in zip(prompts, before["prompts"], ones["prompts"], after["prompts"]):
        delta = a["probs"] - b["probs"]
        top = torch.argsort(-delta.abs(), stable=True)[:top_changes].tolist()
        per_prompt.append({"prompt": prompt, "gains_one_max_change": float((o["probs"] - b["probs"]).abs().max()),
                           "changes": [(tokenizer.decode([t]), float(b["probs"][t]), float(a["probs"][t])) for t in top],
                           "before": tokenizer.decode(b["continuation"]), "after": tokenizer.decode(a["continuation"])})
    return {"amplified": up, "suppressed": down, "concepts": dict(zip(words, concepts)),
            "concept_mass": {w: (before["concept_mass"][j], ones["concept_mass"][j], after["concept_mass"][j])
                             for j, w in enumerate(words)},
            "prompts": per_prompt, "settings": {"alpha": alpha, "gamma": gamma, "nu": nu, "kappa": kappa}}
