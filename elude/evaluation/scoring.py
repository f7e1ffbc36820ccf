"""Verification (lossless check) and evaluation (accuracy, MS-Score, controls) of a disentangled layer.

Both stream the evaluation set in batches. Memory: one batch of activations, per-unit running top-K
image lists (units x K), the pooled embedding of every evaluation image (images x D), and in the
second MS-Score pass the layer-output embeddings of the at most (units + 2 x sub-units) x K selected
(image, instance) pairs; never the whole split's activations.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..method.layers import DisentangledLayer, swapped
from ..method.surgery import bias_fractions, random_partition
from ..models.backbones import (
    call_model,
    get_module,
    instances_of,
    is_channels_first,
    layer_weight_bias,
    output_tensors,
    pooled_output,
)
from ..models.data import Batch, iter_batches
from ..util.progress import progress
from . import diagnostics
from .language import NextTokenLoss, OutputSimilarity, lm_vocabulary, next_token_logits
from .metrics import R2, output_differences
from .top_images import TopImages

log = logging.getLogger(__name__)


@dataclass
class Forward:
    outputs: list[torch.Tensor]  # every floating output tensor, on the CPU
    layer_in: torch.Tensor  # (B, instances, upstream)
    layer_out: torch.Tensor  # (B, instances, units)
    valid: torch.Tensor  # (B, instances) instances that count (dataset mask, skipped images)
    pooled: torch.Tensor | None  # (B, D) pooled embedding, where the model has one
    pooled_space: str | None = None


@torch.no_grad()
def forward_batch(model: nn.Module, layer_path: str, batch: Batch, pooled: bool = False) -> Forward:
    """One batch through the model (on its own device), keeping the target layer's input and output."""
    layer = get_module(model, layer_path)
    device = next(model.parameters()).device
    seen = {}

    def hook(mod, args, out):
        seen["in"], seen["out"] = instances_of(mod, args[0]).float().cpu(), instances_of(mod, out).float().cpu()

    handles = [layer.register_forward_hook(hook)]
    head = model.get_output_embeddings() if pooled and hasattr(model, "get_output_embeddings") else None
    if isinstance(head, nn.Module):  # a language model: its final hidden state is what the head reads
        handles.append(head.register_forward_hook(lambda mod, args, out: seen.__setitem__("final", args[0])))
    try:
        if pooled and hasattr(model, "forward_head") and hasattr(model, "forward_features"):
            feats = model.forward_features(batch.inputs.to(device))
            out, emb, space = model.forward_head(feats), model.forward_head(feats, pre_logits=True), "pre-logits"
        else:
            out = call_model(model, batch.inputs, device)
            emb, space = (pooled_output(out) if pooled else None), "pooler output"
    finally:
        for h in handles:
            h.remove()
    valid = batch.valid_mask(seen["in"].shape[1])
    if emb is None and "final" in seen and seen["final"].shape[:2] == valid.shape:
        # a text's meaning as the model holds it last: its final hidden state, averaged over the text's tokens
        emb, space = _masked_mean(seen["final"].float().cpu(), valid), "final hidden state (mean over the text's tokens)"
    return Forward([t.float().cpu() for t in output_tensors(out)], seen["in"], seen["out"], valid,
                   None if emb is None else emb.float().cpu(), None if emb is None else space)


def logits_of(fwd: Forward) -> torch.Tensor | None:
    """The classifier logits, when the model's first output is (batch, classes)."""
    first = fwd.outputs[0] if fwd.outputs else None
    return first if first is not None and first.dim() == 2 and first.shape[1] > 1 else None


