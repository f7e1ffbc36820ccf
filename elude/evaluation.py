"""Verification (lossless check) and evaluation (accuracy, MS-Score, controls) of a disentangled layer.

Memory bound: the evaluation split's layer inputs, outputs and sub-unit activations are held in
memory (a few hundred images in the demo); paper-scale evaluation streams in a later issue.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .backbones import get_module, instances_of, layer_weight_bias
from .layers import DisentangledLayer, swap_in, swap_out
from .metrics import accuracy, layer_r2, ms_scores, output_differences
from .progress import progress
from .surgery import bias_fractions, random_partition

log = logging.getLogger(__name__)


@dataclass
class Capture:
    logits: torch.Tensor  # (N, classes)
    layer_in: torch.Tensor  # (N, instances, upstream)
    layer_out: torch.Tensor  # (N, instances, units)
    pooled: torch.Tensor | None  # (N, D) pooled pre-logit embedding, where the model has one


@torch.no_grad()
def forward_capture(model: nn.Module, layer_path: str, images: torch.Tensor, batch_size: int) -> Capture:
    """Run the model (on its own device), keeping the target layer's input and output and the pooled
    embedding; everything returned is on the CPU."""
    layer = get_module(model, layer_path)
    device = next(model.parameters()).device
    ins, outs, logits, pooled = [], [], [], []

    def hook(mod, args, out):
        ins.append(instances_of(mod, args[0]).float().cpu())
        outs.append(instances_of(mod, out).float().cpu())

    handle = layer.register_forward_hook(hook)
    has_head = hasattr(model, "forward_head") and hasattr(model, "forward_features")
    n_batches = (len(images) + batch_size - 1) // batch_size
    try:
        for b in progress(range(n_batches), n_batches, "forward batches"):
            x = images[b * batch_size : (b + 1) * batch_size].to(device)
            if has_head:
                feats = model.forward_features(x)
                pooled.append(model.forward_head(feats, pre_logits=True).float().cpu())
                logits.append(model.forward_head(feats).float().cpu())
            else:
                logits.append(model(x).float().cpu())
    finally:
        handle.remove()
    return Capture(torch.cat(logits), torch.cat(ins), torch.cat(outs), torch.cat(pooled) if pooled else None)


def capture_original_and_disentangled(model: nn.Module, layer_path: str, disentangled: DisentangledLayer,
                                      images: torch.Tensor, batch_size: int) -> tuple[Capture, Capture]:
    """The same inputs through the model with its original layer, then with the disentangled one hot-swapped
    in; the original layer is put back afterwards, even on error."""
    ref = forward_capture(model, layer_path, images, batch_size)
    device = next(model.parameters()).device
    original = swap_in(model, layer_path, disentangled.to(device))
    try:
        return ref, forward_capture(model, layer_path, images, batch_size)
    finally:
        swap_out(model, layer_path, original)
        disentangled.cpu()


def verify(model: nn.Module, layer_path: str, disentangled: DisentangledLayer, images: torch.Tensor,
           batch_size: int) -> dict:
    """Compare the original and the disentangled model on the same inputs (the model is restored)."""
    ref, new = capture_original_and_disentangled(model, layer_path, disentangled, images, batch_size)
    diffs = output_differences(ref.logits, new.logits)
    agree = float((ref.logits.argmax(-1) == new.logits.argmax(-1)).double().mean())
    return {**diffs, "r2": layer_r2(ref.layer_out, new.layer_out), "prediction_agreement": agree,
            "n_images": len(images)}


def lossless_failures(result: dict, max_rel_diff: float) -> list[str]:
    """Reasons the disentangled model is not lossless (empty when it is)."""
    bad = []
    if not result["max_rel_diff"] <= max_rel_diff:
        bad.append(f"max relative output difference {result['max_rel_diff']:.3g} > tolerance {max_rel_diff:g}")
    if result["prediction_agreement"] < 1.0:
        bad.append(f"top-1 predictions differ on {(1 - result['prediction_agreement']) * result['n_images']:.0f} images")
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


def evaluate(model: nn.Module, layer_path: str, disentangled: DisentangledLayer, images: torch.Tensor,
             labels: torch.Tensor, *, ms_top_k: int, random_seed: int, batch_size: int) -> dict:
    """Accuracy with both layers, MS-Score of units, sub-units and the random control, in two spaces."""
    ref, new = capture_original_and_disentangled(model, layer_path, disentangled, images, batch_size)
    layer = get_module(model, layer_path)
    pooled = ref.pooled if ref.pooled is not None else ref.layer_out.mean(1)
    parent = disentangled.parent
    with torch.no_grad():
        sub_acts = disentangled.subunits_of_instances(ref.layer_in)
        rand_acts = random_control(layer, parent, random_seed).subunits_of_instances(ref.layer_in)
    ms = {name: ms_scores(a, ref.layer_out, pooled, ms_top_k)
          for name, a in (("units", ref.layer_out), ("subunits", sub_acts), ("random", rand_acts))}
    counts = torch.bincount(parent, minlength=layer_weight_bias(layer)[0].shape[0]).numpy()
    split_units = counts > 1
    split_subs = split_units[parent.numpy()]
    summary = {"accuracy": {"original": accuracy(ref.logits, labels), "disentangled": accuracy(new.logits, labels)},
               "ms_score": {}, "n_units": int(len(counts)), "n_subunits": int(len(parent)),
               "expansion_factor": float(len(parent) / len(counts)),
               "n_split_units": int(split_units.sum()),
               "k_histogram": {int(k): int((counts == k).sum()) for k in np.unique(counts)},
               "ms_top_k": int(min(ms_top_k, len(images))), "pooled_space": "pre-logits" if ref.pooled is not None
               else "mean of layer output over instances"}
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
    return {"summary": summary, "tables": tables}
