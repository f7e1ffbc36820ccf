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