def verify(model: nn.Module, layer_path: str, disentangled: DisentangledLayer, dataset, batch_size: int,
           workers: int = 0) -> dict:
    """Compare the original and the disentangled model on every evaluation example (the model is restored):
    max abs / relative difference over all output tensors, R^2 of the layer output, and top-1 agreement
    when the model is a classifier."""
    max_abs, max_rel, agree, n, r2, bad = 0.0, 0.0, 0, 0, R2(), []
    has_logits, vocab, tokens = True, lm_vocabulary(model), [0, 0]  # a language model: next-token predictions
    for batch in progress(iter_batches(dataset, batch_size, workers=workers), -(-len(dataset) // batch_size),
                          "verify batches"):
        ref = forward_batch(model, layer_path, batch)
        with swapped(model, layer_path, disentangled, back_to_cpu=True):
            new = forward_batch(model, layer_path, batch)
        if (nt0 := next_token_logits(ref, batch, vocab)) is not None:
            nt1 = next_token_logits(new, batch, vocab)
            tokens = [tokens[0] + int((nt0[0].argmax(-1) == nt1[0].argmax(-1)).sum()), tokens[1] + len(nt0[1])]
        y0 = torch.cat([t.double().reshape(len(batch), -1) for t in ref.outputs], 1)
        y1 = torch.cat([t.double().reshape(len(batch), -1) for t in new.outputs], 1)
        d = output_differences(y0, y1)
        max_abs, max_rel = max(max_abs, d["max_abs_diff"]), max(max_rel, d["max_rel_diff"])
        r2.update(ref.layer_out[ref.valid], new.layer_out[ref.valid])
        l0, l1 = logits_of(ref), logits_of(new)
        has_logits = has_logits and l0 is not None
        if has_logits:
            agree += int((l0.argmax(-1) == l1.argmax(-1)).sum())
        n += len(batch)
        bad += list(batch.bad.values())
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "r2": r2.value(),
            "prediction_agreement": agree / n if has_logits and n else None, "n_images": n,
            "next_token_agreement": tokens[0] / tokens[1] if tokens[1] else None, "n_predicted_tokens": tokens[1],
            "bad_images_skipped": bad}


def lossless_failures(result: dict, max_rel_diff: float) -> list[str]:
    """Reasons the disentangled model is not lossless (empty when it is)."""
    bad = []
    if not result["max_rel_diff"] <= max_rel_diff:
        bad.append(f"max relative output difference {result['max_rel_diff']:.3g} > tolerance {max_rel_diff:g}")
    if result["prediction_agreement"] is not None and result["prediction_agreement"] < 1.0:
        bad.append(f"top-1 predictions differ on {(1 - result['prediction_agreement']) * result['n_images']:.0f} images")
    if result.get("next_token_agreement") is not None and result["next_token_agreement"] < 1.0:
        bad.append(f"the most likely next token differs at "
                   f"{(1 - result['next_token_agreement']) * result['n_predicted_tokens']:.0f} positions")
    return bad


def random_control(layer: nn.Module, parent: torch.Tensor, seed: int) -> DisentangledLayer:
    """Table 7's random-partition control: same K_u per unit, upstream dimensions assigned at random."""
    rng = np.random.default_rng(seed)
    w, _ = layer_weight_bias(layer)
    counts = torch.bincount(parent, minlength=w.shape[0]).tolist()
    fracs = [random_partition(k, w.shape[1], rng) if k > 1 else np.ones((1, w.shape[1])) for k in counts]
    return DisentangledLayer.from_fractions(layer, fracs, [bias_fractions(f) for f in fracs])


def nanmean(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else None


@contextlib.contextmanager
def substituted(model: nn.Module, layer_path: str, reconstruct):
    """The model with the target layer's output replaced, through a forward hook, by
    ``reconstruct(q, a)`` of its instance rows (q: the layer input, a: its output; (B, instances, .))."""
    layer = get_module(model, layer_path)

    def hook(mod, args, out):
        rec = reconstruct(instances_of(mod, args[0]), instances_of(mod, out)).to(out.dtype)
        if is_channels_first(mod):  # (B, H*W, C) -> (B, C, H, W)
            return rec.transpose(1, 2).reshape(out.shape)
        return rec.reshape(out.shape)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def probe_forwards(cache, layer: nn.Module) -> Iterator[Forward]:
    """The probe instances of an activation cache (:class:`elude.models.cache.Cache`: the rows ELUDe's top-k and
    the baselines' training read), a stored chunk at a time, as :class:`Forward` s of the layer alone: layer
    input q from the cache, output W q + b. Feature sets read them as they read the model's batches."""
    w, b = (t.float() for t in layer_weight_bias(layer))
    for _, q in cache.iter_chunks():
        q = torch.from_numpy(q)[None]
        yield Forward([], q, nn.functional.linear(q, w, b), torch.ones(q.shape[:2], dtype=torch.bool), None)


@torch.no_grad()
def live_features(probe: Iterable[Forward], feature_sets: dict) -> dict[str, int]:
    """Per feature set (as :func:`score`'s), how many of its features fire (> 0) on at least one instance of
    ``probe`` (:func:`probe_forwards`: the probe instances of the run's cache), in one streamed pass."""
    live: dict[str, torch.Tensor] = {}
    for fwd in probe:
        for name, features in feature_sets.items():
            fired = (features(fwd)[fwd.valid] > 0).any(0)
            live[name] = live[name] | fired if name in live else fired
    return {name: int(fired.sum()) for name, fired in live.items()}


@torch.no_grad()
def score(model: nn.Module, layer_path: str, dataset, feature_sets: dict, substitutes: dict, *, ms_top_k: int,
          batch_size: int, workers: int = 0, accuracy: str = "auto", weight_range: str = "instances") -> dict:
    """The metrics every method gets, by one code path (Sections 4.1, B.2).

    ``feature_sets``: name -> fn(:class:`Forward` of the original model) -> activations (B, instances, F);
    each gets the MS-Score (eq. 7) of every feature in the layer space and the pooled space.
    ``substitutes``: name -> fn() -> a context manager under which the model computes with the method in
    place of the layer; each gets top-1 accuracy and R^2 (:class:`R2`) of the layer output it produces, and on a
    causal language model the next-token loss and KL (:class:`NextTokenLoss`; ``next_token``, else None).

    Pass 1 streams the evaluation set (accuracy, R^2, per-feature top-K images, pooled embeddings); pass 2
    re-runs only the selected images to embed each at its argmax instance. Every feature set's ``activity``: its features, those
    live (fired, > 0, at least once) on the evaluation instances, and its evaluation L0 (issue 26's fair
    columns; :func:`live_features` counts them on the probe instances). ``accuracy``: auto = when the
    model outputs (batch, classes) logits and every label is a class index (``never`` for a model whose
    2-D output is an embedding wider than the number of classes). ``weight_range``: :class:`TopImages`.
    """
    k = min(ms_top_k, len(dataset))
    tops: dict[str, TopImages] = {}
    pooled, pooled_space, bad = {}, None, []
    correct, n_labelled, classifier = {"original": 0, **{n: 0 for n in substitutes}}, 0, True
    r2 = {name: R2() for name in substitutes}
    vocab, lm, similar = lm_vocabulary(model), NextTokenLoss(), OutputSimilarity()
    n_batches = -(-len(dataset) // batch_size)
    for batch in progress(iter_batches(dataset, batch_size, workers=workers), n_batches, "evaluate batches"):
        ref = forward_batch(model, layer_path, batch, pooled=True)
        logits = logits_of(ref)
        labelled = batch.labels >= 0
        labelled[list(batch.bad)] = False  # unreadable images (on_bad_image: skip) do not count
        bad += list(batch.bad.values())
        classifier = classifier and logits is not None and bool((batch.labels < logits.shape[1]).all())
        count = classifier and accuracy != "never" and bool(labelled.any())
        if count:
            correct["original"] += int((logits.argmax(-1) == batch.labels)[labelled].sum())
            n_labelled += int(labelled.sum())
        if (nt := next_token_logits(ref, batch, vocab)) is not None:
            lm.update("original", *nt)
        for name, context in substitutes.items():
            with context():
                new = forward_batch(model, layer_path, batch)
            r2[name].update(ref.layer_out[ref.valid], new.layer_out[ref.valid])
            if nt is not None:
                lm.update(name, next_token_logits(new, batch, vocab)[0], nt[1], reference=nt[0])
            elif OutputSimilarity.applies(ref):  # an encoder: how much its own output moves
                similar.update(name, ref, new, count=name == next(iter(substitutes)))
            if count:
                correct[name] += int((logits_of(new).argmax(-1) == batch.labels)[labelled].sum())
        # the pooled space: timm pre-logits or an HF pooler output; else the mean layer output
        emb, pooled_space = ((ref.pooled, ref.pooled_space) if ref.pooled is not None else
                             (_masked_mean(ref.layer_out, ref.valid), "mean of layer output over instances"))
        pooled.update(zip(batch.index.tolist(), emb))
        for name, features in feature_sets.items():
            acts = features(ref)
            tops.setdefault(name, TopImages(acts.shape[-1], k, weight_range)).update(acts, ref.valid, batch.index)
    layer_emb = _embed_selected(model, layer_path, dataset, tops.values(), batch_size, workers)
    ids = torch.tensor(sorted(pooled))
    pooled_emb = torch.zeros(int(ids.max()) + 1, len(pooled[int(ids[0])]))
    pooled_emb[ids] = torch.stack([pooled[int(i)] for i in ids])
    acc_on = accuracy == "auto" and classifier and n_labelled > 0
    return {"accuracy": {name: (c / n_labelled if acc_on else None) for name, c in correct.items()},
            "r2": {name: r.value() for name, r in r2.items()}, "next_token": lm.value(),
            "output_cosine": similar.value(),
            "ms": {name: t.scores(layer_emb, pooled_emb) for name, t in tops.items()},
            "activity": {name: t.activity() for name, t in tops.items()},
            "pooled_space": pooled_space, "n_images": len(dataset), "bad_images_skipped": bad}


def elude_feature_sets(layer: nn.Module, disentangled: DisentangledLayer, random_seed: int) -> dict:
    """What :func:`evaluate` scores, as :func:`score`'s feature sets: the original units, ELUDe's sub-units and
    the random-partition control (same K_u, upstream dimensions assigned at random)."""
    control = random_control(layer, disentangled.parent, random_seed)
    return {"units": lambda f: f.layer_out, "subunits": lambda f: disentangled.subunits_of_instances(f.layer_in),
            "random": lambda f: control.subunits_of_instances(f.layer_in)}


@torch.no_grad()
def evaluate(model: nn.Module, layer_path: str, disentangled: DisentangledLayer, dataset, *, ms_top_k: int,
             random_seed: int, batch_size: int, workers: int = 0, accuracy: str = "auto", probe=None) -> dict:
    """ELUDe's metrics (:func:`score`): accuracy and R^2 with the disentangled layer swapped in, and the
    MS-Score of the original units, the sub-units and the random-partition control, in two spaces; each one's
    live features and L0 (:func:`features_summary`; on the probe instances where ``probe``, an activation
    cache, is given); per split unit the diagnostics of :mod:`elude.evaluation.diagnostics` (tables
    ``diag_<name>``) and their rank correlations with the MS-Score gains (summary ``split_diagnostics``)."""
    layer = get_module(model, layer_path)
    n_units = layer_weight_bias(layer)[0].shape[0]
    parent = disentangled.parent
    sets = elude_feature_sets(layer, disentangled, random_seed)
    siblings = diagnostics.SiblingCorrelation(parent.numpy())
    streamed = {**sets, "subunits": lambda f: siblings.update(sets["subunits"](f), f.valid)}  # + sibling correlation
    res = score(model, layer_path, dataset, streamed,
                {"disentangled": lambda: swapped(model, layer_path, disentangled, back_to_cpu=True)},
                ms_top_k=ms_top_k, batch_size=batch_size, workers=workers, accuracy=accuracy)
    live = {} if probe is None else live_features(probe_forwards(probe, layer), sets)
    ms = res["ms"]
    counts = torch.bincount(parent, minlength=n_units).numpy()
    split_units = counts > 1
    split_subs = split_units[parent.numpy()]
    summary = {"accuracy": res["accuracy"], "r2": res["r2"]["disentangled"], "next_token": res["next_token"],
               "output_cosine": (res["output_cosine"] or {}).get("disentangled"),
               "ms_score": {}, "n_units": int(len(counts)), "n_subunits": int(len(parent)),
               "expansion_factor": float(len(parent) / len(counts)),
               "n_split_units": int(split_units.sum()),
               "k_histogram": {int(c): int((counts == c).sum()) for c in np.unique(counts)},
               "ms_top_k": int(ms["units"]["top_images"].shape[1]), "pooled_space": res["pooled_space"],
               "n_images": res["n_images"], "bad_images_skipped": res["bad_images_skipped"],
               "features": features_summary(res, live)}
    for space in ("layer", "pooled"):
        suffix = "" if space == "layer" else "_pooled"
        summary["ms_score"].update({
            f"units_mean{suffix}": nanmean(ms["units"][space]),
            f"subunits_mean{suffix}": nanmean(ms["subunits"][space]),
            f"random_mean{suffix}": nanmean(ms["random"][space]),
            f"split_units_mean{suffix}": nanmean(ms["units"][space][split_units]),
            f"split_subunits_mean{suffix}": nanmean(ms["subunits"][space][split_subs]),
            f"split_random_mean{suffix}": nanmean(ms["random"][space][split_subs]),
        })
    tables = {"units_ms_layer": ms["units"]["layer"], "units_ms_pooled": ms["units"]["pooled"],
              "subunits_ms_layer": ms["subunits"]["layer"], "subunits_ms_pooled": ms["subunits"]["pooled"],
              "random_ms_layer": ms["random"]["layer"], "random_ms_pooled": ms["random"]["pooled"],
              "units_top_images": ms["units"]["top_images"], "subunits_top_images": ms["subunits"]["top_images"],
              "parent": parent.numpy(), "k_per_unit": counts}
    if hasattr(dataset, "tokens"):  # text: each feature's activation on its top texts, token by token (the report's)
        contexts = top_contexts(model, layer_path, dataset, sets, {n: ms[n]["top_images"] for n in ("units", "subunits")},
                                batch_size, workers)
        tables.update({f"{name}_top_contexts": c for name, c in contexts.items()})
    diag = diagnostics.unit_diagnostics(tables, disentangled.metadata.get("units"), siblings.per_unit())
    summary["split_diagnostics"] = diagnostics.rank_correlations(diag, counts)
    tables.update({f"diag_{name}": values for name, values in diag.items()})
    return {"summary": summary, "tables": tables}


@torch.no_grad()
def score_baseline(model: nn.Module, layer_path: str, baseline, dataset, *, ms_top_k: int, batch_size: int,
                   workers: int = 0, accuracy: str = "auto", probe=None) -> dict:
    """A baseline's metrics by :func:`score`: the MS-Score of its features (codes read off the original
    layer's input and output), and accuracy and R^2 with its reconstruction in place of the layer output;
    and its live features and L0 (:func:`features_summary`; on the probe instances where ``probe``, an activation
    cache, is given). Features that never activate on the evaluation split get no MS-Score (NaN) and are left
    out of the mean, as for ELUDe."""
    sets = {"features": lambda f: baseline.apply(f.layer_in, f.layer_out)[0]}
    res = score(model, layer_path, dataset, sets,
                {"reconstructed": lambda: substituted(model, layer_path, lambda q, a: baseline.apply(q, a)[1])},
                ms_top_k=ms_top_k, batch_size=batch_size, workers=workers, accuracy=accuracy)
    live = {} if probe is None else live_features(probe_forwards(probe, get_module(model, layer_path)), sets)
    ms = res["ms"]["features"]
    features = features_summary(res, live)["features"]
    summary = {"accuracy": res["accuracy"], "r2": res["r2"]["reconstructed"], "next_token": res["next_token"],
               "output_cosine": (res["output_cosine"] or {}).get("reconstructed"),
               "ms_score": {"features_mean": nanmean(ms["layer"]), "features_mean_pooled": nanmean(ms["pooled"])},
               "n_features": features["n_features"], "n_scored_features": features["n_scored"],
               "l0_eval": features["l0_eval"], "features": features, "ms_top_k": int(ms["top_images"].shape[1]),
               "pooled_space": res["pooled_space"], "n_images": res["n_images"],
               "bad_images_skipped": res["bad_images_skipped"]}
    tables = {"features_ms_layer": ms["layer"], "features_ms_pooled": ms["pooled"],
              "features_top_images": ms["top_images"]}
    if hasattr(dataset, "tokens"):  # text: its features' top texts token by token (explanations read them)
        tables["features_top_contexts"] = top_contexts(model, layer_path, dataset, sets,
                                                       {"features": ms["top_images"]}, batch_size, workers)["features"]
    return {"summary": summary, "tables": tables}


def features_summary(res: dict, live_probe: dict[str, int]) -> dict[str, dict]:
    """Per feature set of :func:`score`'s result: its features, those scored (with an MS-Score: see
    :meth:`TopImages.scores`), those live on the evaluation and on the probe instances (``live_probe``:
    :func:`live_features`; None without a probe pass), and its evaluation L0 (firings, > 0, per valid instance)."""
    return {name: {**act, "n_scored": int((~np.isnan(res["ms"][name]["layer"])).sum()),
                   "live_probe": live_probe.get(name)} for name, act in res["activity"].items()}


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    v = valid[..., None].float()
    return (x * v).sum(1) / v.sum(1).clamp_min(1)


# top texts kept per feature, token by token: Figure 3's 4x4 parent grid, 3x3 per sub-unit (a baseline feature's too)
CONTEXTS = {"units": 16, "subunits": 9, "features": 9}


@torch.no_grad()
def top_contexts(model: nn.Module, layer_path: str, dataset, feature_sets: dict, top_images: dict[str, np.ndarray],
                 batch_size: int, workers: int = 0) -> dict[str, np.ndarray]:
    """For a text dataset, what the report shows of a feature: its activation at every token of each of its top
    texts, (features, contexts, tokens) float16, NaN where a token is not an instance (padding, special tokens)
    and where a feature has fewer top texts. ``top_images``: feature set -> (features, >= contexts) text ids
    (:func:`score`'s ``top_images``); one pass over the texts any of them selected."""
    want = {name: top[:, :CONTEXTS[name]] for name, top in top_images.items()}
    texts = np.unique(np.concatenate([t.reshape(-1) for t in want.values()]))
    out: dict[str, np.ndarray] = {}
    for batch in progress(iter_batches(dataset, batch_size, texts.tolist(), workers), -(-len(texts) // batch_size),
                          "text contexts"):
        fwd = forward_batch(model, layer_path, batch)
        row = {int(i): j for j, i in enumerate(batch.index.tolist())}
        for name, top in want.items():
            acts = feature_sets[name](fwd).masked_fill(~fwd.valid[..., None], float("nan"))  # (B, tokens, features)
            if name not in out:
                out[name] = np.full((*top.shape, acts.shape[1]), np.nan, dtype=np.float16)
            feat, slot = np.nonzero(np.isin(top, batch.index.numpy()))
            rows = torch.tensor([row[int(i)] for i in top[feat, slot]], dtype=torch.long)
            out[name][feat, slot] = acts[rows, :, torch.from_numpy(feat)].numpy().astype(np.float16)
    return out


def _embed_selected(model, layer_path, dataset, tops, batch_size: int, workers: int):
    """Second pass: the original layer output at every selected (image, instance) pair, re-running only the
    selected images. Returns a lookup (images, instances) -> (..., D)."""
    tops = list(tops)
    n_inst_max = int(max(int(t.inst.max()) if t.inst.numel() else 0 for t in tops)) + 1
    keys = np.unique(np.concatenate([(t.img * n_inst_max + t.inst).reshape(-1).numpy() for t in tops]))
    images = np.unique(keys // n_inst_max)
    table = None
    n_batches = -(-len(images) // batch_size)
    for batch in progress(iter_batches(dataset, batch_size, images.tolist(), workers), n_batches, "MS-Score embeddings"):
        out = forward_batch(model, layer_path, batch).layer_out
        if table is None:
            table = torch.zeros(len(keys), out.shape[-1])
        lo, hi = np.searchsorted(keys, [int(batch.index[0]) * n_inst_max, (int(batch.index[-1]) + 1) * n_inst_max])
        sel = keys[lo:hi]
        row = {int(i): j for j, i in enumerate(batch.index.tolist())}
        table[lo:hi] = out[[row[int(i)] for i in sel // n_inst_max], torch.from_numpy(sel % n_inst_max)]
    lookup = torch.from_numpy(keys)

    def layer_emb(img: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        return table[torch.searchsorted(lookup, img * n_inst_max + inst)]

    return layer_emb
